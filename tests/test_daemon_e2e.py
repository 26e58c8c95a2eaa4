"""End to end: the real ``iskra-me162`` process, a simulated meter on a real pty (the same
pyserial code path as a real UART), and a strict Domoticz stand-in on 127.0.0.1.

The meters here are synthetic ME162s (register layout from SOURCES.md section C); what the
daemon pushed is compared with what the simulated meter put on the line.
"""

from __future__ import annotations

import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.simulator.model import Faults, MeterConfig, ServedReadout
from iskra_me162.simulator.pty_meter import PtyMeter
from tests.daemonproc import DaemonProcess, NotifySocket, write_config
from tests.httpstub import DomoticzStub

PASSWORD = "pa55-word-that-must-never-show"
INTERVAL = 3  # seconds between cycles: short, but long enough for a paced readout
IDX = 7


def kwh_to_wh(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def served_counters(served: ServedReadout) -> tuple[int, ...]:
    return tuple(kwh_to_wh(served.value(code)) for code in ("1.8.1", "1.8.2", "2.8.1", "2.8.2"))


@pytest.fixture
def domoticz():
    with DomoticzStub(username="meter", password=PASSWORD, devices=(IDX,)) as stub:
        yield stub


def start_meter(tmp_path: Path, **faults: object) -> PtyMeter:
    config = MeterConfig(import_w=1800, export_w=0, speedup=4.0, faults=Faults(**faults))
    meter = PtyMeter(link=str(tmp_path / "ttyIR"), config=config)
    meter.start()
    return meter


def daemon_config(
    tmp_path: Path, meter: PtyMeter, stub: DomoticzStub | None, **extra: object
) -> Path:
    settings: dict[str, object] = {
        "port": str(meter.link),
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
        }
    settings |= extra
    return write_config(tmp_path / "iskra-me162.conf", **settings)


def test_pushes_true_counters_and_plausible_power(tmp_path, domoticz):
    meter = start_meter(tmp_path, echo=True, noise=3)
    daemon = DaemonProcess(daemon_config(tmp_path, meter, domoticz))
    try:
        updates = domoticz.wait_for_updates(3, timeout=60)
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0, daemon.output
    served = [r for r in meter.readouts if not r.fault]
    for update in updates:
        assert update.svalue_well_formed, update.svalue
        assert update.auth_user == "meter"
        u1, u2, r1, r2, cons, prod = (int(v) for v in update.svalue.split(";"))
        # The counters equal one of the readouts the meter served, to the Wh.
        assert (u1, u2, r1, r2) in {served_counters(s) for s in served}, update.svalue
        # 1800 W read every ~3 s with 1 Wh counters: within one Wh per interval (1200 W at 3 s)
        # plus the scheduling jitter.
        assert abs(cons - 1800) <= 1300, update.svalue
        assert prod == 0
    # The first update waited for the second readout (cold start: no power invented).
    assert len(served) >= len(updates) + 1
    output = daemon.output
    assert PASSWORD not in output
    assert "TX /?!" in output  # print_debug 2 logs the wire in escaped form


def test_meter_that_ignores_its_baud_proposal_is_still_read(tmp_path, domoticz):
    meter = start_meter(tmp_path, ignore_baud=True)
    daemon = DaemonProcess(daemon_config(tmp_path, meter, domoticz))
    try:
        domoticz.wait_for_updates(2, timeout=90)
        daemon.wait_for_log(r"the next readouts use 300 baud")
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0


def test_corrupted_readouts_are_never_pushed(tmp_path, domoticz):
    meter = start_meter(tmp_path, corrupt_every=3, bad_bcc_every=4, truncate_every=5)
    daemon = DaemonProcess(daemon_config(tmp_path, meter, domoticz))
    try:
        domoticz.wait_for_updates(3, timeout=90)
        daemon.wait_for_log(r"readout rejected", timeout=30)
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0
    good = {served_counters(r) for r in meter.readouts if not r.fault}
    bad = {served_counters(r) for r in meter.readouts if r.fault} - good
    assert bad, "the simulator should have served damaged readouts"
    for update in domoticz.updates(IDX):
        u1, u2, r1, r2 = (int(v) for v in update.svalue.split(";")[:4])
        assert (u1, u2, r1, r2) in good


def test_unplugged_head_is_logged_once_and_reopened(tmp_path, domoticz):
    meter = start_meter(tmp_path)
    daemon = DaemonProcess(daemon_config(tmp_path, meter, domoticz))
    try:
        domoticz.wait_for_updates(1, timeout=60)
        meter.unplug()
        time.sleep(10)
        before = len(domoticz.updates(IDX))
        replugged = time.monotonic()
        meter.replug()
        domoticz.wait_for_updates(before + 1, timeout=INTERVAL + 5 + 10)
        took = time.monotonic() - replugged
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0
    assert took < 2 * INTERVAL + 5 + 5, took  # back-off is capped at update_interval
    gone = [
        line
        for line in daemon.output.splitlines()
        if "WARNING" in line and "meter:" in line and "retrying" in line
    ]
    assert 1 <= len(gone) <= 3, "\n".join(gone)  # once per cause, not once per cycle
    assert "good readout again" in daemon.output


def test_sigterm_during_a_300_baud_readout_exits_quickly(tmp_path):
    # Real line speed at 300 baud: the readout takes seconds, so SIGTERM lands in the middle.
    config = MeterConfig(speedup=1.0)
    meter = PtyMeter(link=str(tmp_path / "ttyIR"), config=config)
    meter.start()
    daemon = DaemonProcess(
        daemon_config(tmp_path, meter, None, use_highspeed=False, update_interval=60)
    )
    try:
        daemon.wait_for_log(r"RX .*<STX>", timeout=30)
        status, took = daemon.stop()
    finally:
        meter.stop()
        daemon.close()
    assert status == 0, daemon.output
    assert took < 2.0, took
    assert "stopped" in daemon.output


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path, domoticz):
    meter = start_meter(tmp_path)
    config = daemon_config(tmp_path, meter, domoticz)
    daemon = DaemonProcess(config)
    try:
        domoticz.wait_for_updates(1, timeout=60)
        config.write_text(config.read_text() + 'update_intervall = 5\n__import__("os")\n')
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log(r"reload failed, keeping the running configuration: .*:\d+: unknown")
        count = len(domoticz.updates(IDX))
        domoticz.wait_for_updates(count + 2, timeout=30)
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0


def test_domoticz_failures_are_logged_per_change_and_recovered(tmp_path, domoticz):
    meter = start_meter(tmp_path)
    domoticz.failure = "500"
    daemon = DaemonProcess(daemon_config(tmp_path, meter, domoticz))
    try:
        domoticz.wait_for_requests(4, timeout=60)
        domoticz.failure = None
        count = len(domoticz.updates(IDX))
        domoticz.wait_for_updates(count + 1, timeout=30)
        daemon.wait_for_log(r"domoticz: working again")
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0
    failures = [line for line in daemon.output.splitlines() if "WARNING" in line
                and "domoticz:" in line and "500" in line]
    assert len(failures) == 1, "\n".join(failures)
    assert PASSWORD not in daemon.output


def test_systemd_notify_ready_status_and_watchdog(tmp_path):
    meter = start_meter(tmp_path)
    notify = NotifySocket(tmp_path / "notify")
    daemon = DaemonProcess(
        daemon_config(tmp_path, meter, None),
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"},
    )
    try:
        assert notify.wait_for("READY=1")
        status_line = notify.wait_for("STATUS=ME162", timeout=30)
        assert "import " in status_line and " kWh" in status_line
        notify.messages.clear()
        notify.wait_for("WATCHDOG=1", timeout=5)
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
        notify.close()
    assert status == 0


def test_watchdog_starves_after_failed_cycles(tmp_path):
    meter = start_meter(tmp_path, silent=True)
    notify = NotifySocket(tmp_path / "notify")
    daemon = DaemonProcess(
        daemon_config(tmp_path, meter, None, update_interval=1, watchdog_failed_cycles=2),
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
    )
    try:
        daemon.wait_for_log(r"no good readout for 2 cycles in a row: no longer feeding", timeout=30)
        before = list(notify.collect(time.monotonic() + 0.3))  # queued before it starved
        notify.messages.clear()
        messages = notify.collect(time.monotonic() + 2.5)
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
        notify.close()
    assert status == 0
    assert not any("WATCHDOG=1" in message for message in messages), messages
    # systemctl status says what is wrong, not the last good readout.
    assert any(m.startswith("STATUS=no readout (") and "failed in a row" in m for m in before)


def test_silent_meter_backs_off_without_a_hot_loop(tmp_path):
    meter = start_meter(tmp_path, silent=True)
    daemon = DaemonProcess(daemon_config(tmp_path, meter, None, update_interval=30))
    try:
        time.sleep(14)
        requests = daemon.output.count("TX /?!")
        cpu = _cpu_seconds(daemon.process.pid)
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0
    # Attempts at 0, ~7, ~17 s (2 s timeout + 5 s, then 10 s back-off): at most 3 in 14 s.
    assert 1 <= requests <= 3, daemon.output
    assert cpu < 3.0, cpu  # start-up included; a hot loop would burn all 14 s
    warnings = [
        line for line in daemon.output.splitlines() if "WARNING iskra_me162.daemon: meter" in line
    ]
    assert len(warnings) == 1, warnings


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_once_and_dry_run(tmp_path, domoticz):
    meter = start_meter(tmp_path)
    config = daemon_config(tmp_path, meter, domoticz, print_debug=0)
    state = tmp_path / "state.json"
    try:
        dry = DaemonProcess(config, "--once", "--dry-run", log=tmp_path / "dry.log")
        assert dry.process.wait(60) == 0, dry.output
        dry.close()
        assert len(meter.readouts) == 1  # one meter session, never two
        served = meter.readouts[0]
        rows = {line.split()[0]: line.split()[1:] for line in dry.output.splitlines() if line}
        for code in ("1.8.0", "1.8.1", "1.8.2", "2.8.0", "2.8.1", "2.8.2"):
            number, unit = served.value(code).split("*")
            assert rows[code] == [str(Decimal(number)), unit], (code, dry.output)
        assert rows["C.1.0"] == [served.value("C.1.0")]
        # No power register and no state file: no power, and it says why; nothing written.
        assert "power: not known: there is no earlier readout" in dry.output
        assert "would send: nothing: no power figure" in dry.output
        assert not state.exists()
        assert domoticz.updates(IDX) == []
        # Without a power figure nothing can be sent, but the counters go to the state file ...
        first = DaemonProcess(config, "--once", log=tmp_path / "first.log")
        assert first.process.wait(60) == 1, first.output
        first.close()
        assert "nothing sent: no power figure" in first.output
        assert state.exists()
        assert domoticz.updates(IDX) == []
        # ... so that the next --once has the power from the change since then.
        time.sleep(8)
        once = DaemonProcess(config, "--once", log=tmp_path / "once.log")
        assert once.process.wait(60) == 0, once.output
        once.close()
    finally:
        meter.stop()
    assert len(meter.readouts) == 3
    sent = once.output.split("domoticz: sent svalue=")[1].split()[0]
    assert [update.svalue for update in domoticz.updates(IDX)] == [sent]
    u1, u2, r1, r2, cons, _prod = (int(v) for v in sent.split(";"))
    assert (u1, u2, r1, r2) == served_counters(meter.readouts[-1])
    assert abs(cons - 1800) <= 500  # 1 Wh in 8 s is 450 W
    assert PASSWORD not in once.output


def test_bad_state_file_is_explained_and_survived(tmp_path, domoticz):
    meter = start_meter(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    daemon = DaemonProcess(daemon_config(tmp_path, meter, domoticz))
    try:
        domoticz.wait_for_updates(2, timeout=60)
    finally:
        status, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status == 0
    assert "state" in daemon.output.lower() and "WARNING" in daemon.output


def test_daemon_mode_detaches_with_a_pid_file(tmp_path):
    meter = start_meter(tmp_path)
    config = daemon_config(tmp_path, meter, None, print_debug=1)
    pidfile = tmp_path / "run" / "iskra.pid"
    pidfile.parent.mkdir()
    pidfile.write_text("999999\n")  # stale: no such process
    starter = DaemonProcess(config, "--daemon", "--pidfile", str(pidfile), log=tmp_path / "d.log")
    try:
        assert starter.process.wait(30) == 0, starter.output  # the parent returns at once
        assert "replacing stale pid file" in starter.output
        deadline = time.monotonic() + 10
        while (not pidfile.exists() or pidfile.read_text().strip() == "999999") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        assert pid != starter.process.pid
        assert Path(f"/proc/{pid}").exists()
        # A second instance refuses to start while the first runs.
        second = DaemonProcess(
            config, "--daemon", "--pidfile", str(pidfile), log=tmp_path / "d2.log"
        )
        assert second.process.wait(30) == 1
        assert f"another iskra-me162 runs as pid {pid}" in second.output
        second.close()
        # It reads the meter although detached (its readouts are served by the simulator).
        deadline = time.monotonic() + 30
        while not meter.readouts and time.monotonic() < deadline:
            time.sleep(0.1)
        assert meter.readouts
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pidfile.exists(), "the pid file is removed on exit"
    finally:
        meter.stop()
        starter.close()


def test_sigterm_while_domoticz_hangs_exits_quickly(tmp_path, domoticz):
    meter = start_meter(tmp_path)
    domoticz.failure = "hang"
    daemon = DaemonProcess(daemon_config(tmp_path, meter, domoticz, domoticz_timeout=30))
    try:
        daemon.wait_for_log(r"GET .*/json\.htm\?type=command", timeout=60)
        time.sleep(0.5)  # the request is out; the daemon now waits for an answer
        status, took = daemon.stop()
    finally:
        meter.stop()
        daemon.close()
    assert status == 0, daemon.output
    assert took < 2.0, took
