"""The baseline sides of ``rl_step.py`` that need their own venv, run by it as subprocesses:

    <venv>/bin/python benchmarks/rl_step_baselines.py trl_rloo  --assets DIR --reps 3 --out F
    <venv>/bin/python benchmarks/rl_step_baselines.py tunix_ppo --assets DIR --reps 3 --out F

``DIR`` is the temp dir ``rl_step.py`` filled (HF models and the tokenizer); ``F`` receives
``{"timings": [{"rollout": s, "scoring": s, "update": s, "total": s}, ...]}`` (one entry per
timed iteration, the warm-up left out) or ``{"skipped": "<why>"}``. Imports nothing from
``cai``: only torch + TRL (trl 1.16 venv) or jax + tunix (tunix venv).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rl_common as rc  # noqa: E402

Timings = list[dict[str, float]]


# ----------------------------------------------------------------------------- TRL 1.16 RLOO


def trl_rloo(root: str, reps: int) -> Timings:
    """TRL's ``RLOOTrainer``: 16 prompts x k = 4 completions of exactly 32 tokens
    (``min_new_tokens``), reward from the PM (a ``LlamaForSequenceClassification``), KL to the
    reference (re-loaded by TRL from the saved policy), one optimizer step on the 64."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import RLOOConfig, RLOOTrainer

    print(f"info: trl {trl.__version__}; {rc.torch_threads_line()}")
    tok = AutoTokenizer.from_pretrained(os.path.join(root, "tok"))
    reward = AutoModelForSequenceClassification.from_pretrained(
        os.path.join(root, "rm"), dtype=torch.float32
    )
    ds = Dataset.from_dict({"prompt": [rc.hh_prompt(t) for t in rc.prompt_texts()]})
    with tempfile.TemporaryDirectory() as out:
        args = RLOOConfig(
            **rc.trl_args(out),
            per_device_train_batch_size=rc.B * rc.K,
            gradient_accumulation_steps=1,
            num_generations=rc.K,
            max_completion_length=rc.N,
            temperature=1.0,
            beta=rc.KL_BETA,
            num_iterations=1,
            max_steps=reps + rc.WARMUP,
            generation_kwargs={"min_new_tokens": rc.N},
            model_init_kwargs={"dtype": torch.float32},
        )
        trainer = RLOOTrainer(
            model=os.path.join(root, "policy"),
            reward_funcs=reward,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            reward_processing_classes=tok,
        )
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        gen: list[tuple[float, float]] = []
        gen_score: list[tuple[float, float]] = []
        ends: list[float] = []
        orig_gen, orig_gs = trainer._generate, trainer._generate_and_score_completions

        def timed_gen(prompts: list) -> Any:
            t0 = time.perf_counter()
            out = orig_gen(prompts)
            lengths = {len(c) for c in out[1]}
            assert lengths == {rc.N}, lengths  # exactly N new tokens, no early stop
            gen.append((t0, time.perf_counter()))
            return out

        def timed_gs(inputs: Any) -> Any:
            t0 = time.perf_counter()
            out = orig_gs(inputs)
            gen_score.append((t0, time.perf_counter()))
            return out

        trainer._generate, trainer._generate_and_score_completions = timed_gen, timed_gs

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
                ends.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                ends.append(time.perf_counter())

        trainer.add_callback(Clock())
        trainer.train()
    rows = []
    for i in range(rc.WARMUP, reps + rc.WARMUP):
        (g0, g1), (_, s1) = gen[i], gen_score[i]
        rows.append(
            {"rollout": g1 - g0, "scoring": s1 - g1, "update": ends[i + 1] - s1,
             "total": ends[i + 1] - ends[i]}
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- tunix PPO


def tunix_ppo(root: str, reps: int) -> Timings:
    """tunix's ``PpoLearner``: actor and reference are tunix's own ``Llama3`` loaded from the
    saved policy's safetensors, critic and reward the PM's backbone with
    ``rl.utils.create_critic_model``'s scalar head (set to the PM's head); vanilla rollout
    (tunix ``Sampler``, KV cache of P + N) at temperature 1 with its default top_p = 1 and no
    stop token (``eos_tokens=[-1]``); one mini-batch of 16: one actor and one critic step."""
    import jax
    import optax
    import tunix
    from flax import nnx
    from transformers import AutoTokenizer
    from tunix.models.llama3 import model as llama_lib
    from tunix.models.llama3 import params as llama_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl import utils as rl_utils
    from tunix.rl.ppo import ppo_learner
    from tunix.rl.rollout import base_rollout

    version = getattr(tunix, "__version__", "?")
    print(f"info: tunix {version}, jax {jax.__version__}, devices {jax.devices()}")
    cfg = llama_lib.ModelConfig(
        num_layers=rc.LAYERS, vocab_size=rc.VOCAB, embed_dim=rc.D_MODEL, hidden_dim=rc.MLP,
        num_heads=rc.HEADS, head_dim=rc.HEAD_DIM, num_kv_heads=rc.HEADS,
        rope_theta=int(rc.ROPE_THETA), norm_eps=rc.NORM_EPS, weight_tying=False,
    )  # fmt: skip
    # Auto axes: tunix's Llama3 gathers its embedding without explicit out-shardings.
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))

    def load(d: str) -> Any:
        return llama_params.create_model_from_safe_tensors(os.path.join(root, d), cfg, mesh)

    head = np.load(os.path.join(root, "rm_head.npy")).astype(np.float32)[:, None]

    class Scorer(nnx.Module):
        """tunix 0.1.7's ``common.compute_score`` (critic values, rewards) passes
        ``segment_ids`` (the 1-D non-pad mask, redundant with the attention mask it also
        passes), which its own ``Llama3.__call__`` does not take: drop it."""

        def __init__(self, inner: Any):
            self.inner = inner

        def __call__(self, input_tokens, positions, cache, attention_mask, segment_ids=None):  # noqa: ANN001
            return self.inner(input_tokens, positions, cache, attention_mask)

    def scored(model: Any) -> Any:
        critic = rl_utils.create_critic_model(model)
        critic.lm_head.kernel.value = jax.numpy.asarray(head)
        return Scorer(critic)

    actor, reference = load("policy"), load("policy")
    critic, reward = scored(load("rm_lm")), scored(load("rm_lm"))
    # No BOS: tunix's sampler prepends one when the tokenizer has it; our prompts have none.
    tok = AutoTokenizer.from_pretrained(os.path.join(root, "tok"), bos_token=None)

    def opt() -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(rc.LR, weight_decay=0.0))

    n_iter = reps + rc.WARMUP
    rollout = base_rollout.RolloutConfig(
        max_tokens_to_generate=rc.N, max_prompt_length=rc.P, kv_cache_size=rc.P + rc.N,
        temperature=1.0, eos_tokens=[-1],
    )  # fmt: skip
    roles = rl_cluster_lib.Role
    with tempfile.TemporaryDirectory() as out:
        training = rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=opt(),
            critic_optimizer=opt(),
            eval_every_n_steps=10**6,
            max_steps=n_iter,
            mini_batch_size=rc.B,
            train_micro_batch_size=rc.B,
            rollout_micro_batch_size=rc.B,
            compute_logps_micro_batch_size=rc.B,
            checkpoint_root_directory=None,
            pbar_description=None,
        )
        if hasattr(training, "metrics_logging_options"):
            from tunix.sft import metrics_logger

            training.metrics_logging_options = metrics_logger.MetricsLoggerOptions(
                log_dir=out, flush_every_n_steps=10**6
            )
        cluster = rl_cluster_lib.RLCluster(
            actor=actor,
            critic=critic,
            reference=reference,
            reward=reward,
            tokenizer=tok,
            cluster_config=rl_cluster_lib.ClusterConfig(
                role_to_mesh={r: mesh for r in (roles.ACTOR, roles.CRITIC, roles.REFERENCE,
                                                 roles.ROLLOUT, roles.REWARD)},
                rollout_engine="vanilla",
                offload_to_cpu=False,
                training_config=training,
                rollout_config=rollout,
            ),
        )  # fmt: skip
        learner = ppo_learner.PpoLearner(
            rl_cluster=cluster,
            ppo_config=ppo_learner.PpoConfig(num_iterations=1, beta=rc.KL_BETA, kl_method="kl"),
        )
        gen: list[tuple[float, float]] = []
        gen_adv: list[tuple[float, float]] = []
        steps: list[tuple[float, float]] = []
        orig_gen = cluster.generate
        orig_ga = learner._generate_and_compute_advantage
        orig_step = learner._run_global_step

        def timed_gen(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = orig_gen(*a, **kw)
            lengths = {len(t) for t in out.tokens}
            assert lengths == {rc.N}, lengths  # exactly N new tokens, no early stop
            gen.append((t0, time.perf_counter()))
            return out

        def timed_ga(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = orig_ga(*a, **kw)
            jax.block_until_ready(out)
            gen_adv.append((t0, time.perf_counter()))
            return out

        def timed_step(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = orig_step(*a, **kw)
            jax.block_until_ready(_params(getattr(cluster.actor_trainer, "model", actor)))
            steps.append((t0, time.perf_counter()))
            return out

        cluster.generate = timed_gen
        learner._generate_and_compute_advantage = timed_ga
        learner._run_global_step = timed_step
        prompts = np.asarray([rc.hh_prompt(t) for t in rc.prompt_texts()])
        learner.train([{"prompts": prompts} for _ in range(n_iter)])
    assert len(steps) == n_iter, (len(steps), len(gen), len(gen_adv))
    rows = []
    for i in range(rc.WARMUP, n_iter):
        (g0, g1), (_, a1), (s0, s1) = gen[i], gen_adv[i], steps[i]
        rows.append({"rollout": g1 - g0, "scoring": a1 - g1, "update": s1 - a1, "total": s1 - s0})
    return rows


def _params(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model, nnx.Param)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("which", choices=("trl_rloo", "tunix_ppo"))
    ap.add_argument("--assets", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    args = ap.parse_args()
    if args.torch_threads and args.which.startswith("trl"):
        import torch

        torch.set_num_threads(args.torch_threads)
    warnings.filterwarnings("ignore")
    rc.quiet_hf()
    fn = {"trl_rloo": trl_rloo, "tunix_ppo": tunix_ppo}[args.which]
    try:
        result: dict[str, Any] = {"timings": fn(args.assets, args.reps)}
    except ImportError as e:
        result = {"skipped": f"cannot import ({e})"}
    except Exception as e:  # an API mismatch: say what, keep the other rows going
        traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        result = {"skipped": f"{type(e).__name__}: {first}"[:300]}
    rc.write_result(args.out, result)


if __name__ == "__main__":
    main()
