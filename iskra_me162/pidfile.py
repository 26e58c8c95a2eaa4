"""A pid file for ``--daemon``, as the context manager python-daemon expects.

A pid file left by a process that no longer runs (a crash, a power cut) is stale: it is replaced
with a log line instead of refusing to start. A pid file of a live process stops the start.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from iskra_me162.errors import IskraError


class PidFileError(IskraError):
    """Another instance runs, or the pid file cannot be written."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.stale_pid: int | None = None

    def check(self) -> None:
        """Raise PidFileError when a live process owns the pid file (call before detaching,
        while error messages still reach the terminal)."""
        try:
            old = int(self.path.read_text().strip() or "0")
        except (OSError, ValueError):
            old = 0
        if old and old != os.getpid() and _running(old):
            raise PidFileError(f"{self.path}: another iskra-me162 runs as pid {old}")
        if old:
            self.stale_pid = old
        if not self.path.parent.is_dir():
            try:
                self.path.parent.mkdir(mode=0o755, parents=True)
            except OSError as error:
                raise PidFileError(
                    f"cannot create {self.path.parent} for the pid file: {error.strerror}"
                ) from None

    def __enter__(self) -> PidFile:
        self.check()
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            temp.write_text(f"{os.getpid()}\n")
            temp.replace(self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise PidFileError(f"cannot write pid file {self.path}: {error.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if int(self.path.read_text().strip() or "0") == os.getpid():
                self.path.unlink()
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise
        except ValueError:
            pass
