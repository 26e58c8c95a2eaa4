"""One-shot actions of the command line: ``--check-config`` and ``--once [--dry-run]``."""

from __future__ import annotations

import logging
import sys

from iskra_me162.config import KEYS, Config
from iskra_me162.errors import IskraError, SinkError
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
    """One readout; print it and the Domoticz svalue; push it unless ``dry_run``."""
    from iskra_me162.daemon import build_meter, build_sinks

    meter = build_meter(config, tick=lambda: None)
    try:
        readout = meter.read()
    except IskraError as error:
        print(f"iskra-me162: readout failed: {error}", file=sys.stderr)
        return 1
    finally:
        meter.close()
    print(format_table(readout))
    print()
    status = 0
    for sink in build_sinks(config):
        try:
            if dry_run or not config.domoticzserver:
                values = sink.preview(readout)  # type: ignore[attr-defined]
                verb = "would send"
            else:
                values = sink.publish(readout)
                verb = "sent"
        except SinkError as error:
            print(f"{sink.name}: {error}", file=sys.stderr)
            status = 1
            values, verb = None, ""
        finally:
            sink.close()
        if values is not None:
            print(f"{sink.name}: {verb} svalue={values.svalue}")  # type: ignore[attr-defined]
        elif status == 0:
            print(
                f"{sink.name}: nothing to send yet: power needs a second readout "
                "(no usable state file from an earlier run)"
            )
    return status
