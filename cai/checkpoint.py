"""Orbax checkpoints: save every N steps, keep K, restore straight into sharded arrays.

Each step directory holds three items: ``params``, ``train`` (optimizer state, step, rng) and
``metadata`` (JSON: model config, experiment config, tokenizer, step). Sampling and later stages
restore ``params`` alone. Orbax writes every save into a temporary directory and renames it when
complete, so a process killed mid-save leaves the previous checkpoint intact and the partial one
invisible to ``latest_step``.

Faults become one-line errors: a step that cannot be read (a missing, truncated or corrupt file)
raises ``CheckpointError`` naming the step directory and the file or array at fault; a save that
fails (a full disk) raises ``WriteError`` naming the step, with every earlier step intact.
``restore_newest_intact`` (what training resumes with) falls back past broken steps, warning
once for each and moving it aside to ``<step>.broken``: kept for inspection, never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from cai.errors import CheckpointError, ConfigError, WriteError
from cai.files import os_reason

# What TensorStore's status codes mean for a file that was readable when it was written.
_STATUS = {"OUT_OF_RANGE": "is truncated", "DATA_LOSS": "is corrupt", "NOT_FOUND": "is missing"}


def _storage_error(e: BaseException) -> bool:
    """An error of the files under a checkpoint rather than of our code: what orbax and
    TensorStore raise for unreadable or unwritable data (OSError, ValueError with a status,
    JSON errors, a missing item's KeyError, and orbax's bare ``Exception`` wrapping those)."""
    return isinstance(e, (OSError, ValueError, KeyError)) or type(e) is Exception


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    # TensorStore appends its spec ("[tensorstore_spec[1]='{...}']") and source locations.
    return (
        re.sub(r"\s*\[(tensorstore_spec|source locations)\b.*$", "", lines[0])
        if lines
        else type(e).__name__
    )


def _files_of_size(directory: epath.Path, size: int) -> list[str]:
    """Local files under ``directory`` holding exactly ``size`` bytes (none for remote paths)."""
    if "://" in os.fspath(directory):
        return []
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(os.fspath(directory))
        for name in names
        if os.path.getsize(os.path.join(root, name)) == size
    ]


def _json_problem(step_dir: epath.Path, items: list[str]) -> str | None:
    """The first item directory or JSON file of ``items`` that is missing or does not parse
    (``_METADATA`` and the ``metadata`` item must exist; ``_sharding`` and the array metadata
    are optional)."""
    for item in items:
        d = step_dir / item
        if not d.is_dir():
            return f"{item}/ is missing"
        required = [d / "metadata"] if item == "metadata" else [d / "_METADATA"]
        optional = (
            [] if item == "metadata" else [d / "_sharding", *(d / "array_metadatas").glob("*")]
        )
        for f in required + optional:
            rel = os.path.relpath(os.fspath(f), os.fspath(step_dir))
            if not f.exists():
                if f in required:
                    return f"{rel} is missing"
                continue
            try:
                json.loads(f.read_bytes())
            except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
                return f"{rel} is truncated or corrupt (not JSON: {err})"
    return None


def _what_is_wrong(step_dir: epath.Path, items: list[str], error: BaseException) -> str:
    """A few words naming the file or array of ``step_dir`` at fault and what is wrong.

    The JSON files are checked directly. For array data, TensorStore's status message
    (``OUT_OF_RANGE: Error reading "w/0.0" in OCDBT database at local file "<dir>/params/":
    Requested byte range [..) is not valid for value of size N``) is cut down to the data file
    it names (else the array), what its status code means, and its last clause."""
    found = _json_problem(step_dir, items)
    if found:
        return found
    prefix = os.fspath(step_dir).rstrip("/") + "/"
    for e in _chain(error):
        m = re.match(r"([A-Z_]+): (.*)", _first_line(e))
        if not m:
            continue
        code, text = m.groups()
        files = [f for f in re.findall(r'local file "([^"]+)"', text) if not f.endswith("/")]
        array = re.search(r'"([^"/]+)[^"]*" in OCDBT database at local file "([^"]+)"', text)
        detail = text.rsplit('": ', 1)[-1]
        detail = "" if detail == text or prefix in detail else detail[:160]
        if files:
            where = files[-1].replace(prefix, "")
        elif array:
            item = os.path.basename(array.group(2).rstrip("/"))
            where = f"{item}/{array.group(1)}"
            # A value read past the end of its data file names the file only by its size.
            size = re.search(r"value of size (\d+)", text)
            sized = _files_of_size(step_dir / item, int(size.group(1))) if size else []
            if len(sized) == 1:
                where, detail = (
                    os.path.relpath(sized[0], step_dir),
                    f"array {array.group(1)}: {detail}",
                )
        else:
            where = "array data"
        return f"{where} {_STATUS.get(code, f'is unreadable ({code})')}" + (
            f" ({detail})" if detail else ""
        )
    return f"{type(error).__name__}: {_first_line(error).replace(prefix, '')}"


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding, the restore target orbax wants."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` with the item layout described above."""

    def __init__(
        self,
        directory: str | os.PathLike,
        save_every: int = 1000,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = epath.Path(directory)
        self._pending: int | None = None  # the step an async save is writing
        self._failed = False  # a save failed (and was raised as WriteError)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, save_every),
            max_to_keep=None if read_only else keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("params", "train", "metadata"), options=options
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _unreadable(self, step: int, items: list[str], e: BaseException) -> CheckpointError:
        try:
            what = _what_is_wrong(self.step_dir(step), items, e)
        except Exception:  # the diagnosis must not hide the fault it diagnoses
            what = f"{type(e).__name__}: {_first_line(e)}"
        return CheckpointError(self.step_dir(step), what)

    def _write_error(self, step: int, e: BaseException) -> WriteError:
        self._failed = True
        cause = next((c for c in _chain(e) if isinstance(c, OSError)), e)
        return WriteError(self.step_dir(step), os_reason(cause))

    def save(
        self, step: int, params: Any, train: Any, metadata: dict[str, Any], force: bool = False
    ) -> bool:
        """Start (possibly async) saving; returns False when ``step`` is not a save step.

        Raises WriteError naming the step whose save failed: this one, or the async save
        before it (whose failure surfaces here or in ``wait``)."""
        if not force and not self._manager.should_save(step):
            return False
        self.wait()
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train=ocp.args.StandardSave(train),
            metadata=ocp.args.JsonSave(metadata),
        )
        self._pending = step
        try:
            return self._manager.save(step, args=args, force=force)
        except Exception as e:
            self._pending = None
            if _storage_error(e):
                raise self._write_error(step, e) from e
            raise

    def restore(
        self, params_like: Any, train_like: Any | None = None, step: int | None = None
    ) -> tuple[int, Any, Any]:
        """Restore into the shardings/shapes of ``*_like`` (arrays or ShapeDtypeStructs).

        Raises CheckpointError naming the step and what is wrong when it cannot be read."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"no checkpoint found in {self.directory}")
        items = {"params": ocp.args.StandardRestore(_abstract(params_like))}
        if train_like is not None:
            items["train"] = ocp.args.StandardRestore(_abstract(train_like))
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            if not _storage_error(e):
                raise
            raise self._unreadable(step, list(items), e) from e
        return step, out["params"], out.get("train") if train_like is not None else None

    def restore_newest_intact(self, params_like: Any, train_like: Any) -> tuple[int, Any, Any]:
        """``restore`` of the newest step that reads. Each newer, broken step gets one warning
        line and is moved aside to ``<step>.broken`` (kept, never deleted: left in place, a
        rerun's save of that step would collide with it and the keep-K clean-up delete it).
        Nothing moves unless an older step reads, so a mismatch that breaks every step (the
        wrong model) moves nothing and raises the newest step's error."""
        broken: list[CheckpointError] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                out = self.restore(params_like, train_like, step)
            except CheckpointError as e:
                broken.append(e)
                continue
            for e in broken:
                logging.warning(
                    "%s; moved it to %s and resumed from step %d", e, self._set_aside(e.path), step
                )
            if broken:
                self._manager.reload()
            return out
        if not broken:
            raise ConfigError(f"no checkpoint found in {self.directory}")
        if len(broken) == 1:
            raise broken[0]
        raise CheckpointError(broken[0].path, f"{broken[0].what} (and no earlier step reads)")

    def _set_aside(self, path: str) -> epath.Path:
        """Rename a broken step directory out of orbax's sight (on process 0; others skip)."""
        src = epath.Path(path)
        dst = src.parent / f"{src.name}.broken"
        n = 1
        while dst.exists():
            dst, n = src.parent / f"{src.name}.broken{n}", n + 1
        if jax.process_index() == 0:
            src.rename(dst)
        return dst

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"no checkpoint found in {self.directory}")
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
            )
        except Exception as e:
            if not _storage_error(e):
                raise
            raise self._unreadable(step, ["metadata"], e) from e
        return dict(out["metadata"])

    def wait(self) -> None:
        """Block until an async save is on disk; WriteError naming its step if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            if self._pending is None or not _storage_error(e):
                raise
            raise self._write_error(self._pending, e) from e
        finally:
            self._pending = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:
                if not self._failed:  # orbax's close raises a failed save's error once more
                    raise

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def find_checkpoint_dir(path: str | os.PathLike) -> epath.Path:
    """Accept a checkpoint root, a stage directory holding ``checkpoints/``, or a workdir with
    a single stage; return the directory the manager should open (absolute: orbax refuses
    relative paths)."""
    p = epath.Path(path)
    if "://" not in os.fspath(path):
        p = epath.Path(os.path.abspath(os.fspath(path)))
    if not p.exists():
        raise ConfigError(f"checkpoint path {p} does not exist")

    def has_steps(d: epath.Path) -> bool:
        return d.is_dir() and any(c.name.isdigit() and c.is_dir() for c in d.iterdir())

    if has_steps(p):
        return p
    if has_steps(p / "checkpoints"):
        return p / "checkpoints"
    nested = [c / "checkpoints" for c in p.iterdir() if c.is_dir() and has_steps(c / "checkpoints")]
    if len(nested) == 1:
        return nested[0]
    if nested:
        raise ConfigError(
            f"{p} holds several stages' checkpoints "
            f"({', '.join(n.parent.name for n in nested)}); name one"
        )
    raise ConfigError(f"no checkpoint found under {p}")
