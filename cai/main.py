"""Entry point: ``python -m cai.main --config=experiments/X.py[:arg] --workdir=DIR``.

Runs the stages named in ``config.stages`` in order (with ``config.base=pretrain``, stage
``pretrain`` first); each reads its inputs from and writes its outputs to the workdir, and
resumes from what is already there. Library logs are off unless ``--verbosity=0`` (or higher)
asks for them: the console shows one progress bar per stage step and the results table.
"""

from __future__ import annotations

import functools
import logging
import sys

import jax
import ml_collections
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from cai import configs, dry_run
from cai.cli import fail, one_line, parse_flags, quiet_libraries
from cai.errors import ConfigError, Halted
from cai.stages import (
    dpo,
    evaluate,
    feedback,
    human_feedback,
    pairs,
    preference_model,
    pretrain,
    rl_cai,
    sl_cai,
)

STAGES = {
    "pretrain": pretrain.run,
    "sl_cai": sl_cai.run,
    "pairs": pairs.run,
    "feedback": feedback.run,
    "human_feedback": human_feedback.run,
    "preference_model": preference_model.run,
    # The HH-RLHF-style baseline: the same stage with its own section and directory.
    "pm_human": functools.partial(preference_model.run, name="pm_human"),
    "rl_cai": rl_cai.run,
    # Baselines (experiments/hh_rlhf.py, helpful_rlhf.py, rloo_ai.py, baselines.py): the same
    # stages under their own sections and directories.
    "pm_helpful": functools.partial(preference_model.run, name="pm_helpful"),
    # A second RL-CAI PM on the other half of the comparisons, watched during RL.
    "pm_heldout": functools.partial(preference_model.run, name="pm_heldout"),
    "rl_hh": functools.partial(rl_cai.run, name="rl_hh"),
    "rl_helpful": functools.partial(rl_cai.run, name="rl_helpful"),
    "rloo": functools.partial(rl_cai.run, name="rloo"),
    "dpo": dpo.run,
    "evaluate": evaluate.run,
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Where stages read and write everything.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Compile every step ahead of time, print the mesh and per-device memory, exit.",
)


def check_workdir(path: str) -> epath.Path:
    """The workdir, created with its parents; a part of the path that is a file is an error."""
    workdir = epath.Path(path)
    if "://" not in path:
        workdir = epath.Path(path).expanduser().absolute()
        for p in (workdir, *workdir.parents):
            if p.exists() and not p.is_dir():
                raise ConfigError(f"--workdir={path}: {p} exists and is not a directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def run(config, workdir_flag: str, compile_only: bool = False) -> None:
    stages = configs.stages_of(config)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(
            f"config.stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})"
        )
    if config.distributed:
        jax.distributed.initialize()
    if compile_only:  # --dry_run: no weights, nothing written
        dry_run.run(config)
        return
    workdir = check_workdir(workdir_flag)
    logging.info("workdir %s, %d devices, stages %s", workdir, jax.device_count(), stages)
    for i, stage in enumerate(stages, 1):
        # One line per stage on stderr, beside the progress bars: where a run is (and where a
        # killed one was); tests/test_faults.py times its kills by it.
        print(f"[{i}/{len(stages)}] {stage}", file=sys.stderr, flush=True)
        try:
            STAGES[stage](config, workdir)
        except Halted as e:
            print(f"{stage} halted: {e}; a rerun resumes")
            return


def load_config() -> ml_collections.ConfigDict:
    """The --config file is loaded lazily by config_flags; surface its errors on one line."""
    try:
        config = _CONFIG.value
        config.stages  # noqa: B018 -- forces the lazy load
        return config
    except Exception as e:  # any error inside the user's config file
        fail(f"--config: {one_line(e)}")


def main(argv: list[str]) -> None:
    quiet_libraries()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run(load_config(), _WORKDIR.value, compile_only=_DRY_RUN.value)
    except ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
