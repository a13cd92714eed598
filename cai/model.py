"""Decoder-only transformer (Flax linen) covering the Llama, Gemma and GPT-2 families.

Einsum letters used throughout:
  B batch, T query length, S key length (cache slots), N query heads, K kv heads,
  G query heads per kv head (N = K * G), H head dim, D model dim, F mlp dim, V vocab.

Padding: every call takes a boolean ``mask`` [B, T] of real tokens, so left-padded prompts of
different lengths share a batch. A token's position (for RoPE or learned positions) counts only
the real tokens before it, and no query attends to a padded key.

KV cache: a ``KVCache`` holds per-layer keys [B, K, H, S] and values [B, K, S, H] (the layouts
the attention dots read in place) plus the key mask and the next write slot. Calling the model
with a cache writes the T new keys at slots [index, index + T) with ``dynamic_update_slice`` (in
place inside a compiled loop) and returns the updated cache, so prefill (T = prompt length) and
decode (T = 1) share one code path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from cai.errors import ConfigError
from cai.sharding import constrain

_NEG = -1e30  # finite "minus infinity": a fully masked (padding) query row stays NaN-free


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs; presets for the families we target are in ``PRESETS`` below."""

    vocab_size: int = 259
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4  # == n_heads: MHA; 1: MQA; in between: GQA
    head_dim: int = 32
    mlp_dim: int = 512
    mlp: str = "swiglu"  # swiglu | geglu | gelu
    norm: str = "rms"  # rms | layer
    norm_eps: float = 1e-6
    norm_offset: float = 0.0  # Gemma stores (scale - 1): y = x_hat * (offset + w)
    post_norms: bool = False  # Gemma-2: also normalise each sublayer's output
    position: str = "rope"  # rope | learned
    rope_theta: float = 10000.0
    # RoPE context extension as in HF ``rope_scaling``: none | linear | llama3 (Llama 3.1+).
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_len: int = 8192  # llama3 only
    # Local attention (Gemma-2): layer i sees only the last ``sliding_window`` keys unless
    # (i + 1) % sliding_window_pattern == 0. 0 disables (every layer global).
    sliding_window: int = 0
    sliding_window_pattern: int = 2
    max_len: int = 2048  # size of the learned position table
    tie_embeddings: bool = True
    embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(d_model)
    query_scale: float = 0.0  # attention scale; 0 means 1/sqrt(head_dim)
    attn_softcap: float = 0.0  # 0 disables: logits -> c * tanh(logits / c)
    final_softcap: float = 0.0
    use_bias: bool = False  # GPT-2 has biases on every projection
    scalar_head: bool = False  # value function / reward model head
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        choices = {
            "mlp": ("swiglu", "geglu", "gelu"),
            "norm": ("rms", "layer"),
            "position": ("rope", "learned"),
            "rope_scaling": ("none", "linear", "llama3"),
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ConfigError(
                    f"model.{field}={getattr(self, field)!r}: expected one of {allowed}"
                )
        for field in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "mlp_dim",
        ):
            if getattr(self, field) <= 0:
                raise ConfigError(f"model.{field} must be positive, got {getattr(self, field)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not a multiple of "
                f"model.n_kv_heads={self.n_kv_heads}"
            )
        if self.sliding_window < 0 or self.sliding_window_pattern < 1:
            raise ConfigError(
                f"model.sliding_window={self.sliding_window} must be >= 0 and "
                f"model.sliding_window_pattern={self.sliding_window_pattern} >= 1"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.head_dim={self.head_dim} must be even for RoPE")
        for field in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, field))
            except TypeError as e:
                raise ConfigError(f"model.{field}={getattr(self, field)!r} is not a dtype") from e

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def num_params(self, include_embeddings: bool = True) -> int:
        D, F, H = self.d_model, self.mlp_dim, self.head_dim
        attn = D * H * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = D * F * (3 if self.mlp in ("swiglu", "geglu") else 2)
        per_layer = attn + mlp + 2 * D
        emb = self.vocab_size * D * (1 if self.tie_embeddings else 2)
        total = self.n_layers * per_layer + D
        return total + (emb if include_embeddings else 0)


PRESETS: dict[str, ModelConfig] = {
    # Test/smoke sizes.
    "tiny": ModelConfig(
        vocab_size=259, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128
    ),
    "small": ModelConfig(
        vocab_size=259, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=32, mlp_dim=768
    ),
    # The benchmark model (Llama-style, ~19M params).
    "llama_19m": ModelConfig(
        vocab_size=8192,
        d_model=384,
        n_layers=8,
        n_heads=6,
        n_kv_heads=2,
        head_dim=64,
        mlp_dim=1024,
        norm_eps=1e-6,
        tie_embeddings=False,
    ),
    # Real families (shapes from their published configs).
    "smollm2_135m": ModelConfig(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        mlp_dim=1536,
        rope_theta=100000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        max_len=8192,
    ),
    "llama3_8b": ModelConfig(
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        mlp_dim=14336,
        rope_theta=500000.0,
        norm_eps=1e-5,
        tie_embeddings=False,
        max_len=8192,
        dtype="bfloat16",
        remat=True,
    ),
    "gemma_2b": ModelConfig(
        vocab_size=256000,
        d_model=2048,
        n_layers=18,
        n_heads=8,
        n_kv_heads=1,
        head_dim=256,
        mlp_dim=16384,
        mlp="geglu",
        norm_offset=1.0,
        embed_scale=True,
        tie_embeddings=True,
        max_len=8192,
        dtype="bfloat16",
        remat=True,
    ),
    "gpt2": ModelConfig(
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        head_dim=64,
        mlp_dim=3072,
        mlp="gelu",
        norm="layer",
        norm_eps=1e-5,
        position="learned",
        max_len=1024,
        use_bias=True,
        tie_embeddings=True,
    ),
}


@flax.struct.dataclass
class KVCache:
    """Per-layer keys [B, K, H, S] and values [B, K, S, H]; ``mask`` [B, S] marks slots holding
    real tokens; ``index`` is the next slot to write (shared by the batch); ``pos`` [B] the next
    position."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    pos: jax.Array


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    k_shape = (batch, cfg.n_kv_heads, cfg.head_dim, length)
    v_shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
    return KVCache(
        k=tuple(jnp.zeros(k_shape, cfg.compute_dtype) for _ in range(cfg.n_layers)),
        v=tuple(jnp.zeros(v_shape, cfg.compute_dtype) for _ in range(cfg.n_layers)),
        mask=jnp.zeros((batch, length), bool),
        index=jnp.zeros((), jnp.int32),
        pos=jnp.zeros((batch,), jnp.int32),
    )


@flax.struct.dataclass
class Output:
    logits: jax.Array | None  # [B, T, V] float32
    values: jax.Array | None  # [B, T] float32, when cfg.scalar_head
    hidden: jax.Array  # [B, T, D] after the final norm
    cache: KVCache | None


def _param(
    module: nn.Module,
    name: str,
    init: Any,
    shape: tuple[int, ...],
    names: tuple[str | None, ...],
    dtype: jnp.dtype,
) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def _dense_init(fan_in: int) -> Any:
    return nn.initializers.normal(stddev=1.0 / math.sqrt(fan_in))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def dense(x: jax.Array, w: jax.Array, x_axes: str, w_axes: str, out_axes: str) -> jax.Array:
    """``einsum("...{x_axes},{w_axes}->...{out_axes}", x, w)``: a projection whose leading
    (batch/length) dims are arbitrary, e.g. ``dense(x, wq, "d", "dnh", "nh")``.

    Same forward and the same gradients as the einsum; only the backward is written out so the
    weight gradient contracts over *one* flattened token axis. Left to autodiff, it contracts over
    (batch, length), and XLA:CPU lowers that with a transposed copy of the (large) activation
    gradient and a slower transposed-operand dot, which cost ~40% of a CPU train step."""
    return jnp.einsum(f"...{x_axes},{w_axes}->...{out_axes}", x, w)


def _dense_fwd(x, w, x_axes, w_axes, out_axes):  # noqa: ANN001, ANN202
    return dense(x, w, x_axes, w_axes, out_axes), (x, w)


def _dense_bwd(x_axes, w_axes, out_axes, res, g):  # noqa: ANN001, ANN202
    x, w = res
    dx = jnp.einsum(f"...{out_axes},{w_axes}->...{x_axes}", g, w)
    x2 = x.reshape((-1,) + x.shape[x.ndim - len(x_axes) :])  # [tokens, *x features]
    g2 = g.reshape((-1,) + g.shape[g.ndim - len(out_axes) :])
    dw = jnp.einsum(f"z{x_axes},z{out_axes}->{w_axes}", x2, g2)
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    return x if cap <= 0 else cap * jnp.tanh(x / cap)


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """RoPE inverse frequencies [H/2], with the checkpoint's context-extension scaling.

    linear: every frequency / factor. llama3: wavelengths 2*pi/f longer than
    original_max_len / low_freq_factor are divided by factor, those shorter than
    original_max_len / high_freq_factor are kept, and the band between is interpolated with
    s = (original_max_len / wavelength - low) / (high - low): f' = (1 - s) f / factor + s f."""
    half = cfg.head_dim // 2
    freq = cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [H/2]
    if cfg.rope_scaling == "linear":
        return freq / cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        lo, hi, old = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_len
        wavelen = 2 * math.pi / freq
        s = (old / wavelen - lo) / (hi - lo)
        mid = (1 - s) * freq / cfg.rope_factor + s * freq
        freq = jnp.where(wavelen > old / lo, freq / cfg.rope_factor, freq)
        return jnp.where((wavelen <= old / lo) & (wavelen >= old / hi), mid, freq)
    return freq


def rope_angles(positions: jax.Array, freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) of the rotary angles, each [B, T, 1, H/2], for positions [B, T] and freq
    [H/2] from ``rope_frequencies``. Computed once per forward and shared by every layer's
    queries and keys: left inside each layer, XLA:CPU fused the sin/cos into all 2·L rotations
    and evaluated them per head and element (~0.7 ms each on the rl_step PM's batch)."""
    angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, H/2]
    both = jnp.stack([jnp.sin(angle), jnp.cos(angle)])[:, :, :, None, :]  # [2, B, T, 1, H/2]
    both = _unfused(both)
    return both[0], both[1]


def _unfused(x: jax.Array) -> jax.Array:
    """``x``, computed once: XLA:CPU strips ``optimization_barrier`` before fusing and would
    fuse an elementwise producer into (and recompute it in) every consumer; a reduction's
    output is written to memory. The sum over a pair (x, −0·x) is x exactly."""
    return jnp.sum(jnp.stack([x, x * -0.0]), axis=0)


def apply_rope(x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary embedding, "rotate half" layout (HF Llama): x [B, T, N, H], rope = (sin, cos)
    from ``rope_angles``."""
    sin, cos = rope
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Norm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        D = x.shape[-1]
        x32 = x.astype(jnp.float32)
        if cfg.norm == "rms":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + cfg.norm_eps)
        else:
            mu = jnp.mean(x32, -1, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mu), -1, keepdims=True)
            y = (x32 - mu) * jax.lax.rsqrt(var + cfg.norm_eps)
        scale_init = nn.initializers.zeros if cfg.norm_offset else nn.initializers.ones
        scale = _param(self, "scale", scale_init, (D,), ("norm",), cfg.weight_dtype)
        y = y * (cfg.norm_offset + scale.astype(jnp.float32))
        if cfg.norm == "layer":
            bias = _param(self, "bias", nn.initializers.zeros, (D,), ("norm",), cfg.weight_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(cfg.compute_dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        attn_mask: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg = self.cfg
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        B, T, _ = x.shape
        G = N // K
        dt, wt = cfg.compute_dtype, cfg.weight_dtype
        wq = _param(self, "q", _dense_init(D), (D, N, H), ("embed", "q_heads", "head_dim"), wt)
        wk = _param(self, "k", _dense_init(D), (D, K, H), ("embed", "kv_heads", "head_dim"), wt)
        wv = _param(self, "v", _dense_init(D), (D, K, H), ("embed", "kv_heads", "head_dim"), wt)
        wo = _param(self, "o", _dense_init(N * H), (N, H, D), ("q_heads", "head_dim", "embed"), wt)
        q = dense(x, wq.astype(dt), "d", "dnh", "nh")  # [B, T, N, H]
        k = dense(x, wk.astype(dt), "d", "dkh", "kh")  # [B, T, K, H]
        v = dense(x, wv.astype(dt), "d", "dkh", "kh")  # [B, T, K, H]
        if cfg.use_bias:
            zeros = nn.initializers.zeros
            q = q + _param(self, "q_bias", zeros, (N, H), ("q_heads", "head_dim"), wt).astype(dt)
            k = k + _param(self, "k_bias", zeros, (K, H), ("kv_heads", "head_dim"), wt).astype(dt)
            v = v + _param(self, "v_bias", zeros, (K, H), ("kv_heads", "head_dim"), wt).astype(dt)
        q = constrain(q, ("batch", "length", "act_heads", None))
        k = constrain(k, ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        if cfg.position == "rope":
            q = apply_rope(q, rope)
            k = apply_rope(k, rope)

        scale = cfg.query_scale or 1.0 / math.sqrt(H)
        q = (q * scale).reshape(B, T, K, G, H)  # [B, T, K, G, H]
        new_cache = None
        if cache_kv is None:
            logits = jnp.einsum("btkgh,bskh->bkgts", q, k.astype(dt))  # [B, K, G, T, S]
        else:
            # The cache keeps keys as [B, K, H, S] and values as [B, K, S, H]: both attention
            # dots then read it in place as plain (batched) matrix products; a [B, S, K, H]
            # cache gets transposed in full by XLA at every decode step.
            kc = jax.lax.dynamic_update_slice(
                cache_kv[0], k.transpose(0, 2, 3, 1).astype(cache_kv[0].dtype), (0, 0, 0, index)
            )
            vc = jax.lax.dynamic_update_slice(
                cache_kv[1], v.swapaxes(1, 2).astype(cache_kv[1].dtype), (0, 0, index, 0)
            )
            new_cache = (kc, vc)
            if T == 1:  # decode step: drop the unit T axis, which makes XLA pick bad layouts
                logits = jnp.einsum("bkgh,bkhs->bkgs", q[:, 0], kc.astype(dt))[:, :, :, None]
            else:
                logits = jnp.einsum("btkgh,bkhs->bkgts", q, kc.astype(dt))
        logits = softcap(logits.astype(jnp.float32), cfg.attn_softcap)
        logits = jnp.where(attn_mask[:, None, None, :, :], logits, _NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(dt)
        if cache_kv is None:
            out = jnp.einsum("bkgts,bskh->btkgh", probs, v.astype(dt))  # [B, T, K, G, H]
        elif T == 1:
            out = jnp.einsum("bkgs,bksh->bkgh", probs[:, :, :, 0], vc.astype(dt))[:, None]
        else:
            out = jnp.einsum("bkgts,bksh->btkgh", probs, vc.astype(dt))
        out = out.reshape(B, T, N, H)  # [B, T, N, H]
        out = constrain(out, ("batch", "length", "act_heads", None))
        y = dense(out, wo.astype(dt), "nh", "nhd", "d")  # [B, T, D]
        if cfg.use_bias:
            y = y + _param(self, "o_bias", nn.initializers.zeros, (D,), ("embed",), wt).astype(dt)
        return y, new_cache


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        D, F = cfg.d_model, cfg.mlp_dim
        dt, wt = cfg.compute_dtype, cfg.weight_dtype
        zeros = nn.initializers.zeros
        wi = _param(self, "wi", _dense_init(D), (D, F), ("embed", "mlp"), wt)
        h = dense(x, wi.astype(dt), "d", "df", "f")  # [B, T, F]
        if cfg.use_bias:
            h = h + _param(self, "wi_bias", zeros, (F,), ("mlp",), wt).astype(dt)
        if cfg.mlp == "gelu":
            h = jax.nn.gelu(h, approximate=True)
        else:
            wg = _param(self, "wg", _dense_init(D), (D, F), ("embed", "mlp"), wt)
            g = dense(x, wg.astype(dt), "d", "df", "f")  # [B, T, F]
            act = jax.nn.silu(g) if cfg.mlp == "swiglu" else jax.nn.gelu(g, approximate=True)
            h = act * h
        h = constrain(h, ("batch", "length", "act_mlp"))
        wo = _param(self, "wo", _dense_init(F), (F, D), ("mlp", "embed"), wt)
        y = dense(h, wo.astype(dt), "f", "fd", "d")  # [B, T, D]
        if cfg.use_bias:
            y = y + _param(self, "wo_bias", zeros, (D,), ("embed",), wt).astype(dt)
        return y


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        attn_mask: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg = self.cfg
        h, new_kv = Attention(cfg, name="attn")(
            Norm(cfg, name="attn_norm")(x), rope, attn_mask, cache_kv, index
        )
        if cfg.post_norms:
            h = Norm(cfg, name="attn_post_norm")(h)
        x = constrain(x + h, ("batch", "length", "act_embed"))
        h = Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x))
        if cfg.post_norms:
            h = Norm(cfg, name="mlp_post_norm")(h)
        x = constrain(x + h, ("batch", "length", "act_embed"))
        return x, new_kv


class Transformer(nn.Module):
    """``__call__(tokens, mask, cache) -> Output``; ``project`` maps hidden states to logits."""

    cfg: ModelConfig

    def setup(self) -> None:
        cfg = self.cfg
        D, V = cfg.d_model, cfg.vocab_size
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(_dense_init(D), ("vocab", "embed")),
            (V, D),
            cfg.weight_dtype,
        )
        if cfg.position == "learned":
            self.pos_embedding = self.param(
                "pos_embedding",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("position", "embed")),
                (cfg.max_len, D),
                cfg.weight_dtype,
            )
        block = nn.remat(Block) if cfg.remat else Block
        self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.n_layers)]
        self.final_norm = Norm(cfg)
        if not cfg.tie_embeddings:
            self.unembed = self.param(
                "unembed",
                nn.with_logical_partitioning(_dense_init(D), ("embed", "vocab")),
                (D, V),
                cfg.weight_dtype,
            )
        if cfg.scalar_head:
            self.value_w = self.param(
                "value_w",
                nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                (D,),
                cfg.weight_dtype,
            )
            self.value_b = self.param(
                "value_b",
                nn.with_logical_partitioning(nn.initializers.zeros, ()),
                (),
                cfg.weight_dtype,
            )

    def __call__(
        self,
        tokens: jax.Array,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        compute_logits: bool = True,
    ) -> Output:
        cfg = self.cfg
        B, T = tokens.shape
        mask = jnp.ones((B, T), bool) if mask is None else mask.astype(bool)
        steps = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1  # [B, T] index among real tokens
        if cache is None:
            positions = jnp.maximum(steps, 0)
            key_mask = mask  # [B, S=T]
            q_slot = jnp.arange(T)
            index = None
        else:
            positions = jnp.maximum(cache.pos[:, None] + steps, 0)
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
            q_slot = cache.index + jnp.arange(T)
            index = cache.index
        S = key_mask.shape[1]
        causal = jnp.arange(S)[None, :] <= q_slot[:, None]  # [T, S]
        attn_mask = key_mask[:, None, :] & causal[None]  # [B, T, S]
        local_mask = attn_mask
        if cfg.sliding_window:  # slot distance == position distance between real tokens
            near = q_slot[:, None] - jnp.arange(S)[None, :] < cfg.sliding_window  # [T, S]
            local_mask = attn_mask & near[None]  # [B, T, S]

        x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.compute_dtype)  # [B, T, D]
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), cfg.compute_dtype)
        if cfg.position == "learned":
            x = x + jnp.take(self.pos_embedding, positions, axis=0).astype(cfg.compute_dtype)
        x = constrain(x, ("batch", "length", "act_embed"))

        rope = rope_angles(positions, rope_frequencies(cfg)) if cfg.position == "rope" else None
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            local = cfg.sliding_window and (i + 1) % cfg.sliding_window_pattern != 0
            x, kv = layer(x, rope, local_mask if local else attn_mask, kv, index)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        h = self.final_norm(x)

        new_cache = None
        if cache is not None:
            new_cache = KVCache(
                k=tuple(new_k),
                v=tuple(new_v),
                mask=key_mask,
                index=cache.index + T,
                pos=cache.pos + jnp.sum(mask, axis=1, dtype=jnp.int32),
            )
        values = None
        if cfg.scalar_head:
            values = jnp.einsum(
                "btd,d->bt", h.astype(jnp.float32), self.value_w.astype(jnp.float32)
            ) + self.value_b.astype(jnp.float32)  # [B, T]
        logits = self.project(h) if compute_logits else None
        return Output(logits=logits, values=values, hidden=h, cache=new_cache)

    def project(self, h: jax.Array) -> jax.Array:
        """Hidden states [..., D] -> float32 logits [..., V] (soft-capped if configured)."""
        cfg = self.cfg
        dt = cfg.compute_dtype
        if cfg.tie_embeddings:
            logits = dense(h, self.embedding.astype(dt), "d", "vd", "v")
        else:
            logits = dense(h, self.unembed.astype(dt), "d", "dv", "v")
        if logits.ndim == 3:
            logits = constrain(logits, ("batch", "length", "act_vocab"))
        return softcap(logits.astype(jnp.float32), cfg.final_softcap)


def last_token(x: jax.Array, mask: jax.Array) -> jax.Array:
    """The entry [B, ...] at each row's last real token (right- or left-padded rows)."""
    T = mask.shape[1]
    idx = T - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # [B]
    return jnp.take_along_axis(x, idx.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
