"""Stage ``preference_model``: train a preference model (PM) on comparisons of two replies.

The PM of the paper's RL stage (Sec. 4) is initialised from a language model (``pm.init_from``,
a zero scalar head added) and trained with the soft-label pairwise loss of
``cai.preference_model`` on a mix of two kinds of comparison, each read from another stage's
``train/`` shard directory (records ``{"messages", "responses": [a, b], "p_a", "task"}``):

* ``harmlessness`` comparisons (``pm.harmlessness``, by default stage ``feedback``: AI labels
  from the feedback model and the constitution), loss weight ``pm.harmlessness_weight``;
* ``helpfulness`` comparisons (``pm.helpfulness``, by default stage ``human_feedback``),
  weight ``pm.helpfulness_weight``.

A directory may hold both tasks; only records of the task it is named for are taken from it
(so ``harmlessness = helpfulness = "human_feedback"`` trains a PM on human labels only). An
empty name leaves that task out. Up-weighting harmlessness (2x by default) follows HH-RLHF
(arXiv 2204.05862).

A seeded ``pm.heldout_fraction`` of the conversations is kept out of training with every pair
of replies to them (so no held-out prompt is trained on, under either task). After training,
the stage scores those pairs and writes ``WORKDIR/<name>/reward_stats.json``: the mean and
standard deviation of the rewards over both sides of the held-out pairs (RL centres and scales
rewards with them), the held-out accuracy and loss per task and overall, and the counts;
``heldout_scores.jsonl`` holds each held-out pair's rewards and label. ``checkpoints/`` is
the PM, which ``pretrained.load`` / ``stage_lib.load_model`` reload as a scalar-head model.

Training resumes like every train step (``train.halt_at_step`` simulates a kill); the stage is
done once ``reward_stats.json`` exists, and a rerun then does nothing. ``run`` takes the
stage's ``name``, so a second PM (``pm_human``) reuses it with its own config section and
directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from cai import configs, pretrained, sharding, stage_lib
from cai import preference_model as pm
from cai.errors import ConfigError, Halted
from cai.files import write_json, write_jsonl
from cai.metrics import update_summary
from cai.model import Transformer
from cai.train_lib import OptimConfig, TrainConfig, fit

STATS_PAIRS = 1024  # train pairs scored for the reward statistics when none are held out


@dataclasses.dataclass(frozen=True)
class PMConfig:
    """What the PM starts from and trains on (``config.<name>.pm``)."""

    init_from: str = "base"  # "base" (config.base), a stage dir of the workdir, or a path
    harmlessness: str = "feedback"  # stage whose train/ shards give harmlessness comparisons
    helpfulness: str = "human_feedback"  # likewise for helpfulness ("" leaves a task out)
    harmlessness_weight: float = 2.0
    helpfulness_weight: float = 1.0
    heldout_fraction: float = 0.1  # of the conversations (all their pairs), kept out of training
    # 0: train on every training conversation; 1 or 2: on that half of them only (a PM of
    # half 1 and one of half 2 share no prompt: the second watches RL for reward hacking)
    half: int = 0
    seed: int = 0  # the held-out split and the batch order
    score_batch_size: int = 256  # rows per scoring call (a multiple of the mesh's data axes)

    def sources(self) -> dict[str, str]:
        """task -> the stage directory its comparisons come from (named tasks only)."""
        named = {"harmlessness": self.harmlessness, "helpfulness": self.helpfulness}
        return {task: d for task, d in named.items() if d}

    def weights(self) -> dict[str, float]:
        return {"harmlessness": self.harmlessness_weight, "helpfulness": self.helpfulness_weight}

    def check(self, where: str) -> None:
        if not self.sources():
            raise ConfigError(f"{where}.harmlessness and {where}.helpfulness are both empty")
        for task in self.sources():
            if self.weights()[task] < 0:
                raise ConfigError(f"{where}.{task}_weight={self.weights()[task]} is negative")
        if not sum(self.weights()[t] for t in self.sources()) > 0:
            raise ConfigError(f"{where}: every task used has loss weight 0")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError(f"{where}.heldout_fraction={self.heldout_fraction}: need [0, 1)")
        if self.half not in (0, 1, 2):
            raise ConfigError(f"{where}.half={self.half}: expected 0 (all), 1 or 2")
        if self.score_batch_size <= 0:
            raise ConfigError(f"{where}.score_batch_size={self.score_batch_size}: not positive")


def stage_config(
    steps: int = 300,
    batch_size: int = 32,
    seq_len: int = 128,
    learning_rate: float = 3e-4,
    **pm_fields: Any,
) -> ml_collections.ConfigDict:
    """The stage's section: ``pm`` (``PMConfig``), ``train`` (``batch_size`` = pairs per step,
    each a row for A and one for B) and ``optim``."""
    return ml_collections.ConfigDict(
        {
            "pm": configs.as_dict(PMConfig(**pm_fields)),
            **configs.train_section(steps, batch_size, seq_len, 2, learning_rate, 20, 0.0),
        }
    )


# ----------------------------------------------------------------------------- scoring


def heldout_loss(r_a: np.ndarray, r_b: np.ndarray, p: np.ndarray) -> float | None:
    """The mean unweighted pairwise loss ``−[p log σ(d) + (1 − p) log σ(−d)]``."""
    if not len(p):
        return None
    d = np.asarray(r_a, np.float64) - np.asarray(r_b, np.float64)
    p = np.asarray(p, np.float64)
    return float(np.mean(p * np.logaddexp(0.0, -d) + (1 - p) * np.logaddexp(0.0, d)))


def score_pairs(
    rm: pm.RewardModel, comparisons: Sequence[pm.Comparison]
) -> tuple[np.ndarray, np.ndarray]:
    if not comparisons:
        return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
    return rm.compare(
        [c.messages for c in comparisons], [c.a for c in comparisons], [c.b for c in comparisons]
    )


def reward_stats(
    rm: pm.RewardModel,
    heldout: dict[str, list[pm.Comparison]],
    train: dict[str, list[pm.Comparison]],
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(``reward_stats.json``, one record per held-out pair)."""
    acc, loss, n_held, records = {}, {}, {}, []
    r_all, p_all = [], []
    for task, comps in heldout.items():
        r_a, r_b = score_pairs(rm, comps)
        p = np.asarray([c.p_a for c in comps], np.float32)
        acc[task] = pm.pairwise_accuracy(r_a, r_b, p)["accuracy"]
        loss[task], n_held[task] = heldout_loss(r_a, r_b, p), len(comps)
        r_all.append(np.stack([r_a, r_b], 1))
        p_all.append(p)
        records += [
            {"task": task, "messages": [list(m) for m in c.messages], "responses": [c.a, c.b],
             "p_a": c.p_a, "r_a": float(a), "r_b": float(b)}
            for c, a, b in zip(comps, r_a, r_b)
        ]  # fmt: skip
    rewards = np.concatenate(r_all) if r_all else np.zeros((0, 2), np.float32)
    p = np.concatenate(p_all) if p_all else np.zeros((0,), np.float32)
    acc["overall"] = pm.pairwise_accuracy(rewards[:, 0], rewards[:, 1], p)["accuracy"]
    loss["overall"] = heldout_loss(rewards[:, 0], rewards[:, 1], p)
    n_held["overall"] = len(p)
    stats_from = "heldout"
    if not len(p):  # nothing held out: the statistics come from a seeded sample of train pairs
        stats_from = "train"
        pool = [c for comps in train.values() for c in comps]
        order = np.random.default_rng([seed, 99]).permutation(len(pool))[:STATS_PAIRS]
        rewards = np.stack(score_pairs(rm, [pool[i] for i in sorted(order)]), 1)
    flat = rewards.astype(np.float64).ravel()
    stats = {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "stats_from": stats_from,
        "n_heldout": n_held,
        "heldout_accuracy": acc,
        "heldout_loss": loss,
        "n_train": {task: len(comps) for task, comps in train.items()},
    }
    return stats, records


# ----------------------------------------------------------------------------- the stage


def run(
    config: ml_collections.ConfigDict, workdir: epath.Path, name: str = "preference_model"
) -> None:
    sc = configs.get(config, name, "")
    where = f"{name}.pm"
    cfg = configs.to_dataclass(PMConfig, configs.get(sc, "pm", name), where)
    cfg.check(where)
    train_cfg = configs.to_dataclass(TrainConfig, configs.get(sc, "train", name), f"{name}.train")
    optim_cfg = configs.to_dataclass(OptimConfig, configs.get(sc, "optim", name), f"{name}.optim")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    sharding.check_batch(train_cfg.batch_size, mesh, f"{name}.train.batch_size")
    sharding.check_batch(cfg.score_batch_size, mesh, f"{where}.score_batch_size")
    stage_dir = workdir / name
    init = stage_lib.resolve_init(config, workdir, cfg.init_from, f"{where}.init_from")
    comparisons, fingerprints = stage_lib.read_comparisons(workdir, cfg.sources(), where)
    stage_lib.guard(
        stage_dir,
        stage_lib.section(config, "seed", name),
        {"init_from": stage_lib.fingerprint(init), **fingerprints},
    )
    stats_path = stage_dir / "reward_stats.json"
    if stats_path.exists():
        logging.info("%s: done already (%s exists)", name, stats_path)
        return

    train, heldout = pm.heldout_split(comparisons, cfg.heldout_fraction, cfg.seed)
    if cfg.half:
        train = pm.halves(train, cfg.seed)[cfg.half - 1]
    loaded = stage_lib.load_model(init, mesh, f"{where}.init_from", "chat", config.get("model"))
    pm_cfg, params = pm.with_scalar_head(loaded.model_cfg, loaded.params, mesh)
    data = pm.PairBatches(
        [c for comps in train.values() for c in comps],
        loaded.tok,
        train_cfg.seq_len,
        train_cfg.batch_size,
        cfg.seed,
        cfg.weights(),
    )
    model = Transformer(pm_cfg)
    t0 = time.time()
    state = fit(
        model=model,
        optim_cfg=optim_cfg,
        train_cfg=train_cfg,
        mesh=mesh,
        batch_fn=data.batch,
        workdir=stage_dir,
        metadata=pretrained.checkpoint_metadata(name, pm_cfg, loaded.tok, config),
        loss_fn=pm.pm_loss,
        init_params=params,
        stage=name,
    )
    summary: dict[str, Any] = {
        "n_train": {task: len(c) for task, c in train.items()},
        "n_heldout": {task: len(c) for task, c in heldout.items()},
        "truncated": data.truncated,
        "steps": int(state.step),
        "epochs": round(int(state.step) * train_cfg.batch_size / len(data), 2),
        "train_seconds_this_run": round(time.time() - t0, 1),
    }
    if int(state.step) < train_cfg.steps:
        update_summary(workdir, f"{name}_stage", summary)
        raise Halted(f"preference model training stopped at step {int(state.step)}")

    t1 = time.time()
    trained = dataclasses.replace(
        loaded, path=os.fspath(stage_dir), model_cfg=pm_cfg, model=model, params=state.params
    )
    rm = pm.RewardModel(trained, mesh, cfg.score_batch_size, train_cfg.seq_len)
    stats, records = reward_stats(rm, heldout, train, cfg.seed)
    write_jsonl(stage_dir / "heldout_scores.jsonl", records)
    summary.update(
        heldout_accuracy=stats["heldout_accuracy"],
        reward_mean=stats["mean"],
        reward_std=stats["std"],
        heldout_truncated=rm.truncated,
        score_seconds_this_run=round(time.time() - t1, 1),
    )
    update_summary(workdir, f"{name}_stage", summary)
    write_json(stats_path, stats)  # last: its presence marks the stage done
