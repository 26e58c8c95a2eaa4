"""One-shot actions of the command line: ``--check-config`` and ``--once [--dry-run]``."""

from __future__ import annotations

import logging
import sys
import time

from iskra_me162.config import KEYS, Config
from iskra_me162.daemon import status_line
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


SECOND_READOUT_DELAY = 10.0  # seconds; one Wh in 10 s is 360 W, fine for a one-shot check


def read_once(config: Config, dry_run: bool) -> int:
    """One readout; print it and the Domoticz svalue; push it unless ``dry_run``.

    A meter without power registers (the ME162) needs two readouts for a power figure. When no
    state file from a running daemon provides the first, a second readout is taken after
    :data:`SECOND_READOUT_DELAY` seconds rather than sending an invented power.
    """
    from iskra_me162.daemon import build_meter, build_sink

    meter = build_meter(config, tick=lambda: None)
    # Only the P1 sinks: an HTTP endpoint or a broker has nothing to show for one readout.
    sinks = [sink for name in ("domoticz", "log") if (sink := build_sink(name, config))]
    try:
        readout = meter.read()
        print(format_table(readout))
        print()
        if any(_preview(sink, readout) is None for sink in sinks):
            print(
                "power needs a second readout (no power register, no usable state file): "
                f"reading again in {SECOND_READOUT_DELAY:g} s"
            )
            for sink in sinks:
                sink.observe(readout)  # type: ignore[attr-defined]
            time.sleep(SECOND_READOUT_DELAY)
            readout = meter.read()
            print(status_line(readout))
    except IskraError as error:
        print(f"iskra-me162: readout failed: {error}", file=sys.stderr)
        for sink in sinks:
            sink.close()
        return 1
    finally:
        meter.close()
    status = 0
    for sink in sinks:
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
            continue
        finally:
            sink.close()
        if values is None:
            print(f"{sink.name}: nothing to send: no power figure", file=sys.stderr)
            status = 1
        else:
            print(f"{sink.name}: {verb} svalue={values.svalue}")  # type: ignore[attr-defined]
    return status


def _preview(sink: object, readout: Readout) -> object:
    try:
        return sink.preview(readout)  # type: ignore[attr-defined]
    except SinkError:
        return True  # an unusable readout: reported when it is pushed, no second readout helps
