"""The exceptions ``cai.main``, ``cai.sample`` and ``cai.convert`` print as a single line.

``ConfigError`` and its subclasses stop a run with ``error: <message>`` and no traceback: bad
input, and the faults a run meets on the way (a checkpoint that cannot be read, a write that
failed, a loss that stayed non-finite). Each message names the file or setting at fault."""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A config value, file or flag that cannot work; the message names what is wrong."""


class CheckpointError(ConfigError):
    """A checkpoint step that cannot be read (a missing, truncated or corrupt file); ``path``
    is the step directory, ``what`` says which file or array and what is wrong with it, and
    ``where`` (optional) which setting named the checkpoint (``sl_cai.loop.init_from=...``)."""

    def __init__(self, path: str | os.PathLike, what: str, where: str = ""):
        self.path, self.what = os.fspath(path), what
        super().__init__(
            f"{where + ': ' if where else ''}checkpoint {self.path} is unreadable: {what}"
        )


class WriteError(ConfigError):
    """Writing an output failed (a full disk, a lost mount, no permission). ``path`` is the
    file (or checkpoint step) being written; everything written before it is intact, so a
    rerun with the fault fixed resumes."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(
            f"could not write {self.path}: {reason} (earlier outputs are intact; a rerun resumes)"
        )


class NonFiniteError(ConfigError):
    """Training met ``train.max_skipped_steps`` steps in a row whose loss or gradient norm was
    not finite; each was skipped, so the parameters and checkpoints stay finite."""


class Halted(Exception):
    """A stage stopped early on purpose (``halt_at_step``, ``halt_after_shards``), as if the job
    were preempted: ``cai.main`` exits cleanly without running later stages; a rerun resumes."""
