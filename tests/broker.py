"""A real Mosquitto broker for the tests, and an observer client that records what it sees.

:func:`ensure_mosquitto` finds Debian's ``mosquitto`` and, when it is missing and we are root,
installs it (``apt-get install -y mosquitto``, with ``apt-get update`` first if that fails).
Without root and without mosquitto the tests that need a broker are skipped with a message
saying so; when the installation itself fails they fail.

:class:`Broker` runs its own mosquitto on 127.0.0.1 with a generated configuration, on a free
port that stays the same across :meth:`Broker.restart`, anonymous or with a password file
(made with ``mosquitto_passwd``), and optionally with a TLS listener (:func:`make_tls_files`
makes a CA and a server certificate with ``openssl``). No persistence: a restarted broker has
forgotten every retained message, as a broker that lost its disk would.

:class:`Observer` is a plain paho client (paho-mqtt must be installed) that subscribes and
records messages, for assertions about what the code under test published.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
_install_lock = threading.Lock()
_install_failed: str | None = None


@dataclass(frozen=True)
class Tools:
    mosquitto: str
    mosquitto_passwd: str


def _find_tools() -> Tools | None:
    mosquitto = shutil.which("mosquitto", path=_SEARCH_PATH)
    passwd = shutil.which("mosquitto_passwd", path=_SEARCH_PATH)
    if mosquitto and passwd:
        return Tools(mosquitto, passwd)
    return None


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )


def ensure_mosquitto() -> Tools:
    """The mosquitto binaries, installed through apt-get when missing (as root)."""
    global _install_failed
    with _install_lock:
        tools = _find_tools()
        if tools is not None:
            return tools
        if _install_failed is not None:
            pytest.fail(_install_failed)
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(
                "mosquitto is not installed and cannot be installed here (needs root and "
                "apt-get): run 'apt-get install mosquitto' to run the MQTT broker tests"
            )
        result = _apt_get("install", "-y", "--no-install-recommends", "mosquitto")
        if result.returncode != 0:
            update = _apt_get("update")
            result = _apt_get("install", "-y", "--no-install-recommends", "mosquitto")
            if result.returncode != 0:
                _install_failed = (
                    "could not install mosquitto with apt-get (after apt-get update, exit "
                    f"{update.returncode}): {result.stderr.strip()[-800:]}"
                )
                pytest.fail(_install_failed)
        tools = _find_tools()
        if tools is None:
            _install_failed = "apt-get installed mosquitto but its programs are not on the PATH"
            pytest.fail(_install_failed)
        return tools


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(
    directory: Path, names: str = "IP:127.0.0.1,DNS:localhost", common_name: str = "test CA"
) -> TlsFiles:
    """A fresh CA and a server certificate for ``names`` (subjectAltName), made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: the TLS tests need it to make certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName={names}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *curve, "-keyout", ca_key, "-out", ca_cert, "-days", "2",
         "-subj", f"/CN={common_name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *curve, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(part) for part in command], capture_output=True, check=True)
    key.chmod(0o644)  # mosquitto may run as another user
    return TlsFiles(ca_cert, cert, key)


class Broker:
    """One mosquitto process of our own. ``users`` (name -> password) turns anonymous access
    off; ``tls`` serves TLS instead of plain MQTT on the port."""

    def __init__(
        self,
        directory: Path,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.tools = ensure_mosquitto()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.tls = tls
        self.host = HOST
        self.port = free_port()
        self.log_path = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.config_path = self._write_config()

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} {HOST}",
            "persistence false",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user that cannot read tmp files
        if self.users:
            password_file = self.directory / "passwords"
            password_file.unlink(missing_ok=True)
            for number, (name, password) in enumerate(self.users.items()):
                create = ["-c"] if number == 0 else []
                subprocess.run(
                    [self.tools.mosquitto_passwd, *create, "-b", str(password_file), name,
                     password],
                    capture_output=True,
                    check=True,
                )  # fmt: skip
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
            ]
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [self.tools.mosquitto, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}:\n{self.log_text()}"
                )
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port}:\n{self.log_text()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float  # time.monotonic() on arrival

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


@dataclass
class Observer:
    """A paho client subscribed to ``topics`` that records every message it gets."""

    broker: Broker
    topics: Iterable[str] = ("#",)
    username: str = ""
    password: str = ""
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        import paho.mqtt.client as paho

        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        client_id = f"observer-{os.getpid()}-{id(self):x}"
        if hasattr(paho, "CallbackAPIVersion"):
            self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        else:
            self._client = paho.Client(client_id=client_id)
        if self.username:
            self._client.username_pw_set(self.username, self.password)
        if self.broker.tls is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(self.broker.tls.ca_cert))
            self._client.tls_set_context(context)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(self.broker.host, self.broker.port, 30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the observer could not subscribe")

    def _on_connect(self, *_args: object) -> None:
        self._client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, *args: object) -> None:
        message = args[2]
        received = Received(
            str(message.topic),  # type: ignore[attr-defined]
            bytes(message.payload),  # type: ignore[attr-defined]
            bool(message.retain),  # type: ignore[attr-defined]
            int(message.qos),  # type: ignore[attr-defined]
            time.monotonic(),
        )
        with self._condition:
            self.messages.append(received)
            self._condition.notify_all()

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def on(self, topic: str) -> list[Received]:
        with self._condition:
            return [message for message in self.messages if message.topic == topic]

    def wait_for(
        self,
        predicate: Callable[[list[Received]], object],
        timeout: float = 15.0,
        what: str = "a message",
    ) -> object:
        """Wait until ``predicate(messages)`` is true and return it; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                result = predicate(list(self.messages))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({message.topic for message in self.messages})
                    raise AssertionError(f"timed out waiting for {what}; topics seen: {seen}")
                self._condition.wait(min(remaining, 0.2))

    def wait_for_message(
        self,
        topic: str,
        after: float = 0.0,
        accept: Callable[[Received], bool] = lambda _message: True,
        timeout: float = 15.0,
    ) -> Received:
        """The first message on ``topic`` that arrived after ``after`` and is accepted."""

        def find(messages: list[Received]) -> Received | None:
            for message in messages:
                if message.topic == topic and message.at >= after and accept(message):
                    return message
            return None

        found = self.wait_for(find, timeout, f"a message on {topic}")
        assert isinstance(found, Received)
        return found

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
