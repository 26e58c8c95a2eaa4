"""The sink used when no Domoticz is configured: it logs the P1 values it would send.

This is what the demo shows and what a new user sees before setting up Domoticz: the same
counters and power computation as the Domoticz sink, with the log as the only output.
"""

from __future__ import annotations

import logging

from iskra_me162.p1 import P1Calculator, P1Values
from iskra_me162.readout import Readout
from iskra_me162.state import StateStore

log = logging.getLogger(__name__)


class LogOnlySink:
    name = "log"

    def __init__(
        self, swap_tariffs: bool = False, max_interval_s: float | None = None
    ) -> None:
        # No state file: nothing is sent anywhere, so there is nothing to remember across runs.
        self._p1 = P1Calculator(
            swap_tariffs=swap_tariffs, state=StateStore(None), max_interval_s=max_interval_s
        )

    def preview(self, readout: Readout) -> P1Values | None:
        return self._p1.preview(readout)

    def observe(self, readout: Readout) -> None:
        """Take a readout as the power baseline without logging a would-be update."""
        self._p1.use(readout)

    def publish(self, readout: Readout) -> P1Values | None:
        values = self._p1.use(readout)
        if values is None:
            log.info("no Domoticz configured; power needs a second readout before a P1 update")
        else:
            log.info("no Domoticz configured; would send svalue=%s", values.svalue)
        return values

    def close(self) -> None:
        """Nothing to release."""
