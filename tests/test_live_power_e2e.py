"""Acceptance of issue 12 (live power from a meter without a power register), end to end.

The real daemon (``python -m iskra_me162``, a subprocess) reads the project's simulated ISKRA
ME162 on a byte-timed pseudo-terminal (:class:`PtyMeter`, ``speedup`` 1: every character takes
its ten bit times at the baud rate in use, the meter keeps its 200 ms reaction time) with
``live_power = True`` at the default ``live_power_interval``, and publishes to its HTTP
endpoint on 127.0.0.1 and to a real Mosquitto broker (:mod:`tests.broker`). The issue's text is
the oracle:

1. Freshness and accuracy (HTTP and MQTT): after a step to load P the published import power is
   within 5 % of P within ``max(10 s, 3 * 3600 / P s)`` of the step, and at a steady load of
   200 W or more it stays within 3 %. The steps are the simulator's load schedule, counted from
   the meter's start; the daemon's start counts as a step to the first load at its first R1
   (before that it cannot know anything). MQTT carries one power, ``power_w``, the net power;
   with no export it is the import power.
2. The meter sees only the request, the ACK, R1, B0 and NAK (every byte it received is part of
   such a message), and a B0 that it hears before the daemon exits on SIGTERM, within 2 s.
3. A meter without programming mode (it ignores the option-1 ACK, answers NAK or a readout, or
   ``(ERROR)`` for 1.8.0) is read in readout mode, with exactly one log line saying that live
   power is off and why; its energy is the meter's counters, its power the counter change.
4. Fault runs (a BCC error in the middle of polling, the meter silent for 20 s, the IR head
   unplugged and plugged in again) end with correct values again, and nothing wrong is
   published in between.

What "wrong" means (checked on every HTTP sample and every MQTT state message of a run):

* A published power figure W at time t is wrong unless it is near a load P that the meter
  held at some moment s with t - A(P') < s <= t, where P' is the load that followed P (the
  freshness allowance of the change away from P: by then the figure must have left P) and
  A(P') = max(10 s, 3 * 3600 / P' s). "Near" is within 5 % + 1 W (whole watts), or within the
  one-step resolution the issue allows: "the timing of each step is only known to within one
  poll interval", so two 1 Wh steps at P (period T = 3600 / P s), each timed to within one
  poll cycle c (:data:`POLL_CYCLE_S`), say 3600 / (T + c) .. 3600 / (T - c) W; the issue asks
  for 5 % only after the allowance, and there this file asks for it separately (3 % at steady
  load). While two or more loads are allowed (the figure moving from the old load to the new
  one, or coming down as the no-step bound 3600 / t falls), anything between them is not wrong
  either. So 0 W at a steady load is wrong, and so is a figure from the counter change over a
  few seconds (692 W at 300 W); an early estimate from two steps 12 % off at 1500 W is not.
* A missing figure (``null``, no answer, a stale endpoint, no message) is never wrong.
* Energies: the import total never goes backwards, never gets ahead of the meter's register
  (that would be a jump) and is never published for a moment before the meter counted it; the
  export total (no export load) never changes.

"Correct values again" after a fault: from the fault's end plus the recovery allowance (the
longest back-off, ``update_interval``, plus 5 s to enter programming mode again, plus the
freshness allowance A(P)), the figure in force is present and within 5 % of the load, and the
import total is no older than :data:`ENERGY_LAG_S`.

Every scenario is one daemon with one meter; the scenarios of the selected tests run at the
same time (each needs wall time, not CPU), and the tests of one scenario share its run, so the
module takes about as long as its longest scenario (the load steps, ~115 s).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.simulator.counters import LoadStep
from iskra_me162.simulator.model import (
    ALLOWED_KINDS,
    Faults,
    MeterConfig,
    MeterModel,
    ReceivedCommand,
    ServedRead,
    ServedReadout,
    SessionState,
    Transmission,
)
from iskra_me162.simulator.pty_meter import PtyMeter
from tests.broker import Broker, Observer, free_port
from tests.daemonproc import DaemonProcess, write_config

SAMPLE_EVERY = 0.2  # seconds between two GETs of the endpoint
FRESH_BAND = 0.05  # "within 5 %"
STEADY_BAND = 0.03  # "stays within ±3 %" ...
STEADY_FROM_W = 200  # ... at a steady load of this or more
WHOLE_WATT = 1  # figures are whole watts
STOP_LIMIT_S = 2.0  # SIGTERM sends B0 first, and still finishes within 2 s
REENTER_S = 5.0  # a late B0, request, identification and ACK at 300 Bd, the meter's P0
ENERGY_LAG_S = 3.0  # a poll cycle, the live sinks' one-a-second limit, the sampling
MAX_COMMANDS = 10_000  # MeterModel.commands keeps this many
# How well one poll times a counter step: 1.8.0 is read every poll cycle, which is the poll
# interval or, when a tariff register is read too, three R1 answers of ~0.25 s (the issue's
# figure at 9600 Bd), plus a little jitter.
POLL_CYCLE_S = 0.8


def allowance_s(watts: int) -> float:
    """The issue's freshness allowance after a step to ``watts``: max(10 s, 3 x 3600 / P s)."""
    return max(10.0, 3 * 3600 / watts) if watts > 0 else math.inf


def tolerance_w(watts: int, band: float = FRESH_BAND) -> float:
    return band * watts + WHOLE_WATT


def one_step_range_w(watts: int) -> tuple[float, float]:
    """The powers that one 1 Wh step period at ``watts``, timed to within one poll cycle,
    allows: 3600 / (T + cycle) .. 3600 / (T - cycle) with T = 3600 / P."""
    period = 3600 / watts
    high = 3600 / (period - POLL_CYCLE_S) if period > POLL_CYCLE_S else math.inf
    return 3600 / (period + POLL_CYCLE_S), high


def near(figure: Decimal, watts: int) -> bool:
    """Within 5 % (+ 1 W) or the one-step resolution of ``watts`` (see the module doc)."""
    low, high = one_step_range_w(watts)
    return abs(figure - watts) <= tolerance_w(watts) or low - 1 <= figure <= high + 1


# --- the meter, counting every byte the daemon writes ---------------------------------------------


class CountingModel(MeterModel):
    """The simulator's meter model, counting every byte the reader wrote (heard or not)."""

    def __init__(self, config: MeterConfig, now: float) -> None:
        super().__init__(config, now)
        self.bytes_in = 0

    def receive(self, data: bytes, now: float, sent: bytes | None = None) -> list[Transmission]:
        self.bytes_in += len(sent if sent is not None else data)
        return super().receive(data, now, sent=sent)


# --- the true load and counters -------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """The meter's import load ``watts`` from ``start`` to ``end`` (monotonic seconds)."""

    watts: int
    start: float
    end: float


def segments(config: MeterConfig, started: float) -> list[Segment]:
    """The load schedule of ``config`` on the monotonic clock of a meter started at ``started``."""
    steps = config.load or (LoadStep(0.0, config.import_w),)
    ends = [started + step.at for step in steps[1:]] + [math.inf]
    return [
        Segment(step.watts, started + step.at, end) for step, end in zip(steps, ends, strict=True)
    ]


def true_import_wh(config: MeterConfig, started: float, t: float) -> int:
    """The meter's import total at ``t``: its start value plus every whole Wh of the load."""
    joules = sum(
        seg.watts * max(0.0, min(t, seg.end) - seg.start) for seg in segments(config, started)
    )
    return sum(config.start_import_wh) + int(joules // 3600)


def allowed_loads(segs: Sequence[Segment], t: float) -> list[int]:
    """The loads a figure published at ``t`` may show (see "wrong" in the module doc)."""
    found = []
    for index, seg in enumerate(segs):
        following = segs[index + 1].watts if index + 1 < len(segs) else None
        grace = 0.0 if following is None else allowance_s(following)
        if seg.start <= t < seg.end + grace:
            found.append(seg.watts)
    return found


def is_wrong(figure: Decimal, t: float, segs: Sequence[Segment]) -> bool:
    loads = allowed_loads(segs, t)
    if any(near(figure, load) for load in loads):
        return False
    if len(loads) >= 2:
        low, high = min(loads), max(loads)
        return not low - tolerance_w(low) <= figure <= high + tolerance_w(high)
    return True


# --- what the sinks published ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One published state: an HTTP answer, or an MQTT state message as it arrived."""

    at: float  # monotonic
    watts: Decimal | None  # HTTP: import_power_w; MQTT: power_w (net; no export here)
    import_wh: int | None
    export_wh: int | None
    source: str | None = None


def _wh(kwh: object) -> int | None:
    if kwh is None:
        return None
    assert isinstance(kwh, Decimal | int), kwh  # 2000.000 kWh may come as 2000
    return int(kwh * 1000)


def http_sample(port: int) -> Sample:
    """GET /api/v1/readings now; an error or a 503 (no reading, stale) is a missing figure."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/api/v1/readings")
        response = connection.getresponse()
        body = response.read()
        at = time.monotonic()
        if response.status != 200:
            return Sample(at, None, None, None)
        document = json.loads(body, parse_float=Decimal)
    except (OSError, http.client.HTTPException):
        return Sample(time.monotonic(), None, None, None)
    finally:
        connection.close()
    return Sample(
        at,
        document.get("import_power_w"),
        _wh(document.get("import_kwh")),
        _wh(document.get("export_kwh")),
        document.get("power_source"),
    )


def mqtt_samples(observer: Observer) -> list[Sample]:
    samples = []
    for message in list(observer.messages):
        if not message.topic.endswith("/state"):
            continue
        document = json.loads(message.payload, parse_float=Decimal)
        samples.append(
            Sample(
                message.at,
                document.get("power_w"),
                _wh(document.get("import_kwh")),
                _wh(document.get("export_kwh")),
            )
        )
    return samples


def in_force(samples: Sequence[Sample], t: float) -> Sample | None:
    """The latest sample at or before ``t`` (what a reader of the sink saw then)."""
    found = None
    for sample in samples:
        if sample.at > t:
            break
        found = sample
    return found


# --- one run: a meter, the daemon, the samples ----------------------------------------------------


@dataclass
class Run:
    """What one daemon published about one meter, and what the meter saw."""

    name: str
    config: MeterConfig
    started: float  # the meter's start (its load schedule counts from here)
    update_interval: int
    http: list[Sample] = field(default_factory=list)
    mqtt: list[Sample] | None = None  # None: no broker here
    mqtt_missing: str = ""
    commands: list[ReceivedCommand] = field(default_factory=list)
    reads: list[ServedRead] = field(default_factory=list)
    readouts: list[ServedReadout] = field(default_factory=list)
    bytes_in: int = 0
    violations: int = 0
    log: str = ""
    status: int | None = None
    stop_s: float = 0.0
    sigterm_at: float = 0.0
    state_after: SessionState | None = None
    marks: dict[str, float] = field(default_factory=dict)  # fault start/end times

    @property
    def segments(self) -> list[Segment]:
        return segments(self.config, self.started)

    @property
    def first_poll(self) -> float:
        polls = [command.at for command in self.commands if command.kind == "read"]
        assert polls, f"{self.name}: the daemon never polled a register (R1):\n{self.log}"
        return polls[0]

    def true_wh(self, t: float) -> int:
        return true_import_wh(self.config, self.started, t)

    def sinks(self) -> list[tuple[str, list[Sample]]]:
        found = [("HTTP", self.http)]
        if self.mqtt is not None:
            found.append(("MQTT", self.mqtt))
        return found


Script = Callable[[PtyMeter, Run], None]


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def run_scenario(
    name: str,
    directory: Path,
    config: MeterConfig,
    *,
    duration: float,
    update_interval: int,
    broker: Broker | None,
    script: Script | None = None,
    live_power: bool = True,
) -> Run:
    """Start the meter and the daemon, sample the endpoint, run ``script`` (faults), stop the
    daemon ``duration`` s after the meter's start with SIGTERM, and return what happened."""
    model = CountingModel(config, time.monotonic())
    meter = PtyMeter(link=str(directory / "ttyIR"), model=model)
    meter.start()
    run = Run(name, config, meter.started, update_interval)
    http_port = free_port()
    prefix = f"live-{name}"
    settings: dict[str, object] = {
        "port": str(meter.link),
        "update_interval": update_interval,
        "print_debug": 1,
        "state_file": str(directory / "state.json"),
        "http_listen": f"127.0.0.1:{http_port}",
        "live_power": live_power,
    }
    observer = None
    if broker is not None:
        observer = Observer(broker, topics=(f"{prefix}/#",))
        settings.update(mqtt_host=broker.host, mqtt_port=broker.port, mqtt_topic_prefix=prefix)
    daemon = DaemonProcess(write_config(directory / "iskra-me162.conf", **settings))
    done = threading.Event()
    failed: list[BaseException] = []

    def sample() -> None:
        try:
            while not done.is_set():
                begun = time.monotonic()
                run.http.append(http_sample(http_port))
                done.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - begun)))
        except BaseException as error:
            failed.append(error)
            raise

    sampler = threading.Thread(target=sample, name=f"sampler-{name}", daemon=True)
    sampler.start()
    try:
        if script is not None:
            script(meter, run)
        sleep_until(run.started + duration)
        run.sigterm_at = time.monotonic()
        run.status, run.stop_s = daemon.stop()
        run.state_after = meter.state()
    finally:
        done.set()
        sampler.join(5)
        daemon.close()
        run.log = daemon.output
        run.commands = meter.commands
        run.reads = meter.reads
        run.readouts = meter.readouts
        run.violations = meter.violations
        run.bytes_in = model.bytes_in
        meter.stop()
        if observer is not None:
            time.sleep(0.3)  # the last messages on their way
            observer.close()
            run.mqtt = mqtt_samples(observer)
    if failed:
        raise AssertionError(f"{name}: sampling the endpoint failed: {failed[0]!r}")
    return run


# --- the scenarios ------------------------------------------------------------------------------

# Load profiles (W from s after the meter's start) and when the daemon gets SIGTERM. Each step
# lasts for its freshness allowance A (36 s at 300 W from the first poll, 10 s at 2000 W, 13.5 s
# at 800 W) and more; "steady" is from 2 A on (see step_problems): 2000 W in the first, 800 W
# for 7 s at the end of it, 300 W for 13 s at the end of the second.
PROFILES: dict[str, tuple[tuple[LoadStep, ...], float]] = {
    "load-steps": ((LoadStep(0, 300), LoadStep(48, 2000), LoadStep(78, 800)), 112.0),
    "step-down": ((LoadStep(0, 2000), LoadStep(20, 300)), 105.0),
}
# A low load: a 1 Wh step every 9 s (allowance 27 s), where power from a counter change over a
# few seconds (0 W, 720 W) is far off and an estimate from two steps is within 9 %.
FAULT_LOAD_W = 400
FAULT_AT = 33.0  # s after the meter's start: the figure is fresh by then (first poll + 27 s)
FAULT_INTERVAL = 10  # update_interval of the fault runs: the longest back-off
SILENT_FOR = 20.0
UNPLUGGED_FOR = 6.0
HOLD_AFTER_RECOVERY = 10.0  # correct values for this long at the end of a fault run
READOUT_MODE_W = 3600  # 1 Wh a second
READOUT_INTERVAL = 10
READOUT_DURATION = 45.0


def recovery_s(watts: int) -> float:
    return FAULT_INTERVAL + REENTER_S + allowance_s(watts)


def _load_profile(name: str, directory: Path, broker: Broker | None) -> Run:
    load, end = PROFILES[name]
    config = MeterConfig(load=load, progmode="on")
    return run_scenario(name, directory, config, duration=end, update_interval=30, broker=broker)


def _bcc_error(meter: PtyMeter, run: Run) -> None:
    sleep_until(run.started + FAULT_AT)
    reads = meter.reads
    number = (reads[-1].number if reads else 0) + 2
    meter.set_faults(read_bad_bcc_at=number)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spoilt = [read for read in meter.reads if read.fault == "bad_bcc"]
        if spoilt:
            run.marks["fault_start"] = run.marks["fault_end"] = spoilt[0].at
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the daemon did not read R1 answer #{number} within 10 s")
    sleep_until(run.marks["fault_end"] + recovery_s(FAULT_LOAD_W) + HOLD_AFTER_RECOVERY)


def _silent(meter: PtyMeter, run: Run) -> None:
    # Known in advance, so that the runner only has to wait: silent_from counts from the start.
    run.marks["fault_start"] = run.started + FAULT_AT
    run.marks["fault_end"] = run.started + FAULT_AT + SILENT_FOR


def _unplug(meter: PtyMeter, run: Run) -> None:
    sleep_until(run.started + FAULT_AT)
    run.marks["fault_start"] = time.monotonic()
    meter.unplug()
    time.sleep(UNPLUGGED_FOR)
    meter.replug()
    run.marks["fault_end"] = time.monotonic()


def _fault_run(kind: str, directory: Path, broker: Broker | None) -> Run:
    faults = Faults()
    hold = recovery_s(FAULT_LOAD_W) + HOLD_AFTER_RECOVERY
    if kind == "silent":
        faults = Faults(silent_from=FAULT_AT, silent_for=SILENT_FOR)
        script: Script = _silent
        end = FAULT_AT + SILENT_FOR + hold
    elif kind == "unplug":
        script = _unplug
        end = FAULT_AT + UNPLUGGED_FOR + hold
    else:
        script = _bcc_error  # it waits until the end itself: when the R1 comes is not known
        end = FAULT_AT + hold
    config = MeterConfig(import_w=FAULT_LOAD_W, progmode="on", faults=faults)
    return run_scenario(
        f"fault-{kind}",
        directory,
        config,
        duration=end,
        update_interval=FAULT_INTERVAL,
        broker=broker,
        script=script,
    )


# The simulator's progmode answer to ACK 0 Z 1, and registers it answers (ERROR) for.
NO_PROGMODE: dict[str, tuple[str, tuple[str, ...]]] = {
    "ignore": ("ignore", ()),  # no answer
    "nak": ("nak", ()),
    "readout": ("readout", ()),  # a data readout instead of P0
    "error": ("on", ("1.8.0",)),  # P0, then (ERROR) for R1 1.8.0
}


def _no_progmode(kind: str, directory: Path, broker: Broker | None) -> Run:
    progmode, errors = NO_PROGMODE[kind]
    faults = Faults(error_registers=errors)
    config = MeterConfig(import_w=READOUT_MODE_W, progmode=progmode, faults=faults)
    return run_scenario(
        f"no-progmode-{kind}",
        directory,
        config,
        duration=READOUT_DURATION,
        update_interval=READOUT_INTERVAL,
        broker=None,
    )


SCENARIOS: dict[str, Callable[[Path, Broker | None], Run]] = {
    **{name: (lambda d, b, name=name: _load_profile(name, d, b)) for name in PROFILES},
    **{
        f"fault-{kind}": (lambda d, b, kind=kind: _fault_run(kind, d, b))
        for kind in ("bcc", "silent", "unplug")
    },
    **{
        f"no-progmode-{kind}": (lambda d, b, kind=kind: _no_progmode(kind, d, b))
        for kind in NO_PROGMODE
    },
}
NEEDS_BROKER = {*PROFILES, "fault-bcc", "fault-silent", "fault-unplug"}


def scenarios_of(item: pytest.Item) -> set[str]:
    """The scenarios one collected test of this module uses."""
    name = getattr(item, "originalname", item.name)
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    param = params.get("kind")
    if name.startswith("test_freshness") or name.startswith("test_meter_sees_only"):
        return {params["profile"]}
    if name == "test_fault_run_ends_with_correct_values_and_nothing_wrong_between":
        return {f"fault-{param}"}
    if name == "test_meter_without_programming_mode_is_read_in_readout_mode":
        return {f"no-progmode-{param}"}
    return set()


class Runs:
    """The scenarios of the selected tests, all started at once; :meth:`get` waits for one.
    ``no_broker``: why there is no MQTT broker (the scenarios then check HTTP only)."""

    def __init__(self, futures: dict[str, Future[Run]], no_broker: str = "") -> None:
        self._futures = futures
        self.no_broker = no_broker

    def get(self, name: str) -> Run:
        return self._futures[name].result(timeout=600)


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterable[Runs]:
    module = sys.modules[__name__]
    wanted: set[str] = set()
    for item in request.session.items:
        if getattr(item, "module", None) is module:
            wanted |= scenarios_of(item)
    broker: Broker | None = None
    no_broker = ""
    with contextlib.ExitStack() as stack:
        if wanted & NEEDS_BROKER:
            try:
                broker = stack.enter_context(Broker(tmp_path_factory.mktemp("broker")))
            except (pytest.skip.Exception, pytest.fail.Exception) as error:
                # HTTP is checked all the same; the MQTT test says why it could not run.
                no_broker = f"{type(error).__name__}: {error}"
        pool = stack.enter_context(ThreadPoolExecutor(max(1, len(wanted))))
        futures = {}
        for name in sorted(wanted):
            directory = tmp_path_factory.mktemp(name)
            use = broker if name in NEEDS_BROKER else None
            futures[name] = pool.submit(SCENARIOS[name], directory, use)
        yield Runs(futures, no_broker)


# --- checks shared by the tests -------------------------------------------------------------------


def _show(samples: Iterable[Sample], origin: float, limit: int = 30) -> str:
    """``t:W`` per sample (seconds since the meter's start), a run of one figure as one item."""
    items: list[list] = []
    for s in samples:
        if items and items[-1][2] == s.watts:
            items[-1][1] = s.at
        else:
            items.append([s.at, s.at, s.watts])
    shown = [
        f"{a - origin:.1f}s:{w}" if a == b else f"{a - origin:.1f}-{b - origin:.1f}s:{w}"
        for a, b, w in items
    ]
    return ", ".join(shown[:limit]) + (f" ... ({len(shown)} in all)" if len(shown) > limit else "")


def wrong_figures(samples: Sequence[Sample], segs: Sequence[Segment]) -> list[Sample]:
    return [s for s in samples if s.watts is not None and is_wrong(s.watts, s.at, segs)]


def energy_problems(run: Run, samples: Sequence[Sample]) -> list[str]:
    """Backwards, ahead of the meter (a jump), or an export total that moved."""
    problems = []
    last: Sample | None = None
    start_export = sum(run.config.start_export_wh)
    for sample in samples:
        if sample.import_wh is None:
            continue
        when = f"{sample.at - run.started:.1f}s"
        if last is not None and last.import_wh is not None and sample.import_wh < last.import_wh:
            problems.append(f"{when}: import {sample.import_wh} Wh after {last.import_wh} Wh")
        # A hair of slack for the meter's own float arithmetic at a Wh boundary.
        if sample.import_wh > run.true_wh(sample.at + 0.01):
            problems.append(
                f"{when}: import {sample.import_wh} Wh, the meter counted "
                f"{run.true_wh(sample.at)} Wh"
            )
        if sample.export_wh is not None and sample.export_wh != start_export:
            problems.append(f"{when}: export {sample.export_wh} Wh, the meter has {start_export}")
        last = sample
    return problems


def energy_lag_problems(run: Run, samples: Sequence[Sample], start: float, end: float) -> list[str]:
    """From ``start`` to ``end``, every half second: the import total in force is the meter's
    counter of at most ENERGY_LAG_S ago."""
    problems = []
    t = start
    while t < end:
        sample = in_force(samples, t)
        behind = run.true_wh(t - ENERGY_LAG_S)
        if sample is None or sample.import_wh is None or sample.import_wh < behind:
            shown = None if sample is None else sample.import_wh
            problems.append(f"{t - run.started:.1f}s: import {shown} Wh, the meter had {behind}")
        t += 0.5
    return problems


def freshness_problems(
    run: Run, samples: Sequence[Sample], start: float, end: float, watts: int, band: float
) -> list[str]:
    """From ``start`` to ``end``: the figure in force is present and within ``band`` of
    ``watts``, and so is every sample published in between."""
    if end <= start:
        return [f"nothing to check: {start - run.started:.1f}s .. {end - run.started:.1f}s"]
    first = in_force(samples, start)
    points = ([first] if first is not None else []) + [s for s in samples if start < s.at < end]
    if first is None:
        return [f"{start - run.started:.1f}s: nothing published yet"]
    bad = [s for s in points if s.watts is None or abs(s.watts - watts) > tolerance_w(watts, band)]
    if not bad:
        return []
    return [
        f"{watts} W, {start - run.started:.1f}s..{end - run.started:.1f}s, "
        f"{band:.0%} band: {len(bad)} of {len(points)} off: {_show(bad, run.started)}"
    ]


def step_problems(run: Run, samples: Sequence[Sample]) -> list[str]:
    """Freshness after every step of the load schedule, and accuracy at steady load.

    Within 5 % from the allowance A after each step until the next one; within 3 % (at 200 W
    or more) once the load is steady, which this file takes as "held for 2 A" (six steps or
    more): the issue asks for 5 % at A and 3 % at steady load, so steady must begin later
    than A, or the 5 % would say nothing.
    """
    problems = []
    stop = run.sigterm_at
    steady_checked = 0.0
    for index, seg in enumerate(run.segments):
        step_at = run.first_poll if index == 0 else seg.start
        end = min(seg.end, stop)
        fresh_from = step_at + allowance_s(seg.watts)
        problems += freshness_problems(run, samples, fresh_from, end, seg.watts, FRESH_BAND)
        steady_from = step_at + 2 * allowance_s(seg.watts)
        if seg.watts >= STEADY_FROM_W and steady_from < end:
            problems += freshness_problems(run, samples, steady_from, end, seg.watts, STEADY_BAND)
            steady_checked += end - steady_from
    assert steady_checked >= 5, f"{run.name}: a profile without a steady stretch says little"
    return problems


def commands_text(commands: Iterable[ReceivedCommand], origin: float) -> str:
    return "; ".join(f"{c.at - origin:.2f}s {c.kind} {c.data!r}" for c in commands)


# --- 1. freshness and accuracy ------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_freshness_and_accuracy_over_http(runs, profile):
    run = runs.get(profile)
    assert run.status == 0, run.log
    problems = step_problems(run, run.http)
    wrong = wrong_figures(run.http, run.segments)
    energy = energy_problems(run, run.http)
    assert run.http and any(s.watts is not None for s in run.http), run.log
    assert not problems, "\n".join(problems)
    assert not wrong, f"figures no load justifies: {_show(wrong, run.started)}"
    assert not energy, "\n".join(energy[:20])
    lag = energy_lag_problems(run, run.http, run.first_poll + REENTER_S, run.sigterm_at)
    assert not lag, "\n".join(lag[:20])


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_freshness_and_accuracy_over_mqtt(runs, profile):
    run = runs.get(profile)
    if run.mqtt is None:
        if runs.no_broker.startswith("Skipped"):
            pytest.skip(runs.no_broker)
        pytest.fail(f"no MQTT broker: {runs.no_broker}")
    assert run.mqtt, f"no state message on MQTT:\n{run.log}"
    problems = step_problems(run, run.mqtt)
    wrong = wrong_figures(run.mqtt, run.segments)
    energy = energy_problems(run, run.mqtt)
    assert not problems, "\n".join(problems)
    assert not wrong, f"figures no load justifies: {_show(wrong, run.started)}"
    assert not energy, "\n".join(energy[:20])
    lag = energy_lag_problems(run, run.mqtt, run.first_poll + REENTER_S, run.sigterm_at)
    assert not lag, "\n".join(lag[:20])
    # At most one message a second, and an unchanged one only as the heartbeat, once per
    # update_interval (arrival times jitter by milliseconds, not by a tenth of a second).
    pairs = list(itertools.pairwise(run.mqtt))
    crowded = [(a.at, b.at) for a, b in pairs if b.at - a.at < 0.9]
    assert not crowded, f"MQTT messages less than a second apart: {crowded[:5]}"
    repeats = [
        b.at
        for a, b in pairs
        if (a.watts, a.import_wh, a.export_wh) == (b.watts, b.import_wh, b.export_wh)
    ]
    too_often = [
        (a, b) for a, b in itertools.pairwise(repeats) if b - a < 0.9 * run.update_interval
    ]
    assert not too_often, f"unchanged MQTT messages more often than the heartbeat: {too_often}"


# --- 2. read-only commands, B0 before the exit ----------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_meter_sees_only_read_only_commands_and_b0_before_exit(runs, profile):
    run = runs.get(profile)
    origin = run.started
    assert len(run.commands) < MAX_COMMANDS, "the command log overflowed: make the run shorter"
    forbidden = [c for c in run.commands if c.kind not in ALLOWED_KINDS]
    assert not forbidden, commands_text(forbidden[:20], origin)
    assert run.violations == 0
    # Every byte the daemon wrote belongs to one of those messages: none was noise the
    # meter's framer dropped, nor a message left unfinished.
    assert sum(len(c.data) for c in run.commands) == run.bytes_in
    # SIGTERM: the last thing the meter got is a B0, sent after the signal, and it heard it
    # (a B0 sent while the meter talks is lost: it would still be in programming mode).
    last = run.commands[-1]
    assert last.kind == "break", commands_text(run.commands[-6:], origin)
    assert last.at >= run.sigterm_at, commands_text(run.commands[-6:], origin)
    assert run.state_after is SessionState.IDLE, run.state_after
    assert run.status == 0, run.log
    assert run.stop_s <= STOP_LIMIT_S, f"exited {run.stop_s:.2f} s after SIGTERM"
    # It was a live session: programming mode, R1 of both counters.
    assert any(c.kind == "ack" and c.data[3:4] == b"1" for c in run.commands)
    assert {c.register for c in run.commands if c.kind == "read"} >= {"1.8.0", "2.8.0"}


# --- 3. a meter without programming mode ----------------------------------------------------------

LIVE_OFF = re.compile(r"live power.*\boff\b", re.IGNORECASE)


@pytest.mark.parametrize("kind", sorted(NO_PROGMODE))
def test_meter_without_programming_mode_is_read_in_readout_mode(runs, kind):
    run = runs.get(f"no-progmode-{kind}")
    assert run.status == 0, run.log
    lines = [line for line in run.log.splitlines() if LIVE_OFF.search(line)]
    assert len(lines) == 1, f"{len(lines)} lines say live power is off:\n{run.log}"
    assert "programming mode" in lines[0], f"the line does not say why: {lines[0]}"
    assert run.violations == 0, commands_text(run.commands, run.started)
    # Readout mode: one readout per update_interval from the refusal on, no more R1 after it.
    assert len(run.readouts) >= READOUT_DURATION // READOUT_INTERVAL - 1, run.log
    refused_at = max(
        (c.at for c in run.commands if c.kind == "ack" and c.data[3:4] == b"1"), default=None
    )
    assert refused_at is not None, "the daemon never asked for programming mode"
    assert not [c for c in run.commands if c.kind == "read" and c.at > refused_at + 1]
    # Energy: every published total is a counter the meter sent in a readout; the last one
    # is published.
    served = {int(Decimal(r.value("1.8.0").split("*")[0]) * 1000) for r in run.readouts}
    published = [s for s in run.http if s.import_wh is not None]
    assert published, run.log
    assert {s.import_wh for s in published} <= served, (sorted(served), published[-3:])
    last_readout = max(run.readouts, key=lambda r: r.at)
    last_wh = int(Decimal(last_readout.value("1.8.0").split("*")[0]) * 1000)
    if last_readout.at < run.sigterm_at - ENERGY_LAG_S:
        assert published[-1].import_wh == last_wh
    assert not energy_problems(run, run.http)
    # Power: the counter change between readouts, good to one Wh over the interval.
    figures = [s for s in run.http if s.watts is not None]
    assert figures, f"no power figure in readout mode:\n{run.log}"
    resolution = 3600 / READOUT_INTERVAL
    off = [s for s in figures if abs(s.watts - READOUT_MODE_W) > resolution + 0.05 * READOUT_MODE_W]
    assert not off, _show(off, run.started)
    assert {s.source for s in figures} == {"counters"}


# --- 4. fault runs --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bcc", "silent", "unplug"])
def test_fault_run_ends_with_correct_values_and_nothing_wrong_between(runs, kind):
    run = runs.get(f"fault-{kind}")
    assert run.status == 0, run.log
    assert run.violations == 0, commands_text(
        [c for c in run.commands if c.kind not in ALLOWED_KINDS], run.started
    )
    start, end = run.marks["fault_start"], run.marks["fault_end"]
    segs = run.segments
    # The fault happened to a live session, and the session was entered again after it.
    polls_before = [c for c in run.commands if c.kind == "read" and c.at < start]
    polls_after = [c for c in run.commands if c.kind == "read" and c.at > end]
    assert polls_before and polls_after, commands_text(run.commands[-30:], run.started)
    if kind == "bcc":
        # A BCC error ends the session with B0, and a new one is entered.
        after = [c.kind for c in run.commands if c.at > start]
        assert "break" in after, after[:10]
        assert "request" in after[after.index("break") :], after[:10]
    recovered = end + recovery_s(FAULT_LOAD_W)
    assert recovered < run.sigterm_at - 2, "the run is too short to see the recovery"
    for sink, samples in run.sinks():
        assert samples, f"{sink}: nothing published"
        # Fresh before the fault (else the recovery would prove nothing) and again after it.
        problems = freshness_problems(
            run, samples, run.first_poll + allowance_s(FAULT_LOAD_W), start, FAULT_LOAD_W,
            FRESH_BAND,
        )  # fmt: skip
        problems += freshness_problems(
            run, samples, recovered, run.sigterm_at, FAULT_LOAD_W, FRESH_BAND
        )
        assert not problems, f"{sink}: " + "\n".join(problems)
        wrong = wrong_figures(samples, segs)
        assert not wrong, f"{sink}: wrong figures: {_show(wrong, run.started)}"
        energy = energy_problems(run, samples)
        assert not energy, f"{sink}: " + "\n".join(energy[:20])
        lag = energy_lag_problems(run, samples, recovered, run.sigterm_at)
        assert not lag, f"{sink}: " + "\n".join(lag[:20])
