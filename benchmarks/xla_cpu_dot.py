"""One f32 matmul, alone, at the shapes our CPU train and decode steps run: XLA:CPU (a jitted
``x @ w``, no flags) against torch and numpy on the same arrays. A standalone repro for the
train-step, decode and PM/DPO rows that trail HF/TRL (docs/benchmarks.md): if the library's
kernel for one shape is slower alone, no rewrite of the step around it can close that part of
the gap.

    python benchmarks/xla_cpu_dot.py [--reps 50] [--rounds 3]

Shapes (M x K x N, M = tokens): the projections of ``benchmarks/rl_step.py``'s PM step (32 rows
of 49 tokens, d_model 128, MLP 384) and of ``benchmarks/train_step.py``'s llama_19m row (8 rows
of 257 tokens, d_model 384, MLP 1,024, 2 KV heads of 64), forward (tokens x in -> out) and the
weight gradient (in x tokens -> out); a batch-32 decode step's projections of llama_19m and
SmolLM2-135M (d_model 576, MLP 1,536, vocabulary 49,152) in ``benchmarks/decode.py``; and the
2048^3 square the peak is measured on. Sides alternate in rounds after warm-up; each figure is
the median over rounds of a per-round median.
Prints GFLOP/s per side and ``jax / torch`` (their time / ours: above 1 means XLA is faster),
and ends with ``ratio=`` (the smallest over the non-square shapes)."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from bench_common import load_report, thread_report, timed

SHAPES = (  # (label, M, K, N)
    ("rl_step PM: qkv / o projection", 1568, 128, 128),
    ("rl_step PM: MLP in (gate, up)", 1568, 128, 384),
    ("rl_step PM: MLP out", 1568, 384, 128),
    ("rl_step PM: MLP in, weight grad", 128, 1568, 384),
    ("llama_19m: q / o projection", 2056, 384, 384),
    ("llama_19m: k / v projection", 2056, 384, 128),
    ("llama_19m: MLP in (gate, up)", 2056, 384, 1024),
    ("llama_19m: MLP out", 2056, 1024, 384),
    ("llama_19m: MLP in, weight grad", 384, 2056, 1024),
    ("llama_19m decode: q / o projection", 32, 384, 384),
    ("llama_19m decode: MLP in", 32, 384, 1024),
    ("llama_19m decode: MLP out", 32, 1024, 384),
    ("llama_19m decode: logits", 32, 384, 8192),
    ("SmolLM2 decode: q / o projection", 32, 576, 576),
    ("SmolLM2 decode: MLP in", 32, 576, 1536),
    ("SmolLM2 decode: MLP out", 32, 1536, 576),
    ("SmolLM2 decode: logits", 32, 576, 49152),
    ("square (the peak)", 2048, 2048, 2048),
)


def seconds(m: int, k: int, n: int, reps: int, rounds: int, mm: Any) -> dict[str, float]:
    """Median seconds of one ``[m, k] @ [k, n]`` per side, over alternating rounds."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    sides = {
        "jax": lambda: mm(ja, jb).block_until_ready(),
        "torch": lambda: ta @ tb,
        "numpy": lambda: a @ b,
    }
    per_round = {s: [] for s in sides}
    for _ in range(rounds):
        for s, f in sides.items():
            per_round[s].append(statistics.median(timed(f, reps, warmup=3)))
    return {s: statistics.median(v) for s, v in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50, help="timed calls per side per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("threads:", thread_report())
    print("start:", load_report())
    mm = jax.jit(jnp.matmul)
    ratios = []
    for label, m, k, n in SHAPES:
        square = (m, k, n) == (2048, 2048, 2048)
        sec = seconds(m, k, n, max(3, args.reps // 10 if square else args.reps), args.rounds, mm)
        gf = {s: 2 * m * k * n / t / 1e9 for s, t in sec.items()}
        ratio = sec["torch"] / sec["jax"]
        if not square:
            ratios.append(ratio)
        print(
            f"{label:36s} {m:5d}x{k:4d}x{n:4d}  "
            + "  ".join(f"{s} {t * 1e3:6.3f} ms ({gf[s]:4.0f} GFLOP/s)" for s, t in sec.items())
            + f"  jax / torch {ratio:.2f}"
        )
    print("end:", load_report())
    print(f"ratio={min(ratios):.2f}")


if __name__ == "__main__":
    main()
