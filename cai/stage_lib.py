"""What every stage shares, so each stage module is only its own logic.

* **Models**: ``resolve_init`` turns an ``init_from`` (``base``, a stage of this workdir, or a
  checkpoint / HF directory / GGUF file) into a path; ``load_model`` loads it with its tokenizer
  and the token that ends a reply in the chosen prompt style.
* **Text in, text out**: ``TextSampler`` generates and scores lists of prompts in fixed-size
  batches; stages exchange text, never token ids, so two stages may use different tokenizers.
* **Resumable outputs**: ``run_shards`` writes JSONL shards atomically, skips the finished ones
  and refuses shards from another configuration (``spec.json``); ``shards`` and
  ``read_comparisons`` read another stage's.
* **The stale-workdir guard**: ``guard`` records, next to a stage's outputs, the part of the
  config they depend on and fingerprints of their inputs; a rerun with anything different stops
  with one line naming the first differing key and both values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh
from tqdm.auto import tqdm

import cai
from cai import checkpoint, pretrained, prompts
from cai import preference_model as pm
from cai.errors import CheckpointError, ConfigError
from cai.files import read_json, read_jsonl, write_json, write_jsonl
from cai.model import ModelConfig, Transformer
from cai.sampling import Sampler, SamplingConfig
from cai.tokenizer import Tokenizer, chat_stop_id, render_chat

# The toy world's helpful-only base model, shipped with the package (experiments/pretrain_toy.py
# rebuilds it; README says how to replace it).
SHIPPED_BASE = pathlib.Path(cai.__file__).resolve().parent / "assets" / "toy_base"
BASES = ("shipped", "pretrain", "init_from")

# Keys that change how a run proceeds, never what it produces: left out of the guard.
RUNTIME_KEYS = frozenset(
    {
        "halt_at_step",
        "halt_after_shards",
        "halt_at_iteration",
        "log_every",
        "save_every",
        "keep",
        "max_skipped_steps",
    }
)


# ----------------------------------------------------------------------------- models


def resolve_init(
    config: ml_collections.ConfigDict, workdir: epath.Path, init_from: str, where: str
) -> str:
    """A loadable path for ``init_from``: ``base`` is the run's base model (``config.base``:
    the shipped one, this workdir's ``pretrain`` stage, or ``init_from``: the checkpoint at
    ``config.init_from``, a real model's HF directory or GGUF file); a name that exists under the
    workdir is that stage's output; anything else is a path."""
    if init_from == "base":
        base = config.get("base", "pretrain")
        if base not in BASES:
            raise ConfigError(f"config.base={base!r}: expected one of {', '.join(BASES)}")
        if base == "shipped":
            if not (SHIPPED_BASE / "checkpoints").exists():
                raise ConfigError(
                    f"{where}=base: the shipped base model {SHIPPED_BASE} is missing (rebuild it "
                    "with experiments/pretrain_toy.py, or pass --config.base=pretrain)"
                )
            return os.fspath(SHIPPED_BASE)
        if base == "init_from":
            path = config.get("init_from", "")
            if not path:
                raise ConfigError(
                    f"{where}=base: config.base=init_from but config.init_from is empty "
                    "(pass --config.init_from=PATH: an HF directory, a GGUF file or a checkpoint)"
                )
            if not (os.path.exists(path) or "://" in path):
                raise ConfigError(f"{where}=base: config.init_from={path} does not exist")
            return path
        init_from = "pretrain"
    local = workdir / init_from
    if local.exists():
        return os.fspath(local)
    if os.path.exists(init_from) or "://" in init_from:
        return init_from
    raise ConfigError(
        f"{where}={init_from!r}: neither {local} nor {init_from} exists "
        "(run the stage that writes it first, or name a checkpoint)"
    )


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model ready to sample: its config, params, tokenizer and the token ending a reply."""

    path: str
    model_cfg: ModelConfig
    model: Transformer
    params: Any
    tok: Tokenizer
    stop_id: int


def load_model(
    path: str,
    mesh: Mesh,
    where: str,
    style: str = "chat",
    model_config: ml_collections.ConfigDict | None = None,
    step: int | None = None,
) -> Loaded:
    """Load ``path`` sharded over ``mesh``. ``style`` ``chat`` stops replies at the chat
    format's end-of-turn token; ``transcript`` (HH text blocks) at EOS. How the model runs
    (dtype, remat) may come from ``model_config``; its shapes always come from the checkpoint.
    ``step``: that step of an orbax checkpoint (default: the latest)."""
    runtime = {f: model_config[f] for f in pretrained.RUNTIME_FIELDS if f in (model_config or {})}
    try:
        model_cfg, params, tok = pretrained.load(path, mesh, step=step, **runtime)
    except CheckpointError as e:
        raise CheckpointError(e.path, e.what, where=f"{where}={path}") from e
    if tok is None:
        raise ConfigError(f"{where}={path}: no tokenizer found with the model")
    stop = tok.eos_id if style == "transcript" else chat_stop_id(tok)
    return Loaded(path, model_cfg, Transformer(model_cfg), params, tok, stop)


def cut(text: str) -> str:
    """A transcript reply ends where the next block (turn, critique request) would begin."""
    return text.split("\n\n")[0].strip()


class TextSampler:
    """Generation and scoring over lists of token-id prompts, ``batch_size`` rows at a time
    (the compiled shapes stay few and memory stays bounded however many prompts come)."""

    def __init__(self, loaded: Loaded, mesh: Mesh, batch_size: int = 256):
        self.loaded, self.batch_size = loaded, batch_size
        self.sampler = Sampler(loaded.model, mesh, eos_id=loaded.stop_id, pad_id=loaded.tok.pad_id)

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, i + self.batch_size) for i in range(0, n, self.batch_size)]

    def complete(
        self,
        prompts: Sequence[list[int]],
        cfg: SamplingConfig,
        seed: int = 0,
        transcript: bool = True,
        desc: str | None = None,
    ) -> list[str]:
        """Decoded replies without the stop token, stripped; a ``transcript`` reply is also cut
        at its first blank line, a chat turn is not (it may hold blank lines of its own).
        Batch ``i`` samples with seed ``seed + i``."""
        tok, out = self.loaded.tok, []
        chunks = self._chunks(len(prompts))
        for i, sl in enumerate(tqdm(chunks, desc=desc, disable=desc is None or len(chunks) < 2)):
            for toks, _ in self.sampler.generate(self.loaded.params, prompts[sl], cfg, seed + i):
                text = tok.decode([t for t in toks if t != self.loaded.stop_id])
                out.append(cut(text) if transcript else text.strip())
        return out

    def score(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]]
    ) -> list[np.ndarray]:
        """Per pair: the log-prob of each continuation token given its prompt."""
        out: list[np.ndarray] = []
        for sl in self._chunks(len(prompts)):
            out += self.sampler.score(self.loaded.params, prompts[sl], continuations[sl])
        return out

    def score_choices(
        self, prompts: Sequence[list[int]], choices: Sequence[list[int]]
    ) -> np.ndarray:
        """[n, K]: the summed log-prob of each shared continuation in ``choices`` after each
        prompt (one prompt pass for all K)."""
        out = [
            self.sampler.score_choices(self.loaded.params, prompts[sl], choices)
            for sl in self._chunks(len(prompts))
        ]
        return np.concatenate(out) if out else np.zeros((0, len(choices)))


class TextModel:
    """A model behind text: chat replies, transcript continuations and continuation log-probs,
    greedy. Evaluation (and any stage judging text) talks to this, so a test can stand a stub
    with planted replies in its place."""

    def __init__(self, text: TextSampler, max_new_tokens: int):
        self.text, self.tok = text, text.loaded.tok
        self.greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)

    def reply(self, conversations: Sequence[Sequence[Sequence[str]]], desc: str = "") -> list[str]:
        """The assistant's next turn after each conversation of (role, content) pairs. In the HH
        chat format a turn ends where the next block starts; other formats end it with a token."""
        ids = [
            render_chat(self.tok, [{"role": r, "content": c} for r, c in conv], True)[0]
            for conv in conversations
        ]
        hh = self.tok.chat_format == "hh"
        return self.text.complete(ids, self.greedy, transcript=hh, desc=desc or None)

    def continue_text(self, texts: Sequence[str]) -> list[str]:
        """Plain-text continuations, cut where the transcript's next block would start."""
        ids = [prompts.text_ids(self.tok, t) for t in texts]
        return self.text.complete(ids, self.greedy, transcript=True)

    def logprob(self, texts: Sequence[str], continuation: str) -> list[float]:
        """log p(continuation | text) for each text."""
        ids = [prompts.text_ids(self.tok, t) for t in texts]
        cont = self.tok.encode(continuation)
        return [float(x.sum()) for x in self.text.score(ids, [cont] * len(ids))]


# ----------------------------------------------------------------------------- shards


def check_spec(directory: epath.Path, spec: dict[str, Any]) -> None:
    """Shards from another configuration must not be mixed in: fail naming the difference."""
    path = directory / "spec.json"
    if path.exists():
        old = read_json(path)
        diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        if diff:
            raise ConfigError(
                f"{directory} holds shards made with another {diff[0]} ({old.get(diff[0])!r}, "
                f"now {spec.get(diff[0])!r}); use another workdir or delete {directory}"
            )
    else:
        write_json(path, spec)


def run_shards(
    directory: epath.Path,
    items: Sequence[Any],
    size: int,
    make: Callable[[Sequence[Any], int], list[dict[str, Any]]],
    spec: dict[str, Any],
    budget: list[int],
    desc: str,
) -> list[dict[str, Any]] | None:
    """Run ``make(items, shard)`` for every shard not on disk yet; all records in order, or
    None when ``budget`` (shards left before a simulated kill; -1 unlimited) ran out first.
    ``make`` must depend only on its arguments, so a resumed run writes what an uninterrupted
    one would have."""
    check_spec(directory, spec)
    n = -(-len(items) // size)
    out: list[dict[str, Any]] = []
    paths = [directory / f"shard-{shard:05d}-of-{n:05d}.jsonl" for shard in range(n)]
    todo = sum(not p.exists() for p in paths)
    with tqdm(total=n, initial=n - todo, desc=desc, mininterval=2.0) as bar:
        for shard, path in enumerate(paths):
            if not path.exists():
                if budget[0] == 0:
                    return None
                write_jsonl(path, make(items[shard * size : (shard + 1) * size], shard))
                budget[0] -= 1
                bar.update()
            out += read_jsonl(path)
    return out


def take(items: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` items (all for -1) in a seeded order, so shards mix requests."""
    order = np.random.default_rng(seed).permutation(len(items))
    chosen = [items[i] for i in order]
    return chosen if n < 0 else chosen[:n]


def shards(directory: epath.Path) -> list[dict[str, Any]]:
    """Every record of another stage's shard directory, in shard order."""
    paths = sorted(directory.glob("shard-*.jsonl"))
    if not paths:
        raise ConfigError(f"{directory} holds no shards (run the stage that writes them first)")
    n = int(paths[0].name.split("-of-")[1].split(".")[0])
    if len(paths) != n:
        raise ConfigError(f"{directory} holds {len(paths)} of {n} shards: that stage is unfinished")
    return [r for p in paths for r in read_jsonl(p)]


def reply_pairs(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every two distinct replies of a pairs record, as a record of its own with ``responses``
    ``[a, b]`` (``a`` sampled first): a worker shown k replies ranks them, and a ranking of k
    holds k(k-1)/2 comparisons (InstructGPT, arXiv 2203.02155). Two identical replies are no
    comparison. Stage ``human_feedback`` labels these; ``evaluate`` measures PMs on them."""
    replies = record["responses"]
    return [
        {**record, "responses": [a, b]}
        for i, a in enumerate(replies)
        for b in replies[i + 1 :]
        if a != b
    ]


def read_comparisons(
    workdir: epath.Path, sources: Mapping[str, str], where: str
) -> tuple[dict[str, list[pm.Comparison]], dict[str, str]]:
    """(task -> its comparisons, task -> fingerprint of the shards they came from) for
    ``sources`` (task -> the stage whose ``train/`` shards hold its comparisons). A directory
    may hold both tasks; only the records of the task it is named for are taken from it."""
    comparisons, fingerprints = {}, {}
    for task, stage in sources.items():
        directory = workdir / stage / "train"
        records = shards(directory)
        mine = [c for c in pm.read_comparisons(records, str(directory)) if c.task == task]
        if not mine:
            raise ConfigError(f"{where}.{task}={stage!r}: {directory} holds no {task} comparisons")
        comparisons[task] = mine
        fingerprints[task] = fingerprint_shards(directory)
    return comparisons, fingerprints


def hh_rlhf_train_prompts(
    workdir: epath.Path, hh_rlhf_dir: str, as_train: Sequence[str] = ()
) -> tuple[list[Any], list[Any]]:
    """(red-team, helpful) first human turns of the HH-RLHF release's **train** split as
    one-turn ``world.Prompt`` conversations (slices ``red_team`` and ``helpful``), the prompts
    the CAI stages sample from on a real model; ``as_train`` names files of a copy whose names
    say test (the vendored sample, in tests)."""
    from cai.data.hh_rlhf import hh_rlhf
    from cai.toyworld.world import Prompt

    red, helpful = hh_rlhf.cai_prompts(
        str(workdir / "data"), hh_rlhf_dir, split="train", as_train=as_train
    )
    return ([Prompt((("user", t),), "", "red_team") for t in red],
            [Prompt((("user", t),), "", "helpful") for t in helpful])  # fmt: skip


# ----------------------------------------------------------------------------- the guard


def section(config: ml_collections.ConfigDict, *keys: str) -> dict[str, Any]:
    """The named top-level parts of ``config`` (absent ones left out) as plain data, minus the
    keys that only steer a run (``RUNTIME_KEYS``)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in RUNTIME_KEYS}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    full = config.to_dict()
    return {k: clean(full[k]) for k in keys if k in full}


def fingerprint(path: str) -> str:
    """What identifies a model input: the latest checkpoint's metadata (model, tokenizer, the
    config that made it, step) hashed, or a file's name and size for HF/GGUF sources."""
    kind = pretrained.source_kind(path)
    if kind != "orbax":
        files = sorted(pathlib.Path(path).glob("*")) if os.path.isdir(path) else [path]
        return f"{kind}:" + ",".join(f"{os.path.basename(f)}={os.path.getsize(f)}" for f in files)
    with checkpoint.Checkpointer(checkpoint.find_checkpoint_dir(path), read_only=True) as ckpt:
        meta = ckpt.metadata()
    digest = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return f"step {meta.get('step', '?')}, metadata {digest}"


def fingerprint_file(path: str) -> str:
    """A data file's identity: its size and the sha1 of its bytes."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file")
    with open(path, "rb") as f:
        return f"{os.path.getsize(path)} bytes, sha1 {hashlib.sha1(f.read()).hexdigest()[:16]}"


def fingerprint_shards(directory: epath.Path) -> str:
    """Another stage's shard directory's identity: its shard count and the sha1 of their bytes
    (a redone upstream stage, with other samples, is then a changed input)."""
    paths = sorted(directory.glob("shard-*.jsonl"))
    if not paths:
        raise ConfigError(f"{directory} holds no shards (run the stage that writes them first)")
    digest = hashlib.sha1()
    for p in paths:
        digest.update(p.read_bytes())
    return f"{len(paths)} shards, sha1 {digest.hexdigest()[:16]}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def guard(stage_dir: epath.Path, settings: dict[str, Any], inputs: dict[str, str]) -> None:
    """Record what ``stage_dir``'s outputs depend on (``settings``: config parts; ``inputs``:
    fingerprints of what the stage reads) on the first run; on a rerun, stop if any differs.

    Raises ConfigError: ``<dir> was made with config.world.seed=0; this run has 1 (...)``."""
    path = stage_dir / "stage.json"
    now = json.loads(json.dumps({"config": settings, "inputs": inputs}))  # tuples -> lists
    if not path.exists():
        write_json(path, now)
        return
    old, new = _flatten(read_json(path)), _flatten(now)
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            raise ConfigError(
                f"{stage_dir} was made with {key}={old.get(key, '<absent>')!r}; this run has "
                f"{new.get(key, '<absent>')!r} (use another --workdir, or delete {stage_dir} "
                "to redo the stage)"
            )
