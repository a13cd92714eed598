"""Run ``python -m cai.main`` in a subprocess while reading its stage lines (``[i/n] stage`` on
stderr, printed by ``cai.main.run`` as each stage starts), so a test knows when each stage began
and can SIGKILL the run at a chosen moment inside one.

Shared by the main-job smoke test and the fault-injection suite (one uninterrupted smoke run
serves both, through the ``main_smoke`` fixture in conftest.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time

STAGE_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\w+)$")


@dataclasses.dataclass
class Watched:
    """A finished run: its exit code and output, when each stage started (seconds after the
    process did), and, for a killed run, the moment and the stage it was in."""

    returncode: int
    stdout: str
    stderr: str
    starts: list[tuple[str, float]]
    seconds: float = 0.0
    killed_at: float | None = None
    killed_in: str | None = None

    def durations(self) -> dict[str, float]:
        """Seconds from each stage's start to the next one's (the last to the exit)."""
        ends = [t for _, t in self.starts[1:]] + [self.seconds]
        return {s: end - t for (s, t), end in zip(self.starts, ends)}


def run(
    argv: list[str],
    *,
    kill_in: str | None = None,
    kill_after: float = 0.0,
    timeout: float = 900.0,
) -> Watched:
    """Run ``python -m cai.main *argv``. With ``kill_in``, SIGKILL it ``kill_after`` seconds
    after stage ``kill_in`` starts, or as soon as the stage after it starts if that comes
    first (the stage's end is a moment inside it too); a run that exits first is not killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cai.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill reaches any child too
    )
    t0 = time.monotonic()
    starts: list[tuple[str, float]] = []
    seen = threading.Condition()
    err: list[bytes] = []
    out: list[bytes] = []

    def read_stderr() -> None:
        buffer = b""
        for chunk in iter(lambda: proc.stderr.read1(65536), b""):
            err.append(chunk)
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for line in lines:
                m = STAGE_LINE.match(line.decode(errors="replace"))
                if m:
                    with seen:
                        starts.append((m.group(3), time.monotonic() - t0))
                        seen.notify_all()

    readers = [
        threading.Thread(target=read_stderr, daemon=True),
        threading.Thread(target=lambda: out.extend(iter(proc.stdout.read, b"")), daemon=True),
    ]
    for r in readers:
        r.start()
    killed_at = killed_in = None
    if kill_in is not None:
        with seen:
            # until the stage starts (or the run ends)
            while proc.poll() is None and kill_in not in [s for s, _ in starts]:
                seen.wait(0.05)
            if proc.poll() is None:
                begun = len(starts)
                deadline = time.monotonic() + kill_after
                while proc.poll() is None and len(starts) == begun and time.monotonic() < deadline:
                    seen.wait(min(0.02, max(deadline - time.monotonic(), 0.0)))
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_at, killed_in = time.monotonic() - t0, starts[begun - 1][0]
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    seconds = time.monotonic() - t0
    for r in readers:
        r.join(timeout=10)
    return Watched(
        returncode=proc.returncode,
        stdout=b"".join(out).decode(errors="replace"),
        stderr=b"".join(err).decode(errors="replace"),
        starts=starts,
        killed_at=killed_at,
        killed_in=killed_in,
        seconds=seconds,
    )
