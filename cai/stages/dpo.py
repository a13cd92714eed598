"""Stage ``dpo``: direct preference optimisation of the SL-CAI policy on the preference data
(``dpo_ai``, the baseline to RL-CAI's PM + PPO; DPO: arXiv 2305.18290).

The policy and its frozen reference both start from ``dpo.init_from`` (by default the SL-CAI
model, as RL-CAI's policy and reference do). It is trained with the soft-label DPO loss of
``cai.dpo`` (β = ``dpo.beta``; the feedback label ``p_a`` is the target), with ``z`` the
implicit reward margin ``β · ((log π(A) − log π_ref(A)) − (log π(B) − log π_ref(B)))``::

    ℓ = −[p_a · log σ(z) + (1 − p_a) · log σ(−z)]

on the comparisons the RL-CAI preference model is trained on: the same fields as
``preference_model.pm`` (``harmlessness`` / ``helpfulness`` stages whose ``train/`` shards hold
them, their loss weights, ``heldout_fraction`` and ``seed``), read and split by the same code,
so with the same values DPO trains on exactly the PM's training pairs and batches them in the
PM's order. The reference's log-probs of every pair are computed once before training (see
``cai.dpo``) and kept in ``reference_logprobs.json``, so a resumed run reads them back.

Training resumes like every train step (``train.halt_at_step`` simulates a kill; a rerun ends
with the parameters of an uninterrupted run). After it, the held-out pairs are scored under
the trained policy: ``done.json`` (written last; a rerun then does nothing) holds the implicit
reward's held-out accuracy, margin and loss per task, comparable with the PM's
``reward_stats.json``. ``checkpoints/`` is the policy, loaded by ``stage_lib.load_model`` (and
so by ``evaluate``) like SL-CAI's; ``metrics.jsonl`` has ``dpo/loss``, ``dpo/accuracy``,
``dpo/margin``, ``dpo/reward_a``, ``dpo/reward_b`` per logged step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from cai import configs, dpo, pretrained, sharding, stage_lib
from cai import preference_model as pm
from cai.errors import ConfigError, Halted
from cai.files import read_json, write_json
from cai.metrics import update_summary
from cai.train_lib import OptimConfig, TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """The policy, the loss and the comparisons (the data fields are ``PMConfig``'s)."""

    init_from: str = "sl_cai"  # the policy and the frozen reference
    beta: float = 0.1  # the implicit reward's scale β
    harmlessness: str = "feedback"  # stage whose train/ shards give harmlessness comparisons
    helpfulness: str = "human_feedback"  # likewise for helpfulness ("" leaves a task out)
    harmlessness_weight: float = 2.0
    helpfulness_weight: float = 1.0
    heldout_fraction: float = 0.1  # of the conversations (all their pairs), kept out of training
    seed: int = 0  # the held-out split and the batch order

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"dpo.beta={self.beta}: must be positive")
        if not self.sources():
            raise ConfigError("dpo.harmlessness and dpo.helpfulness are both empty")
        for task in self.sources():
            if self.weights()[task] < 0:
                raise ConfigError(f"dpo.{task}_weight={self.weights()[task]} is negative")
        if not sum(self.weights()[t] for t in self.sources()) > 0:
            raise ConfigError("dpo: every task used has loss weight 0")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError(f"dpo.heldout_fraction={self.heldout_fraction}: need [0, 1)")

    def sources(self) -> dict[str, str]:
        """task -> the stage directory its comparisons come from (named tasks only)."""
        named = {"harmlessness": self.harmlessness, "helpfulness": self.helpfulness}
        return {task: d for task, d in named.items() if d}

    def weights(self) -> dict[str, float]:
        return {"harmlessness": self.harmlessness_weight, "helpfulness": self.helpfulness_weight}


def stage_config(
    steps: int = 150,
    batch_size: int = 32,
    seq_len: int = 96,
    learning_rate: float = 1e-5,
    **fields: Any,
) -> ml_collections.ConfigDict:
    """The stage's section: ``DPOConfig`` fields, ``train`` (``batch_size`` = pairs per step,
    each a row for A and one for B) and ``optim``. The defaults are untuned: 150 steps of 32
    pairs is about 2.5 epochs of the toy world's ~1,900 training pairs, in a little more than
    the time of the PM's 200 steps (a DPO step costs ~1.5x a PM step: the full-vocabulary
    logits of both replies). The learning rate is far below the PM's 3e-4, at the top of the
    usual DPO range: DPO moves every weight of the policy toward a margin, and large steps are
    known to drive the likelihood of both replies down."""
    return ml_collections.ConfigDict(
        {
            **configs.as_dict(DPOConfig(**fields)),
            **configs.train_section(steps, batch_size, seq_len, 2, learning_rate, 20, 0.0),
        }
    )


# ----------------------------------------------------------------------------- held out


def heldout_figures(
    policy: np.ndarray, reference: np.ndarray, comps: list[pm.Comparison], beta: float
) -> dict[str, Any]:
    """``dpo_loss``'s figures on held-out pairs, in numpy (their count varies by task), from
    their log-probs [n, 2] under the trained policy and the reference: the mean unweighted
    loss, and on the pairs with ``p_a ≠ ½`` the accuracy (``preference_model.
    pairwise_accuracy`` of the implicit rewards) and the margin ``mean z · sign(p_a − ½)``."""
    r = beta * (policy.astype(np.float64) - reference.astype(np.float64))  # [n, 2]
    z = r[:, 0] - r[:, 1]
    p = np.asarray([c.p_a for c in comps], np.float64)
    acc = pm.pairwise_accuracy(r[:, 0], r[:, 1], p)
    sign = np.sign(p - 0.5)
    loss = p * np.logaddexp(0.0, -z) + (1 - p) * np.logaddexp(0.0, z)  # [n]
    return {
        "n": len(p),
        "n_decided": acc["n"],
        "accuracy": acc["accuracy"],
        "margin": float(np.mean((z * sign)[sign != 0])) if acc["n"] else None,
        "loss": float(np.mean(loss)) if len(p) else None,
    }


def _reference(
    path: epath.Path, score: dpo.PairLogprobs, params: Any, data: dict[str, dpo.PairBatches]
) -> dict[str, np.ndarray]:
    """The reference's log-probs of every pair (split -> [n, 2]), read back from ``path`` when
    an earlier run of this stage wrote them (float32 values round-trip JSON exactly)."""
    if path.exists():
        return {k: np.asarray(v, np.float32).reshape(-1, 2) for k, v in read_json(path).items()}
    out = {k: score(params, d) if len(d) else np.zeros((0, 2), np.float32) for k, d in data.items()}
    write_json(path, {k: v.tolist() for k, v in out.items()})
    return out


# ----------------------------------------------------------------------------- the stage


def run(config: ml_collections.ConfigDict, workdir: epath.Path, name: str = "dpo") -> None:
    sc = configs.get(config, name, "")
    cfg = configs.to_dataclass(
        DPOConfig, {k: v for k, v in sc.items() if k not in ("train", "optim")}, name
    )
    train_cfg = configs.to_dataclass(TrainConfig, configs.get(sc, "train", name), f"{name}.train")
    optim_cfg = configs.to_dataclass(OptimConfig, configs.get(sc, "optim", name), f"{name}.optim")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    sharding.check_batch(train_cfg.batch_size, mesh, f"{name}.train.batch_size")
    stage_dir = workdir / name
    init = stage_lib.resolve_init(config, workdir, cfg.init_from, f"{name}.init_from")
    comparisons, fingerprints = stage_lib.read_comparisons(workdir, cfg.sources(), name)
    stage_lib.guard(
        stage_dir,
        stage_lib.section(config, name),
        {"init_from": stage_lib.fingerprint(init), **fingerprints},
    )
    done_path = stage_dir / "done.json"
    if done_path.exists():
        logging.info("%s: done already (%s exists)", name, done_path)
        return

    train, heldout = pm.heldout_split(comparisons, cfg.heldout_fraction, cfg.seed)
    loaded = stage_lib.load_model(init, mesh, f"{name}.init_from", "chat", config.get("model"))
    make = functools.partial(
        dpo.PairBatches, tok=loaded.tok, seq_len=train_cfg.seq_len,
        batch_size=train_cfg.batch_size, seed=cfg.seed, weights=cfg.weights(),
    )  # fmt: skip
    held_flat = [c for comps in heldout.values() for c in comps]
    data = {"train": make([c for comps in train.values() for c in comps])}
    if held_flat:
        data["heldout"] = make(held_flat)
    score = dpo.PairLogprobs(loaded.model, mesh)
    t0 = time.time()
    ref = _reference(stage_dir / "reference_logprobs.json", score, loaded.params, data)
    data["train"].ref_logp = ref["train"]
    t1 = time.time()
    state = fit(
        model=loaded.model,
        optim_cfg=optim_cfg,
        train_cfg=train_cfg,
        mesh=mesh,
        batch_fn=data["train"].batch,
        workdir=stage_dir,
        metadata=pretrained.checkpoint_metadata(name, loaded.model_cfg, loaded.tok, config),
        loss_fn=functools.partial(dpo.batch_loss, beta=cfg.beta),
        init_params=loaded.params,
        stage=name,
    )
    summary: dict[str, Any] = {
        "n_train": {task: len(c) for task, c in train.items()},
        "n_heldout": {task: len(c) for task, c in heldout.items()},
        "truncated": data["train"].truncated,
        "steps": int(state.step),
        "epochs": round(int(state.step) * train_cfg.batch_size / len(data["train"]), 2),
        "reference_seconds_this_run": round(t1 - t0, 1),
        "train_seconds_this_run": round(time.time() - t1, 1),
    }
    if int(state.step) < train_cfg.steps:
        update_summary(workdir, f"{name}_stage", summary)
        raise Halted(f"DPO training stopped at step {int(state.step)}")

    figures: dict[str, Any] = {}
    if held_flat:
        policy = score(state.params, data["heldout"])
        i = 0
        for task, comps in heldout.items():
            sl = slice(i, i + len(comps))
            figures[task] = heldout_figures(policy[sl], ref["heldout"][sl], comps, cfg.beta)
            i += len(comps)
        figures["overall"] = heldout_figures(policy, ref["heldout"], held_flat, cfg.beta)
    summary["heldout"] = figures
    update_summary(workdir, f"{name}_stage", summary)
    write_json(done_path, summary)  # last: its presence marks the stage done
