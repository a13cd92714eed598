"""Stage ``dpo`` on a tiny random policy: DPO on pairs where "yes" is preferred to "no" (soft
label 0.9) starts at a zero margin and raises it, a run killed mid-way and rerun ends with the
uninterrupted run's parameters, the result loads as a policy the way ``evaluate`` loads one,
bad settings fail naming the field, and ``experiments/dpo_ai.py`` trains on the RL-CAI PM's
comparisons. The loss itself is tested in ``test_dpo.py``."""

import functools
import importlib.util
import json
import math

import jax
import ml_collections
import numpy as np
import pytest
from tiny_models import random_params

from cai import configs, dpo, pretrained, sharding, stage_lib
from cai import preference_model as pm
from cai.checkpoint import Checkpointer
from cai.errors import ConfigError, Halted
from cai.model import ModelConfig
from cai.stages import dpo as stage
from cai.stages import evaluate
from cai.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
TINY = ModelConfig(
    vocab_size=259, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, mlp_dim=64
)


def records(n, task, a, b, p_a, start=0):
    return [
        {"messages": [["user", f"Question {start + i}?"]], "responses": [a, b], "p_a": p_a,
         "task": task}
        for i in range(n)
    ]  # fmt: skip


def write_shard(directory, recs):
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in recs)
    (directory / "shard-00000-of-00001.jsonl").write_text(text)


@functools.cache
def lm_params():
    return random_params(TINY)


def make_workdir(path):
    """A tiny random SL-CAI policy, AI harmlessness labels preferring "yes" (A) to "no", and
    the crowdworker's helpfulness labels preferring it too (as B); the crowdworker's
    harmlessness labels, which prefer "no", must not be read."""
    meta = pretrained.checkpoint_metadata("sl_cai", TINY, TOK, ml_collections.ConfigDict())
    with Checkpointer(path / "sl_cai" / "checkpoints", 1, 1, async_save=False) as ckpt:
        ckpt.save(0, lm_params(), {"step": np.zeros((), np.int32)}, {**meta, "step": 0}, force=True)
        ckpt.wait()
    write_shard(path / "feedback" / "train", records(40, "harmlessness", "yes", "no", 0.9))
    human = records(20, "helpfulness", "no", "yes", 0.1, 100)
    human += records(20, "harmlessness", "yes", "no", 0.0, 200)
    write_shard(path / "human_feedback" / "train", human)
    return path


def dpo_config(steps=12, halt_at_step=0, **fields):
    config = ml_collections.ConfigDict({"seed": 0, "base": "shipped"})
    config.mesh = configs.as_dict(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    config.model = configs.as_dict(TINY)
    fields = {"beta": 0.5, **fields}
    config.dpo = stage.stage_config(steps, 8, 48, 3e-3, **fields)
    # halting or finishing saves anyway
    config.dpo.train.update(log_every=1, save_every=100, halt_at_step=halt_at_step)
    config.dpo.optim.warmup_steps = 0
    return config


def metrics(stage_dir):
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").open()]
    return {r["step"]: r for r in rows}  # a resumed run's rows replace the killed run's


def final(stage_dir):
    _, params, _ = pretrained.load(str(stage_dir))
    return jax.tree.map(np.asarray, params)


def test_reply_mask_covers_the_reply_and_its_end_token_also_when_cut():
    comps = pm.read_comparisons(records(2, "harmlessness", "yes", "a much longer no", 0.9))
    for seq_len in (64, 30):  # 30 cuts the conversation (and keeps BOS)
        data = dpo.PairBatches(comps, TOK, seq_len, 2, 0, {"harmlessness": 1.0})
        rows = data.take([0, 1])
        for j, reply in enumerate(["yes", "yes", "a much longer no", "a much longer no"]):
            picked = rows["tokens"][j][rows["reply_mask"][j]].tolist()
            assert picked == TOK.encode(" " + reply) + [TOK.eos_id], (seq_len, j)
            assert not (rows["reply_mask"][j] & ~rows["mask"][j]).any()
    assert data.truncated > 0


def test_dpo_raises_the_margin_toward_the_preferred_reply_and_resumes(tmp_path):
    whole = make_workdir(tmp_path / "whole")
    stage.run(dpo_config(), whole)
    out = json.loads((whole / "dpo" / "done.json").read_text())
    # 6 of the 60 conversations held out; the crowdworker's harmlessness labels are not read
    assert out["n_train"]["harmlessness"] + out["n_heldout"]["harmlessness"] == 40
    assert out["n_train"]["helpfulness"] + out["n_heldout"]["helpfulness"] == 20
    assert sum(out["n_heldout"].values()) == 6
    m = metrics(whole / "dpo")
    # step 1 is scored with the initial params: policy = reference, so z = 0 exactly enough
    assert abs(m[1]["dpo/margin"]) < 1e-4 and m[1]["dpo/loss"] == pytest.approx(math.log(2))
    # toward A, and to about logit(0.9) = 2.2, where a soft label's loss is least (its entropy,
    # 0.325), rather than on toward infinity as a hard label would push it
    assert 1.0 < m[12]["dpo/margin"] < 4.0 and m[12]["dpo/accuracy"] == 1.0, m[12]
    assert m[12]["dpo/loss"] < 0.36 and all(r["dpo/skipped"] == 0 for r in m.values())
    assert out["heldout"]["overall"]["accuracy"] == 1.0 and out["heldout"]["overall"]["margin"] > 1
    before = {p: p.stat().st_mtime_ns for p in (whole / "dpo").rglob("*") if p.is_file()}
    stage.run(dpo_config(), whole)  # done: a rerun writes nothing
    assert before == {p: p.stat().st_mtime_ns for p in (whole / "dpo").rglob("*") if p.is_file()}

    killed = make_workdir(tmp_path / "killed")
    with pytest.raises(Halted, match="stopped at step 5"):
        stage.run(dpo_config(halt_at_step=5), killed)
    assert not (killed / "dpo" / "done.json").exists()
    stage.run(dpo_config(), killed)
    a, b = final(whole / "dpo"), final(killed / "dpo")
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
    assert not jax.tree.all(jax.tree.map(np.array_equal, a, lm_params()))  # it did train
    assert metrics(killed / "dpo")[12]["dpo/margin"] == m[12]["dpo/margin"]

    # evaluate resolves {"dpo_ai": "dpo"} to the stage dir and loads it as it loads sl_cai
    mesh = sharding.make_mesh(sharding.MeshConfig())
    path = stage_lib.resolve_init(dpo_config(), whole, "dpo", "evaluate.checkpoints.dpo_ai")
    policy = stage_lib.load_model(path, mesh, "evaluate.checkpoints.dpo_ai")
    assert not policy.model_cfg.scalar_head and policy.stop_id == TOK.eos_id

    with pytest.raises(ConfigError, match=r"whole/dpo was made with config.dpo.beta=0.5"):
        stage.run(dpo_config(beta=0.2), whole)


def test_bad_settings_are_named(tmp_path):
    typo = dpo_config()
    typo.dpo.betta = 0.1
    with pytest.raises(ConfigError, match="config.dpo.betta: unknown key"):
        stage.run(typo, tmp_path)
    with pytest.raises(ConfigError, match="dpo.beta=0.0: must be positive"):
        stage.run(dpo_config(beta=0.0), tmp_path)
    with pytest.raises(ConfigError, match="dpo.helpfulness_weight=-1.0 is negative"):
        stage.run(dpo_config(helpfulness_weight=-1.0), tmp_path)
    with pytest.raises(ConfigError, match="dpo.init_from='sl_cai'"):
        stage.run(dpo_config(), tmp_path)


def experiment(repo, name):
    spec = importlib.util.spec_from_file_location(name, repo / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_the_experiment_trains_on_the_rl_cai_pms_mix_and_evaluates_the_policy(repo, arg):
    config = experiment(repo, "dpo_ai").get_config(arg)
    assert config.stages == ("sl_cai", "pairs", "feedback", "human_feedback", "dpo", "evaluate")
    cfg = configs.to_dataclass(
        stage.DPOConfig, {k: v for k, v in config.dpo.items() if k not in ("train", "optim")}, "dpo"
    )
    pm_cfg = experiment(repo, "rlcai").get_config(arg).preference_model.pm
    # the data fields (``half`` is 0 there: the RL-CAI PM trains on every training prompt)
    mix = [k for k in pm_cfg if k not in ("init_from", "score_batch_size", "half")]
    assert len(mix) == 6 and all(getattr(cfg, k) == pm_cfg[k] for k in mix)
    ev = configs.to_dataclass(evaluate.EvalConfig, config.evaluate, "evaluate")
    assert ev.checkpoints["dpo_ai"] == "dpo" and not ev.preference_models
    assert "preference_model" not in config and "pm_human" not in config
    with pytest.raises(ValueError, match="unknown variant"):
        experiment(repo, "dpo_ai").get_config("nope")
