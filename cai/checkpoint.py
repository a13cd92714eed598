"""Orbax checkpoints: save every N steps, keep K, restore straight into sharded arrays.

Each step directory holds three items: ``params``, ``train`` (optimizer state, step, rng) and
``metadata`` (JSON: model config, experiment config, tokenizer, step). Sampling and later stages
restore ``params`` alone. Orbax writes every save into a temporary directory and renames it when
complete, so a process killed mid-save leaves the previous checkpoint intact and the partial one
invisible to ``latest_step``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from cai.errors import ConfigError


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

    def save(
        self, step: int, params: Any, train: Any, metadata: dict[str, Any], force: bool = False
    ) -> bool:
        """Start (possibly async) saving; returns False when ``step`` is not a save step."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train=ocp.args.StandardSave(train),
            metadata=ocp.args.JsonSave(metadata),
        )
        return self._manager.save(step, args=args, force=force)

    def restore(
        self, params_like: Any, train_like: Any | None = None, step: int | None = None
    ) -> tuple[int, Any, Any]:
        """Restore into the shardings/shapes of ``*_like`` (arrays or ShapeDtypeStructs)."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"no checkpoint found in {self.directory}")
        items = {"params": ocp.args.StandardRestore(_abstract(params_like))}
        if train_like is not None:
            items["train"] = ocp.args.StandardRestore(_abstract(train_like))
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        return step, out["params"], out.get("train") if train_like is not None else None

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"no checkpoint found in {self.directory}")
        out = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        return dict(out["metadata"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

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
