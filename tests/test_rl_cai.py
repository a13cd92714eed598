"""Stage ``rl_cai`` on tiny random models: PPO raises a synthetic reward (say lower-case
letters) within a few iterations with the KL to the reference bounded, nothing recompiles after
the second iteration, and the stage killed mid-way and rerun ends with the parameters of an
uninterrupted run (toy-world prompts, a tiny PM as reward and value model)."""

import dataclasses
import functools
import logging

import jax
import ml_collections
import numpy as np
import pytest
from tiny_models import random_params

from cai import configs, pretrained, sharding, stage_lib, train_lib
from cai import preference_model as pm
from cai.checkpoint import Checkpointer
from cai.errors import ConfigError, Halted, NonFiniteError
from cai.files import write_json
from cai.model import ModelConfig, Transformer
from cai.stages import rl_cai
from cai.tokenizer import ByteTokenizer
from cai.toyworld import world

TOK = ByteTokenizer()
TINY = ModelConfig(
    vocab_size=259, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, mlp_dim=64
)


@functools.cache
def lm_params(seed=0):
    """A tiny random LM (``tiny_models.random_params``)."""
    return random_params(TINY, seed)


def loaded(mesh, params=None, cfg=TINY):
    _, shardings = train_lib.abstract_params(Transformer(cfg), mesh)
    params = jax.device_put(lm_params() if params is None else params, shardings)
    return stage_lib.Loaded("", cfg, Transformer(cfg), params, TOK, TOK.eos_id)


def letters(convs, texts):
    """The synthetic reward: the share of a reply's characters that are lower-case ASCII
    letters (a random byte-level policy starts near 26/259: a dense enough signal)."""
    share = [sum("a" <= c <= "z" for c in t) / max(len(t), 1) for t in texts]
    return {"score": np.asarray(share, np.float32)}


def small_cfg(**kw):
    base = dict(iterations=6, batch_size=32, rollout_batch=32, score_batch=32, minibatch=16,
                train_batch=16, epochs=4, prompt_len=48, max_new_tokens=8, value="head",
                kl_kind="fixed", beta=0.01, missing_eos_penalty=0.0)  # fmt: skip
    base.update(kw)
    return rl_cai.RLConfig(**base)


OPTIM = train_lib.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0,
                              schedule="constant")  # fmt: skip
CONVS = [(("user", f"say something {i}"),) for i in range(32)]  # 37-38 tokens in HH form


def test_ppo_raises_a_synthetic_reward_with_the_kl_bounded():
    mesh = sharding.single_device_mesh()
    trainer = rl_cai.PPOTrainer(
        small_cfg(), OPTIM, OPTIM, mesh, loaded(mesh), None, letters, rl_cai.Scores(0.0, 1.0)
    )
    rows = [trainer.iteration(it, CONVS)[0] for it in range(10)]
    first, last = rows[0]["reward"], np.mean([r["reward"] for r in rows[-2:]])
    trace = [(r["reward"], r["kl_k1"]) for r in rows]
    assert last > first + 0.15, trace  # from 0.09 (26 letters of 259 bytes) to ~0.35
    # bounded: 8-token replies of a policy whose entropy starts at ~5.5 nats per token
    assert all(0 <= r["kl_k1"] < 10.0 and r["kl_k3"] >= 0 for r in rows), trace
    assert rows[0]["kl_k1"] == pytest.approx(0.0, abs=1e-5)  # the first rollout is the reference's
    assert all(r["policy/skipped"] == 0 for r in rows)


def test_nan_rewards_skip_every_update_and_stop_ppo_with_the_parameters_unchanged(caplog):
    """A NaN reward makes every advantage NaN, so each policy and value update of the
    iteration is skipped inside the jitted step; ``max_skipped_steps`` in a row stop it."""
    mesh = sharding.single_device_mesh()

    def nan_reward(convs, texts):
        return {"score": np.full(len(texts), np.nan, np.float32)}

    cfg = small_cfg(max_skipped_steps=3)
    trainer = rl_cai.PPOTrainer(
        cfg, OPTIM, OPTIM, mesh, loaded(mesh), None, nan_reward, rl_cai.Scores(0.0, 1.0)
    )
    before = jax.device_get(trainer.policy_state.params)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(NonFiniteError, match="3 updates in a row"),
    ):
        trainer.iteration(0, CONVS)
    assert "non-finite loss or gradient norm; skipped (2 in a row)" in caplog.text
    after = jax.device_get(trainer.policy_state.params)
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))


def test_rloo_raises_the_synthetic_reward_without_a_critic():
    """estimator rloo, value none: k = 4 samples per prompt, each one's baseline its three
    siblings' mean; no value model or head is built."""
    mesh = sharding.single_device_mesh()
    cfg = small_cfg(estimator="rloo", value="none", rloo_k=4)
    trainer = rl_cai.PPOTrainer(
        cfg, OPTIM, OPTIM, mesh, loaded(mesh), None, letters, rl_cai.Scores(0.0, 1.0)
    )
    assert trainer.value_state is None and trainer.policy_cfg.scalar_head is False
    groups = [c for c in CONVS[:8] for _ in range(4)]
    rows = [trainer.iteration(it, groups)[0] for it in range(10)]
    first, last = rows[0]["reward"], np.mean([r["reward"] for r in rows[-2:]])
    assert last > first + 0.15, [r["reward"] for r in rows]
    assert all(r["kl_k3"] >= 0 for r in rows)


def test_nothing_recompiles_after_the_second_iteration(caplog):
    mesh = sharding.single_device_mesh()
    pm_cfg, pm_params = pm.with_scalar_head(TINY, lm_params(1))
    rm = pm.RewardModel(loaded(mesh, pm_params, pm_cfg), mesh, 32, 64, fixed_shape=True)

    def reward(convs, texts):
        return {"score": rm.rewards([(*c, ("assistant", t)) for c, t in zip(convs, texts)])}

    value = (Transformer(pm_cfg), loaded(mesh, pm_params, pm_cfg).params)
    cfg = small_cfg(value="model", kl_kind="adaptive", kl_target=1.0, epochs=1)
    trainer = rl_cai.PPOTrainer(cfg, OPTIM, OPTIM, mesh, loaded(mesh), value, reward,
                                rl_cai.Scores(0.0, 1.0))  # fmt: skip
    for it in range(2):
        trainer.iteration(it, CONVS)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        caplog.clear()
        for it in range(2, 4):
            trainer.iteration(it, CONVS)
    compiled = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert not compiled, compiled


# ----------------------------------------------------------------------------- the stage


def save_model(directory, params, cfg, stage):
    meta = pretrained.checkpoint_metadata(stage, cfg, TOK, ml_collections.ConfigDict())
    with Checkpointer(directory / "checkpoints", 1, 1, async_save=False) as ckpt:
        ckpt.save(0, params, {"step": np.zeros((), np.int32)}, {**meta, "step": 0}, force=True)
        ckpt.wait()


def make_workdir(path):
    save_model(path / "sl_cai", lm_params(), TINY, "sl_cai")
    pm_cfg, pm_params = pm.with_scalar_head(TINY, lm_params(1))
    save_model(path / "preference_model", jax.device_get(pm_params), pm_cfg, "preference_model")
    write_json(path / "preference_model" / "reward_stats.json", {"mean": 0.1, "std": 2.0})
    return path


def stage_config(**kw):
    config = ml_collections.ConfigDict({"seed": 0, "base": "shipped"})
    config.mesh = configs.as_dict(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    config.world = configs.as_dict(world.WorldConfig(seed=0))
    fields = dict(iterations=4, batch_size=16, rollout_batch=8, score_batch=8, minibatch=8,
                  train_batch=4, epochs=2, prompt_len=192, max_new_tokens=8, save_every=2,
                  curve_every=2)  # fmt: skip
    fields.update(kw)
    config.rl_cai = rl_cai.stage_config(learning_rate=1e-3, value_learning_rate=1e-3, **fields)
    return config


def final(stage_dir):
    _, params, _ = pretrained.load(str(stage_dir))
    return jax.tree.map(np.asarray, params)


def test_stage_resumes_after_a_kill_to_the_uninterrupted_parameters(tmp_path):
    whole = make_workdir(tmp_path / "whole")
    rl_cai.run(stage_config(), whole)
    assert (whole / "rl_cai" / "done.json").exists()
    # orbax always keeps the first save: the curve starts after iteration 1
    assert sorted(int(p.name) for p in (whole / "rl_cai" / "curve").iterdir()) == [1, 2, 4]

    killed = make_workdir(tmp_path / "killed")
    with pytest.raises(Halted):
        rl_cai.run(stage_config(halt_at_iteration=3), killed)  # saved at 2, killed after 3
    rl_cai.run(stage_config(), killed)
    a, b = final(whole / "rl_cai"), final(killed / "rl_cai")
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
    start = final(whole / "sl_cai")
    assert not jax.tree.all(jax.tree.map(np.array_equal, a, start))  # it did train

    with pytest.raises(ConfigError, match="rl_cai"):  # a changed config on the old workdir
        rl_cai.run(stage_config(epochs=3), whole)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="train_batch=3 must divide rl_cai.minibatch"):
        rl_cai.RLConfig(minibatch=8, train_batch=3)
    with pytest.raises(ConfigError, match="value='critic'"):
        rl_cai.RLConfig(value="critic")
    with pytest.raises(ConfigError, match="estimator rloo expects none"):
        rl_cai.RLConfig(estimator="rloo")
    with pytest.raises(ConfigError, match="rl_cai.rloo_k=3"):
        rl_cai.RLConfig(estimator="rloo", value="none", rloo_k=3, batch_size=64)
    mesh = sharding.single_device_mesh()
    trainer = rl_cai.PPOTrainer(
        small_cfg(prompt_len=32), OPTIM, OPTIM, mesh, loaded(mesh), None, letters,
        rl_cai.Scores(0.0, 1.0),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="rl_cai.prompt_len=32: a prompt has 37 tokens"):
        trainer.iteration(0, CONVS)


def test_draw_prompts_is_pure_in_the_iteration_and_mixes_the_pools():
    w = world.generate(world.WorldConfig(seed=0))
    red, helpful = rl_cai.toy_prompts(w)
    held = w.held_out_entities
    assert not any(r.request_id.split("/")[1] in held for r in red + helpful)
    cfg = rl_cai.RLConfig(batch_size=64, harmful_fraction=0.25)
    a, b = rl_cai.draw_prompts(red, helpful, cfg, 3), rl_cai.draw_prompts(red, helpful, cfg, 3)
    assert a == b and a != rl_cai.draw_prompts(red, helpful, cfg, 4)
    assert sum(p.slice != "helpful" for p in a) == 16
    assert dataclasses.replace(cfg).updates() == 60 * 2 * 2
    # rloo: 16 distinct prompts, each 4 times in a row
    rloo = rl_cai.draw_prompts(red, helpful, dataclasses.replace(cfg, estimator="rloo",
                                                                 value="none"), 3)  # fmt: skip
    assert len(rloo) == 64 and len({p.messages for p in rloo}) == 16
    assert all(rloo[i] == rloo[i - i % 4] for i in range(64))
    assert sum(p.slice != "helpful" for p in rloo) == 16  # 4 of the 16 prompts, 4 times each


def test_red_team_made_up_adds_requests_about_new_words_to_the_red_team_pool():
    w = world.generate(world.WorldConfig(seed=0))
    red, helpful = rl_cai.toy_prompts(w, red_team_made_up=4)
    plain, same_helpful = rl_cai.toy_prompts(w)
    assert helpful == same_helpful and red[: len(plain)] == plain
    extra = red[len(plain) :]
    assert len(extra) == 4 * len(world.MADE_UP_HARMFUL)
    for p in extra:
        req = w.by_id(p.request_id)
        assert req.harmful and req.entity.lower() in w.made_up
    with pytest.raises(ConfigError, match="rl_cai.red_team_made_up=-1"):
        rl_cai.RLConfig(red_team_made_up=-1)
    with pytest.raises(ConfigError, match="rl_cai.red_team_made_up: made-up words"):
        rl_cai.RLConfig(red_team_made_up=2, prompts="hh_rlhf", hh_rlhf_dir="x")
