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
the fine-tuned model. On the toy world the judge scores each round's revisions (measurement
only: nothing it says reaches the data) for the revision curves in ``summary.json["sl_cai_stage"]``
and ``WORKDIR/plots/revisions.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from cai import configs, constitution, pretrained, sharding
from cai.data import stream
from cai.errors import ConfigError, Halted
from cai.evaluation import complete
from cai.metrics import update_summary
from cai.model import Transformer
from cai.sampling import Sampler, SamplingConfig
from cai.tokenizer import Tokenizer, chat_stop_id, hh_request, hh_transcript, render_chat
from cai.toyworld import world
from cai.toyworld.judge import judge
from cai.train_lib import OptimConfig, TrainConfig, fit

Messages = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The critique -> revision loop and the helpful samples."""

    init_from: str = "pretrain"  # stage dir under the workdir, or a checkpoint/HF/GGUF path
    prompts: str = "toy_world"  # toy_world | hh_rlhf
    hh_rlhf_dir: str = ""  # for prompts=hh_rlhf: the directory of downloaded HH-RLHF files
    red_team: int = -1  # red-team prompts used (-1: all)
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


# ----------------------------------------------------------------------------- prompts


def few_shot_text(c: constitution.Constitution, direct: bool) -> str:
    """The constitution's revision examples as transcript blocks (critiques left out when
    ``direct``)."""
    out = []
    for ex in c.revision_examples:
        text = hh_transcript(ex.conversation)
        if not direct:
            text += hh_request("Critique", ex.critique_request, ex.critique)
        out.append(text + hh_request("Revision", ex.revision_request, ex.revision))
    return "".join(out)


def _quote(conversation: Messages, request: str) -> str:
    return (
        "Here is a conversation between a human and an AI assistant:\n"
        f"{hh_transcript(conversation)}\n\n{request}"
    )


def chat_messages(
    c: constitution.Constitution,
    conversation: Messages,
    principle: constitution.SLPrinciple,
    critique: str | None,
    direct: bool,
) -> list[dict[str, str]]:
    """Chat style: few-shot examples as earlier turns, then the quoted conversation with the
    critique request (or, when ``direct``, the revision request)."""
    msgs: list[dict[str, str]] = []
    for ex in c.revision_examples:
        if direct:
            msgs += [{"role": "user", "content": _quote(ex.conversation, ex.revision_request)}]
        else:
            msgs += [
                {"role": "user", "content": _quote(ex.conversation, ex.critique_request)},
                {"role": "assistant", "content": ex.critique},
                {"role": "user", "content": ex.revision_request},
            ]
        msgs.append({"role": "assistant", "content": ex.revision})
    if direct:
        return msgs + [{"role": "user", "content": _quote(conversation, principle.revision)}]
    msgs.append({"role": "user", "content": _quote(conversation, principle.critique)})
    if critique is not None:
        msgs += [
            {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision},
        ]
    return msgs


def critique_text(conversation: Messages, principle: constitution.SLPrinciple) -> str:
    return hh_transcript(conversation) + hh_request("Critique", principle.critique)


def loop_prompt(
    tok: Tokenizer,
    c: constitution.Constitution,
    style: str,
    conversation: Messages,
    principle: constitution.SLPrinciple,
    critique: str | None = None,
    direct: bool = False,
) -> list[int]:
    """Token ids asking for a critique (``critique is None and not direct``) or a revision."""
    if style == "chat":
        msgs = chat_messages(c, conversation, principle, critique, direct)
        return render_chat(tok, msgs, add_generation_prompt=True)[0]
    text = few_shot_text(c, direct)
    if direct:
        text += hh_transcript(conversation) + hh_request("Revision", principle.revision)
    else:
        text += critique_text(conversation, principle)
        if critique is not None:
            text += f" {critique}" + hh_request("Revision", principle.revision)
    return ([tok.bos_id] if tok.add_bos else []) + tok.encode(text)


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Generator:
    """A model, its tokenizer and a sampler: what the loop needs to write text."""

    sampler: Sampler
    params: Any
    tok: Tokenizer
    cfg: LoopConfig

    def __call__(self, prompts: Sequence[list[int]], max_new: int, seed: int) -> list[str]:
        sampling = SamplingConfig(
            max_new_tokens=max_new,
            temperature=self.cfg.temperature,
            top_k=self.cfg.top_k,
            top_p=self.cfg.top_p,
        )
        # A transcript reply ends where the next block would start; a chat turn ends at its
        # stop token and may hold blank lines of its own.
        transcript = self.cfg.style == "transcript"
        return complete(self.sampler, self.params, self.tok, prompts, sampling, seed, transcript)


def shard_seed(cfg: LoopConfig, shard: int, phase: int, direct: bool) -> int:
    """A distinct generation seed per (seed, shard, phase, variant): a shard's text never
    depends on which shards ran before it in this process."""
    return int(np.random.default_rng([cfg.seed, shard, phase, int(direct)]).integers(2**31))


def revise_shard(
    gen: Generator,
    c: constitution.Constitution,
    prompts: Sequence[world.Prompt],
    shard: int,
    direct: bool,
) -> list[dict[str, Any]]:
    """Answer, then ``rounds`` x (critique, revision), batched over the shard's prompts."""
    cfg, tok = gen.cfg, gen.tok
    rng = np.random.default_rng([cfg.seed, shard, 1_000 + int(direct)])
    ids = [render_chat(tok, p.chat(), add_generation_prompt=True)[0] for p in prompts]
    current = gen(ids, cfg.response_tokens, shard_seed(cfg, shard, 0, direct))
    records = [
        {"shard": shard, "request_id": p.request_id, "messages": [list(m) for m in p.messages],
         "response": r, "rounds": []}
        for p, r in zip(prompts, current)
    ]  # fmt: skip
    for r in range(cfg.rounds):
        picks = rng.integers(len(c.sl_principles), size=len(prompts))
        principles = [c.sl_principles[i] for i in picks]
        convs = [(*p.messages, ("assistant", cur)) for p, cur in zip(prompts, current)]
        critiques: list[str | None] = [None] * len(prompts)
        if not direct:
            asks = [loop_prompt(tok, c, cfg.style, cv, pr) for cv, pr in zip(convs, principles)]
            critiques = list(gen(asks, cfg.critique_tokens, shard_seed(cfg, shard, 2 * r + 1, 0)))
        asks = [
            loop_prompt(tok, c, cfg.style, cv, pr, cr, direct)
            for cv, pr, cr in zip(convs, principles, critiques)
        ]
        current = gen(asks, cfg.revision_tokens, shard_seed(cfg, shard, 2 * r + 2, direct))
        for rec, i, cr, rev in zip(records, picks, critiques, current):
            rec["rounds"].append({"principle": int(i), "critique": cr, "revision": rev})
    return records


def answer_shard(gen: Generator, prompts: Sequence[world.Prompt], shard: int) -> list[dict]:
    """The model's own answers to helpful prompts: the helpfulness half of the SFT mix."""
    ids = [render_chat(gen.tok, p.chat(), add_generation_prompt=True)[0] for p in prompts]
    texts = gen(ids, gen.cfg.response_tokens, shard_seed(gen.cfg, shard, 0, False))
    return [
        {"shard": shard, "request_id": p.request_id, "messages": [list(m) for m in p.messages],
         "response": t}
        for p, t in zip(prompts, texts)
    ]  # fmt: skip


def write_jsonl(path: epath.Path, records: Sequence[dict[str, Any]]) -> None:
    """Write-then-rename: a killed run leaves either the whole shard or none of it."""
    tmp = path.parent / f".{path.name}.tmp"
    with tmp.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def read_jsonl(path: epath.Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def check_spec(directory: epath.Path, spec: dict[str, Any]) -> None:
    """Shards from another configuration must not be mixed in: fail naming the difference."""
    path = directory / "spec.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        if diff:
            raise ConfigError(
                f"{directory} holds shards made with another {diff[0]} ({old.get(diff[0])!r}, "
                f"now {spec.get(diff[0])!r}); use another workdir or delete {directory}"
            )
    else:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, sort_keys=True))


def run_shards(
    directory: epath.Path,
    prompts: Sequence[world.Prompt],
    size: int,
    make: Any,
    spec: dict[str, Any],
    budget: list[int],
) -> list[dict[str, Any]] | None:
    """Run ``make(prompts, shard)`` for every shard not on disk yet; all records in order, or
    None when ``budget`` (shards left before a simulated kill) ran out first."""
    check_spec(directory, spec)
    n = -(-len(prompts) // size)
    out: list[dict[str, Any]] = []
    for shard in range(n):
        path = directory / f"shard-{shard:05d}-of-{n:05d}.jsonl"
        if not path.exists():
            if budget[0] == 0:
                return None
            t0 = time.time()
            write_jsonl(path, make(prompts[shard * size : (shard + 1) * size], shard))
            budget[0] -= 1
            logging.info("sl_cai: wrote %s (%.1fs)", path, time.time() - t0)
        out += read_jsonl(path)
    return out


# ----------------------------------------------------------------------------- prompts in


def take(prompts: Sequence[world.Prompt], n: int, seed: int) -> list[world.Prompt]:
    """``n`` prompts (all for -1) in a seeded order, so shards mix requests."""
    order = np.random.default_rng(seed).permutation(len(prompts))
    chosen = [prompts[i] for i in order]
    return chosen if n < 0 else chosen[:n]


def hh_rlhf_prompts(workdir: epath.Path, cfg: LoopConfig) -> tuple[list, list]:
    """Red-team prompts (first human turns of red-team files) and helpful prompts (first human
    turns of the ``helpful*`` comparison files) from the ``hh_rlhf`` TFDS builder."""
    from cai.data.hh_rlhf import hh_rlhf

    data = str(workdir / "data")
    red = hh_rlhf.builder(data, "red_team", cfg.hh_rlhf_dir).as_data_source()
    red_team = [
        world.Prompt((("user", ex["prompt"].decode()),), "", "red_team")
        for split in sorted(red)
        for ex in red[split]
    ]
    helpful = []
    if cfg.helpful:
        comp = hh_rlhf.builder(data, "comparisons", cfg.hh_rlhf_dir).as_data_source()
        for split in sorted(s for s in comp if s.startswith("helpful")):
            for i, ex in enumerate(comp[split]):
                first = hh_rlhf.first_human_turn(ex["prompt"].decode(), f"{split}[{i}]")
                helpful.append(world.Prompt((("user", first),), "", "helpful"))
        if not helpful:
            raise ConfigError(
                f"sl_cai.loop.hh_rlhf_dir={cfg.hh_rlhf_dir}: no helpful* comparison file for "
                "the helpful half of the SFT mix (set sl_cai.loop.helpful=0 to train without it)"
            )
    if not red_team:
        raise ConfigError(f"sl_cai.loop.hh_rlhf_dir={cfg.hh_rlhf_dir}: no red-team prompts")
    return red_team, helpful


# ----------------------------------------------------------------------------- measurement


def revision_curve(w: world.World, records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Judge's harmless and explained-refusal rates of the answer (round 0) and of each
    round's revision, over the toy-world red-team records."""
    n_rounds = len(records[0]["rounds"])
    harmless, explained = [], []
    for r in range(n_rounds + 1):
        verdicts = [
            judge(
                w.by_id(rec["request_id"]),
                rec["rounds"][r - 1]["revision"] if r else rec["response"],
            )
            for rec in records
        ]
        harmless.append(float(np.mean([not v.harmful for v in verdicts])))
        explained.append(float(np.mean([v.refused and v.explained for v in verdicts])))
    return {"harmless_rate": harmless, "explained_refusal_rate": explained}


def plot_curves(curves: dict[str, dict[str, list[float]]], path: epath.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        ys = curve["harmless_rate"]
        ax.plot(range(len(ys)), ys, marker="o", label=f"{name} revision")
    ax.set_xlabel("revision round (0 = first answer)")
    ax.set_ylabel("harmless rate (judge)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(range(len(ys)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)


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


def resolve_init(workdir: epath.Path, init_from: str) -> str:
    local = workdir / init_from
    if local.exists():
        return os.fspath(local)
    if os.path.exists(init_from):
        return init_from
    raise ConfigError(
        f"sl_cai.loop.init_from={init_from!r}: neither {local} nor {init_from} exists "
        "(run the pretrain stage first, or name a checkpoint)"
    )


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    sc = configs.get(config, "sl_cai", "")
    cfg = configs.to_dataclass(LoopConfig, sc.loop, "sl_cai.loop")
    train_cfg = configs.to_dataclass(TrainConfig, sc.train, "sl_cai.train")
    optim_cfg = configs.to_dataclass(OptimConfig, sc.optim, "sl_cai.optim")
    const = constitution.load(configs.get(sc, "constitution", "sl_cai"))
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    sharding.check_batch(train_cfg.batch_size, mesh, "sl_cai.train.batch_size")
    stage_dir = workdir / "sl_cai"
    init = resolve_init(workdir, cfg.init_from)
    # How the model runs (dtype, remat) comes from config.model; its shapes from the checkpoint.
    runtime = {f: config.model[f] for f in pretrained.RUNTIME_FIELDS if f in config.model}
    model_cfg, params, tok = pretrained.load(init, mesh, **runtime)
    if tok is None:
        raise ConfigError(f"sl_cai.loop.init_from={init}: no tokenizer found with the model")
    stop = tok.eos_id if cfg.style == "transcript" else chat_stop_id(tok)
    model = Transformer(model_cfg)
    gen = Generator(Sampler(model, mesh, eos_id=stop, pad_id=tok.pad_id), params, tok, cfg)

    w = None
    if cfg.prompts == "toy_world":
        w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
        red_team, helpful = list(world.red_team_prompts(w)), list(world.helpful_prompts(w))
    else:
        red_team, helpful = hh_rlhf_prompts(workdir, cfg)
    red_team = take(red_team, cfg.red_team, cfg.seed)
    helpful = take(helpful, cfg.helpful, cfg.seed + 1)

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
        data[direct] = run_shards(
            stage_dir / name, red_team, cfg.shard_size, make, {**spec, "direct": direct}, budget
        )
    answers = run_shards(
        stage_dir / "helpful",
        helpful,
        cfg.shard_size,
        lambda ps, shard: answer_shard(gen, ps, shard),
        {**spec, "n_prompts": len(helpful)},
        budget,
    )
    if answers is None or any(v is None for v in data.values()):
        raise Halted(f"stopped after {cfg.halt_after_shards} new shards")
    loop_seconds = round(time.time() - t0, 1)

    summary: dict[str, Any] = {"red_team_prompts": len(red_team), "helpful_prompts": len(helpful)}
    if w is not None:
        curves = {
            ("direct" if d else "critique"): revision_curve(w, recs) for d, recs in data.items()
        }
        summary["revision_curves"] = curves
        plot_curves(curves, workdir / "plots" / "revisions.png")
        for name, curve in curves.items():
            logging.info("sl_cai: %s revision harmless rate by round %s", name,
                         " ".join(f"{x:.2f}" for x in curve["harmless_rate"]))  # fmt: skip

    examples = sft_examples(data[cfg.direct] or [], answers)
    sft = stream.ChatExamples(examples, tok, train_cfg.seq_len, train_cfg.batch_size, config.seed)
    metadata = pretrained.checkpoint_metadata("sl_cai", model_cfg, tok, config)
    t1 = time.time()
    state = fit(
        model=model,
        optim_cfg=optim_cfg,
        train_cfg=train_cfg,
        mesh=mesh,
        batch_fn=sft.batch,
        workdir=stage_dir,
        metadata=metadata,
        init_params=params,
        stage="sl_cai",
    )
    summary.update(
        sft_examples=len(examples),
        sft_truncated=sft.truncated,
        steps=int(state.step),
        loop_seconds_this_run=loop_seconds,
        train_seconds_this_run=round(time.time() - t1, 1),
    )
    update_summary(workdir, "sl_cai_stage", summary)
    if int(state.step) < train_cfg.steps:
        raise Halted(f"fine-tuning stopped at step {int(state.step)}")
