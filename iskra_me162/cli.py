"""Command line: parse the arguments, then hand over to the daemon or a one-shot action."""

from __future__ import annotations

import argparse
import sys

from iskra_me162.config import DEFAULT_PATH
from iskra_me162.errors import ConfigError, IskraError

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78  # sysexits.h EX_CONFIG
# --probe: why a port could not be probed, one status per remedy (sysexits.h names).
EX_NO_DEVICE = 66  # EX_NOINPUT: no such device, or no candidate port at all
EX_NOTHING_RECEIVED = 69  # EX_UNAVAILABLE: the port opens, nothing arrives (head alignment)
EX_PORT_BUSY = 75  # EX_TEMPFAIL: another program holds the port (stop the service first)
EX_GARBAGE = 76  # EX_PROTOCOL: bytes arrive, but neither protocol (wrong speed or head type)
EX_NO_PERMISSION = 77  # EX_NOPERM: permission denied (group dialout)
DEFAULT_PIDFILE = "/run/iskra-me162/iskra-me162.pid"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iskra-me162",
        description=(
            "Read an electricity meter through an optical IR head (IEC 62056-21 mode C meters "
            "and SML push meters) and feed Domoticz, an HTTP endpoint (Home Assistant RESTful "
            "sensor) and MQTT with Home Assistant discovery. Runs in the foreground unless "
            "--daemon is given."
        ),
        epilog=(
            "Exit status: 0 success, 1 failure, 2 usage error, 78 configuration error; "
            f"--probe also: {EX_NO_DEVICE} no such device (or no candidate port), "
            f"{EX_NO_PERMISSION} permission denied, {EX_PORT_BUSY} port busy (the service "
            f"holds it), {EX_NOTHING_RECEIVED} nothing received, {EX_GARBAGE} garbage only."
        ),
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_PATH,
        metavar="PATH",
        help=f"config file (default {DEFAULT_PATH})",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--daemon", action="store_true", help="detach (for systems without systemd)")
    mode.add_argument("--once", action="store_true", help="one readout: print it, push it, exit")
    mode.add_argument(
        "--check-config", action="store_true", help="validate the config file and exit"
    )
    mode.add_argument("--version", action="store_true", help="print the version and exit")
    mode.add_argument(
        "--probe",
        nargs="?",
        const="",
        metavar="PORT",
        help=(
            "first run: without PORT list the candidate serial ports; with PORT (a device or "
            "URL) find the protocol, identity, speed, registers and link quality of the meter "
            "there and print the config lines to use (the config file is not read)"
        ),
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        help=(
            "state file to use instead of the config file's state_file (the template unit "
            "iskra-me162@.service passes /run/iskra-me162-NAME/state); empty: in memory only"
        ),
    )
    parser.add_argument(
        "--pidfile", metavar="PATH", help=f"with --daemon: pid file (default {DEFAULT_PIDFILE})"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="with --once: show what would be sent, send nothing"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry_run and not args.once:
        parser.error("--dry-run goes with --once")
    if args.pidfile and not args.daemon:
        parser.error("--pidfile goes with --daemon")
    if args.version:
        from iskra_me162.version import version

        print(f"iskra-me162 {version()}")
        return EX_OK
    if args.probe is not None:
        return _probe(args.probe)

    from iskra_me162.config import load_config

    try:
        config = load_config(args.config, args.state_file)
    except ConfigError as error:
        print(f"iskra-me162: {error}", file=sys.stderr)
        return EX_CONFIG

    try:
        if args.check_config:
            from iskra_me162.actions import check_config

            return check_config(config)
        from iskra_me162.logs import setup_logging

        setup_logging(config.print_debug, config.secrets)
        if args.once:
            from iskra_me162.actions import read_once

            return read_once(config, dry_run=args.dry_run)
        if args.daemon:
            return _run_detached(config, args.pidfile or DEFAULT_PIDFILE)
        from iskra_me162.daemon import Daemon

        return Daemon(config).run()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into a program that stopped reading (| head): not worth a traceback.
        sys.stderr.close()
        return EX_FAILURE
    except IskraError as error:
        print(f"iskra-me162: {error}", file=sys.stderr)
        return EX_FAILURE


def _probe(port: str) -> int:
    from iskra_me162 import probe

    statuses = {
        probe.NoDevice: EX_NO_DEVICE,
        probe.PermissionDenied: EX_NO_PERMISSION,
        probe.PortBusy: EX_PORT_BUSY,
        probe.NothingReceived: EX_NOTHING_RECEIVED,
        probe.GarbageOnly: EX_GARBAGE,
    }
    probe.quiet_logging()
    try:
        return probe.probe(port or None)
    except KeyboardInterrupt:
        return 130
    except probe.ProbeError as error:
        print(f"iskra-me162: --probe: {error}", file=sys.stderr)
        return statuses.get(type(error), EX_FAILURE)
    except IskraError as error:
        print(f"iskra-me162: --probe: {error}", file=sys.stderr)
        return EX_FAILURE


def _run_detached(config: object, pidfile: str) -> int:
    import daemon  # python-daemon

    from iskra_me162.daemon import Daemon
    from iskra_me162.logs import use_syslog
    from iskra_me162.pidfile import PidFile

    pid_file = PidFile(pidfile)
    pid_file.check()  # refuse to start while still attached to the terminal
    if pid_file.stale_pid:
        print(f"iskra-me162: replacing stale pid file {pidfile} (pid {pid_file.stale_pid})")
    context = daemon.DaemonContext(
        pidfile=pid_file,
        umask=0o027,
        working_directory="/",
        # Our own handlers: python-daemon's defaults would ignore SIGHUP-as-reload.
        signal_map={},
    )
    with context:
        use_syslog(config.print_debug, config.secrets)  # type: ignore[attr-defined]
        # Everything that opens files, ports or sockets happens after the fork.
        return Daemon(config).run()  # type: ignore[arg-type]
