"""Writing files so that nothing written is lost: every file a stage produces is written to a
temporary name and renamed over the target, so a killed run leaves the old file or the new one,
never half of either; a write that fails (a full disk) leaves the old file too and stops with
``WriteError`` naming the file. JSONL reading lives here too, so there is one parser for every
stage."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from etils import epath

from cai.errors import WriteError


def os_reason(e: BaseException) -> str:
    """Why a write failed, in a few words: the OS's text for its errno ("No space left on
    device") when it has one, else the exception's first line."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def atomic_write_text(path: epath.Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename.

    Raises WriteError naming ``path`` when the write fails; ``path`` keeps its old contents and
    the partial temporary file is removed where it can be."""
    path = epath.Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise WriteError(path, os_reason(e)) from e


def write_jsonl(path: epath.Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: epath.Path) -> list[dict[str, Any]]:
    with epath.Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: epath.Path) -> Any:
    return json.loads(epath.Path(path).read_text())


def write_json(path: epath.Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True))
