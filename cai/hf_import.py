"""Hugging Face checkpoints <-> our params, for the Llama, Gemma (1 and 2) and GPT-2 families.

One table per family (``layout``) lists every HF tensor with the params it becomes and the two
pure maps between the layouts, so import and export cannot drift apart:

* torch ``Linear`` weights are [out, in]; ours are [in, ...out] with the heads split out
  (``q`` [D, N, H], ``o`` [N, H, D]): a transpose and a reshape.
* GPT-2's ``Conv1D`` already stores [in, out], and its ``c_attn`` packs q, k and v in one tensor.
* Gemma's norm weights are stored as (scale - 1), which ``ModelConfig.norm_offset = 1`` matches.

Import reads one tensor at a time (``safe_open``, memory-mapped) and places it straight into its
shards with ``jax.make_array_from_callback``: no host ever holds more than one full tensor, and on
a pod each host fills only the shards its own devices hold.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from cai.errors import ConfigError
from cai.model import ModelConfig, Transformer
from cai.tokenizer import chat_template
from cai.train_lib import abstract_params

FAMILIES = ("llama", "gemma", "gemma2", "gpt2")
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh")


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One HF tensor ``hf`` of shape ``hf_shape`` <-> our params ``ours`` (paths like
    ``layers_0/attn/q``); ``to_ours(x) -> [arrays]`` and ``to_hf([arrays]) -> x`` are inverses."""

    hf: str
    hf_shape: tuple[int, ...]
    ours: tuple[str, ...]
    to_ours: Callable[[np.ndarray], list[np.ndarray]]
    to_hf: Callable[[list[np.ndarray]], np.ndarray]


def _linear(hf: str, ours: str, shape: tuple[int, ...], n_in: int) -> Tensor:
    """torch Linear [out, in] <-> ours ``shape`` whose first ``n_in`` dims are the input."""
    d_in, d_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
    return Tensor(
        hf,
        (d_out, d_in),
        (ours,),
        lambda w: [w.T.reshape(shape)],
        lambda xs: xs[0].reshape(d_in, d_out).T,
    )


def _same(hf: str, ours: str, shape: tuple[int, ...], hf_shape: tuple[int, ...]) -> Tensor:
    """Same memory order on both sides (norms, biases, embeddings, GPT-2 Conv1D)."""
    return Tensor(
        hf, hf_shape, (ours,), lambda w: [w.reshape(shape)], lambda xs: xs[0].reshape(hf_shape)
    )


def _packed_qkv(hf: str, prefix: str, shape: tuple[int, ...], width: int) -> Tensor:
    """GPT-2 ``c_attn`` (weight [D, 3W] or bias [3W]) <-> our q, k, v of ``shape`` each."""
    lead = shape[:-2]  # (D,) for the weight, () for the bias

    def split(w: np.ndarray) -> list[np.ndarray]:
        return [p.reshape(shape) for p in np.split(w, 3, axis=-1)]

    def join(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([x.reshape(*lead, width) for x in xs], axis=-1)

    ours = tuple(f"{prefix}/{n}" for n in ("q", "k", "v"))
    if len(lead) == 0:
        ours = tuple(f"{o}_bias" for o in ours)
    return Tensor(hf, (*lead, 3 * width), ours, split, join)


def layout(cfg: ModelConfig, family: str) -> list[Tensor]:
    """Every HF tensor of ``family`` for a model of config ``cfg``, in file order."""
    D, N, K, H, F, V = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.mlp_dim,
        cfg.vocab_size,
    )
    out: list[Tensor] = []
    if family == "gpt2":
        out.append(_same("transformer.wte.weight", "embedding", (V, D), (V, D)))
        out.append(
            _same("transformer.wpe.weight", "pos_embedding", (cfg.max_len, D), (cfg.max_len, D))
        )
        for i in range(cfg.n_layers):
            h, us = f"transformer.h.{i}", f"layers_{i}"
            for hf_norm, norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                for p, q in (("weight", "scale"), ("bias", "bias")):
                    out.append(_same(f"{h}.{hf_norm}.{p}", f"{us}/{norm}/{q}", (D,), (D,)))
            out.append(_packed_qkv(f"{h}.attn.c_attn.weight", f"{us}/attn", (D, N, H), N * H))
            out.append(_packed_qkv(f"{h}.attn.c_attn.bias", f"{us}/attn", (N, H), N * H))
            out.append(_same(f"{h}.attn.c_proj.weight", f"{us}/attn/o", (N, H, D), (N * H, D)))
            out.append(_same(f"{h}.attn.c_proj.bias", f"{us}/attn/o_bias", (D,), (D,)))
            out.append(_same(f"{h}.mlp.c_fc.weight", f"{us}/mlp/wi", (D, F), (D, F)))
            out.append(_same(f"{h}.mlp.c_fc.bias", f"{us}/mlp/wi_bias", (F,), (F,)))
            out.append(_same(f"{h}.mlp.c_proj.weight", f"{us}/mlp/wo", (F, D), (F, D)))
            out.append(_same(f"{h}.mlp.c_proj.bias", f"{us}/mlp/wo_bias", (D,), (D,)))
        out.append(_same("transformer.ln_f.weight", "final_norm/scale", (D,), (D,)))
        out.append(_same("transformer.ln_f.bias", "final_norm/bias", (D,), (D,)))
        return out

    norms = [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm")]
    if family == "gemma2":
        norms = [
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "attn_post_norm"),
            ("pre_feedforward_layernorm", "mlp_norm"),
            ("post_feedforward_layernorm", "mlp_post_norm"),
        ]
    out.append(_same("model.embed_tokens.weight", "embedding", (V, D), (V, D)))
    for i in range(cfg.n_layers):
        h, us = f"model.layers.{i}", f"layers_{i}"
        for hf_norm, norm in norms:
            out.append(_same(f"{h}.{hf_norm}.weight", f"{us}/{norm}/scale", (D,), (D,)))
        out.append(_linear(f"{h}.self_attn.q_proj.weight", f"{us}/attn/q", (D, N, H), 1))
        out.append(_linear(f"{h}.self_attn.k_proj.weight", f"{us}/attn/k", (D, K, H), 1))
        out.append(_linear(f"{h}.self_attn.v_proj.weight", f"{us}/attn/v", (D, K, H), 1))
        out.append(_linear(f"{h}.self_attn.o_proj.weight", f"{us}/attn/o", (N, H, D), 2))
        out.append(_linear(f"{h}.mlp.gate_proj.weight", f"{us}/mlp/wg", (D, F), 1))
        out.append(_linear(f"{h}.mlp.up_proj.weight", f"{us}/mlp/wi", (D, F), 1))
        out.append(_linear(f"{h}.mlp.down_proj.weight", f"{us}/mlp/wo", (F, D), 1))
    out.append(_same("model.norm.weight", "final_norm/scale", (D,), (D,)))
    if not cfg.tie_embeddings:
        out.append(_linear("lm_head.weight", "unembed", (D, V), 1))
    return out


# ----------------------------------------------------------------------------- config.json


def _need(hf: dict[str, Any], key: str, where: str) -> Any:
    if hf.get(key) is None:
        raise ConfigError(f"{where}: {key} is missing")
    return hf[key]


def _rope(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """RoPE base and scaling from ``rope_parameters`` (transformers 5) or the older
    ``rope_theta`` + ``rope_scaling`` pair."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    merged = {**scaling, **params}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind == "default":
        return {"rope_theta": float(theta)}
    if kind == "linear":
        return {
            "rope_theta": float(theta),
            "rope_scaling": "linear",
            "rope_factor": float(merged["factor"]),
        }
    if kind == "llama3":
        return {
            "rope_theta": float(theta),
            "rope_scaling": "llama3",
            "rope_factor": float(merged["factor"]),
            "rope_low_freq_factor": float(merged["low_freq_factor"]),
            "rope_high_freq_factor": float(merged["high_freq_factor"]),
            "rope_original_max_len": int(merged["original_max_position_embeddings"]),
        }
    raise ConfigError(
        f"{where}: rope scaling type {kind!r} is not supported (default, linear, llama3)"
    )


def _sliding(hf: dict[str, Any], n_layers: int, where: str) -> dict[str, Any]:
    """Gemma-2's local/global layer pattern as (sliding_window, sliding_window_pattern)."""
    window = hf.get("sliding_window")
    types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
    ]
    if not window or "sliding_attention" not in types:
        return {"sliding_window": 0}
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    pattern = full[0] + 1 if full else n_layers + 1
    expected = [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
    ]
    if list(types) != expected:
        raise ConfigError(f"{where}: layer_types {types} is not a periodic local/global pattern")
    return {"sliding_window": int(window), "sliding_window_pattern": pattern}


def _activation(hf: dict[str, Any], keys: Sequence[str], where: str) -> None:
    act = next((hf[k] for k in keys if hf.get(k)), None)
    if act == "gelu":
        # Gemma-1 configs say "gelu" but the model was trained with the tanh approximation,
        # which transformers also uses for it.
        logging.warning("%s: treating hidden_act 'gelu' as the tanh approximation", where)
    elif act not in _GELU_TANH:
        raise ConfigError(
            f"{where}: activation {act!r} is not supported (want one of {_GELU_TANH})"
        )


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> tuple[ModelConfig, str]:
    """(our ModelConfig, family) from an HF ``config.json`` dict."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(
            f"{where}: model_type {family!r} is not supported (supported: {', '.join(FAMILIES)})"
        )
    if family == "gpt2":
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if hf.get(flag):
                raise ConfigError(f"{where}: {flag}=true is not supported")
        if hf.get("scale_attn_weights") is False:
            raise ConfigError(f"{where}: scale_attn_weights=false is not supported")
        _activation(hf, ("activation_function",), where)
        D, N = _need(hf, "n_embd", where), _need(hf, "n_head", where)
        return (
            ModelConfig(
                vocab_size=_need(hf, "vocab_size", where),
                d_model=D,
                n_layers=_need(hf, "n_layer", where),
                n_heads=N,
                n_kv_heads=N,
                head_dim=D // N,
                mlp_dim=hf.get("n_inner") or 4 * D,
                mlp="gelu",
                norm="layer",
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                position="learned",
                max_len=_need(hf, "n_positions", where),
                tie_embeddings=True,
                use_bias=True,
            ),
            family,
        )

    D, N = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where)
    common = dict(
        vocab_size=_need(hf, "vocab_size", where),
        d_model=D,
        n_layers=_need(hf, "num_hidden_layers", where),
        n_heads=N,
        n_kv_heads=hf.get("num_key_value_heads") or N,
        head_dim=hf.get("head_dim") or D // N,
        mlp_dim=_need(hf, "intermediate_size", where),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_len=int(hf.get("max_position_embeddings", 2048)),
        **_rope(hf, where),
    )
    if family == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise ConfigError(f"{where}: {flag}=true is not supported")
        if hf.get("pretraining_tp", 1) != 1:
            logging.info("%s: pretraining_tp only changes how HF splits matmuls; ignored", where)
        tie = bool(hf.get("tie_word_embeddings", False))
        return ModelConfig(**common, tie_embeddings=tie), family

    _activation(hf, ("hidden_activation", "hidden_act"), where)
    if hf.get("tie_word_embeddings") is False:
        raise ConfigError(f"{where}: untied Gemma embeddings are not supported")
    gemma = dict(mlp="geglu", norm_offset=1.0, embed_scale=True, tie_embeddings=True)
    if family == "gemma":
        return ModelConfig(**common, **gemma), family
    return (
        ModelConfig(
            **common,
            **gemma,
            post_norms=True,
            attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
            final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
            # transformers' default for a config that omits it is 256
            query_scale=float(hf.get("query_pre_attn_scalar") or 256) ** -0.5,
            **_sliding(hf, common["n_layers"], where),
        ),
        family,
    )


def family_of(cfg: ModelConfig) -> str:
    """The HF family that can hold a model of this config, or a ConfigError naming the field
    that no family matches."""
    if cfg.scalar_head:
        raise ConfigError("model.scalar_head=True has no HF CausalLM equivalent")
    if cfg.position == "learned":
        family = "gpt2"
        want = dict(
            norm="layer", mlp="gelu", use_bias=True, tie_embeddings=True, n_kv_heads=cfg.n_heads
        )
        want.update(head_dim=cfg.d_model // cfg.n_heads, norm_offset=0.0, embed_scale=False)
    elif cfg.norm_offset == 1.0:
        family = "gemma2" if cfg.post_norms else "gemma"
        want = dict(norm="rms", mlp="geglu", use_bias=False, tie_embeddings=True, embed_scale=True)
        want.update(rope_scaling="none")
        if family == "gemma":
            want.update(attn_softcap=0.0, final_softcap=0.0, query_scale=0.0, sliding_window=0)
    else:
        family = "llama"
        want = dict(norm="rms", mlp="swiglu", use_bias=False, embed_scale=False, post_norms=False)
        want.update(norm_offset=0.0, attn_softcap=0.0, final_softcap=0.0, sliding_window=0)
        want.update(query_scale=0.0)
    for field, value in want.items():
        if getattr(cfg, field) != value:
            raise ConfigError(
                f"model.{field}={getattr(cfg, field)!r} has no equivalent in the HF {family} "
                f"family (which needs {value!r})"
            )
    return family


def _int_if_whole(x: float) -> int | float:
    """HF validates some fields as ints (query_pre_attn_scalar); undo float round-off."""
    return round(x) if abs(x - round(x)) < 1e-6 * max(1.0, abs(x)) else x


def config_to_hf(cfg: ModelConfig, family: str) -> dict[str, Any]:
    """An HF ``config.json`` dict for our config (inverse of ``config_from_hf``)."""
    dtype = str(np.dtype(cfg.param_dtype)) if cfg.param_dtype != "bfloat16" else "bfloat16"
    if family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.mlp_dim,
            "n_positions": cfg.max_len,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "tie_word_embeddings": True,
            "dtype": dtype,
        }
    arch = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM"}
    out: dict[str, Any] = {
        "architectures": [arch[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.mlp_dim,
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_len,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "dtype": dtype,
    }
    if cfg.rope_scaling == "linear":
        out["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_factor}
    elif cfg.rope_scaling == "llama3":
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": cfg.rope_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len,
        }
    if family == "llama":
        out.update(hidden_act="silu", attention_bias=False, mlp_bias=False)
    else:
        out.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
    if family == "gemma2":
        pattern = cfg.sliding_window_pattern
        out.update(
            attn_logit_softcapping=cfg.attn_softcap or None,
            final_logit_softcapping=cfg.final_softcap or None,
            query_pre_attn_scalar=_int_if_whole((cfg.query_scale or cfg.head_dim**-0.5) ** -2),
            sliding_window=cfg.sliding_window or None,
            layer_types=[
                "sliding_attention"
                if cfg.sliding_window and (i + 1) % pattern != 0
                else "full_attention"
                for i in range(cfg.n_layers)
            ],
        )
    return out


# ----------------------------------------------------------------------------- reading


class SafetensorsFiles:
    """Name -> tensor over a single ``model.safetensors`` or a sharded set listed in
    ``model.safetensors.index.json``; files are opened lazily, memory-mapped."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self._safe_open = safe_open
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
            for name, file in weight_map.items():
                if not os.path.isfile(os.path.join(directory, file)):
                    raise ConfigError(
                        f"{index} lists shard {file} (holding {name}) but "
                        f"{os.path.join(directory, file)} does not exist"
                    )
            self.file_of = dict(weight_map)
        elif os.path.isfile(single):
            with safe_open(single, framework="numpy") as f:
                self.file_of = {name: "model.safetensors" for name in f.keys()}
        else:
            extra = ""
            if any(n.endswith(".bin") for n in os.listdir(directory)):
                extra = " (only PyTorch .bin weights: re-save them with safe_serialization)"
            raise ConfigError(
                f"{directory}: no model.safetensors or model.safetensors.index.json{extra}"
            )
        self._open: dict[str, Any] = {}

    def _handle(self, file: str) -> Any:
        if file not in self._open:
            self._open[file] = self._safe_open(
                os.path.join(self.directory, file), framework="numpy"
            )
        return self._open[file]

    def resolve(self, name: str) -> str | None:
        """The stored name: checkpoints differ on the ``model.``/``transformer.`` prefix."""
        bare = name.split(".", 1)[1] if name.startswith(("model.", "transformer.")) else name
        for candidate in (name, bare):
            if candidate in self.file_of:
                return candidate
        return None

    def where(self, name: str) -> str:
        stored = self.resolve(name)
        return os.path.join(self.directory, self.file_of[stored]) if stored else self.directory

    def shape(self, name: str) -> tuple[int, ...] | None:
        stored = self.resolve(name)
        if stored is None:
            return None
        return tuple(self._handle(self.file_of[stored]).get_slice(stored).get_shape())

    def read(self, name: str) -> np.ndarray:
        stored = self.resolve(name)
        return self._handle(self.file_of[stored]).get_tensor(stored)


def place(
    array: np.ndarray, like: jax.ShapeDtypeStruct, sharding: jax.sharding.Sharding
) -> jax.Array:
    """A host array straight into its shards (each device gets only its slice)."""
    array = np.asarray(array, dtype=like.dtype)
    return jax.make_array_from_callback(like.shape, sharding, lambda idx: array[idx])


def load_tensors(
    reader: Any, cfg: ModelConfig, family: str, mesh: Mesh, source: str
) -> dict[str, Any]:
    """Params (nested dict) for ``cfg`` from ``reader`` (``shape(name)``, ``read(name)``,
    ``where(name)``), one tensor at a time, each placed into its shards."""
    model = Transformer(cfg)
    abstract, shardings = abstract_params(model, mesh)
    flat_abs = traverse_util.flatten_dict(abstract, sep="/")
    flat_shard = traverse_util.flatten_dict(shardings, sep="/")
    params: dict[str, jax.Array] = {}
    for t in layout(cfg, family):
        shape = reader.shape(t.hf)
        if shape is None:
            raise ConfigError(f"{source}: tensor {t.hf} is missing")
        if tuple(shape) != t.hf_shape:
            raise ConfigError(
                f"{reader.where(t.hf)}: tensor {t.hf} has shape {tuple(shape)} but the config "
                f"implies {t.hf_shape}"
            )
        for path, value in zip(t.ours, t.to_ours(reader.read(t.hf))):
            params[path] = place(value, flat_abs[path], flat_shard[path])
    missing = sorted(set(flat_abs) - set(params))
    if missing:  # a layout bug, not bad input
        raise AssertionError(f"layout for {family} leaves params unset: {missing}")
    return traverse_util.unflatten_dict(params, sep="/")


def read_config(directory: str) -> tuple[ModelConfig, str]:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{directory}: no config.json (not a Hugging Face model directory)")
    with open(path, encoding="utf-8") as f:
        return config_from_hf(json.load(f), path)


def load_hf(
    directory: str, mesh: Mesh, **overrides: Any
) -> tuple[ModelConfig, dict[str, Any], str]:
    """(ModelConfig, sharded params, family) from an HF model directory. ``overrides`` set
    runtime fields of the config (``dtype``, ``param_dtype``, ``remat``)."""
    cfg, family = read_config(directory)
    cfg = dataclasses.replace(cfg, **overrides)
    params = load_tensors(SafetensorsFiles(directory), cfg, family, mesh, directory)
    return cfg, params, family


# ----------------------------------------------------------------------------- export


def _gather(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host) sharded array on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def export_hf(
    cfg: ModelConfig,
    params: dict[str, Any],
    directory: str,
    *,
    tokenizer: Any | None = None,
    max_shard_bytes: int = 2 * 2**30,
) -> str:
    """Write ``config.json`` + safetensors (sharded past ``max_shard_bytes``, with
    ``model.safetensors.index.json``) that ``transformers`` opens; returns the family. Tensors
    are gathered one at a time; only process 0 writes."""
    from safetensors.numpy import save_file

    family = family_of(cfg)
    flat = traverse_util.flatten_dict(params, sep="/")
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(directory, exist_ok=True)
    hf_config = config_to_hf(cfg, family)
    if tokenizer is not None:
        hf_config.update(
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
    shards: list[dict[str, np.ndarray]] = [{}]
    written: list[tuple[str, list[str]]] = []
    size, total = 0, 0

    def flush() -> None:
        nonlocal size
        if shards[-1]:
            tmp = f"part-{len(written):05d}.safetensors"
            if writer:
                save_file(shards[-1], os.path.join(directory, tmp), metadata={"format": "pt"})
            written.append((tmp, list(shards[-1])))
            shards[-1], size = {}, 0

    for t in layout(cfg, family):
        value = np.ascontiguousarray(t.to_hf([_gather(flat[p]) for p in t.ours]))
        if size and size + value.nbytes > max_shard_bytes:
            flush()
        shards[-1][t.hf] = value
        size += value.nbytes
        total += value.nbytes
    flush()
    if writer:
        n = len(written)
        if n == 1:
            os.replace(
                os.path.join(directory, written[0][0]), os.path.join(directory, "model.safetensors")
            )
        else:
            weight_map = {}
            for i, (tmp, names) in enumerate(written):
                final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                os.replace(os.path.join(directory, tmp), os.path.join(directory, final))
                weight_map.update({name: final for name in names})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=2)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        if tokenizer is not None:
            save_tokenizer(tokenizer, directory)
    return family


def save_tokenizer(tokenizer: Any, directory: str) -> None:
    """``tokenizer.json`` or ``tokenizer.model`` + ``tokenizer_config.json`` that
    ``cai.tokenizer.load_hf_tokenizer`` reads back (the byte tokenizer writes nothing)."""
    spec = tokenizer.spec(inline=True)
    if spec["kind"] == "byte":
        return
    if spec["kind"] == "hf":
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(spec["json"])
    else:
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(base64.b64decode(spec["model_b64"]))
    config = {"add_bos_token": tokenizer.add_bos, "chat_template": chat_template(tokenizer)}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
