"""Token streams for pretraining: packing into fixed rows and deterministic batching.

``PackedStream.batch(step)`` is a pure function of ``step``: epoch ``e`` visits the rows in the
permutation drawn from ``(seed, e)``. Resuming at step k therefore reproduces the batches of an
uninterrupted run without saving any iterator state.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

import numpy as np

from cai.errors import ConfigError
from cai.tokenizer import Tokenizer, render_chat


class PackedStream:
    """A 1-D token array cut into rows of ``seq_len`` tokens, batched by step."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        n_rows = len(tokens) // seq_len
        if n_rows < batch_size:
            raise ConfigError(
                f"the token stream has {len(tokens)} tokens: fewer than one batch of "
                f"{batch_size} x {seq_len}"
            )
        self.rows = np.asarray(tokens[: n_rows * seq_len], np.int32).reshape(n_rows, seq_len)
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = n_rows // batch_size

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, self.batches_per_epoch)
        idx = self._order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        tokens = self.rows[idx]
        ones = np.ones_like(tokens, dtype=bool)
        return {"tokens": tokens, "mask": ones, "loss_mask": ones.astype(np.float32)}


def arithmetic_text(n_lines: int, seed: int, max_operand: int = 99) -> str:
    """A small learnable language: 'Q: 12+7=? A: 19' lines. Loss falls well below the byte
    entropy, and completions of held-out sums show whether the model learned anything."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice("+-")
        lines.append(f"Q: {a}{op}{b}=? A: {a + b if op == '+' else a - b}\n")
    return "".join(lines)


def encode_documents(text: str, tokenizer: Tokenizer) -> np.ndarray:
    """Each line becomes BOS + tokens + EOS, concatenated into one stream."""
    out: list[int] = []
    for line in text.splitlines():
        if line.strip():
            out += [tokenizer.bos_id, *tokenizer.encode(line), tokenizer.eos_id]
    return np.asarray(out, np.int32)


def read_text_file(path: str) -> str:
    if not os.path.isfile(path):
        raise ConfigError(f"data.path={path!r}: no such file")
    with open(path, encoding="utf-8") as f:
        return f.read()


class ChatExamples:
    """Conversations for supervised fine-tuning, one per row: right-padded to ``seq_len`` (longer
    ones truncated, counted in ``truncated``), ``loss_mask`` True on the assistant's tokens of
    the conversation (``render_chat``'s mask). ``batch(step)`` is a pure function of ``step``
    like ``PackedStream.batch``."""

    def __init__(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        tokenizer: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int,
    ):
        if len(conversations) < batch_size:
            raise ConfigError(
                f"{len(conversations)} fine-tuning examples: fewer than one batch of {batch_size}"
            )
        n = len(conversations)
        self.tokens = np.full((n, seq_len), tokenizer.pad_id, np.int32)
        self.mask = np.zeros((n, seq_len), bool)
        self.loss_mask = np.zeros((n, seq_len), np.float32)
        self.truncated = 0
        for i, conv in enumerate(conversations):
            ids, trained = render_chat(tokenizer, conv)
            self.truncated += len(ids) > seq_len
            ids, trained = ids[:seq_len], trained[:seq_len]
            self.tokens[i, : len(ids)] = ids
            self.mask[i, : len(ids)] = True
            self.loss_mask[i, : len(ids)] = trained
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = n // batch_size

    def batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))
        idx = order[i * self.batch_size : (i + 1) * self.batch_size]
        return {
            "tokens": self.tokens[idx],
            "mask": self.mask[idx],
            "loss_mask": self.loss_mask[idx],
        }
