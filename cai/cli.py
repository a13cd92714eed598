"""Command-line plumbing shared by ``cai.main`` and ``cai.sample``: quiet library logs and
one-line errors for bad flags and configs."""

from __future__ import annotations

import logging
import os
import re
import sys

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
        return record.levelno >= (logging.WARNING if ours else logging.ERROR)


def quiet_libraries() -> None:
    """Console: progress bars, results and warnings; ``--verbosity=0`` (INFO) or higher brings
    back every library's log lines (orbax's per-file INFO lines stay off)."""
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    handler.addFilter(_QuietLibraries())
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
        handler.addFilter(_OnlyOurWarnings())


def one_line(e: BaseException) -> str:
    """An exception as one line: for a wrapped traceback, its final (raised) line."""
    text = str(e)
    if "Traceback" in text:
        text = text.rstrip().splitlines()[-1]
    elif isinstance(e, OSError) and e.__cause__ is None and "Attempted" in text:
        text = text.rstrip().splitlines()[-1]
    return " ".join(text.replace("\\n", " ").split())


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
