"""Faults with an SML push meter (``protocol = "sml"``), against the real daemon (issue #5).

tests/test_daemon_sml_e2e.py already proves that the HTTP endpoint never serves a value of a
corrupted frame and turns stale when the meter goes silent. This file adds the rest for push
meters: damaged frames never reach Domoticz, a head that comes back under a by-id link pointing
at a new tty, a silent meter without a hot loop, and an attack on the HTTP endpoint while the
daemon reads the meter continuously.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import pytest

from iskra_me162.simulator.sml_push import ServedFrame, SmlFaults, SmlPtyMeter, SmlPushConfig
from tests.daemonproc import DaemonProcess, write_config
from tests.httpstub import DomoticzStub
from tests.test_faults_http import HOSTILE_REQUESTS, Attack, free_port, get, raw_exchange

PASSWORD = "sml-fault-pa55word"
IDX = 9
INTERVAL = 2
IMPORT_W = 2500


def counters(frame: ServedFrame) -> tuple[int, int, int, int]:
    """(U1, U2, R1, R2) in whole Wh, rounded down, from what the meter meant to send."""
    values = []
    for code in ("1.8.1", "1.8.2", "2.8.1", "2.8.2"):
        wh = frame.value(code)
        assert frame.unit(code) == "Wh"
        values.append(int(wh.to_integral_value(rounding=ROUND_FLOOR)))
    return tuple(values)  # type: ignore[return-value]


def sent(stub: DomoticzStub) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in update.svalue.split(";")) for update in stub.updates(IDX)]


def start_meter(link: Path, **faults: object) -> SmlPtyMeter:
    config = SmlPushConfig(interval=0.5, import_w=IMPORT_W, faults=SmlFaults(**faults))
    meter = SmlPtyMeter(link=str(link), config=config)
    meter.start()
    return meter


def sml_config(tmp_path: Path, link: Path, stub: DomoticzStub | None, **extra: object) -> Path:
    settings: dict[str, object] = {
        "protocol": "sml",
        "port": str(link),
        "update_interval": INTERVAL,
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
    return write_config(tmp_path / "sml.conf", **(settings | extra))


@contextlib.contextmanager
def running(config: Path) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(config)
    try:
        yield daemon
    finally:
        status, _ = daemon.stop()
        daemon.close()
    assert status == 0, daemon.output


@pytest.fixture
def domoticz():
    with DomoticzStub(username="meter", password=PASSWORD, devices=(IDX,)) as stub:
        yield stub


# The status line of every frame the daemon derived values from: "<meter>: import X kWh, ...".
USED_FRAME = r"(?:INFO|DEBUG) iskra_me162\.daemon: [0-9a-f]+: import ([0-9.]+) kWh"


def test_damaged_sml_frames_never_reach_domoticz(tmp_path, domoticz):
    meter = start_meter(
        tmp_path / "ttyIR", corrupt_every=2, truncate_every=3, garbage=9, escape=True
    )
    try:
        with running(sml_config(tmp_path, tmp_path / "ttyIR", domoticz)) as daemon:
            domoticz.wait_for_updates(4, timeout=40)
            daemon.wait_for_log(USED_FRAME, count=8, timeout=40)
    finally:
        meter.stop()
    frames = meter.frames
    assert {"corrupt", "truncated"} <= {frame.fault for frame in frames}, "no damaged frames"
    good = {counters(frame) for frame in frames if not frame.fault}
    for u1, u2, r1, r2, cons, prod in sent(domoticz):
        assert (u1, u2, r1, r2) in good, "a value from a damaged frame reached Domoticz"
        assert cons == IMPORT_W and prod == 0  # the meter's own power register (16.7.0)
    # The corruption hits 1.8.0, which P1 does not send: so check every frame the daemon
    # used (each gets a status line with its import total, 1.8.0: at INFO when it goes to
    # Domoticz, at DEBUG otherwise) against the intact frames.
    good_totals = {frame.value("1.8.0") / 1000 for frame in frames if not frame.fault}
    used = [Decimal(v) for v in re.findall(USED_FRAME, daemon.output)]
    assert len(used) >= 8, daemon.output
    assert len(frames) < 64  # the simulator's record still holds every frame it pushed
    stray = [total for total in used if total not in good_totals]
    assert not stray, (stray, sorted(good_totals))
    assert "Traceback" not in daemon.output


def test_sml_head_back_under_a_by_id_link_to_a_new_tty(tmp_path, domoticz):
    by_id = tmp_path / "serial" / "by-id"
    by_id.mkdir(parents=True)
    link = by_id / "usb-Silicon_Labs_CP2104_USB_to_UART_01A2B3C4-if00-port0"
    meter = start_meter(link)
    first_tty = os.readlink(link)
    try:
        with running(sml_config(tmp_path, link, domoticz)) as daemon:
            domoticz.wait_for_updates(2, timeout=30)
            meter.unplug()
            unplugged = time.monotonic()
            daemon.wait_for_log(r"WARNING iskra_me162.daemon: meter: ", timeout=15)
            placeholder = os.openpty()  # the old tty number is taken meanwhile
            # (5 s here; tests/test_faults.py keeps an IEC head away for the full 10 s)
            time.sleep(max(0.0, 5 - (time.monotonic() - unplugged)))
            meter.replug()
            replugged = time.monotonic()
            for fd in placeholder:
                os.close(fd)
            before = len(domoticz.updates(IDX))
            domoticz.wait_for_updates(before + 1, timeout=INTERVAL + 5 + 5)
            took = time.monotonic() - replugged
            new_tty = os.readlink(link)
    finally:
        meter.stop()
    assert new_tty != first_tty
    assert took < INTERVAL + 5, f"first good update {took:.1f} s after the head came back"
    failures = [
        line
        for line in daemon.output.splitlines()
        if "WARNING iskra_me162.daemon: meter: " in line and "retrying" in line
    ]
    assert 1 <= len(failures) <= 2, failures  # per cause, not per failed attempt
    assert "meter: good readout again" in daemon.output
    good = {counters(frame) for frame in meter.frames}
    assert tuple(sent(domoticz)[-1][:4]) in good


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_silent_sml_meter_backs_off_without_a_hot_loop(tmp_path):
    meter = start_meter(tmp_path / "ttyIR", silent=True)
    try:
        config = sml_config(tmp_path, tmp_path / "ttyIR", None, update_interval=30)
        with running(config) as daemon:
            time.sleep(12)
            cpu = cpu_seconds(daemon.process.pid)
            opens = daemon.output.count("iskra_me162.port: opened")
    finally:
        meter.stop()
    assert cpu < 3.0, cpu  # start-up included; a hot loop would burn the whole 12 s
    # Waits 10 s for a frame, closes, backs off 5 s, opens again: at most 2 opens in 12 s.
    assert 1 <= opens <= 2, daemon.output
    warnings = [
        line for line in daemon.output.splitlines() if "WARNING iskra_me162.daemon: meter" in line
    ]
    assert len(warnings) == 1, warnings
    assert "no good" in warnings[0] or "within" in warnings[0], warnings


def test_endpoint_abuse_does_not_delay_a_push_meter(tmp_path):
    """With a push meter the loop reads frame after frame: the attack must not make the served
    reading older than a few frame intervals, nor slow down a well-behaved client."""
    port = free_port()
    meter = start_meter(tmp_path / "ttyIR")
    config = sml_config(
        tmp_path, tmp_path / "ttyIR", None, http_listen=f"127.0.0.1:{port}", print_debug=1
    )
    ages: list[float] = []
    latencies: list[float] = []
    answers = []
    try:
        with running(config):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if get(port, "/healthz")[0] == 200:
                        break
                time.sleep(0.2)
            started = time.monotonic()
            with Attack(port):
                hostile = iter(HOSTILE_REQUESTS)
                while time.monotonic() - started < 10:
                    status, body, seconds = get(port, "/api/v1/readings")
                    assert status == 200, body
                    latencies.append(seconds)
                    ages.append(float(json.loads(body)["age_s"]))
                    request = next(hostile, None)
                    if request is not None:
                        answers.append((raw_exchange(port, request[0]), request[1]))
                    time.sleep(0.3)
    finally:
        meter.stop()
    assert len(latencies) >= 10 and max(latencies) < 1.0, sorted(latencies)[-5:]
    # Frames every 0.5 s: the reading served is never more than a few frames old.
    assert max(ages) < 2.0, ages
    for answer, expected in answers:
        assert answer.split(b" ", 2)[1] == str(expected).encode(), answer[:100]
        assert b"REFLX" not in answer
