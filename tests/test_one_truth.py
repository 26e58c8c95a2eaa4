"""Every sink shows the same energy and power for the same readout.

Table-driven over the register combinations real meters send: each case is derived once, then
rendered by the real sinks: Domoticz against the stand-in on 127.0.0.1, the HTTP endpoint over
a real socket, the MQTT state message as it would go to the broker, and the log's P1 line.
"""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import pytest

from iskra_me162.daemon import status_line
from iskra_me162.jsontext import number_text
from iskra_me162.sinks.domoticz import DomoticzSink
from iskra_me162.sinks.http import HttpEndpoint
from iskra_me162.sinks.logonly import LogOnlySink
from iskra_me162.sinks.mqtt_messages import Topics, TotalsGuard, entity_values, render_state
from tests.httpstub import DomoticzStub
from tests.readouts import make_deriver, make_readout

IDX = 7

# name: (registers of the earlier readout, registers 60 s later)
CASES = {
    "counters only (ME162)": ({"1.8.0": "100.000"}, {"1.8.0": "100.0075"}),
    "counters both ways": (
        {"1.8.0": "100.000", "2.8.0": "20.000"},
        {"1.8.0": "100.002", "2.8.0": "20.005"},
    ),
    "only 1.7.0": ({"1.8.0": "100", "1.7.0": "0.3"}, {"1.8.0": "100.005", "1.7.0": "0.3"}),
    "only 2.7.0": (
        {"1.8.0": "100", "2.8.0": "50", "2.7.0": "0.5"},
        {"1.8.0": "100.001", "2.8.0": "50.008", "2.7.0": "0.5"},
    ),
    "1.7.0 and 2.7.0": (
        {"1.8.0": "100", "2.8.0": "5", "1.7.0": "0.3", "2.7.0": "0"},
        {"1.8.0": "100.005", "2.8.0": "5", "1.7.0": "0.3", "2.7.0": "0"},
    ),
    "16.7.0 alone, exporting": (
        {"1.8.0": "100", "2.8.0": "5", "16.7.0": "-0.2"},
        {"1.8.0": "100", "2.8.0": "5.003", "16.7.0": "-0.2"},
    ),
    "16.7.0 with 1.7.0": (
        {"1.8.0": "100", "2.8.0": "5", "1.7.0": "0.3", "16.7.0": "-0.2"},
        {"1.8.0": "100.005", "2.8.0": "5.008", "1.7.0": "0.3", "16.7.0": "-0.2"},
    ),
    "16.7.0 with 2.7.0": (
        {"1.8.0": "100", "2.8.0": "5", "2.7.0": "0.1", "16.7.0": "0.4"},
        {"1.8.0": "100.008", "2.8.0": "5.002", "2.7.0": "0.1", "16.7.0": "0.4"},
    ),
    "16.7.0 with 1.7.0 and 2.7.0": (
        {"1.8.0": "100", "2.8.0": "5", "1.7.0": "0.3", "2.7.0": "0.5", "16.7.0": "-0.2"},
        {"1.8.0": "100.005", "2.8.0": "5.008", "1.7.0": "0.3", "2.7.0": "0.5", "16.7.0": "-0.2"},
    ),
    "tariffs without totals": (
        {"1.8.1": "60", "1.8.2": "40", "2.8.1": "1", "2.8.2": "2"},
        {"1.8.1": "60.004", "1.8.2": "40", "2.8.1": "1", "2.8.2": "2.001"},
    ),
    "totals without tariffs": (
        {"1.8.0": "100", "2.8.0": "5"},
        {"1.8.0": "100.003", "2.8.0": "5"},
    ),
    "MT175 repeats the total in 1.8.1": (
        {"1.8.0": ("15338555.7", "Wh"), "1.8.1": ("15338555.7", "Wh"), "1.8.2": ("0", "Wh"),
         "16.7.0": ("1800", "W")},
        {"1.8.0": ("15338585.7", "Wh"), "1.8.1": ("15338585.7", "Wh"), "1.8.2": ("0", "Wh"),
         "16.7.0": ("1800", "W")},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def domoticz():
    with DomoticzStub(devices=[IDX]) as stub:
        yield stub


@pytest.fixture(scope="module")
def endpoint():
    sink = HttpEndpoint("127.0.0.1:0", stale_after=120)
    sink.start()
    yield sink
    sink.close()


def http_readings(endpoint: HttpEndpoint) -> dict:
    host, port = endpoint.address
    with urllib.request.urlopen(f"http://{host}:{port}/api/v1/readings", timeout=5) as answer:
        return json.loads(answer.read(), parse_float=Decimal)


@pytest.mark.parametrize("case", CASES)
def test_every_sink_shows_the_same_energy_and_power(case, domoticz, endpoint):
    earlier, later = CASES[case]
    deriver = make_deriver()
    now = time.monotonic()  # the HTTP endpoint serves only fresh readings
    deriver.derive(make_readout(now - 60, earlier))
    values = deriver.derive(make_readout(now, later))
    assert values.has_power, values.power_missing
    net = values.net_power.watts
    import_kwh = values.import_energy.total_wh / 1000
    exported = values.export_energy
    export_kwh = Decimal(0) if exported is None else exported.total_wh / 1000

    # Domoticz (over HTTP, as the stand-in received it), and the log sink's P1 line.
    sink = DomoticzSink(domoticz.server, IDX)
    try:
        sent = sink.publish(values)
    finally:
        sink.close()
    svalue = domoticz.svalue(IDX)
    assert svalue == sent.svalue == LogOnlySink().publish(values).svalue
    u1, u2, r1, r2, cons, prod = (int(part) for part in svalue.split(";"))
    assert cons - prod == round(net)
    assert (cons, prod) == (round(values.import_power.watts), round(values.export_power.watts))
    if values.import_energy.tariff_wh(1) is None and values.import_energy.tariff_wh(2) is None:
        assert (u1, u2) == (int(import_kwh * 1000), 0)
    elif values.import_energy.has_tariffs:
        assert u1 + u2 == int(import_kwh * 1000)
    else:  # the MT175: tariff 1 is the total
        assert (u1, u2) == (int(import_kwh * 1000), 0)
    assert r1 + r2 == int(export_kwh * 1000)

    # The HTTP endpoint, over a real socket.
    endpoint.publish(values)
    served = http_readings(endpoint)
    assert served["power_w"] == net
    assert served["import_power_w"] == values.import_power.watts
    assert served["export_power_w"] == values.export_power.watts
    assert served["import_kwh"] == import_kwh
    assert (served["export_kwh"] or Decimal(0)) == export_kwh

    # MQTT: the state message Home Assistant's sensors read.
    topics = Topics("iskra-me162", values.identity.meter_id, "homeassistant")
    guard = TotalsGuard(values.identity.meter_id)
    rendered = render_state(values, topics, guard, entity_values(values), retain=False)
    state = json.loads(rendered.messages[0].payload, parse_float=Decimal)
    assert state["power_w"] == net
    assert state["import_kwh"] == import_kwh
    assert state.get("export_kwh", Decimal(0)) == export_kwh
    tariff_fields = {key for key in state if "_t" in key and key.endswith("_kwh")}
    has_tariffs = values.import_energy.has_tariffs or bool(exported and exported.has_tariffs)
    assert bool(tariff_fields) == has_tariffs

    # The log line.
    assert f"power {net:.0f} W" in status_line(values)
    assert f"import {number_text(import_kwh)} kWh" in status_line(values)


def test_a_counter_only_meter_gets_a_power_sensor_in_home_assistant():
    deriver = make_deriver()
    deriver.derive(make_readout(1000, {"1.8.0": "100.000"}))
    values = deriver.derive(make_readout(1060, {"1.8.0": "100.0075"}))
    power = [entity for entity in entity_values(values) if entity.key == "power"]
    assert len(power) == 1
    assert (power[0].unit, power[0].device_class, power[0].state_class) == (
        "W",
        "power",
        "measurement",
    )
    assert entity_values(values)[power[0]] == 450
