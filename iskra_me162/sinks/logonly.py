"""The sink used when no Domoticz is configured: it logs the P1 values it would send.

This is what the demo shows and what a new user sees before setting up Domoticz: the same
svalue the Domoticz sink would send for the same readout.
"""

from __future__ import annotations

import logging

from iskra_me162.derive.values import Values
from iskra_me162.p1 import P1Values, p1_values

log = logging.getLogger(__name__)


class LogOnlySink:
    name = "log"

    def __init__(self, swap_tariffs: bool = False) -> None:
        self._swap_tariffs = swap_tariffs

    def preview(self, values: Values) -> P1Values | None:
        """What a Domoticz sink would send (None: no power figure for this readout)."""
        return p1_values(values, self._swap_tariffs)

    def publish(self, values: Values) -> P1Values | None:
        p1 = self.preview(values)
        if p1 is None:
            log.info(
                "no Domoticz configured; no P1 update for this readout: %s", values.power_missing
            )
        else:
            log.info("no Domoticz configured; would send svalue=%s", p1.svalue)
        return p1

    def close(self) -> None:
        """Nothing to release."""
