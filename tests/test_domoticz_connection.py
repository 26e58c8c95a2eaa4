"""The Domoticz client's connection handling, against a scripted HTTP server on 127.0.0.1.

tests/httpstub.py behaves like Domoticz; the server here misbehaves on purpose, byte by byte:
it closes kept connections, redirects, answers with garbage or with far too much. Keeping the
connection, and replacing one that Domoticz closed while idle, is urllib3's work (requests'
connection pool); these tests hold it to what the daemon needs: no update fails for it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import pytest

from iskra_me162.errors import SinkError
from iskra_me162.sinks.domoticz_client import DomoticzClient

IDX = 42
OK_BODY = b'{"status": "OK", "title": "Update Device"}'


def svalue(imported_wh: int) -> str:
    return f"{imported_wh};0;0;0;500;0"


def answer(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


OK = answer("200 OK", OK_BODY, "Content-Type: application/json;charset=UTF-8")


class ScriptedServer:
    """Accepts connections; ``script(number, connection, server)`` serves each one."""

    def __init__(self, script: Callable[[int, socket.socket, ScriptedServer], None]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head)
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            worker = threading.Thread(
                target=self._serve, args=(self.connections, connection), daemon=True
            )
            self._threads.append(worker)
            worker.start()

    def _serve(self, number: int, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            with contextlib.suppress(OSError):  # the client went away: nothing to tell
                self.script(number, connection, self)

    def read_request(self, number: int, connection: socket.socket) -> bytes | None:
        """One request head, recorded; None when the client closed the connection."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(4096)
            if not chunk:
                return None
            data += chunk
        self.requests.append((number, data))
        return data

    def close(self) -> None:
        self.listener.close()
        for worker in self._threads:
            worker.join(5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def client_for(server: ScriptedServer, **options: object) -> DomoticzClient:
    options.setdefault("timeout", 5.0)
    return DomoticzClient(f"http://127.0.0.1:{server.port}", **options)  # type: ignore[arg-type]


def test_one_kept_connection_carries_every_update():
    def keep_alive(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        while server.read_request(number, connection) is not None:
            connection.sendall(OK)

    with ScriptedServer(keep_alive) as server:
        client = client_for(server)
        for wh in (8048010, 8048020, 8048030):
            client.udevice(IDX, svalue(wh))
        client.close()
    assert [number for number, _ in server.requests] == [1, 1, 1]
    assert all(b"GET /json.htm?type=command&param=udevice&idx=42" in r for _, r in server.requests)


def test_domoticz_closing_the_idle_connection_costs_nothing(caplog):
    # Domoticz (like any web server) closes keep-alive connections that stay idle; the next
    # update must go out on a new connection, without an error. urllib3 sees the close before
    # it reuses a pooled connection: the client's one more try is not needed for this.
    def one_per_connection(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        if server.read_request(number, connection) is not None:
            connection.sendall(OK)  # HTTP/1.1 without "Connection: close", then closed anyway

    caplog.set_level(logging.DEBUG)
    with ScriptedServer(one_per_connection) as server:
        client = client_for(server)
        for wh in (8048010, 8048020, 8048030):
            client.udevice(IDX, svalue(wh))
            time.sleep(0.05)  # idle: the close has arrived before the next update
    assert [number for number, _ in server.requests] == [1, 2, 3]
    assert "trying once more" not in caplog.text


def test_connection_closed_just_as_the_update_went_out_is_tried_once_more():
    # The race urllib3's check of an idle pooled connection cannot see: the server takes the
    # second request on the kept connection and closes it without an answer. requests does not
    # retry that by itself; the client tries once more on a new connection.
    def close_on_second(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        served = 0
        while server.read_request(number, connection) is not None:
            served += 1
            if number == 1 and served == 2:
                connection.shutdown(socket.SHUT_RDWR)
                return
            connection.sendall(OK)

    with ScriptedServer(close_on_second) as server:
        client = client_for(server)
        client.udevice(IDX, svalue(8048100))
        client.udevice(IDX, svalue(8048200))
        client.close()
    assert [number for number, _ in server.requests] == [1, 1, 2]
    assert server.requests[1][1] == server.requests[2][1]  # the same update, sent again


def test_a_server_that_always_closes_without_answer_is_a_clear_error_after_one_more_try():
    # From the outside a closed new connection looks like a closed kept one: one more try
    # (on a new connection), then the error. Never more: the next cycle tries again anyway.
    def close_at_once(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        server.read_request(number, connection)

    with ScriptedServer(close_at_once) as server:
        client = client_for(server)
        with pytest.raises(SinkError) as caught:
            client.udevice(IDX, svalue(8048375))
    assert str(caught.value) == (
        f"cannot reach Domoticz at http://127.0.0.1:{server.port}: "
        "the connection was closed without an answer"
    )
    assert [number for number, _ in server.requests] == [1, 2]


def test_an_update_that_timed_out_is_not_sent_again():
    # Unlike a closed connection: the wait would double, and the next cycle comes anyway.
    def never_answer(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        server.read_request(number, connection)
        time.sleep(2)

    with ScriptedServer(never_answer) as server:
        client = client_for(server, timeout=0.5)
        with pytest.raises(SinkError, match=r"did not answer within 0\.5 s"):
            client.udevice(IDX, svalue(8048375))
        time.sleep(0.3)  # a second try would have arrived by now
    assert len(server.requests) == 1


def test_redirect_is_reported_not_followed_and_shows_no_credentials_or_query():
    location = "https://admin:secret@domoticz.example:8443/dz/json.htm?token=hidden"

    def redirect(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        while server.read_request(number, connection) is not None:
            connection.sendall(answer("301 Moved Permanently", b"", f"Location: {location}"))

    with ScriptedServer(redirect) as server:
        client = client_for(server, username="meterman", password="pa55")
        with pytest.raises(SinkError) as caught:
            client.udevice(IDX, svalue(8048375))
    message = str(caught.value)
    assert message == (
        f"Domoticz at http://127.0.0.1:{server.port} redirects to "
        "https://domoticz.example/dz/json.htm (HTTP 301); "
        "set the Domoticz server to the address it redirects to"
    )
    assert len(server.requests) == 1  # not followed


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"garbage\r\n\r\n", r"sent no valid HTTP answer \(BadStatusLine\)"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{", r"answer \(IncompleteRead\)"),
        (answer("200 OK", b"[" * 200_000), "HTTP 200 without a JSON object"),
        (answer("200 OK", b'{"status": "OK"' + b" " * 100_000 + b"}"), "without a JSON object"),
        (answer("200 OK", b'"\xff\xfe OK"'), "HTTP 200 without a JSON object"),
    ],
    ids=["no-http", "short-body", "nested-deep", "too-long", "not-utf8"],
)
def test_malformed_answers_are_clear_errors_and_the_next_update_still_goes_out(reply, message):
    def bad_then_good(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        while server.read_request(number, connection) is not None:
            if len(server.requests) == 1:
                connection.sendall(reply)
                connection.shutdown(socket.SHUT_WR)
                return
            connection.sendall(OK)

    with ScriptedServer(bad_then_good) as server:
        client = client_for(server, timeout=2.0)
        with pytest.raises(SinkError, match=message) as caught:
            client.udevice(IDX, svalue(8048375))
        assert "\n" not in str(caught.value)
        # Nothing lost: the next cycle sends the then current counters.
        client.udevice(IDX, svalue(8048500))
        client.close()
    assert b"svalue=8048500;" in server.requests[-1][1]


def test_an_endless_answer_is_not_read_whole():
    # No Content-Length, chunks without end: a client that reads the whole body never returns.
    sent: list[int] = []
    limit = 64 * 1024 * 1024  # far beyond the kernel's socket buffers on loopback

    def endless(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        if server.read_request(number, connection) is None:
            return
        connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"4000\r\n" + b"[" * 0x4000 + b"\r\n"
        total = 0
        try:
            while total < limit:
                connection.sendall(chunk)
                total += len(chunk)
        finally:
            sent.append(total)

    with ScriptedServer(endless) as server:
        client = client_for(server, timeout=5.0)
        started = time.monotonic()
        with pytest.raises(SinkError, match="HTTP 200 without a JSON object"):
            client.udevice(IDX, svalue(8048375))
        assert time.monotonic() - started < 5
        client.close()
    assert sent and sent[0] < limit  # the client stopped reading and closed the connection


def test_a_declared_length_beyond_the_cap_is_not_waited_for():
    # 10 MB announced, 100 bytes sent, then nothing: reading on would wait for the timeout.
    def announce_much(number: int, connection: socket.socket, server: ScriptedServer) -> None:
        while server.read_request(number, connection) is not None:
            if number == 1:
                connection.sendall(
                    answer("200 OK", b"[" * 100)[:-100].replace(
                        b"Content-Length: 100", b"Content-Length: 10000000"
                    )
                    + b"[" * 100
                )
                time.sleep(3)
                return
            connection.sendall(OK)

    with ScriptedServer(announce_much) as server:
        client = client_for(server, timeout=2.5)
        started = time.monotonic()
        with pytest.raises(SinkError, match="HTTP 200 without a JSON object"):
            client.udevice(IDX, svalue(8048375))
        assert time.monotonic() - started < 2
        client.udevice(IDX, svalue(8048400))  # on a new connection: the old one had unread bytes
        client.close()
    assert [number for number, _ in server.requests] == [1, 2]
