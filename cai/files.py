"""Writing files so that nothing written is lost: every file a stage produces is written to a
temporary name and renamed over the target, so a killed run leaves the old file or the new one,
never half of either. JSONL reading lives here too, so there is one parser for every stage."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from etils import epath


def atomic_write_text(path: epath.Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def write_jsonl(path: epath.Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: epath.Path) -> list[dict[str, Any]]:
    with epath.Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: epath.Path) -> Any:
    return json.loads(epath.Path(path).read_text())


def write_json(path: epath.Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True))
