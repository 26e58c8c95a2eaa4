"""The loop: read the meter on a fixed schedule, derive the values, hand them to the sinks, talk
to systemd.

Every readout goes through the derive stage (:mod:`iskra_me162.derive`) once; every sink gets
the same :class:`~iskra_me162.derive.values.Values`. Failures are sorted by kind (see
:mod:`iskra_me162.errors`): a bad readout is dropped, a vanished port is reopened with back-off,
a sink that failed is simply given the current values next cycle (the counters are cumulative,
so nothing is lost). Each problem is logged when it starts and when it ends, not every cycle, so
a log read at 3 a.m. tells a story instead of repeating one line.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from iskra_me162.config import SERIAL_FORMAT_DEFAULTS, Config, keys_of, load_config
from iskra_me162.derive import Deriver, Values, spans_for
from iskra_me162.errors import (
    ConfigError,
    IskraError,
    PortError,
    ReadoutRejected,
    SinkError,
    WrongProtocol,
)
from iskra_me162.health import Health
from iskra_me162.jsontext import number_text
from iskra_me162.meters import IecMeter
from iskra_me162.port import Port
from iskra_me162.readout import Readout
from iskra_me162.systemd import Notifier

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 5.0  # seconds; doubles per failed cycle up to update_interval
# Sinks that get every new reading of a push meter (SML, every 1-4 s) or of a meter polled live
# (live_power), at most one a second and only when a value changed; the others get one readout
# per update_interval, as with a pull meter.
LIVE_SINKS = frozenset({"http", "mqtt"})
LIVE_MIN_INTERVAL = 1.0  # seconds


class Sink(Protocol):
    """What the loop needs of a sink: a name for the log, publish(), close()."""

    name: str

    def publish(self, values: Values) -> object: ...

    def close(self) -> None: ...


class Shutdown(BaseException):
    """Raised inside a read or a push when SIGTERM/SIGINT arrived, to leave it at once.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (in a
    library or a sink) can swallow it.
    """


@dataclass
class _Signals:
    stop: bool = False
    reload: bool = False


class ProblemLog:
    """Logs a component's problem when it starts or changes, and its recovery once."""

    def __init__(self) -> None:
        self._current: dict[str, str] = {}

    def problem(self, component: str, message: str, level: int = logging.WARNING) -> None:
        if self._current.get(component) != message:
            self._current[component] = message
            log.log(level, "%s: %s", component, message)
        else:
            log.debug("%s (still): %s", component, message)

    def ok(self, component: str, what: str = "working again", level: int = logging.WARNING) -> None:
        if self._current.pop(component, None) is not None:
            log.log(level, "%s: %s", component, what)


class Meter(Protocol):
    """What the loop needs of a meter: ``read()`` one readout (pull meters: one session; push
    meters: the next good frame), its port (for cancel_read), and whether it pushes."""

    port: Port
    pushes: bool

    def read(self) -> Readout: ...

    def close(self) -> None: ...


def build_meter(config: Config, tick: Callable[[], None]) -> Meter:
    if config.protocol == "auto":
        from iskra_me162.auto_meter import AutoMeter

        return AutoMeter(config, lambda found: build_meter(found, tick))
    serial_format = config.serial_format or SERIAL_FORMAT_DEFAULTS[config.protocol]
    if config.protocol == "sml":
        from iskra_me162.sml_meter import SmlMeter

        port = Port(
            config.port,
            baudrate=config.sml_baudrate,
            serial_format=serial_format,
            seven_bit_line=False,  # SML is binary: every bit of every byte counts
            tick=tick,
        )
        return SmlMeter(port)
    port = Port(
        config.port,
        baudrate=300,
        serial_format=serial_format,
        seven_bit_line=True,
        tick=tick,
    )
    if config.live_power:
        from iskra_me162.live_meter import LiveIecMeter

        return LiveIecMeter(
            port,
            config.use_highspeed,
            config.baud_switch_delay,
            poll_interval=config.live_power_interval,
            full_every=config.update_interval,
        )
    return IecMeter(port, config.use_highspeed, config.baud_switch_delay)


# Per sink: the config keys it is built from. On SIGHUP a sink whose keys did not change is
# kept as it is (the HTTP endpoint keeps its socket and latest reading, MQTT its connection);
# any other is closed and built anew. The freshness rule (Config.reading_max_age) is read by
# both the HTTP endpoint and MQTT.
_FRESHNESS_KEYS = ("stale_after", "http_stale_after", "update_interval")
SINK_KEYS: dict[str, tuple[str, ...]] = {
    "domoticz": keys_of("domoticz"),
    "log": ("domoticzserver", "swap_tariffs"),
    "http": (*keys_of("http"), *_FRESHNESS_KEYS, "device_name"),
    "mqtt": (*keys_of("mqtt"), *_FRESHNESS_KEYS, "device_name"),
}
# Meter keys that only name the meter for the sinks: a change does not reopen the port.
NAMING_KEYS = ("device_name",)
# The keys the derive stage is built from; on SIGHUP it is kept (with its counter window) when
# none of them changed.
DERIVE_KEYS = (*keys_of("derive"), "update_interval")


def build_deriver(config: Config, save_state: bool = True) -> Deriver:
    min_span, max_span = spans_for(config.update_interval)
    return Deriver(
        min_span_s=min_span,
        max_span_s=max_span,
        state_path=config.state_file or None,
        save_state=save_state,
    )


def build_sink(name: str, config: Config, health: Health | None = None) -> Sink | None:
    """The sink ``name`` as ``config`` describes it, or None when it is switched off.
    ``health``: what the HTTP endpoint's status page and metrics show besides the values."""
    if name == "domoticz" and config.domoticzserver:
        from iskra_me162.sinks.domoticz import DomoticzSink

        assert config.device_index is not None  # the config parser guarantees it
        return DomoticzSink(
            server=config.domoticzserver,
            device_index=config.device_index,
            username=config.domoticzusername,
            password=config.domoticzpassword,
            ca_file=config.domoticz_ca_file,
            verify_tls=config.domoticz_verify_tls,
            timeout=config.domoticz_timeout,
            swap_tariffs=config.swap_tariffs,
        )
    if name == "log" and not config.domoticzserver:
        from iskra_me162.sinks.logonly import LogOnlySink

        return LogOnlySink(swap_tariffs=config.swap_tariffs)
    if name == "http" and config.http_listen:
        from iskra_me162.sinks.http import HttpEndpoint
        from iskra_me162.sinks.pages import http_pages

        endpoint = HttpEndpoint(
            config.http_listen,
            config.reading_max_age,
            pages=http_pages(),
            health=health,
            device_name=config.device_name,
        )
        endpoint.start()  # SinkError when the address cannot be bound
        return endpoint
    if name == "mqtt" and config.mqtt_host:
        from iskra_me162.sinks.mqtt import MqttSink

        return MqttSink(
            config.mqtt_host,
            config.mqtt_port,
            config.mqtt_username,
            config.mqtt_password,
            config.mqtt_tls,
            config.mqtt_ca_file,
            config.mqtt_topic_prefix,
            config.mqtt_discovery_prefix,
            config.mqtt_retain,
            config.reading_max_age,
            config.device_name,
        )
    return None


# The sinks that may fail to start at start-up without stopping the daemon: the HTTP endpoint's
# address may be held by another program, typically a second instance (a second meter) given
# the same http_listen; the meter, the state file and the other sinks need not wait for it.
OPTIONAL_AT_START = ("http",)


def build_sinks(
    config: Config,
    keep: dict[str, Sink] | None = None,
    old: Config | None = None,
    health: Health | None = None,
) -> list[Sink]:
    """All sinks ``config`` switches on; reuses those in ``keep`` whose settings are unchanged.

    Without ``keep`` (start-up) a sink that cannot start raises SinkError: better to stop with
    a clear message than to run half-configured. Except the sinks of OPTIONAL_AT_START, and
    any sink on reload: it is logged and left out, and the next reload tries it again.
    """
    sinks: list[Sink] = []
    keep = dict(keep or {})
    for name, keys in SINK_KEYS.items():
        current = keep.pop(name, None)
        unchanged = old is not None and all(getattr(old, k) == getattr(config, k) for k in keys)
        if current is not None and unchanged:
            sinks.append(current)
            continue
        if current is not None:
            current.close()  # before building the new one: it may need the same port
        try:
            sink = build_sink(name, config, health)
        except (SinkError, ConfigError) as error:
            optional = isinstance(error, SinkError) and name in OPTIONAL_AT_START
            if old is None and not optional:
                for started in sinks:
                    started.close()
                raise
            log.error("%s: %s; running without it until the next reload", name, error)
            continue
        if sink is not None:
            sinks.append(sink)
    for leftover in keep.values():
        leftover.close()
    return sinks


def _live_key(values: Values) -> tuple[object, ...]:
    """What the live sinks show of ``values``: a new message only when this changed."""
    net = values.net_power
    return (
        values.import_energy and values.import_energy.total_wh,
        values.export_energy and values.export_energy.total_wh,
        net and net.watts,
    )


def status_line(values: Values) -> str:
    """One line for the log and systemd's status: energy, power and where it came from."""
    parts = []
    for direction, energy in (("import", values.import_energy), ("export", values.export_energy)):
        if energy is not None:
            parts.append(f"{direction} {number_text(energy.total_kwh)} kWh")
    net = values.net_power
    if net is not None:
        span = f" over {net.span_s:.0f} s" if net.span_s is not None else ""
        source = f"from the {net.source}{span}"
        if values.import_power and values.export_power and net.source == "mixed":
            source = (
                f"import from the {values.import_power.source}, "
                f"export from the {values.export_power.source}"
            )
        parts.append(f"power {net.watts:.0f} W ({source})")
    when = values.wall_time.strftime("%Y-%m-%d %H:%M:%S UTC")
    name = values.identity.model or values.identity.meter_id
    return f"{name}: {', '.join(parts) or 'no energy registers'} at {when}"


class Daemon:
    """The long-running service. ``run()`` returns the process exit status."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.signals = _Signals()
        self.problems = ProblemLog()
        self.meter = build_meter(config, self._tick)
        self.deriver = build_deriver(config)
        self.health = Health()
        self.sinks = build_sinks(config, health=self.health)
        self.failed_cycles = 0
        self.watchdog_starved = False
        self._live_key: object = None  # what the live sinks got last, and when
        self._live_sent_at = float("-inf")
        self._pushing = False  # inside sink.publish(): SIGTERM interrupts it at once
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- signals -----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.signals.stop = True
        self.meter.port.cancel_read()
        if self._pushing:
            # A sink waiting on a slow server (up to domoticz_timeout) must not hold up the
            # exit: the counters are cumulative, the next run sends them.
            raise Shutdown

    def _on_reload(self, signum: int, _frame: object) -> None:
        self.signals.reload = True

    def _tick(self) -> None:
        """Called between read slices: leave at once on SIGTERM, keep the watchdog fed."""
        if self.signals.stop:
            raise Shutdown
        self._feed_watchdog(time.monotonic())

    # --- watchdog ----------------------------------------------------------------------------
    def _feed_watchdog(self, now: float) -> None:
        due = self.notifier.watchdog_due(now)
        if due is None or now < due or self.watchdog_starved:
            return
        self.notifier.ping(now)

    def _count_failure(self) -> None:
        self.failed_cycles += 1
        limit = self.config.watchdog_failed_cycles
        if self.failed_cycles >= limit and not self.watchdog_starved:
            self.watchdog_starved = True
            if self.notifier.watchdog_interval is not None:
                log.error(
                    "no good readout for %d cycles in a row: no longer feeding the systemd "
                    "watchdog, so that systemd restarts the service",
                    self.failed_cycles,
                )
            else:
                log.error("no good readout for %d cycles in a row", self.failed_cycles)

    def _count_success(self) -> None:
        if self.watchdog_starved:
            log.warning("good readout again after %d failed cycles", self.failed_cycles)
        self.failed_cycles = 0
        self.watchdog_starved = False

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signal_handlers()
        for warning in self.config.warnings:
            log.warning("%s", warning)
        log.info(
            "reading %s%s every %d s (%s), sinks: %s",
            f"{self.config.device_name!r} on " if self.config.device_name else "",
            self.config.port,
            self.config.update_interval,
            self.config.protocol,
            ", ".join(sink.name for sink in self.sinks),
        )
        self.notifier.ready(f"waiting for the first readout from {self.config.port}")
        next_due = time.monotonic()
        try:
            while not self.signals.stop:
                if self.signals.reload:
                    self.signals.reload = False
                    if self.reload():
                        next_due = time.monotonic()  # another port or protocol: read it now
                    # Otherwise the schedule stays: a readout right after the last one would
                    # give power from seconds of counter change, and some meters refuse a new
                    # session for a minute after one.
                    continue
                if self.meter.pushes:
                    next_due = self._push_step(next_due)
                    continue
                self._wait_until(next_due)
                if not (self.signals.stop or self.signals.reload):
                    next_due = self._cycle(next_due)
        except Shutdown:
            pass
        finally:
            self.shutdown()
        return 0

    def _cycle(self, due: float) -> float:
        """One readout and push; returns when the next one is due (fixed rate, back-off)."""
        readout = self._read_meter()
        now = time.monotonic()
        if readout is None:
            self._count_failure()
            return now + self._retry_delay()
        self._count_success()
        values = self._derive(readout)
        if values is not None:
            log.info("%s", status_line(values))
            self._publish(values, self.sinks)
        self._feed_watchdog(time.monotonic())
        return self._next_slot(due, now)

    def _push_step(self, due: float) -> float:
        """Push meters: take the next frame; live sinks get every one, the others one per
        update_interval. Returns the time of the next scheduled push."""
        readout = self._read_meter()
        now = time.monotonic()
        if readout is None:
            self._count_failure()
            if not self.meter.port.is_open:  # the port failed: back off before reopening it
                self._wait_until(now + self._retry_delay())
            return due
        self._count_success()
        values = self._derive(readout)
        if values is None:
            pass  # rejected: nothing published, the schedule stays
        elif now >= due:
            log.info("%s", status_line(values))
            # The live sinks' share of the schedule is a heartbeat (MQTT's expire_after), even
            # unchanged; but never a second message within LIVE_MIN_INTERVAL of the last one.
            sinks = self.sinks
            if now - self._live_sent_at < LIVE_MIN_INTERVAL:
                sinks = [sink for sink in sinks if sink.name not in LIVE_SINKS]
            else:
                self._live_key, self._live_sent_at = _live_key(values), now
            self._publish(values, sinks)
            due = self._next_slot(due, now)
        elif self._live_news(values, now):
            if log.isEnabledFor(logging.DEBUG):  # a line per frame or poll: only when shown
                log.debug("%s", status_line(values))
            self._publish(values, [sink for sink in self.sinks if sink.name in LIVE_SINKS])
        self._feed_watchdog(time.monotonic())
        return due

    def _live_news(self, values: Values, now: float) -> bool:
        """Whether the live sinks get ``values``: a value changed, and a second has passed."""
        key = _live_key(values)
        if key == self._live_key or now - self._live_sent_at < LIVE_MIN_INTERVAL:
            return False
        self._live_key, self._live_sent_at = key, now
        return True

    def _next_slot(self, due: float, now: float) -> float:
        """Fixed rate on the monotonic clock: the slot after the one just served, skipping any
        a slow readout overran, so the schedule never drifts."""
        interval = self.config.update_interval
        next_due = due + interval
        if next_due <= now:
            next_due += ((now - next_due) // interval + 1) * interval
        return next_due

    def _retry_delay(self) -> float:
        """5 s, then doubling per failed cycle, never longer than update_interval."""
        interval = self.config.update_interval
        backoff = min(FIRST_RETRY_DELAY * 2 ** (self.failed_cycles - 1), interval)
        return max(backoff, min(FIRST_RETRY_DELAY, interval))

    def _read_meter(self) -> Readout | None:
        try:
            readout = self.meter.read()
        except Shutdown:
            raise
        except PortError as error:
            self.health.readout_failed(error)
            self._meter_failed(f"{error}; retrying")
            self.meter.close()
            return None
        except WrongProtocol as error:
            self.health.readout_failed(error)
            self._meter_failed(f"{error} in {self.config.path}", logging.ERROR)
            return None
        except IskraError as error:
            self.health.readout_failed(error)
            self._meter_failed(f"readout rejected: {error}")
            return None
        except Exception as error:  # a bug: log it whole, keep the port fresh, and keep going
            self.health.readout_failed(error)
            log.exception("unexpected error while reading the meter (please report this)")
            self.meter.close()
            return None
        finally:
            self.health.fallbacks_now(getattr(self.meter, "fallbacks", 0))
        self.problems.ok("meter", "good readout again")
        port = self.meter.port
        self.health.readout_ok(
            baudrate=port.baudrate if port.is_open else None,
            meter_counters=getattr(self.meter, "stats", None),
        )
        return readout

    def _meter_failed(self, message: str, level: int = logging.WARNING) -> None:
        """Log a failed readout (once per change) and say so in systemd's status, so that
        ``systemctl status`` never shows the last good readout as if all were well."""
        self.problems.problem("meter", message, level)
        self.notifier.status(f"no readout ({self.failed_cycles + 1} failed in a row): {message}")

    def _derive(self, readout: Readout) -> Values | None:
        """The values of ``readout``, or None when the derive stage rejected it (logged)."""
        try:
            values = self.deriver.derive(readout)
        except ReadoutRejected as error:
            self.health.readout_failed(error)
            self.problems.problem("readout", str(error))
            return None
        self.health.derived(values)
        self.problems.ok("readout", "the meter's readouts are consistent again")
        if values.power_missing:
            self.problems.problem("power", f"not known yet: {values.power_missing}", logging.INFO)
        else:
            self.problems.ok("power", "known now", logging.INFO)
        return values

    def _publish(self, values: Values, sinks: list[Sink]) -> None:
        sink_states = []
        for sink in sinks:
            # A push may take up to its timeout: feed the watchdog first, not only after.
            self._feed_watchdog(time.monotonic())
            self._pushing = True
            try:
                if self.signals.stop:
                    raise Shutdown
                sink.publish(values)
            except SinkError as error:
                self.health.pushed(sink.name, str(error), getattr(sink, "connected", None))
                self.problems.problem(sink.name, str(error))
                sink_states.append(f"{sink.name} failing")
            except Exception as error:  # a bug in a sink must not stop the loop or other sinks
                self.health.pushed(sink.name, f"unexpected error: {type(error).__name__}")
                log.exception("%s: unexpected error (please report this)", sink.name)
                sink_states.append(f"{sink.name} failing")
            else:
                self.health.pushed(sink.name, connected=getattr(sink, "connected", None))
                self.problems.ok(sink.name)
                sink_states.append(f"{sink.name} ok")
            finally:
                self._pushing = False
        self.notifier.status(f"{status_line(values)}; {', '.join(sink_states)}")

    def _wait_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` or a signal, waking only to feed the watchdog."""
        while not (self.signals.stop or self.signals.reload):
            now = time.monotonic()
            if now >= deadline:
                return
            wake = deadline
            ping = self.notifier.watchdog_due(now)
            if ping is not None and not self.watchdog_starved:
                if ping <= now:
                    self._feed_watchdog(now)
                    continue
                wake = min(wake, ping)
            ready, _, _ = select.select([self._wake_read], [], [], wake - now)
            if ready:
                try:
                    while os.read(self._wake_read, 512):
                        pass
                except BlockingIOError:
                    pass

    # --- reload and shutdown -----------------------------------------------------------------
    def reload(self) -> bool:
        """Read the configuration again; True when the meter was set up anew (its port or
        protocol changed), so that it is read at once."""
        self.notifier.reloading()
        try:
            new = load_config(self.config.path, self.config.state_file_option)
        except Exception as error:  # ConfigError, or a bug: never die on a reload
            if not isinstance(error, ConfigError):
                log.exception("unexpected error while reading the configuration")
            log.error("reload failed, keeping the running configuration: %s", error)
            self.notifier.status(f"reload failed: {error}")
            self.notifier.send("READY=1")
            return False
        old = self.config
        for warning in new.warnings:
            log.warning("%s", warning)
        from iskra_me162.logs import setup_logging

        setup_logging(new.print_debug, new.secrets)
        self.config = new
        meter_keys = (
            *(key for key in keys_of("meter") if key not in NAMING_KEYS),
            "update_interval" if new.live_power else "port",
        )
        meter_changed = any(getattr(old, key) != getattr(new, key) for key in meter_keys)
        if meter_changed:
            self.meter.close()
            self.meter = build_meter(new, self._tick)
        if any(getattr(old, key) != getattr(new, key) for key in DERIVE_KEYS):
            self.deriver.close()  # its counters go to the state file, the new one reads them
            self.deriver = build_deriver(new)
        self.sinks = build_sinks(new, {sink.name: sink for sink in self.sinks}, old, self.health)
        log.info("configuration reloaded from %s", new.path)
        self.notifier.send("READY=1")
        reread = ("port", "protocol")
        return any(getattr(old, key) != getattr(new, key) for key in reread)

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.meter.close()
        self.deriver.close()
        for sink in self.sinks:
            try:
                sink.close()
            except IskraError as error:
                log.warning("%s: %s", sink.name, error)
        self.notifier.close()
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        log.info("stopped")
