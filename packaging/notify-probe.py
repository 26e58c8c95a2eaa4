#!/usr/bin/python3
"""Play systemd's part of ``Type=notify`` for the installed daemon, without systemd.

There is no systemd running as PID 1 in a build container, so the unit cannot be started. This
probe checks the same contract the unit relies on: it starts ``CMD`` as the service user (with
the user's supplementary groups, like ``User=`` + ``SupplementaryGroups=``), hands it a notify
socket and ``WATCHDOG_USEC``, and expects, in order:

1. ``READY=1`` from the daemon's own pid, sent with the service user's uid;
2. a ``STATUS=`` line after the first readout and at least two ``WATCHDOG=1`` pings;
3. after SIGHUP: ``RELOADING=1`` and ``READY=1`` again;
4. after SIGTERM: ``STOPPING=1`` and exit status 0 within 5 seconds.

Usage: notify-probe.py USER CMD...   Prints one ``ok``/``FAIL`` line per step; exit 0 if all ok.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WATCHDOG_USEC = 2_000_000  # the daemon should ping every second
STEP_TIMEOUT = 30.0  # generous: a loaded 2-core machine, a 300-baud simulated readout


class Probe:
    def __init__(self, user: str, command: list[str]) -> None:
        self.user = pwd.getpwnam(user)
        self.directory = Path(tempfile.mkdtemp(prefix="iskra-notify-"))
        self.directory.chmod(0o755)
        self.address = str(self.directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.address)
        Path(self.address).chmod(0o666)  # the service user must be able to send to it
        environment = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "NOTIFY_SOCKET": self.address,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
        }
        # setpriv execs the command itself, so the daemon's pid is the child's pid.
        self.process = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={self.user.pw_uid}",
                f"--regid={self.user.pw_gid}",
                "--init-groups",
                "--",
                *command,
            ],
            env=environment,
            stdin=subprocess.DEVNULL,
        )
        self.messages: list[tuple[str, int, int]] = []  # (text, pid, uid)
        self.cursor = 0
        self.failures = 0

    def report(self, ok: bool, what: str) -> None:
        print(f"{'ok' if ok else 'FAIL'} - notify: {what}", flush=True)
        if not ok:
            self.failures += 1

    def receive(self, deadline: float) -> bool:
        """Store one datagram (with its sender's pid and uid); False when time ran out."""
        remaining = max(0.05, deadline - time.monotonic())
        if self.process.poll() is not None:
            remaining = min(remaining, 0.5)  # it has exited: only drain what it already sent
        self.sock.settimeout(remaining)
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(
                4096, socket.CMSG_SPACE(struct.calcsize("3i"))
            )
        except TimeoutError:
            return False
        pid = uid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _gid = struct.unpack("3i", payload[: struct.calcsize("3i")])
        self.messages.append((data.decode("utf-8", "replace"), pid, uid))
        return True

    def wait_for(self, matches: Callable[[str], bool], count: int = 1) -> tuple[str, int, int]:
        """The ``count``-th new message with a line that ``matches``; ("", -1, -1) on time-out.

        Messages are consumed in order, so each step only sees what came after the last one.
        """
        deadline = time.monotonic() + STEP_TIMEOUT
        seen = 0
        while True:
            while self.cursor < len(self.messages):
                message = self.messages[self.cursor]
                self.cursor += 1
                if any(matches(line) for line in message[0].splitlines()):
                    seen += 1
                    if seen >= count:
                        return message
            if time.monotonic() >= deadline or not self.receive(deadline):
                return ("", -1, -1)

    def run(self) -> int:
        try:
            text, pid, uid = self.wait_for(lambda line: line == "READY=1")
            self.report(bool(text), "READY=1 received")
            if text:
                self.report(pid == self.process.pid, f"sent by the daemon's own pid ({pid})")
                self.report(uid == self.user.pw_uid, f"sent as uid {uid} ({self.user.pw_name})")
                self.check_groups()
                status, _pid, _uid = self.wait_for(
                    lambda line: line.startswith("STATUS=") and " kWh" in line
                )
                self.report(bool(status), f"STATUS= after the first readout: {status.strip()!r}")
                pings = self.wait_for(lambda line: line == "WATCHDOG=1", count=2)
                self.report(bool(pings[0]), "WATCHDOG=1 pings")
                self.process.send_signal(signal.SIGHUP)
                reloading = self.wait_for(lambda line: line == "RELOADING=1")
                self.report(bool(reloading[0]), "SIGHUP: RELOADING=1")
                ready = self.wait_for(lambda line: line == "READY=1")
                self.report(bool(ready[0]), "SIGHUP: READY=1 again")
            self.process.send_signal(signal.SIGTERM)
            stopping = self.wait_for(lambda line: line == "STOPPING=1")
            try:
                exit_status = self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                exit_status = None
            self.report(bool(stopping[0]), "SIGTERM: STOPPING=1")
            self.report(exit_status == 0, f"SIGTERM: exit status 0 within 5 s ({exit_status})")
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.sock.close()
            Path(self.address).unlink(missing_ok=True)
            self.directory.rmdir()
        return 1 if self.failures else 0

    def check_groups(self) -> None:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        dialout = grp.getgrnam("dialout").gr_gid
        self.report(
            str(dialout) in groups.split()[1:], f"daemon runs with group dialout ({groups})"
        )


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("notify-probe: run it as root: it starts the daemon as another user", file=sys.stderr)
        return 2
    return Probe(argv[1], argv[2:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
