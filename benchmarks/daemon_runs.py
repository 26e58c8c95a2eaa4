"""The real ``iskra-me162`` process: start-up, memory, CPU when idle, and what each import costs
(issue #6, items 2 to 4).

Each run starts ``python -m iskra_me162 --config FILE`` (the same process systemd starts) against
a simulated ME162 on a real pty served by this process (so the daemon holds exactly what it holds
on a Pi with a USB IR head: no simulator code), a Domoticz stand-in on 127.0.0.1
(``tests.httpstub.DomoticzStub``) and, in the "full" configuration, the HTTP endpoint for Home
Assistant, which this process polls once per readout. RSS comes from /proc/<pid>/status (VmRSS,
VmHWM), CPU time from /proc/<pid>/stat (utime + stime, the process accounting) and, to the
nanosecond, from the scheduler (/proc/<pid>/task/*/schedstat).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import REPO, Section, cpu_exact_s, cpu_ticks_s, median, memory_kb
from iskra_me162.simulator.model import MeterConfig
from iskra_me162.simulator.pty_meter import PtyMeter
from tests.daemonproc import write_config
from tests.httpstub import DomoticzStub

IDX = 7
STATUS_LINE = re.compile(r"INFO iskra_me162\.daemon: ME162-0033: ")
WATCHDOG_USEC = "120000000"  # systemd/iskra-me162.service: WatchdogSec=2min


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Notify:
    """systemd's notification socket, noting when each message arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))

    def wait_for(self, prefix: str, timeout: float) -> float:
        """The monotonic instant a message with a line starting ``prefix`` arrived."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.socket.settimeout(remaining)
            try:
                message = self.socket.recv(4096).decode()
            except TimeoutError:
                break
            arrived = time.monotonic()
            if any(line.startswith(prefix) for line in message.splitlines()):
                return arrived
        raise RuntimeError(f"no {prefix!r} from the daemon within {timeout} s")

    def close(self) -> None:
        self.socket.close()


class Rig:
    """A simulated meter on a pty, a Domoticz stand-in, and a place for config and logs."""

    def __init__(self, directory: Path, speedup: float = math.inf) -> None:
        self.directory = directory
        self.meter = PtyMeter(link=directory / "ttyIR", config=MeterConfig(speedup=speedup))
        self.stub = DomoticzStub(devices={IDX})
        self.http_port = 0

    def __enter__(self) -> Rig:
        self.meter.start()
        self.stub.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stub.stop()
        self.meter.stop()

    def config(self, name: str, full: bool, interval: int, endpoint: bool = True) -> Path:
        """Log sink only, or (``full``) Domoticz + state file + the HTTP endpoint if
        ``endpoint``."""
        settings: dict[str, object] = {
            "port": str(self.meter.link),
            "update_interval": interval,
            "use_highspeed": True,
            "print_debug": 1,
            "state_file": "",
        }
        if full:
            settings |= {
                "state_file": str(self.directory / f"{name}.state"),
                "domoticzserver": self.stub.server,
                "device_index": IDX,
            }
        if full and endpoint:
            self.http_port = free_port()
            settings["http_listen"] = f"127.0.0.1:{self.http_port}"
        return write_config(self.directory / f"{name}.conf", **settings)


class DaemonRun:
    """``python [python_args] -m iskra_me162 --config FILE``, stdout and stderr in a log file."""

    def __init__(self, config: Path, python_args: tuple[str, ...], env: dict[str, str]) -> None:
        environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        environment.pop("NOTIFY_SOCKET", None)
        environment.pop("WATCHDOG_USEC", None)
        environment.update(env)
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, *python_args, "-m", "iskra_me162", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(f"the daemon ignored SIGTERM:\n{self.output[-2000:]}") from None
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def daemon(
    config: Path, *python_args: str, env: dict[str, str] | None = None
) -> Iterator[DaemonRun]:
    """The daemon process; stopped with SIGTERM at the end, and it must exit 0 then."""
    run = DaemonRun(config, python_args, env or {})
    try:
        yield run
    except BaseException:
        run.stop()
        raise
    status = run.stop()
    if status != 0:
        raise RuntimeError(f"the daemon exited {status}:\n{run.output[-2000:]}")


class LogCounter:
    """Counts the daemon's status lines (one per good readout) as the log grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0
        self._partial = b""

    def update(self) -> int:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        self.count += sum(1 for line in lines if STATUS_LINE.search(line.decode(errors="replace")))
        return self.count

    def wait_for(self, count: int, process: DaemonRun, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.update() < count:
            if process.process.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{process.output[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} readouts not reached in {timeout} s ({self.count})")
            time.sleep(0.02)


# --- start-up ----------------------------------------------------------------------------------


def startup(quick: bool) -> Section:
    section = Section("Start-up: process start to READY=1 (real process, pty meter)")
    repeats = 2 if quick else 7
    details: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, Rig(Path(tmp)) as rig:
        for name, full in (("minimal", False), ("full", True)):
            config = rig.config(f"startup-{name}", full, interval=3600)
            times, rss = [], []
            for attempt in range(repeats):
                notify = Notify(Path(tmp) / f"notify-{name}-{attempt}")
                try:
                    with daemon(config, env={"NOTIFY_SOCKET": str(notify.path)}) as process:
                        ready = notify.wait_for("READY=1", timeout=20)
                        times.append(ready - process.started)
                        rss.append(memory_kb(process.pid)["VmRSS"])
                finally:
                    notify.close()
            details[name] = {"ready_s": [round(t, 4) for t in times], "rss_at_ready_kb": rss}
            label = "log sink only" if not full else "Domoticz + HTTP endpoint + state file"
            section.add(f"{name} ({label})", median(times), "s", goal="<= 0.5")
            section.add(f"{name}: RSS at READY=1", median(rss) / 1024, "MiB")
        # What the full run imports, from the daemon's own -X importtime output.
        config = rig.config("startup-importtime", True, interval=3600)
        notify = Notify(Path(tmp) / "notify-importtime")
        try:
            env = {"NOTIFY_SOCKET": str(notify.path)}
            with daemon(config, "-X", "importtime", env=env) as process:
                notify.wait_for("READY=1", timeout=20)
                output = process.output
        finally:
            notify.close()
    details["imports_full_run"] = top_imports(output)
    section.details = details
    return section


def top_imports(output: str, count: int = 15) -> list[dict[str, object]]:
    """The slowest top-level imports of a run (cumulative µs), from -X importtime lines."""
    rows = []
    for line in output.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = re.split(r"[:|]", line, maxsplit=3)
        _, self_us, cumulative_us, name = (part.strip() for part in parts)
        if not self_us.isdigit():
            continue  # the header line
        depth = (len(line.rsplit("|", 1)[1]) - len(line.rsplit("|", 1)[1].lstrip())) // 2
        if depth <= 1:
            rows.append({"module": name, "cumulative_ms": int(cumulative_us) / 1000})
    rows.sort(key=lambda row: -float(row["cumulative_ms"]))  # type: ignore[arg-type]
    return rows[:count]


# --- what each import costs ---------------------------------------------------------------------

IMPORTS = (
    "serial",
    "ssl",
    "http.client",
    "requests",  # the Domoticz client's HTTP library, with urllib3, idna, charset_normalizer...
    "urllib3",  # ... of which this is the connection pool and TLS part
    "daemon",  # python-daemon
    "argparse",
    "http.server",
    "decimal",
    "json",
    "logging",
    "iskra_me162.config",
    "iskra_me162.daemon",
    "iskra_me162.sinks.domoticz",  # loads iskra_me162.sinks.domoticz_client and requests
    "iskra_me162.sinks.http",
    "iskra_me162.protocols.sml",
    "iskra_me162.urlhandler.protocol_sim",
)
_PROBE = (
    "import sys, time\n"
    "names = sys.argv[1:]\n"
    "start = time.perf_counter()\n"
    "for name in names: __import__(name)\n"
    "took = time.perf_counter() - start\n"
    "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]\n"
    "print(rss, took)\n"
)


def _probe(*names: str) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *names],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    return int(out[0]), float(out[1])


def import_costs(quick: bool) -> Section:
    """RSS and time each import adds to a bare interpreter (median of a few fresh processes)."""
    section = Section("What each import costs (fresh interpreter + that import alone)")
    repeats = 3 if quick else 7
    base = [_probe()[0] for _ in range(repeats)]
    baseline = median(base)
    section.add("bare interpreter", baseline / 1024, "MiB RSS")
    rows = {}
    for name in IMPORTS:
        samples = [_probe(name) for _ in range(repeats)]
        rss = median([s[0] for s in samples]) - baseline
        took = median([s[1] for s in samples])
        rows[name] = {"rss_kb": rss, "time_ms": round(took * 1000, 2)}
        section.add(f"import {name}", rss / 1024, "MiB RSS", note=f"{took * 1000:.1f} ms")
    section.details = {"baseline_rss_kb": baseline, "imports": rows}
    return section


# --- CPU when idle -----------------------------------------------------------------------------


def idle_cpu(quick: bool) -> Section:
    """CPU per minute of wall time between two readouts, as systemd runs it (watchdog on)."""
    section = Section("CPU when idle, between readouts (real process, systemd watchdog on)")
    window = 10.0 if quick else 120.0
    details: dict[str, object] = {"window_s": window}
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        with contextlib.ExitStack() as stack:
            # Both configurations idle side by side in the same window, each with its own meter.
            for name, full in (("minimal", False), ("full", True)):
                directory = Path(tmp) / name
                directory.mkdir()
                rig = stack.enter_context(Rig(directory))
                config = rig.config(f"idle-{name}", full, interval=3600)
                notify = Notify(Path(tmp) / f"notify-idle-{name}")
                stack.callback(notify.close)
                env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": WATCHDOG_USEC}
                process = stack.enter_context(daemon(config, env=env))
                runs.append((name, full, process, LogCounter(process.log_path)))
            for _, _, process, counter in runs:
                counter.wait_for(1, process, timeout=20)
            time.sleep(2.0)  # the first readout's push and log are done
            before = {name: _cpu(process) for name, _, process, _ in runs}
            time.sleep(window)
            after = {name: _cpu(process) for name, _, process, _ in runs}
            for name, full, _process, counter in runs:
                if counter.update() != 1:
                    section.errors.append(f"{name}: a readout happened inside the idle window")
                exact = (after[name][0] - before[name][0]) / window * 60
                ticks = (after[name][1] - before[name][1]) / window * 60
                label = "log sink only" if not full else "Domoticz + HTTP endpoint"
                section.add(f"{name} ({label})", exact * 1000, "ms/min", goal="<= 10")
                section.add(
                    f"{name}: process accounting",
                    ticks * 1000,
                    "ms/min",
                    note="utime+stime, 10 ms steps",
                )
                details[name] = {"exact_ms_per_min": exact * 1000, "ticks_ms_per_min": ticks * 1000}
    section.details = details
    return section


def _cpu(process: DaemonRun) -> tuple[float, float]:
    pid = process.pid
    return cpu_exact_s(pid), cpu_ticks_s(pid)


# --- memory over many readouts -------------------------------------------------------------------


def memory(quick: bool) -> Section:
    """RSS over many readouts and pushes, update_interval = 1 s (the minimum).

    Two daemons side by side, each with its own simulated meter: "domoticz" is the issue's set-up
    (simulator + a Domoticz stand-in + state file), "full" adds the HTTP endpoint, whose JSON
    (Home Assistant), status page and /metrics (Prometheus) are each read once per readout.
    """
    total = 40 if quick else 1000
    early = 10 if quick else 100
    section = Section(f"Memory over {total} readouts and pushes (real process)")
    details: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        runs = []
        for name, full in (("domoticz", False), ("full", True)):
            directory = Path(tmp) / name
            directory.mkdir()
            rig = stack.enter_context(Rig(directory))
            config = rig.config(f"memory-{name}", full=True, interval=1, endpoint=full)
            process = stack.enter_context(daemon(config))
            url = f"http://127.0.0.1:{rig.http_port}" if full else None
            runs.append(_MemoryRun(name, rig, process, url))
        started = time.monotonic()
        while any(run.seen < total for run in runs):
            for run in runs:
                if run.seen < total:
                    run.step(started)
        for run in runs:
            run.finish()
    for run in runs:
        label = "Domoticz + state file" if run.url is None else "+ HTTP: JSON, page, /metrics"
        at_early = next(s for s in run.samples if s["readout"] >= early)
        final = run.final
        # Issue 11: at most 32 MiB with requests (30 before, with a hand-written HTTP client);
        # issue 13: at most 36 MiB with the status page and the metrics on.
        goal = "<= 32" if run.url is None else "<= 36"
        section.add(f"{run.name} ({label}): steady RSS", final["VmRSS"] / 1024, "MiB", goal=goal)
        section.add(f"{run.name}: peak RSS (VmHWM)", final["VmHWM"] / 1024, "MiB")
        growth = (final["VmRSS"] - at_early["rss_kb"]) / 1024
        section.add(f"{run.name}: growth readout {early} -> {total}", growth, "MiB", goal="< 1")
        section.add(f"{run.name}: Domoticz pushes accepted", run.pushes, "")
        section.add(
            f"{run.name}: CPU per readout + push",
            run.cpu / total * 1000,
            "ms",
            note="whole cycle, all threads",
        )
        details[run.name] = {
            "samples": run.samples[:: max(1, len(run.samples) // 200)],
            "final": final,
        }
    section.details = details
    return section


class _MemoryRun:
    """One daemon of the memory benchmark: waits for each readout, samples /proc after it."""

    def __init__(self, name: str, rig: Rig, process: DaemonRun, url: str | None) -> None:
        self.name = name
        self.rig = rig
        self.process = process
        self.url = url
        self.counter = LogCounter(process.log_path)
        self.seen = 0
        self.samples: list[dict[str, float]] = []
        self.final: dict[str, int] = {}
        self.cpu = 0.0
        self.pushes = 0

    def step(self, started: float) -> None:
        """Sample RSS after a new readout; when none came yet, sleep 10 ms and return."""
        if self.counter.update() <= self.seen:
            if self.process.process.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{self.process.output[-2000:]}")
            time.sleep(0.01)
            return
        self.seen = self.counter.count
        if self.url is not None:  # Home Assistant, a browser and Prometheus: once per readout
            for path in ("/api/v1/readings", "/", "/metrics"):
                url = self.url + path
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - ours
                    response.read()
        status = memory_kb(self.process.pid)
        self.samples.append(
            {
                "readout": self.seen,
                "t_s": round(time.monotonic() - started, 2),
                "rss_kb": status["VmRSS"],
                "hwm_kb": status["VmHWM"],
                "threads": status["Threads"],
            }
        )

    def finish(self) -> None:
        self.final = memory_kb(self.process.pid)
        self.cpu = cpu_exact_s(self.process.pid)
        self.pushes = len([u for u in self.rig.stub.updates() if u.accepted])
