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

All responses are sampled in one batch at ``temperature``; each shard's randomness depends
only on ``(seed, split, shard)``, so a killed run resumes to the same bytes. Records, one per
prompt, in ``WORKDIR/pairs/<split>/shard-*.jsonl``::

    {"split", "shard", "request_id", "slice", "task", "messages": [[role, text], ...],
     "responses": [a, b]}

A training helpfulness record holds ``helpful_samples`` responses instead of two: the
crowdworker of stage ``human_feedback`` ranks them, and every two make a comparison. A held-out
one holds ``eval_helpful_samples``, and ``evaluate`` measures the PMs on every two of them.

``helpful_refused`` (beyond the paper) adds, to that share of the training helpfulness records,
one more reply: the policy's completion of ``refusal_prefix`` ("I can't help with that"), a
refusal of a benign request. The crowdworker ranks it below every answer that gives steps.

``helpful_swapped`` (beyond the paper) adds, to that share of the training helpfulness records,
one more reply spliced from the record's first reply and the policy's first reply to another
prompt of the same shard, one asking for the same act about another object where the shard has
one ("clean the dresser" beside "clean the wardrobe"): the first ``k`` sentences of its own
reply, then the other's from sentence ``k`` on, ``k`` drawn uniformly below the shorter one's
sentence count (``k = 0``: wholly the other's answer). Such a pair differs only in which object
some steps are about, so it can only be ranked by checking the answer against the request,
which is what ranking answers about held-out objects takes (``swapped_replies``).

``red_team_second`` (beyond the paper) names another model ("base": the helpful-only one)
whose sample is the second reply of every **training** harmlessness pair, the first staying
the policy's: HH-RLHF's red-team comparisons were between replies of different models. On the
toy world the SL-CAI model refuses so reliably (2% harmful) that two of its samples differ in
harm on 123 of 1,406 training pairs, too few for the PM to learn harm from (docs/rl_cai.md).
Held-out pairs stay two samples of the policy.

``red_team_deflected`` (beyond the paper) adds, for that share of the training harmlessness
prompts, one more record of the same prompt: the policy's first reply against a deflection,
the policy's first reply to a helpfulness prompt of the same shard (another request's steps,
harmless and no answer), in a random order. The feedback model labels it like any other pair
(``deflected_records``).
"""

from __future__ import annotations

import dataclasses
import re
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
    # Replies per training helpfulness prompt, all in one record: the simulated crowdworker
    # ranks them and every two of them make a comparison (InstructGPT's K-way ranking, arXiv
    # 2203.02155). Most two samples are equally good; k of them hold k(k-1)/2 pairs, and the
    # few bad samples then each give k - 1 comparisons.
    helpful_samples: int = 2
    # Helpful prompts about made-up objects per benign act ("bake a zukova"), added to the
    # helpful pool: comparisons a judge can only get right by checking that the answer copies
    # the object asked about, as on held-out objects (world.helpful_prompts).
    helpful_made_up: int = 0
    # Beyond the paper: the share of training helpfulness prompts that also get one reply
    # begun with ``refusal_prefix`` and completed by the policy, a refusal of a benign request
    # that the crowdworker ranks below any answer. No sample of a model that answers benign
    # requests shows the PM such a refusal, and PPO against a PM that never saw one learned to
    # refuse "kill the ants" and "shoot a photo of the sunset" (docs/rl_cai.md).
    helpful_refused: float = 0.0
    refusal_prefix: str = "I can't help with that"
    # Beyond the paper: the share of training helpfulness prompts that also get a reply that
    # turns, after k of its sentences, into the policy's reply to another prompt (one for the
    # same act about another object where the shard has one). The PM's errors on held-out
    # objects were answers about the wrong object in some step (0.78 dev accuracy on those
    # against 0.94 on its training pairs); a pair that differs only there teaches checking
    # each step's object against the request instead of recalling familiar objects.
    helpful_swapped: float = 0.0
    # Beyond the paper: the share of training harmlessness prompts that also get a record
    # comparing the policy's reply with a deflection (the policy's reply to a helpfulness
    # prompt of the same shard). SL-CAI never deflects, so no comparison showed the PM one: it
    # ranked an explained refusal above a deflection on 0.42 of its probe, and PPO run longer
    # answered more harmful requests with a benign task's steps. With these pairs (dev, 0.25)
    # PPO stopped deflecting but refused more benign requests: off in the main job
    # (docs/rl_cai.md).
    red_team_deflected: float = 0.0
    # Another model for the second reply of each training harmlessness pair ("": the policy's
    # own second sample, as in the paper; "base", a stage dir or a path)
    red_team_second: str = ""
    eval_splits: tuple[str, ...] = ("dev", "test")  # toy world only
    eval_phrasings: int = 4  # phrasings per held-out request (-1: every one)
    # Replies per held-out helpfulness prompt (every two a pair the PM is measured on): two
    # samples of a policy that is right 0.9 of the time differ in correctness on one pair in
    # five, so two replies leave the PM's helpfulness accuracy on a few dozen pairs.
    eval_helpful_samples: int = 2
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
        for name in ("helpful_refused", "helpful_swapped", "red_team_deflected"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"pairs.{name}={getattr(self, name)}: expected a share in [0, 1]")
        if self.helpful_refused and not self.refusal_prefix.strip():
            raise ConfigError("pairs.helpful_refused needs a non-empty pairs.refusal_prefix")
        for name in ("helpful_samples", "eval_helpful_samples"):
            if getattr(self, name) < 2:
                raise ConfigError(f"pairs.{name}={getattr(self, name)}: must be at least 2")
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
    red = list(world.attack_prompts(w))
    red = [
        dataclasses.replace(p, slice="red_team")
        for p in stage_lib.take(red, cfg.red_team, cfg.seed)
    ]
    pool = world.helpful_prompts(w, made_up_per_family=cfg.helpful_made_up)
    helpful = stage_lib.take(list(pool), cfg.helpful, cfg.seed + 1)
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
    red, helpful = stage_lib.hh_rlhf_train_prompts(workdir, cfg.hh_rlhf_dir, cfg.hh_rlhf_as_train)
    red_p = stage_lib.take(red, cfg.red_team, cfg.seed)
    help_p = stage_lib.take(helpful, cfg.helpful, cfg.seed + 1)
    return {"train": [(p, "harmlessness") for p in red_p] + [(p, "helpfulness") for p in help_p]}


def shard_seed(cfg: PairsConfig, split: str, shard: int) -> int:
    """A seed per (seed, split, shard): a shard's samples never depend on earlier shards."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), shard])
    return int(rng.integers(2**31))


def sentences(text: str) -> list[str]:
    """``text`` cut after each ``.``, ``!`` or ``?`` that whitespace follows."""
    return re.split(r"(?<=[.!?])\s+", text.strip())


def swapped_replies(
    batch: Sequence[tuple[world.Prompt, str]],
    responses: Sequence[Sequence[str]],
    share: float,
    rng: np.random.Generator,
) -> dict[int, str]:
    """Record index -> a reply that turns into one written for another prompt, for a
    ``share`` of the helpfulness records of ``batch``. The other reply is the first reply of
    another helpfulness prompt asking for the same act (the ``act/object`` request id's first
    part) about another object, or of any prompt with another request where no such prompt
    is in ``batch``; the result is the record's first reply's first ``k`` sentences, then the
    other's from sentence ``k`` on, ``k ~ U{0, ..., min(n_own, n_other) - 1}``. Reads only
    the prompts and the policy's replies, no judge."""
    helpful = [i for i, (_, t) in enumerate(batch) if t == "helpfulness" and responses[i]]
    by_act: dict[str, list[int]] = {}
    for i in helpful:
        by_act.setdefault(batch[i][0].request_id.split("/", 1)[0], []).append(i)
    out: dict[int, str] = {}
    for i in helpful:
        if rng.random() >= share:
            continue
        rid = batch[i][0].request_id
        same = [j for j in by_act[rid.split("/", 1)[0]] if batch[j][0].request_id != rid]
        pool = same or [j for j in helpful if batch[j][0].request_id != rid]
        if pool:
            own = sentences(responses[i][0])
            other = sentences(responses[int(pool[rng.integers(len(pool))])][0])
            k = int(rng.integers(min(len(own), len(other))))
            out[i] = " ".join(own[:k] + other[k:])
    return out


def deflected_records(
    batch: Sequence[tuple[world.Prompt, str]],
    responses: Sequence[Sequence[str]],
    share: float,
    rng: np.random.Generator,
) -> list[tuple[int, list[str]]]:
    """(record index, [reply, reply]) for a ``share`` of the harmlessness records of ``batch``:
    the record's first reply and a deflection, the first reply of a helpfulness prompt of
    ``batch`` drawn uniformly, in a random order. Nothing where ``batch`` holds no answered
    helpfulness prompt. Reads only the prompts and the policy's replies, no judge."""
    helpful = [i for i, (_, t) in enumerate(batch) if t == "helpfulness" and responses[i]]
    out: list[tuple[int, list[str]]] = []
    if not helpful:
        return out
    for i, (_, task) in enumerate(batch):
        if task != "harmlessness" or not responses[i] or rng.random() >= share:
            continue
        pair = [responses[i][0], responses[helpful[int(rng.integers(len(helpful)))]][0]]
        out.append((i, pair if rng.random() < 0.5 else pair[::-1]))
    return out


def pair_shard(
    text: stage_lib.TextSampler,
    cfg: PairsConfig,
    split: str,
    batch: Sequence[tuple[world.Prompt, str]],
    shard: int,
    second: stage_lib.TextSampler | None = None,
) -> list[dict[str, Any]]:
    """Two samples per prompt (``helpful_samples`` per training helpfulness prompt and
    ``eval_helpful_samples`` per held-out one), all in
    one generation call: sample round ``r`` is every prompt that still needs an ``r``-th.
    With ``second``, each training harmlessness prompt's second reply is ``second``'s."""
    tok = text.loaded.tok
    helpful_k = cfg.helpful_samples if split == "train" else cfg.eval_helpful_samples
    k = [helpful_k if t == "helpfulness" else 2 for _, t in batch]
    other = [second is not None and split == "train" and t == "harmlessness" for _, t in batch]
    k = [n - 1 if o else n for n, o in zip(k, other)]
    rows = [i for r in range(max(k)) for i, n in enumerate(k) if n > r]
    prompt_ids = [render_chat(tok, p.chat(), add_generation_prompt=True)[0] for p, _ in batch]
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
    )
    replies = text.complete(
        [prompt_ids[i] for i in rows],
        sampling,
        shard_seed(cfg, split, shard),
        transcript=tok.chat_format == "hh",
    )
    responses: list[list[str]] = [[] for _ in batch]
    for i, reply in zip(rows, replies):
        responses[i].append(reply)
    if second is not None and any(other):
        idx = [i for i, o in enumerate(other) if o]
        stok = second.loaded.tok
        ids = [render_chat(stok, batch[i][0].chat(), add_generation_prompt=True)[0] for i in idx]
        seed = shard_seed(cfg, split, shard) + 1
        for i, reply in zip(
            idx, second.complete(ids, sampling, seed, transcript=stok.chat_format == "hh")
        ):
            responses[i].append(reply)
    if split == "train" and cfg.helpful_refused:
        pick = np.random.default_rng([shard_seed(cfg, split, shard), 1])
        idx = [i for i, (_, t) in enumerate(batch)
               if t == "helpfulness" and pick.random() < cfg.helpful_refused]  # fmt: skip
        prefix = tok.encode(cfg.refusal_prefix, start=False)
        rest = text.complete(
            [prompt_ids[i] + prefix for i in idx],
            sampling,
            shard_seed(cfg, split, shard) + 2,
            transcript=tok.chat_format == "hh",
        )
        for i, r in zip(idx, rest):
            glue = "" if not r or r[0] in ".,:;!?" else " "
            responses[i].append(cfg.refusal_prefix + glue + r)
    if split == "train" and cfg.helpful_swapped:
        pick = np.random.default_rng([shard_seed(cfg, split, shard), 3])
        for i, reply in swapped_replies(batch, responses, cfg.helpful_swapped, pick).items():
            responses[i].append(reply)
    recs = [
        {"split": split, "shard": shard, "request_id": p.request_id, "slice": p.slice,
         "task": task, "messages": [list(m) for m in p.messages], "responses": responses[i]}
        for i, (p, task) in enumerate(batch)
    ]  # fmt: skip
    if split == "train" and cfg.red_team_deflected:
        pick = np.random.default_rng([shard_seed(cfg, split, shard), 4])
        for i, pair in deflected_records(batch, responses, cfg.red_team_deflected, pick):
            recs.append({**recs[i], "responses": pair, "deflection": True})
    return recs


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    cfg = configs.to_dataclass(PairsConfig, configs.get(config, "pairs", ""), "pairs")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    stage_dir = workdir / "pairs"
    init = stage_lib.resolve_init(config, workdir, cfg.init_from, "pairs.init_from")
    world_part = ("world",) if cfg.prompts == "toy_world" else ()
    inputs = {"init_from": stage_lib.fingerprint(init)}
    second_path = ""
    if cfg.red_team_second:
        second_path = stage_lib.resolve_init(
            config, workdir, cfg.red_team_second, "pairs.red_team_second"
        )
        inputs["red_team_second"] = stage_lib.fingerprint(second_path)
    stage_lib.guard(stage_dir, stage_lib.section(config, *world_part, "pairs"), inputs)
    if cfg.prompts == "toy_world":
        w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
        items = toy_prompts(w, cfg)
    else:
        items = hh_prompts(workdir, cfg)
    loaded = stage_lib.load_model(init, mesh, "pairs.init_from")
    text = stage_lib.TextSampler(loaded, mesh, batch_size=2 * cfg.shard_size)
    second = None
    if second_path:
        second_loaded = stage_lib.load_model(second_path, mesh, "pairs.red_team_second")
        second = stage_lib.TextSampler(second_loaded, mesh, batch_size=2 * cfg.shard_size)
    budget = [cfg.halt_after_shards or -1]
    t0 = time.time()
    counts: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}  # per split: train makes the RL data, dev/test measure it
    for split, batch in items.items():
        t_split = time.time()
        spec = {"init_from": init, "n_prompts": len(batch), "shard_size": cfg.shard_size,
                "helpful_samples": cfg.helpful_samples,
                "eval_helpful_samples": cfg.eval_helpful_samples,
                "helpful_refused": cfg.helpful_refused, "refusal_prefix": cfg.refusal_prefix,
                "helpful_swapped": cfg.helpful_swapped,
                "red_team_deflected": cfg.red_team_deflected,
                "red_team_second": second_path,
                "seed": cfg.seed, "temperature": cfg.temperature, "top_k": cfg.top_k,
                "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}  # fmt: skip
        recs = stage_lib.run_shards(
            stage_dir / split,
            batch,
            cfg.shard_size,
            lambda ps, shard, s=split: pair_shard(text, cfg, s, ps, shard, second),
            spec,
            budget,
            f"pairs: {split}",
        )
        if recs is None:
            raise Halted(f"stopped after {cfg.halt_after_shards} new shards")
        counts[split] = {
            task: sum(r["task"] == task for r in recs) for task in ("harmlessness", "helpfulness")
        }
        counts[split]["identical_pairs"] = sum(len(set(r["responses"])) == 1 for r in recs)
        seconds[split] = round(time.time() - t_split, 1)
    update_summary(
        workdir,
        "pairs_stage",
        {"pairs": counts, "seconds_this_run": round(time.time() - t0, 1),
         "split_seconds_this_run": seconds},
    )  # fmt: skip
