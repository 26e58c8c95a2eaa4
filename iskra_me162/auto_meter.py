"""``protocol = "auto"``: find out whether the meter answers mode C or pushes SML, then read it.

When the port opens, the mode C handshake is tried first (the request at 300 Bd 7E1): a mode
C meter answers with its identification within 1.5 s, so finding it costs nothing, and a
``--once`` takes no longer than with the protocol named. A push meter ignores the request; its
frames arrive garbled at 300 Bd, or (a head that passes bytes through unchanged) with the SML
start sequence, which ends the session at once (:class:`~iskra_me162.errors.WrongProtocol`).
Without an identification the meter is then *listened to* at the SML speed (``sml_baudrate``,
8N1) for :data:`LISTEN_S`: a push meter sends a frame every one to four seconds unasked. A good
frame, or frames that begin with the SML escape sequence but fail their CRC (a misaligned
head), make it an SML meter. A meter that sent an identification is a mode C meter whatever
failed after it (a baud switch it does not make: the next readouts are at 300 Bd).

The result is logged and kept until the port is closed (a port error, a reload): the next read
finds out again, so a head moved to another meter is found out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from iskra_me162.config import SERIAL_FORMAT_DEFAULTS, Config
from iskra_me162.errors import MeterTimeout, ProtocolError, WrongProtocol
from iskra_me162.meters import IecMeter
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
        listener = build(config_for(config, SML))
        assert isinstance(listener, SmlMeter)
        self._listener = listener
        mode_c = build(config_for(config, MODE_C))
        assert isinstance(mode_c, IecMeter)
        self._mode_c = mode_c
        self._inner: Meter | None = None  # the meter as found, until the port closes
        self.protocol = ""  # what the meter speaks, once known

    @property
    def port(self) -> Port:
        return (self._inner or self._mode_c).port

    @property
    def pushes(self) -> bool:
        return self._inner is not None and self._inner.pushes

    @property
    def fallbacks(self) -> int:
        """The mode C meter's high-speed fall-backs."""
        return self._mode_c.fallbacks

    @property
    def stats(self) -> dict[str, int] | None:
        """The SML meter's frame counters once it is found to push, else None."""
        return self._listener.stats if self._inner is self._listener else None

    def read(self) -> Readout:
        if self._inner is None:
            return self._find()
        try:
            return self._inner.read()
        except WrongProtocol as error:
            if self._inner is self._listener:
                raise
            return self._switch_to_sml(str(error))

    def close(self) -> None:
        """Close the port; the next read finds out the protocol again."""
        self._mode_c.close()
        self._listener.close()
        self._inner = None
        self.protocol = ""

    def _find(self) -> Readout:
        """Mode C first; without an identification, listen for SML frames."""
        mode_c = self._mode_c
        mode_c.identification = None
        try:
            readout = mode_c.read()
        except WrongProtocol as error:
            return self._switch_to_sml(str(error))
        except (MeterTimeout, ProtocolError) as error:
            if mode_c.identification is not None:
                self._found(MODE_C, mode_c, mode_c.identification.ident)
                raise
            mode_c.close()
            log.info(
                "protocol auto: no mode C identification (%s): listening for SML frames at %d Bd",
                error,
                self._config.sml_baudrate,
            )
            return self._listen(error)
        self._found(MODE_C, mode_c, readout.identity.model)
        return readout

    def _listen(self, mode_c_error: Exception) -> Readout:
        """The first frame's readout when the meter pushes SML; else the mode C error, with
        what the listening found."""
        listener = self._listener
        frames_before = _frames_seen(listener)
        listener.frame_timeout = LISTEN_S
        try:
            readout = listener.read()
        except MeterTimeout as silent:
            if _frames_seen(listener) > frames_before:
                self._found(SML, listener)
                raise MeterTimeout(f"SML frames arrive, none intact yet: {silent}") from None
            listener.close()
            raise type(mode_c_error)(
                f"{mode_c_error}; and no SML frame within {LISTEN_S:g} s at "
                f"{self._config.sml_baudrate} Bd either"
            ) from None
        finally:
            listener.frame_timeout = DEFAULT_FRAME_TIMEOUT
        self._found(SML, listener)
        return readout

    def _switch_to_sml(self, why: str) -> Readout:
        log.info("protocol auto: %s", why)
        self._mode_c.close()
        self._found(SML, self._listener)
        return self._listener.read()

    def _found(self, protocol: str, meter: Meter, model: str = "") -> None:
        self.protocol = protocol
        self._inner = meter
        if protocol == SML:
            log.info(
                'protocol auto: the meter pushes SML frames at %d Bd (protocol = "sml")',
                self._config.sml_baudrate,
            )
        else:
            log.info(
                'protocol auto: %s answers in mode C (protocol = "iec62056-21")',
                model or "the meter",
            )


def _frames_seen(meter: SmlMeter) -> int:
    """Frames the SML reader found, intact or not (their start sequence was there)."""
    counts = meter.stats
    return sum(counts[name] for name in ("frames_ok", "crc_errors", "malformed", "truncated"))
