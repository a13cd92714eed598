"""Llama-architecture GGUF files (llama.cpp) -> our config, params and tokenizer.

Tensors are read with the ``gguf`` package and dequantized to float32 one at a time (every type
``gguf.quants.dequantize`` handles: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants).
Each GGUF tensor is renamed to its HF Llama name and handed to the HF importer, so the two paths
share one layout table (``cai.hf_import.layout``).

llama.cpp's converter reorders the rows of q and k: it rotates adjacent pairs
(x[2i], x[2i+1]) where HF Llama rotates halves (x[i], x[i + H/2]), so within each head it stores
row 2i + t of the GGUF tensor as row t * H/2 + i of the HF one. ``unpermute`` undoes that.

The tokenizer comes from the metadata: ``tokenizer.ggml.model == "gpt2"`` is a byte-level BPE
(vocabulary + merges, rebuilt with ``tokenizers``), ``"llama"`` a sentencepiece vocabulary
(pieces + scores + types, rebuilt as a sentencepiece ``ModelProto``). The chat template travels
with it and picks our chat format.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
from jax.sharding import Mesh

from cai.errors import ConfigError
from cai.hf_import import load_tensors
from cai.model import ModelConfig
from cai.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    chat_format_of,
    default_system_of,
)

# HF Llama name suffix <- GGUF name suffix, per layer and global.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

# Pre-tokenizer (how text is split before BPE merges) per ``tokenizer.ggml.pre``. The Llama-3
# split is the regular expression Meta published with the Llama-3 tokenizer.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = ("default", "gpt-2", "gpt2", "smollm", "llama-bpe", "llama3", "llama-v3")


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF q/k rows [n_heads * H, D] in llama.cpp's pairwise order -> HF's half-split order."""
    rows, rest = w.shape[0], w.shape[1:]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of ``unpermute`` (HF rows -> llama.cpp's order); used to write test files."""
    rows, rest = w.shape[0], w.shape[1:]
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *rest).swapaxes(1, 2).reshape(w.shape)


class GGUFFile:
    """Metadata values and HF-named, dequantized tensors of one GGUF file."""

    def __init__(self, path: str):
        try:
            import gguf
        except ImportError as e:
            raise ConfigError(
                "reading GGUF files needs the `gguf` package: pip install gguf"
            ) from e
        self._gguf = gguf
        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except FileNotFoundError as e:
            raise ConfigError(f"GGUF file {path} does not exist") from e
        except Exception as e:  # not a GGUF file, truncated, ...
            raise ConfigError(f"{path} is not a readable GGUF file: {e}") from e
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.value("general.architecture")
        self._n_heads = self._n_kv_heads = 0

    def value(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def need(self, key: str) -> Any:
        value = self.value(key)
        if value is None:
            raise ConfigError(f"{self.path}: metadata {key} is missing")
        return value

    def config(self) -> ModelConfig:
        """Our ModelConfig from the ``llama.*`` metadata (and the tensors, for tying)."""
        if self.arch != "llama":
            raise ConfigError(
                f"{self.path}: GGUF architecture {self.arch!r} is not supported (only llama)"
            )
        a = self.arch
        if "rope_freqs.weight" in self.tensors:
            raise ConfigError(
                f"{self.path}: per-frequency RoPE factors (rope_freqs.weight, Llama-3.1 style) "
                "are not supported from GGUF; import the HF safetensors instead"
            )
        scaling = self.value(f"{a}.rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            raise ConfigError(f"{self.path}: rope scaling {scaling!r} is not supported")
        D, N = int(self.need(f"{a}.embedding_length")), int(self.need(f"{a}.attention.head_count"))
        K = int(self.value(f"{a}.attention.head_count_kv", N))
        tokens = self.value("tokenizer.ggml.tokens")
        vocab = self.value(f"{a}.vocab_size") or (len(tokens) if tokens else None)
        if vocab is None:
            vocab = int(self.tensors["token_embd.weight"].shape[-1])
        self._n_heads, self._n_kv_heads = N, K
        return ModelConfig(
            vocab_size=int(vocab),
            d_model=D,
            n_layers=int(self.need(f"{a}.block_count")),
            n_heads=N,
            n_kv_heads=K,
            head_dim=int(self.value(f"{a}.rope.dimension_count", 0) or D // N),
            mlp_dim=int(self.need(f"{a}.feed_forward_length")),
            norm_eps=float(self.value(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(self.value(f"{a}.rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            rope_factor=float(self.value(f"{a}.rope.scaling.factor", 1.0)),
            max_len=int(self.value(f"{a}.context_length", 2048)),
            tie_embeddings="output.weight" not in self.tensors,
        )

    # The reader interface of cai.hf_import.load_tensors, in HF names.
    def gguf_name(self, hf: str) -> str:
        if hf in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[hf]
        _, _, layer, suffix = hf.split(".", 3)  # model.layers.{i}.{suffix}
        return f"blk.{layer}.{_LAYER_NAMES[suffix]}"

    def where(self, hf: str) -> str:
        return f"{self.path} ({self.gguf_name(hf)})"

    def shape(self, hf: str) -> tuple[int, ...] | None:
        t = self.tensors.get(self.gguf_name(hf))
        return (
            None if t is None else tuple(int(n) for n in reversed(t.shape))
        )  # GGUF lists ne0 first

    def read(self, hf: str) -> np.ndarray:
        t = self.tensors[self.gguf_name(hf)]
        w = self._gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(self.shape(hf))
        if hf.endswith("q_proj.weight"):
            w = unpermute(w, self._n_heads)
        elif hf.endswith("k_proj.weight"):
            w = unpermute(w, self._n_kv_heads)
        return w

    # Tokenizer.
    def tokenizer(self) -> Tokenizer | None:
        kind = self.value("tokenizer.ggml.model")
        if kind is None:
            return None
        template = self.value("tokenizer.chat_template")
        chat = {
            "chat_format": chat_format_of(template),
            "default_system": default_system_of(template),
        }
        tokens = list(self.need("tokenizer.ggml.tokens"))
        types = list(self.value("tokenizer.ggml.token_type") or [1] * len(tokens))
        eos = int(self.need("tokenizer.ggml.eos_token_id"))
        ids = dict(
            bos_id=int(self.value("tokenizer.ggml.bos_token_id", eos)),
            eos_id=eos,
            pad_id=int(self.value("tokenizer.ggml.padding_token_id", eos)),
        )
        if kind == "gpt2":
            add_bos = bool(self.value("tokenizer.ggml.add_bos_token", False))
            merges = list(self.need("tokenizer.ggml.merges"))
            pre = self.value("tokenizer.ggml.pre", "default")
            text = bpe_tokenizer_json(tokens, merges, types, pre, self.path)
            return HFTokenizer(json_text=text, add_bos=add_bos, **ids, **chat)
        if kind == "llama":
            add_bos = bool(self.value("tokenizer.ggml.add_bos_token", True))
            scores = list(self.value("tokenizer.ggml.scores") or [0.0] * len(tokens))
            proto = sentencepiece_proto(
                tokens,
                scores,
                types,
                add_dummy_prefix=bool(self.value("tokenizer.ggml.add_space_prefix", True)),
                unk_id=int(self.value("tokenizer.ggml.unknown_token_id", 0)),
                **ids,
            )
            return SentencePieceTokenizer(model_proto=proto, add_bos=add_bos, **ids, **chat)
        raise ConfigError(f"{self.path}: tokenizer model {kind!r} is not supported (gpt2, llama)")


def bpe_tokenizer_json(
    tokens: list[str], merges: list[str], types: list[int], pre: str, where: str = "GGUF"
) -> str:
    """A ``tokenizers`` JSON for a byte-level BPE vocabulary as GGUF stores it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if pre not in _PRE_TOKENIZERS:
        raise ConfigError(
            f"{where}: pre-tokenizer {pre!r} is not supported (known: {', '.join(_PRE_TOKENIZERS)})"
        )
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # SmolLM splits digits one by one before the GPT-2 split
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in ("llama-bpe", "llama3", "llama-v3"):
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3, e.g. <|im_end|>) and user-defined ones (type 4) must match whole.
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3]
    )
    tok.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4]
    )
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ConfigError(f"{where}: the special tokens do not fit the vocabulary")
    return json.dumps(json.loads(tok.to_str()))


def sentencepiece_proto(
    tokens: list[str],
    scores: list[float],
    types: list[int],
    *,
    add_dummy_prefix: bool,
    unk_id: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> bytes:
    """A serialized sentencepiece BPE ``ModelProto`` for a GGUF ``llama`` vocabulary (GGUF's
    token types use sentencepiece's numbering: 1 normal, 2 unknown, 3 control, 4 user-defined,
    5 unused, 6 byte)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        sp = m.pieces.add()
        sp.piece, sp.score, sp.type = piece, float(score), int(kind)
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = 6 in types
    m.trainer_spec.unk_id, m.trainer_spec.bos_id = unk_id, bos_id
    m.trainer_spec.eos_id = eos_id
    m.trainer_spec.pad_id = pad_id if pad_id not in (bos_id, eos_id, unk_id) else -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = add_dummy_prefix
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    return m.SerializeToString()


def read_config(path: str) -> ModelConfig:
    return GGUFFile(path).config()


def load_gguf(
    path: str, mesh: Mesh, **overrides: Any
) -> tuple[ModelConfig, dict[str, Any], Tokenizer | None]:
    """(ModelConfig, sharded params, tokenizer) from a Llama GGUF file. ``overrides`` set runtime
    fields of the config (``dtype``, ``param_dtype``, ``remat``)."""
    f = GGUFFile(path)
    cfg = dataclasses.replace(f.config(), **overrides)
    params = load_tensors(f, cfg, "llama", mesh, path)
    return cfg, params, f.tokenizer()
