"""RL iterations side by side: our PPO, RLOO, DPO and PM steps vs published trainers (TRL,
tunix) on the same tiny models and batch, in seconds per phase. One command:

    python benchmarks/rl_step.py [--reps 3] [--rows ppo,rloo,dpo,pm] [--skip-tunix]
                                 [--torch-threads N]

Models (random weights, f32 on both sides): a Llama-style policy (vocab 2048, d_model 128,
4 layers, 4 heads of 32, SwiGLU MLP 384, RoPE, RMSNorm, untied embeddings), and a reward model
with the same backbone plus a scalar head (our ``ModelConfig(scalar_head=True)``; HF
``LlamaForSequenceClassification``); the value model starts as a copy of the reward model.
Our weights are copied into the HF models (``bench_common.hf_state_dict``) and saved with a
word-level tokenizer (``rl_common.build_tokenizer``) to a temp dir, from which TRL and tunix
load them. Batch: 16 prompts of exactly 16 tokens ("\\n\\nHuman: <12 words>\\n\\nAssistant:"),
exactly 32 new tokens per reply (EOS stopping off on every side: our ``eos_id=-1``, TRL PPO's
``stop_token=None``, TRL RLOO's ``min_new_tokens=32``, tunix's ``eos_tokens=[-1]``), sampling at
temperature 1, one epoch of updates, AdamW at lr 1e-5.

Rows (their seconds / ours is each row's ratio; the script ends with ``ratio=<smallest>``):

1. **PPO**: one iteration of ``cai.stages.rl_cai.PPOTrainer`` (value model separate, reward =
   our PM forward through ``preference_model.RewardModel``; one minibatch of 16 rows: one policy
   and one value step) vs ``trl.experimental.ppo.PPOTrainer`` (trl 1.12.0: policy, reference,
   value and reward models, one minibatch of 16) and vs tunix's ``PpoLearner`` (google-tunix
   0.1.7, its own Llama3 loaded from the same safetensors, critic and reward heads from
   ``tunix.rl.utils.create_critic_model``, vanilla rollout; run in its own venv).
2. **RLOO**, k = 4 samples per prompt (64 rollouts): ``cai.rl_lib`` generate/score plus
   ``ppo.rloo_advantages`` / ``ppo.rloo_loss`` and one compiled train step, vs TRL 1.16's
   ``RLOOTrainer`` (one optimizer step on the 64 completions; run in its own venv).
3. **DPO**: one step on 16 pairs (prompt 16 + reply 32 + EOS tokens): the reference's
   ``dpo.sequence_logprobs`` (compiled) then a train step of ``dpo.dpo_loss``, vs TRL's
   ``DPOTrainer`` (which runs the reference inside its step).
4. **PM**: one step of ``preference_model.pm_loss`` on 16 pairs (``PairBatches``), vs TRL's
   ``RewardTrainer``.

Phases: **rollout** (generation), **scoring** (policy/reference/value log-probs and values,
the reward model, advantages), **update** (optimizer steps). For TRL PPO they are cut by
wrapping ``batch_generation`` and the first gradient-enabled ``forward`` of the update, for
TRL RLOO ``_generate`` / ``_generate_and_score_completions`` / ``training_step``, for DPO / PM
by the trainer's step-end callback (their step holds everything). Each side runs
``rl_common.WARMUP`` = 2 untimed iterations (compiles, first calls; tunix still compiles in its
second), then ``--reps`` timed ones, and the median is taken.
Gradient checkpointing off and f32 on the TRL side (their configs default to on / bf16).

Under load torch's thread pool collapses, so the script prints ``torch.get_num_threads()``, the
load average before and after, and the host's measured f32 matmul peak; trust quiet runs.
``--torch-threads 1`` pins the TRL sides to one thread, which holds up far better when other
processes use the cores (a plain HF train step here: 0.2 s on 1 thread vs 0.4-5 s on 2).

Baselines outside the main environment (both venvs see the system site-packages, so they reuse
torch 2.13.0+cpu / transformers / jax; nothing there pulls another torch)::

    pip install datasets && pip install --no-deps trl==1.12.0          # rows 1, 3, 4
    python -m venv --system-site-packages /work/venvs/trl116
    /work/venvs/trl116/bin/pip install --no-deps 'trl==1.16.*'          # row 2
    python -m venv --system-site-packages /work/venvs/tunix
    /work/venvs/tunix/bin/pip install google-tunix==0.1.7               # row 1, tunix column

(``--trl116-python`` / ``--tunix-python`` point elsewhere.) A baseline that cannot run prints
``skipped: <why>`` and the other rows go on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cai import dpo, ppo, rl_lib, sharding, stage_lib
from cai import preference_model as pm
from cai.model import ModelConfig, Transformer
from cai.sampling import SamplingConfig
from cai.stages import rl_cai
from cai.tokenizer import load_hf_tokenizer, render_chat
from cai.train_lib import (
    OptimConfig,
    compile_train_step,
    create_train_state,
    init_params,
    make_optimizer,
)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rl_common as rc  # noqa: E402
from bench_common import (  # noqa: E402
    hf_llama,
    hf_state_dict,
    load_report,
    matmul_peak_gflops,
    thread_report,
)

CFG = ModelConfig(
    vocab_size=rc.VOCAB,
    d_model=rc.D_MODEL,
    n_layers=rc.LAYERS,
    n_heads=rc.HEADS,
    n_kv_heads=rc.HEADS,
    head_dim=rc.HEAD_DIM,
    mlp_dim=rc.MLP,
    rope_theta=rc.ROPE_THETA,
    norm_eps=rc.NORM_EPS,
    tie_embeddings=False,
)
PM_CFG = dataclasses.replace(CFG, scalar_head=True)
OPTIM = OptimConfig(
    learning_rate=rc.LR, warmup_steps=0, schedule="constant", weight_decay=0.0, clip_norm=1.0
)
Timings = list[dict[str, float]]


# ----------------------------------------------------------------------------- shared assets


@dataclasses.dataclass
class Assets:
    root: str
    tok: Any  # our tokenizer (cai.tokenizer.HFTokenizer over the same tokenizer.json)
    mesh: Any
    params: Any  # policy (and reference) params
    pm_params: Any  # reward model params (scalar head)
    prompts: list[str]  # user turns
    prompt_ids: np.ndarray  # [B, P] their HH renderings, identical on both sides

    @property
    def policy_dir(self) -> str:
        return os.path.join(self.root, "policy")

    @property
    def rm_dir(self) -> str:
        return os.path.join(self.root, "rm")

    @property
    def tok_dir(self) -> str:
        return os.path.join(self.root, "tok")


def hf_reward_model(cfg: ModelConfig, params: Any) -> Any:
    """An HF ``LlamaForSequenceClassification`` (1 label) holding our scalar-head PM's weights
    (HF's score has no bias: ours is 0)."""
    import torch
    from transformers import LlamaForSequenceClassification

    lm = hf_llama(dataclasses.replace(cfg, scalar_head=False))
    lm.config.num_labels = 1
    lm.config.pad_token_id = rc.PAD_ID
    model = LlamaForSequenceClassification(lm.config).float()
    model.load_state_dict(hf_state_dict(params, cfg), strict=False)
    with torch.no_grad():
        model.score.weight.copy_(torch.from_numpy(np.asarray(params["value_w"], np.float32))[None])
    return model


def make_assets(root: str) -> Assets:
    rc.build_tokenizer(os.path.join(root, "tok"))
    tok = load_hf_tokenizer(os.path.join(root, "tok"))
    mesh = sharding.single_device_mesh()
    params = init_params(Transformer(CFG), mesh, 0)
    pm_params = dict(init_params(Transformer(PM_CFG), mesh, 1))
    w = np.random.default_rng(2).normal(0.0, CFG.d_model**-0.5, (CFG.d_model,))
    pm_params["value_w"] = jax.device_put(w.astype(np.float32), pm_params["value_w"].sharding)
    for cfg_, p, d, make in (
        (CFG, params, "policy", hf_llama),
        (PM_CFG, pm_params, "rm", hf_reward_model),
    ):
        model = make(cfg_, jax.device_get(p))
        for k, v in (("pad_token_id", rc.PAD_ID), ("bos_token_id", rc.BOS_ID)):
            setattr(model.config, k, v)
        model.config.eos_token_id = rc.EOS_ID
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = rc.PAD_ID
        model.save_pretrained(os.path.join(root, d))
        for f in os.listdir(os.path.join(root, "tok")):
            shutil.copy(os.path.join(root, "tok", f), os.path.join(root, d, f))
    # For tunix: the PM's backbone as a causal LM (its loader maps LlamaForCausalLM keys) and
    # its scalar head as .npy (the prompts are ``rc.prompt_texts()`` on every side).
    pm_lm = {k: v for k, v in jax.device_get(pm_params).items() if not k.startswith("value_")}
    hf_llama(CFG, pm_lm).save_pretrained(os.path.join(root, "rm_lm"))
    np.save(os.path.join(root, "rm_head.npy"), np.asarray(jax.device_get(pm_params["value_w"])))
    prompts = rc.prompt_texts()
    ids = [render_chat(tok, [{"role": "user", "content": t}], True)[0] for t in prompts]
    assert all(len(i) == rc.P for i in ids), [len(i) for i in ids]
    return Assets(root, tok, mesh, params, pm_params, prompts, np.asarray(ids, np.int32))


def loaded(a: Assets, which: str) -> stage_lib.Loaded:
    """Our ``Loaded`` policy (stop id -1: never stops early) or PM."""
    if which == "policy":
        return stage_lib.Loaded("", CFG, Transformer(CFG), a.params, a.tok, -1)
    return stage_lib.Loaded("", PM_CFG, Transformer(PM_CFG), a.pm_params, a.tok, a.tok.eos_id)


def convs(a: Assets, repeat: int = 1) -> list[pm.Messages]:
    return [(("user", t),) for t in a.prompts for _ in range(repeat)]


# ----------------------------------------------------------------------------- timing helpers


def time_iterations(
    step: Callable[[int], dict[str, float]], reps: int, warmup: int = rc.WARMUP
) -> Timings:
    """``step(i)`` returns its phase seconds; its wall time is the total."""
    out = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        phases = step(i)
        if i >= warmup:
            out.append({**phases, "total": time.perf_counter() - t0})
    return out


class _StepClock:
    """A ``TrainerCallback``-like recorder of ``on_step_end`` times."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
                clock.ends.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                clock.ends.append(time.perf_counter())

        return CB()

    def steps(self) -> list[float]:
        return list(np.diff(self.ends))


def _quiet_trainer(trainer: Any) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


# ----------------------------------------------------------------------------- row 1: PPO


def ours_ppo(a: Assets, reps: int) -> Timings:
    cfg = rl_cai.RLConfig(
        iterations=reps + rc.WARMUP, batch_size=rc.B, rollout_batch=rc.B, score_batch=rc.B,
        minibatch=rc.B, train_batch=rc.B, epochs=1, prompt_len=rc.P, max_new_tokens=rc.N,
        temperature=1.0, value="model", kl_kind="fixed", beta=rc.KL_BETA,
        missing_eos_penalty=0.0,
    )  # fmt: skip
    rm = pm.RewardModel(loaded(a, "pm"), a.mesh, rc.B, 64, fixed_shape=True)

    def reward_fn(cs: list[pm.Messages], texts: list[str]) -> dict[str, np.ndarray]:
        return {"score": rm.rewards([(*c, ("assistant", t)) for c, t in zip(cs, texts)])}

    value = (Transformer(PM_CFG), a.pm_params)
    trainer = rl_cai.PPOTrainer(
        cfg, OPTIM, OPTIM, a.mesh, loaded(a, "policy"), value, reward_fn, rl_cai.Scores(0.0, 1.0)
    )
    cs = convs(a)

    def step(i: int) -> dict[str, float]:
        row, _, _ = trainer.iteration(i, cs)
        assert row["response_tokens"] == rc.N, row["response_tokens"]
        s = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("seconds/")}
        scoring = s["reference_value_scoring"] + s["reward"] + s["advantages"]
        return {"rollout": s["rollout"], "scoring": scoring, "update": s["update"]}

    return time_iterations(step, reps)


def trl_ppo(a: Assets, reps: int) -> Timings:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(a.tok_dir)
    f32 = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(a.policy_dir, **f32)
    ref = AutoModelForCausalLM.from_pretrained(a.policy_dir, **f32)
    value = AutoModelForSequenceClassification.from_pretrained(a.rm_dir, **f32)
    reward = AutoModelForSequenceClassification.from_pretrained(a.rm_dir, **f32)
    ds = Dataset.from_dict({"input_ids": a.prompt_ids.astype(np.int64).tolist()})
    n_iter = reps + rc.WARMUP
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(
            **rc.trl_args(out),
            per_device_train_batch_size=rc.B,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=1,
            total_episodes=rc.B * n_iter,
            local_rollout_forward_batch_size=rc.B,
            response_length=rc.N,
            stop_token=None,
            temperature=1.0,
            kl_coef=rc.KL_BETA,
            missing_eos_penalty=None,
            num_sample_generations=0,
        )
        trainer = PPOTrainer(
            args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
            value_model=value, train_dataset=ds, eval_dataset=ds,
        )  # fmt: skip
        _quiet_trainer(trainer)
        clock = _StepClock()
        trainer.add_callback(clock.callback())
        gens: list[float] = []
        upd_starts: list[float] = []
        orig_gen, orig_fwd = ppo_mod.batch_generation, ppo_mod.forward

        def timed_gen(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = orig_gen(*args, **kw)
            assert out[0].shape[1] == rc.P + rc.N, out[0].shape  # no early stop
            gens.append((t0, time.perf_counter()))
            return out

        def timed_fwd(*args: Any, **kw: Any) -> Any:
            if torch.is_grad_enabled() and len(upd_starts) < len(gens):
                upd_starts.append(time.perf_counter())
            return orig_fwd(*args, **kw)

        ppo_mod.batch_generation, ppo_mod.forward = timed_gen, timed_fwd
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                trainer.train()  # TRL prints "===training policy==="
        finally:
            ppo_mod.batch_generation, ppo_mod.forward = orig_gen, orig_fwd
    ends = clock.ends  # train begin, then one per iteration
    rows = []
    for i in range(rc.WARMUP, n_iter):
        (g0, g1), u0 = gens[i], upd_starts[i]
        rows.append(
            {"rollout": g1 - g0, "scoring": u0 - g1, "update": ends[i + 1] - u0,
             "total": ends[i + 1] - ends[i]}
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- row 2: RLOO


def rloo_loss(
    params: Any, batch: dict[str, jax.Array], model: Transformer, *, n_new: int
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``ppo.rloo_loss`` on the policy's log-probs of the sampled replies (temperature 1)."""
    tokens, mask = batch["tokens"], batch["mask"]
    logits, _ = rl_lib.response_view(params, tokens, mask, model, n_new)
    logp = ppo.token_logprobs(logits, tokens[:, -n_new:], 1.0)
    rmask = mask[:, -n_new:].astype(jnp.float32)
    return ppo.rloo_loss(logp, batch["advantages"], rmask), {}


def rloo_advantages(
    logp: jax.Array, logp_ref: jax.Array, rmask: jax.Array, score: jax.Array, beta: float
) -> jax.Array:
    """Sequence reward = PM score − β Σ_t k1 (``ppo.shaped_rewards`` summed), then RLOO's
    leave-one-out advantages over each prompt's K samples."""
    kl = ppo.kl_k1(logp, logp_ref) * rmask
    zero = jnp.zeros_like(score)
    seq = ppo.shaped_rewards(score, 0.0, kl, rmask, beta, zero, 0.0).sum(-1)
    return ppo.rloo_advantages(seq, rc.K)


def ours_rloo(a: Assets, reps: int) -> Timings:
    """One RLOO iteration composed from rl_lib's compiled generate / score, the PM through
    ``RewardModel`` and one compiled train step of ``ppo.rloo_loss`` (composed here; the
    ``rl_cai`` stage's ``estimator = "rloo"`` is not what this row times).
    The policy carries a zero scalar head only because ``rl_lib.score_rollout`` reads values
    from it when there is no value model (a [B, T, D] x [D] dot; RLOO ignores it)."""
    mesh, rows, seq = a.mesh, rc.B * rc.K, rc.P + rc.N
    policy_cfg, policy_params = pm.with_scalar_head(CFG, a.params, mesh)
    policy, reference = Transformer(policy_cfg), Transformer(CFG)
    opt = make_optimizer(OPTIM, reps + rc.WARMUP)
    state = {"s": create_train_state(policy, opt, mesh, 0, policy_params)}
    gen, _ = rl_lib.compile_generate(
        policy, state["s"].params, mesh, rows, rc.P,
        SamplingConfig(max_new_tokens=rc.N, temperature=1.0), -1, a.tok.pad_id,
    )  # fmt: skip
    score, _ = rl_lib.compile_score(
        policy, reference, None, (state["s"].params, a.params, state["s"].params), mesh, rows,
        seq, rc.N, 1.0,
    )  # fmt: skip
    adv_fn = jax.jit(functools.partial(rloo_advantages, beta=rc.KL_BETA))
    shapes = {
        "tokens": ((rows, seq), jnp.int32),
        "mask": ((rows, seq), jnp.bool_),
        "advantages": ((rows,), jnp.float32),
    }
    p_step = compile_train_step(policy, opt, mesh, shapes, functools.partial(rloo_loss, n_new=rc.N))
    rm = pm.RewardModel(loaded(a, "pm"), mesh, rows, 64, fixed_shape=True)
    cs = convs(a, rc.K)  # each prompt's K samples contiguous, as rloo_advantages wants
    p_ids = np.repeat(a.prompt_ids, rc.K, axis=0)
    p_mask = np.ones_like(p_ids, bool)

    def step(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        b = sharding.put_batch({"t": p_ids, "m": p_mask}, mesh)
        key = jax.random.fold_in(jax.random.key(0), i)
        out = jax.device_get(gen(state["s"].params, b["t"], b["m"], key))
        assert out.mask.all()  # exactly N new tokens per row
        t1 = time.perf_counter()
        tokens = np.concatenate([p_ids, out.tokens], 1)
        mask = np.concatenate([p_mask, out.mask], 1)
        batch = sharding.put_batch({"tokens": tokens, "mask": mask}, mesh)
        s = score(state["s"].params, a.params, state["s"].params, batch["tokens"], batch["mask"])
        texts = [a.tok.decode(row[m].tolist()) for row, m in zip(out.tokens, out.mask)]
        r = rm.rewards([(*c, ("assistant", t)) for c, t in zip(cs, texts)])
        adv = adv_fn(s["logp"], s["logp_ref"], out.mask.astype(np.float32), r)
        adv = np.asarray(jax.device_get(adv))
        t2 = time.perf_counter()
        mb = sharding.put_batch({"tokens": tokens, "mask": mask, "advantages": adv}, mesh)
        state["s"], m = p_step(state["s"], mb)
        float(m["loss"])
        t3 = time.perf_counter()
        return {"rollout": t1 - t0, "scoring": t2 - t1, "update": t3 - t2}

    return time_iterations(step, reps)


# ----------------------------------------------------------------------------- rows 3-4


def pair_texts() -> tuple[list[str], list[str]]:
    return rc.completion_texts(10), rc.completion_texts(11)


def ours_dpo(a: Assets, reps: int) -> Timings:
    """One DPO step: the reference's summed reply log-probs (a compiled forward), then one
    compiled train step of ``dpo.dpo_loss`` (hard labels, β = 0.1)."""
    mesh, model = a.mesh, Transformer(CFG)
    chosen, rejected = pair_texts()
    rows, masks = [], []
    for side in (chosen, rejected):
        for u, r in zip(a.prompts, side):
            ids, m = render_chat(
                a.tok, [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
            )
            rows.append(ids)
            masks.append(m)
    T = max(map(len, rows))
    tokens = np.zeros((len(rows), T), np.int32)
    mask = np.zeros((len(rows), T), bool)
    loss_mask = np.zeros((len(rows), T), np.float32)
    for j, (r, m) in enumerate(zip(rows, masks)):
        tokens[j, : len(r)], mask[j, : len(r)], loss_mask[j, : len(r)] = r, True, m

    def ref_logps(params: Any, tokens: jax.Array, mask: jax.Array, lm: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, tokens, mask).logits
        return dpo.sequence_logprobs(logits, tokens, lm)

    def loss_fn(params: Any, batch: dict[str, jax.Array], model: Transformer) -> tuple:
        logits = model.apply({"params": params}, batch["tokens"], batch["mask"]).logits
        lp = dpo.sequence_logprobs(logits, batch["tokens"], batch["loss_mask"])
        n = lp.shape[0] // 2
        ref = batch["ref_logp"]
        return dpo.dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], batch["p"], rc.DPO_BETA)

    ref_fn = jax.jit(ref_logps)
    opt = make_optimizer(OPTIM, reps + rc.WARMUP)
    shapes = {
        "tokens": (tokens.shape, jnp.int32),
        "mask": (mask.shape, jnp.bool_),
        "loss_mask": (loss_mask.shape, jnp.float32),
        "ref_logp": ((len(rows),), jnp.float32),
        "p": ((rc.B,), jnp.float32),
    }
    step_fn = compile_train_step(model, opt, mesh, shapes, loss_fn)
    state = {"s": create_train_state(model, opt, mesh, 0, a.params)}

    def step(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        b = sharding.put_batch({"tokens": tokens, "mask": mask, "loss_mask": loss_mask}, mesh)
        ref = np.asarray(jax.device_get(ref_fn(a.params, b["tokens"], b["mask"], b["loss_mask"])))
        t1 = time.perf_counter()
        batch = sharding.put_batch(
            {"tokens": tokens, "mask": mask, "loss_mask": loss_mask, "ref_logp": ref,
             "p": np.ones(rc.B, np.float32)}, mesh,
        )  # fmt: skip
        state["s"], m = step_fn(state["s"], batch)
        float(m["loss"])
        return {"rollout": 0.0, "scoring": t1 - t0, "update": time.perf_counter() - t1}

    return time_iterations(step, reps)


def ours_pm(a: Assets, reps: int) -> Timings:
    """One PM step: ``PairBatches`` (chosen as A, p = 1) and a compiled step of ``pm_loss``."""
    mesh, model = a.mesh, Transformer(PM_CFG)
    chosen, rejected = pair_texts()
    comps = [
        pm.Comparison((("user", u),), c, r, 1.0, "helpfulness")
        for u, c, r in zip(a.prompts, chosen, rejected)
    ]
    seq = rc.P + rc.N + 1
    batches = pm.PairBatches(comps, a.tok, seq, rc.B, 0, {"helpfulness": 1.0})
    assert batches.truncated == 0
    example = batches.batch(0)
    opt = make_optimizer(OPTIM, reps + rc.WARMUP)
    shapes = {k: (v.shape, v.dtype) for k, v in example.items()}
    step_fn = compile_train_step(model, opt, mesh, shapes, pm.pm_loss)
    state = {"s": create_train_state(model, opt, mesh, 0, a.pm_params)}

    def step(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        state["s"], m = step_fn(state["s"], sharding.put_batch(batches.batch(i), mesh))
        float(m["loss"])
        return {"rollout": 0.0, "scoring": 0.0, "update": time.perf_counter() - t0}

    return time_iterations(step, reps)


def _pair_dataset(a: Assets) -> Any:
    from datasets import Dataset

    chosen, rejected = pair_texts()
    return Dataset.from_dict(
        {"prompt": [rc.hh_prompt(t) for t in a.prompts], "chosen": chosen, "rejected": rejected}
    )


def _trl_steps(trainer: Any, reps: int) -> Timings:
    _quiet_trainer(trainer)
    clock = _StepClock()
    trainer.add_callback(clock.callback())
    trainer.train()
    steps = clock.steps()[rc.WARMUP :]
    assert len(steps) == reps, (len(steps), reps)
    return [{"rollout": 0.0, "scoring": 0.0, "update": s, "total": s} for s in steps]


def trl_dpo(a: Assets, reps: int) -> Timings:
    import torch
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ds = _pair_dataset(a)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            **rc.trl_args(out),
            per_device_train_batch_size=rc.B,
            max_steps=reps + rc.WARMUP,
            beta=rc.DPO_BETA,
            max_length=None,
            model_init_kwargs={"dtype": torch.float32},
        )
        trainer = DPOTrainer(
            model=a.policy_dir,  # TRL loads policy and reference from the saved model
            args=args,
            train_dataset=ds,
            processing_class=AutoTokenizer.from_pretrained(a.tok_dir),
        )
        return _trl_steps(trainer, reps)


def trl_pm(a: Assets, reps: int) -> Timings:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    ds = _pair_dataset(a)
    model = AutoModelForSequenceClassification.from_pretrained(a.rm_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            **rc.trl_args(out), per_device_train_batch_size=rc.B, max_steps=reps + rc.WARMUP,
            max_length=None,
        )  # fmt: skip
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=ds,
            processing_class=AutoTokenizer.from_pretrained(a.tok_dir),
        )
        return _trl_steps(trainer, reps)


# ----------------------------------------------------------------------------- subprocess sides


def side(
    python: str, which: str, a: Assets, reps: int, timeout: int, torch_threads: int
) -> Timings | str:
    """Run ``rl_step_baselines.py <which>`` under another venv's python; its timings, or the
    reason it could not run."""
    if not os.path.exists(python):
        return f"no interpreter at {python} (see the module docstring for the venv)"
    out = os.path.join(a.root, f"{which}.json")
    cmd = [python, os.path.join(HERE, "rl_step_baselines.py"), which, "--assets", a.root,
           "--reps", str(reps), "--out", out, "--torch-threads", str(torch_threads)]  # fmt: skip
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    for line in proc.stdout.splitlines():
        if line.startswith(("  [", "info:")):
            print("   ", line.strip())
    if proc.returncode != 0 or not os.path.exists(out):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"exit {proc.returncode}: " + " | ".join(tail)
    result = rc.read_result(out)
    if "skipped" in result:
        return result["skipped"]
    return result["timings"]


# ----------------------------------------------------------------------------- report


def fmt(med: dict[str, float]) -> str:
    return "  ".join(f"{k} {med[k]:6.3f}" for k in (*rc.PHASES, "other", "total"))


def report(row: str, ours: Timings, theirs: dict[str, Timings | str]) -> float | None:
    """Print a row's phase medians; returns its smallest ratio (their total / ours)."""
    om = rc.median_phases(ours)
    print(f"[{row}] seconds per iteration (median of {len(ours)}):")
    print(f"  {'ours':<22} {fmt(om)}")
    ratios = []
    for name, t in theirs.items():
        if isinstance(t, str):
            print(f"  {name:<22} skipped: {t}")
            continue
        tm = rc.median_phases(t)
        ratio = tm["total"] / om["total"]
        ratios.append(ratio)
        per_phase = ", ".join(
            f"{k} {tm[k] / om[k]:.2f}" for k in rc.PHASES if om[k] > 0 and tm[k] > 0
        )
        print(f"  {name:<22} {fmt(tm)}   ratio {ratio:.2f} ({per_phase})")
    return min(ratios) if ratios else None


def run_safely(fn: Callable[[], Timings]) -> Timings | str:
    try:
        return fn()
    except Exception as e:  # a baseline's API mismatch must not stop the other rows
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="timed iterations per side (median)")
    ap.add_argument("--rows", default="ppo,rloo,dpo,pm")
    ap.add_argument("--skip-tunix", action="store_true")
    ap.add_argument("--trl116-python", default="/work/venvs/trl116/bin/python")
    ap.add_argument("--tunix-python", default="/work/venvs/tunix/bin/python")
    ap.add_argument("--side-timeout", type=int, default=1800, help="seconds per venv side")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch.set_num_threads for the TRL sides (0: library default, all cores); 1 keeps "
        "torch's pool from collapsing when other processes load the cores",
    )
    args = ap.parse_args()
    rows = args.rows.split(",")
    warnings.filterwarnings("ignore")
    rc.quiet_hf()
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    print(f"models: {CFG.num_params() / 1e6:.2f}M-param policy, f32 everywhere; batch {rc.B} x "
          f"{rc.P} prompt tokens, {rc.N} new tokens, RLOO k={rc.K}; reps {args.reps}")  # fmt: skip
    print("threads:", thread_report())
    print("start:", load_report())
    peak, detail = matmul_peak_gflops()
    print(f"matmul peak (f32 2048^3, GFLOP/s): {detail} -> {peak:.0f}")
    results: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as root:
        a = make_assets(root)
        if "ppo" in rows:
            theirs = {"trl 1.12 PPOTrainer": run_safely(lambda: trl_ppo(a, args.reps))}
            ours = ours_ppo(a, args.reps)
            if not args.skip_tunix:
                theirs["tunix 0.1.7 PpoLearner"] = side(
                    args.tunix_python, "tunix_ppo", a, args.reps, args.side_timeout, 0
                )
            results["ppo"] = report("ppo", ours, theirs)
        if "rloo" in rows:
            ours = ours_rloo(a, args.reps)
            theirs = {
                "trl 1.16 RLOOTrainer": side(
                    args.trl116_python,
                    "trl_rloo",
                    a,
                    args.reps,
                    args.side_timeout,
                    args.torch_threads,
                )
            }
            results["rloo"] = report(f"rloo k={rc.K}", ours, theirs)
        if "dpo" in rows:
            ours = ours_dpo(a, args.reps)
            theirs = {"trl 1.12 DPOTrainer": run_safely(lambda: trl_dpo(a, args.reps))}
            results["dpo"] = report("dpo", ours, theirs)
        if "pm" in rows:
            ours = ours_pm(a, args.reps)
            theirs = {"trl 1.12 RewardTrainer": run_safely(lambda: trl_pm(a, args.reps))}
            results["pm"] = report("pm", ours, theirs)
    print("end:", load_report(), f"torch.get_num_threads()={torch.get_num_threads()}")
    done = {k: v for k, v in results.items() if v is not None}
    print(" ".join(f"{k}_ratio={v:.2f}" for k, v in done.items()), end=" ")
    print(f"ratio={min(done.values()):.2f}" if done else "ratio=nan")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
