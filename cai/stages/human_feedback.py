"""Stage ``human_feedback``: the simulated crowdworker labels the training pairs.

The paper's preference model learns helpfulness from human comparisons; its HH-RLHF baseline
learns harmlessness from them too. On the toy world the "human" is
``cai.toyworld.crowdworker`` (which reads the judge, the only stage-side reader besides
evaluation), labelling the ``train`` pairs of stage ``pairs`` of the tasks in
``human_feedback.tasks``: ``helpfulness`` for the RL-CAI preference model, both for the
baseline (``experiments/pm_human.py``). Held-out pairs are never labelled here.

Output: ``WORKDIR/human_feedback/train/shard-*.jsonl``, one pair record per comparison with
``p_a`` (1.0: the worker picked A, 0.0: B); a pairs record of k replies gives one per two of
them (``comparisons``). Pairs the worker is indifferent about are left out unless
``keep_ties`` (then with 0.5). Each shard's random draws come from ``(crowdworker.seed,
shard)``.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import ml_collections
from etils import epath

from cai import configs, stage_lib
from cai.errors import ConfigError, Halted
from cai.metrics import update_summary
from cai.toyworld import crowdworker, world


@dataclasses.dataclass(frozen=True)
class HumanFeedbackConfig:
    pairs: str = "pairs"  # the stage directory holding the pairs
    tasks: tuple[str, ...] = ("helpfulness",)
    # A worker who prefers neither reply (label 0.5) records nothing, by default: most sampled
    # pairs are alike in what the worker checks, and training on them would spend most of the
    # preference model's steps pulling equal rewards together.
    keep_ties: bool = False
    shard_size: int = 1024
    halt_after_shards: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in crowdworker.TASKS]
        if bad or not self.tasks:
            raise ConfigError(
                f"human_feedback.tasks={self.tasks}: expected some of {crowdworker.TASKS}"
            )


def stage_config(**overrides: Any) -> ml_collections.ConfigDict:
    cd = configs.as_dict(HumanFeedbackConfig(**overrides))
    cd.crowdworker = configs.as_dict(crowdworker.CrowdworkerConfig())
    return cd


def comparisons(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every two distinct replies of a pairs record, as a record of its own with ``responses``
    ``[a, b]`` (``a`` sampled first): a worker shown k replies ranks them, and a ranking of k
    holds k(k-1)/2 comparisons (InstructGPT, arXiv 2203.02155). Two identical replies are no
    comparison."""
    replies = record["responses"]
    return [
        {**record, "responses": [a, b]}
        for i, a in enumerate(replies)
        for b in replies[i + 1 :]
        if a != b
    ]


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    sc = configs.get(config, "human_feedback", "")
    cfg = configs.to_dataclass(
        HumanFeedbackConfig, {k: v for k, v in sc.items() if k != "crowdworker"}, "human_feedback"
    )
    worker = configs.to_dataclass(
        crowdworker.CrowdworkerConfig,
        configs.get(sc, "crowdworker", "human_feedback"),
        "human_feedback.crowdworker",
    )
    w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
    pairs_dir = workdir / cfg.pairs / "train"
    stage_dir = workdir / "human_feedback"
    stage_lib.guard(
        stage_dir,
        stage_lib.section(config, "world", "human_feedback"),
        {"pairs/train": stage_lib.fingerprint_shards(pairs_dir)},
    )
    data = [pair for r in stage_lib.shards(pairs_dir) if r["task"] in cfg.tasks
            for pair in comparisons(r)]  # fmt: skip

    def label(batch: list[dict[str, Any]], shard: int) -> list[dict[str, Any]]:
        rng = random.Random(f"{worker.seed}/{shard}")
        out = []
        for r in batch:
            p = crowdworker.choose(
                worker, w.by_id(r["request_id"]), r["task"], *r["responses"], rng
            )
            if p != 0.5 or cfg.keep_ties:
                out.append({**r, "p_a": p})
        return out

    spec = {"n_pairs": len(data), "crowdworker": dataclasses.asdict(worker),
            "tasks": list(cfg.tasks), "keep_ties": cfg.keep_ties}  # fmt: skip
    budget = [cfg.halt_after_shards or -1]
    recs = stage_lib.run_shards(
        stage_dir / "train", data, cfg.shard_size, label, spec, budget, "human feedback"
    )
    if recs is None:
        raise Halted(f"stopped after {cfg.halt_after_shards} new shards")
    update_summary(
        workdir,
        "human_feedback_stage",
        {t: {"pairs": sum(r["task"] == t for r in data),
             "labelled": sum(r["task"] == t for r in recs)} for t in cfg.tasks},
    )  # fmt: skip
