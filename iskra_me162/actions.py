"""One-shot actions of the command line: ``--check-config`` and ``--once [--dry-run]``."""

from __future__ import annotations

import logging
import sys

from iskra_me162.config import KEYS, Config
from iskra_me162.errors import IskraError, SinkError
from iskra_me162.p1 import p1_values
from iskra_me162.readout import Readout

log = logging.getLogger(__name__)


def check_config(config: Config, out: object = None) -> int:
    """Print the effective settings (secrets hidden) and any warnings; 0 when valid."""
    stream = out or sys.stdout
    for warning in config.warnings:
        print(f"warning: {warning}", file=stream)  # type: ignore[call-overload]
    print(f"{config.path}: configuration OK", file=stream)  # type: ignore[call-overload]
    for key, spec in KEYS.items():
        value = getattr(config, key)
        shown = "(set)" if spec.secret and value else repr(value)
        if key == "state_file" and config.state_file_option is not None:
            shown += "  (--state-file)"
        print(f"  {key} = {shown}", file=stream)  # type: ignore[call-overload]
    return 0


def format_table(readout: Readout) -> str:
    """All registers of a readout as an aligned, readable table."""
    identity = readout.identity
    lines = [
        f"meter: {identity.manufacturer} {identity.model}"
        + (f", serial {identity.serial}" if identity.serial else ""),
        f"time:  {readout.wall_time.isoformat(timespec='seconds')}",
        "",
    ]
    width = max((len(str(r.code)) for r in readout.readings), default=4)
    lines.append(f"{'OBIS':<{width}}  {'value':>18}  unit")
    for reading in readout.readings:
        value = f"{reading.value:f}" if reading.value is not None else reading.raw
        lines.append(f"{reading.code!s:<{width}}  {value:>18}  {reading.unit or ''}".rstrip())
    return "\n".join(lines)


def read_once(config: Config, dry_run: bool) -> int:
    """One meter session: print its registers and values; push them to Domoticz unless
    ``dry_run`` (or no Domoticz is configured, then print what would be sent).

    A meter without power registers (the ME162) has a power figure only when the state file
    holds an earlier readout of this boot that is far enough back; otherwise the reason is
    printed. The session's counters go to the state file (not with ``dry_run``), so a second
    ``--once`` a minute later shows the power.
    """
    from iskra_me162.daemon import build_deriver, build_meter, build_sink, status_line

    meter = build_meter(config, tick=lambda: None)
    deriver = build_deriver(config, save_state=not dry_run)
    try:
        readout = meter.read()
        print(format_table(readout))
        print()
        values = deriver.derive(readout)
    except IskraError as error:
        print(f"iskra-me162: readout failed: {error}", file=sys.stderr)
        return 1
    finally:
        meter.close()
        deriver.close()
    print(status_line(values))
    if values.power_missing:
        print(f"power: not known: {values.power_missing}")
    try:
        p1 = p1_values(values, config.swap_tariffs)
    except SinkError as error:  # no import energy: no P1 update at all
        print(f"P1: {error}", file=sys.stderr)
        return 1
    if not config.domoticzserver or dry_run:
        verb = "would send" if config.domoticzserver else "P1 (no Domoticz configured)"
        print(f"{verb}: svalue={p1.svalue}" if p1 else f"{verb}: nothing: no power figure")
        return 0
    if p1 is None:
        print("domoticz: nothing sent: no power figure for this readout", file=sys.stderr)
        return 1
    sink = build_sink("domoticz", config)
    assert sink is not None  # domoticzserver is set
    try:
        sink.publish(values)
    except SinkError as error:
        print(f"domoticz: {error}", file=sys.stderr)
        return 1
    finally:
        sink.close()
    print(f"domoticz: sent svalue={p1.svalue}")
    return 0
