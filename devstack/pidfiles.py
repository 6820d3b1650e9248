"""PID files for processes the project starts: find them again, stop only them.

Shared by the stack, metrics and app managers so "stop only what we started" means the
same everywhere: a PID counts as ours only while its command line still contains the
hint we started it with (a reused PID belongs to someone else).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


def alive(pid: int) -> bool:
    """True for a running process (a zombie child of ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pid_if_ours(pid_file: Path, hint: str) -> int | None:
    """The PID in ``pid_file`` if that process still runs a command containing ``hint``."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        pid_file.unlink(missing_ok=True)
        return None
    if not cmdline and alive(pid):
        # mid-exec: with vfork the parent runs on before the child's command line exists
        return None  # (nothing to compare yet); keep the file
    if hint not in cmdline or not alive(pid):
        pid_file.unlink(missing_ok=True)  # gone, or the PID was reused
        return None
    return pid


def terminate(pid: int, name: str, group: bool = False, timeout_s: float = 15.0) -> None:
    """SIGTERM (the process group with ``group``), then SIGKILL after ``timeout_s``."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        log.warning("%s: still running after SIGTERM; sending SIGKILL", name)
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_if_ours(pid_file: Path, hint: str, name: str, group: bool = False,
                 timeout_s: float = 15.0) -> bool:
    """Stop the process in ``pid_file`` if it is ours; remove the file. True if stopped."""
    pid = pid_if_ours(pid_file, hint)
    if pid is None:
        return False
    terminate(pid, name, group=group, timeout_s=timeout_s)
    pid_file.unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
