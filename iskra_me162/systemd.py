"""Talk to systemd (sd_notify) without a dependency: READY=1, WATCHDOG=1, STATUS=, STOPPING=1.

Everything is a no-op when ``NOTIFY_SOCKET`` is not set (a terminal, ``--daemon``, Docker).
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify client plus the watchdog schedule systemd asked for (``WATCHDOG_USEC``)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract socket namespace
            address = "\0" + address[1:]
        self._address = address
        self._socket: socket.socket | None = None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._last_ping = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, message: str) -> None:
        if not self._address:
            return
        try:
            if self._socket is None:
                # Non-blocking: a systemd that does not read its queue (10 datagrams) must
                # cost us a lost notification, never a stalled meter loop or a late SIGTERM.
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as error:
            log.debug("sd_notify %r failed: %s", message.split("=", 1)[0], error)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def watchdog_due(self, now: float) -> float | None:
        """Monotonic time of the next ping, or None when systemd did not ask for pings."""
        if self.watchdog_interval is None:
            return None
        return self._last_ping + self.watchdog_interval

    def ping(self, now: float) -> None:
        self._last_ping = now
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
