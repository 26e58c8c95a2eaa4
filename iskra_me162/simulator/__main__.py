"""``python -m iskra_me162.simulator``: a simulated meter on a pty, in the foreground.

It prints the pty (and symlink) it serves, then one line per data readout with the values it
sent, so a person or a test can compare them with what the daemon reported. SIGTERM or SIGINT
stops it (exit 0). With ``--control FILE``, SIGHUP re-reads FILE: ``name = value`` lines with
fault options, ``power``, ``export`` or ``tariff``; faults not named there fall back to the ones
given on the command line.

``--profile mt175`` serves an SML push meter instead: it sends a frame every ``--interval``
seconds at 9600 8N1 and prints one line per frame (see :mod:`.sml_push` for its options).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from iskra_me162.errors import ConfigError, PortError
from iskra_me162.simulator.model import Faults, MeterConfig, ServedReadout
from iskra_me162.simulator.options import (
    parse_config,
    parse_control_text,
    parse_faults,
    parse_runtime_value,
    split_runtime,
)
from iskra_me162.simulator.profiles import PROFILES
from iskra_me162.simulator.pty_meter import PtyMeter
from iskra_me162.simulator.sml_push import (
    SML_PUSH_PROFILES,
    ServedFrame,
    SmlFaults,
    SmlPtyMeter,
    SmlPushConfig,
    apply_control_text,
    format_frame,
    parse_sml_push_config,
)

EX_CONFIG = 78
EX_IOERR = 74

# command-line flag -> option name; flags without a value are on/off switches
_VALUE_FLAGS = {
    "profile": "profile",
    "serial": "serial",
    "power": "power",
    "export": "export",
    "tariff": "tariff",
    "import_wh": "import_wh",
    "export_wh": "export_wh",
    "speedup": "speedup",
    "noise": "noise",
    "noise_byte": "noise_byte",
    "corrupt_every": "corrupt_every",
    "bad_bcc_every": "bad_bcc_every",
    "truncate_every": "truncate_every",
    "lockout": "lockout",
    "interval": "interval",
    "baud": "baud",
    "garbage": "garbage",
    "energy_scaler": "energy_scaler",
    "power_scaler": "power_scaler",
    "load": "load",
    "export_load": "export_load",
    "progmode": "progmode",
    "progmode_timeout": "progmode_timeout",
    "refuse_progmode": "refuse_progmode",
    "read_bad_bcc_at": "read_bad_bcc_at",
    "silent_from": "silent_from",
    "silent_for": "silent_for",
    "error_registers": "error_registers",
}
_SWITCHES = ("echo", "ignore_baud", "silent", "high_bit", "escape", "no_pin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m iskra_me162.simulator",
        description="Serve a simulated IEC 62056-21 mode C meter on a pseudo-terminal.",
    )
    parser.add_argument(
        "--link", type=Path, help="symlink to create to the pty, e.g. /tmp/ttyMETER"
    )
    parser.add_argument(
        "--profile",
        choices=sorted({*PROFILES, *SML_PUSH_PROFILES}),
        help="meter model (default me162; mt175 is an SML push meter)",
    )
    parser.add_argument("--serial", help="serial number / device address (digits)")
    parser.add_argument("--power", metavar="W", help="import power in W (default 500)")
    parser.add_argument("--export", metavar="W", help="export power in W (default 0)")
    parser.add_argument("--tariff", metavar="N", help="active tariff (default 1)")
    parser.add_argument("--import-wh", metavar="T1,T2", help="import start values per tariff, Wh")
    parser.add_argument("--export-wh", metavar="T1,T2", help="export start values per tariff, Wh")
    parser.add_argument("--speedup", metavar="X", help="line speed factor; inf = no pacing")
    parser.add_argument("--echo", action="store_true", help="echo what the reader sends")
    parser.add_argument("--noise", metavar="N", help="N noise bytes before the ident")
    parser.add_argument("--noise-byte", metavar="B", help="the noise byte (default 0x7f)")
    parser.add_argument(
        "--ignore-baud", action="store_true", help="propose 9600 Bd but keep talking at 300"
    )
    parser.add_argument("--corrupt-every", metavar="N", help="flip a digit in every Nth readout")
    parser.add_argument("--bad-bcc-every", metavar="N", help="wrong BCC in every Nth readout")
    parser.add_argument("--truncate-every", metavar="N", help="cut every Nth readout in half")
    parser.add_argument("--silent", action="store_true", help="answer nothing")
    parser.add_argument("--lockout", metavar="S", help="refuse sessions for S s after one")
    parser.add_argument("--high-bit", action="store_true", help="send the parity bit as bit 7")
    prog = parser.add_argument_group("load steps and programming mode (mode C meters)")
    prog.add_argument("--load", metavar="W,W@Ts", help="import power in steps: 300,2000@20s")
    prog.add_argument("--export-load", metavar="W,W@Ts", help="export power in steps")
    prog.add_argument(
        "--progmode",
        metavar="ANSWER",
        help="answer to ACK 0 Z 1: on (programming mode), ignore (default), readout, nak",
    )
    prog.add_argument("--progmode-timeout", metavar="S", help="inactivity time-out (default 60)")
    prog.add_argument("--refuse-progmode", metavar="ANSWER", help="fault: nak, ignore, readout")
    prog.add_argument("--read-bad-bcc-at", metavar="N", help="fault: bad BCC in the Nth R1 answer")
    prog.add_argument("--silent-from", metavar="T", help="fault: deaf and mute from T s ...")
    prog.add_argument("--silent-for", metavar="S", help="... for S s")
    prog.add_argument("--error-registers", metavar="CODES", help="fault: R1 of these: (ERROR)")
    sml = parser.add_argument_group("SML push meter (--profile mt175)")
    sml.add_argument("--interval", metavar="S", help="seconds between frames (default 1)")
    sml.add_argument("--baud", metavar="BD", help="line speed (default 9600)")
    sml.add_argument("--garbage", metavar="N", help="N noise bytes before every frame")
    sml.add_argument("--escape", action="store_true", help="1b1b1b1b in the public key")
    sml.add_argument("--no-pin", action="store_true", help="whole kWh only, no power")
    sml.add_argument("--energy-scaler", metavar="S", help="-1 (default, 0.1 Wh) .. 3")
    sml.add_argument("--power-scaler", metavar="S", help="0 (default, 1 W), -1 or -2")
    parser.add_argument("--control", type=Path, help="file of runtime options, re-read on SIGHUP")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    return parser


def _options(args: argparse.Namespace) -> dict[str, str]:
    options = {
        option: str(getattr(args, attribute))
        for attribute, option in _VALUE_FLAGS.items()
        if getattr(args, attribute) is not None
    }
    options.update({name: "1" for name in _SWITCHES if getattr(args, name)})
    return options


def format_readout(readout: ServedReadout) -> str:
    values = " ".join(f"{code}={value}" for code, value in readout.lines)
    fault = f" [fault: {readout.fault}]" if readout.fault else ""
    return f"readout {readout.number} at {readout.baud} Bd: {values}{fault}"


def _print_readout(readout: ServedReadout) -> None:
    print(format_readout(readout), flush=True)


def _apply_control(meter: PtyMeter, path: Path, base_faults: Faults) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        print(f"control file {path}: {error.strerror}", file=sys.stderr, flush=True)
        return
    try:
        fault_options, other = split_runtime(parse_control_text(text, str(path)).items())
        faults = parse_faults(fault_options, base_faults)
        values = {name: parse_runtime_value(name, text) for name, text in other.items()}
        meter.set_faults(faults)
        if "power" in values or "export" in values:
            meter.set_power(values.get("power"), values.get("export"))
        if "tariff" in values:
            meter.set_tariff(values["tariff"])
    except ConfigError as error:
        print(f"control file ignored: {error}", file=sys.stderr, flush=True)
        return
    print(f"control file {path} applied: {faults}", flush=True)


def _print_frame(frame: ServedFrame) -> None:
    print(format_frame(frame), flush=True)


def _apply_sml_control(meter: SmlPtyMeter, path: Path, base_faults: SmlFaults) -> None:
    try:
        faults = apply_control_text(meter, path.read_text(encoding="utf-8"), str(path), base_faults)
    except OSError as error:
        print(f"control file {path}: {error.strerror}", file=sys.stderr, flush=True)
        return
    except ConfigError as error:
        print(f"control file ignored: {error}", file=sys.stderr, flush=True)
        return
    print(f"control file {path} applied: {faults}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(name)s: %(message)s")
    options = _options(args)
    pushes = options.get("profile", "").lower() in SML_PUSH_PROFILES
    try:
        config: MeterConfig | SmlPushConfig
        meter: PtyMeter
        if pushes:
            config = parse_sml_push_config(options)
            meter = SmlPtyMeter(args.link, config, on_frame=_print_frame)
            name = config.profile
        else:
            config = parse_config(options)
            meter = PtyMeter(args.link, config, on_readout=_print_readout)
            name = config.profile.name
        meter.start()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EX_CONFIG
    except PortError as error:
        print(f"error: {error}", file=sys.stderr)
        return EX_IOERR

    woken = threading.Event()
    stop = threading.Event()
    reload = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        woken.set()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        reload.set()
        woken.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    try:
        link = f" (link {args.link})" if args.link else ""
        print(f"simulated {name} meter on {meter.path}{link}", flush=True)
        while not stop.is_set():
            woken.wait()
            woken.clear()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                if args.control is not None and isinstance(meter, SmlPtyMeter):
                    _apply_sml_control(meter, args.control, meter.config.faults)
                elif args.control is not None:
                    _apply_control(meter, args.control, config.faults)
    finally:
        meter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
