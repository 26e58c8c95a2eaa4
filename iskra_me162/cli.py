"""Command line: parse the arguments, then hand over to the daemon or a one-shot action."""

from __future__ import annotations

import argparse
import sys

from iskra_me162.config import DEFAULT_PATH
from iskra_me162.errors import ConfigError, IskraError

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78  # sysexits.h EX_CONFIG
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

    from iskra_me162.config import load_config

    try:
        config = load_config(args.config)
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
