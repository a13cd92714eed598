"""Metrics to JSONL (one line per logged step) and TensorBoard event files (tensorboardX, no
TensorFlow needed). Keys are slash-scoped: ``pretrain/loss``."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from cai.files import read_json, write_json


class MetricsWriter:
    """Only process 0 writes; other hosts get a no-op writer so pods don't clash on files."""

    def __init__(self, workdir: epath.Path, stage: str):
        self._enabled = jax.process_index() == 0
        self._file = None
        self._tb = None
        if not self._enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self._file = (workdir / "metrics.jsonl").open("a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(workdir / "tb"))
        self.stage = stage

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self._enabled:
            return
        clean = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._file.flush()
        for k, v in clean.items():
            if math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = None


def update_summary(workdir: epath.Path, key: str, value: dict[str, Any]) -> None:
    """Set ``summary.json[key]`` atomically (write a temp file, then rename over the old one)."""
    if jax.process_index() != 0:
        return
    path = workdir / "summary.json"
    summary = read_json(path) if path.exists() else {}
    summary[key] = value
    write_json(path, summary)
