"""A simulated SML push meter (profile ``mt175``): a frame every ``interval`` seconds at 9600 8N1.

An ISKRA MT175 (and every other German "moderne Messeinrichtung") does not wait to be asked: its
info interface pushes one SML transport v1 frame (PublicOpen.Res, GetList.Res, PublicClose.Res)
every second or two. This module holds

* :class:`SmlPushModel`, the meter as a sans-I/O model: :meth:`~SmlPushModel.pushes_due` hands
  out every frame whose time has come as a :class:`Push` (a timed
  :class:`~iskra_me162.simulator.model.Transmission` plus the :class:`ServedFrame` record of
  what it contained), so runners only move bytes and keep time;
* :class:`SmlPushConfig` / :class:`SmlFaults` and their text options (``sim://mt175?...``,
  ``python -m iskra_me162.simulator --profile mt175 ...``, control files);
* :class:`SmlPtyMeter`, the model behind a pseudo-terminal (a :class:`PtyMeter` that pushes);
  the ``sim://`` handler in :mod:`iskra_me162.urlhandler.protocol_sim` serves it in-process;
* :func:`garble_8n1`: what a UART at another baud rate makes of the 8N1 bit stream.

The frame follows the ISKRA MT175 layout byte for byte (manufacturer ``ISK``, server id, 1.8.0
with a status word, 1.8.1, 1.8.2, 2.8.0, 2.8.1, 2.8.2, 16.7.0, public key). The counters hold
integer tenths of Wh and are computed from the clock since the last power or tariff change, so
they never drift. The meter counts in tariff 1 by default, so 1.8.1 repeats the total as on
a real MT175.

Faults, all off by default and changeable while running: ``corrupt_every`` (one bit of the
1.8.0 value flipped after the CRC was computed), ``truncate_every`` (half a frame),
``garbage`` (noise bytes before every frame), ``escape`` (the public key contains 1b1b1b1b,
so the transport must escape it), ``no_pin`` (PIN not entered: whole kWh only, scaler +3, no
power entry), ``silent`` (no frames) and ``echo`` (the head echoes what the reader writes).
A reader at another baud rate than the meter gets what its UART would make of the bits.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import select
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from os import PathLike
from typing import Any

from iskra_me162.errors import ConfigError
from iskra_me162.simulator.line import byte_time
from iskra_me162.simulator.model import Transmission
from iskra_me162.simulator.options import _bool, _float, _int, parse_control_text
from iskra_me162.simulator.pty_meter import _ISPEED, _MIN_SLICE, PtyMeter, _Outgoing
from iskra_me162.simulator.sml_encoder import ListEntry, escape, push_frame

log = logging.getLogger(__name__)

SML_PUSH_PROFILES = frozenset({"mt175"})
PUSH_BAUD = 9600
UNIT_W = 27
UNIT_WH = 30
TENTHS_MODULUS = 10**11  # 10 digits of Wh: registers roll over like a meter's
_WUS_PER_TENTH = 360_000_000  # 0.1 Wh = 360 J = 360 W*s = 3.6e8 W*µs
_MAX_POWER_W = 10_000_000
_MAX_BACKLOG = 8  # frames a late runner still gets; older ones were lost, as on a full UART
_BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_LIST_NAME = bytes((1, 0, 98, 10, 255, 255))  # 1-0:98.10.255*255 as MT175 names its list
_SENSOR_TIME_BASE = 190_000_000  # seconds the meter has been running (secIndex), roughly
_STATUS_1_8_0 = 0x0001_0182

_MANUFACTURER = bytes((129, 129, 199, 130, 3, 255))
_SERVER_ID = bytes((1, 0, 0, 0, 9, 255))
_PUBLIC_KEY = bytes((129, 129, 199, 130, 5, 255))
_POWER = bytes((1, 0, 16, 7, 0, 255))


def _energy_code(direction: int, tariff: int) -> bytes:
    return bytes((1, 0, direction, 8, tariff, 255))


def _obis_text(code: bytes) -> str:
    a, b, c, d, e, f = code
    return f"{a}-{b}:{c}.{d}.{e}*{f}"


# --- the line ----------------------------------------------------------------------------------
def garble_8n1(data: bytes, sent_baud: int, heard_baud: int) -> bytes:
    """What an 8N1 receiver at ``heard_baud`` delivers for ``data`` sent 8N1 at ``sent_baud``.

    The same model as :func:`iskra_me162.simulator.line.garble` (which is 7E1) for 8 data bits
    and no parity: the receiver waits for a space, checks the start bit in its middle, samples
    the 8 data bits in their middles and delivers the byte even when the stop bit is wrong.
    Equal rates give ``data`` back unchanged.
    """
    if sent_baud == heard_baud:
        return bytes(data)
    if sent_baud <= 0 or heard_baud <= 0:
        return b""
    levels = bytearray()
    for byte in data:
        levels.append(0)  # start bit
        levels.extend((byte >> bit) & 1 for bit in range(8))
        levels.append(1)  # stop bit
    count = len(levels)
    # Integer time in units of 1 / (2 * sent * heard) s: one sent bit is 2*heard units, half a
    # received bit is sent units, so every sampling instant is exact.
    sent_bit = 2 * heard_baud
    half = sent_baud

    def level(instant: int) -> int:
        index = instant // sent_bit
        return levels[index] if index < count else 1

    heard = bytearray()
    instant = 0
    while True:
        index = instant // sent_bit
        while index < count and levels[index]:
            index += 1
        if index >= count:
            return bytes(heard)
        edge = max(instant, index * sent_bit)
        if level(edge + half):
            instant = edge + half  # a glitch shorter than half a bit is no start bit
            continue
        byte = 0
        for bit in range(8):
            byte |= level(edge + (2 * bit + 3) * half) << bit
        heard.append(byte)
        instant = edge + 19 * half  # the middle of the stop bit


# --- counters ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushRegisters:
    """The registers at one instant: tenths of Wh per tariff (T1, T2), power in W."""

    import_tenths: tuple[int, int]
    export_tenths: tuple[int, int]
    import_w: int
    export_w: int
    tariff: int

    @property
    def import_total_tenths(self) -> int:
        return sum(self.import_tenths) % TENTHS_MODULUS

    @property
    def export_total_tenths(self) -> int:
        return sum(self.export_tenths) % TENTHS_MODULUS

    @property
    def import_total_wh(self) -> Decimal:
        return Decimal(self.import_total_tenths).scaleb(-1)

    @property
    def export_total_wh(self) -> Decimal:
        return Decimal(self.export_total_tenths).scaleb(-1)


class PushCounters:
    """Import and export registers in integer tenths of Wh, advancing at a set power.

    The energy of the current stretch (since the last power or tariff change) is computed from
    the elapsed time in whole microseconds: ``floor(P * t / 360 J)`` exactly, so no rounding
    piles up however often one looks. Energy below a tenth is carried into the next stretch.
    """

    def __init__(
        self,
        now: float,
        *,
        import_tenths: tuple[int, int],
        export_tenths: tuple[int, int],
        import_w: int,
        export_w: int,
        tariff: int,
    ) -> None:
        self._import = list(import_tenths)
        self._export = list(export_tenths)
        self._import_w = import_w
        self._export_w = export_w
        self._tariff = tariff
        self._since = now
        self._carry = [0, 0]  # W*µs not yet worth a tenth: import, export

    def _stretch(self, now: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """(tenths, carry) for import and export since the stretch began."""
        micros = max(0, round((now - self._since) * 1_000_000))
        imported = divmod(self._import_w * micros + self._carry[0], _WUS_PER_TENTH)
        exported = divmod(self._export_w * micros + self._carry[1], _WUS_PER_TENTH)
        return imported, exported

    def snapshot(self, now: float) -> PushRegisters:
        (imported, _), (exported, _) = self._stretch(now)
        index = self._tariff - 1
        import_tenths = list(self._import)
        export_tenths = list(self._export)
        import_tenths[index] = (import_tenths[index] + imported) % TENTHS_MODULUS
        export_tenths[index] = (export_tenths[index] + exported) % TENTHS_MODULUS
        return PushRegisters(
            (import_tenths[0], import_tenths[1]),
            (export_tenths[0], export_tenths[1]),
            self._import_w,
            self._export_w,
            self._tariff,
        )

    def _close_stretch(self, now: float) -> None:
        if now <= self._since:
            return
        registers = self.snapshot(now)
        (_, import_carry), (_, export_carry) = self._stretch(now)
        self._import = list(registers.import_tenths)
        self._export = list(registers.export_tenths)
        self._carry = [import_carry, export_carry]
        self._since = now

    def set_power(self, now: float, import_w: int | None, export_w: int | None) -> None:
        for watts in (import_w, export_w):
            if watts is not None:
                _check_power(watts)
        self._close_stretch(now)
        if import_w is not None:
            self._import_w = import_w
        if export_w is not None:
            self._export_w = export_w

    def set_tariff(self, now: float, tariff: int) -> None:
        _check_tariff(tariff)
        self._close_stretch(now)
        self._tariff = tariff


def _check_power(watts: object) -> None:
    if not isinstance(watts, int) or isinstance(watts, bool) or not 0 <= watts <= _MAX_POWER_W:
        raise ConfigError(f"power must be a whole number 0..{_MAX_POWER_W} W, not {watts!r}")


def _check_tariff(tariff: object) -> None:
    if tariff not in (1, 2):
        raise ConfigError(f"tariff must be 1 or 2 for an SML push meter, not {tariff!r}")


# --- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SmlFaults:
    """Ways the simulated push meter (or its IR head) misbehaves. All off by default.

    ``*_every`` = N spoils frames N, 2N, 3N ... (counted from 1 since start; truncation wins
    when both apply).
    """

    corrupt_every: int = 0  # one bit of the 1.8.0 value flipped after the CRC was computed
    truncate_every: int = 0  # only the first half of the frame goes out
    garbage: int = 0  # this many noise bytes before every frame
    escape: bool = False  # the public key holds 1b1b1b1b sequences: the transport escapes them
    no_pin: bool = False  # PIN not entered: energy in whole kWh (scaler +3), no 16.7.0
    silent: bool = False  # sends nothing (head not on the meter, info interface off)
    echo: bool = False  # the head sends back what the reader writes

    def __post_init__(self) -> None:
        for name in ("corrupt_every", "truncate_every", "garbage"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65536:
                raise ConfigError(f"{name} must be a whole number 0..65536, not {value!r}")


@dataclass(frozen=True)
class SmlPushConfig:
    """Everything that defines one simulated push meter.

    ``serial`` is the number in the server id (``0a 01 'ISK' 00`` + 4 bytes). Start values are
    in tenths of Wh per tariff. ``energy_scaler`` (-1: tenths of Wh, as MT175 with PIN) and
    ``power_scaler`` (0: whole W, -1: tenths, ...) set how values are sent; ``speedup``
    shortens the time each byte takes on the line (``inf``: a frame arrives at once), not the
    interval.
    """

    profile: str = "mt175"
    serial: int = 70347617
    import_w: int = 500
    export_w: int = 0
    tariff: int = 1
    import_tenths: tuple[int, int] = (123_456_789, 0)
    export_tenths: tuple[int, int] = (134_650, 0)
    interval: float = 1.0
    baud: int = PUSH_BAUD
    speedup: float = 1.0
    energy_scaler: int = -1
    power_scaler: int = 0
    faults: SmlFaults = field(default_factory=SmlFaults)

    def __post_init__(self) -> None:
        if self.profile not in SML_PUSH_PROFILES:
            raise ConfigError(f"unknown SML push profile {self.profile!r}")
        if not isinstance(self.serial, int) or not 0 <= self.serial <= 0xFFFFFFFF:
            raise ConfigError(f"serial must be 0..4294967295, not {self.serial!r}")
        _check_power(self.import_w)
        _check_power(self.export_w)
        _check_tariff(self.tariff)
        for name in ("import_tenths", "export_tenths"):
            values = getattr(self, name)
            if len(values) != 2 or not all(0 <= value < TENTHS_MODULUS for value in values):
                raise ConfigError(f"{name} needs 2 values 0..{TENTHS_MODULUS - 1}, not {values}")
        if not (isinstance(self.interval, (int, float)) and 0.01 <= self.interval <= 3600):
            raise ConfigError(f"interval must be 0.01..3600 s, not {self.interval!r}")
        if self.baud not in _BAUD_RATES:
            raise ConfigError(f"baud must be one of {_BAUD_RATES}, not {self.baud!r}")
        if not self.speedup > 0:
            raise ConfigError(f"speedup must be > 0 (inf: no pacing), not {self.speedup!r}")
        if self.energy_scaler not in range(-1, 4):
            raise ConfigError(f"energy_scaler must be -1..3, not {self.energy_scaler!r}")
        if self.power_scaler not in range(-2, 1):
            raise ConfigError(f"power_scaler must be -2..0, not {self.power_scaler!r}")

    @property
    def server_id(self) -> bytes:
        """DIN 43863-5 style: medium, version, manufacturer flag ``ISK``, 00, 4-byte number."""
        return b"\x0a\x01ISK\x00" + self.serial.to_bytes(4, "big")


# --- what the meter sent -----------------------------------------------------------------------
@dataclass(frozen=True)
class ServedFrame:
    """What one frame contained, for people and tests to compare with what a reader decoded.

    ``values`` are ``(OBIS, exact value, unit)`` of the numeric entries as the meter meant
    them (before any fault); ``fault`` names the damage done on purpose ("" when the frame went
    out intact); ``frame`` is the intact frame, ``wire`` what went on the line (garbage and
    damage included).
    """

    number: int
    at: float
    baud: int
    server_id: bytes
    values: tuple[tuple[str, Decimal, str], ...]
    fault: str = ""
    frame: bytes = field(default=b"", repr=False)
    wire: bytes = field(default=b"", repr=False)

    def value(self, code: str) -> Decimal:
        """The value of ``1-0:1.8.0*255`` or of the current register ``1.8.0``."""
        return self._find(code)[1]

    def unit(self, code: str) -> str:
        return self._find(code)[2]

    def has(self, code: str) -> bool:
        try:
            self._find(code)
        except KeyError:
            return False
        return True

    def _find(self, code: str) -> tuple[str, Decimal, str]:
        for item in self.values:
            text = item[0]
            if text == code or text == f"1-0:{code}*255":
                return item
        raise KeyError(code)


@dataclass(frozen=True)
class Push:
    """A frame on its way: the bytes with their timing, and the record of what it holds."""

    transmission: Transmission
    frame: ServedFrame


# --- the meter ---------------------------------------------------------------------------------
class SmlPushModel:
    """One simulated push meter. Not thread-safe: a runner calls it from one thread at a time.

    Frames are due at ``start + k * interval`` (k = 1, 2, ...; computed, not summed, so the
    cadence does not drift); a frame that would start while the previous one is still on the
    line waits for it. A push meter does not listen: :meth:`receive` ignores every byte.
    """

    def __init__(self, config: SmlPushConfig, now: float) -> None:
        self._config = config
        self.faults = config.faults
        self._counters = PushCounters(
            now,
            import_tenths=config.import_tenths,
            export_tenths=config.export_tenths,
            import_w=config.import_w,
            export_w=config.export_w,
            tariff=config.tariff,
        )
        self._started = now
        self._slot = 1
        self._busy_until = float("-inf")
        self._frames = 0
        self._transaction = (config.serial * 7919) & 0xFFFF_FF00  # any start will do
        self.history: deque[ServedFrame] = deque(maxlen=64)

    @property
    def config(self) -> SmlPushConfig:
        return self._config

    @property
    def listen_baud(self) -> int:
        return self._config.baud

    def listen_baud_at(self, now: float) -> int:
        return self._config.baud

    def receive(self, data: bytes, now: float, sent: bytes | None = None) -> list[Transmission]:
        """The info interface of a push meter has no receiver worth the name: nothing happens."""
        return []

    def registers(self, now: float) -> PushRegisters:
        return self._counters.snapshot(now)

    def set_power(
        self, now: float, import_w: int | None = None, export_w: int | None = None
    ) -> None:
        self._counters.set_power(now, import_w, export_w)

    def set_tariff(self, now: float, tariff: int) -> None:
        self._counters.set_tariff(now, tariff)

    @property
    def next_push_at(self) -> float:
        """When the next frame starts (if it is not silenced)."""
        return max(self._started + self._slot * self._config.interval, self._busy_until)

    def pushes_due(self, now: float) -> list[Push]:
        """Every frame that has started by ``now`` and was not handed out yet (at most the
        last ``_MAX_BACKLOG`` of them: a runner that looks late lost the older ones)."""
        interval = self._config.interval
        behind = int((now - self._started) / interval) - self._slot + 1
        if behind > _MAX_BACKLOG:
            self._slot += behind - _MAX_BACKLOG
        pushes = []
        while (start := self.next_push_at) <= now:
            self._slot += 1
            if not self.faults.silent:
                pushes.append(self._push(start))
        return pushes

    def _push(self, start: float) -> Push:
        config = self._config
        faults = self.faults
        self._frames += 1
        number = self._frames
        registers = self._counters.snapshot(start)
        entries, values = self._entries(registers, faults)
        frame = push_frame(
            server_id=config.server_id,
            transaction=self._transaction,
            req_file_id=((0x0630_0000 + number) & 0xFFFF_FFFF).to_bytes(4, "big"),
            list_name=_LIST_NAME,
            sensor_seconds=_SENSOR_TIME_BASE + int(start - self._started),
            entries=entries,
        )
        self._transaction = (self._transaction + 3) & 0xFFFF_FFFF
        if _every(faults.truncate_every, number):
            wire, fault = frame[: len(frame) // 2], "truncated"
        elif _every(faults.corrupt_every, number):
            wire, fault = _flip_last_value_bit(frame, entries[2]), "corrupt"
        else:
            wire, fault = frame, ""
        if faults.garbage:
            wire = _garbage(faults.garbage, number) + wire
        line_time = byte_time(config.baud, config.speedup)
        transmission = Transmission(wire, config.baud, start, line_time)
        self._busy_until = transmission.end
        served = ServedFrame(
            number, start, config.baud, config.server_id, values, fault, frame, wire
        )
        self.history.append(served)
        return Push(transmission, served)

    def _entries(
        self, registers: PushRegisters, faults: SmlFaults
    ) -> tuple[list[ListEntry], tuple[tuple[str, Decimal, str], ...]]:
        config = self._config
        energy_scaler = 3 if faults.no_pin else config.energy_scaler
        divisor = 10 ** (energy_scaler + 1)  # from tenths of Wh
        entries = [
            ListEntry(_MANUFACTURER, b"ISK"),
            ListEntry(_SERVER_ID, config.server_id),
        ]
        values = []
        for direction, tenths in ((1, registers.import_tenths), (2, registers.export_tenths)):
            for tariff, amount in enumerate((sum(tenths) % TENTHS_MODULUS, *tenths)):
                code = _energy_code(direction, tariff)
                sent = amount // divisor
                status = _STATUS_1_8_0 if (direction, tariff) == (1, 0) else None
                entries.append(ListEntry(code, sent, UNIT_WH, energy_scaler, status=status))
                values.append((_obis_text(code), Decimal(sent).scaleb(energy_scaler), "Wh"))
        if not faults.no_pin:
            watts = registers.import_w - registers.export_w
            sent = watts * 10**-config.power_scaler
            entries.append(ListEntry(_POWER, sent, UNIT_W, config.power_scaler, width=4))
            values.append((_obis_text(_POWER), Decimal(sent).scaleb(config.power_scaler), "W"))
        entries.append(ListEntry(_PUBLIC_KEY, _public_key(config.serial, faults.escape)))
        return entries, tuple(values)


def _every(period: int, number: int) -> bool:
    return period > 0 and number % period == 0


def _flip_last_value_bit(frame: bytes, entry: ListEntry) -> bytes:
    """Flip bit 0 of the last value byte of ``entry`` in the finished frame (CRC unchanged)."""
    encoded = escape(entry.encode())
    position = frame.find(encoded)
    if position < 0:
        raise RuntimeError("the 1.8.0 entry is not in its own frame")  # a bug of this module
    damaged = bytearray(frame)
    damaged[position + len(encoded) - 2] ^= 0x01  # the byte before the absent signature
    return bytes(damaged)


# Bytes that make noise look like the start of something: escapes, start and end marks.
_GARBAGE_ALPHABET = b"\x1b\x1b\x1b\x01\x1a\x00"


def _garbage(length: int, number: int) -> bytes:
    rng = random.Random(f"sml-garbage-{number}")  # the same noise for the same frame number
    return bytes(
        rng.choice(_GARBAGE_ALPHABET) if rng.random() < 0.5 else rng.randrange(256)
        for _ in range(length)
    )


def _public_key(serial: int, with_escapes: bool) -> bytes:
    """48 bytes like the meter's public key (129-129:199.130.5).

    Normally free of 0x1b. With ``with_escapes`` it holds 1b1b1b1b four times, at offsets that
    fall on all four positions modulo 4 whatever the frame layout, followed by what a frame
    reader must not take for a frame start (01010101) or end (1a), so every escape case of the
    transport is exercised.
    """
    rng = random.Random(f"sml-key-{serial}")
    key = bytearray(rng.choice(range(0x1C, 0x100)) for _ in range(48))
    if with_escapes:
        key[0:8] = b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01"
        key[9:14] = b"\x1b\x1b\x1b\x1b\x1a"
        key[18:23] = b"\x1b\x1b\x1b\x1b\x00"
        key[27:31] = b"\x1b\x1b\x1b\x1b"
    return bytes(key)


def format_frame(frame: ServedFrame) -> str:
    """One line per frame for the command line: number, rate, values, fault."""
    values = " ".join(f"{code}={value:f}{unit}" for code, value, unit in frame.values)
    fault = f" [fault: {frame.fault}]" if frame.fault else ""
    return f"frame {frame.number} at {frame.baud} Bd: {values}{fault}"


# --- text options ------------------------------------------------------------------------------
def _serial(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError("expected digits")
    return int(text.strip())


def _tenths(text: str) -> tuple[int, int]:
    """``12345.6`` or ``12345.6,0`` (Wh per tariff, at most one decimal) -> tenths of Wh."""
    parts = [part.strip() for part in text.split(",")]
    if not 1 <= len(parts) <= 2:
        raise ValueError("expected 1 or 2 values (tariff 1, tariff 2) in Wh")
    tenths = []
    for part in parts:
        try:
            value = Decimal(part) * 10
        except ArithmeticError:
            raise ValueError(f"{part!r} is not a number") from None
        if not value.is_finite() or value != value.to_integral_value():
            raise ValueError(f"{part!r}: Wh with at most one decimal")
        tenths.append(int(value))
    return (tenths[0], tenths[1] if len(tenths) > 1 else 0)


_CONFIG_OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "serial": ("serial", _serial),
    "power": ("import_w", _int),
    "export": ("export_w", _int),
    "tariff": ("tariff", _int),
    "import_wh": ("import_tenths", _tenths),
    "export_wh": ("export_tenths", _tenths),
    "interval": ("interval", _float),
    "baud": ("baud", _int),
    "speedup": ("speedup", _float),
    "energy_scaler": ("energy_scaler", _int),
    "power_scaler": ("power_scaler", _int),
}
_FAULT_OPTIONS: dict[str, Callable[[str], object]] = {
    "corrupt_every": _int,
    "truncate_every": _int,
    "garbage": _int,
    "escape": _bool,
    "no_pin": _bool,
    "silent": _bool,
    "echo": _bool,
}
SML_RUNTIME_OPTIONS = frozenset({*_FAULT_OPTIONS, "power", "export", "tariff"})
SML_OPTION_NAMES = frozenset({"profile", *_CONFIG_OPTIONS, *_FAULT_OPTIONS})


def _parse(name: str, parser: Callable[[str], object], text: str) -> Any:
    try:
        return parser(text)
    except ValueError as error:
        raise ConfigError(f"simulator option {name}={text!r}: {error}") from None


def parse_sml_faults(options: Mapping[str, str], base: SmlFaults | None = None) -> SmlFaults:
    """``base`` (default: no faults) with the fault options in ``options`` applied."""
    changes = {}
    for name, text in options.items():
        if name not in _FAULT_OPTIONS:
            raise ConfigError(f"unknown SML push meter fault option {name!r}")
        changes[name] = _parse(name, _FAULT_OPTIONS[name], text)
    return dataclasses.replace(base or SmlFaults(), **changes)


def parse_sml_push_config(options: Mapping[str, str], profile: str = "mt175") -> SmlPushConfig:
    """An :class:`SmlPushConfig` from text options; ``options['profile']`` wins."""
    changes: dict[str, Any] = {}
    fault_texts: dict[str, str] = {}
    for name, text in options.items():
        if name == "profile":
            profile = text
        elif name in _CONFIG_OPTIONS:
            attribute, parser = _CONFIG_OPTIONS[name]
            changes[attribute] = _parse(name, parser, text)
        elif name in _FAULT_OPTIONS:
            fault_texts[name] = text
        else:
            known = ", ".join(sorted(SML_OPTION_NAMES))
            raise ConfigError(
                f"option {name!r} does not apply to an SML push meter (known: {known})"
            )
    return SmlPushConfig(profile=profile.lower(), faults=parse_sml_faults(fault_texts), **changes)


def apply_control_text(
    meter: SmlPtyMeter, text: str, path: str, base_faults: SmlFaults
) -> SmlFaults:
    """Apply a control file (``name = value`` lines) to a running meter; faults not named
    there fall back to ``base_faults``. Raises ConfigError and then changes nothing."""
    options = parse_control_text(text, path, allowed=SML_RUNTIME_OPTIONS)
    fault_texts = {name: value for name, value in options.items() if name in _FAULT_OPTIONS}
    faults = parse_sml_faults(fault_texts, base_faults)
    numbers = {
        name: _parse(name, _int, value)
        for name, value in options.items()
        if name not in _FAULT_OPTIONS
    }
    for name in ("power", "export"):
        if name in numbers:
            _check_power(numbers[name])
    if "tariff" in numbers:
        _check_tariff(numbers["tariff"])
    meter.set_faults(faults)
    if "power" in numbers or "export" in numbers:
        meter.set_power(numbers.get("power"), numbers.get("export"))
    if "tariff" in numbers:
        meter.set_tariff(numbers["tariff"])
    return faults


# --- the pty runner ----------------------------------------------------------------------------
class SmlPtyMeter(PtyMeter):
    """An :class:`SmlPushModel` served on a pty (optionally behind the symlink ``link``).

    Everything about the pty (plugging, unplugging, the reader's baud rate, nobody listening)
    is :class:`PtyMeter`'s; this class adds the pushing. A frame goes out when it is due if a
    reader has the pty open; otherwise it is lost, as light that nobody catches. The reader's
    input rate is taken when a frame starts; at another rate than the meter's it gets what its
    UART would make of the bits (:func:`garble_8n1`). ``on_frame`` is called on the serving
    thread with the record of every frame the meter pushes.
    """

    def __init__(
        self,
        link: str | PathLike[str] | None = None,
        config: SmlPushConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_frame: Callable[[ServedFrame], None] | None = None,
    ) -> None:
        self._push_model = SmlPushModel(config or SmlPushConfig(), clock())
        self._on_frame = on_frame
        super().__init__(link, clock=clock, model=self._push_model)

    @property
    def frames(self) -> list[ServedFrame]:
        """The last (up to 64) frames the meter pushed, oldest first, heard or not."""
        return self._call(lambda: list(self._push_model.history))

    def wait_for_frames(self, count: int, timeout: float = 10.0) -> list[ServedFrame]:
        """Wait until ``count`` more frames were pushed; returns them."""
        history = self._push_model.history
        first = self._call(lambda: history[-1].number + 1 if history else 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frames = [frame for frame in self.frames if frame.number >= first]
            if len(frames) >= count:
                return frames[:count]
            time.sleep(0.02)
        raise TimeoutError(f"the simulated meter pushed fewer than {count} frames in {timeout} s")

    def _send_due(self, now: float) -> float | None:
        for push in self._push_model.pushes_due(now):
            self._put_on_line(push)
            if self._on_frame is not None:
                try:
                    self._on_frame(push.frame)
                except Exception:
                    log.exception("on_frame callback failed")
        wait = super()._send_due(now)
        until_push = max(_MIN_SLICE, self._push_model.next_push_at - now)
        return until_push if wait is None else min(wait, until_push)

    def _put_on_line(self, push: Push) -> None:
        if not self._reader_listening():
            return
        transmission = push.transmission
        heard_at = self._reader_speed(_ISPEED)
        data = transmission.data
        if heard_at != transmission.baud:
            data = garble_8n1(data, transmission.baud, heard_at)
        per_byte = transmission.duration / len(data) if data else 0.0
        self._pending.append(_Outgoing(transmission, data, per_byte))

    def _reader_listening(self) -> bool:
        """Whether a reader has the pty open (the master reports no hang-up)."""
        master = self._master
        if master is None:
            return False
        check = select.poll()
        check.register(master, select.POLLIN)
        return not any(event & select.POLLHUP for _, event in check.poll(0))
