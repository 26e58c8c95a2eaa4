"""What the MQTT sink publishes for a readout: topics, payloads and Home Assistant discovery.

Pure functions and small value types, no network and no paho: the tests check every byte of
what would be sent without a broker, and the sink (:mod:`iskra_me162.sinks.mqtt`) only moves
these messages.

Topics, with ``<prefix>`` = ``mqtt_topic_prefix`` and ``<meter id>`` =
:attr:`~iskra_me162.readout.MeterIdentity.meter_id`:

``<prefix>/<meter id>/state``
    one JSON object per reading (see :func:`render_state`).
``<prefix>/<meter id>/<register>``
    one plain value per register, e.g. ``iskra-me162/63355730/1.8.0`` = ``7408.2524``
    (see :func:`register_key` for the register names and :class:`Register` for the units).
``<prefix>/<meter id>/availability``
    ``online`` / ``offline``, retained; ``offline`` is also the connection's last will.
``<discovery prefix>/sensor/<unique id>/config``
    Home Assistant's MQTT discovery, one retained config per entity (see
    :func:`discovery_configs`).

Numbers are written as exact decimals (``7408.2524``, never ``7408.252399999999``).

Identities (docs/mqtt.rst, "Several meters"): topics, unique ids and the Home Assistant
device identifier all come from the meter, never from the configuration: its serial number (IEC
62056-21: 96.1.0, 0.0.0 or 96.1.255) or SML server id, so that meters on one broker never collide
with the default prefixes. A meter that sends neither is named after its make and model
(``ISK-ME162-0033``): two such meters need their own ``mqtt_topic_prefix`` each, and then the
prefix is part of their ids too (:func:`object_id`). ``device_name`` only names the device in
Home Assistant; being free text it appears in payloads, never in a topic.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from iskra_me162.derive.values import Values
from iskra_me162.errors import ConfigError
from iskra_me162.jsontext import iso_utc, number_text, to_json
from iskra_me162.obis import CURRENT_BILLING_PERIOD, Reading
from iskra_me162.readout import MeterIdentity, Readout

log = logging.getLogger(__name__)

AVAILABLE = "online"
NOT_AVAILABLE = "offline"
# Home Assistant announces itself here ("online") after it (re)started; its default, which
# stays the same when the discovery prefix is changed in Home Assistant.
HA_BIRTH_TOPIC = "homeassistant/status"
UNIQUE_ID_PREFIX = "iskra_me162"
DEFAULT_TOPIC_PREFIX = "iskra-me162"  # Config.mqtt_topic_prefix's default (a test compares)
MAX_DEVICE_NAME = 100  # characters of device_name
ORIGIN_NAME = "iskra-me162"

_TARIFFS = range(1, 10)  # x.8.1 .. x.8.9
_KWH_PER_WH = Decimal("0.001")
_ENERGY_TO_KWH = {"wh": Decimal("0.001"), "kwh": Decimal(1), "mwh": Decimal(1000)}
_POWER_TO_W = {"w": Decimal(1), "kw": Decimal(1000), "mw": Decimal(1_000_000)}
# Value group C of active power (import, export, |sum|, signed sum, per phase): a power
# register without a unit is in kW on these, as readout.py assumes for 1.7.0/2.7.0.
_ACTIVE_POWER_C = frozenset({1, 2, 15, 16, 21, 22, 36, 41, 42, 56, 61, 62, 76})
_PHYSICAL_C = range(1, 96)  # 0 and 96..99 are abstract objects (serial numbers, status)
_MANUFACTURERS = {
    # FLAG ids (DLMS UA) of meters that users read with optical heads; others stay as sent.
    "ACE": "Actaris",
    "APA": "Apator",
    "DZG": "DZG Metering",
    "EBZ": "eBZ",
    "EFR": "EFR",
    "ELS": "Elster",
    "EMH": "EMH metering",
    "ESY": "EasyMeter",
    "HAG": "Hager",
    "HLY": "Holley",
    "ISK": "Iskraemeco",
    "ITF": "Itron",
    "ITR": "Itron",
    "KAM": "Kamstrup",
    "KFM": "Kaifa",
    "LGZ": "Landis+Gyr",
    "ZPA": "ZPA Smart Energy",
}
_TOPIC_FORBIDDEN = re.compile(r"[+#\x00]")
_UNSAFE_ID_CHARACTER = re.compile(r"[^A-Za-z0-9_-]")
_CURRENT_SUFFIX = re.compile(r"[*&]255$")
_DEFAULT_MEDIUM = re.compile(r"^[01]-0:")


# --- configuration checks ----------------------------------------------------------------------


def check_topic_prefix(value: str, key: str) -> str:
    """``value`` if it can start MQTT topics we publish to, else ConfigError naming ``key``."""
    if not value:
        raise ConfigError(f"{key} is empty; write e.g. iskra-me162")
    if value != value.strip():
        raise ConfigError(f"{key} {value!r} starts or ends with white space")
    if _TOPIC_FORBIDDEN.search(value):
        raise ConfigError(
            f"{key} {value!r} contains '+', '#' or NUL, which MQTT topics we publish cannot have"
        )
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ConfigError(f"{key} {value!r} has an empty topic level (a '/' too many)")
    if value.startswith("$"):
        raise ConfigError(f"{key} {value!r} starts with '$', which brokers reserve")
    if len(value.encode("utf-8", "surrogatepass")) > 1000:
        raise ConfigError(f"{key} is longer than 1000 bytes")
    return value


def check_host(host: str) -> str:
    """``host`` if it can be ``mqtt_host`` (a host name or IP address), else ConfigError."""
    example = "write the broker's host name or IP address, e.g. 192.168.1.10 or localhost"
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"mqtt_host is empty; {example}")
    if "@" in host:  # checked first: the messages below repeat the host
        raise ConfigError(
            "mqtt_host must not contain a user name or password; set mqtt_username and "
            "mqtt_password instead"
        )
    if host != host.strip() or any(char.isspace() for char in host):
        raise ConfigError(f"mqtt_host {host.strip()!r} contains white space; {example}")
    if "://" in host or "/" in host:
        raise ConfigError(
            f"mqtt_host must be a host name, not a URL; {example} (the port is mqtt_port, TLS "
            "is mqtt_tls)"
        )
    if host.startswith("["):
        raise ConfigError("mqtt_host: write an IPv6 address without brackets, e.g. ::1")
    from iskra_me162.sinks import netcheck  # the one host rule of every sink

    try:
        return netcheck.check_host(host)
    except ValueError as error:
        raise ConfigError(f"mqtt_host {error}; {example}") from None


# --- registers -------------------------------------------------------------------------------


def register_key(reading: Reading) -> str:
    """The topic name of a register: the OBIS code as the meter wrote it, shortened.

    ``1-0:`` and ``0-0:`` (electricity / abstract, channel 0) and ``*255`` (the current value)
    are left out, so ``1-0:1.8.0*255`` (SML, most IEC meters) and ``1.8.0`` (ME162) both
    become ``1.8.0``, and ``0-0:C.1.0*255`` becomes ``C.1.0``. Historic values keep their
    billing period: ``1-0:1.8.0*07`` becomes ``1.8.0*07``.
    """
    text = reading.code.text or str(reading.code)
    text = _DEFAULT_MEDIUM.sub("", text)
    text = _CURRENT_SUFFIX.sub("", text)
    return text.replace("&", "*")


@dataclass(frozen=True)
class Register:
    """One register as published: energy in kWh, power in W, other numbers as the meter sent
    them (``unit`` as sent, None without one); text registers (serial numbers, status words)
    have ``value`` None and their text in ``text``.

    ``is_total`` marks a current energy counter, which is never published lower than before.
    """

    key: str
    obis: str
    value: Decimal | None
    unit: str | None
    text: str | None
    is_total: bool


def normalize(reading: Reading) -> Register:
    code = reading.code
    obis = code.text or str(code)
    key = register_key(reading)
    if reading.value is None:
        return Register(key, obis, None, None, reading.raw.strip(), False)
    unit = (reading.unit or "").lower()
    unitless = unit == ""
    current = code.f in (None, CURRENT_BILLING_PERIOD) and code.a in (None, 1)
    if unit in _ENERGY_TO_KWH or (unitless and code.d == 8 and code.c in _PHYSICAL_C):
        # Without a unit an energy register is in kWh (the convention of readout.py).
        kwh = reading.value * _ENERGY_TO_KWH.get(unit, Decimal(1))
        return Register(key, obis, kwh, "kWh", None, current)
    if unit in _POWER_TO_W or (unitless and code.d == 7 and code.c in _ACTIVE_POWER_C):
        watts = reading.value * _POWER_TO_W.get(unit, Decimal(1000))
        return Register(key, obis, watts, "W", None, False)
    return Register(key, obis, reading.value, reading.unit or None, None, False)


def registers_of(readout: Readout) -> list[Register]:
    """Every register of the readout, normalized; the first of two with the same key wins."""
    seen: dict[str, Register] = {}
    for reading in readout.readings:
        register = normalize(reading)
        if register.key in seen:
            log.debug(
                "register %s repeats %s; only the first is published",
                register.obis,
                seen[register.key].obis,
            )
            continue
        seen[register.key] = register
    return list(seen.values())


# --- Home Assistant entities -------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """A Home Assistant sensor fed from the state JSON's ``field``."""

    key: str  # unique id suffix: import, import_t1, export_t2, power
    name: str
    field: str  # key in the state JSON: import_kwh, import_t1_kwh, power_w
    unit: str
    device_class: str
    state_class: str

    @property
    def is_total(self) -> bool:
        return self.state_class == "total_increasing"


def _energy_entity(direction: str, tariff: int | None) -> Entity:
    key = direction if tariff is None else f"{direction}_t{tariff}"
    name = direction.capitalize() + ("" if tariff is None else f" tariff {tariff}")
    return Entity(key, name, f"{key}_kwh", "kWh", "energy", "total_increasing")


POWER = Entity("power", "Power", "power_w", "W", "power", "measurement")


def entity_values(values: Values) -> dict[Entity, Decimal]:
    """The Home Assistant values of a readout, in kWh and W; absent entities left out.

    Per direction: the total and, when the meter really counts per tariff
    (:attr:`~iskra_me162.derive.values.Energy.has_tariffs`), each tariff register it sends;
    a meter that repeats its total in tariff 1 gets no tariff sensors, so that nobody adds the
    same energy twice to Home Assistant's Energy dashboard. Power is the net power (positive
    when importing), from the meter's registers or its counters.
    """
    found: dict[Entity, Decimal] = {}
    for direction, energy in (("import", values.import_energy), ("export", values.export_energy)):
        if energy is None:
            continue
        found[_energy_entity(direction, None)] = energy.total_wh * _KWH_PER_WH
        if energy.has_tariffs:
            for tariff, wh in energy.tariffs_wh:
                found[_energy_entity(direction, tariff)] = wh * _KWH_PER_WH
    if values.net_power is not None:
        found[POWER] = values.net_power.watts
    return found


# --- never a lower total -----------------------------------------------------------------------


class TotalsGuard:
    """The last published value of every total of one meter, to never publish a lower one.

    Home Assistant books a lower ``total_increasing`` value as a new meter cycle, so one bad
    value would double the energy of the day. A lower (or negative) total is held back and
    logged once; the previous value stays published until the meter exceeds it again.
    In memory only: see docs/mqtt.rst for what a restart means.
    """

    def __init__(self, meter_id: str) -> None:
        self.meter_id = meter_id
        self._last: dict[str, Decimal] = {}
        self._holding: set[str] = set()

    def last(self, name: str) -> Decimal | None:
        return self._last.get(name)

    def allows(self, name: str, value: Decimal) -> bool:
        """Whether ``value`` may be published for the total ``name`` (logs a hold-back)."""
        last = self._last.get(name)
        if value >= 0 and (last is None or value >= last):
            if name in self._holding:
                self._holding.discard(name)
                log.info(
                    "meter %s: %s is back at %s, published again",
                    self.meter_id,
                    name,
                    number_text(value),
                )
            return True
        if name not in self._holding:
            self._holding.add(name)
            before = "nothing" if last is None else number_text(last)
            log.warning(
                "meter %s: %s fell from %s to %s; held back (Home Assistant would count a lower "
                "total as a new meter), the last value stays published",
                self.meter_id,
                name,
                before,
                number_text(value),
            )
        else:
            log.debug("meter %s: %s still held back at %s", self.meter_id, name, number_text(value))
        return False

    def record(self, totals: Iterable[tuple[str, Decimal]]) -> None:
        """Remember totals that were handed to the broker connection."""
        for name, value in totals:
            last = self._last.get(name)
            if last is None or value > last:
                self._last[name] = value


# --- messages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One MQTT message; ``totals`` are the (name, value) totals it publishes, for the guard."""

    topic: str
    payload: bytes
    retain: bool
    totals: tuple[tuple[str, Decimal], ...] = ()


@dataclass(frozen=True)
class Topics:
    """The topics of one meter."""

    prefix: str
    meter_id: str
    discovery_prefix: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.meter_id}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    def register(self, key: str) -> str:
        return f"{self.base}/{key}"

    def discovery(self, unique_id: str) -> str:
        return f"{self.discovery_prefix}/sensor/{unique_id}/config"


@dataclass
class StateRender:
    """The messages for one readout and what they held back."""

    messages: list[Message] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)


def render_state(
    values: Values,
    topics: Topics,
    guard: TotalsGuard,
    announced: Iterable[Entity],
    retain: bool,
) -> StateRender:
    """The state JSON and the plain register topics for ``readout``.

    The JSON holds the meter, the time of the reading (UTC), one field per Home Assistant
    entity (``import_kwh``, ``import_t1_kwh``, ..., ``power_w``) and ``registers``: every
    register by its key with ``obis`` (as the meter wrote it) and either ``value`` and ``unit``
    or ``text``. ``held_back`` lists totals not published this time. An entity announced
    earlier but missing from this readout keeps its last total, or null for power, so that
    Home Assistant's templates always find their field.
    """
    result = StateRender()
    identity = values.identity
    document: dict[str, object] = {
        "time": iso_utc(values.wall_time),
        "meter": {
            "id": identity.meter_id,
            "manufacturer": identity.manufacturer,
            "model": identity.model,
            "serial": identity.serial,
        },
    }
    state_totals: list[tuple[str, Decimal]] = []
    found = entity_values(values)
    for entity in _ordered({*found, *announced}):
        value = found.get(entity)
        if entity.is_total:
            if value is not None and guard.allows(entity.field, value):
                state_totals.append((entity.field, value))
            else:
                if value is not None:
                    result.held_back.append(entity.field)
                value = guard.last(entity.field)
                if value is None:
                    continue
        document[entity.field] = value
    registers: dict[str, object] = {}
    for register in registers_of(values.readout):
        totals: tuple[tuple[str, Decimal], ...] = ()
        if register.value is None:
            registers[register.key] = {"obis": register.obis, "text": register.text}
            payload = register.text or ""
        else:
            if register.is_total:
                if not guard.allows(register.key, register.value):
                    result.held_back.append(register.key)
                    continue
                totals = ((register.key, register.value),)
                state_totals.extend(totals)
            registers[register.key] = {
                "obis": register.obis,
                "value": register.value,
                "unit": register.unit,
            }
            payload = number_text(register.value)
        result.messages.append(
            Message(topics.register(register.key), payload.encode(), retain, totals)
        )
    document["registers"] = registers
    document["held_back"] = result.held_back
    state = Message(topics.state, to_json(document).encode(), retain, tuple(state_totals))
    result.messages.insert(0, state)
    return result


def discovery_configs(
    identity: MeterIdentity,
    entities: Iterable[Entity],
    topics: Topics,
    sw_version: str,
    expire_after: int,
    device_name: str = "",
) -> dict[str, bytes]:
    """Home Assistant discovery configs (topic -> JSON) for the entities of one meter.

    Fields are those of Home Assistant's MQTT sensor: name, unique_id, state_topic,
    value_template, unit_of_measurement, device_class, state_class, expire_after,
    availability_topic, payload_available, payload_not_available, qos, device (identifiers,
    manufacturer, model, name, serial_number) and origin. Published retained, so Home Assistant
    finds them after its own restart too.

    ``expire_after`` is the daemon's one freshness rule (the age at which the HTTP endpoint
    answers 503 too): when no reading arrives for that many seconds, Home Assistant shows the
    sensors as unavailable instead of the last values, and the next reading brings them back.

    ``device_name`` (the key of that name) names the device instead of make, model and number.
    """
    meter_object_id = object_id(identity, topics.prefix)
    device = device_info(identity, meter_object_id, device_name)
    configs: dict[str, bytes] = {}
    for entity in _ordered(entities):
        unique_id = f"{UNIQUE_ID_PREFIX}_{meter_object_id}_{entity.key}"
        config: dict[str, object] = {
            "name": entity.name,
            "unique_id": unique_id,
            "state_topic": topics.state,
            "value_template": "{{ value_json." + entity.field + " }}",
            "unit_of_measurement": entity.unit,
            "device_class": entity.device_class,
            "state_class": entity.state_class,
            "expire_after": expire_after,
            "availability_topic": topics.availability,
            "payload_available": AVAILABLE,
            "payload_not_available": NOT_AVAILABLE,
            "qos": 1,
            "device": device,
            "origin": {"name": ORIGIN_NAME, "sw_version": sw_version},
        }
        configs[topics.discovery(unique_id)] = to_json(config).encode()
    return configs


def object_id(identity: MeterIdentity, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The meter's part of its unique ids and device identifier (``[A-Za-z0-9_-]``).

    Its :attr:`~iskra_me162.readout.MeterIdentity.meter_id`: the serial number or SML server
    id. A meter without either is named after its make and model, which two identical meters
    share; they are told apart by their topic prefixes, so then a prefix other than the
    default is part of the id too (the default is not: ids of existing set-ups stay).
    """
    if identity.serial or topic_prefix == DEFAULT_TOPIC_PREFIX:
        return safe_id(identity.meter_id)
    return safe_id(f"{topic_prefix}_{identity.meter_id}")


def device_info(
    identity: MeterIdentity, meter_object_id: str | None = None, name: str = ""
) -> dict[str, object]:
    """Home Assistant's device of a meter: one per meter id (the serial when it sends one),
    named ``name`` (device_name) or else after the manufacturer and the number printed on
    the meter."""
    flag = identity.manufacturer.strip()
    manufacturer = _MANUFACTURERS.get(flag.upper(), flag)
    model = identity.model.strip()
    label = " ".join(part for part in (manufacturer or "Electricity meter", model) if part)
    device: dict[str, object] = {
        "identifiers": [f"{UNIQUE_ID_PREFIX}_{meter_object_id or object_id(identity)}"],
        "name": name.strip() or f"{label} {identity.number}",
    }
    if manufacturer:
        device["manufacturer"] = manufacturer
    if model:
        device["model"] = model
    if identity.serial:
        device["serial_number"] = identity.number
    return device


def check_device_name(value: str) -> str | None:
    """An error message when ``value`` cannot be ``device_name``, else None."""
    if value != value.strip():
        return "device_name starts or ends with white space"
    if any(not char.isprintable() for char in value):
        return "device_name contains a control character (a tab, a line break, ...)"
    if len(value) > MAX_DEVICE_NAME:
        return f"device_name is longer than {MAX_DEVICE_NAME} characters"
    return None


def safe_id(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``, as Home
    Assistant requires in a discovery topic's object id."""
    return _UNSAFE_ID_CHARACTER.sub("_", text) or "meter"


def _ordered(entities: Iterable[Entity]) -> list[Entity]:
    """Import before export, totals before tariffs, power last: stable JSON for stable payloads."""

    def rank(entity: Entity) -> tuple[int, str]:
        for group, prefix in enumerate(("import", "export")):
            if entity.key.startswith(prefix):
                return group, entity.key
        return 2, entity.key

    return sorted(set(entities), key=rank)
