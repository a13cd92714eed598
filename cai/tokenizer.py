"""Tokenizers share one small protocol: ``encode``, ``decode``, ``vocab_size`` and the special
ids ``pad_id``, ``bos_id``, ``eos_id``. A tokenizer is recorded in checkpoint metadata by
``spec()`` and rebuilt by ``from_spec``, so a checkpoint is sampled with the tokenizer it was
trained with.

``ByteTokenizer`` (UTF-8 bytes, ids offset past three specials) needs no training and lets the
substrate run on any text before a sentencepiece model exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from cai.errors import ConfigError


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def spec(self) -> dict[str, Any]: ...


class ByteTokenizer:
    """Ids 0..2 are pad/bos/eos; byte b is id b + 3 (vocab 259)."""

    pad_id, bos_id, eos_id = 0, 1, 2
    _offset = 3

    @property
    def vocab_size(self) -> int:
        return 256 + self._offset

    def encode(self, text: str) -> list[int]:
        return [b + self._offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i - self._offset for i in ids if i >= self._offset)
        return data.decode("utf-8", errors="replace")

    def spec(self) -> dict[str, Any]:
        return {"kind": "byte"}


def from_spec(spec: dict[str, Any]) -> Tokenizer:
    kind = spec.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    raise ConfigError(f"tokenizer kind {kind!r} is not known (spec: {spec})")
