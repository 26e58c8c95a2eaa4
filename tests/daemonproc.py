"""Run the real ``iskra-me162`` process for end-to-end tests, and watch what it logs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_config(path: Path, **settings: object) -> Path:
    """A config file in the daemon's own syntax (strings quoted, booleans as True/False).

    Without a ``protocol`` it names mode C: with the default, "auto", a session that fails
    before the identification (the fault tests) would listen 4.5 s for SML frames each time
    (tests/test_auto_meter.py tests "auto").
    """
    if "port" in settings:
        settings.setdefault("protocol", "iec62056-21")
    lines = []
    for key, value in settings.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


class DaemonProcess:
    """``python -m iskra_me162 --config PATH [args]`` with stdout and stderr in a log file."""

    def __init__(
        self, config: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.config = config
        self.log_path = log or config.with_suffix(".log")
        environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        environment.pop("NOTIFY_SOCKET", None)
        environment.update(env or {})
        self._log_file = self.log_path.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iskra_me162", "--config", str(config), *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` lines; fail with the log."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            matches = [line for line in self.output.splitlines() if regex.search(line)]
            if len(matches) >= count:
                return matches
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.process.returncode}) before logging {pattern!r}:\n"
                    + self.output
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {pattern!r} within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds until it exited)."""
        if self.process.poll() is not None:
            return self.process.returncode, 0.0
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"daemon ignored SIGTERM for {timeout} s:\n{self.output}"
            ) from None
        return status, time.monotonic() - sent

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


class NotifySocket:
    """A stand-in for systemd's notification socket: collects what sd_notify() sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.1)
        self.messages: list[str] = []

    def collect(self, until: float) -> list[str]:
        while time.monotonic() < until:
            try:
                self.messages.append(self.socket.recv(4096).decode())
            except TimeoutError:
                continue
        return self.messages

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                for line in message.splitlines():
                    if line.startswith(prefix):
                        return line
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.socket.recv(4096).decode())
        raise AssertionError(f"no {prefix!r} notification within {timeout} s: {self.messages}")

    def close(self) -> None:
        self.socket.close()
