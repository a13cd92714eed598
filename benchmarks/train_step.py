"""Train-step throughput: our AOT-compiled JAX step vs HF transformers ``LlamaForCausalLM``
(PyTorch, CPU) on the same Llama-style models, same weights: the toy world's model (the
shipped base's shapes) and ``PRESETS["llama_19m"]``.

Both sides: batch 8, 256 predicted positions per row, f32, next-token cross-entropy, global-norm
clipping at 1.0, AdamW (lr 3e-4 constant, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
matrices only). Token counting: a step "trains" B*256 tokens = the predicted targets. HF gets
input_ids[:, :256] and targets input_ids[:, 1:257] (loss computed outside the model); ours gets
the 257-token rows, so it runs one extra (unpredicted) position per row, i.e. it does 257/256 of
HF's work per counted token.

MFU = achieved FLOP/s / matmul peak, the peak being the best f32 GFLOP/s of a 2048^3 matmul in
numpy, torch or jax measured here. FLOPs per trained token (PaLM-style, no causal discount):
    6 * N_matmul + 12 * n_layers * T * n_heads * head_dim
with N_matmul = all parameters except norms and the input embedding table (a gather, not a
matmul; a tied table counts once, as the output projection) and T = 256.

Roofline: the step's FLOPs at the matmul peak or its bytes (``bench_common.train_step_bytes``:
weights, gradients, AdamW state and saved activations, f32) at the read bandwidth measured
here, whichever is longer; each side's fraction of it is
roofline time / measured step time. Sides are timed in alternating rounds (after warm-up) to
share any background noise; we report medians. Library defaults on all cores for both (threads
printed).
Other processes on the cores skew both sides (torch's OpenMP pool much more than XLA's), so
the 1-minute load average is printed at the start and end; trust only quiet runs.

    python benchmarks/train_step.py [--steps 10] [--rounds 3] [--quick] [--rows toy_world,llama_19m]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import numpy as np
import torch

from cai import sharding
from cai.model import PRESETS, ModelConfig, Transformer
from cai.train_lib import OptimConfig, compile_train_step, create_train_state, make_optimizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (  # noqa: E402
    hf_llama,
    load_report,
    matmul_params,
    matmul_peak_gflops,
    memory_bandwidth_gbs,
    roofline_s,
    summary,
    thread_report,
    timed,
    toy_world_config,
    train_step_bytes,
)

OPT = OptimConfig(
    learning_rate=3e-4,
    warmup_steps=0,
    schedule="constant",
    weight_decay=0.1,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    clip_norm=1.0,
)


def flops_per_token(cfg: ModelConfig, T: int) -> float:
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * T * cfg.n_heads * cfg.head_dim


def ours(cfg: ModelConfig, tokens: np.ndarray) -> tuple:
    """(step_fn, params): step_fn() runs one synchronous optimizer step."""
    mesh = sharding.single_device_mesh()
    model = Transformer(cfg)
    opt = make_optimizer(OPT, 1000)
    B, T = tokens.shape
    shapes = {
        "tokens": ((B, T), np.int32),
        "mask": ((B, T), bool),
        "loss_mask": ((B, T), np.float32),
    }
    compiled = compile_train_step(model, opt, mesh, shapes)
    box = {"state": create_train_state(model, opt, mesh, seed=0)}
    params = jax.device_get(box["state"].params)
    batch = sharding.put_batch(
        {"tokens": tokens, "mask": np.ones((B, T), bool), "loss_mask": np.ones((B, T), np.float32)},
        mesh,
    )

    def step() -> float:
        box["state"], metrics = compiled(box["state"], batch)
        return float(metrics["loss"])  # blocks until the step is done

    return step, params


def hf(cfg: ModelConfig, params, tokens: np.ndarray):
    model = hf_llama(cfg, params).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": OPT.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=OPT.learning_rate,
        betas=(OPT.b1, OPT.b2),
        eps=OPT.eps,
    )
    t = torch.from_numpy(tokens.astype(np.int64))
    inputs, targets = t[:, :-1], t[:, 1:]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPT.clip_norm)
        opt.step()
        return float(loss.detach())

    return step


def run_row(name: str, cfg: ModelConfig, args: argparse.Namespace) -> dict[str, float]:
    """Time both sides on ``cfg``; returns tok/s of each and the step FLOPs."""
    B, T = args.batch, args.seq
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T + 1), dtype=np.int32)
    print(f"[{name}] {cfg.num_params() / 1e6:.2f}M params, batch {B} x {T} predicted, f32")
    our_step, params = ours(cfg, tokens)
    hf_step = hf(cfg, params, tokens)
    l0, h0 = our_step(), hf_step()  # same weights and data: first losses should agree
    print(f"  first-step loss: ours {l0:.4f}  hf {h0:.4f}")
    timed(our_step, 0, warmup=args.warmup)
    timed(hf_step, 0, warmup=args.warmup)
    t_ours, t_hf = [], []
    for _ in range(args.rounds):
        t_ours += timed(our_step, args.steps, warmup=0)
        t_hf += timed(hf_step, args.steps, warmup=0)
    print(f"  ours step: {summary(t_ours)}")
    print(f"  hf   step: {summary(t_hf)}")
    return {
        "ours_s": statistics.median(t_ours),
        "hf_s": statistics.median(t_hf),
        "fpt": flops_per_token(cfg, T),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="predicted positions per row")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 steps")
    ap.add_argument(
        "--rows", type=lambda s: s.split(","), default=[],
        help="comma-separated subset of toy_world,llama_19m (default: both)",
    )  # fmt: skip
    args = ap.parse_args()
    unknown = [r for r in args.rows if r not in ("toy_world", "llama_19m")]
    if unknown:
        ap.error(f"--rows: unknown {unknown[0]!r} (known: toy_world, llama_19m)")
    if args.quick:
        args.steps, args.rounds, args.warmup = 3, 2, 2
    B, T = args.batch, args.seq
    print("threads:", thread_report())
    print("start:", load_report())
    peak0, _ = matmul_peak_gflops()  # measured again after the timing; the larger counts
    bw0, _ = memory_bandwidth_gbs()
    rows = {}
    for name, cfg in (("toy_world", toy_world_config()), ("llama_19m", PRESETS["llama_19m"])):
        if not args.rows or name in args.rows:
            rows[name] = (cfg, run_row(name, cfg, args))
    print("end:", load_report())
    (peak, detail), (bw, bw_detail) = matmul_peak_gflops(), memory_bandwidth_gbs()
    peak, bw = max(peak, peak0), max(bw, bw0)
    print(f"matmul peak (f32 2048^3, GFLOP/s): {detail}; before timing {peak0:.0f} -> {peak:.0f}")
    print(f"read bandwidth (GB/s): {bw_detail}; before timing {bw0:.1f} -> {bw:.1f}")
    for name, (cfg, r) in rows.items():
        fpt = r["fpt"]
        ours_tok, hf_tok = B * T / r["ours_s"], B * T / r["hf_s"]
        mfu, hf_mfu = ours_tok * fpt / 1e9 / peak, hf_tok * fpt / 1e9 / peak
        nbytes = train_step_bytes(cfg, B, T)
        roof = roofline_s(fpt * B * T, nbytes, peak, bw)
        bound = "compute" if fpt * B * T / peak >= nbytes / bw else "memory"
        attn = 12 * cfg.n_layers * T * cfg.n_heads * cfg.head_dim
        print(
            f"[{name}] FLOPs/token = 6*{(fpt - attn) / 6:.0f} + 12*L*T*N*H = {fpt / 1e6:.1f} "
            f"MFLOP; step {fpt * B * T / 1e9:.1f} GFLOP, ~{nbytes / 1e6:.0f} MB moved; roofline "
            f"{roof * 1e3:.0f} ms ({bound}-bound)"
        )
        print(
            f"  ours: {ours_tok:.0f} tok/s ({ours_tok * fpt / 1e9:.0f} GFLOP/s, MFU {mfu:.2f}, "
            f"{roof / r['ours_s']:.2f} of roofline); hf: {hf_tok:.0f} tok/s "
            f"({hf_tok * fpt / 1e9:.0f} GFLOP/s, MFU {hf_mfu:.2f}, "
            f"{roof / r['hf_s']:.2f} of roofline)"
        )
        print(
            f"{name} ours_tok_s={ours_tok:.0f} hf_tok_s={hf_tok:.0f} peak_gflops={peak:.0f} "
            f"bw_gbs={bw:.1f} mfu={mfu:.2f} hf_mfu={hf_mfu:.2f} "
            f"ours_roofline={roof / r['ours_s']:.2f} hf_roofline={roof / r['hf_s']:.2f} "
            f"ratio={ours_tok / hf_tok:.2f}"
        )


if __name__ == "__main__":
    main()
