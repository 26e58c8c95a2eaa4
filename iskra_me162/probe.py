"""``iskra-me162 --probe [PORT]``: what is on a port, and the config lines to read it.

Without a port it lists the candidates (:mod:`iskra_me162.serial_ports`). With one it finds out,
using the daemon's own meter classes and nothing new on the wire:

1. whether the port can be opened at all, the way :class:`~iskra_me162.port.Port` opens it
   (exclusively): no such device, permission denied and "busy" each get their own message and
   exit status, because each has its own remedy;
2. the protocol, as ``protocol = "auto"`` finds it (:class:`~iskra_me162.auto_meter.AutoMeter`:
   listen for SML frames, else the mode C handshake);
3. mode C: a readout at the speed the meter proposes and, when that fails, at 300 Bd (which is
   what ``use_highspeed = False`` does), a few more readouts for the link quality when time
   allows, then one programming-mode session with register reads
   (:class:`~iskra_me162.live_meter.LiveIecMeter`: only request, ACK, R1 and B0 are sent);
   SML: the frames of a few seconds, good and bad;
4. when nothing clean came: whether nothing arrived at all (the head's alignment) or only
   bytes that are neither protocol (wrong speed or head type).

Every probe ends within 30 s: the ports' ``tick`` ends a session once the budget is spent, and
steps that would not fit into what is left are skipped and named as not checked.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from iskra_me162.auto_meter import LISTEN_S, MODE_C, SML, AutoMeter
from iskra_me162.config import Config
from iskra_me162.errors import (
    ChecksumError,
    IskraError,
    MeterTimeout,
    PortError,
    ProtocolError,
)
from iskra_me162.live_meter import BREAK_PAUSE, LiveIecMeter
from iskra_me162.meters import INITIAL_BAUD, IecMeter
from iskra_me162.port import Port
from iskra_me162.readout import Readout
from iskra_me162.serial_ports import by_id_link, candidates, describe
from iskra_me162.sml_meter import SmlMeter

if TYPE_CHECKING:
    from iskra_me162.daemon import Meter

# The whole probe: the limit is 30 s from the command; the rest is start-up and margin.
BUDGET_S = 27.0
HARD_STOP_S = 29.0  # SIGALRM: a last resort, should a wait somewhere miss the budget
SML_QUALITY_S = 5.0  # frames counted for an SML meter's link quality (1-4 s apart)
READOUT_TRIES = 3  # mode C readouts until one is clean: proposed speed, 300 Bd, once more
EXTRA_READOUTS = 2  # more mode C readouts for the link quality, when time allows
# A programming-mode session: request and identification at 300 Bd (~1 s), then the P0, which
# a meter without programming mode never sends (2 s timeout), and three register reads (0.7 s
# each at 300 Bd).
PROGMODE_NEEDS_S = 4.0
PROGMODE_NEEDS_300_S = 5.5
POLL_S = 0.5  # LiveIecMeter's poll interval; one poll cycle is all the probe makes
POWER_REGISTERS = ("1.7.0", "2.7.0", "16.7.0")  # import, export, net: the derive stage's
SERVICE = "iskra-me162"
NO_TIME_FOR_PROGMODE = (
    "not checked: the readouts took the probe's time; to find out, set live_power = True: "
    "the daemon logs whether the meter refuses programming mode"
)


class ProbeError(IskraError):
    """The probe could not read the meter; the subclass says why (and sets the exit status)."""


class NoDevice(ProbeError):
    """No such device, or no candidate port at all."""


class PermissionDenied(ProbeError):
    """The device exists but this user may not open it."""


class PortBusy(ProbeError):
    """Another program (the service) holds the port exclusively."""


class NothingReceived(ProbeError):
    """The port opens, but not one byte arrives."""


class GarbageOnly(ProbeError):
    """Bytes arrive, but neither SML frames nor mode C answers."""


class _TimeUp(Exception):
    """The probe's budget is spent: end the session now. Not an IskraError on purpose, so
    that no meter class takes it for a failed readout and retries."""


# --- without a port: the list -----------------------------------------------------------------
def list_ports(out: Callable[[str], None] = print) -> None:
    """Print the candidate ports; NoDevice when there is none."""
    found = candidates()
    if not found:
        raise NoDevice(
            "no serial port found (no /dev/serial/by-id/*, /dev/ttyUSB*, /dev/ttyACM*, "
            "/dev/serial0 or /dev/ttyAMA0): is the IR head plugged in? Right after plugging it "
            "in, 'sudo dmesg | tail' shows whether the kernel saw it"
        )
    out("Candidate ports for the IR head:")
    for info in found:
        out(f"  {info.path}")
        out(f"      {info.describe()}")
    out("")
    out(f"Probe one of them: iskra-me162 --probe {found[0].path}")


# --- opening ----------------------------------------------------------------------------------
def check_device(port: str) -> None:
    """Open ``port`` as Port does (exclusively) and close it again; a ProbeError when that
    fails, saying why and what to do. URLs are not devices: they are opened by the probe."""
    if "://" in port:
        return
    if not os.path.lexists(port):
        raise NoDevice(f"no such device: {port} (--probe without a port lists the candidates)")
    if not Path(port).exists():
        raise NoDevice(
            f"{port} is a link to {Path(port).readlink()}, which is not there: the IR head was "
            "unplugged? (--probe without a port lists the candidates)"
        )
    import serial

    try:
        line = serial.serial_for_url(port, do_not_open=True)
        line.baudrate = 9600  # 8N1: every tty takes it (a pty refuses 7E1)
        line.exclusive = True  # what Port does, so a port the service holds is found busy
        line.open()
    except (OSError, serial.SerialException) as error:
        raise _open_problem(port, getattr(error, "errno", None), str(error)) from None
    line.close()
    time.sleep(0.1)  # a pty meter resets its line settings a moment after a reader left


def _open_problem(port: str, number: int | None, text: str) -> ProbeError:
    if number in (errno.EACCES, errno.EPERM):
        return PermissionDenied(_permission_hint(port))
    if number in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        holders = _holders(port)
        held = f" (it is open in {', '.join(holders)})" if holders else ""
        return PortBusy(
            f"{port} is busy: another program holds it{held}. If that is the service, stop it "
            f"first: sudo systemctl stop {SERVICE}; probe; then sudo systemctl start {SERVICE}"
        )
    if number in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return NoDevice(f"no such device: {port} ({text}); was the IR head unplugged?")
    return ProbeError(f"cannot open {port}: {text}")


def _permission_hint(port: str) -> str:
    device = os.path.realpath(port)
    try:
        info = Path(device).stat()
        owner, group = pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name
        mode, group_rw = stat.filemode(info.st_mode), info.st_mode & 0o060 == 0o060
    except (OSError, KeyError):
        owner, group, mode, group_rw = "?", "dialout", "?", True
    text = f"permission denied: this user may not open {port} ({device}: {mode} {owner}:{group}). "
    if group_rw and group != "dialout":
        join = f"Add the user to group {group} (serial adapters: group dialout)"
    else:
        join = "Serial adapters belong to group dialout: add the user to it"
        group = "dialout"
    return (
        f"{text}{join}: sudo usermod -aG {group} $USER, then log out and in again (a new "
        "group counts from the next login); or probe with sudo"
    )


def _holders(port: str) -> list[str]:
    """Processes that have ``port`` open, as far as /proc lets this user see (best effort)."""
    device = os.path.realpath(port)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(str(fd.readlink()) == device for fd in (proc / "fd").iterdir()):
                name = (proc / "comm").read_text(encoding="utf-8", errors="replace").strip()
                found.append(f"{name} (pid {proc.name})")
    return found


# --- with a port: what the probe found ----------------------------------------------------------
@dataclass
class _Line:
    """What crossed the line, over every port object the probe opened."""

    received: int = 0  # bytes
    acked: bool = False  # an ACK went out: the meter had sent an identification
    switched_to: int = 0  # the rate the last session switched to (0: stayed at 300 Bd)
    proposed: int = INITIAL_BAUD  # the highest rate the meter proposed


class _ProbePort(Port):
    """A Port that counts what the probe needs to tell "nothing" from "garbage"."""

    def __init__(self, url: str, line: _Line, tick: Callable[[], None], **settings: object) -> None:
        super().__init__(url, tick=tick, **settings)  # type: ignore[arg-type]
        self._line = line

    def read_some(self, first_byte_timeout: float) -> bytes:
        data = super().read_some(first_byte_timeout)
        self._line.received += len(data)
        return data

    def write(self, data: bytes) -> None:
        self._line.acked |= data.startswith(b"\x06")
        super().write(data)

    def set_baudrate(self, baudrate: int) -> None:
        super().set_baudrate(baudrate)
        if baudrate != INITIAL_BAUD:  # a mode C session only ever switches to the proposal
            self._line.switched_to = baudrate
            self._line.proposed = max(self._line.proposed, baudrate)


@dataclass(frozen=True)
class Attempt:
    """One mode C readout: its data rate, and why it failed ("" when clean)."""

    baud: int
    seconds: float
    error: str = ""
    checksum: bool = False  # failed on its BCC


@dataclass
class Findings:
    """Everything the probe learnt about the meter on ``port``."""

    port: str
    protocol: str
    readout: Readout  # the last clean readout or frame
    config_port: str = ""  # the name the config should use (a by-id link when there is one)
    # mode C
    attempts: list[Attempt] = field(default_factory=list)
    proposed: int = INITIAL_BAUD
    highspeed: bool = False
    progmode: bool = False
    progmode_note: str = "not checked"
    # SML
    sml_baudrate: int = 9600
    sml_seconds: float = 0.0
    sml_stats: dict[str, int] = field(default_factory=dict)

    @property
    def power_registers(self) -> list[str]:
        return [code for code in POWER_REGISTERS if self.readout.get(code) is not None]


class _Clock:
    def __init__(self, budget: float) -> None:
        self.end = time.monotonic() + budget

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def tick(self) -> None:
        if self.remaining() <= 0:
            raise _TimeUp()


class Prober:
    """One probe of ``port``; :meth:`run` returns the Findings or raises a ProbeError."""

    def __init__(self, port: str, out: Callable[[str], None] = print, budget: float = BUDGET_S):
        self.port = port
        self.out = out
        self.clock = _Clock(budget)
        self.line = _Line()
        # The config "auto" starts from; "" = each protocol's own serial format.
        self.config = Config(path="--probe", protocol="auto", port=port, serial_format="")
        self.listener: SmlMeter | None = None
        self.live: LiveIecMeter | None = None

    # The daemon's build_meter, with ports that count and a meter that can also poll.
    def _build(self, config: Config) -> Meter:
        if config.protocol == SML:
            port = self._port(config.sml_baudrate, config.serial_format, seven_bit_line=False)
            self.listener = SmlMeter(port)
            return self.listener
        port = self._port(INITIAL_BAUD, config.serial_format, seven_bit_line=True)
        self.live = LiveIecMeter(
            port,
            use_highspeed=True,  # the proposed speed first; it falls back to 300 Bd by itself
            baud_switch_delay=config.baud_switch_delay,
            poll_interval=POLL_S,
            full_every=config.update_interval,
        )
        return self.live

    def _port(self, baudrate: int, serial_format: str, seven_bit_line: bool) -> _ProbePort:
        return _ProbePort(
            self.port,
            self.line,
            self.clock.tick,
            baudrate=baudrate,
            serial_format=serial_format,
            seven_bit_line=seven_bit_line,
        )

    def run(self) -> Findings:
        check_device(self.port)
        self.out(
            "Trying the mode C handshake at 300 Bd; without an answer, listening for SML "
            f"frames at {self.config.sml_baudrate} Bd for up to {LISTEN_S:g} s ..."
        )
        auto = AutoMeter(self.config, self._build)
        try:
            try:
                first, attempt = self._readout(auto.read)
            except PortError as failure:
                raise ProbeError(f"{self.port}: {failure}") from None
            if auto.protocol == SML:
                findings = self._sml(first, attempt.error)
            else:
                findings = self._mode_c(first, attempt)
        finally:
            with contextlib.suppress(Exception):  # B0 and close; the findings are what counts
                auto.close()
        findings.config_port = by_id_link(self.port) or self.port
        return findings

    # --- SML ------------------------------------------------------------------------------------
    def _sml(self, first: Readout | None, error: str) -> Findings:
        listener = self.listener
        assert listener is not None
        if first is None:
            raise self._diagnosis(error)
        self.out(f"SML frames arrive; counting them for {SML_QUALITY_S:g} s ...")
        started = time.monotonic()
        last = first
        with contextlib.suppress(MeterTimeout, ProtocolError, _TimeUp):
            while (
                left := min(SML_QUALITY_S - (time.monotonic() - started), self.clock.remaining())
            ) > 0.05:
                listener.frame_timeout = left
                last = listener.read()
        return Findings(
            port=self.port,
            protocol=SML,
            readout=last,
            sml_baudrate=self.config.sml_baudrate,
            sml_seconds=time.monotonic() - started,
            sml_stats=listener.stats,
        )

    # --- mode C ---------------------------------------------------------------------------------
    def _mode_c(self, first: Readout | None, attempt: Attempt) -> Findings:
        live = self.live
        if live is None:  # never got that far
            raise self._diagnosis(attempt.error)
        attempts = [attempt]
        readout = first
        while readout is None and len(attempts) < READOUT_TRIES and self._time_for(attempts):
            if not self.line.acked and len(attempts) >= 2:
                break  # two requests without an identification: a third changes nothing
            time.sleep(BREAK_PAUSE)
            readout, attempt = self._readout(live.read)
            attempts.append(attempt)
        if readout is None:
            raise self._diagnosis(attempts[-1].error, attempts)
        clean = next(attempt for attempt in reversed(attempts) if not attempt.error)
        findings = Findings(
            port=self.port,
            protocol=MODE_C,
            readout=readout,
            attempts=attempts,
            proposed=self.line.proposed,
            highspeed=clean.baud != INITIAL_BAUD,
        )
        self.out(f"The meter answers in mode C; a clean readout at {clean.baud} Bd.")
        self._more_readouts(findings, clean)
        self._programming_mode(findings, live)
        return findings

    def _readout(self, read: Callable[[], Readout]) -> tuple[Readout | None, Attempt]:
        self.line.switched_to = 0
        started = time.monotonic()
        try:
            readout = read()
        except ChecksumError as failure:
            return None, Attempt(self._baud(), time.monotonic() - started, str(failure), True)
        except (MeterTimeout, ProtocolError) as failure:
            return None, Attempt(self._baud(), time.monotonic() - started, str(failure))
        except _TimeUp:
            return None, Attempt(self._baud(), time.monotonic() - started, "out of time")
        return readout, Attempt(self._baud(), time.monotonic() - started)

    def _baud(self) -> int:
        return self.line.switched_to or INITIAL_BAUD

    def _time_for(self, attempts: list[Attempt], reserve: float = 0.0) -> bool:
        """Whether one more readout like the longest so far fits into the budget."""
        longest = max((attempt.seconds for attempt in attempts), default=3.0)
        return self.clock.remaining() - reserve > min(longest, 12.0) + BREAK_PAUSE

    def _more_readouts(self, findings: Findings, clean: Attempt) -> None:
        live = self.live
        assert live is not None
        meter = IecMeter(live.port, findings.highspeed, self.config.baud_switch_delay)
        for _ in range(EXTRA_READOUTS):
            if not self._time_for([clean], reserve=_progmode_needs(findings)):
                break
            time.sleep(BREAK_PAUSE)
            readout, attempt = self._readout(meter.read)
            findings.attempts.append(attempt)
            if readout is not None:
                findings.readout = readout

    def _programming_mode(self, findings: Findings, live: LiveIecMeter) -> None:
        if self.clock.remaining() < _progmode_needs(findings):
            findings.progmode_note = NO_TIME_FOR_PROGMODE
            return
        self.out("Trying programming mode (read-only: R1 register reads, then B0) ...")
        time.sleep(BREAK_PAUSE)
        try:
            polled = live.read()
        except (MeterTimeout, ProtocolError) as failure:
            if live.refused:
                findings.progmode_note = f"not offered: the meter refuses it ({failure})"
            else:
                findings.progmode_note = f"not confirmed: {failure}"
            return
        except _TimeUp:
            findings.progmode_note = NO_TIME_FOR_PROGMODE
            return
        finally:
            live.close()  # B0: the meter listens for a request again
        codes = ", ".join(code for code, _ in polled.polled)
        findings.progmode = bool(polled.polled)
        findings.progmode_note = f"offered: R1 reads of {codes} answered"

    # --- nothing clean ----------------------------------------------------------------------------
    def _diagnosis(self, error: str, attempts: list[Attempt] | None = None) -> ProbeError:
        tries = len(attempts or [])
        listened = f"no SML frame in {LISTEN_S:g} s at {self.config.sml_baudrate} Bd"
        if self.line.received == 0:
            asked = f", no answer to {tries} mode C request(s) at 300 Bd" if tries else ""
            return NothingReceived(
                f"nothing arrived on {self.port} ({listened}{asked}). Check the head: it must sit "
                "on the meter's optical port (the small window, usually ringed by a metal "
                "plate its magnet holds to), centred, turned so that the cable leaves the way "
                "the head's manual says (mostly downwards); some SML meters send only once "
                "their info interface is switched on with the PIN"
            )
        stats = self.listener.stats if self.listener is not None else {}
        bad_frames = sum(stats.get(name, 0) for name in ("crc_errors", "malformed", "truncated"))
        if bad_frames and not stats.get("frames_ok"):
            return GarbageOnly(
                f"SML frames arrive on {self.port} but none is intact ({bad_frames} dropped: "
                f"{error}): the head is misaligned or catches stray light, or the speed is "
                "wrong; move the head a little, shade it, and probe again"
            )
        if self.line.acked:  # an identification came: a mode C meter whose readouts fail
            summary = "; ".join(f"{a.baud} Bd: {a.error}" for a in attempts or [])
            return ProbeError(
                f"the meter on {self.port} answers in mode C but no readout was clean "
                f"({summary}): check the head's alignment and stray light, and probe again"
            )
        return GarbageOnly(
            f"{self.line.received} bytes arrived on {self.port}, but neither SML frames "
            f"({listened}) nor a mode C answer at 300 Bd ({error}): wrong speed (an SML meter "
            "at another rate: set sml_baudrate) or wrong head type (not an optical "
            "IEC 62056-21 head), or another device is on this port"
        )


def _progmode_needs(findings: Findings) -> float:
    return PROGMODE_NEEDS_S if findings.highspeed else PROGMODE_NEEDS_300_S


# --- the report -----------------------------------------------------------------------------------
def report(findings: Findings) -> list[str]:
    """The findings as text, registers and all, ending with the config lines."""
    from iskra_me162.actions import format_table

    lines = [""]
    readout = findings.readout
    if findings.protocol == SML:
        lines.append(f"protocol: SML push meter, {findings.sml_baudrate} Bd 8N1")
        if readout.identity.serial:
            lines.append(f"meter number: {readout.identity.number}")
    else:
        lines.append("protocol: IEC 62056-21 mode C")
        lines.append(_speed_line(findings))
    lines += format_table(readout).splitlines()
    lines.append("")
    power = findings.power_registers
    lines.append(f"power registers: {', '.join(power) if power else 'none'}")
    if findings.protocol == MODE_C:
        note = findings.progmode_note
        if findings.progmode and power:
            note += " (live_power is not needed: the meter has power registers)"
        elif findings.progmode:
            note += " (live_power = True times the counters' 1 Wh steps for live power)"
        lines.append(f"programming mode: {note}")
    lines.append(f"link: {_link_quality(findings)}")
    lines += ["", "Config lines for /etc/default/iskra-me162:"]
    lines += [f"    {line}" for line in config_lines(findings)]
    return lines


def _speed_line(findings: Findings) -> str:
    proposed = findings.proposed
    if findings.highspeed:
        return f"speed: {proposed} Bd (the meter's proposal): readouts clean"
    if proposed == INITIAL_BAUD:
        return "speed: 300 Bd (the meter proposes no higher speed)"
    failed = next((a for a in findings.attempts if a.baud == proposed and a.error), None)
    why = f" ({failed.error})" if failed else ""
    return (
        f"speed: 300 Bd: the meter proposes {proposed} Bd, but the readout at {proposed} Bd "
        f"failed{why}; at 300 Bd it is clean, so use_highspeed = False"
    )


def _link_quality(findings: Findings) -> str:
    if findings.protocol == SML:
        stats = findings.sml_stats
        bad = sum(stats.get(name, 0) for name in ("crc_errors", "malformed", "truncated"))
        return (
            f"{stats.get('frames_ok', 0)} frames good, {bad} bad "
            f"({stats.get('crc_errors', 0)} CRC errors) in {findings.sml_seconds:.1f} s"
        )
    attempts = findings.attempts
    clean = sum(1 for attempt in attempts if not attempt.error)
    checksum = sum(1 for attempt in attempts if attempt.checksum)
    return f"{len(attempts)} readouts tried, {clean} clean, {checksum} BCC errors"


def config_lines(findings: Findings) -> list[str]:
    """The ``key = value`` lines that read this meter as the probe did."""
    lines = [
        f'protocol = "{findings.protocol}"',
        f'port = "{findings.config_port or findings.port}"',
    ]
    if findings.protocol == SML:
        lines.append(f"sml_baudrate = {findings.sml_baudrate}")
        return lines
    lines.append(f"use_highspeed = {findings.highspeed}")
    if findings.progmode and not findings.power_registers:
        lines.append("live_power = True")
    return lines


# --- the command ----------------------------------------------------------------------------------
def probe(port: str | None, out: Callable[[str], None] | None = None) -> int:
    """``--probe [PORT]``: 0 when done; a ProbeError (its class says why) when not."""
    emit = out or _print
    if not port:
        list_ports(emit)
        return 0
    info = describe(port) if "://" not in port and Path(port).exists() else None
    emit(f"Probing {port}" + (f": {info.describe()}" if info else ""))
    previous = signal.signal(signal.SIGALRM, _hard_stop)
    signal.setitimer(signal.ITIMER_REAL, HARD_STOP_S)
    try:
        findings = Prober(port, emit).run()
    except _TimeUp:
        raise ProbeError(f"the probe of {port} did not finish within {HARD_STOP_S:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    for line in report(findings):
        emit(line)
    return 0


def _print(text: str) -> None:
    print(text, flush=True)  # progress shows while the probe waits for the meter


def _hard_stop(signum: int, frame: FrameType | None) -> None:
    raise _TimeUp()


def quiet_logging() -> None:
    """The meter classes log what the daemon's journal needs; the probe reports it itself."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
