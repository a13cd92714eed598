"""``cai.main --dry_run``: compile every step of a config ahead of time and print the mesh and the
per-device memory, without loading or creating any weights.

Parameters and optimizer state exist only as ``jax.eval_shape`` structures with their shardings,
so a config for a pod can be checked on a laptop with fake devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``) before the pod is rented. Compiled steps:

* the train step of every stage in ``config.stages`` that has ``train`` and ``optim`` sections
  (with the preference-model loss on a scalar-head model, and ``train.batch_size`` pairs of
  rows, for a stage whose section also has a ``pm`` part);
* for every RL stage (a section with ``rollout_batch``: ``rl_cai`` and the PPO/RLOO baselines)
  PPO's steps at its shapes: the rollout's generation, the scoring of policy, reference and
  value log-probs, the PM's scoring, and the policy and value updates;
* from the optional ``config.dry_run`` section (``DryRunConfig``): a fine-tuning train step
  (SL-CAI / preference model shapes), ``generate`` (critiques, revisions, PPO rollouts) and
  ``score`` (feedback-model log-probs) at the shapes the later stages will use.

If ``config.init_from`` names a checkpoint that exists here, its stored config must have the
shapes of ``config.model``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from cai import configs, pretrained, rl_lib, sharding
from cai.model import ModelConfig, Transformer
from cai.preference_model import pm_loss
from cai.sampling import SamplingConfig, bucket, generate, score
from cai.train_lib import (
    OptimConfig,
    TrainConfig,
    abstract_params,
    compile_train_step,
    make_optimizer,
    memory,
)


@dataclasses.dataclass(frozen=True)
class DryRunConfig:
    """Shapes of the steps later stages run; batch sizes are global (split over data axes)."""

    train_batch_size: int = 8
    train_seq_len: int = 1024
    sample_batch_size: int = 8
    prompt_len: int = 256
    max_new_tokens: int = 256
    score_batch_size: int = 8
    score_prompt_len: int = 1024
    score_len: int = 8  # e.g. the tokens of "(A)" / "(B)" in the feedback prompt


# The ``:smoke`` shapes of a real-model config: small enough to compile on 8 fake CPU devices.
SMOKE_SHAPES = DryRunConfig(
    train_batch_size=8,
    train_seq_len=32,
    sample_batch_size=8,
    prompt_len=16,
    max_new_tokens=8,
    score_batch_size=8,
    score_prompt_len=16,
    score_len=4,
)


def shrink_for_smoke(config: ml_collections.ConfigDict, preset: str, **model: Any) -> None:
    """Turn a real-model config into its ``:smoke`` variant in place: a tiny random model of the
    same family (``preset`` plus ``model`` overrides), no checkpoint, a (2, 2, 2) mesh and
    ``SMOKE_SHAPES``, so a laptop or a test dry-runs the same code paths a pod will."""
    tiny = dict(vocab_size=259, d_model=64, n_layers=2, n_heads=4, head_dim=16, mlp_dim=96)
    tiny.update(max_len=256, dtype="float32", remat=False)
    config.init_from = ""
    config.model = configs.model_dict(preset, **{**tiny, **model})
    config.mesh = configs.as_dict(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    config.dry_run = configs.as_dict(SMOKE_SHAPES)


def _with_sharding(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def compile_generate(
    model: Transformer, mesh: Mesh, batch: int, prompt_len: int, max_new_tokens: int
) -> Any:
    """``generate`` for left-padded prompts [batch, prompt_len], compiled from shapes only."""
    params, p_shard = abstract_params(model, mesh)
    fn = functools.partial(
        generate,
        model=model,
        cfg=SamplingConfig(max_new_tokens=max_new_tokens),
        eos_id=1,
        pad_id=0,
    )

    def run(params: Any, prompts: jax.Array, mask: jax.Array, key: jax.Array) -> Any:
        with sharding.activation_context(mesh):
            return fn(params, prompts, mask, key)

    sharding.check_batch(batch, mesh, "dry_run.sample_batch_size")
    b = sharding.batch_sharding(mesh, 2)
    rep = sharding.replicated(mesh)
    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (
        _with_sharding(params, p_shard),
        jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32, sharding=b),
        jax.ShapeDtypeStruct((batch, prompt_len), jnp.bool_, sharding=b),
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
    )
    jitted = jax.jit(run, in_shardings=(p_shard, b, b, rep))
    return jitted.lower(*args).compile()


def compile_score(model: Transformer, mesh: Mesh, batch: int, prompt_len: int, length: int) -> Any:
    """``score`` of continuations [batch, length] after prompts [batch, prompt_len]."""
    params, p_shard = abstract_params(model, mesh)

    def run(params: Any, *args: jax.Array) -> Any:
        with sharding.activation_context(mesh):
            return score(params, *args, model=model)

    sharding.check_batch(batch, mesh, "dry_run.score_batch_size")
    b = sharding.batch_sharding(mesh, 2)
    shapes = [(prompt_len, jnp.int32), (prompt_len, jnp.bool_), (length, jnp.int32)]
    shapes.append((length, jnp.bool_))
    args = [jax.ShapeDtypeStruct((batch, n), d, sharding=b) for n, d in shapes]
    jitted = jax.jit(run, in_shardings=(p_shard, b, b, b, b))
    return jitted.lower(_with_sharding(params, p_shard), *args).compile()


def _lm_batch(batch: int, seq: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {
        "tokens": ((batch, seq), jnp.int32),
        "mask": ((batch, seq), jnp.bool_),
        "loss_mask": ((batch, seq), jnp.float32),
    }


def _pm_batch(pairs: int, seq: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """A preference-model batch: A rows then B rows, a soft label and a weight per pair."""
    return {
        "tokens": ((2 * pairs, seq), jnp.int32),
        "mask": ((2 * pairs, seq), jnp.bool_),
        "p": ((pairs,), jnp.float32),
        "weight": ((pairs,), jnp.float32),
    }


def steps_of(config: ml_collections.ConfigDict) -> list[tuple[str, dict[str, Any]]]:
    """(name, what to compile) for every step the config runs, in order."""
    out = []
    for stage in configs.stages_of(config):
        section = config[stage] if stage in config else None
        if section is not None and "train" in section and "optim" in section:
            tc = configs.to_dataclass(TrainConfig, section.train, f"{stage}.train")
            oc = configs.to_dataclass(OptimConfig, section.optim, f"{stage}.optim")
            what = {"train": (tc.batch_size, tc.seq_len, oc, tc)}
            if "pm" in section:  # a preference model: scalar head, pairwise loss
                what["pm"] = True
            out.append((f"{stage}/train_step", what))
        elif section is not None and "rollout_batch" in section:
            out.extend((f"{stage}/{step}", {"rl": section}) for step in RL_STEPS)
    if "dry_run" in config:
        d = configs.to_dataclass(DryRunConfig, config.dry_run, "dry_run")
        tc = TrainConfig(batch_size=d.train_batch_size, seq_len=d.train_seq_len)
        out.append(
            ("finetune/train_step", {"train": (tc.batch_size, tc.seq_len, OptimConfig(), tc)})
        )
        out.append(
            ("generate", {"generate": (d.sample_batch_size, d.prompt_len, d.max_new_tokens)})
        )
        out.append(("score", {"score": (d.score_batch_size, d.score_prompt_len, d.score_len)}))
    return out


RL_STEPS = ("rollout_generate", "rollout_scoring", "pm_scoring", "policy_update", "value_update")


def compile_rl(
    model_cfg: ModelConfig, mesh: Mesh, rl: ml_collections.ConfigDict
) -> dict[str, dict[str, Any]]:
    """PPO's compiled steps for an RL section (``cai.stages.rl_cai.RLConfig`` fields), from
    shapes only: the policy and reference are ``model_cfg``; the value model (``value=model``)
    and the PM are the same architecture with a scalar head."""
    head_cfg = dataclasses.replace(model_cfg, scalar_head=True)
    policy = Transformer(head_cfg if rl.value == "head" else model_cfg)
    reference, pm_model = Transformer(model_cfg), Transformer(head_cfg)
    value_model = pm_model if rl.value == "model" else None
    shaped = lambda m: _with_sharding(*abstract_params(m, mesh))  # noqa: E731
    p_params, r_params, v_params = shaped(policy), shaped(reference), shaped(pm_model)
    n_new, seq = rl.max_new_tokens, rl.prompt_len + rl.max_new_tokens
    out: dict[str, dict[str, Any]] = {}
    sampling = SamplingConfig(max_new_tokens=n_new, temperature=rl.temperature)
    _, mem = rl_lib.compile_generate(
        policy, p_params, mesh, rl.rollout_batch, rl.prompt_len, sampling, 1, 0
    )
    out["rollout_generate"] = {"shape": f"batch {rl.rollout_batch}, prompt {rl.prompt_len} "
                                        f"+ {n_new} new", **mem}  # fmt: skip
    _, mem = rl_lib.compile_score(
        policy, reference, value_model, (p_params, r_params, v_params if value_model else None),
        mesh, rl.score_batch, seq, n_new, rl.temperature,
    )  # fmt: skip
    out["rollout_scoring"] = {"shape": f"batch {rl.score_batch} x {seq}", **mem}
    pm_len = bucket(seq + 16)  # as the stage: the PM's rendering adds a few tokens
    compiled = compile_pm_scores(pm_model, mesh, rl.score_batch, pm_len)
    out["pm_scoring"] = {"shape": f"batch {rl.score_batch} x {pm_len}", **memory(compiled)}
    shapes = {
        "tokens": ((rl.train_batch, seq), jnp.int32),
        "mask": ((rl.train_batch, seq), jnp.bool_),
        **{k: ((rl.train_batch, n_new), jnp.float32)
           for k in ("logp_old", "advantages", "values_old", "returns")},
    }  # fmt: skip
    opt = make_optimizer(OptimConfig(), 1)
    loss = functools.partial(
        rl_lib.ppo_policy_loss, n_new=n_new, temperature=rl.temperature, clip_eps=rl.clip_eps,
        value_clip=rl.value_clip, vf_coef=rl.vf_coef, value_head=rl.value == "head",
    )  # fmt: skip
    shape = f"batch {rl.train_batch} x {seq}"
    compiled = compile_train_step(policy, opt, mesh, shapes, loss)
    out["policy_update"] = {"shape": shape, **memory(compiled)}
    if value_model is not None:
        v_loss = functools.partial(rl_lib.ppo_value_loss, n_new=n_new, value_clip=rl.value_clip)
        compiled = compile_train_step(value_model, opt, mesh, shapes, v_loss)
        out["value_update"] = {"shape": shape, **memory(compiled)}
    else:
        out["value_update"] = {"shape": f"none (value={rl.value})"}
    return out


def compile_pm_scores(model: Transformer, mesh: Mesh, batch: int, length: int) -> Any:
    """The PM's forward over right-padded rows [batch, length] (its values), from shapes."""
    params, p_shard = abstract_params(model, mesh)

    def run(params: Any, tokens: jax.Array, mask: jax.Array) -> Any:
        with sharding.activation_context(mesh):
            return model.apply({"params": params}, tokens, mask, compute_logits=False).values

    b = sharding.batch_sharding(mesh, 2)
    args = [jax.ShapeDtypeStruct((batch, length), d, sharding=b) for d in (jnp.int32, jnp.bool_)]
    jitted = jax.jit(run, in_shardings=(p_shard, b, b))
    return jitted.lower(_with_sharding(params, p_shard), *args).compile()


def run(config: ml_collections.ConfigDict, print_fn: Any = print) -> dict[str, dict[str, Any]]:
    """Compile every step for the config's shapes; print the mesh and a per-device memory table;
    return {step: memory dict}."""
    model_cfg = configs.to_dataclass(ModelConfig, config.model, "model")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    init_from = config.init_from if "init_from" in config else ""
    if init_from and "://" not in init_from and os.path.exists(init_from):
        pretrained.check_matches(model_cfg, init_from)
    elif init_from:
        print_fn(f"init_from {init_from} is not on this machine: its shapes were not checked")
    model = Transformer(model_cfg)
    devices = mesh.devices.flatten()
    print_fn(
        f"mesh {dict(mesh.shape)} over {len(devices)} {devices[0].platform} devices "
        f"({jax.process_count()} processes); model {model_cfg.num_params() / 1e9:.3f}B params, "
        f"param_dtype {model_cfg.param_dtype}, compute {model_cfg.dtype}, remat {model_cfg.remat}"
    )
    steps = steps_of(config)
    rl_compiled: dict[str, dict[str, dict[str, Any]]] = {}
    for name, what in steps:  # every batch size first: fail before minutes of compiling
        if "rl" in what:
            for field in ("rollout_batch", "score_batch", "train_batch"):
                sharding.check_batch(what["rl"][field], mesh, f"{name.split('/')[0]}.{field}")
            continue
        batch = next(iter(what.values()))[0]
        where = {"generate": "dry_run.sample_batch_size", "score": "dry_run.score_batch_size"}
        sharding.check_batch(batch, mesh, where.get(name, f"{name} batch_size"))
    results: dict[str, dict[str, Any]] = {}
    for name, what in steps:
        if "rl" in what:
            stage, step = name.split("/")
            if stage not in rl_compiled:
                rl_compiled[stage] = compile_rl(model_cfg, mesh, what["rl"])
            results[name] = rl_compiled[stage][step]
            continue
        if "train" in what:
            batch, seq, oc, tc = what["train"]
            if what.get("pm"):
                pm_model = Transformer(dataclasses.replace(model_cfg, scalar_head=True))
                args = (pm_model, make_optimizer(oc, tc.steps), mesh, _pm_batch(batch, seq))
                compiled = compile_train_step(*args, loss_fn=pm_loss)
                shape = f"{batch} pairs x 2 x {seq}"
            else:
                compiled = compile_train_step(
                    model, make_optimizer(oc, tc.steps), mesh, _lm_batch(batch, seq)
                )
                shape = f"batch {batch} x {seq}"
        elif "generate" in what:
            batch, prompt, new = what["generate"]
            compiled = compile_generate(model, mesh, batch, prompt, new)
            shape = f"batch {batch}, prompt {prompt} + {new} new"
        else:
            batch, prompt, length = what["score"]
            compiled = compile_score(model, mesh, batch, prompt, length)
            shape = f"batch {batch} x ({prompt} + {length})"
        results[name] = {"shape": shape, **memory(compiled)}
    gib = lambda n: f"{n / 2**30:8.2f}"  # noqa: E731
    print_fn("per-device memory (GiB): step | shape | arguments | outputs | temps | total")
    width = max([22, *map(len, results)])  # "preference_model/train_step" is 27
    for name, m in results.items():
        if "total" in m:
            print_fn(
                f"  {name:{width}s} | {m['shape']:32s} | {gib(m['argument'])} | "
                f"{gib(m['output'])} | {gib(m['temp'])} | {gib(m['total'])}"
            )
    if devices[0].platform == "cpu":
        print_fn(
            "note: XLA:CPU schedules without a memory limit and does not realise remat's savings, "
            "so temps are an upper bound; arguments (params + optimizer state) are exact. "
            "launch/tpu_pod.sh ... -- --dry_run gives the TPU compiler's numbers."
        )
    return results
