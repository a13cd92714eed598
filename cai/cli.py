"""Command-line plumbing shared by ``cai.main``, ``cai.sample`` and ``cai.convert``: quiet library
logs and one-line errors for bad flags, configs and faults (``cai.errors``)."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

from absl import flags


class _QuietLibraries(logging.Filter):
    """Orbax logs every file it touches at INFO; keep its warnings, drop the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


class _OnlyOurWarnings(logging.Filter):
    """Without --verbosity: our own warnings and anyone's errors; library chatter (jax backend
    probes, orbax's read-only notes, TFDS's custom-config notes) stays off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = f"{os.sep}cai{os.sep}" in record.pathname
        if f"{os.sep}orbax{os.sep}" in record.pathname and record.exc_info:
            return False  # a failed save's traceback: cai.checkpoint raises it as one line
        return record.levelno >= (logging.WARNING if ours else logging.ERROR)


class _DropClosedLoopTracebacks:
    """sys.stderr minus one kind of noise. When a checkpoint read fails, orbax closes its event
    loop while TensorStore's reads of the other arrays are still in flight; each one finishing
    prints, from a TensorStore thread, a traceback ending in "RuntimeError: Event loop is
    closed", after the one-line error has said what is wrong. Those blocks are dropped; the
    main thread's output and anything else TensorStore's threads print pass through."""

    NOISE = "RuntimeError: Event loop is closed"

    def __init__(self, stream):  # noqa: ANN001
        self.stream, self.blocks = stream, {}

    def write(self, text: str) -> int:
        if not isinstance(threading.current_thread(), threading._DummyThread):
            return self.stream.write(text)
        key = threading.get_ident()
        block = self.blocks.pop(key, "") + text
        last = block.rstrip("\n").rsplit("\n", 1)[-1]
        if not block.endswith("\n") or last.startswith((" ", "Traceback")):
            self.blocks[key] = block  # a traceback still being written
        elif last != self.NOISE:
            self.stream.write(block)
        return len(text)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.stream, name)


def _drop_read_noise() -> None:
    """Keep a failed checkpoint read to its one line: drop TensorStore's closed-loop tracebacks
    (above), and the "Exception ignored in" ones of orbax's abandoned read coroutines and of
    callbacks into its closed loop."""
    unraisable = sys.unraisablehook

    def on_unraisable(u) -> None:  # noqa: ANN001
        code = getattr(u.object, "cr_code", None)  # a coroutine's
        orbax_read = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
        closed_loop = (
            f"{type(u.exc_value).__name__}: {u.exc_value}" == _DropClosedLoopTracebacks.NOISE
        )
        if not (orbax_read or closed_loop):
            unraisable(u)

    sys.unraisablehook = on_unraisable
    if not isinstance(sys.stderr, _DropClosedLoopTracebacks):
        sys.stderr = _DropClosedLoopTracebacks(sys.stderr)


def quiet_libraries() -> None:
    """Console: progress bars, results and warnings; ``--verbosity=0`` (INFO) or higher brings
    back every library's log lines (orbax's per-file INFO lines stay off)."""
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    handler.addFilter(_QuietLibraries())
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
        handler.addFilter(_OnlyOurWarnings())
        _drop_read_noise()


def one_line(e: BaseException) -> str:
    """An exception as one line: for a wrapped traceback, its final (raised) line."""
    text = str(e)
    if "Traceback" in text:
        text = text.rstrip().splitlines()[-1]
    elif isinstance(e, OSError) and e.__cause__ is None and "Attempted" in text:
        text = text.rstrip().splitlines()[-1]
    return " ".join(text.replace("\\n", " ").split())


def fail(message: str) -> None:
    """Print the one line and end the process at once. A normal exit waits for library threads
    that may still print: after a failed checkpoint read, TensorStore's other in-flight reads
    finish with tracebacks of their own (a 311-line one reached stderr in a CI run). Whatever
    was written is already complete on disk (atomic writes) or cleaned up by the next run."""
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with a bad override (unknown key, wrong type) reported on one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        text = one_line(e)
        if isinstance(e, flags.Error):
            fail(text)
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        culprit = next(
            (o for o in overrides if any(re.search(rf"\b{k}\b", text) for k in o.split(".")[1:])),
            None,
        )
        hint = re.search(r"Did you mean \"(\w+)\"", text)
        fail(
            f"{culprit or 'a --config override'}: unknown config key"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
        )
