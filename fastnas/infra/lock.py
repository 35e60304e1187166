"""The lock that makes a run directory one process's: ``DIR/.lock`` holds the owner's pid, host and start
time (O_EXCL create, so of two processes one wins); a lock whose process is gone is taken over."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fastnas.infra.errors import RunError

LOCK_NAME = ".lock"
_HELD: set[str] = set()  # run directories this process holds the lock of


def _proc_start(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks since boot, state) of a process, from /proc where there is one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[19], fields[0]


def _pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether the process that wrote a lock still runs: a zombie (killed, not yet reaped) does not, and
    neither does a new process that got the same pid (its start time differs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = _proc_start(pid)
    if now is None:
        return True
    ticks, state = now
    if state in ("Z", "X"):
        return False
    return start is None or start == ticks


def held_here(path: Path) -> bool:
    """Whether this process holds the lock of `path`."""
    return str(path.resolve()) in _HELD


def acquire_lock(path: Path) -> Path:
    """Create path/.lock holding our pid and host (O_EXCL: of two processes one wins). A lock whose
    process is gone (killed runs leave one) is taken over; a live one is a one-line error."""
    lock = path / LOCK_NAME
    start = (_proc_start(os.getpid()) or ("",))[0]
    me = f"{os.getpid()} {socket.gethostname()} {start}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                parts = lock.read_text().split()
                pid, host, started = int(parts[0]), (parts[1:2] or [""])[0], (parts[2:3] or [None])[0]
            except (OSError, ValueError, IndexError):
                pid, host, started = -1, "", None
            same_host = host in ("", socket.gethostname())
            ours_stale = pid == os.getpid() and str(path.resolve()) not in _HELD
            if pid > 0 and same_host and _pid_alive(pid, started or None) and not ours_stale:
                raise RunError(f"run directory {path} is in use by another run (pid {pid}): wait for it to "
                               "finish or choose another --out") from None
            if pid > 0 and not same_host:
                raise RunError(f"run directory {path} is locked by pid {pid} on host {host}: if that run is "
                               f"gone, delete {lock}") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        _HELD.add(str(path.resolve()))
        return lock
    raise RunError(f"could not lock run directory {path}")




def release_lock(path: Path) -> None:
    key = str(path.resolve())
    if key in _HELD:
        _HELD.discard(key)
        (path / LOCK_NAME).unlink(missing_ok=True)

