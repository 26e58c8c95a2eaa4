"""End to end, the real daemon against a simulated ME162 on a pty: the sinks agree, the state
file serves a restart, a reload never publishes power from a short interval.

The ME162 sends no power register: every power figure here comes from the derive stage's
counter change over time.
"""

from __future__ import annotations

import http.client
import json
import signal
import time
from decimal import Decimal
from pathlib import Path

from iskra_me162.simulator.model import MeterConfig
from iskra_me162.simulator.pty_meter import PtyMeter
from tests.broker import Broker, Observer, free_port
from tests.daemonproc import DaemonProcess, write_config
from tests.httpstub import DomoticzStub

IDX = 7
INTERVAL = 4


def start_meter(tmp_path: Path, watts: int) -> PtyMeter:
    meter = PtyMeter(link=str(tmp_path / "ttyIR"), config=MeterConfig(import_w=watts, speedup=4.0))
    meter.start()
    return meter


def get_readings(port: int) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/api/v1/readings")
        response = connection.getresponse()
        return response.status, json.loads(response.read(), parse_float=Decimal)
    except OSError:
        return 0, {}
    finally:
        connection.close()


def wait_for_reading(port: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, document = get_readings(port)
        if status == 200:
            return document
        time.sleep(0.1)
    raise AssertionError(f"no reading on port {port} within {timeout} s")


def test_me162_with_domoticz_http_and_mqtt_shows_one_power(tmp_path):
    meter = start_meter(tmp_path, 1800)
    http_port = free_port()
    with DomoticzStub(devices=(IDX,)) as domoticz, Broker(tmp_path / "broker") as broker:
        observer = Observer(broker)
        config = write_config(
            tmp_path / "iskra-me162.conf",
            port=str(meter.link),
            update_interval=INTERVAL,
            print_debug=1,
            state_file=str(tmp_path / "state.json"),
            domoticzserver=domoticz.server,
            device_index=IDX,
            http_listen=f"127.0.0.1:{http_port}",
            mqtt_host=broker.host,
            mqtt_port=broker.port,
        )
        daemon = DaemonProcess(config)
        served: dict[Decimal, Decimal | None] = {}  # import kWh -> power_w, from the endpoint
        try:
            deadline = time.monotonic() + 60
            while len(domoticz.updates(IDX)) < 3 and time.monotonic() < deadline:
                status, document = get_readings(http_port)
                if status == 200:
                    served[document["import_kwh"]] = document["power_w"]
                time.sleep(0.2)
            updates = domoticz.updates(IDX)
            time.sleep(0.5)  # the MQTT messages of the last readout
        finally:
            status, _ = daemon.stop()
            daemon.close()
            meter.stop()
            observer.close()
        assert status == 0, daemon.output
        assert len(updates) >= 3, daemon.output
        states = [json.loads(m.payload, parse_float=Decimal) for m in observer.messages
                  if m.topic.endswith("/state")]  # fmt: skip
        mqtt_power = {state["import_kwh"]: state.get("power_w") for state in states}
        discovery = [json.loads(m.payload) for m in observer.messages
                     if m.topic.startswith("homeassistant/sensor/")]  # fmt: skip

    for update in updates:
        u1, u2, _r1, _r2, cons, prod = (int(v) for v in update.svalue.split(";"))
        import_kwh = Decimal(u1 + u2) / 1000
        # The same readout in every sink: the same power.
        assert mqtt_power[import_kwh] == cons - prod, (update.svalue, mqtt_power)
        if import_kwh in served:
            assert served[import_kwh] == cons - prod
        # Within the counters' resolution (1 Wh in INTERVAL s = 900 W) of the true load.
        assert abs(cons - 1800) <= 3600 / INTERVAL + 100, update.svalue
    power_sensors = [c for c in discovery if c["unique_id"].endswith("_power")]
    assert len(power_sensors) == 1
    assert power_sensors[0]["unit_of_measurement"] == "W"
    assert power_sensors[0]["device_class"] == "power"
    assert power_sensors[0]["state_class"] == "measurement"
    assert power_sensors[0]["expire_after"] == 2 * INTERVAL


def test_http_only_writes_the_state_file_and_has_power_right_after_a_restart(tmp_path):
    meter = start_meter(tmp_path, 1800)
    http_port = free_port()
    state = tmp_path / "state.json"
    config = write_config(
        tmp_path / "iskra-me162.conf",
        port=str(meter.link),
        update_interval=INTERVAL,
        print_debug=1,
        state_file=str(state),
        http_listen=f"127.0.0.1:{http_port}",
    )
    try:
        first = DaemonProcess(config)
        try:
            reading = wait_for_reading(http_port)
            assert reading["power_w"] is None  # a cold start: no earlier readout
            assert state.exists(), first.output  # after the first readout, no Domoticz
            first.wait_for_log(r"power 1?\d+ W \(from the counters", timeout=20)
        finally:
            status, _ = first.stop()
            first.close()
        assert status == 0
        second = DaemonProcess(config, log=tmp_path / "second.log")
        try:
            reading = wait_for_reading(http_port)
        finally:
            second.stop()
            second.close()
        # The first readout after the restart already has a power figure.
        assert reading["power_w"] is not None, second.output
        assert abs(reading["power_w"] - 1800) <= 3600 / INTERVAL + 100
        assert reading["power_source"] == "counters"
    finally:
        meter.stop()


def test_sighup_never_publishes_power_from_a_short_interval(tmp_path):
    # 1800 W is 1 Wh every 2 s: 6 Wh in a 12 s interval (within 17 %), while a readout taken
    # right after a reload would see 0 to 2 steps in 1 to 4 s: 0 W or double.
    watts, interval = 1800, 12
    meter = start_meter(tmp_path, watts)
    with DomoticzStub(devices=(IDX,)) as domoticz:
        config = write_config(
            tmp_path / "iskra-me162.conf",
            port=str(meter.link),
            update_interval=interval,
            print_debug=1,
            state_file=str(tmp_path / "state.json"),
            domoticzserver=domoticz.server,
            device_index=IDX,
        )
        daemon = DaemonProcess(config)
        try:
            # Each reload comes shortly after a readout, where reading again at once would
            # count over the shortest span.
            for count, delay in enumerate((0.3, 1.0, 0.6, 1.5), start=1):
                domoticz.wait_for_updates(count, timeout=60)
                time.sleep(delay)
                daemon.process.send_signal(signal.SIGHUP)
            time.sleep(interval + 2)
            updates = domoticz.updates(IDX)
        finally:
            status, _ = daemon.stop()
            daemon.close()
            meter.stop()
    assert status == 0, daemon.output
    assert daemon.output.count("configuration reloaded") == 4
    assert len(updates) >= 3
    for update in updates:
        cons = int(update.svalue.split(";")[4])
        assert abs(cons - watts) <= 0.25 * watts, (update.svalue, daemon.output)
