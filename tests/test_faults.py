"""Faults the daemon must survive, each against the real ``iskra-me162`` process (issue #5).

The rows of docs/reliability.rst that tests/test_daemon_e2e.py already proves (baud proposal
ignored, corrupted readouts mixed with good ones, SIGTERM at 300 baud, SIGHUP with a broken
config, Domoticz 500, watchdog, silent meter) are not repeated here; this file adds the rest:
a by-id link that comes back pointing at a new tty, half readouts, line noise with NULs and
8th-bit bytes, readouts that pass their BCC but say absurd things, every Domoticz failure mode,
every state file problem including a full disk, wall-clock jumps, a systemd that does not read
its notification socket, and a reload with a config the system cannot check.

Every test runs the real daemon (tests/daemonproc.py) against a simulated meter on a real pty
and, where it pushes, the strict Domoticz stand-in (tests/httpstub.py) on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.simulator.model import Faults, MeterConfig, MeterModel, ServedReadout
from iskra_me162.simulator.pty_meter import PtyMeter
from tests import httpstub
from tests.daemonproc import REPO, DaemonProcess, write_config
from tests.httpstub import DomoticzStub

PASSWORD = "fault-test-pa55word"
IDX = 7
INTERVAL = 2  # seconds between cycles; a paced readout at speedup 4 takes well under one
IMPORT_W = 1800


# --- helpers ------------------------------------------------------------------------------------


def kwh_to_wh(text: str) -> int:
    number = text.split("*")[0]
    whole, _, frac = number.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def served_counters(served: ServedReadout) -> tuple[int, int, int, int]:
    """(U1, U2, R1, R2) as the meter's registers stood in a readout (before any fault)."""
    values = tuple(kwh_to_wh(served.value(code)) for code in ("1.8.1", "1.8.2", "2.8.1", "2.8.2"))
    return values  # type: ignore[return-value]


def served_totals(served: ServedReadout) -> tuple[int, int]:
    """(import, export) in Wh as the meter's total registers 1.8.0 and 2.8.0 stood."""
    return kwh_to_wh(served.value("1.8.0")), kwh_to_wh(served.value("2.8.0"))


def snapshot_totals(document: dict) -> list[tuple[Decimal, Decimal]]:
    """(import, export) in Wh of every counter snapshot in a state file (format version 2)."""
    return [
        (Decimal(snapshot["import_wh"]), Decimal(snapshot["export_wh"]))
        for snapshot in document["snapshots"]
    ]


def assert_good_state_file(document: dict, served: set[tuple[int, int]]) -> None:
    """A state file of the current format whose every snapshot holds counters the meter really
    served (the default simulated ME162, serial 61234567)."""
    assert (document["format"], document["version"]) == ("iskra-me162-state", 2), document
    assert (document["meter_id"], document["sources"]) == ("61234567", "1.8.0|2.8.0"), document
    assert document["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert "sent" not in document, document
    totals = snapshot_totals(document)
    assert totals, document
    for totals_wh in totals:
        assert totals_wh in served, (totals_wh, sorted(served))


def sent_values(stub: DomoticzStub) -> list[tuple[int, ...]]:
    """Every accepted P1 update as six integers."""
    return [tuple(int(v) for v in update.svalue.split(";")) for update in stub.updates(IDX)]


def start_meter(link: Path, config: MeterConfig | None = None, **faults: object) -> PtyMeter:
    config = config or MeterConfig(import_w=IMPORT_W, speedup=4.0)
    if faults:
        config = dataclasses.replace(config, faults=Faults(**faults))
    meter = PtyMeter(link=str(link), config=config)
    meter.start()
    return meter


def daemon_config(
    tmp_path: Path, port: str, stub: DomoticzStub | None = None, **extra: object
) -> Path:
    settings: dict[str, object] = {
        "port": port,
        "update_interval": INTERVAL,
        "use_highspeed": True,
        "print_debug": 2,
        "state_file": str(tmp_path / "state.json"),
    }
    if stub is not None:
        settings |= {
            "domoticzserver": stub.server,
            "domoticzusername": "meter",
            "domoticzpassword": PASSWORD,
            "device_index": IDX,
            "domoticz_timeout": 1.0,
        }
    settings |= extra
    return write_config(tmp_path / "iskra-me162.conf", **settings)


@contextlib.contextmanager
def running(config: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    """The daemon for the ``with`` block; on leaving, SIGTERM must end it with status 0."""
    daemon = DaemonProcess(config, *args, env=env)
    try:
        yield daemon
    finally:
        status, _ = daemon.stop()
        daemon.close()
    assert status == 0, daemon.output


def log_lines(daemon: DaemonProcess, pattern: str, level: str = "WARNING") -> list[str]:
    regex = re.compile(pattern)
    return [line for line in daemon.output.splitlines() if level in line and regex.search(line)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def domoticz():
    with DomoticzStub(username="meter", password=PASSWORD, devices=(IDX,)) as stub:
        yield stub


# --- the simulator's content faults (sans-I/O: what the process tests below rely on) --------------


def _session(model: MeterModel, now: float) -> bytes:
    ident = model.receive(b"/?!\r\n", now)
    ack_at = ident[0].end + 0.3
    (readout,) = model.receive(b"\x06000\r\n", ack_at)
    return readout.data


def test_simulator_glitch_and_omit_keep_a_valid_bcc():
    from iskra_me162.protocols.iec62056_21 import DataReceiver

    faults = Faults(glitch_every=2, glitch_wh=5_000_000, omit_every=3, omit_code="2.8.1")
    model = MeterModel(MeterConfig(speedup=float("inf"), faults=faults), 0.0)
    blocks = []
    for number in range(1, 7):
        receiver = DataReceiver()
        receiver.feed(_session(model, number * 10.0))
        blocks.append(receiver.result())  # None would mean the BCC or framing failed
    faults_seen = [served.fault for served in model.history]
    assert faults_seen == ["", "glitch", "omit", "glitch", "", "glitch+omit"]
    values = [{str(r.code): r.raw for r in block.readings} for block in blocks]
    true_import = kwh_to_wh(model.history[1].value("1.8.0"))
    assert kwh_to_wh(values[1]["1.8.0"]) == true_import + 5_000_000
    assert kwh_to_wh(values[1]["1.8.1"]) == kwh_to_wh(model.history[1].value("1.8.1")) + 5_000_000
    assert values[1]["1.8.2"] == model.history[1].value("1.8.2")  # only tariff 1 and the total
    assert "2.8.1" not in values[2] and "2.8.1" in values[0]
    # The registers themselves were not moved: the next readout is true again.
    assert values[4]["1.8.0"] == model.history[4].value("1.8.0")


# --- IR head unplugged, back under a /dev/serial/by-id link that points at a new tty -----------


def test_by_id_link_retargeted_to_a_new_tty_is_followed(tmp_path, domoticz):
    by_id = tmp_path / "dev" / "serial" / "by-id"
    by_id.mkdir(parents=True)
    link = by_id / "usb-FTDI_FT230X_Basic_UART_D30A1B2C-if00-port0"
    meter = start_meter(link)
    first_tty = os.readlink(link)
    try:
        with running(daemon_config(tmp_path, str(link), domoticz)) as daemon:
            domoticz.wait_for_updates(1, timeout=40)
            meter.unplug()
            unplugged = time.monotonic()
            daemon.wait_for_log(r"WARNING iskra_me162.daemon: meter: ", timeout=INTERVAL + 5)
            # Something else takes the freed tty number meanwhile (as a vanished ttyUSB0 that
            # is still held open makes the kernel name the returning head ttyUSB1), so the
            # link really points at another tty when the head comes back. The daemon has
            # closed its end by now (it logged the failure), so the old number is free.
            placeholder = os.openpty()
            time.sleep(max(0.0, 10 - (time.monotonic() - unplugged)))
            meter.replug()
            replugged = time.monotonic()
            for fd in placeholder:
                os.close(fd)
            before = len(domoticz.updates(IDX))
            domoticz.wait_for_updates(before + 1, timeout=INTERVAL + 5 + 5)
            took = time.monotonic() - replugged
            new_tty = os.readlink(link)
            domoticz.wait_for_updates(before + 2, timeout=INTERVAL + 10)
    finally:
        meter.stop()
    assert new_tty != first_tty  # udev made a new /dev/pts/N, the link followed
    assert took < INTERVAL + 5, f"first good update {took:.1f} s after the head came back"
    failures = log_lines(daemon, r"iskra_me162.daemon: meter: .*retrying")
    repeats = log_lines(daemon, r"iskra_me162.daemon: meter \(still\): ", level="DEBUG")
    assert 1 <= len(failures) <= 2, failures  # once per cause (read error, then open error)
    assert len(repeats) >= 3, repeats  # ... not once per failed cycle (those are DEBUG)
    assert len(log_lines(daemon, r"meter: good readout again")) == 1
    # Power after the gap: the meter drew 1800 W all along.
    for *_counters, cons, _prod in sent_values(domoticz):
        assert abs(cons - IMPORT_W) <= 1000, sent_values(domoticz)


# --- a meter that answers only half a readout ------------------------------------------------


def test_half_readouts_time_out_with_back_off_and_no_hot_loop(tmp_path, domoticz):
    meter = start_meter(tmp_path / "ttyIR", truncate_every=1)
    try:
        with running(daemon_config(tmp_path, str(meter.link), domoticz, update_interval=30)) as d:
            time.sleep(13)
            requests = d.output.count("TX /?!")
            cpu = cpu_seconds(d.process.pid)
    finally:
        meter.stop()
    served = meter.readouts
    assert served and all(r.fault == "truncated" for r in served)
    # Attempts at about 0, 9 and 19 s (readout, 1.7 s gap timeout, then 5 s and 10 s back-off).
    assert 1 <= requests <= 3, d.output
    assert cpu < 4.0, cpu  # start-up included; a hot loop would burn the whole 13 s
    assert domoticz.requests == []  # nothing from incomplete readouts
    assert len(log_lines(d, r"iskra_me162.daemon: meter: ")) == 1


# --- noise, echo, NUL bytes, bytes with the 8th bit set, readouts split across many reads -----


def test_nul_noise_echo_and_eighth_bit_bytes_on_an_8n1_line(tmp_path, domoticz):
    meter = start_meter(tmp_path / "ttyIR", echo=True, noise=6, noise_byte=0x00, high_bit=True)
    try:
        config = daemon_config(tmp_path, str(meter.link), domoticz, serial_format="8N1")
        with running(config) as daemon:
            domoticz.wait_for_updates(3, timeout=60)
    finally:
        meter.stop()
    served = {served_counters(r) for r in meter.readouts}
    for u1, u2, r1, r2, cons, prod in sent_values(domoticz):
        assert (u1, u2, r1, r2) in served
        assert abs(cons - IMPORT_W) <= 1000 and prod == 0
    output = daemon.output
    assert "RX \\x00" in output  # the NUL noise did arrive (RX lines at print_debug 2)
    assert "readout rejected" not in output
    # The readouts arrived in many pieces: far more RX lines than readouts.
    assert output.count(" RX ") >= 8 * len(meter.readouts), output.count(" RX ")


# --- valid BCC, absurd content --------------------------------------------------------------


def test_glitched_or_missing_registers_with_a_valid_bcc_are_never_sent(tmp_path, domoticz):
    # Readout 3 says the import counter jumped 5 MWh ahead, readout 5 leaves 1.8.1 out; later
    # every 3rd says the counter went 2 MWh back. Each such block has a valid BCC.
    faults = {"glitch_every": 3, "glitch_wh": 5_000_000, "omit_every": 5, "omit_code": "1.8.1"}
    meter = start_meter(tmp_path / "ttyIR", **faults)
    try:
        with running(daemon_config(tmp_path, str(meter.link), domoticz)) as daemon:
            daemon.wait_for_log(r"iskra_me162.daemon: readout: readout held back", timeout=40)
            meter.set_faults(glitch_every=3, glitch_wh=-2_000_000, omit_every=0)
            daemon.wait_for_log(r"counter went backwards by (19|20)\d{5}", timeout=30)
            domoticz.wait_for_updates(len(domoticz.updates(IDX)) + 2, timeout=30)
    finally:
        meter.stop()
    served = meter.readouts
    assert {"glitch", "omit"} <= {r.fault for r in served}
    good = {served_counters(r) for r in served if not r.fault}
    for u1, u2, r1, r2, cons, prod in sent_values(domoticz):
        # Not a jumped counter, not U1 = 0 for the missing 1.8.1, no absurd power.
        assert (u1, u2, r1, r2) in good, "a glitched readout reached Domoticz"
        assert abs(cons - IMPORT_W) <= 1000 and prod == 0
    # The log says why (the deltas include the few Wh the meter really counted meanwhile).
    untrusted = r"iskra_me162.daemon: readout: counters not trusted, nothing published: "
    assert log_lines(daemon, untrusted + r"the import counter jumped by 500\d{4}")
    assert log_lines(daemon, untrusted + r"the import counter went backwards by (19|20)\d{5}")
    held_back = r"iskra_me162.daemon: readout: readout held back, nothing published: "
    assert log_lines(daemon, held_back + r".*\(missing: 1\.8\.1; new: none\)")
    assert log_lines(daemon, r"readout: the meter's readouts are consistent again")


def test_meter_replacement_rebases_cleanly(tmp_path, domoticz):
    link = tmp_path / "ttyIR"
    old = start_meter(link)
    new = None
    try:
        with running(daemon_config(tmp_path, str(link), domoticz)) as daemon:
            domoticz.wait_for_updates(2, timeout=40)
            old.stop()  # the electrician takes the old meter away ...
            new_config = MeterConfig(
                serial="70000001", import_w=IMPORT_W, speedup=4.0,
                import_wh=(120, 30), export_wh=(5, 0),
            )  # fmt: skip
            new = start_meter(link, new_config)  # ... and the head goes onto the new one
            before = len(domoticz.updates(IDX))
            domoticz.wait_for_updates(before + 2, timeout=40)
    finally:
        old.stop()
        if new is not None:
            new.stop()
    values = sent_values(domoticz)
    for *_counters, cons, prod in values:
        assert abs(cons - IMPORT_W) <= 1000 and prod == 0, values
    new_counters = {served_counters(r) for r in new.readouts}
    assert tuple(values[-1][:4]) in new_counters  # Domoticz now has the new meter's counters
    # The first readout of the new meter re-bases the counters and is not published.
    untrusted = r"readout: counters not trusted, nothing published: "
    assert log_lines(daemon, untrusted + r"the meter changed from 61234567 to 70000001")


# --- every way Domoticz can fail, one after another, in one run -----------------------------


class StubOnPort(DomoticzStub):
    """The Domoticz stand-in on a port chosen beforehand, so that it can be down (connection
    refused) first and come up later where the daemon already looks for it."""

    def __init__(self, port: int, **settings: object) -> None:
        super().__init__(**settings)  # type: ignore[arg-type]
        self._fixed_port = port

    def start(self) -> StubOnPort:
        server = httpstub._Server(
            ("127.0.0.1", self._fixed_port), httpstub._Handler, stub=self, context=None
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# (failure mode of the stub, what the daemon must say about it)
DOMOTICZ_FAILURES = (
    ("401", r"refused the login \(HTTP 401\)"),
    ("403", r"forbids the update \(HTTP 403\)"),
    ("404", r"has no /json.htm \(HTTP 404\)"),
    ("500", r"answered HTTP 500"),
    ("err", r"rejected the update of idx 7 \(status ERR\)"),
    ("timeout", r"did not answer within 1 s"),
)


def test_every_domoticz_failure_is_logged_once_per_change_and_recovered(tmp_path):
    meter = start_meter(tmp_path / "ttyIR")
    port = free_port()
    stub = StubOnPort(port, username="meter", password=PASSWORD, devices=(IDX,), delay=30.0)
    # One cycle a second (a readout takes about 0.8 s here): seven failure modes, two cycles each.
    config = daemon_config(
        tmp_path, str(meter.link), None, update_interval=1,
        domoticzserver=f"127.0.0.1:{port}", domoticzusername="meter",
        domoticzpassword=PASSWORD, device_index=IDX, domoticz_timeout=1.0,
    )  # fmt: skip
    try:
        with running(config) as daemon:
            # Nothing listens yet: connection refused, at least twice.
            refused = r"cannot reach Domoticz at .*: connection refused"
            daemon.wait_for_log(rf"DEBUG iskra_me162.daemon: domoticz \(still\): {refused}")
            stub.start()
            for failure, message in DOMOTICZ_FAILURES:
                stub.failure = failure
                daemon.wait_for_log(
                    rf"DEBUG iskra_me162.daemon: domoticz \(still\): .*{message}", timeout=30
                )
            stub.failure = None
            recovered = time.monotonic()
            daemon.wait_for_log(r"WARNING iskra_me162.daemon: domoticz: working again")
            stub.wait_for_updates(2, timeout=30)
            # Readouts the meter served since Domoticz came back (one cycle of slack).
            current = {served_counters(r) for r in meter.readouts if r.at >= recovered - 1}
            # (Requests of the "timeout" phase are still held by the stub and answered, late,
            # when it stops: take the updates before that.)
            updates = sent_values(stub)
    finally:
        stub.stop()
        meter.stop()
    for _failure, message in ((None, refused), *DOMOTICZ_FAILURES):
        lines = log_lines(daemon, rf"iskra_me162.daemon: domoticz: .*{message}")
        assert len(lines) == 1, (message, lines)  # one line per change, not per cycle
    assert len(log_lines(daemon, r"domoticz: working again")) == 1
    # After the outage the then current counters went out (cumulative: nothing lost).
    u1, u2, r1, r2, cons, _prod = updates[-1]
    assert (u1, u2, r1, r2) in current  # not counters kept from before the outage
    # 1800 W is half a Wh per 1 s cycle: with 1 Wh counters a delta is 0, 1 or 2 Wh per cycle.
    assert 0 <= cons <= 2 * 3600 + 1000, cons
    assert PASSWORD not in daemon.output


# --- the state file -----------------------------------------------------------------------------


def test_unusable_state_files_are_explained_once_and_replaced(tmp_path, domoticz):
    # Each bad file in turn, switched to by a reload (state_file changed + SIGHUP): the derive
    # stage, which owns the state file, is rebuilt and reads it, as at a start.
    cases = [
        ("empty", b"", r"is empty; ignoring it"),
        ("version", b'{"format": "iskra-me162-state", "version": 99}', r"has format version 99"),
        ("foreign", b'{"format": "something-else"}', r"is not an iskra-me162 state file"),
        ("corrupt", b'{"format": "iskra-me162-state", "vers', r"is not valid JSON"),
    ]
    for name, content, _ in cases:
        (tmp_path / f"{name}.json").write_bytes(content)
    meter = start_meter(tmp_path / "ttyIR")
    documents = {}
    try:
        first = str(tmp_path / "empty.json")
        config = daemon_config(tmp_path, str(meter.link), domoticz, state_file=first)
        with running(config) as daemon:
            for number, (name, _content, explanation) in enumerate(cases):
                if number:
                    state = str(tmp_path / f"{name}.json")
                    daemon_config(tmp_path, str(meter.link), domoticz, state_file=state)
                    daemon.signal(signal.SIGHUP)
                daemon.wait_for_log(explanation, timeout=30)
                domoticz.wait_for_updates(len(domoticz.updates(IDX)) + 2, timeout=30)
                documents[name] = json.loads((tmp_path / f"{name}.json").read_text())
    finally:
        meter.stop()
    served = {served_totals(r) for r in meter.readouts}
    for name, _content, explanation in cases:
        assert len(log_lines(daemon, explanation)) == 1, (name, daemon.output)  # once
        document = documents[name]  # replaced by a good one
        assert_good_state_file(document, served)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (read-only and full file system faults) needs root")
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(path: Path) -> Path:
    """Fill the file system of ``path`` until ENOSPC; returns the filler file."""
    filler = path / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(descriptor)
    return filler


def test_read_only_and_full_state_directory_are_survived_and_recovered(tmp_path, domoticz):
    meter = start_meter(tmp_path / "ttyIR")
    try:
        with tmpfs(tmp_path / "run", "256k") as run:
            state = run / "state"
            config = daemon_config(tmp_path, str(meter.link), domoticz, state_file=str(state))
            with running(config) as daemon:
                domoticz.wait_for_updates(2, timeout=40)
                assert state.is_file()

                def updates_go_on(count: int = 2) -> None:
                    domoticz.wait_for_updates(len(domoticz.updates(IDX)) + count, timeout=30)

                remount(run, "ro")  # the directory cannot be written
                daemon.wait_for_log(r"cannot write state file .*: Read-only file system")
                updates_go_on()
                remount(run, "rw")
                daemon.wait_for_log(r"state file .* written again")
                updates_go_on()
                filler = fill(run)  # the disk is full
                daemon.wait_for_log(r"cannot write state file .*: No space left on device")
                updates_go_on()
                recovered = len(meter.readouts)
                filler.unlink()
                daemon.wait_for_log(r"state file .* written again", count=2)
                updates_go_on()
                document = json.loads(state.read_text())
                leftovers = [name for name in os.listdir(run) if name.endswith(".tmp")]
    finally:
        meter.stop()
    # Each cause explained once, however many cycles it lasted; the counters kept flowing.
    assert len(log_lines(daemon, r"Read-only file system")) == 1
    assert len(log_lines(daemon, r"No space left on device")) == 1
    assert len(log_lines(daemon, r"written again")) == 2
    assert not leftovers, leftovers  # no temporary file of a failed write left behind
    # The file holds true counters, and it was written again after the faults: its newest
    # snapshot is of a readout the meter served once the disk had room again.
    assert_good_state_file(document, {served_totals(r) for r in meter.readouts})
    after_recovery = {served_totals(r) for r in meter.readouts[recovered:]}
    assert snapshot_totals(document)[-1] in after_recovery, (document, sorted(after_recovery))
    for *_counters, cons, _prod in sent_values(domoticz):
        assert abs(cons - IMPORT_W) <= 1000


# --- the wall clock jumps (NTP at boot) --------------------------------------------------------


def libfaketime() -> str:
    """Debian's libfaketime, installed on the fly when missing (as root), else a skip."""
    candidates = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if candidates:
        return str(candidates[0])
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("libfaketime is missing: apt-get install faketime (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "faketime"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=True)
    return str(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))[0])


# libfaketime 0.9.10 (Debian 12) mistranslates clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)
# when FAKETIME_DONT_FAKE_MONOTONIC is set (the deadline becomes negative: EINVAL), and that is
# what Python's time.sleep() calls. So in the faked process time.sleep() waits with select(),
# which libfaketime leaves alone. Only the standard library's sleep is replaced; the daemon's
# own code is unchanged.
SLEEP_SHIM = '''
import select
import time


def _sleep(seconds):
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
'''


def faked_clock_env(tmp_path: Path, offset_file: Path) -> dict[str, str]:
    shim = tmp_path / "faketime-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SLEEP_SHIM)
    offset_file.write_text("+0\n")
    return {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",  # read the offset file at every call: jumps take effect at once
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": f"{shim}:{REPO}",
    }


def test_faked_clock_moves_the_wall_clock_only(tmp_path):
    offset = tmp_path / "offset"
    env = {**os.environ, **faked_clock_env(tmp_path, offset)}
    offset.write_text("+5h\n")
    probe = "import time; print(time.time(), time.monotonic()); time.sleep(0.05)"
    before = (time.time(), time.monotonic())
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    wall, monotonic = float(out[0]), float(out[1])
    assert abs(wall - before[0] - 5 * 3600) < 60  # the wall clock is 5 h ahead
    assert 0 <= monotonic - before[1] < 60  # CLOCK_MONOTONIC is the real one


def test_wall_clock_jumps_change_neither_power_nor_schedule(tmp_path, domoticz):
    offset = tmp_path / "offset"
    env = faked_clock_env(tmp_path, offset)
    meter = start_meter(tmp_path / "ttyIR")
    try:
        with running(daemon_config(tmp_path, str(meter.link), domoticz), env=env) as daemon:
            domoticz.wait_for_updates(2, timeout=40)
            offset.write_text("+5h\n")  # NTP puts a Pi that booted without RTC forward ...
            jumped = time.monotonic()
            domoticz.wait_for_updates(len(domoticz.updates(IDX)) + 3, timeout=30)
            offset.write_text("-7h\n")  # ... or back
            domoticz.wait_for_updates(len(domoticz.updates(IDX)) + 3, timeout=30)
    finally:
        meter.stop()
    # The daemon really saw the jumps: the readout times it logged.
    status = r"iskra_me162.daemon: ME162-0033: import .* at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC"
    stamps = re.findall(status, daemon.output)
    times = [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S") for stamp in stamps]
    steps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert any(4.5 * 3600 < step < 5.5 * 3600 for step in steps), stamps
    assert any(-12.5 * 3600 < step < -11.5 * 3600 for step in steps), stamps
    # Power is unaffected: every update shows the 1800 W the meter drew.
    for *_counters, cons, prod in sent_values(domoticz):
        assert abs(cons - IMPORT_W) <= 1000 and prod == 0, sent_values(domoticz)
    # The schedule is unaffected: the meter was asked every INTERVAL seconds of real time
    # (the simulator's record is on the test's own, unfaked, monotonic clock).
    served = [r.at for r in meter.readouts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(served)]
    assert all(0.5 * INTERVAL <= gap <= 2 * INTERVAL for gap in gaps), gaps
    assert any(at > jumped for at in served)


# --- systemd that does not read its notification socket ---------------------------------------


def test_a_stalled_systemd_notify_socket_blocks_neither_the_loop_nor_sigterm(tmp_path):
    meter = start_meter(tmp_path / "ttyIR")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, never read
    stalled.bind(str(tmp_path / "notify"))
    config = daemon_config(tmp_path, str(meter.link), None, print_debug=1)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    daemon = DaemonProcess(config, env=env)
    try:
        time.sleep(5)  # READY, STATUS and a WATCHDOG ping every 0.5 s: the queue is full
        served_before = len(meter.readouts)
        time.sleep(2 * INTERVAL + 0.5)
        served_after = len(meter.readouts)
        status, took = daemon.stop(timeout=3)
    finally:
        daemon.close()
        meter.stop()
        stalled.close()
    assert served_after >= served_before + 2, "the meter loop stood still"
    assert status == 0 and took < 2.0


def test_sighup_with_a_ca_file_the_system_cannot_check_keeps_the_daemon_running(tmp_path):
    meter = start_meter(tmp_path / "ttyIR")
    config = daemon_config(tmp_path, str(meter.link), None, print_debug=1)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for_log(r"ME162-0033: import [0-9.]+ kWh", timeout=30)
        with config.open("a") as handle:
            handle.write(f'domoticz_ca_file = "/etc/{"x" * 300}.pem"\n')
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log(r"reload failed, keeping the running configuration", timeout=10)
        count = len(meter.readouts)
        time.sleep(2 * INTERVAL + 1)
        assert daemon.process.poll() is None, daemon.output
        assert len(meter.readouts) >= count + 2
    finally:
        status, _ = daemon.stop()
        daemon.close()
        meter.stop()
    assert status == 0
