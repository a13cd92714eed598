"""Stage ``human_feedback``: the simulated crowdworker labels the training pairs.

The paper's preference model learns helpfulness from human comparisons; its HH-RLHF baseline
learns harmlessness from them too. On the toy world the "human" is
``cai.toyworld.crowdworker`` (which reads the judge, the only stage-side reader besides
evaluation), labelling the ``train`` pairs of stage ``pairs`` of the tasks in
``human_feedback.tasks``: ``helpfulness`` for the RL-CAI preference model, both for the
baseline (``experiments/pm_human.py``). Held-out pairs are never labelled here.

With ``source = "hh_rlhf"`` the labels are real crowdworkers': the chosen/rejected pairs of
the HH-RLHF release's **train** comparison files named by ``hh_rlhf_files`` (``helpful``: the
helpfulness comparisons the paper's PM trains on), each written as a helpfulness comparison,
the chosen reply listed first in a seeded half of them. That is how a real-model run (pods,
SmolLM2) gets its helpfulness labels; it reads no world and no pairs.

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
import numpy as np
from etils import epath

from cai import configs, stage_lib
from cai.errors import ConfigError, Halted
from cai.metrics import update_summary
from cai.toyworld import crowdworker, world

SOURCES = ("crowdworker", "hh_rlhf")


@dataclasses.dataclass(frozen=True)
class HumanFeedbackConfig:
    source: str = "crowdworker"  # crowdworker (toy world) | hh_rlhf (the release's labels)
    pairs: str = "pairs"  # the stage directory holding the pairs
    tasks: tuple[str, ...] = ("helpfulness",)
    # A worker who prefers neither reply (label 0.5) records nothing, by default: most sampled
    # pairs are alike in what the worker checks, and training on them would spend most of the
    # preference model's steps pulling equal rewards together.
    keep_ties: bool = False
    shard_size: int = 1024
    halt_after_shards: int = 0
    # source=hh_rlhf: the downloaded release, the comparison files used (key prefixes), how
    # many of their pairs (-1: all), and the seed of which reply is listed first.
    hh_rlhf_dir: str = ""
    hh_rlhf_files: tuple[str, ...] = ("helpful",)
    hh_rlhf_as_train: tuple[str, ...] = ()  # see sl_cai.loop.hh_rlhf_as_train
    hh_rlhf_n: int = -1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(
                f"human_feedback.source={self.source!r}: expected {' or '.join(SOURCES)}"
            )
        if self.source == "hh_rlhf" and not self.hh_rlhf_dir:
            raise ConfigError("human_feedback.source=hh_rlhf needs human_feedback.hh_rlhf_dir")
        bad = [t for t in self.tasks if t not in crowdworker.TASKS]
        if bad or not self.tasks:
            raise ConfigError(
                f"human_feedback.tasks={self.tasks}: expected some of {crowdworker.TASKS}"
            )


def stage_config(**overrides: Any) -> ml_collections.ConfigDict:
    cd = configs.as_dict(HumanFeedbackConfig(**overrides))
    cd.crowdworker = configs.as_dict(crowdworker.CrowdworkerConfig())
    return cd


def hh_rlhf_records(workdir: epath.Path, cfg: HumanFeedbackConfig) -> list[dict[str, Any]]:
    """The release's train comparisons as helpfulness records, ``p_a`` 1.0 where the chosen
    reply is listed first (a seeded half of them: a PM must not learn that A wins)."""
    from cai.data.hh_rlhf import hh_rlhf
    from cai.hhh import parse_dialogue

    rows = hh_rlhf.comparison_rows(
        str(workdir / "data"), cfg.hh_rlhf_dir, "train", cfg.hh_rlhf_files,
        as_train=cfg.hh_rlhf_as_train,
    )  # fmt: skip
    rows = stage_lib.take(rows, cfg.hh_rlhf_n, cfg.seed)
    first = np.random.default_rng([cfg.seed, len(rows)]).random(len(rows)) < 0.5
    out = []
    for (src, prompt, good, bad), chosen_first in zip(rows, first):
        messages = parse_dialogue(prompt[: -len(hh_rlhf.ASSISTANT)])
        if not messages or messages[-1][0] != "user":
            continue  # no human turn to answer: no comparison of replies
        out.append({"split": "train", "request_id": src, "slice": "helpful",
                    "task": "helpfulness", "messages": [list(m) for m in messages],
                    "responses": [good, bad] if chosen_first else [bad, good],
                    "p_a": 1.0 if chosen_first else 0.0})  # fmt: skip
    return out


def run_hh_rlhf(cfg: HumanFeedbackConfig, config: ml_collections.ConfigDict,
                workdir: epath.Path) -> None:  # fmt: skip
    stage_dir = workdir / "human_feedback"
    stage_lib.guard(stage_dir, stage_lib.section(config, "human_feedback"), {})
    data = hh_rlhf_records(workdir, cfg)
    spec = {"source": "hh_rlhf", "n_pairs": len(data), "seed": cfg.seed}
    budget = [cfg.halt_after_shards or -1]
    recs = stage_lib.run_shards(
        stage_dir / "train", data, cfg.shard_size, lambda b, _: b, spec, budget, "human feedback"
    )
    if recs is None:
        raise Halted(f"stopped after {cfg.halt_after_shards} new shards")
    update_summary(
        workdir, "human_feedback_stage", {"helpfulness": {"pairs": len(data), "source": "hh_rlhf"}}
    )


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    sc = configs.get(config, "human_feedback", "")
    cfg = configs.to_dataclass(
        HumanFeedbackConfig, {k: v for k, v in sc.items() if k != "crowdworker"}, "human_feedback"
    )
    if cfg.source == "hh_rlhf":
        return run_hh_rlhf(cfg, config, workdir)
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
            for pair in stage_lib.reply_pairs(r)]  # fmt: skip

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
