"""Stage ``evaluate``: measure checkpoints on the toy world's held-out splits with the judge.

For each ``summary key -> model`` in ``config.evaluate.checkpoints`` (``base`` is the run's
base model, other names are stage directories of the workdir) and each split of
``evaluate.splits``, greedy replies to every prompt of the split's slices are judged
(``cai.evaluation``); ``summary.json[key][split]`` gets the rates with their 95% intervals,
and ``summary.json["paired"]["<key>_vs_<first key>"][split]`` McNemar's test of each later
checkpoint against the first on the same prompts. Every reply is written to
``WORKDIR/evaluate/<key>.<split>.jsonl`` beside its verdict; a rerun reuses finished ones.

With ``evaluate.revisions`` naming the supervised stage's directory, its red-team shards are
judged round by round: ``summary.json["revision_curves"]`` and ``WORKDIR/plots/revisions.png``.
The stage ends by printing the results table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from etils import epath

from cai import configs, evaluation, sharding, stage_lib
from cai.errors import ConfigError
from cai.files import read_json, read_jsonl, write_json, write_jsonl
from cai.metrics import update_summary
from cai.toyworld import world


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # summary.json key -> model: "base", a stage directory under the workdir, or a path.
    checkpoints: dict[str, str] = dataclasses.field(default_factory=lambda: {"base": "base"})
    splits: tuple[str, ...] = ("dev", "test")
    phrasings: int = -1  # direct (and adversarial) phrasings per request; -1: every one
    max_new_tokens: int = 64
    batch_size: int = 256  # prompts per generation call
    revisions: str = ""  # the supervised stage's directory, for the revision curve ("": none)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ConfigError("evaluate.checkpoints is empty: name at least one model")
        if self.max_new_tokens <= 0 or self.batch_size <= 0 or self.phrasings == 0:
            raise ConfigError(
                "evaluate.max_new_tokens and evaluate.batch_size must be positive, "
                "evaluate.phrasings positive or -1"
            )
        bad = [s for s in self.splits if s not in ("dev", "test")]
        if bad or not self.splits:
            raise ConfigError(f"evaluate.splits={self.splits}: expected dev and/or test")


def revision_curves(w: world.World, stage_dir: epath.Path, workdir: epath.Path) -> None:
    curves = {}
    for name, variant in (("revisions", "critique"), ("revisions_direct", "direct")):
        if (stage_dir / name).exists():
            curves[variant] = evaluation.revision_curve(w, stage_lib.shards(stage_dir / name))
    if not curves:
        raise ConfigError(f"evaluate.revisions: {stage_dir} holds no revision shards")
    update_summary(workdir, "revision_curves", curves)
    evaluation.plot_curves(curves, workdir / "plots" / "revisions.png")


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    cfg = configs.to_dataclass(EvalConfig, configs.get(config, "evaluate", ""), "evaluate")
    w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    out_dir = workdir / "evaluate"
    paths = {
        key: stage_lib.resolve_init(config, workdir, name, f"evaluate.checkpoints.{key}")
        for key, name in cfg.checkpoints.items()
    }
    stage_lib.guard(
        out_dir,
        stage_lib.section(config, "world", "evaluate"),
        {key: stage_lib.fingerprint(path) for key, path in paths.items()},
    )
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key, path in paths.items():
        text_model = None
        summary = {}
        for split in cfg.splits:
            done = out_dir / f"{key}.{split}.json"
            if not done.exists():
                if text_model is None:
                    loaded = stage_lib.load_model(path, mesh, f"evaluate.checkpoints.{key}")
                    sampler = stage_lib.TextSampler(loaded, mesh, cfg.batch_size)
                    text_model = stage_lib.TextModel(sampler, cfg.max_new_tokens)
                figures, recs = evaluation.evaluate(text_model, w, split, cfg.phrasings, cfg.seed)
                write_jsonl(out_dir / f"{key}.{split}.jsonl", recs)
                write_json(done, figures)  # written last: marks the split finished
            else:  # finished by an earlier run
                figures = read_json(done)
                recs = read_jsonl(out_dir / f"{key}.{split}.jsonl") if len(paths) > 1 else []
            summary[split] = figures
            records.setdefault(key, {})[split] = recs
        update_summary(workdir, key, summary)
    keys = list(cfg.checkpoints)
    if len(keys) > 1:
        update_summary(
            workdir,
            "paired",
            {
                f"{k}_vs_{keys[0]}": {
                    s: evaluation.paired(records[keys[0]][s], records[k][s]) for s in cfg.splits
                }
                for k in keys[1:]
            },
        )
    if cfg.revisions:
        revision_curves(w, workdir / cfg.revisions, workdir)
    full = read_json(workdir / "summary.json")
    print(evaluation.table(full, keys, "test" if "test" in cfg.splits else cfg.splits[0]))
