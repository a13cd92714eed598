"""TFDS builder for BIG-bench ``hhh_alignment`` (Askell et al. 2021, arXiv 2112.00861), read
from a user-given copy of ``bigbench/benchmark_tasks/hhh_alignment/`` (``manual_dir``).

Each subtask directory holding a ``task.json`` (``harmless``, ``helpful``, ``honest``,
``other``) becomes a split. An example is a dialogue ``input`` and two or more ``choices``, with
``target`` the index of the one scored 1. The files carry BIG-bench's canary: evaluation only,
never training data. A malformed file stops the build with a ``ConfigError`` naming the file
and the line (JSON syntax) or the example (content).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cai.data import prepare
from cai.errors import ConfigError


def read_task(path: str) -> list[dict[str, Any]]:
    """The validated examples of one BIG-bench task file."""
    with open(path, encoding="utf-8") as f:
        try:
            task = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    examples = task.get("examples") if isinstance(task, dict) else None
    if not isinstance(examples, list) or not examples:
        raise ConfigError(f"{path}: field 'examples' must be a non-empty list")
    out = []
    for i, ex in enumerate(examples):
        where = f"{path}: examples[{i}]"
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise ConfigError(f"{where}: field 'input' must be a string")
        scores = ex.get("target_scores")
        if not isinstance(scores, dict) or len(scores) < 2:
            raise ConfigError(f"{where}: field 'target_scores' must map 2+ responses to scores")
        best = [k for k, v in scores.items() if v == 1]
        if len(best) != 1 or any(v not in (0, 1) for v in scores.values()):
            raise ConfigError(f"{where}: 'target_scores' must score exactly one response 1, rest 0")
        choices = list(scores)
        out.append({"input": ex["input"], "choices": choices, "target": choices.index(best[0])})
    return out


def find_subtasks(root: str) -> dict[str, str]:
    """Subtask name -> its task.json, for every subdirectory that has one."""
    if not os.path.isdir(root):
        raise ConfigError(f"hhh_alignment: manual_dir {root} is not a directory")
    found = {
        name: os.path.join(root, name, "task.json")
        for name in sorted(os.listdir(root))
        if os.path.isfile(os.path.join(root, name, "task.json"))
    }
    if not found:
        raise ConfigError(f"hhh_alignment: no <subtask>/task.json under {root}")
    return found


class HhhAlignment(tfds.core.GeneratorBasedBuilder):
    """BIG-bench HHH alignment, from files in ``manual_dir``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}  # noqa: RUF012
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy bigbench/benchmark_tasks/hhh_alignment/ (with its harmless/, helpful/, ... "
        "subdirectories) to manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "input": tfds.features.Text(),
            "choices": tfds.features.Sequence(tfds.features.Text()),
            "target": tfds.features.Scalar(np.int32),
        }
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        subtasks = find_subtasks(os.fspath(dl_manager.manual_dir))
        return {name: self._generate_examples(path) for name, path in subtasks.items()}

    def _generate_examples(self, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from enumerate(read_task(path))


def builder(data_dir: str, manual_dir: str) -> HhhAlignment:
    """A prepared builder over the task files in ``manual_dir`` (built on first use)."""
    b = HhhAlignment(data_dir=data_dir, file_format="array_record")
    prepare(b, download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return b
