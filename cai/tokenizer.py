"""Tokenizers share one small protocol: ``encode``, ``decode``, ``vocab_size``, the special ids
``pad_id``, ``bos_id``, ``eos_id``, whether prompts start with BOS (``add_bos``) and the model's
chat format. A tokenizer is recorded in checkpoint metadata by ``spec()`` and rebuilt by
``from_spec``, so a checkpoint is sampled with the tokenizer it was trained with.

* ``ByteTokenizer`` (UTF-8 bytes, ids offset past three specials) needs no training and lets the
  substrate run on any text before a sentencepiece model exists.
* ``SentencePieceTokenizer`` wraps any ``tokenizer.model`` (Llama-2, Gemma, or one trained here).
* ``HFTokenizer`` wraps a ``tokenizers`` JSON (GPT-2 / Llama-3 / SmolLM2 byte-level BPE); the
  ``tokenizers`` package is the optional ``hf`` extra.

``render_chat`` turns a conversation into token ids plus a mask of the assistant's tokens (what
supervised fine-tuning trains on) in one of three formats, chosen per model:

* ``hh``: Anthropic's HH-RLHF transcripts, ``"\n\nHuman: ...\n\nAssistant: ..."``;
* ``chatml``: ``<|im_start|>role\n...<|im_end|>\n`` (SmolLM2, Qwen);
* ``gemma``: ``<start_of_turn>user\n...<end_of_turn>\n`` with the assistant called ``model``.

Turn markers are inserted by id (looked up once), not spelled into the text and re-tokenized.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cai.errors import ConfigError

CHAT_FORMATS = ("hh", "chatml", "gemma")


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int
    add_bos: bool  # prepend BOS to a prompt (the model was trained that way)
    chat_format: str  # one of CHAT_FORMATS
    default_system: str  # system prompt the model's own template inserts when none is given

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, start: bool = True) -> list[int]:
        """``start=False``: the text continues a sequence (no sentencepiece dummy-prefix space)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_id(self, piece: str) -> int | None: ...

    def spec(self, inline: bool = False) -> dict[str, Any]: ...


class ByteTokenizer:
    """Ids 0..2 are pad/bos/eos; byte b is id b + 3 (vocab 259)."""

    pad_id, bos_id, eos_id = 0, 1, 2
    add_bos = True
    chat_format = "hh"
    default_system = ""
    _offset = 3

    @property
    def vocab_size(self) -> int:
        return 256 + self._offset

    def encode(self, text: str, start: bool = True) -> list[int]:
        return [b + self._offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i - self._offset for i in ids if i >= self._offset)
        return data.decode("utf-8", errors="replace")

    def token_id(self, piece: str) -> int | None:
        return None

    def spec(self, inline: bool = False) -> dict[str, Any]:
        return {"kind": "byte"}


class _Specials:
    """Special ids and chat settings shared by the file-backed tokenizers."""

    def __init__(
        self,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        add_bos: bool,
        chat_format: str,
        default_system: str,
    ):
        if chat_format not in CHAT_FORMATS:
            raise ConfigError(
                f"tokenizer chat_format={chat_format!r}: expected one of {CHAT_FORMATS}"
            )
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        self.add_bos, self.chat_format, self.default_system = add_bos, chat_format, default_system

    def _common_spec(self) -> dict[str, Any]:
        return {
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "add_bos": self.add_bos,
            "chat_format": self.chat_format,
            "default_system": self.default_system,
        }


def _source(path: str | None, data: Any, what: str) -> str | None:
    """Exactly one of (path, data); an absolute path so a spec survives a change of directory."""
    if (path is None) == (data is None):
        raise ConfigError(f"{what}: give exactly one of a file path or inline data")
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"{what} file {path} does not exist")
        return os.path.abspath(path)
    return None


class SentencePieceTokenizer(_Specials):
    """Any sentencepiece ``tokenizer.model`` (from a file, or its serialized ``ModelProto``)."""

    def __init__(
        self,
        path: str | None = None,
        model_proto: bytes | None = None,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        add_bos: bool = True,
        chat_format: str = "hh",
        default_system: str = "",
    ):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as sp_pb2

        self.path = _source(path, model_proto, "sentencepiece")
        self._sp = spm.SentencePieceProcessor()
        try:
            if self.path:
                self._sp.Load(self.path)
            else:
                self._sp.LoadFromSerializedProto(model_proto)
        except (OSError, RuntimeError) as e:
            raise ConfigError(f"sentencepiece model {path or '(inline)'}: {e}") from e
        # Text that continues a sequence (after a chat marker) gets no dummy-prefix space.
        self._sp_continue = self._sp
        proto = sp_pb2.ModelProto.FromString(self._sp.serialized_model_proto())
        if proto.normalizer_spec.add_dummy_prefix:
            proto.normalizer_spec.add_dummy_prefix = False
            self._sp_continue = spm.SentencePieceProcessor()
            self._sp_continue.LoadFromSerializedProto(proto.SerializeToString())
        eos = self._sp.eos_id() if eos_id is None else eos_id
        pad = self._sp.pad_id() if pad_id is None else pad_id
        super().__init__(
            bos_id=self._sp.bos_id() if bos_id is None else bos_id,
            eos_id=eos,
            pad_id=pad if pad >= 0 else eos,  # models without a pad piece pad with EOS
            add_bos=add_bos,
            chat_format=chat_format,
            default_system=default_system,
        )

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def encode(self, text: str, start: bool = True) -> list[int]:
        return list((self._sp if start else self._sp_continue).EncodeAsIds(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def token_id(self, piece: str) -> int | None:
        i = self._sp.PieceToId(piece)
        return i if self._sp.IdToPiece(i) == piece else None

    def spec(self, inline: bool = False) -> dict[str, Any]:
        if self.path and not inline:
            source = {"path": self.path}
        else:
            proto = self._sp.serialized_model_proto()
            source = {"model_b64": base64.b64encode(proto).decode("ascii")}
        return {"kind": "sentencepiece", **source, **self._common_spec()}


class HFTokenizer(_Specials):
    """A Hugging Face ``tokenizers`` JSON (byte-level BPE for GPT-2, Llama-3, SmolLM2, ...).

    Encoding never adds the JSON's own post-processing specials: BOS is the caller's choice
    (``add_bos``), as with every tokenizer here."""

    def __init__(
        self,
        path: str | None = None,
        json_text: str | None = None,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int | None = None,
        add_bos: bool = False,
        chat_format: str = "hh",
        default_system: str = "",
    ):
        try:
            import tokenizers
        except ImportError as e:
            raise ConfigError(
                "this tokenizer needs the `tokenizers` package: pip install -e '.[hf]'"
            ) from e
        self.path = _source(path, json_text, "tokenizer.json")
        try:
            self._tok = (
                tokenizers.Tokenizer.from_file(self.path)
                if self.path
                else tokenizers.Tokenizer.from_str(json_text)
            )
        except Exception as e:  # the Rust side raises plain Exceptions
            raise ConfigError(f"tokenizer.json {path or '(inline)'}: {e}") from e
        super().__init__(
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=eos_id if pad_id is None else pad_id,
            add_bos=add_bos,
            chat_format=chat_format,
            default_system=default_system,
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, start: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_id(self, piece: str) -> int | None:
        return self._tok.token_to_id(piece)

    def spec(self, inline: bool = False) -> dict[str, Any]:
        if self.path and not inline:
            source = {"path": self.path}
        else:
            source = {"json": self._tok.to_str()}
        return {"kind": "hf", **source, **self._common_spec()}


def from_spec(spec: dict[str, Any]) -> Tokenizer:
    kind = spec.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    opts = {k: spec[k] for k in _SPEC_OPTIONS if k in spec}
    if kind == "sentencepiece":
        proto = base64.b64decode(spec["model_b64"]) if "model_b64" in spec else None
        return SentencePieceTokenizer(spec.get("path"), proto, **opts)
    if kind == "hf":
        return HFTokenizer(spec.get("path"), spec.get("json"), **opts)
    raise ConfigError(f"tokenizer kind {kind!r} is not known (spec keys: {sorted(spec)})")


_SPEC_OPTIONS = ("bos_id", "eos_id", "pad_id", "add_bos", "chat_format", "default_system")


# ----------------------------------------------------------------------------- HF directories


def chat_format_of(template: str | None) -> str:
    """The format a chat template renders, recognised by its turn markers (default ``hh``)."""
    if template and "<|im_start|>" in template:
        return "chatml"
    if template and "<start_of_turn>" in template:
        return "gemma"
    return "hh"


def default_system_of(template: str | None) -> str:
    """The literal system prompt a ChatML template inserts when a conversation has none
    (SmolLM2's "You are a helpful AI assistant named SmolLM, ..."), or ""."""
    if not template:
        return ""
    for start in ("'<|im_start|>system\n", "'<|im_start|>system\\n"):  # newline or its escape
        i = template.find(start)
        if i >= 0:
            break
    else:
        return ""
    body = template[i + len(start) :]
    end = body.find("<|im_end|>")
    text = body[:end] if end >= 0 else ""
    return "" if any(c in text for c in "'{}") else text  # a jinja expression, not a literal


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json spells a special token as a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _Lookup:
    """``token_id`` over a raw ``tokenizers.Tokenizer``."""

    def __init__(self, raw: Any):
        self._raw = raw

    def token_id(self, piece: str) -> int | None:
        return self._raw.token_to_id(piece)


def load_hf_tokenizer(directory: str) -> Tokenizer | None:
    """The tokenizer of an HF model directory (``tokenizer.json`` or ``tokenizer.model``), with
    its special ids, BOS habit and chat template; ``None`` when the directory has neither."""
    tcfg = _read_json(os.path.join(directory, "tokenizer_config.json"))
    mcfg = _read_json(os.path.join(directory, "config.json"))
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja = os.path.join(directory, "chat_template.jinja")
    if template is None and os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    chat = {"chat_format": chat_format_of(template), "default_system": default_system_of(template)}
    json_path = os.path.join(directory, "tokenizer.json")
    sp_path = os.path.join(directory, "tokenizer.model")
    # Llama-2 and Gemma ship both; their sentencepiece model is the original.
    if os.path.isfile(sp_path):
        raw = None
    elif os.path.isfile(json_path):
        import tokenizers

        raw = tokenizers.Tokenizer.from_file(json_path)
    else:
        return None

    def special(name: str, lookup: Any) -> int | None:
        text = _token_text(tcfg.get(f"{name}_token"))
        i = lookup.token_id(text) if text is not None else None
        if i is not None:
            return i
        value = mcfg.get(f"{name}_token_id")
        return value[0] if isinstance(value, list) else value

    if raw is None:
        sp = SentencePieceTokenizer(sp_path, add_bos=tcfg.get("add_bos_token", True), **chat)
        for name in ("bos", "eos", "pad"):
            value = special(name, sp)
            if value is not None:
                setattr(sp, f"{name}_id", int(value))
        return sp
    lookup = _Lookup(raw)
    bos, eos, pad = special("bos", lookup), special("eos", lookup), special("pad", lookup)
    if eos is None:
        raise ConfigError(f"{directory}: cannot tell the EOS token (no eos_token / eos_token_id)")
    add_bos = tcfg.get("add_bos_token")
    if add_bos is None:  # e.g. Llama-3: the JSON's post-processor prepends BOS
        with_specials = raw.encode("a", add_special_tokens=True).ids
        add_bos = bos is not None and with_specials[:1] == [bos]
    return HFTokenizer(
        json_path,
        bos_id=eos if bos is None else bos,
        eos_id=eos,
        pad_id=pad,
        add_bos=bool(add_bos),
        **chat,
    )


# ----------------------------------------------------------------------------- chat rendering

_TURNS = {
    # format: (marker opening a turn, the role names it writes after the marker)
    "chatml": ("<|im_start|>", {"system": "system", "user": "user", "assistant": "assistant"}),
    "gemma": ("<start_of_turn>", {"user": "user", "assistant": "model"}),
}
_END = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>"}


def _special(tok: Tokenizer, piece: str) -> int:
    i = tok.token_id(piece)
    if i is None:
        raise ConfigError(
            f"the tokenizer has no {piece!r} token, which chat format {tok.chat_format!r} needs"
        )
    return i


def chat_template(tok: Tokenizer) -> str:
    """A Jinja chat template (the HF ``tokenizer_config.json`` field) rendering the same text as
    ``render_chat`` for this tokenizer's format, so an exported model chats the same way."""
    gen = "{% if add_generation_prompt %}{{ GEN }}{% endif %}"
    if tok.chat_format == "hh":
        body = (
            "{% for m in messages %}{% if m['role'] == 'user' %}"
            "{{ '\\n\\nHuman: ' + m['content'] }}"
            "{% elif m['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + m['content'] }}"
            "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
        )
        return body + gen.replace("GEN", "'\\n\\nAssistant:'")
    if tok.chat_format == "chatml":
        system = ""
        if tok.default_system and not any(c in tok.default_system for c in "'{}"):
            system = (
                "{% if loop.first and messages[0]['role'] != 'system' %}"
                f"{{{{ '<|im_start|>system\\n{tok.default_system}<|im_end|>\\n' }}}}{{% endif %}}"
            )
        body = (
            "{% for m in messages %}" + system + "{{ '<|im_start|>' + m['role'] + '\\n' + "
            "m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        )
        return body + gen.replace("GEN", "'<|im_start|>assistant\\n'")
    body = (
        "{{ bos_token }}{% for m in messages %}"
        "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    )
    return body + gen.replace("GEN", "'<start_of_turn>model\\n'")


def chat_stop_id(tok: Tokenizer) -> int:
    """The token that ends an assistant turn: what generation should stop on."""
    return tok.eos_id if tok.chat_format == "hh" else _special(tok, _END[tok.chat_format])


def render_chat(
    tok: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and a mask that is True on the tokens the assistant wrote
    (its text and the marker closing its turn), for training on assistant tokens only.

    ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}``. With
    ``add_generation_prompt`` the ids end with the opening of an assistant turn. Text between
    special markers is encoded piece by piece, so a mask boundary never splits a token."""
    fmt = tok.chat_format
    roles = [m["role"] for m in messages]
    for i, r in enumerate(roles):
        if r not in ("system", "user", "assistant"):
            raise ConfigError(f"message {i}: role {r!r} is not system, user or assistant")
        if r == "system" and i:
            raise ConfigError(f"message {i}: a system message may only come first")
    pieces: list[tuple[str | int, bool]] = []  # text or a special id, and whether it is trained

    msgs = list(messages)
    if fmt == "chatml" and tok.default_system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": tok.default_system})
    if fmt == "gemma" and msgs and msgs[0]["role"] == "system":
        # Gemma has no system turn: its template prefixes the first user message instead.
        system = msgs.pop(0)["content"]
        if msgs and msgs[0]["role"] == "user":
            msgs[0] = {"role": "user", "content": f"{system}\n\n{msgs[0]['content']}"}
        else:
            msgs.insert(0, {"role": "user", "content": system})

    if fmt == "hh":
        last_assistant = max(
            (i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1
        )
        for i, m in enumerate(msgs):
            if m["role"] == "system":
                pieces.append((m["content"], False))
            elif m["role"] == "user":
                pieces.append((f"\n\nHuman: {m['content']}", False))
            else:
                pieces.append(("\n\nAssistant:", False))
                pieces.append((f" {m['content']}", True))
                if i == last_assistant and not add_generation_prompt:
                    pieces.append((tok.eos_id, True))
        if add_generation_prompt:
            pieces.append(("\n\nAssistant:", False))
    else:
        start, names = _TURNS[fmt]
        start_id, end_id = _special(tok, start), _special(tok, _END[fmt])
        for m in msgs:
            if m["role"] not in names:
                raise ConfigError(f"chat format {fmt!r} has no {m['role']!r} turn")
            trained = m["role"] == "assistant"
            pieces += [(start_id, False), (f"{names[m['role']]}\n", False)]
            pieces += [(m["content"], trained), (end_id, trained), ("\n", False)]
        if add_generation_prompt:
            pieces += [(start_id, False), (f"{names['assistant']}\n", False)]

    ids = [tok.bos_id] if tok.add_bos else []
    mask = [False] * len(ids)
    text, text_trained = "", False

    def flush() -> None:
        nonlocal text
        if text:
            new = tok.encode(text, start=not ids or ids == [tok.bos_id])
            ids.extend(new)
            mask.extend([text_trained] * len(new))
            text = ""

    for piece, trained in pieces:
        if isinstance(piece, int):
            flush()
            ids.append(piece)
            mask.append(trained)
        else:
            if trained != text_trained:
                flush()
            text, text_trained = text + piece, trained
    flush()
    return ids, mask


# ----------------------------------------------------------------------------- training


def train_sentencepiece(
    texts: Sequence[str], path: str, vocab_size: int, max_lines: int = 200_000, seed: int = 0
) -> SentencePieceTokenizer:
    """Train a BPE sentencepiece model on ``texts`` and write it to ``path``.

    Settings suit the HH chat format: text is not normalised and no dummy space is prefixed,
    so ``render_chat``'s piece-by-piece encoding gives the same ids as encoding the whole
    transcript, and newlines survive as their own piece. Specials: pad 0, unk 1, bos 2, eos 3.
    A vocabulary the text cannot fill comes out smaller than ``vocab_size``."""
    import random

    import sentencepiece as spm

    lines = [line for t in texts for line in t.split("\n") if line.strip()]
    if not lines:
        raise ConfigError("train_sentencepiece: the training text is empty")
    if len(lines) > max_lines:
        lines = random.Random(seed).sample(lines, max_lines)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=f,
            vocab_size=vocab_size,
            model_type="bpe",
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            user_defined_symbols=["\n"],
            hard_vocab_limit=False,
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
    os.replace(tmp, path)  # a killed run never leaves a half-written model behind
    return SentencePieceTokenizer(path)
