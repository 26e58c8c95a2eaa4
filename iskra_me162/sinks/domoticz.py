"""Domoticz P1 Smart Meter device.

One request per update, in the form Domoticz 2023.2 and later require:
``json.htm?type=command&param=udevice&idx=N&nvalue=0&svalue=U1;U2;R1;R2;CONS;PROD``.

Domoticz answers a malformed svalue with ``"status": "OK"`` and only shows "Invalid!" on the
device, so the values are made correct before sending (:class:`~iskra_me162.p1.P1Values` cannot
hold anything but six non-negative integers). Every failure becomes a one-line
:class:`~iskra_me162.errors.SinkError` whose text depends only on the cause (the daemon logs a
line per change of message); the next cycle sends the then current counters, so a failed push
loses nothing.

The HTTP side (requests, credentials, TLS, the error messages) is
:mod:`iskra_me162.sinks.domoticz_client`.
"""

from __future__ import annotations

import logging

from iskra_me162.derive.values import Values
from iskra_me162.p1 import P1Values, p1_values
from iskra_me162.sinks.domoticz_client import DomoticzClient, parse_domoticz_server

log = logging.getLogger(__name__)


class DomoticzSink:
    """Pushes the P1 values of each reading to one Domoticz P1 Smart Meter device."""

    name = "domoticz"

    def __init__(
        self,
        server: str,
        device_index: int,
        username: str = "",
        password: str = "",
        ca_file: str = "",
        verify_tls: bool = True,
        timeout: float = 10.0,
        swap_tariffs: bool = False,
    ) -> None:
        # 0 is no Domoticz idx, but it is left to Domoticz to say so (status ERR, a clear
        # SinkError) rather than failing start-up here.
        if type(device_index) is not int or device_index < 0:
            raise ValueError(
                f"the Domoticz device index must be a non-negative integer: {device_index!r}"
            )
        self._device_index = device_index
        self._swap_tariffs = swap_tariffs
        self._client = DomoticzClient(
            parse_domoticz_server(server),
            username=username,
            password=password,
            ca_file=ca_file,
            verify_tls=verify_tls,
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"DomoticzSink({self._client!r}, device_index={self._device_index})"

    def publish(self, values: Values) -> P1Values | None:
        """Send ``values``; return what was sent, or None when the reading has no power figure
        (P1 needs one: nothing sent, ``values.power_missing`` says why). SinkError when no
        correct update can be made or Domoticz failed."""
        p1 = p1_values(values, self._swap_tariffs)
        if p1 is None:
            log.debug("no power figure, nothing sent: %s", values.power_missing)
            return None
        self._client.udevice(self._device_index, p1.svalue)
        return p1

    def close(self) -> None:
        self._client.close()
