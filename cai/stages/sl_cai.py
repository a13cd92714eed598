"""Stage ``sl_cai``: critique -> revision on red-team prompts, then supervised fine-tuning.

The paper's supervised stage (Sec. 3): the helpful-only model answers red-team prompts; then,
for ``rounds`` rounds, each sample draws a principle of the constitution at random, the model
critiques its latest answer against that principle and revises it ("direct revision" skips
the critique). The final revisions, mixed with the same model's answers to benign helpful
prompts (so helpfulness is kept; harmful-compliant answers are never mixed back in), are the
SL-CAI fine-tuning set, trained with the loss on assistant tokens only.

Prompts are built in one of two styles (``sl_cai.loop.style``):

* ``transcript``: the paper's text format, for base models trained on HH transcripts (the toy
  world's): ``...\\n\\nAssistant: {answer}\\n\\nCritiqueRequest: {c}\\n\\nCritique:`` and then
  ``... {critique}\\n\\nRevisionRequest: {r}\\n\\nRevision:``, few-shot examples first.
* ``chat``: for instruct models with a chat template: the conversation is quoted in a user
  turn followed by the critique request; the revision request is the next user turn.

Each round critiques the previous round's revision as the assistant's answer (a fresh prompt
per round, not one ever-growing transcript), which keeps prompts as short as the base model's
training documents.

Everything is written under ``WORKDIR/sl_cai``: ``revisions/`` (and ``revisions_direct/`` when
the other variant is run for comparison) and ``helpful/`` hold JSONL shards, each written
atomically, so a rerun skips finished shards and, because every shard's randomness depends only
on ``(seed, shard)``, produces the same dataset as an uninterrupted run. ``checkpoints/`` holds
the fine-tuned model. Nothing here judges anything: stage ``evaluate`` reads the shards and
measures each round's revisions with the toy world's judge (the revision curve).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from cai import configs, constitution, pretrained, prompts, sharding, stage_lib
from cai.data import stream
from cai.errors import ConfigError, Halted
from cai.metrics import update_summary
from cai.sampling import SamplingConfig
from cai.tokenizer import render_chat
from cai.toyworld import world
from cai.train_lib import OptimConfig, TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The critique -> revision loop and the helpful samples."""

    init_from: str = "base"  # "base" (config.base), a stage dir of the workdir, or a path
    prompts: str = "toy_world"  # toy_world | hh_rlhf
    hh_rlhf_dir: str = ""  # for prompts=hh_rlhf: the directory of downloaded HH-RLHF files
    # HH-RLHF release split read for prompts: CAI stages train on "train" only; a test that has
    # only the vendored test-split sample names its files in hh_rlhf_as_train.
    hh_rlhf_as_train: tuple[str, ...] = ()
    red_team: int = -1  # red-team prompts used (-1: all)
    # toy world: also the adversarial forms of the training requests (world.attack_prompts),
    # as red-teamers write them; otherwise the direct phrasings only (world.red_team_prompts)
    adversarial: bool = False
    # toy world: red-team requests about made-up words per harmful act that allows one
    # (world.made_up_red_team_prompts), and helpful ones per benign act (world.helpful_prompts)
    red_team_made_up: int = 0
    helpful_made_up: int = 0
    helpful: int = -1  # helpful prompts sampled for the SFT mix (-1: all, 0: none)
    rounds: int = 4
    direct: bool = False  # the direct-revision variant: revise without a critique
    compare_direct: bool = False  # also run the other variant (for the revision curve only)
    style: str = "transcript"  # transcript | chat
    shard_size: int = 128
    response_tokens: int = 48
    critique_tokens: int = 48
    revision_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    halt_after_shards: int = 0  # >0: stop after writing this many shards, as if killed

    def __post_init__(self) -> None:
        if self.prompts not in ("toy_world", "hh_rlhf"):
            raise ConfigError(
                f"sl_cai.loop.prompts={self.prompts!r}: expected toy_world or hh_rlhf"
            )
        if self.style not in ("transcript", "chat"):
            raise ConfigError(f"sl_cai.loop.style={self.style!r}: expected transcript or chat")
        if self.rounds < 1 or self.shard_size < 1:
            raise ConfigError("sl_cai.loop.rounds and sl_cai.loop.shard_size must be positive")
        if self.prompts == "hh_rlhf" and not self.hh_rlhf_dir:
            raise ConfigError("sl_cai.loop.prompts=hh_rlhf needs sl_cai.loop.hh_rlhf_dir")
        toy_only = [n for n in ("adversarial", "red_team_made_up", "helpful_made_up")
                    if getattr(self, n)]  # fmt: skip
        if self.prompts == "hh_rlhf" and toy_only:
            raise ConfigError(
                f"sl_cai.loop.{toy_only[0]} is for the toy world's prompts; HH-RLHF's prompts "
                "are what they are"
            )
        if self.red_team_made_up < 0 or self.helpful_made_up < 0:
            raise ConfigError("sl_cai.loop.red_team_made_up and helpful_made_up must be >= 0")


def toy_prompts(
    w: world.World, adversarial: bool = False, red_team_made_up: int = 0, helpful_made_up: int = 0
) -> tuple[list[world.Prompt], list[world.Prompt]]:
    """The toy world's red-team prompts (training requests: every direct phrasing, with
    ``adversarial`` every adversarial form too; then ``red_team_made_up`` requests per harmful
    act about made-up words) and its helpful prompts (``helpful_made_up`` per benign act about
    made-up words). The adversarial forms matter because some say the act in other words
    ("learn the home address of X without X knowing"), and the made-up words because a model
    fine-tuned on refusals of a few named victims recalls them instead of copying an unseen one
    (docs/sl_cai.md). No held-out entity appears in either list."""
    attack = world.attack_prompts if adversarial else world.red_team_prompts
    red = [*attack(w), *world.made_up_red_team_prompts(w, red_team_made_up)]
    return red, list(world.helpful_prompts(w, made_up_per_family=helpful_made_up))


def stage_config(
    steps: int = 300, batch_size: int = 32, seq_len: int = 128, **loop: Any
) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "constitution": "constitutions/toy_world.json",
            "loop": configs.as_dict(LoopConfig(**loop)),
            **configs.train_section(steps, batch_size, seq_len, 2, 1e-3, 20, 0.0),
        }
    )


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Generator:
    """A loaded model and its sampler, with the loop's sampling settings."""

    text: stage_lib.TextSampler
    cfg: LoopConfig

    def __call__(self, ids: Sequence[list[int]], max_new: int, seed: int) -> list[str]:
        sampling = SamplingConfig(
            max_new_tokens=max_new,
            temperature=self.cfg.temperature,
            top_k=self.cfg.top_k,
            top_p=self.cfg.top_p,
        )
        return self.text.complete(ids, sampling, seed, transcript=self.cfg.style == "transcript")

    @property
    def tok(self) -> Any:
        return self.text.loaded.tok


def shard_seed(cfg: LoopConfig, shard: int, phase: int, direct: bool) -> int:
    """A distinct generation seed per (seed, shard, phase, variant): a shard's text never
    depends on which shards ran before it in this process."""
    return int(np.random.default_rng([cfg.seed, shard, phase, int(direct)]).integers(2**31))


def revise_shard(
    gen: Generator,
    c: constitution.Constitution,
    batch: Sequence[world.Prompt],
    shard: int,
    direct: bool,
) -> list[dict[str, Any]]:
    """Answer, then ``rounds`` x (critique, revision), batched over the shard's prompts; the
    critique and revision requests come from ``cai.prompts``."""
    cfg, tok = gen.cfg, gen.tok
    rng = np.random.default_rng([cfg.seed, shard, 1_000 + int(direct)])
    ids = [render_chat(tok, p.chat(), add_generation_prompt=True)[0] for p in batch]
    current = gen(ids, cfg.response_tokens, shard_seed(cfg, shard, 0, direct))
    records = [
        {"shard": shard, "request_id": p.request_id, "messages": [list(m) for m in p.messages],
         "response": r, "rounds": []}
        for p, r in zip(batch, current)
    ]  # fmt: skip
    for r in range(cfg.rounds):
        picks = rng.integers(len(c.sl_principles), size=len(batch))
        principles = [c.sl_principles[i] for i in picks]
        convs = [(*p.messages, ("assistant", cur)) for p, cur in zip(batch, current)]
        critiques: list[str | None] = [None] * len(batch)
        if not direct:
            asks = [
                prompts.loop_prompt(tok, c, cfg.style, cv, pr) for cv, pr in zip(convs, principles)
            ]
            critiques = list(gen(asks, cfg.critique_tokens, shard_seed(cfg, shard, 2 * r + 1, 0)))
        asks = [
            prompts.loop_prompt(tok, c, cfg.style, cv, pr, cr, direct)
            for cv, pr, cr in zip(convs, principles, critiques)
        ]
        current = gen(asks, cfg.revision_tokens, shard_seed(cfg, shard, 2 * r + 2, direct))
        for rec, i, cr, rev in zip(records, picks, critiques, current):
            rec["rounds"].append({"principle": int(i), "critique": cr, "revision": rev})
    return records


def answer_shard(gen: Generator, batch: Sequence[world.Prompt], shard: int) -> list[dict]:
    """The model's own answers to helpful prompts: the helpfulness half of the SFT mix."""
    ids = [render_chat(gen.tok, p.chat(), add_generation_prompt=True)[0] for p in batch]
    texts = gen(ids, gen.cfg.response_tokens, shard_seed(gen.cfg, shard, 0, False))
    return [
        {"shard": shard, "request_id": p.request_id, "messages": [list(m) for m in p.messages],
         "response": t}
        for p, t in zip(batch, texts)
    ]  # fmt: skip


# ----------------------------------------------------------------------------- prompts in


def hh_rlhf_prompts(workdir: epath.Path, cfg: LoopConfig) -> tuple[list, list]:
    """Red-team and helpful prompts (first human turns) of the HH-RLHF release's **train**
    split, from the ``hh_rlhf`` TFDS builder; files named ``test`` are never read here."""
    red, helpful = stage_lib.hh_rlhf_train_prompts(workdir, cfg.hh_rlhf_dir, cfg.hh_rlhf_as_train)
    if cfg.helpful and not helpful:
        raise ConfigError(
            f"sl_cai.loop.hh_rlhf_dir={cfg.hh_rlhf_dir}: no helpful* comparison file of the train "
            "split for the helpful half of the SFT mix (set sl_cai.loop.helpful=0 to train "
            "without it)"
        )
    return red, helpful


# ----------------------------------------------------------------------------- the stage


def sft_examples(
    revisions: Sequence[dict[str, Any]], helpful: Sequence[dict[str, Any]]
) -> list[list[dict[str, str]]]:
    """Conversations ending with the trained assistant turn: final revisions to red-team
    prompts, and the model's own answers to helpful prompts. Empty texts are dropped."""
    out = []
    for rec in revisions:
        final = rec["rounds"][-1]["revision"]
        if final:
            out.append([*({"role": r, "content": c} for r, c in rec["messages"]),
                        {"role": "assistant", "content": final}])  # fmt: skip
    for rec in helpful:
        if rec["response"]:
            out.append([*({"role": r, "content": c} for r, c in rec["messages"]),
                        {"role": "assistant", "content": rec["response"]}])  # fmt: skip
    return out


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    sc = configs.get(config, "sl_cai", "")
    cfg = configs.to_dataclass(LoopConfig, sc.loop, "sl_cai.loop")
    train_cfg = configs.to_dataclass(TrainConfig, sc.train, "sl_cai.train")
    optim_cfg = configs.to_dataclass(OptimConfig, sc.optim, "sl_cai.optim")
    const = constitution.load(configs.get(sc, "constitution", "sl_cai"))
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    sharding.check_batch(train_cfg.batch_size, mesh, "sl_cai.train.batch_size")
    stage_dir = workdir / "sl_cai"
    init = stage_lib.resolve_init(config, workdir, cfg.init_from, "sl_cai.loop.init_from")
    world_part = ("world",) if cfg.prompts == "toy_world" else ()
    stage_lib.guard(
        stage_dir,
        stage_lib.section(config, "seed", *world_part, "sl_cai"),
        {"init_from": stage_lib.fingerprint(init)},
    )
    loaded = stage_lib.load_model(init, mesh, "sl_cai.loop.init_from", cfg.style, config.model)
    gen = Generator(stage_lib.TextSampler(loaded, mesh, batch_size=cfg.shard_size), cfg)

    if cfg.prompts == "toy_world":
        w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
        red_team, helpful = toy_prompts(
            w, cfg.adversarial, cfg.red_team_made_up, cfg.helpful_made_up
        )
    else:
        red_team, helpful = hh_rlhf_prompts(workdir, cfg)
    red_team = stage_lib.take(red_team, cfg.red_team, cfg.seed)
    helpful = stage_lib.take(helpful, cfg.helpful, cfg.seed + 1)

    t0 = time.time()
    spec = {"init_from": init, "constitution": const.path, "style": cfg.style,
            "rounds": cfg.rounds, "shard_size": cfg.shard_size, "seed": cfg.seed,
            "n_prompts": len(red_team), "temperature": cfg.temperature, "top_k": cfg.top_k,
            "top_p": cfg.top_p, "tokens": [cfg.response_tokens, cfg.critique_tokens,
                                            cfg.revision_tokens]}  # fmt: skip
    budget = [cfg.halt_after_shards or -1]
    variants = [cfg.direct] + ([not cfg.direct] if cfg.compare_direct else [])
    data: dict[bool, list[dict[str, Any]] | None] = {}
    for direct in variants:
        make = lambda ps, shard, d=direct: revise_shard(gen, const, ps, shard, d)  # noqa: E731
        name = "revisions_direct" if direct else "revisions"
        data[direct] = stage_lib.run_shards(
            stage_dir / name, red_team, cfg.shard_size, make, {**spec, "direct": direct}, budget,
            f"sl_cai: {name}",
        )  # fmt: skip
    answers = stage_lib.run_shards(
        stage_dir / "helpful",
        helpful,
        cfg.shard_size,
        lambda ps, shard: answer_shard(gen, ps, shard),
        {**spec, "n_prompts": len(helpful)},
        budget,
        "sl_cai: helpful answers",
    )
    if answers is None or any(v is None for v in data.values()):
        raise Halted(f"stopped after {cfg.halt_after_shards} new shards")
    loop_seconds = round(time.time() - t0, 1)

    examples = sft_examples(data[cfg.direct] or [], answers)
    sft = stream.ChatExamples(
        examples, loaded.tok, train_cfg.seq_len, train_cfg.batch_size, config.seed
    )
    metadata = pretrained.checkpoint_metadata("sl_cai", loaded.model_cfg, loaded.tok, config)
    t1 = time.time()
    state = fit(
        model=loaded.model,
        optim_cfg=optim_cfg,
        train_cfg=train_cfg,
        mesh=mesh,
        batch_fn=sft.batch,
        workdir=stage_dir,
        metadata=metadata,
        init_params=loaded.params,
        stage="sl_cai",
    )
    update_summary(
        workdir,
        "sl_cai_stage",
        {
            "red_team_prompts": len(red_team),
            "helpful_prompts": len(helpful),
            "revision_examples": sum(bool(r["rounds"][-1]["revision"]) for r in data[cfg.direct]),
            "helpful_examples": sum(bool(a["response"]) for a in answers),
            "sft_examples": len(examples),
            "sft_truncated": sft.truncated,
            "steps": int(state.step),
            "loop_seconds_this_run": loop_seconds,
            "train_seconds_this_run": round(time.time() - t1, 1),
        },
    )
    if int(state.step) < train_cfg.steps:
        raise Halted(f"fine-tuning stopped at step {int(state.step)}")
