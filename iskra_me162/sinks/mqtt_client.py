"""paho-mqtt glue: import it on demand, smooth over its 1.x and 2.x APIs, explain failures.

paho-mqtt is optional (Debian: python3-paho-mqtt, bookworm ships 1.6; PyPI: 2.x). It is
imported only when an MQTT sink is built, so a configuration without MQTT never loads it, and
its absence is a :class:`~iskra_me162.errors.ConfigError` at start-up that names the package.

The two APIs differ in how a client is created and in the callbacks' arguments:

* 2.x wants ``CallbackAPIVersion``; we use ``VERSION2`` (``VERSION1`` is deprecated there).
* ``on_connect(client, userdata, flags, rc[, properties])``: the result is argument 3 in both,
  an int (CONNACK code) in 1.x and a ``ReasonCode`` (MQTT 5 numbering) in 2.x.
* ``on_disconnect(client, userdata, rc)`` in 1.x, ``(client, userdata, flags, rc, properties)``
  in 2.x.
* ``on_publish(client, userdata, mid[, rc, properties])`` and ``on_message(client, userdata,
  message)``: the interesting argument is argument 2 in both.

The callbacks below take ``*args`` and pick what they need, so one sink serves both.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from types import ModuleType
from typing import Any

from iskra_me162.errors import ConfigError
from iskra_me162.sinks import netcheck

# paho's own messages, all at DEBUG: it reports every failed reconnection attempt at ERROR,
# which would repeat in the log at every back-off step; the sink reports problems once.
paho_log = logging.getLogger("iskra_me162.sinks.mqtt.paho")

PAHO_MISSING = (
    "MQTT is configured (mqtt_host is set) but the Python package paho-mqtt is not installed: "
    "install it with 'apt install python3-paho-mqtt' (Debian, Raspberry Pi OS) or "
    "'pip install paho-mqtt', or leave mqtt_host empty"
)

# CONNACK refusals. MQTT 3.1.1 return codes (paho 1.x) and the MQTT 5 reason codes paho 2.x
# turns them into, with what the user should check.
_BAD_LOGIN = "refused the login: check mqtt_username and mqtt_password"
_REFUSALS = {
    1: "does not speak MQTT 3.1.1",
    2: "rejected the client id",
    3: "is not available (server unavailable)",
    4: _BAD_LOGIN + " (bad user name or password)",
    5: _BAD_LOGIN + " (not authorised)",
    128: "refused the connection (unspecified error)",
    132: "does not speak MQTT 3.1.1",
    133: "rejected the client id",
    134: _BAD_LOGIN + " (bad user name or password)",
    135: _BAD_LOGIN + " (not authorised)",
    136: "is not available (server unavailable)",
    137: "is busy (server busy)",
    138: "has banned this client",
}
_TLS_ADVICE = netcheck.TlsAdvice(
    other_name="set mqtt_host to the name the certificate was made for",
    untrusted="give its CA certificate as mqtt_ca_file",
    not_tls="mqtt_tls off?",
)
QUEUE_FULL = 15  # MQTT_ERR_QUEUE_SIZE, the same number in paho 1.x and 2.x


def import_paho() -> ModuleType:
    """``paho.mqtt.client``, or ConfigError naming the package to install."""
    try:
        import paho.mqtt.client as paho_client
    except ImportError as error:
        raise ConfigError(PAHO_MISSING) from error
    return paho_client


def paho_version() -> str:
    import paho.mqtt

    return str(getattr(paho.mqtt, "__version__", "unknown"))


def new_client(paho: ModuleType, client_id: str) -> Any:
    """A paho client for MQTT 3.1.1 with a clean session, from either API generation.

    The client's class remembers why the last connection attempt failed: paho's network loop
    swallows the exception of a failed TCP or TLS connect and only calls ``on_connect_fail``,
    which gets no reason, so ``reconnect()`` (public API, used by that loop) keeps it.
    """
    base = paho.Client

    class ExplainingClient(base):  # type: ignore[misc, valid-type]
        last_connect_error: OSError | None = None

        def reconnect(self) -> Any:
            try:
                result = super().reconnect()
            except OSError as error:
                self.last_connect_error = error
                raise
            self.last_connect_error = None
            return result

    if hasattr(paho, "CallbackAPIVersion"):  # paho-mqtt 2.x
        return ExplainingClient(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
    return ExplainingClient(client_id=client_id, clean_session=True, protocol=paho.MQTTv311)


def set_callbacks(
    client: Any,
    on_connect: Callable[[int], None],
    on_disconnect: Callable[[], None],
    on_connect_fail: Callable[[OSError | None], None],
    on_message: Callable[[str, bytes], None],
) -> None:
    """Attach version-independent handlers: connect result code, lost connection, failed
    connect attempt (with its exception when known), incoming message (topic, payload).

    An exception escaping a handler would end paho's network thread (paho 1.x re-raises it)
    and with it every reconnection, for good; so it is logged with its traceback instead.
    """

    @_survive
    def connected(*args: Any) -> None:
        on_connect(result_code(args[3]))

    @_survive
    def disconnected(*_args: Any) -> None:
        on_disconnect()

    @_survive
    def connect_failed(*_args: Any) -> None:
        on_connect_fail(getattr(client, "last_connect_error", None))

    @_survive
    def message(*args: Any) -> None:
        received = args[2]
        on_message(str(received.topic), bytes(received.payload))

    def paho_says(*args: Any) -> None:
        paho_log.debug("%s", args[3])

    client.on_connect = connected
    client.on_log = paho_says
    client.on_disconnect = disconnected
    client.on_connect_fail = connect_failed
    client.on_message = message


def _survive(handler: Callable[..., None]) -> Callable[..., None]:
    def guarded(*args: Any) -> None:
        try:
            handler(*args)
        except Exception:  # the network thread must outlive a bug in a handler
            logging.getLogger("iskra_me162.sinks.mqtt").exception(
                "MQTT: unexpected error in %s", handler.__name__
            )

    return guarded


def result_code(value: object) -> int:
    """The number of a CONNACK result: an int (1.x) or a ReasonCode's value (2.x)."""
    number = getattr(value, "value", value)
    try:
        return int(number)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return -1


def publish_ok(info: Any) -> bool:
    """Whether paho took a message for sending now (rc 0); a message it merely queued for a
    later connection (MQTT_ERR_NO_CONN) or refused (queue full) does not count."""
    return result_code(getattr(info, "rc", -1)) == 0


def acknowledged(info: Any) -> bool:
    """Whether the broker acknowledged a message; a message paho never took counts as done
    (``is_published()`` raises for those)."""
    try:
        return bool(info.is_published())
    except (ValueError, RuntimeError):
        return True


def describe_refusal(code: int, where: str, has_username: bool) -> str:
    """One stable line for a refused CONNACK."""
    what = _REFUSALS.get(code, f"refused the connection (code {code})")
    if code in (4, 5, 134, 135) and not has_username:
        what = "wants a login (not authorised without one): set mqtt_username and mqtt_password"
    return f"the MQTT broker at {where} {what}"


def describe_connect_error(error: OSError | None, where: str, host: str, tls: bool) -> str:
    """One stable line for a failed TCP or TLS connect (no OS error numbers, no addresses)."""
    if isinstance(error, ConnectionResetError | BrokenPipeError | ssl.SSLEOFError):
        if tls:
            return (
                f"the MQTT broker at {where} closed the connection during the TLS handshake "
                "(does it speak TLS on this port? mqtt_tls off?)"
            )
        return f"the MQTT broker at {where} closed the connection"
    if isinstance(error, ssl.SSLError):  # after SSLEOFError: a close is explained above
        return netcheck.explain_tls_error(error, f"the MQTT broker at {where}", _TLS_ADVICE)
    if isinstance(error, socket.gaierror):
        return f"the MQTT broker's host name {host!r} was not found"
    if isinstance(error, ConnectionRefusedError):
        return (
            f"the MQTT broker at {where} refused the connection (is it running, is mqtt_port "
            "right?)"
        )
    if isinstance(error, TimeoutError | socket.timeout):
        return f"the MQTT broker at {where} did not answer (timed out)"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot connect to the MQTT broker at {where}: {error.strerror}"
    return f"cannot connect to the MQTT broker at {where}"


def closed_before_accepting(where: str, tls: bool) -> str:
    hint = "" if tls else " (does it want TLS on this port? set mqtt_tls)"
    return f"the MQTT broker at {where} closed the connection before accepting it{hint}"


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificate and host name checked; ``ca_file`` or the system's CAs. ConfigError when
    the CA file cannot be used."""
    try:
        return netcheck.client_tls_context(ca_file)
    except ValueError as problem:
        raise ConfigError(f"mqtt_ca_file {ca_file}: {problem}") from None
