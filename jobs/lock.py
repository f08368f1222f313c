"""One job per output folder: a lock file holding pid, host and process start time.

A lock left by a killed driver (same host, that pid gone or reused by another process)
is stale and taken over; a live one is refused.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from augment.errors import ConfigError

LOCK_NAME = ".synthaug.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    if Path("/proc").is_dir():
        current = _process_start(pid)
        return current is not None and (start is None or current == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobLock:
    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._remove_if_stale():
                    holder = self._read()
                    raise ConfigError(
                        f"{self.path.parent}: another synthaug job is running on this folder "
                        f"(pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}); "
                        f"if it is not, delete {self.path}"
                    ) from None
                continue
            except OSError as error:  # a read-only or foreign folder: a usage error, not a crash
                raise ConfigError(f"{self.path.parent}: cannot write the job lock: {error.strerror or error}") \
                    from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise ConfigError(f"{self.path}: could not take the job lock")

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _remove_if_stale(self) -> bool:
        holder = self._read()
        if not holder:
            # Empty: a driver is between creating and writing it, or was killed right
            # there. Only the second is stale, and it is then older than a moment.
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            if age < 5:
                return False
            self.path.unlink(missing_ok=True)
            return True
        if holder.get("host") != socket.gethostname():
            return False
        if _alive(int(holder.get("pid", -1)), holder.get("start")):
            return False
        self.path.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
