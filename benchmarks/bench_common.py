"""Shared helpers for the benchmarks: HF twin of a ``ModelConfig``, weight copy, matmul peak,
memory bandwidth, roofline estimates, thread report and robust timing."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cai.model import ModelConfig


def hf_llama(cfg: ModelConfig, params: Any | None = None) -> Any:
    """An HF ``LlamaForCausalLM`` with ``cfg``'s shapes (f32, library-default attention); if
    ``params`` (our Flax tree) is given, its weights are copied in so both sides are one model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.mlp != "swiglu" or cfg.norm != "rms" or cfg.position != "rope" or cfg.use_bias:
        raise ValueError("hf_llama covers Llama-style configs only")
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_len,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_cfg).float()
    if params is not None:
        model.load_state_dict(hf_state_dict(params, cfg), strict=False)
        if cfg.tie_embeddings:
            model.tie_weights()
    return model


def hf_state_dict(params: Any, cfg: ModelConfig) -> dict[str, Any]:
    """Our parameter tree -> HF Llama state dict (torch Linear weights are [out, in])."""
    import torch

    D = cfg.d_model
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    lin = lambda w: t(np.asarray(w).reshape(D, -1).T)  # [D, ...] -> [out, D]  # noqa: E731
    sd = {
        "model.embed_tokens.weight": t(params["embedding"]),
        "model.norm.weight": t(params["final_norm"]["scale"]),
    }
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = t(np.asarray(params["unembed"]).T)
    for i in range(cfg.n_layers):
        p, pre = params[f"layers_{i}"], f"model.layers.{i}."
        a, m = p["attn"], p["mlp"]
        sd.update(
            {
                pre + "input_layernorm.weight": t(p["attn_norm"]["scale"]),
                pre + "post_attention_layernorm.weight": t(p["mlp_norm"]["scale"]),
                pre + "self_attn.q_proj.weight": lin(a["q"]),
                pre + "self_attn.k_proj.weight": lin(a["k"]),
                pre + "self_attn.v_proj.weight": lin(a["v"]),
                pre + "self_attn.o_proj.weight": t(np.asarray(a["o"]).reshape(-1, D).T),
                pre + "mlp.gate_proj.weight": lin(m["wg"]),  # silu branch
                pre + "mlp.up_proj.weight": lin(m["wi"]),
                pre + "mlp.down_proj.weight": t(np.asarray(m["wo"]).T),
            }
        )
    return sd


def matmul_peak_gflops(n: int = 2048, reps: int = 8) -> tuple[float, str]:
    """Best f32 GFLOP/s of an n x n x n matmul over numpy, torch and jax (best of ``reps``)."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(jnp.matmul)
    cands = {
        "numpy": lambda: a @ b,
        "torch": lambda: ta @ tb,
        "jax": lambda: mm(ja, jb).block_until_ready(),
    }
    best = {k: 2 * n**3 / min(timed(f, reps, warmup=2)) / 1e9 for k, f in cands.items()}
    lib = max(best, key=best.get)
    return best[lib], ", ".join(f"{k} {v:.0f}" for k, v in best.items())


def memory_bandwidth_gbs(mib: int = 256, reps: int = 8) -> tuple[float, str]:
    """Best read bandwidth (GB/s) over numpy, torch and jax: a sum over a ``mib`` MiB f32 array
    (larger than any cache here), which reads every byte once and writes nothing."""
    import jax
    import jax.numpy as jnp
    import torch

    a = np.random.default_rng(0).standard_normal(mib * 2**18, np.float32)
    ta, ja = torch.from_numpy(a), jnp.asarray(a)
    total = jax.jit(jnp.sum)
    cands = {
        "numpy": lambda: a.sum(),
        "torch": lambda: ta.sum(),
        "jax": lambda: total(ja).block_until_ready(),
    }
    best = {k: a.nbytes / min(timed(f, reps, warmup=2)) / 1e9 for k, f in cands.items()}
    lib = max(best, key=best.get)
    return best[lib], ", ".join(f"{k} {v:.1f}" for k, v in best.items())


def toy_world_config() -> ModelConfig:
    """The shipped toy-world base model's shapes (``cai/assets/toy_base``)."""
    from cai import pretrained, stage_lib

    return pretrained.read_config(str(stage_lib.SHIPPED_BASE))


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul: all but norms and the input embedding table (a
    gather); a tied table is counted once, as the output projection."""
    D = cfg.d_model
    norms = cfg.n_layers * 2 * D + D
    untied_input = 0 if cfg.tie_embeddings else cfg.vocab_size * D
    return cfg.num_params() - norms - untied_input


def roofline_s(flops: float, nbytes: float, peak_gflops: float, bw_gbs: float) -> float:
    """The roofline time of a step: the larger of its compute time at the matmul peak and its
    memory time at the read bandwidth (a step can overlap the two, so neither alone is less)."""
    return max(flops / (peak_gflops * 1e9), nbytes / (bw_gbs * 1e9))


def decode_step_cost(cfg: ModelConfig, batch: int, slots: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one batched decode step over a cache of ``slots`` keys, the least any
    implementation must do: 2 FLOPs per matmul weight per row, 4 per (query head, head dim, key)
    for the two attention dots; every weight read once (f32) and the whole K/V cache read once.
    Activations ([batch, d_model]-sized) are ignored: they live in cache."""
    W = matmul_params(cfg)
    flops = 2 * batch * W + 4 * batch * cfg.n_layers * cfg.n_heads * cfg.head_dim * slots
    nbytes = 4 * (W + 2 * batch * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * slots)
    return flops, nbytes


def prefill_cost(cfg: ModelConfig, batch: int, length: int) -> tuple[float, float]:
    """(FLOPs, bytes) of a prefill of ``length`` tokens per row that projects only the last
    position to logits: matmuls on every token, causal attention (half the T x T scores), the
    weights read once and the K/V cache written once."""
    V, D, L = cfg.vocab_size, cfg.d_model, cfg.n_layers
    W = matmul_params(cfg)
    body = W - V * D  # the output projection runs on one position per row
    flops = 2 * batch * length * body + 2 * batch * V * D
    flops += 2 * batch * L * cfg.n_heads * cfg.head_dim * length * length  # 4 * T^2 / 2
    nbytes = 4 * (W + 2 * batch * L * cfg.n_kv_heads * cfg.head_dim * length)
    return flops, nbytes


def generate_roofline_s(
    cfg: ModelConfig, batch: int, prompt: int, new: int, peak: float, bw: float
) -> tuple[float, float]:
    """Roofline seconds of a whole greedy call (prefill, then ``new - 1`` decode steps whose
    cache grows from ``prompt + 1`` slots) and of its mean decode step."""
    pre = roofline_s(*prefill_cost(cfg, batch, prompt), peak, bw)
    steps = [roofline_s(*decode_step_cost(cfg, batch, prompt + i), peak, bw) for i in range(1, new)]
    return pre + sum(steps), sum(steps) / max(len(steps), 1)


def train_step_bytes(cfg: ModelConfig, batch: int, length: int) -> float:
    """Bytes a train step must move (f32), a lower-end estimate: the weights read in the
    forward and the backward pass and their gradients written (3 x params), AdamW reading
    params, gradients and both moments and writing params and moments (7 x params); and per
    token per layer the activations the backward pass reads back, each written once and read
    once: the block input and the two normed inputs, q, k, v, the attention output, the MLP's
    two input projections and its product (~ 4 D + (N + 2 K) H + 3 F floats), plus the attention
    probabilities (N x T per token)."""
    D, F, L, H = cfg.d_model, cfg.mlp_dim, cfg.n_layers, cfg.head_dim
    N, K = cfg.n_heads, cfg.n_kv_heads
    per_token = 4 * D + (N + 2 * K) * H + 3 * F + N * length
    acts = 2 * batch * length * L * per_token
    return 4 * (10 * cfg.num_params() + acts)


def timed(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of a synchronous ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(secs: list[float]) -> str:
    return (
        f"median {statistics.median(secs) * 1e3:.1f} ms, best {min(secs) * 1e3:.1f} ms "
        f"over {len(secs)}"
    )


def thread_report() -> str:
    import jax
    import torch

    return (
        f"torch.get_num_threads()={torch.get_num_threads()} "
        f"torch.get_num_interop_threads()={torch.get_num_interop_threads()}; "
        f"XLA:CPU intra-op pool = os.cpu_count()={os.cpu_count()} "
        f"(sched_getaffinity={len(os.sched_getaffinity(0))}), "
        f"jax devices={jax.devices()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )


def load_report() -> str:
    """The 1-minute load average: other processes on a shared machine skew CPU timings."""
    return f"loadavg(1 min)={os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
