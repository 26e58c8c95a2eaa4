"""End to end for push meters and the Home Assistant sinks: the real daemon process with
``protocol = "sml"`` against a simulated MT175 on a real pty, serving the HTTP endpoint and
publishing to a real Mosquitto broker.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.simulator.sml_push import ServedFrame, SmlFaults, SmlPtyMeter, SmlPushConfig
from tests.daemonproc import DaemonProcess, write_config

PASSWORD = "mqtt-secret-never-shown"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_http(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def served_total_kwh(frame: ServedFrame) -> Decimal:
    for obis, value, unit in frame.values:
        if obis == "1-0:1.8.0*255":
            assert unit == "Wh"
            return value / 1000
    raise AssertionError("the simulator served no 1.8.0")


def test_sml_meter_served_over_http_never_from_a_corrupted_frame(tmp_path: Path):
    # Frames with 1b1b1b1b in the payload (escapes), garbage between frames, every 3rd frame
    # corrupted after its CRC, every 5th truncated.
    config = SmlPushConfig(
        interval=0.5,
        import_w=2500,
        faults=SmlFaults(escape=True, garbage=7, corrupt_every=3, truncate_every=5),
    )
    meter = SmlPtyMeter(link=str(tmp_path / "ttyIR"), config=config)
    port = free_port()
    daemon_config = write_config(
        tmp_path / "sml.conf",
        protocol="sml",
        port=str(tmp_path / "ttyIR"),
        http_listen=f"127.0.0.1:{port}",
        update_interval=5,
        print_debug=1,
        state_file="",
    )
    daemon = DaemonProcess(daemon_config)
    try:
        wait_http(port)
        # Before the first frame: 503 with a JSON error, never a zero.
        status, body = get(port, "/api/electricity/cumulated")
        assert status == 503 and "value" not in body, body
        assert get(port, "/healthz")[0] == 503
        meter.start()
        good_values: set[Decimal] = set()
        seen: list[Decimal] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(seen) < 12:
            status, body = get(port, "/api/electricity/cumulated")
            if status == 200:
                assert body["unit"] == "kWh" and body["type"] == 0
                seen.append(Decimal(str(body["value"])))
            time.sleep(0.25)
        good_values = {served_total_kwh(f) for f in meter.frames if not f.fault}
        bad_values = {served_total_kwh(f) for f in meter.frames if f.fault} - good_values
    finally:
        status_code, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status_code == 0, daemon.output
    assert len(seen) >= 5, daemon.output
    assert bad_values, "the simulator should have served damaged frames"
    for value in seen:
        assert value in good_values, (value, sorted(good_values))
    # The readings endpoint shows the same meter with the power register.
    assert "Traceback" not in daemon.output


def test_sml_readings_endpoint_and_staleness(tmp_path: Path):
    config = SmlPushConfig(interval=0.5, import_w=1234, speedup=float("inf"))
    meter = SmlPtyMeter(link=str(tmp_path / "ttyIR"), config=config)
    meter.start()
    port = free_port()
    daemon = DaemonProcess(
        write_config(
            tmp_path / "sml.conf",
            protocol="sml",
            port=str(tmp_path / "ttyIR"),
            http_listen=f"127.0.0.1:{port}",
            http_stale_after=2,
            update_interval=60,
            state_file="",
        )
    )
    try:
        wait_http(port)
        deadline = time.monotonic() + 15
        while get(port, "/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = get(port, "/api/v1/readings")
        assert status == 200, body
        assert body["power_w"] == 1234
        assert body["meter"]["manufacturer"] == "ISK"
        served = meter.frames[-1]
        assert Decimal(str(body["import_kwh"])) in {
            served_total_kwh(f) for f in meter.frames
        }, (body["import_kwh"], served)
        # The head falls off the meter: after http_stale_after the endpoint says 503.
        meter.set_faults(silent=True)
        time.sleep(3.5)
        status, body = get(port, "/api/electricity/cumulated")
        assert status == 503 and "value" not in body
        assert get(port, "/healthz")[0] == 503
    finally:
        status_code, _ = daemon.stop()
        meter.stop()
        daemon.close()
    assert status_code == 0, daemon.output


def test_mqtt_discovery_and_state_from_the_real_daemon(tmp_path: Path):
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is a test dependency")
    from tests.broker import Broker, Observer

    with Broker(tmp_path / "broker", users={"meter": PASSWORD}) as broker:
        observer = Observer(broker, username="meter", password=PASSWORD)
        config = SmlPushConfig(interval=0.5, import_w=800, speedup=float("inf"))
        meter = SmlPtyMeter(link=str(tmp_path / "ttyIR"), config=config)
        meter.start()
        daemon = DaemonProcess(
            write_config(
                tmp_path / "sml.conf",
                protocol="sml",
                port=str(tmp_path / "ttyIR"),
                mqtt_host=broker.host,
                mqtt_port=broker.port,
                mqtt_username="meter",
                mqtt_password=PASSWORD,
                update_interval=1,
                print_debug=2,
                state_file="",
            )
        )
        try:
            state = observer.wait_for(
                lambda messages: [m for m in messages if m.topic.endswith("/state")],
                timeout=20,
                what="a state message",
            )
            observer.wait_for(
                lambda messages: [m for m in messages if m.topic.startswith("homeassistant/")],
                timeout=20,
                what="discovery configs",
            )
            # Retained: a client that subscribes later (Home Assistant after a restart) gets them.
            late = Observer(
                broker, topics=("homeassistant/#",), username="meter", password=PASSWORD
            )
            def retained_configs(messages: list) -> list:
                configs = [m for m in messages if m.retain and m.topic.endswith("/config")]
                # import, export and power: the MT175 counts everything in tariff 1 (1.8.1
                # repeats the total, 1.8.2 stays 0), so it gets no tariff sensors
                return configs if len(configs) >= 3 else []

            discovery = late.wait_for(
                retained_configs, timeout=10, what="three retained discovery configs"
            )
            late.close()
            broker.restart()  # the daemon reconnects and goes on publishing
            before = len(observer.messages)
            observer.wait_for(
                lambda messages: len([m for m in messages[before:] if m.topic.endswith("/state")])
                >= 2,
                timeout=30,
                what="state messages after the broker restart",
            )
        finally:
            status_code, _ = daemon.stop()
            meter.stop()
            daemon.close()
            observer.close()
    assert status_code == 0, daemon.output
    payload = json.loads(state[0].text)  # type: ignore[index]
    served = {served_total_kwh(f) for f in meter.frames}
    assert Decimal(str(payload["import_kwh"])) in served
    assert payload["power_w"] == 800
    configs = [json.loads(m.text) for m in discovery]  # type: ignore[union-attr]
    keys = {c["unique_id"].rsplit("_", 1)[1] for c in configs}
    assert keys == {"export", "import", "power"}, [c["unique_id"] for c in configs]
    assert {c["device_class"] for c in configs} == {"energy", "power"}
    # The device is named after the number on the meter's front (DIN 43863-5), and the
    # sensors expire after the one freshness rule (stale_after 0: twice update_interval).
    number = f"1ISK00{config.serial:08d}"
    for discovered in configs:
        assert discovered["device"]["name"].endswith(f" {number}"), discovered["device"]
        assert discovered["device"]["serial_number"] == number, discovered["device"]
        assert discovered["expire_after"] == 2, discovered
    assert PASSWORD not in daemon.output
