"""The headline table over training seeds: one main job per seed, its figures as mean and range.

    python -m cai.seeds runs/rlcai runs/rlcai_seed1 runs/rlcai_seed2 [--split test] [--out F]

Each workdir is a finished main job (``experiments/rlcai.py`` or ``:seed=N``, same world, same
evaluation prompts); its ``summary.json`` holds the judge's rates per checkpoint and split. A
seed's run is one draw of everything the recipe samples (SL-CAI's revisions and fine-tune, the
pairs, the labels, the PMs, PPO), so the range is what a rerun of the recipe may give, not an
interval on one model. For every checkpoint every workdir measured, and each rate:

    mean = (1/S) sum_s r_s,    range = [min_s r_s, max_s r_s]

plus the ratio of each checkpoint's helpfulness to the base model's, per seed first (the
target "helpful >= 0.95 x base" is a per-run ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from etils import epath

from cai.errors import ConfigError
from cai.files import read_json, write_json

ROWS = (
    ("harmless", "harmless_rate", ""),
    ("— adversarial", "harmless_rate", "adversarial"),
    ("helpful", "helpful_rate", ""),
    ("helpful / base", "helpful_vs_base", ""),
    ("explained refusal", "explained_refusal_rate", ""),
    ("— adversarial", "explained_refusal_rate", "adversarial"),
    ("evasive", "evasive_rate", ""),
    ("deflected", "deflected_rate", ""),
)


PIPELINE = ("base", "sl_cai", "rl_cai")  # columns in recipe order, then the rest by name


def load(workdirs: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for w in workdirs:
        path = epath.Path(w) / "summary.json"
        if not path.exists():
            raise ConfigError(f"{path}: no summary.json (is {w} a finished main job?)")
        try:
            out.append(read_json(path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not JSON ({e})") from None
    return out


def rate(summary: dict[str, Any], model: str, split: str, key: str, piece: str) -> float:
    figures = summary[model][split]
    if key == "helpful_vs_base":
        return figures["helpful_rate"] / summary["base"][split]["helpful_rate"]
    return (figures["slices"][piece] if piece else figures)[key]


def aggregate(
    summaries: Sequence[dict[str, Any]], workdirs: Sequence[str], split: str = "test"
) -> dict[str, Any]:
    """``{model: {row label: {"mean", "min", "max", "per_seed"}}}`` over the runs, for every
    checkpoint that each run measured on ``split``."""
    if not summaries:
        raise ConfigError("cai.seeds: no workdirs given")
    models = sorted(
        (
            m
            for m, v in summaries[0].items()
            if isinstance(v, dict)
            and isinstance(v.get(split), dict)
            and "harmless_rate" in v[split]
        ),
        key=lambda m: (PIPELINE.index(m) if m in PIPELINE else len(PIPELINE), m),
    )
    for s, w in zip(summaries, workdirs):
        missing = [m for m in models if split not in s.get(m, {})]
        if missing:
            raise ConfigError(f"{w}/summary.json: no {missing[0]}.{split} figures")
    if "base" not in models:
        raise ConfigError(f"{workdirs[0]}/summary.json: no base.{split} figures to compare with")
    out: dict[str, Any] = {"split": split, "workdirs": list(workdirs), "columns": models,
                           "models": {}}  # fmt: skip
    for m in models:
        rows = {}
        for i, (label, key, piece) in enumerate(ROWS):
            values = [rate(s, m, split, key, piece) for s in summaries]
            rows[f"{i}:{label}"] = {"mean": sum(values) / len(values), "min": min(values),
                                    "max": max(values), "per_seed": values}  # fmt: skip
        out["models"][m] = rows
    return out


def table(agg: dict[str, Any]) -> str:
    models = agg["columns"]
    width = 22
    n = len(agg["workdirs"])
    lines = [f"{agg['split']} split, mean [min, max] over {n} seeds".ljust(24)
             + "".join(m.rjust(width) for m in models)]  # fmt: skip
    for i, (label, _, _) in enumerate(ROWS):
        cells = []
        for m in models:
            r = agg["models"][m][f"{i}:{label}"]
            cells.append(f"{r['mean']:.2f} [{r['min']:.2f}, {r['max']:.2f}]".rjust(width))
        lines.append(label.ljust(24) + "".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cai.seeds", description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="finished main-job workdirs, one per seed")
    parser.add_argument("--split", default="test", choices=("dev", "test"))
    parser.add_argument("--out", default="", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    try:
        agg = aggregate(load(args.workdirs), args.workdirs, args.split)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(agg))
    if args.out:
        write_json(epath.Path(args.out), agg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
