"""MQTT sink: the readings on an MQTT broker, and Home Assistant discovery so that the meter
appears in Home Assistant by itself.

What is published where is in :mod:`iskra_me162.sinks.mqtt_messages` (and docs/mqtt.rst);
this module keeps the connection. The rules it follows:

* The meter loop never waits for the broker. paho's network thread connects, reconnects with
  back-off (``reconnect_min_delay`` doubling up to ``reconnect_max_delay``) and sends;
  :meth:`MqttSink.publish` only hands messages to it. The one exception is the very first
  reading, which waits up to ``first_connect_wait`` seconds for the first connection attempt,
  so that a wrong password or host is reported in the first cycle instead of the second.
* Nothing piles up while the broker is away: messages are handed to paho only while
  connected, and the sink keeps just the latest readout. On every (re)connection it publishes
  ``online``, the discovery configs and that latest state. paho's own queue of unacknowledged
  QoS 1 messages is bounded (:data:`MAX_QUEUED`).
* Everything is published with QoS 1. Discovery configs and availability are retained;
  states are retained when ``retain`` is on.
* The connection is opened on the first reading, because the last will (``offline`` on
  ``<prefix>/<meter id>/availability``) needs the meter id. If another meter shows up, the old
  one is marked offline and the connection is rebuilt with the new will.
* A total is never published lower than before for the same meter
  (:class:`~iskra_me162.sinks.mqtt_messages.TotalsGuard`).
* Failures are a :class:`~iskra_me162.errors.SinkError` with one stable line per cause; the
  password never appears in a message or log line.

Threads: the meter loop calls publish() and close(); paho's thread calls the ``_on_*``
handlers. ``_send_lock`` serialises handing messages to paho (both threads publish: the loop
its readings, the network thread the backlog on connect and discovery on Home Assistant's
birth); ``_state_lock`` guards the connection flags and is never held while calling paho, so
paho's own locks and ours cannot deadlock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from iskra_me162.config import Config
from iskra_me162.derive.values import Values
from iskra_me162.errors import ConfigError, SinkError
from iskra_me162.readout import MeterIdentity
from iskra_me162.sinks import mqtt_client
from iskra_me162.sinks.mqtt_messages import (
    AVAILABLE,
    HA_BIRTH_TOPIC,
    NOT_AVAILABLE,
    Entity,
    Message,
    Topics,
    TotalsGuard,
    check_device_name,
    check_host,
    check_topic_prefix,
    discovery_configs,
    entity_values,
    render_state,
)

log = logging.getLogger(__name__)

QOS = 1
MAX_QUEUED = 5000  # paho's unacknowledged QoS 1 messages; a reading of a big IEC meter is ~350
CLOSE_WAIT = 2.0  # seconds close() waits for the broker to acknowledge "offline"
MAX_REMEMBERED_METERS = 8  # TotalsGuards kept for meters that were replaced


@dataclass(frozen=True)
class Published:
    """What :meth:`MqttSink.publish` did.

    ``sent``: the reading was handed to the broker connection (False: not connected yet; the
    latest reading goes out on connection). ``held_back``: totals not published because
    they were lower than before (state field names such as ``import_kwh`` and register keys
    such as ``1.8.0``).
    """

    sent: bool
    held_back: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Settings:
    host: str
    port: int
    username: str
    password: str
    tls: bool
    topic_prefix: str
    discovery_prefix: str
    retain: bool
    expire_after: int
    client_id: str
    keepalive: int
    reconnect_min_delay: float
    reconnect_max_delay: float
    first_connect_wait: float
    sw_version: str
    device_name: str

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:  # never the password
        return f"_Settings({self.where}, username={self.username!r}, tls={self.tls})"


class MqttSink:
    """Publishes readouts to an MQTT broker, with Home Assistant discovery.

    Construction checks the arguments and that paho-mqtt is installed (ConfigError naming the
    setting or the package otherwise); it does not connect: the first :meth:`publish` does.
    The keyword-only arguments are for tests and tuning.
    """

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int = Config.mqtt_port,
        username: str = "",
        password: str = "",
        tls: bool = False,
        ca_file: str = "",
        topic_prefix: str = Config.mqtt_topic_prefix,
        discovery_prefix: str = Config.mqtt_discovery_prefix,
        retain: bool = Config.mqtt_retain,
        stale_after: float = Config().reading_max_age,
        device_name: str = Config.device_name,
        *,
        client_id: str = "",
        keepalive: int = 60,
        reconnect_min_delay: float = 1.0,
        reconnect_max_delay: float = 120.0,
        first_connect_wait: float = 2.0,
    ) -> None:
        check_host(host)
        if type(port) is not int or not 1 <= port <= 65535:
            raise ConfigError(f"mqtt_port must be a number from 1 to 65535, not {port!r}")
        if password and not username:
            raise ConfigError(
                "mqtt_password is set but mqtt_username is empty (MQTT sends a "
                "password only with a user name)"
            )
        check_topic_prefix(topic_prefix, "mqtt_topic_prefix")
        check_topic_prefix(discovery_prefix, "mqtt_discovery_prefix")
        problem = check_device_name(device_name)
        if problem:
            raise ConfigError(problem)
        if not 0 < reconnect_min_delay <= reconnect_max_delay:
            raise ValueError("need 0 < reconnect_min_delay <= reconnect_max_delay")
        if keepalive < 5:
            raise ValueError("keepalive must be at least 5 seconds")
        if ca_file and not tls:
            log.warning("mqtt_ca_file %s is not used: mqtt_tls is off", ca_file)
        self._paho = mqtt_client.import_paho()
        self._tls_context = mqtt_client.tls_context(ca_file) if tls else None
        from iskra_me162.version import version

        self._settings = _Settings(
            host=host,
            port=port,
            username=username,
            password=password,
            tls=tls,
            topic_prefix=topic_prefix,
            discovery_prefix=discovery_prefix,
            retain=retain,
            # Home Assistant takes whole seconds; rounding down keeps it within the rule.
            expire_after=max(1, int(stale_after)),
            client_id=client_id or f"iskra-me162-{secrets.token_hex(6)}",
            keepalive=keepalive,
            reconnect_min_delay=reconnect_min_delay,
            reconnect_max_delay=reconnect_max_delay,
            first_connect_wait=first_connect_wait,
            sw_version=version(),
            device_name=device_name,
        )
        self._guards: OrderedDict[str, TotalsGuard] = OrderedDict()
        self._session: _Session | None = None
        self._closed = False
        log.debug(
            "MQTT sink for %s (user %r, TLS %s, paho-mqtt %s)",
            self._settings.where,
            username,
            "on" if tls else "off",
            mqtt_client.paho_version(),
        )

    def __repr__(self) -> str:
        return f"MqttSink({self._settings!r})"

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection."""
        return self._session is not None and self._session.connected

    def publish(self, values: Values) -> Published:
        """Hand ``values`` to the broker connection; never waits for the broker (see the module
        doc for the first reading). SinkError with a stable message while the broker cannot be
        reached or refuses us; the latest reading is then published when it is back."""
        if self._closed:
            raise SinkError("the MQTT sink is closed")
        return self._session_for(values.identity).publish(values)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the broker acknowledged every message handed to it; False on timeout."""
        return self._session is None or self._session.flush(timeout)

    def close(self) -> None:
        """Publish ``offline`` for the meter, disconnect and stop the network thread."""
        if self._closed:
            return
        self._closed = True
        if self._session is not None:
            self._session.close()
            self._session = None

    def _session_for(self, identity: MeterIdentity) -> _Session:
        session = self._session
        meter_id = identity.meter_id
        if session is not None and session.meter_id == meter_id:
            return session
        if session is not None:
            log.warning(
                "the meter changed from %s to %s: marking %s offline and reconnecting with the "
                "new meter's last will",
                session.meter_id,
                meter_id,
                session.meter_id,
            )
            session.close()
            self._session = None
        if not identity.serial:
            log.warning(
                "meter %s sends no serial number: its MQTT topics and Home Assistant ids are "
                "made from its make and model, which an identical meter shares; give each such "
                "meter on this broker its own mqtt_topic_prefix (docs/mqtt.rst, Several meters)",
                meter_id,
            )
        guard = self._guards.pop(meter_id, None) or TotalsGuard(meter_id)
        self._guards[meter_id] = guard
        while len(self._guards) > MAX_REMEMBERED_METERS:
            self._guards.popitem(last=False)
        self._session = _Session(self._settings, self._paho, self._tls_context, meter_id, guard)
        return self._session


class _Session:
    """One broker connection on behalf of one meter: paho's client and network thread, the
    latest readout and the discovery configs to (re)send."""

    def __init__(
        self,
        settings: _Settings,
        paho: Any,
        tls_context: Any,
        meter_id: str,
        guard: TotalsGuard,
    ) -> None:
        self.meter_id = meter_id
        self._settings = settings
        self._guard = guard
        self.topics = Topics(settings.topic_prefix, meter_id, settings.discovery_prefix)
        self._birth_topics = {HA_BIRTH_TOPIC, f"{settings.discovery_prefix}/status"}
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._connected = False
        self._closing = False
        self._problem: str | None = None
        self._first_outcome = threading.Event()
        self._waited_for_first = False
        self._latest: Values | None = None
        self._announced: dict[str, bytes] = {}  # discovery topic -> config published
        self._entities: set[Entity] = set()
        self._outstanding: deque[Any] = deque(maxlen=MAX_QUEUED)

        client = mqtt_client.new_client(paho, settings.client_id)
        client.will_set(self.topics.availability, NOT_AVAILABLE, qos=QOS, retain=True)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if tls_context is not None:
            client.tls_set_context(tls_context)
        client.reconnect_delay_set(settings.reconnect_min_delay, settings.reconnect_max_delay)
        client.max_queued_messages_set(MAX_QUEUED)
        mqtt_client.set_callbacks(
            client,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_connect_fail=self._on_connect_fail,
            on_message=self._on_message,
        )
        self._client = client
        log.info(
            "connecting to the MQTT broker at %s as %s for meter %s",
            settings.where,
            settings.client_id,
            meter_id,
        )
        client.connect_async(settings.host, settings.port, settings.keepalive)
        client.loop_start()

    @property
    def connected(self) -> bool:
        with self._state_lock:
            return self._connected

    def _status(self) -> tuple[bool, str | None]:
        with self._state_lock:
            return self._connected, self._problem

    # --- the meter loop's side -------------------------------------------------------------------

    def publish(self, values: Values) -> Published:
        if not self._waited_for_first:
            self._waited_for_first = True
            self._first_outcome.wait(self._settings.first_connect_wait)
        with self._send_lock:
            self._latest = values
            connected, problem = self._status()
            if connected:
                return self._send(values)
        if problem is not None:
            raise SinkError(f"{problem}; retrying")
        return Published(sent=False)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._send_lock:
                while self._outstanding and mqtt_client.acknowledged(self._outstanding[0]):
                    self._outstanding.popleft()
                if not self._outstanding:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def close(self) -> None:
        with self._state_lock:
            self._closing = True
            connected = self._connected
        if connected:
            with self._send_lock:
                info = self._client.publish(
                    self.topics.availability, NOT_AVAILABLE, qos=QOS, retain=True
                )
            deadline = time.monotonic() + CLOSE_WAIT
            while not mqtt_client.acknowledged(info) and time.monotonic() < deadline:
                time.sleep(0.02)
        # Also when not connected: it ends a connection attempt in progress and paho's
        # back-off wait, so that loop_stop() returns at once.
        self._client.disconnect()
        self._client.loop_stop()
        log.info("MQTT connection to %s closed", self._settings.where)

    # --- sending (with _send_lock held) ----------------------------------------------------------

    def _send(self, values: Values) -> Published:
        """Discovery for entities not announced yet, then the state; the guard learns only
        what paho took."""
        found = entity_values(values)
        configs = discovery_configs(
            values.identity,
            {*self._entities, *found},
            self.topics,
            self._settings.sw_version,
            self._settings.expire_after,
            self._settings.device_name,
        )
        for topic, payload in configs.items():
            if self._announced.get(topic) != payload:
                if not self._put(Message(topic, payload, retain=True)):
                    return Published(sent=False)
                self._announced[topic] = payload
        self._entities.update(found)
        rendered = render_state(
            values, self.topics, self._guard, self._entities, self._settings.retain
        )
        for message in rendered.messages:
            if not self._put(message):
                return Published(sent=False, held_back=tuple(rendered.held_back))
            self._guard.record(message.totals)
        log.debug(
            "published a reading of meter %s: %d messages",
            self.meter_id,
            len(rendered.messages),
        )
        return Published(sent=True, held_back=tuple(rendered.held_back))

    def _put(self, message: Message) -> bool:
        info = self._client.publish(message.topic, message.payload, qos=QOS, retain=message.retain)
        if mqtt_client.publish_ok(info):
            # Acknowledged messages leave from the front, so this stays as short as the
            # broker is behind (flush() waits for it to empty).
            while self._outstanding and mqtt_client.acknowledged(self._outstanding[0]):
                self._outstanding.popleft()
            self._outstanding.append(info)
            return True
        code = mqtt_client.result_code(getattr(info, "rc", -1))
        if code == mqtt_client.QUEUE_FULL:
            raise SinkError(
                f"the MQTT broker at {self._settings.where} does not keep up: "
                f"{MAX_QUEUED} messages wait for its acknowledgement"
            )
        log.debug("paho did not take %s (rc %d)", message.topic, code)
        return False

    def _send_backlog(self) -> None:
        """After connecting: online, every discovery config, the latest state."""
        self._put(Message(self.topics.availability, AVAILABLE.encode(), retain=True))
        for topic, payload in self._announced.items():
            if not self._put(Message(topic, payload, retain=True)):
                return
        latest = self._latest
        # A reading older than the freshness rule would show old values as current until
        # expire_after ran out once more: the next reading comes soon enough.
        age = None if latest is None else time.monotonic() - latest.monotonic
        if latest is not None and age is not None and age <= self._settings.expire_after:
            self._send(latest)

    # --- paho's network thread -------------------------------------------------------------------

    def _on_connect(self, code: int) -> None:
        where = self._settings.where
        if code != 0:
            problem = mqtt_client.describe_refusal(code, where, bool(self._settings.username))
            with self._state_lock:
                self._connected = False
                self._problem = problem
            log.debug("connection refused: %s", problem)
            self._first_outcome.set()
            return
        try:
            # The send lock first: a reading the loop publishes meanwhile goes after the
            # backlog (online, discovery), not before it.
            with self._send_lock:
                with self._state_lock:
                    closing = self._closing
                    self._connected = not closing
                    self._problem = None
                if closing:
                    # close() ran while we were connecting: say goodbye properly, so that the
                    # availability ends "offline" and not "online".
                    self._put(Message(self.topics.availability, NOT_AVAILABLE.encode(), True))
                    self._client.disconnect()
                    return
                log.info("connected to the MQTT broker at %s", where)
                self._client.subscribe([(topic, QOS) for topic in sorted(self._birth_topics)])
                self._send_backlog()
        except SinkError as error:  # the queue is full; the next reading says so too
            log.debug("backlog not sent: %s", error)
        finally:
            self._first_outcome.set()

    def _on_disconnect(self) -> None:
        with self._state_lock:
            if self._closing:
                self._connected = False
                return
            if self._connected:
                self._problem = f"lost the connection to the MQTT broker at {self._settings.where}"
            elif self._problem is None:
                self._problem = mqtt_client.closed_before_accepting(
                    self._settings.where, self._settings.tls
                )
            self._connected = False
            problem = self._problem
        log.debug("disconnected: %s", problem)
        self._first_outcome.set()

    def _on_connect_fail(self, error: OSError | None) -> None:
        settings = self._settings
        problem = mqtt_client.describe_connect_error(
            error, settings.where, settings.host, settings.tls
        )
        with self._state_lock:
            self._connected = False
            self._problem = problem
        log.debug("connection attempt failed: %s", problem)
        self._first_outcome.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic not in self._birth_topics or payload.strip() != AVAILABLE.encode():
            return
        log.info("Home Assistant announced itself on %s: publishing discovery again", topic)
        try:
            with self._send_lock:
                if not self.connected:
                    return
                self._put(Message(self.topics.availability, AVAILABLE.encode(), retain=True))
                for config_topic, config in self._announced.items():
                    if not self._put(Message(config_topic, config, retain=True)):
                        return
        except SinkError as error:
            log.debug("discovery not sent again: %s", error)
