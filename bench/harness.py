"""What every benchmark script shares: its error, CPU accounting from /proc, the quiet-machine check, JSON.

The scripts run as `python bench/<name>.py`, so this module is imported by its plain name.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "REPO",
    "TICKS_PER_S",
    "BenchError",
    "CpuMeter",
    "busy_percent",
    "cpu_seconds",
    "free_port",
    "json_safe",
    "keep_logs",
    "latency_text",
    "machine_busy_seconds",
    "rabbitmq_pid",
    "raise_interrupt",
    "stop_process",
    "tail",
    "wait_for_quiet",
]
QUIET_BUSY_PERCENT = 15.0  # % of one core: an "idle machine" before a bench starts

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The bench could not run (a child did not start or died, a phase missed its deadline, …)."""


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so every child is stopped and temp dirs removed."""
    raise KeyboardInterrupt


def free_port() -> int:
    """tests/fixtures/ports.py's free port (the repo root joins the import path only here)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return int(importlib.import_module("tests.fixtures.ports").free_port())


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def rabbitmq_pid() -> int | None:
    """The local RabbitMQ node (beam.smp), read from /proc, or None."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "beam.smp":
                return int(entry.name)
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def machine_busy_seconds() -> float:
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICKS_PER_S  # all but idle and iowait


def busy_percent(window_s: float = 1.0) -> float:
    """Machine CPU use over a short measuring window, in % of one core."""
    before = machine_busy_seconds()
    time.sleep(window_s)  # the measuring window itself
    return round(100 * (machine_busy_seconds() - before) / window_s, 1)


def latency_text(latency: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.1f}" for name, value in latency.items()) + " ms"


def json_safe(value: Any) -> Any:
    """Numbers and containers JSON can hold: ∞/NaN as null, other objects as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def stop_process(
    process: subprocess.Popen[bytes] | None, timeout_s: float, sig: int = signal.SIGTERM
) -> None:
    """SIGTERM (or `sig`), wait up to `timeout_s`, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_quiet(max_wait_s: float, say: Callable[[str], None]) -> float:
    """Before anything starts: poll (up to `max_wait_s`) until other processes leave the machine quiet;
    the busy percentage it found, announced with `say` when it is still above the quiet level."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_percent()
    while busy > QUIET_BUSY_PERCENT and time.monotonic() < deadline:
        say(f"machine {busy:.0f} % of a core busy; waiting for quiet (up to {max_wait_s:g} s)")
        busy = busy_percent()
    if busy > QUIET_BUSY_PERCENT:
        say(f"!!! machine {busy:.0f} % of a core busy before start: other processes will disturb this run")
    return busy


class CpuMeter:
    """CPU time of named processes, RabbitMQ (when it runs) and the whole machine over a window, in % of
    one core. `foreign` is what the rest of the machine used: much of it means a disturbed run."""

    def __init__(self, pids: dict[str, int], *, rabbitmq: bool = True) -> None:
        rabbit = rabbitmq_pid() if rabbitmq else None
        self._pids = pids if rabbit is None else {**pids, "rabbitmq": rabbit}
        self._wall = time.monotonic()
        self._before = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._machine = machine_busy_seconds()

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        used = {name: cpu_seconds(pid) - self._before[name] for name, pid in self._pids.items()}
        used["machine"] = machine_busy_seconds() - self._machine
        used["foreign"] = max(0.0, used["machine"] - sum(used[name] for name in self._pids))
        return {name: round(100 * seconds / wall, 1) for name, seconds in used.items()}


def keep_logs(
    tmp: Path, directory: Path | None, patterns: tuple[str, ...], say: Callable[[str], None]
) -> None:
    """Copy the run's files matching `patterns` out of its temp dir before it is deleted."""
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for path in [found for pattern in patterns for found in tmp.glob(pattern)]:
        shutil.copy2(path, directory / path.name)
    say(f"{', '.join(patterns)} copied to {directory}")
