"""The MQTT sink against a real Mosquitto broker, and its messages against Home Assistant's
documented MQTT sensor schema.

Broker tests start their own mosquitto (tests/broker.py installs Debian's package when missing)
on 127.0.0.1, subscribe with an independent paho client and compare what arrives with the
readout. Values are checked by rendering each discovery config's ``value_template`` with Jinja2
(what Home Assistant does) against the state message. Expected values of the real captures come
from ``../shared/testdata/expected.json``, not from the code under test.

The sink renders the derive stage's :class:`~iskra_me162.derive.Values` and computes nothing
itself: every readout here is derived first, by a fresh deriver unless a test needs power from
counters (two readouts at least 30 s apart). That the derive stage computes the right values is
tests/test_derive.py's business; here, that the messages show them.

Runs with paho-mqtt 2.x and 1.6 alike (the sink supports both); the tests themselves only use
the API common to both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import jinja2
import pytest

from iskra_me162.derive import Values
from iskra_me162.errors import ConfigError, SinkError
from iskra_me162.obis import ObisCode, Reading
from iskra_me162.protocols.iec62056_21 import parse_data_lines, parse_readout
from iskra_me162.readout import MeterIdentity, Readout
from iskra_me162.sinks import mqtt_messages as messages
from tests.broker import Broker, Observer, Received, free_port, make_tls_files
from tests.readouts import make_deriver, make_readout
from tests.testdata import TESTDATA, captures, expected, require_testdata

REPO_ROOT = Path(__file__).resolve().parent.parent
ME162 = MeterIdentity("ISK", "ME162-0033", "63355730")
PASSWORD = "Zx9-secret-Pa55word"  # searched for in every output
WRONG_PASSWORD = "Qw7-wrong-Pa55word"


def me162_readout(
    import_t1: str = "5123.101",
    import_t2: str = "2285.151",
    export_t1: str = "1000.000",
    export_t2: str = "532.007",
    *,
    identity: MeterIdentity = ME162,
    extra_lines: str = "",
) -> Readout:
    """An ME162-style readout (short OBIS codes, two tariffs, no power) through the real parser."""
    total_in = Decimal(import_t1) + Decimal(import_t2)
    total_out = Decimal(export_t1) + Decimal(export_t2)
    lines = (
        f"C.1.0({identity.serial})\r\n0.0.0({identity.serial})\r\n"
        f"1.8.0({total_in:011.3f}*kWh)\r\n1.8.1({Decimal(import_t1):011.3f}*kWh)\r\n"
        f"1.8.2({Decimal(import_t2):011.3f}*kWh)\r\n2.8.0({total_out:011.3f}*kWh)\r\n"
        f"2.8.1({Decimal(export_t1):011.3f}*kWh)\r\n2.8.2({Decimal(export_t2):011.3f}*kWh)\r\n"
        f"{extra_lines}F.F(0000000)\r\n!\r\n"
    )
    return Readout(identity, parse_data_lines(lines), datetime.now(UTC), time.monotonic())


def simple_readout(import_kwh: str, identity: MeterIdentity = ME162, power_kw: str = "") -> Readout:
    lines = f"1.8.0({import_kwh}*kWh)\r\n" + (f"1.7.0({power_kw}*kW)\r\n" if power_kw else "")
    return Readout(identity, parse_data_lines(lines + "!\r\n"), datetime.now(UTC), time.monotonic())


def values_of(readout: Readout) -> Values:
    """The values of ``readout`` alone (a fresh deriver: no earlier readout, no state file).

    Each readout derived on its own, so that the sink's own checks (a total lower than the
    one published before) are reached at all: one deriver would reject such a readout first.
    """
    return make_deriver().derive(readout)


def me162_values(*args: str, **kwargs: object) -> Values:
    return values_of(me162_readout(*args, **kwargs))  # type: ignore[arg-type]


def simple_values(*args: str, **kwargs: object) -> Values:
    return values_of(simple_readout(*args, **kwargs))  # type: ignore[arg-type]


# --- Home Assistant's MQTT sensor schema ---------------------------------------------------------
# From https://www.home-assistant.io/integrations/sensor.mqtt/ (configuration variables),
# .../integrations/mqtt/#discovery-messages (topic format, abbreviations, device and origin
# maps) and .../integrations/sensor/#device-class (units and state classes per device class).

HA_SENSOR_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "device_class", "enabled_by_default", "encoding",
    "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "last_reset_value_template", "name",
    "object_id", "options", "origin", "payload_available", "payload_not_available", "platform",
    "qos", "state_class", "state_topic", "suggested_display_precision", "unique_id",
    "unit_of_measurement", "value_template",
}  # fmt: skip
HA_DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
HA_ORIGIN_KEYS = {"name", "sw_version", "support_url"}
HA_UNITS = {"energy": {"Wh", "kWh", "MWh", "MJ", "GJ"}, "power": {"W", "kW", "MW"}}
HA_STATE_CLASSES = {"energy": {"total", "total_increasing"}, "power": {"measurement"}}
HA_DISCOVERY_TOPIC = (
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)


def check_publish_topic(topic: object) -> None:
    assert isinstance(topic, str) and topic, topic
    assert not set(topic) & {"+", "#", "\0"}, f"wildcard in a topic we publish to: {topic}"
    assert len(topic.encode()) <= 65535


def check_ha_sensor_config(topic: str, payload: bytes, discovery_prefix: str) -> dict:
    """One discovery message, field by field; returns the parsed config."""
    match = re.fullmatch(re.escape(discovery_prefix) + "/" + HA_DISCOVERY_TOPIC, topic)
    assert match, f"not a discovery topic: {topic}"
    assert match["component"] == "sensor"
    config = json.loads(payload)
    assert isinstance(config, dict)
    assert set(config) <= HA_SENSOR_KEYS, set(config) - HA_SENSOR_KEYS
    # the issue's topic scheme: <discovery_prefix>/sensor/<unique_id>/config
    assert match["object_id"] == config["unique_id"]
    assert isinstance(config["name"], str) and config["name"]
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    check_publish_topic(config["state_topic"])
    assert isinstance(config["value_template"], str)
    assert re.fullmatch(r"\{\{ value_json\.[a-z0-9_]+ \}\}", config["value_template"])
    device_class = config["device_class"]
    assert device_class in HA_UNITS
    assert config["unit_of_measurement"] in HA_UNITS[device_class]
    assert config["state_class"] in HA_STATE_CLASSES[device_class]
    if device_class == "energy":
        assert config["unit_of_measurement"] == "kWh"
        assert config["state_class"] == "total_increasing"
    else:
        assert config["unit_of_measurement"] == "W"
        assert config["state_class"] == "measurement"
    assert "availability" not in config  # exclusive with availability_topic
    check_publish_topic(config["availability_topic"])
    assert config["payload_available"] == "online"
    assert config["payload_not_available"] == "offline"
    assert config["qos"] in (0, 1, 2)
    # Home Assistant shows the sensor unavailable when no state came for that long.
    expire_after = config["expire_after"]
    assert type(expire_after) is int and expire_after > 0, expire_after
    device = config["device"]
    assert isinstance(device, dict) and set(device) <= HA_DEVICE_KEYS
    identifiers = device["identifiers"]
    assert isinstance(identifiers, list) and identifiers
    assert all(isinstance(item, str) and item for item in identifiers)
    for key in ("manufacturer", "model", "name", "serial_number"):
        assert isinstance(device.get(key, ""), str)
    assert device["name"]
    origin = config["origin"]
    assert set(origin) <= HA_ORIGIN_KEYS and isinstance(origin["name"], str) and origin["name"]
    return config


def render(template: str, state_payload: bytes) -> str:
    """What Home Assistant's value_template makes of a state message (value_json = the JSON)."""
    environment = jinja2.Environment(autoescape=False)  # noqa: S701 - HA renders unescaped
    return environment.from_string(template).render(value_json=json.loads(state_payload))


def rendered_values(configs: dict[str, dict], state_payload: bytes) -> dict[str, Decimal]:
    """unique_id suffix (import, export_t2, power) -> the value Home Assistant would show."""
    values = {}
    for config in configs.values():
        key = config["unique_id"][len(config["device"]["identifiers"][0]) + 1 :]
        values[key] = Decimal(render(config["value_template"], state_payload))
    return values


# --- what the meter has, computed from expected.json (not from the code under test) -------------


def expected_entities(obis: dict[str, dict]) -> dict[str, Decimal]:
    """Entity key -> value in kWh / W for the registers listed in expected.json, from one
    readout.

    Tariff sensors only for a direction where two tariff registers or more have counted: not
    when one alone holds everything (the MT175 and most SML meters repeat the total in tariff 1,
    the ZPA GH305 counts all in tariff 2). Power is the net power: 16.7.0, else 1.7.0 minus
    2.7.0; 1.7.0 alone only for a meter that counts no export (otherwise its export power
    needs a second readout's counters, and one readout has no power).
    """
    energy = {"Wh": Decimal("0.001"), "kWh": Decimal(1), None: Decimal(1), "": Decimal(1)}
    power = {"W": Decimal(1), "kW": Decimal(1000), None: Decimal(1000), "": Decimal(1000)}
    current: dict[tuple[int, int, int], tuple[Decimal, str | None]] = {}
    for text, entry in obis.items():
        code = ObisCode.parse(text)
        if code.a in (None, 1) and code.f in (None, 255):
            # a missing E group is 0: "16.7" is 16.7.0 (Landis+Gyr E350)
            value = (Decimal(str(entry["value"])), entry.get("unit"))
            current.setdefault((code.c, code.d, code.e or 0), value)
    result: dict[str, Decimal] = {}
    for name, c in (("import", 1), ("export", 2)):
        tariffs = {
            e: value * energy[unit]
            for (cc, d, e), (value, unit) in current.items()
            if cc == c and d == 8 and 1 <= e <= 9 and unit in energy
        }
        total = current.get((c, 8, 0))
        if total is not None and total[1] in energy:
            result[name] = total[0] * energy[total[1]]
        elif tariffs:
            result[name] = sum(tariffs.values(), Decimal(0))
        counting = {tariff: value for tariff, value in tariffs.items() if value != 0}
        if len(counting) >= 2:
            for tariff, value in tariffs.items():
                result[f"{name}_t{tariff}"] = value
    signed = current.get((16, 7, 0))
    importing, exporting = current.get((1, 7, 0)), current.get((2, 7, 0))
    if signed is not None:
        result["power"] = signed[0] * power[signed[1]]
    elif importing is not None and exporting is not None:
        result["power"] = importing[0] * power[importing[1]] - exporting[0] * power[exporting[1]]
    elif importing is not None and "export" not in result:
        result["power"] = importing[0] * power[importing[1]]
    return result


def capture_readout(name: str) -> Readout:
    """The readout of a real capture, taken now (by the monotonic clock: the sink republishes
    only fresh readings)."""
    raw = (TESTDATA / name).read_bytes()
    now = datetime(2026, 5, 1, 12, 0, 3, tzinfo=UTC)
    monotonic = time.monotonic()
    if name.startswith("sml/"):
        from iskra_me162.protocols.sml import (
            SmlStreamReader,
            decode_bare_messages,
            frame_to_readout,
        )

        if "_msgonly__" in name:
            frame = decode_bare_messages(raw)
        else:
            reader = SmlStreamReader()
            reader.add(raw)
            frame = reader.get_frame()
            if frame is None:  # the capture whose serial the source redacted (bad CRC)
                assert reader.crc_errors == 1
                frame = decode_bare_messages(raw[8 : len(raw) - 8 - raw[-3]])
        return frame_to_readout(frame, now, monotonic)
    identification, readings = parse_readout(raw)
    serial = next(
        (r.raw for r in readings if r.code.cde in ("96.1.0", "0.0.0") and r.value is None), ""
    )
    if identification is None:
        return Readout(MeterIdentity("", "", serial), readings, now, monotonic)
    identity = MeterIdentity(identification.manufacturer, identification.ident, serial)
    return Readout(identity, readings, now, monotonic)


def render_all(
    reading: Readout | Values,
    prefix: str = "iskra-me162",
    discovery: str = "homeassistant",
    expire_after: int = 180,
):
    """Discovery configs and the state of one reading (a readout is derived on its own)."""
    values = values_of(reading) if isinstance(reading, Readout) else reading
    topics = messages.Topics(prefix, values.identity.meter_id, discovery)
    entities = messages.entity_values(values)
    configs = messages.discovery_configs(values.identity, entities, topics, "1.0", expire_after)
    state = messages.render_state(values, topics, messages.TotalsGuard("x"), entities, False)
    return topics, configs, state


# --- pure tests: payloads -------------------------------------------------------------------


@pytest.mark.parametrize("name", captures("iec62056-21/") + captures("sml/"))
def test_every_capture_gives_valid_discovery_and_matching_values(name):
    require_testdata()
    readout = capture_readout(name)
    entry = expected()[name]
    want = expected_entities(entry["obis"])
    topics, configs, state = render_all(readout)
    parsed = {topic: check_ha_sensor_config(topic, body, "homeassistant")
              for topic, body in configs.items()}  # fmt: skip
    unique_ids = [config["unique_id"] for config in parsed.values()]
    assert len(unique_ids) == len(set(unique_ids))
    state_message = state.messages[0]
    assert state_message.topic == topics.state
    got = rendered_values(parsed, state_message.payload)
    # only the entities the meter has, each with the meter's value
    assert got == want
    document = json.loads(state_message.payload)
    # every register of the readout is in the state, under its key, and on its own topic
    keys = {messages.register_key(reading) for reading in readout.readings}
    assert set(document["registers"]) == keys
    plain = {message.topic: message.payload for message in state.messages[1:]}
    assert set(plain) == {topics.register(key) for key in keys}
    for key, register in document["registers"].items():
        body = plain[topics.register(key)].decode()
        if "text" in register:
            assert body == register["text"]
        else:
            assert Decimal(body) == Decimal(str(register["value"]))


def test_me162_entities_device_and_state():
    readout = me162_readout()
    _topics, configs, state = render_all(readout)
    parsed = {t: check_ha_sensor_config(t, b, "homeassistant") for t, b in configs.items()}
    assert sorted(config["unique_id"] for config in parsed.values()) == [
        "iskra_me162_63355730_export",
        "iskra_me162_63355730_export_t1",
        "iskra_me162_63355730_export_t2",
        "iskra_me162_63355730_import",
        "iskra_me162_63355730_import_t1",
        "iskra_me162_63355730_import_t2",
    ]  # no power entity: no power registers, and one readout gives no power from counters
    device = next(iter(parsed.values()))["device"]
    assert device == {
        "identifiers": ["iskra_me162_63355730"],
        "name": "Iskraemeco ME162-0033 63355730",
        "manufacturer": "Iskraemeco",
        "model": "ME162-0033",
        "serial_number": "63355730",
    }
    assert all(config["device"] == device for config in parsed.values())
    assert rendered_values(parsed, state.messages[0].payload) == {
        "import": Decimal("7408.252"),
        "import_t1": Decimal("5123.101"),
        "import_t2": Decimal("2285.151"),
        "export": Decimal("1532.007"),
        "export_t1": Decimal("1000.000"),
        "export_t2": Decimal("532.007"),
    }
    document = json.loads(state.messages[0].payload)
    assert document["meter"] == {
        "id": "63355730", "manufacturer": "ISK", "model": "ME162-0033", "serial": "63355730",
    }  # fmt: skip
    assert document["registers"]["1.8.0"] == {"obis": "1.8.0", "value": 7408.252, "unit": "kWh"}
    assert document["registers"]["C.1.0"] == {"obis": "C.1.0", "text": "63355730"}
    assert document["registers"]["F.F"] == {"obis": "F.F", "text": "0000000"}
    assert document["held_back"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["time"])
    # exact decimals in the JSON text, no float noise
    assert b'"import_kwh":7408.252,' in state.messages[0].payload


def test_power_units_and_signs():
    identity = MeterIdentity("EMH", "", "0901454d48000041f045")
    readings = (
        Reading(ObisCode.parse("1-0:1.8.0*255"), Decimal("12345678.9"), "Wh", "12345678.9"),
        Reading(ObisCode.parse("1-0:16.7.0*255"), Decimal("-412.5"), "W", "-412.5"),
        Reading(ObisCode.parse("1-0:32.7.0*255"), Decimal("231.4"), "V", "231.4"),
    )
    readout = Readout(identity, readings, datetime.now(UTC), 1.0)
    _topics, configs, state = render_all(readout)
    parsed = {t: check_ha_sensor_config(t, b, "homeassistant") for t, b in configs.items()}
    assert rendered_values(parsed, state.messages[0].payload) == {
        "import": Decimal("12345.6789"),
        "power": Decimal("-412.5"),
    }
    registers = json.loads(state.messages[0].payload)["registers"]
    assert registers["1.8.0"] == {"obis": "1-0:1.8.0*255", "value": 12345.6789, "unit": "kWh"}
    assert registers["32.7.0"] == {"obis": "1-0:32.7.0*255", "value": 231.4, "unit": "V"}
    power = next(c for c in parsed.values() if c["device_class"] == "power")
    assert power["name"] == "Power"
    assert parsed and all("model" not in c["device"] for c in parsed.values())  # SML: none sent


def test_import_total_from_tariffs_when_the_meter_sends_no_total():
    readings = parse_data_lines("1.8.1(0000100.5*kWh)\r\n1.8.2(0000020.25*kWh)\r\n!\r\n")
    readout = Readout(ME162, readings, datetime.now(UTC), 1.0)
    _topics, configs, state = render_all(readout)
    parsed = {t: check_ha_sensor_config(t, b, "homeassistant") for t, b in configs.items()}
    assert rendered_values(parsed, state.messages[0].payload) == {
        "import": Decimal("120.75"),
        "import_t1": Decimal("100.5"),
        "import_t2": Decimal("20.25"),
    }


def counter_only_values(identity: MeterIdentity = ME162) -> Values:
    """An ME162-like meter (only 1.8.0): 7.5 Wh in 60 s, so 450 W from its counters."""
    deriver = make_deriver()
    now = time.monotonic()
    deriver.derive(make_readout(now - 60, {"1.8.0": "100.000"}, identity=identity))
    return deriver.derive(make_readout(now, {"1.8.0": "100.0075"}, identity=identity))


def test_a_counter_only_meter_gets_a_power_sensor_and_power_in_its_state():
    values = counter_only_values()
    assert values.net_power is not None, values.power_missing  # the derive stage's figure
    _topics, configs, state = render_all(values)
    parsed = {t: check_ha_sensor_config(t, b, "homeassistant") for t, b in configs.items()}
    (power,) = [config for config in parsed.values() if config["unique_id"].endswith("_power")]
    assert (power["unit_of_measurement"], power["device_class"], power["state_class"]) == (
        "W",
        "power",
        "measurement",
    )
    document = json.loads(state.messages[0].payload, parse_float=Decimal)
    assert document["power_w"] == values.net_power.watts
    assert abs(document["power_w"] - 450) < Decimal("0.01")
    got = rendered_values(parsed, state.messages[0].payload)
    assert set(got) == {"import", "power"}
    assert got["import"] == Decimal("100.0075")


@pytest.mark.parametrize(
    ("registers", "sensors"),
    [
        pytest.param(
            {"1.8.0": ("15338555.7", "Wh"), "1.8.1": ("15338555.7", "Wh"), "1.8.2": ("0", "Wh"),
             "16.7.0": ("563.5", "W")},
            {"import", "power"},
            id="MT175 repeats its total in 1.8.1",
        ),
        pytest.param(
            {"1.8.0": "7408.252", "1.8.1": "5123.101", "1.8.2": "2285.151", "2.8.0": "1532.007",
             "2.8.1": "1000.000", "2.8.2": "532.007", "1.7.0": "0.412", "2.7.0": "0.1"},
            {"import", "import_t1", "import_t2", "export", "export_t1", "export_t2", "power"},
            id="a real two-tariff meter",
        ),
        pytest.param(
            {"1.8.0": "500", "1.8.1": "0", "1.8.2": "0", "2.8.0": "20", "2.8.1": "20",
             "2.8.2": "0"},
            {"import", "export"},
            id="tariff registers that never counted, or only repeat the total",
        ),
    ],
)  # fmt: skip
def test_tariff_sensors_only_for_a_meter_that_really_counts_per_tariff(registers, sensors):
    readout = make_readout(time.monotonic(), registers)
    _topics, configs, state = render_all(readout)
    parsed = {t: check_ha_sensor_config(t, b, "homeassistant") for t, b in configs.items()}
    prefix = f"iskra_me162_{readout.identity.meter_id}_"
    assert {config["unique_id"].removeprefix(prefix) for config in parsed.values()} == sensors
    document = json.loads(state.messages[0].payload)
    tariff_fields = {key for key in document if re.fullmatch(r"(import|export)_t\d_kwh", key)}
    assert tariff_fields == {f"{key}_kwh" for key in sensors if "_t" in key}
    # The tariff registers themselves are still published, as registers.
    assert {"1.8.1", "1.8.2"} <= set(document["registers"])


def din_43863_5_number(server_id: str) -> str:
    """The meter number printed on the front, from a 10-byte SML server id (hex): medium,
    manufacturer flag, fabrication block (2 digits), serial (8 digits)."""
    raw = bytes.fromhex(server_id)
    return f"{raw[1]}{raw[2:5].decode('ascii')}{raw[5]:02d}{int.from_bytes(raw[6:], 'big'):08d}"


def test_an_sml_meter_is_named_after_the_number_on_its_front():
    identity = MeterIdentity("ISK", "", "0a0149534b0004812d55")
    readout = make_readout(
        time.monotonic(),
        {"1.8.0": ("5672051.4", "Wh"), "16.7.0": ("196", "W")},
        identity=identity,
    )
    _topics, configs, _state = render_all(readout)
    parsed = {t: check_ha_sensor_config(t, b, "homeassistant") for t, b in configs.items()}
    assert {json.dumps(config["device"]) for config in parsed.values()} == {
        json.dumps(
            {
                # unchanged: the device Home Assistant already has stays the same device
                "identifiers": ["iskra_me162_0a0149534b0004812d55"],
                "name": "Iskraemeco 1ISK0075574613",
                "manufacturer": "Iskraemeco",
                "serial_number": "1ISK0075574613",
            }
        )
    }
    assert din_43863_5_number(identity.serial) == "1ISK0075574613"


@pytest.mark.parametrize(
    "name",
    [
        "sml/iskra_0005020de2_msgonly__sml2mqtt.bin",
        "sml/dzg_0282c0b0__smllib.bin",
        "sml/holley_hly_020424a0__smllib.bin",
        "sml/iskra_04812d55_msgonly__smllib.bin",  # 09 01 ...: the 2010 edition's type byte
        "sml/emh_ehz-41f045__smartmeter-obis.bin",
    ],
)
def test_real_sml_meters_are_named_after_their_din_43863_5_number(name):
    require_testdata()
    readout = capture_readout(name)
    server_id = readout.identity.serial
    assert len(server_id) == 20, server_id
    number = din_43863_5_number(server_id)
    _topics, configs, _state = render_all(readout)
    for config in configs.values():
        device = json.loads(config)["device"]
        assert device["serial_number"] == number
        assert device["name"].endswith(f" {number}")
        assert device["identifiers"] == [f"iskra_me162_{server_id}"]


@pytest.mark.parametrize(
    ("code", "key"),
    [
        ("1.8.0", "1.8.0"),
        ("1-0:1.8.0*255", "1.8.0"),
        ("1-0:1.8.0&255", "1.8.0"),
        ("0-0:C.1.0*255", "C.1.0"),
        ("C.1.0", "C.1.0"),
        ("F.F", "F.F"),
        ("1-0:1.8.0*07", "1.8.0*07"),
        ("1-1:1.8.0*255", "1-1:1.8.0"),
        ("0-1:24.2.1", "0-1:24.2.1"),
    ],
)
def test_register_keys(code, key):
    assert messages.register_key(Reading(ObisCode.parse(code), Decimal(1), "kWh", "1")) == key


def test_sml_register_key_from_bytes():
    code = ObisCode.from_bytes(bytes((1, 0, 1, 8, 0, 255)))
    assert messages.register_key(Reading(code, Decimal(1), "Wh", "1")) == "1.8.0"


def test_meter_id_outside_the_allowed_characters_is_made_safe_for_discovery():
    identity = MeterIdentity("ESY", "Zähler 1", "")
    readout = simple_readout("1.5", identity=identity)
    _topics, configs, _state = render_all(readout)
    for topic, body in configs.items():
        check_ha_sensor_config(topic, body, "homeassistant")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("a/#", "'+', '#'"),
        ("a/+/b", "'+', '#'"),
        ("/a", "empty topic level"),
        ("a/", "empty topic level"),
        ("a//b", "empty topic level"),
        ("$SYS", "reserve"),
        (" a", "white space"),
    ],
)
def test_bad_topic_prefixes_are_config_errors(value, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        messages.check_topic_prefix(value, "mqtt_topic_prefix")


def test_the_guard_holds_back_lower_and_negative_totals_and_logs_once(caplog):
    caplog.set_level(logging.DEBUG)
    guard = messages.TotalsGuard("m1")
    assert guard.allows("1.8.0", Decimal(100))
    guard.record([("1.8.0", Decimal(100))])
    assert guard.allows("1.8.0", Decimal(100))  # equal is fine
    assert not guard.allows("1.8.0", Decimal("99.9"))
    assert not guard.allows("1.8.0", Decimal("99.8"))
    assert guard.last("1.8.0") == Decimal(100)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fell from 100 to 99.9" in warnings[0].getMessage()
    assert guard.allows("1.8.0", Decimal("100.1"))
    assert any("back at 100.1" in r.getMessage() for r in caplog.records)
    assert not guard.allows("2.8.0", Decimal(-1))  # a counter is never negative


def test_held_back_total_keeps_the_last_value_in_the_state():
    topics = messages.Topics("p", ME162.meter_id, "homeassistant")
    guard = messages.TotalsGuard(ME162.meter_id)
    first = messages.render_state(simple_values("100.5"), topics, guard, (), False)
    for message in first.messages:
        guard.record(message.totals)
    entities = messages.entity_values(simple_values("100.5"))
    # Derived on its own: one deriver would reject the lower counter before any sink saw it;
    # the guard is the sink's own defence (a restarted daemon has no earlier readout).
    lower = messages.render_state(simple_values("100.4"), topics, guard, entities, False)
    document = json.loads(lower.messages[0].payload)
    assert document["import_kwh"] == 100.5
    assert "1.8.0" not in document["registers"]
    assert sorted(document["held_back"]) == ["1.8.0", "import_kwh"]
    assert [m.topic for m in lower.messages] == [topics.state]  # no plain 1.8.0 this time


def test_announced_entity_missing_from_a_readout_keeps_its_field():
    topics = messages.Topics("p", ME162.meter_id, "homeassistant")
    guard = messages.TotalsGuard(ME162.meter_id)
    with_power = simple_values("10", power_kw="0.5")
    first = messages.render_state(with_power, topics, guard, (), False)
    for message in first.messages:
        guard.record(message.totals)
    entities = set(messages.entity_values(with_power))
    empty = values_of(Readout(ME162, parse_data_lines("!\r\n"), datetime.now(UTC), 2.0))
    document = json.loads(messages.render_state(empty, topics, guard, entities, False)
                          .messages[0].payload)  # fmt: skip
    assert document["import_kwh"] == 10  # last total: no change for Home Assistant
    assert document["power_w"] is None  # renders "None": unknown in Home Assistant


def test_number_text_is_exact():
    assert messages.number_text(Decimal("0007408.2520")) == "7408.252"
    assert messages.number_text(Decimal("1E+3")) == "1000"
    assert messages.number_text(Decimal("-0.000")) == "0"
    assert messages.to_json({"a": [Decimal("0.1"), None, True, "x\"y"]}) == (
        '{"a":[0.1,null,true,"x\\"y"]}'
    )


# --- construction ------------------------------------------------------------------------------


@pytest.fixture
def paho_installed():
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (a test dependency)")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"host": ""}, "mqtt_host is empty"),
        ({"host": "mqtt://broker"}, "not a URL"),
        ({"host": "user:pw@broker"}, "must not contain a user name"),
        ({"host": "mqtt://user:pw@ broker"}, "must not contain a user name"),
        ({"host": "bro ker"}, "white space"),
        ({"host": "b", "port": 0}, "mqtt_port"),
        ({"host": "b", "port": 65536}, "mqtt_port"),
        ({"host": "b", "port": "1883"}, "mqtt_port"),
        ({"host": "b", "password": "x"}, "mqtt_username is empty"),
        ({"host": "b", "topic_prefix": "a/#"}, "mqtt_topic_prefix"),
        ({"host": "b", "discovery_prefix": ""}, "mqtt_discovery_prefix"),
        ({"host": "b", "tls": True, "ca_file": "/nonexistent/ca.crt"}, "no such file"),
    ],
)
def test_bad_settings_are_config_errors(paho_installed, kwargs, problem):
    from iskra_me162.sinks.mqtt import MqttSink

    with pytest.raises(ConfigError, match=re.escape(problem)):
        MqttSink(**kwargs)


def test_a_file_that_is_no_certificate_is_a_config_error(paho_installed, tmp_path):
    from iskra_me162.sinks.mqtt import MqttSink

    bogus = tmp_path / "ca.crt"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a usable PEM CA certificate"):
        MqttSink("broker", tls=True, ca_file=str(bogus))


BLOCK_PAHO = textwrap.dedent(
    """
    import sys
    class BlockPaho:
        def find_spec(self, name, path=None, target=None):
            if name == "paho" or name.startswith("paho."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, BlockPaho())
    """
)


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
        cwd=REPO_ROOT, check=False,
    )  # fmt: skip


def test_without_paho_an_mqtt_configuration_is_a_config_error_naming_the_package():
    result = run_python(
        BLOCK_PAHO
        + textwrap.dedent(
            """
            from iskra_me162.errors import ConfigError
            from iskra_me162.sinks.mqtt import MqttSink
            try:
                MqttSink("127.0.0.1")
            except ConfigError as error:
                print("ConfigError:", error)
            """
        )
    )
    assert result.returncode == 0, result.stderr
    assert "ConfigError: MQTT is configured" in result.stdout
    assert "python3-paho-mqtt" in result.stdout and "pip install paho-mqtt" in result.stdout


def test_importing_the_sink_does_not_load_paho():
    result = run_python(
        "import sys\nimport iskra_me162.sinks.mqtt\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'paho'))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- against a real broker ---------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path, paho_installed) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def password_broker(tmp_path, paho_installed) -> Iterator[Broker]:
    with Broker(tmp_path / "password-broker", users={"meter": PASSWORD}) as running:
        yield running


@pytest.fixture
def observers() -> Iterator[Callable[..., Observer]]:
    made: list[Observer] = []

    def make(broker: Broker, topics=("#",), **kwargs) -> Observer:
        observer = Observer(broker, topics, **kwargs)
        made.append(observer)
        return observer

    yield make
    for observer in made:
        observer.close()


@pytest.fixture
def sinks() -> Iterator[Callable[..., object]]:
    from iskra_me162.sinks.mqtt import MqttSink

    made: list[MqttSink] = []

    def make(broker_or_host, port: int | None = None, **kwargs) -> MqttSink:
        if isinstance(broker_or_host, Broker):
            host, port = broker_or_host.host, broker_or_host.port
        else:
            host = broker_or_host
        kwargs.setdefault("reconnect_min_delay", 0.2)
        kwargs.setdefault("reconnect_max_delay", 1.0)
        sink = MqttSink(host, port, **kwargs)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


def state_of(observer: Observer, topic: str, after: float = 0.0, **accept) -> dict:
    def matches(message: Received) -> bool:
        document = json.loads(message.payload)
        return all(document.get(key) == value for key, value in accept.items())

    return json.loads(observer.wait_for_message(topic, after, matches).payload)


def test_discovery_state_and_plain_topics_on_the_broker(broker, observers, sinks):
    observer = observers(broker)
    sink = sinks(broker)
    values = me162_values()
    readout = values.readout
    result = sink.publish(values)
    assert result.sent and result.held_back == ()
    assert sink.flush(10)
    topics = messages.Topics("iskra-me162", "63355730", "homeassistant")
    state = observer.wait_for_message(topics.state)
    observer.wait_for_message(topics.register("F.F"))
    configs = {
        message.topic: check_ha_sensor_config(message.topic, message.payload, "homeassistant")
        for message in observer.messages
        if message.topic.startswith("homeassistant/")
    }
    assert len(configs) == 6
    assert all(config["state_topic"] == topics.state for config in configs.values())
    assert all(config["availability_topic"] == topics.availability for config in configs.values())
    assert rendered_values(configs, state.payload) == {
        "import": readout.energy_wh("1.8.0") / 1000,
        "import_t1": readout.energy_wh("1.8.1") / 1000,
        "import_t2": readout.energy_wh("1.8.2") / 1000,
        "export": readout.energy_wh("2.8.0") / 1000,
        "export_t1": readout.energy_wh("2.8.1") / 1000,
        "export_t2": readout.energy_wh("2.8.2") / 1000,
    }
    for cde in ("1.8.0", "1.8.1", "1.8.2", "2.8.0", "2.8.1", "2.8.2"):
        plain = observer.wait_for_message(topics.register(cde))
        assert Decimal(plain.text) == readout.energy_wh(cde) / 1000
        assert plain.qos == 1
    assert observer.wait_for_message(topics.register("C.1.0")).text == "63355730"
    assert observer.on(topics.availability)[0].text == "online"
    # availability and discovery are retained, states are not (mqtt_retain off)
    late = observers(broker)
    late.wait_for_message(topics.availability, accept=lambda m: m.retain and m.text == "online")
    late.wait_for(lambda seen: len([m for m in seen if m.topic in configs and m.retain]) == 6,
                  what="six retained discovery configs")  # fmt: skip
    assert all(m.payload == c.payload for m in late.messages for c in observer.messages
               if m.topic == c.topic and m.topic in configs)  # fmt: skip
    assert late.on(topics.state) == []


@pytest.mark.parametrize("name", [
    "sml/iskra_isk00-7034__tibberlink.bin",
    "iec62056-21/iskra_mt174-0001__smartmeter-obis.bin",
])  # fmt: skip
def test_real_captures_through_the_broker(broker, observers, sinks, name):
    require_testdata()
    readout = capture_readout(name)
    observer = observers(broker)
    sink = sinks(broker, topic_prefix="meters/house", discovery_prefix="ha-test")
    assert sink.publish(values_of(readout)).sent
    assert sink.flush(10)
    topics = messages.Topics("meters/house", readout.identity.meter_id, "ha-test")
    want = expected_entities(expected()[name]["obis"])
    observer.wait_for(lambda seen: len([m for m in seen if m.topic.startswith("ha-test/")])
                      == len(want), what="the discovery configs")  # fmt: skip
    configs = {
        message.topic: check_ha_sensor_config(message.topic, message.payload, "ha-test")
        for message in observer.messages
        if message.topic.startswith("ha-test/")
    }
    state = observer.wait_for_message(topics.state)
    assert rendered_values(configs, state.payload) == want
    assert all(c["device"]["identifiers"] == [f"iskra_me162_{readout.identity.meter_id}"]
               for c in configs.values())  # fmt: skip
    plain = observer.wait_for_message(topics.register("1.8.0"))
    assert Decimal(plain.text) == readout.energy_wh("1.8.0") / 1000


def test_retained_states_when_asked(broker, observers, sinks):
    sink = sinks(broker, retain=True)
    assert sink.publish(me162_values()).sent
    assert sink.flush(10)
    late = observers(broker)
    topics = messages.Topics("iskra-me162", "63355730", "homeassistant")
    state = late.wait_for_message(topics.state, accept=lambda m: m.retain)
    assert json.loads(state.payload)["import_kwh"] == 7408.252
    assert late.wait_for_message(topics.register("1.8.0"), accept=lambda m: m.retain).text == (
        "7408.252"
    )


def test_close_publishes_offline(broker, observers, sinks):
    observer = observers(broker)
    sink = sinks(broker)
    sink.publish(me162_values())
    topics = messages.Topics("iskra-me162", "63355730", "homeassistant")
    observer.wait_for_message(topics.availability, accept=lambda m: m.text == "online")
    sink.close()
    observer.wait_for_message(topics.availability, accept=lambda m: m.text == "offline")
    with pytest.raises(SinkError, match="closed"):
        sink.publish(me162_values())
    late = observers(broker)
    late.wait_for_message(topics.availability, accept=lambda m: m.retain and m.text == "offline")


def test_close_while_connecting_never_leaves_the_meter_online(tls_broker, observers, sinks):
    # close() right after the first publish races with the connection being accepted (TLS
    # makes the connection take long enough to land in it); either way the availability must
    # not end "online", and close() must not wait for paho's back-off.
    assert tls_broker.tls is not None
    ca_file = str(tls_broker.tls.ca_cert)
    for attempt in range(20):
        identity = MeterIdentity("ISK", "ME162-0033", f"race{attempt}")
        sink = sinks(tls_broker, tls=True, ca_file=ca_file, first_connect_wait=0.0)
        sink.publish(simple_values("1.5", identity=identity))
        time.sleep(attempt * 0.001)
        started = time.monotonic()
        sink.close()
        assert time.monotonic() - started < 3.0
    late = observers(tls_broker, topics=("iskra-me162/+/availability",))
    time.sleep(0.5)
    assert [m.topic for m in late.messages if m.text == "online"] == []


def test_last_will_marks_the_meter_offline_when_the_process_dies(broker, observers):
    observer = observers(broker)
    script = textwrap.dedent(
        f"""
        import time
        from datetime import UTC, datetime
        from iskra_me162.derive import Deriver
        from iskra_me162.protocols.iec62056_21 import parse_data_lines
        from iskra_me162.readout import MeterIdentity, Readout
        from iskra_me162.sinks.mqtt import MqttSink
        sink = MqttSink({broker.host!r}, {broker.port})
        readings = parse_data_lines("1.8.0(0000012.500*kWh)\\r\\n!\\r\\n")
        readout = Readout(MeterIdentity("ISK", "ME162-0033", "will-test"), readings,
                          datetime.now(UTC), time.monotonic())
        values = Deriver(min_span_s=30.0, max_span_s=900.0).derive(readout)
        assert sink.publish(values).sent
        assert sink.flush(10)
        print("published", flush=True)
        time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                             cwd=REPO_ROOT, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "published"
        availability = "iskra-me162/will-test/availability"
        observer.wait_for_message(availability, accept=lambda m: m.text == "online")
        killed_at = time.monotonic()
        child.kill()  # no DISCONNECT: the broker must send the last will
        child.wait(10)
        will = observer.wait_for_message(availability, after=killed_at,
                                          accept=lambda m: m.text == "offline")  # fmt: skip
        assert will.qos == 1
        late = observers(broker)
        late.wait_for_message(availability, accept=lambda m: m.retain and m.text == "offline")
    finally:
        child.kill()
        child.wait(10)


@pytest.mark.parametrize(
    ("discovery_prefix", "birth_topic"),
    [("homeassistant", "homeassistant/status"), ("ha-test", "ha-test/status")],
)
def test_home_assistant_birth_republishes_discovery(
    broker, observers, sinks, discovery_prefix, birth_topic
):
    observer = observers(broker)
    sink = sinks(broker, discovery_prefix=discovery_prefix)
    sink.publish(me162_values())
    assert sink.flush(10)
    prefix = f"{discovery_prefix}/sensor/"
    observer.wait_for(lambda seen: len([m for m in seen if m.topic.startswith(prefix)]) == 6,
                      what="the first discovery")  # fmt: skip
    # Home Assistant going offline is no reason to publish; coming online is.
    mark = time.monotonic()
    observer.publish(birth_topic, "offline")
    observer.publish(birth_topic, "online")

    def republished(seen: list[Received]) -> list[Received] | None:
        found = [m for m in seen if m.topic.startswith(prefix) and m.at >= mark]
        return found if len(found) >= 6 else None

    again = observer.wait_for(republished, what="discovery again after the birth message")
    assert sink.flush(10)
    time.sleep(0.3)
    after = [m for m in observer.messages if m.topic.startswith(prefix) and m.at >= mark]
    assert len(after) == 6, "exactly one re-publication, for 'online' only"
    first = {m.topic: m.payload for m in observer.messages if m.topic.startswith(prefix)}
    assert {m.topic: m.payload for m in again} == first  # type: ignore[union-attr]
    assert all(not m.retain for m in after)  # live messages, not the broker's retained copies


def test_broker_restart_mid_run(broker, observers, sinks, caplog):
    caplog.set_level(logging.DEBUG)
    sink = sinks(broker, retain=True)
    topics = messages.Topics("iskra-me162", "63355730", "homeassistant")
    observer = observers(broker)
    assert sink.publish(simple_values("100.000")).sent
    assert state_of(observer, topics.state, import_kwh=100)
    broker.stop()
    # The broker is away: the meter loop goes on, every publish returns at once, and the
    # problem is a SinkError with a stable message. Only the latest readout is kept.
    problems = set()
    for step in range(200):
        started = time.monotonic()
        try:
            result = sink.publish(simple_values(f"{100 + step + 1}.000"))
            assert not result.sent
        except SinkError as error:
            problems.add(str(error))
        assert time.monotonic() - started < 2.0
        time.sleep(0.01)
    assert problems, "the lost broker must be reported"
    assert all(p.startswith(("lost the connection", "the MQTT broker at 127.0.0.1")) for p in
               problems), problems  # fmt: skip
    assert len(problems) <= 3  # lost, then refused (or closed while the broker stops)
    assert not sink.connected
    broker.start()
    after_restart = observers(broker)
    # the latest state arrives (retained, so the observer sees it whenever it subscribed)...
    assert state_of(after_restart, topics.state, import_kwh=300)
    assert sink.flush(10)
    after_restart.wait_for_message(topics.availability, accept=lambda m: m.text == "online")
    time.sleep(0.3)
    # ...and nothing of what was read while the broker was away
    states = [json.loads(m.payload)["import_kwh"] for m in after_restart.on(topics.state)]
    assert states == [300]
    assert len([m for m in after_restart.messages if m.topic.startswith("homeassistant/")]) == 1
    assert sink.connected
    assert sink.publish(simple_values("301.000")).sent
    assert state_of(after_restart, topics.state, import_kwh=301)


def test_a_reading_older_than_expire_after_is_not_republished_after_a_reconnect(
    broker, observers, sinks
):
    # expire_after 2 s: what Home Assistant would already show as unavailable must not come
    # back as current when the broker returns.
    sink = sinks(broker, retain=True, stale_after=2.5)
    topics = messages.Topics("iskra-me162", "63355730", "homeassistant")
    observer = observers(broker)
    assert sink.publish(simple_values("100.000")).sent
    assert state_of(observer, topics.state, import_kwh=100)
    broker.stop()
    deadline = time.monotonic() + 10
    while sink.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sink.connected
    with contextlib.suppress(SinkError):  # the broker is away: reported, or only not sent
        assert not sink.publish(simple_values("200.000")).sent  # kept for the reconnect
    time.sleep(3.0)  # the kept reading is older than expire_after now
    broker.start()
    after_restart = observers(broker)  # retained messages: it sees what came before it too
    after_restart.wait_for_message(topics.availability, accept=lambda m: m.text == "online")
    # The discovery configs come again (the broker forgot them), with expire_after ...
    after_restart.wait_for(
        lambda seen: len([m for m in seen if m.topic.startswith("homeassistant/")]) == 1,
        what="the discovery config again",
    )
    assert sink.flush(10)
    time.sleep(0.5)
    for message in after_restart.messages:
        if message.topic.startswith("homeassistant/"):
            assert json.loads(message.payload)["expire_after"] == 2
    # ... but not the old reading: no state, no register.
    assert after_restart.on(topics.state) == []
    assert after_restart.on(topics.register("1.8.0")) == []
    # The next reading goes out as usual.
    assert sink.publish(simple_values("201.000")).sent
    assert state_of(after_restart, topics.state, import_kwh=201)


@pytest.mark.parametrize(("stale_after", "expire_after"), [(150.7, 150), (60, 60)])
def test_discovery_carries_expire_after_from_the_freshness_rule(
    broker, observers, sinks, stale_after, expire_after
):
    observer = observers(broker)
    sink = sinks(broker, stale_after=stale_after)
    assert sink.publish(me162_values()).sent
    assert sink.flush(10)
    observer.wait_for(lambda seen: len([m for m in seen if m.topic.startswith("homeassistant/")])
                      == 6, what="the discovery configs")  # fmt: skip
    configs = [
        check_ha_sensor_config(m.topic, m.payload, "homeassistant")
        for m in observer.messages
        if m.topic.startswith("homeassistant/")
    ]
    assert [config["expire_after"] for config in configs] == [expire_after] * 6


def test_a_counter_only_meter_gets_its_power_sensor_on_the_broker(broker, observers, sinks):
    observer = observers(broker)
    sink = sinks(broker)
    deriver = make_deriver()
    now = time.monotonic()
    first = deriver.derive(make_readout(now - 60, {"1.8.0": "100.000"}, identity=ME162))
    second = deriver.derive(make_readout(now, {"1.8.0": "100.0075"}, identity=ME162))
    topics = messages.Topics("iskra-me162", "63355730", "homeassistant")
    power_topic = "homeassistant/sensor/iskra_me162_63355730_power/config"
    assert sink.publish(first).sent  # one readout: no power yet, no power sensor yet
    assert state_of(observer, topics.state)["import_kwh"] == 100
    assert observer.on(power_topic) == []
    assert sink.publish(second).sent  # the second brings the power, and its sensor
    config = check_ha_sensor_config(
        power_topic, observer.wait_for_message(power_topic).payload, "homeassistant"
    )
    assert (config["unit_of_measurement"], config["device_class"], config["state_class"]) == (
        "W",
        "power",
        "measurement",
    )
    state = observer.wait_for_message(topics.state, accept=lambda m: b"power_w" in m.payload)
    assert json.loads(state.payload, parse_float=Decimal)["power_w"] == second.net_power.watts
    assert abs(Decimal(render(config["value_template"], state.payload)) - 450) < Decimal("0.01")


def test_wrong_password_is_a_clear_error_and_the_password_is_never_shown(
    password_broker, sinks, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    sink = sinks(password_broker, username="meter", password=WRONG_PASSWORD)
    errors = []
    for _ in range(3):
        with pytest.raises(SinkError) as caught:
            sink.publish(me162_values())
        errors.append(str(caught.value))
        time.sleep(0.3)
    assert errors[0] == errors[1] == errors[2]  # one stable line: the daemon logs it once
    assert "refused the login: check mqtt_username and mqtt_password" in errors[0]
    assert not sink.connected
    no_login = sinks(password_broker)
    with pytest.raises(SinkError, match="wants a login"):
        no_login.publish(me162_values())
    good = sinks(password_broker, username="meter", password=PASSWORD)
    assert good.publish(me162_values()).sent
    assert good.flush(10)
    for sink_ in (sink, no_login, good):
        sink_.close()
        assert PASSWORD not in repr(sink_) and WRONG_PASSWORD not in repr(sink_)
    output = capfd.readouterr()
    everything = "\n".join([caplog.text, output.out, output.err, *errors])
    assert "refused the login" in caplog.text  # the log did capture the run
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in everything
    assert any(r.name.startswith("iskra_me162.sinks.mqtt.paho") for r in caplog.records)


def test_password_never_reaches_the_broker_topics(password_broker, observers, sinks):
    observer = observers(password_broker, username="meter", password=PASSWORD)
    sink = sinks(password_broker, username="meter", password=PASSWORD, retain=True)
    assert sink.publish(me162_values()).sent
    assert sink.flush(10)
    observer.wait_for_message("iskra-me162/63355730/F.F")
    assert all(PASSWORD.encode() not in m.payload and PASSWORD not in m.topic
               for m in observer.messages)  # fmt: skip


def test_unreachable_broker_never_blocks_the_meter_loop(sinks):
    sink = sinks("127.0.0.1", free_port(), first_connect_wait=1.0)
    started = time.monotonic()
    with pytest.raises(SinkError, match="refused the connection"):
        sink.publish(me162_values())
    assert time.monotonic() - started < 5.0  # at most the first connection's wait
    for _ in range(5):
        started = time.monotonic()
        with pytest.raises(SinkError, match="refused the connection"):
            sink.publish(me162_values())
        assert time.monotonic() - started < 1.0
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 10.0


def test_unknown_host_is_named(sinks):
    sink = sinks("no-such-host.invalid", 1883)
    expected_error = re.escape("host name 'no-such-host.invalid' was not found")
    with pytest.raises(SinkError, match=expected_error):
        sink.publish(me162_values())


def test_lower_total_is_held_back_on_the_broker(broker, observers, sinks, caplog):
    caplog.set_level(logging.INFO)
    observer = observers(broker)
    sink = sinks(broker)
    topics = messages.Topics("iskra-me162", "63355730", "homeassistant")
    assert sink.publish(simple_values("100.000")).held_back == ()
    held = sink.publish(simple_values("99.500"))
    assert held.sent and sorted(held.held_back) == ["1.8.0", "import_kwh"]
    assert sink.publish(simple_values("101.000")).held_back == ()
    assert sink.flush(10)
    observer.wait_for(lambda seen: len([m for m in seen if m.topic == topics.state]) == 3,
                      what="three states")  # fmt: skip
    states = [json.loads(m.payload) for m in observer.on(topics.state)]
    assert [s["import_kwh"] for s in states] == [100, 100, 101]
    assert [s["held_back"] for s in states][1] == ["import_kwh", "1.8.0"]
    assert "1.8.0" not in states[1]["registers"]
    time.sleep(0.2)
    assert [m.text for m in observer.on(topics.register("1.8.0"))] == ["100", "101"]
    assert len([r for r in caplog.records if "fell from 100 to 99.5" in r.getMessage()]) == 2


def test_another_meter_replaces_the_first(broker, observers, sinks):
    observer = observers(broker)
    sink = sinks(broker)
    first, second = ME162, MeterIdentity("ISK", "ME162-0033", "99999999")
    assert sink.publish(me162_values(identity=first)).sent
    observer.wait_for_message("iskra-me162/63355730/availability", accept=lambda m: m.text ==
                              "online")  # fmt: skip
    mark = time.monotonic()
    assert sink.publish(me162_values(identity=second)).sent
    observer.wait_for_message("iskra-me162/63355730/availability", after=mark,
                              accept=lambda m: m.text == "offline")  # fmt: skip
    observer.wait_for_message("iskra-me162/99999999/availability", accept=lambda m: m.text ==
                              "online")  # fmt: skip
    observer.wait_for_message("homeassistant/sensor/iskra_me162_99999999_import/config")
    state = state_of(observer, "iskra-me162/99999999/state")
    assert state["meter"]["id"] == "99999999"


@pytest.fixture
def tls_broker(tmp_path, paho_installed) -> Iterator[Broker]:
    files = make_tls_files(tmp_path / "tls")
    with Broker(tmp_path / "tls-broker", tls=files) as running:
        yield running


def test_tls_with_the_ca_file(tls_broker, observers, sinks):
    assert tls_broker.tls is not None
    observer = observers(tls_broker)
    sink = sinks(tls_broker, tls=True, ca_file=str(tls_broker.tls.ca_cert))
    assert sink.publish(me162_values()).sent
    state = state_of(observer, "iskra-me162/63355730/state")
    assert state["import_kwh"] == 7408.252


def test_tls_without_the_ca_is_not_trusted(tls_broker, sinks):
    sink = sinks(tls_broker, tls=True)  # the system's CAs do not know our test CA
    with pytest.raises(SinkError, match=r"TLS certificate .* is not trusted .*mqtt_ca_file"):
        sink.publish(me162_values())


def test_tls_certificate_for_another_name_is_explained(tmp_path, paho_installed, sinks):
    files = make_tls_files(tmp_path / "tls", names="DNS:mqtt.example.org")
    with Broker(tmp_path / "tls-broker", tls=files) as running:
        sink = sinks(running, tls=True, ca_file=str(files.ca_cert))
        with pytest.raises(SinkError, match="is for another host name"):
            sink.publish(me162_values())


def test_plain_mqtt_to_a_tls_port_explains_itself(tls_broker, sinks):
    sink = sinks(tls_broker)
    with pytest.raises(SinkError, match="mqtt_tls"):
        sink.publish(me162_values())


def test_tls_to_a_plain_port_explains_itself(broker, tmp_path, sinks):
    files = make_tls_files(tmp_path / "tls-client")
    sink = sinks(broker, tls=True, ca_file=str(files.ca_cert))
    with pytest.raises(SinkError, match="TLS"):
        sink.publish(me162_values())
