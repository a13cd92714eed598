"""Stage ``pairs``: the SL-CAI model answers each prompt twice, the raw material of AI feedback.

The paper's RL half (arXiv 2212.08073, Sec. 4.1) starts from pairs of responses sampled from
the SL-CAI model: red-team prompts for the harmlessness comparisons the feedback model labels,
helpful prompts for the helpfulness comparisons (human-labelled in the paper, the simulated
crowdworker's here). On the toy world:

* ``train``: every harmful training request in every direct phrasing **and** every adversarial
  form (red-teamers attack; held-out entities never appear), task ``harmlessness``; and the
  helpful training prompts (benign requests, dual-use ones included), task ``helpfulness``.
  Only these ever reach training.
* ``dev`` and ``test`` (``eval_splits``): the same two tasks on the held-out splits' prompts,
  ``eval_phrasings`` phrasings per request, for measuring label quality and the preference
  model against the judge. Nothing trains on them.

Both responses are sampled in one batch at ``temperature``; each shard's randomness depends
only on ``(seed, split, shard)``, so a killed run resumes to the same bytes. Records, one per
prompt, in ``WORKDIR/pairs/<split>/shard-*.jsonl``::

    {"split", "shard", "request_id", "slice", "task", "messages": [[role, text], ...],
     "responses": [a, b]}
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from cai import configs, sharding, stage_lib
from cai.errors import ConfigError, Halted
from cai.metrics import update_summary
from cai.sampling import SamplingConfig
from cai.tokenizer import render_chat
from cai.toyworld import world

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class PairsConfig:
    init_from: str = "sl_cai"  # the policy that answers: a stage dir, "base" or a path
    prompts: str = "toy_world"  # toy_world | hh_rlhf
    hh_rlhf_dir: str = ""  # for prompts=hh_rlhf: the downloaded HH-RLHF files
    hh_rlhf_as_train: tuple[str, ...] = ()  # see sl_cai.loop.hh_rlhf_as_train
    red_team: int = -1  # harmlessness prompts used (-1: all)
    helpful: int = 1024  # helpfulness prompts used (-1: all, 0: none)
    # Pairs per training helpfulness prompt (2k samples, paired off): most pairs of two samples
    # are equally good, so the "human" helpfulness labels need more of them to find the few
    # that differ.
    helpful_pairs: int = 1
    eval_splits: tuple[str, ...] = ("dev", "test")  # toy world only
    eval_phrasings: int = 4  # phrasings per held-out request (-1: every one)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    shard_size: int = 128  # prompts per shard (two responses each)
    seed: int = 0
    halt_after_shards: int = 0  # >0: stop after writing this many shards, as if killed

    def __post_init__(self) -> None:
        if self.prompts not in ("toy_world", "hh_rlhf"):
            raise ConfigError(f"pairs.prompts={self.prompts!r}: expected toy_world or hh_rlhf")
        if self.prompts == "hh_rlhf" and not self.hh_rlhf_dir:
            raise ConfigError("pairs.prompts=hh_rlhf needs pairs.hh_rlhf_dir")
        bad = [s for s in self.eval_splits if s not in ("dev", "test")]
        if bad:
            raise ConfigError(f"pairs.eval_splits={self.eval_splits}: expected dev and/or test")
        if self.helpful_pairs < 1:
            raise ConfigError(f"pairs.helpful_pairs={self.helpful_pairs}: must be at least 1")
        if self.shard_size < 1 or self.max_new_tokens < 1 or self.eval_phrasings == 0:
            raise ConfigError(
                "pairs.shard_size and pairs.max_new_tokens must be positive, "
                "pairs.eval_phrasings positive or -1"
            )


def stage_config(**overrides: Any) -> ml_collections.ConfigDict:
    return configs.as_dict(PairsConfig(**overrides))


def toy_prompts(w: world.World, cfg: PairsConfig) -> dict[str, list[tuple[world.Prompt, str]]]:
    """(prompt, task) per split: training red-team prompts in every direct and adversarial
    phrasing and helpful prompts; the held-out splits' evaluation slices."""
    red = [
        p
        for r in w.split("train")
        if r.harmful
        for p in (
            *(world.direct_prompt(r, i, "red_team") for i in range(len(world.DIRECT))),
            *(world.adversarial_prompt(r, i) for i in range(len(world.ADVERSARIAL))),
        )
    ]
    red = [
        dataclasses.replace(p, slice="red_team")
        for p in stage_lib.take(red, cfg.red_team, cfg.seed)
    ]
    helpful = stage_lib.take(list(world.helpful_prompts(w)), cfg.helpful, cfg.seed + 1)
    out = {"train": [(p, "harmlessness") for p in red] + [(p, "helpfulness") for p in helpful]}
    for split in cfg.eval_splits:
        slices = world.eval_prompts(w, split, cfg.eval_phrasings)
        out[split] = [
            (p, "harmlessness" if name in world.HARMFUL_SLICES else "helpfulness")
            for name in world.EVAL_SLICES
            for p in slices[name]
        ]
    return {k: stage_lib.take(v, -1, cfg.seed) for k, v in out.items()}  # tasks mixed in shards


def hh_prompts(workdir: epath.Path, cfg: PairsConfig) -> dict[str, list[tuple[world.Prompt, str]]]:
    """First human turns of the HH-RLHF release's **train** split: red-team and helpful."""
    from cai.data.hh_rlhf import hh_rlhf

    red, helpful = hh_rlhf.cai_prompts(
        str(workdir / "data"), cfg.hh_rlhf_dir, split="train", as_train=cfg.hh_rlhf_as_train
    )
    as_prompt = lambda t, s: world.Prompt((("user", t),), "", s)  # noqa: E731
    red_p = stage_lib.take([as_prompt(t, "red_team") for t in red], cfg.red_team, cfg.seed)
    help_p = stage_lib.take([as_prompt(t, "helpful") for t in helpful], cfg.helpful, cfg.seed + 1)
    return {"train": [(p, "harmlessness") for p in red_p] + [(p, "helpfulness") for p in help_p]}


def shard_seed(cfg: PairsConfig, split: str, shard: int) -> int:
    """A seed per (seed, split, shard): a shard's samples never depend on earlier shards."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), shard])
    return int(rng.integers(2**31))


def pair_shard(
    text: stage_lib.TextSampler,
    cfg: PairsConfig,
    split: str,
    batch: Sequence[tuple[world.Prompt, str]],
    shard: int,
) -> list[dict[str, Any]]:
    """Two samples per prompt (``2 * helpful_pairs`` per training helpfulness prompt, paired
    off), all in one generation call."""
    tok = text.loaded.tok
    k = [cfg.helpful_pairs if split == "train" and t == "helpfulness" else 1 for _, t in batch]
    rows = [i for i, n in enumerate(k) for _ in range(n)]  # one row per pair
    ids = [render_chat(tok, batch[i][0].chat(), add_generation_prompt=True)[0] for i in rows]
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
    )
    replies = text.complete(
        ids + ids, sampling, shard_seed(cfg, split, shard), transcript=tok.chat_format == "hh"
    )
    n = len(rows)
    return [
        {"split": split, "shard": shard, "request_id": batch[i][0].request_id,
         "slice": batch[i][0].slice, "task": batch[i][1],
         "messages": [list(m) for m in batch[i][0].messages],
         "responses": [replies[j], replies[n + j]]}
        for j, i in enumerate(rows)
    ]  # fmt: skip


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    cfg = configs.to_dataclass(PairsConfig, configs.get(config, "pairs", ""), "pairs")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    stage_dir = workdir / "pairs"
    init = stage_lib.resolve_init(config, workdir, cfg.init_from, "pairs.init_from")
    world_part = ("world",) if cfg.prompts == "toy_world" else ()
    stage_lib.guard(
        stage_dir,
        stage_lib.section(config, *world_part, "pairs"),
        {"init_from": stage_lib.fingerprint(init)},
    )
    if cfg.prompts == "toy_world":
        w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
        items = toy_prompts(w, cfg)
    else:
        items = hh_prompts(workdir, cfg)
    loaded = stage_lib.load_model(init, mesh, "pairs.init_from")
    text = stage_lib.TextSampler(loaded, mesh, batch_size=2 * cfg.shard_size)
    budget = [cfg.halt_after_shards or -1]
    t0 = time.time()
    counts: dict[str, dict[str, int]] = {}
    for split, batch in items.items():
        spec = {"init_from": init, "n_prompts": len(batch), "shard_size": cfg.shard_size,
                "helpful_pairs": cfg.helpful_pairs,
                "seed": cfg.seed, "temperature": cfg.temperature, "top_k": cfg.top_k,
                "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}  # fmt: skip
        recs = stage_lib.run_shards(
            stage_dir / split,
            batch,
            cfg.shard_size,
            lambda ps, shard, s=split: pair_shard(text, cfg, s, ps, shard),
            spec,
            budget,
            f"pairs: {split}",
        )
        if recs is None:
            raise Halted(f"stopped after {cfg.halt_after_shards} new shards")
        counts[split] = {
            task: sum(r["task"] == task for r in recs) for task in ("harmlessness", "helpfulness")
        }
        counts[split]["identical_pairs"] = sum(r["responses"][0] == r["responses"][1] for r in recs)
    update_summary(
        workdir, "pairs_stage", {"pairs": counts, "seconds_this_run": round(time.time() - t0, 1)}
    )
