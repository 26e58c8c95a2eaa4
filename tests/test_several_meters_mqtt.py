"""Several meters on one broker (issue 14): identities come from the meter, not from the config.

End to end: a real Mosquitto, two real daemons with the same (default) prefixes, two simulated
ME162s with different serial numbers. We have no Home Assistant here, so the test checks what
Home Assistant would do with what it finds on the broker: a client that connects afterwards (as
Home Assistant after its restart) gets the retained discovery configs, and from those and the
state and availability topics we check that there are two devices with all their sensors, that
no topic of one meter is ever written by the other, and that stopping one daemon makes only its
own meter's sensors unavailable.

The pure rules (the ids of a meter without a serial number, device_name) are tested below too.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.config import Config, config_from_text
from iskra_me162.errors import ConfigError
from iskra_me162.readout import MeterIdentity
from iskra_me162.simulator.model import MeterConfig
from iskra_me162.simulator.pty_meter import PtyMeter
from iskra_me162.sinks import mqtt_messages as messages
from tests.broker import Broker, Observer, Received
from tests.daemonproc import DaemonProcess, write_config

DISCOVERY = "homeassistant"
PREFIX = "iskra-me162"
METERS = {
    # name: (serial, import power in W, start counters per tariff in Wh, device_name)
    "grid": ("61234567", 1800, (7_408_252, 0), "Grid meter"),
    "heatpump": ("70000002", 900, (1_200_000, 0), "Heat pump meter"),
}


def _configs(messages_seen: list[Received]) -> dict[str, dict]:
    """The latest non-empty discovery config per topic."""
    latest: dict[str, dict] = {}
    for message in messages_seen:
        if message.topic.startswith(f"{DISCOVERY}/") and message.topic.endswith("/config"):
            if message.payload:
                latest[message.topic] = json.loads(message.payload)
            else:
                latest.pop(message.topic, None)
    return latest


def _devices(configs: dict[str, dict]) -> dict[str, list[dict]]:
    """Home Assistant's view: device identifier -> its entities' configs."""
    devices: dict[str, list[dict]] = defaultdict(list)
    for config in configs.values():
        (identifier,) = config["device"]["identifiers"]
        devices[identifier].append(config)
    return devices


def _with_power(expected: int):
    """A wait predicate: ``expected`` devices, each with a power sensor."""

    def ready(seen: list[Received]) -> dict[str, list[dict]] | None:
        devices = _devices(_configs(seen))
        if len(devices) == expected and all(
            any(config["device_class"] == "power" for config in entities)
            for entities in devices.values()
        ):
            return devices
        return None

    return ready


def _latest(seen: list[Received], topic: str) -> Received | None:
    found = [message for message in seen if message.topic == topic]
    return found[-1] if found else None


def test_two_daemons_two_meters_one_broker_default_prefixes(tmp_path: Path):
    started = time.monotonic()
    simulated: dict[str, PtyMeter] = {}
    daemons: dict[str, DaemonProcess] = {}
    with Broker(tmp_path / "broker") as broker:
        everything = Observer(broker, ("#",))
        try:
            for name, (serial, watts, counters, device_name) in METERS.items():
                meter = PtyMeter(
                    link=str(tmp_path / f"tty-{name}"),
                    config=MeterConfig(
                        serial=serial, import_w=watts, import_wh=counters, speedup=8.0
                    ),
                )
                meter.start()
                simulated[name] = meter
                config = write_config(
                    tmp_path / f"{name}.conf",
                    port=str(meter.link),
                    update_interval=2,
                    print_debug=1,
                    state_file=str(tmp_path / f"{name}.state"),
                    device_name=device_name,
                    mqtt_host=broker.host,
                    mqtt_port=broker.port,
                    # mqtt_topic_prefix and mqtt_discovery_prefix: the defaults
                )
                daemons[name] = DaemonProcess(config)
            for name, daemon in daemons.items():
                daemon.wait_for_log(rf"reading '{METERS[name][3]}' on ", timeout=20)
            # Power from the counters needs a second readout: then every sensor is there.
            everything.wait_for(_with_power(2), timeout=30, what="two devices with power")

            # --- what Home Assistant finds when it connects now: the retained messages ------
            home_assistant = Observer(broker, (f"{DISCOVERY}/#", f"{PREFIX}/#"))
            try:
                devices = home_assistant.wait_for(
                    _with_power(2), timeout=10, what="retained discovery configs"
                )
                assert isinstance(devices, dict)
                retained = [m for m in home_assistant.messages if m.retain]
                configs = _configs(retained)
            finally:
                home_assistant.close()
            assert len(devices) == 2
            unique_ids = [config["unique_id"] for config in configs.values()]
            assert len(unique_ids) == len(set(unique_ids)), unique_ids
            for topic, config in configs.items():
                assert topic == f"{DISCOVERY}/sensor/{config['unique_id']}/config"
            by_serial: dict[str, list[dict]] = {}
            for identifier, entities in devices.items():
                (device,) = {json.dumps(config["device"], sort_keys=True) for config in entities}
                serial = json.loads(device)["serial_number"]
                assert identifier == f"iskra_me162_{serial}"
                by_serial[serial] = entities
            assert sorted(by_serial) == sorted(serial for serial, *_ in METERS.values())

            seen = list(everything.messages)
            keys_per_meter = []
            for serial, _watts, _counters, device_name in METERS.values():
                entities = by_serial[serial]
                base = f"{PREFIX}/{serial}"
                keys = sorted(config["unique_id"].rsplit(f"{serial}_", 1)[1] for config in entities)
                keys_per_meter.append(keys)
                assert {"import", "export", "power"} <= set(keys), keys
                for config in entities:
                    assert config["device"]["name"] == device_name
                    # every entity's topics are its own meter's
                    assert config["state_topic"] == f"{base}/state"
                    assert config["availability_topic"] == f"{base}/availability"
                    assert config["unique_id"].startswith(f"iskra_me162_{serial}_")
                # The value Home Assistant would show, from the state topic's latest message.
                state = _latest(seen, f"{base}/state")
                assert state is not None
                document = json.loads(state.payload)
                assert document["meter"]["serial"] == serial
                for config in entities:
                    field = config["value_template"].removeprefix("{{ value_json.")
                    assert field.removesuffix(" }}") in document, (field, document)
                assert document["power_w"] is not None
                start_kwh = Decimal(sum(_counters)) / 1000
                assert start_kwh <= Decimal(str(document["import_kwh"])) < start_kwh + 1
                availability = _latest(seen, f"{base}/availability")
                assert availability is not None and availability.text == "online"
            assert keys_per_meter[0] == keys_per_meter[1]  # both have all their sensors

            # No topic is ever written for the other meter: one device per discovery topic,
            # one meter per state topic, each register topic under its own meter.
            owners: dict[str, set[str]] = defaultdict(set)
            for message in seen:
                if message.topic.endswith("/config") and message.payload:
                    owners[message.topic].add(
                        json.loads(message.payload)["device"]["identifiers"][0]
                    )
                elif message.topic.endswith("/state"):
                    owners[message.topic].add(json.loads(message.payload)["meter"]["serial"])
            assert owners and all(len(who) == 1 for who in owners.values()), owners
            serials = [serial for serial, *_ in METERS.values()]
            for message in seen:
                if message.topic.startswith(f"{PREFIX}/"):
                    assert message.topic.split("/")[1] in serials, message.topic

            # --- stopping one: only its sensors become unavailable ---------------------------
            grid, heatpump = (METERS[name][0] for name in ("grid", "heatpump"))
            stopped_at = time.monotonic()
            status, took = daemons["grid"].stop()
            assert status == 0, daemons["grid"].output
            assert took < 5, took
            gone = everything.wait_for_message(
                f"{PREFIX}/{grid}/availability", after=stopped_at, timeout=10
            )
            assert gone.text == "offline"
            # The other one goes on: a new state after the stop, and still online.
            everything.wait_for_message(f"{PREFIX}/{heatpump}/state", after=stopped_at, timeout=10)
            late = Observer(broker, (f"{PREFIX}/+/availability",))
            try:
                late.wait_for(lambda m: len({x.topic for x in m}) == 2, timeout=10)
                retained_state = {m.topic: m.text for m in late.messages if m.retain}
            finally:
                late.close()
            assert retained_state == {
                f"{PREFIX}/{grid}/availability": "offline",
                f"{PREFIX}/{heatpump}/availability": "online",
            }
            after_stop = [m for m in everything.messages if m.at >= stopped_at]
            assert not any(
                m.topic.startswith(f"{PREFIX}/{heatpump}/") and m.text == "offline"
                for m in after_stop
            )
            assert not any(
                m.topic.startswith(f"{PREFIX}/{grid}/") and not m.topic.endswith("/availability")
                for m in after_stop
                if m.at > gone.at
            )
            status, _took = daemons["heatpump"].stop()
            assert status == 0, daemons["heatpump"].output
        finally:
            everything.close()
            for daemon in daemons.values():
                daemon.close()
            for meter in simulated.values():
                meter.stop()
    assert time.monotonic() - started < 60


# --- the rules, without a broker -----------------------------------------------------------------


def _ids(identity: MeterIdentity, prefix: str = PREFIX, device_name: str = "") -> tuple:
    topics = messages.Topics(prefix, identity.meter_id, DISCOVERY)
    configs = messages.discovery_configs(
        identity, [messages.POWER], topics, "1.0", 120, device_name
    )
    ((topic, payload),) = configs.items()
    config = json.loads(payload)
    return topic, config["unique_id"], config["device"], config["state_topic"]


def test_the_default_topic_prefix_is_the_configs():
    assert Config.mqtt_topic_prefix == messages.DEFAULT_TOPIC_PREFIX


def test_meters_with_serial_numbers_keep_their_ids_whatever_the_prefix():
    meter = MeterIdentity("ISK", "ME162-0033", "61234567")
    for prefix in (PREFIX, "home/flat1"):
        topic, unique_id, device, _state = _ids(meter, prefix)
        assert unique_id == "iskra_me162_61234567_power"
        assert device["identifiers"] == ["iskra_me162_61234567"]
        assert topic == f"{DISCOVERY}/sensor/{unique_id}/config"


def test_two_identical_meters_without_serial_collide_only_with_the_same_prefix():
    meter = MeterIdentity("ISK", "ME162-0033", "")
    default = _ids(meter)
    assert default[1] == "iskra_me162_ISK-ME162-0033_power"  # as before: ids of set-ups stay
    flat1, flat2 = _ids(meter, "iskra-me162/flat1"), _ids(meter, "iskra-me162/flat2")
    assert flat1[1] == "iskra_me162_iskra-me162_flat1_ISK-ME162-0033_power"
    assert flat1[2]["identifiers"] == ["iskra_me162_iskra-me162_flat1_ISK-ME162-0033"]
    for a, b in ((flat1, flat2), (flat1, default)):
        assert all(x != y for x, y in zip(a, b, strict=True))  # topic, ids, device, state


def test_sml_meters_are_told_apart_by_their_server_ids():
    one = MeterIdentity("ISK", "", "0a0149534b0004812d55")
    two = MeterIdentity("ISK", "", "0a0149534b0004812d56")
    a, b = _ids(one), _ids(two)
    assert all(x != y for x, y in zip(a, b, strict=True))
    assert a[2]["name"] == "Iskraemeco 1ISK0075574613"


def test_device_name_names_the_device_and_nothing_else():
    meter = MeterIdentity("ISK", "ME162-0033", "61234567")
    plain = _ids(meter)
    named = _ids(meter, device_name="Heat pump meter/#+ äöü")
    assert plain[2]["name"] == "Iskraemeco ME162-0033 61234567"
    assert named[2]["name"] == "Heat pump meter/#+ äöü"
    assert named[:2] == plain[:2] and named[3] == plain[3]  # topics and ids unchanged
    assert {**named[2], "name": ""} == {**plain[2], "name": ""}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"Heat\\tpump"', "control character"),
        ('"Heat\\npump"', "control character"),
        ('" Heat pump"', "white space"),
        ('"' + "x" * 101 + '"', "longer than 100"),
    ],
)
def test_device_name_is_checked(value: str, problem: str):
    with pytest.raises(ConfigError, match=problem):
        config_from_text(f"device_name = {value}\n", "test.conf")


def test_device_name_is_read():
    config = config_from_text('device_name = "Heat pump meter"\n', "test.conf")
    assert config.device_name == "Heat pump meter"
    assert Config().device_name == ""


def test_device_name_heads_the_status_page_escaped():
    from iskra_me162.sinks.http import PageContext
    from iskra_me162.sinks.status_page import render

    _type, body = render(PageContext(None, None, True, None, device_name="Heat <pump> & co"))
    page = body.decode()
    assert "<h1>Heat &lt;pump&gt; &amp; co</h1>" in page
    assert "<title>Heat &lt;pump&gt; &amp; co</title>" in page
    _type, body = render(PageContext(None, None, True, None))
    assert "<h1>Electricity meter</h1>" in body.decode()
