"""``protocol = "auto"``: find out whether the meter pushes SML or answers mode C, then read it.

When the port opens, the meter is first *listened to* at the SML speed (``sml_baudrate``, 8N1)
for :data:`LISTEN_S`: a push meter sends a frame every one to four seconds without being asked,
and a mode C meter never sends anything unasked, so listening costs a mode C meter nothing but
the time. A good frame, or frames that begin with the SML escape sequence but fail their CRC
(a misaligned head), make it an SML meter; silence or other bytes make it a mode C meter, and
the mode C handshake follows at once. A mode C session that meets the SML start sequence
after all (:class:`~iskra_me162.errors.WrongProtocol`) switches to SML.

The result is logged and kept until the port is closed (a port error, a reload): the next read
listens again, so a head moved to another meter is found out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from iskra_me162.config import SERIAL_FORMAT_DEFAULTS, Config
from iskra_me162.errors import MeterTimeout, WrongProtocol
from iskra_me162.readout import Readout
from iskra_me162.sml_meter import DEFAULT_FRAME_TIMEOUT, SmlMeter

if TYPE_CHECKING:
    from iskra_me162.daemon import Meter
    from iskra_me162.port import Port

log = logging.getLogger(__name__)

# Push meters send every 1 to 4 s; a frame takes under half a second at 9600 Bd. A little more
# than the longest period sees the start of at least one frame.
LISTEN_S = 4.5
SML = "sml"
MODE_C = "iec62056-21"

BuildMeter = Callable[[Config], "Meter"]


def config_for(config: Config, protocol: str) -> Config:
    """``config`` as if it named ``protocol``, with that protocol's serial format unless the
    file set one."""
    return dataclasses.replace(
        config,
        protocol=protocol,
        serial_format=config.serial_format or SERIAL_FORMAT_DEFAULTS[protocol],
    )


class AutoMeter:
    """A meter whose protocol is found when its port opens (see the module doc).

    ``build`` makes the meter for a configuration with a definite protocol (the daemon's
    ``build_meter``).
    """

    def __init__(self, config: Config, build: BuildMeter) -> None:
        self._config = config
        self._build = build
        listener = build(config_for(config, SML))
        assert isinstance(listener, SmlMeter)
        self._listener = listener
        self._inner: Meter | None = None  # the meter as found, until the port closes
        self._confirmed = False  # its protocol logged as confirmed by a good readout
        self.protocol = ""  # what the meter speaks, once known

    @property
    def port(self) -> Port:
        return (self._inner or self._listener).port

    @property
    def pushes(self) -> bool:
        return self._inner is not None and self._inner.pushes

    @property
    def fallbacks(self) -> int:
        """The mode C meter's high-speed fall-backs (0 before one is found)."""
        return getattr(self._inner, "fallbacks", 0)

    @property
    def stats(self) -> dict[str, int] | None:
        """The SML meter's frame counters once it is found to push, else None."""
        return self._listener.stats if self._inner is self._listener else None

    def read(self) -> Readout:
        if self._inner is None and (readout := self._listen()) is not None:
            return readout
        assert self._inner is not None
        try:
            readout = self._inner.read()
        except WrongProtocol as error:
            log.warning("protocol auto: %s; reading it as an SML meter from now on", error)
            self._inner.close()
            self._found(SML, self._listener)
            return self._listener.read()
        if self.protocol == MODE_C and not self._confirmed:
            self._confirmed = True
            log.info(
                'protocol auto: %s answers in mode C (protocol = "iec62056-21")',
                readout.identity.model or "the meter",
            )
        return readout

    def close(self) -> None:
        """Close the port; the next read finds out the protocol again."""
        if self._inner is not None:
            self._inner.close()
        self._listener.close()
        self._inner = None
        self.protocol = ""

    def _listen(self) -> Readout | None:
        """The first frame's readout when the meter pushes SML; else None, and the mode C
        meter is ready to be read."""
        listener = self._listener
        frames_before = _frames_seen(listener)
        listener.frame_timeout = LISTEN_S
        try:
            readout = listener.read()
        except MeterTimeout as silent:
            if _frames_seen(listener) > frames_before:
                log.warning(
                    "protocol auto: SML frames arrive but none intact yet (%s): it is an SML "
                    'meter (protocol = "sml")',
                    silent,
                )
                self._found(SML, listener)
                return None
            listener.close()
            log.info(
                "protocol auto: no SML frame within %g s at %d Bd, so not a push meter: "
                "trying the mode C handshake",
                LISTEN_S,
                self._config.sml_baudrate,
            )
            self._found(MODE_C, self._build(config_for(self._config, MODE_C)))
            return None
        finally:
            listener.frame_timeout = DEFAULT_FRAME_TIMEOUT
        log.info(
            'protocol auto: the meter pushes SML frames at %d Bd (protocol = "sml")',
            self._config.sml_baudrate,
        )
        self._found(SML, listener)
        return readout

    def _found(self, protocol: str, meter: Meter) -> None:
        self.protocol = protocol
        self._inner = meter
        self._confirmed = False


def _frames_seen(meter: SmlMeter) -> int:
    """Frames the SML reader found, intact or not (their start sequence was there)."""
    counts = meter.stats
    return sum(counts[name] for name in ("frames_ok", "crc_errors", "malformed", "truncated"))
