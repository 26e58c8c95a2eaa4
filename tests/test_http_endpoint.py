"""The HTTP endpoint for Home Assistant, tested with a real server on 127.0.0.1 and real sockets.

Expected numbers are computed here from the readings each test builds, never taken from the
code under test. The documentation's Home Assistant YAML is parsed and its templates rendered
with Jinja2 against what the endpoint really serves.

The endpoint renders the derive stage's :class:`~iskra_me162.derive.Values` and computes
nothing itself: each readout here is derived first (power from counters is the derive stage's,
tested in tests/test_derive.py; here only that the endpoint shows it). The endpoint serves only
readings younger than ``stale_after`` by ``time.monotonic()``, so readouts carry monotonic
times near now.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import jinja2
import pytest
import yaml

from iskra_me162.derive import Values
from iskra_me162.errors import ConfigError, SinkError
from iskra_me162.obis import ObisCode, Reading
from iskra_me162.readout import MeterIdentity, Readout
from iskra_me162.sinks.http import (
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    HttpEndpoint,
    parse_listen,
)
from tests.readouts import make_deriver
from tests.testdata import expected, require_testdata

DOCS = Path(__file__).resolve().parent.parent / "README.rst"  # section "Home Assistant"
ME162 = MeterIdentity("ISK", "ME162-0033", "63355730")
WALL = datetime(2026, 5, 1, 12, 0, 3, 250_000, tzinfo=UTC)


# --- building readouts -------------------------------------------------------------------------


def reg(code: str, value: str | None, unit: str | None = None, raw: str = "") -> Reading:
    return Reading(
        ObisCode.parse(code), None if value is None else Decimal(value), unit, raw or str(value)
    )


def make_readout(
    *readings: Reading, age: float = 0.0, wall: datetime = WALL, monotonic: float | None = None
) -> Readout:
    """A readout taken ``age`` seconds ago (or at ``monotonic``)."""
    when = time.monotonic() - age if monotonic is None else monotonic
    return Readout(ME162, tuple(readings), wall, when)


def make_values(*readings: Reading, age: float = 0.0, wall: datetime = WALL) -> Values:
    """The values of one readout, derived on its own (a fresh deriver: no earlier readout, so
    no power from counters)."""
    return make_deriver().derive(make_readout(*readings, age=age, wall=wall))


def me162(age: float = 0.0) -> Values:
    """An ME162 readout as IEC 62056-21 sends it (kWh and kW, two tariffs, text registers),
    derived."""
    return make_values(
        reg("C.1.0", None, None, "63355730"),
        reg("1.8.0", "7408.2524", "kWh"),
        reg("1.8.1", "5123.1010", "kWh"),
        reg("1.8.2", "2285.1514", "kWh"),
        reg("2.8.0", "1532.0077", "kWh"),
        reg("1.7.0", "0.412", "kW"),
        reg("2.7.0", "0.100", "kW"),
        reg("F.F", None, None, "00000000"),
        age=age,
    )


# --- talking to the server -----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def fetch(endpoint: HttpEndpoint, path: str, method: str = "GET") -> Response:
    host, port = endpoint.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        body = answer.read()
        headers = {name.lower(): value for name, value in answer.getheaders()}
        return Response(answer.status, headers, body)
    finally:
        connection.close()


def exchange(endpoint: HttpEndpoint, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, then read until the server closes; everything it sent."""
    with socket.create_connection(endpoint.address, timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may stop reading a huge request
            sock.sendall(data)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def parse_raw(response: bytes) -> Response:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] (\d{3}) [A-Za-z -]+", status_line)
    assert match, f"bad status line {status_line!r}"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return Response(int(match.group(1)), headers, body)


@contextlib.contextmanager
def running(
    listen: str = "127.0.0.1:0", stale_after: float = 60.0, **options: float
) -> Iterator[HttpEndpoint]:
    endpoint = HttpEndpoint(listen, stale_after, **options)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.close()


@pytest.fixture
def endpoint() -> Iterator[HttpEndpoint]:
    with running() as started:
        yield started


def handler_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "http-client"]


def timed_fetch(endpoint: HttpEndpoint, path: str) -> tuple[Response, float]:
    start = time.monotonic()
    response = fetch(endpoint, path)
    return response, time.monotonic() - start


# --- parse_listen ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:8080", ("::", 8080)),
        ("localhost:8080", ("localhost", 8080)),
        ("pi-3.home.arpa:65535", ("pi-3.home.arpa", 65535)),
        ("  127.0.0.1:8080 ", ("127.0.0.1", 8080)),
    ],
)
def test_parse_listen_accepts(text, expected_address):
    assert parse_listen(text) == expected_address


def test_port_0_any_free_port_only_when_asked_for():
    with pytest.raises(ValueError, match="from 1 to 65535"):
        parse_listen("127.0.0.1:0")  # in a config file it would be a port nobody knows
    assert parse_listen("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no address given"),
        ("8080", "has no port"),
        (":8080", "has no host"),
        ("::1:8080", "in brackets"),
        ("[::1]8080", r"\[address\]:port"),
        ("[::1:8080", "missing ']'"),
        ("[localhost]:80", "not an IPv6 address"),
        ("127.0.0.1:", "port must be a number"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:+80", "port must be a number"),
        ("127.0.0.1:١٢", "port must be a number"),  # Arabic-Indic digits
        ("127.0.0.1:65536", "port must be a number from 1 to 65535"),
        ("999.1.1.1:80", "not an IPv4 address"),
        ("my host:80", "neither an IP address nor a host name"),
        ("-pi:80", "neither an IP address nor a host name"),
    ],
)
def test_parse_listen_rejects_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


@pytest.mark.parametrize("stale_after", [0, -1, float("nan"), float("inf")])
def test_bad_staleness_limit_is_a_config_error(stale_after):
    with pytest.raises(ConfigError, match="http_stale_after"):
        HttpEndpoint("127.0.0.1:0", stale_after)


def test_bad_listen_address_is_a_config_error():
    with pytest.raises(ConfigError, match=r"http_listen: .*in brackets"):
        HttpEndpoint("::1:8080", 60)


# --- what it serves ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/electricity/cumulated", "/api/v1/readings", "/healthz"])
def test_503_before_the_first_reading(endpoint, path):
    response = fetch(endpoint, path)
    assert response.status == 503
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"error"}  # an error, no value at all (not even a zero)


def test_cumulated_is_the_old_services_format(endpoint):
    readout = me162()
    endpoint.publish(readout)
    response = fetch(endpoint, "/api/electricity/cumulated")
    assert response.status == 200
    document = json.loads(response.body, parse_float=Decimal)
    assert list(document) == ["time", "type", "unit", "value"]
    assert document["type"] == 0
    assert document["unit"] == "kWh"
    assert document["value"] == Decimal("7408.2524")  # 1.8.0 as the meter sent it, in kWh
    assert isinstance(document["value"], Decimal)  # a JSON number, not a string
    sent = datetime.fromisoformat(document["time"].replace("Z", "+00:00"))
    assert sent.utcoffset() == timedelta(0)
    assert sent == WALL.replace(microsecond=0)


def test_wh_registers_are_converted_exactly_without_float_noise(endpoint):
    # SML meters send Wh with a scaler; 99999.7 Wh / 1000 in floats is 99.99969999999999.
    endpoint.publish(
        make_values(
            Reading(
                ObisCode.from_bytes(bytes([1, 0, 1, 8, 0, 255])), Decimal("99999.7"), "Wh", "x"
            ),
            Reading(ObisCode.from_bytes(bytes([1, 0, 2, 8, 0, 255])), Decimal("300.3"), "Wh", "x"),
            Reading(
                ObisCode.from_bytes(bytes([1, 0, 16, 7, 0, 255])), Decimal("-1234.5"), "W", "x"
            ),
        )
    )
    # Compact JSON (no blanks after ':' and ','), as every sink writes it (jsontext.py).
    cumulated = fetch(endpoint, "/api/electricity/cumulated").body
    assert b'"value":99.9997}' in cumulated
    readings = fetch(endpoint, "/api/v1/readings")
    assert b'"import_kwh":99.9997,' in readings.body
    assert b'"export_kwh":0.3003,' in readings.body
    document = json.loads(readings.body, parse_float=Decimal)
    assert document["power_w"] == Decimal("-1234.5")  # 16.7.0 is signed: feeding in


def test_readings_lists_every_register_with_meter_time_and_age(endpoint):
    values = me162(age=12.0)
    readout = values.readout
    endpoint.publish(values)
    response = fetch(endpoint, "/api/v1/readings")
    assert response.status == 200
    document = json.loads(response.body, parse_float=Decimal)
    assert document["meter"] == {
        "id": "63355730",
        "manufacturer": "ISK",
        "model": "ME162-0033",
        "serial": "63355730",
    }
    assert datetime.fromisoformat(document["time"].replace("Z", "+00:00")) == WALL.replace(
        microsecond=0
    )
    assert Decimal(12) <= document["age_s"] < Decimal(20)  # generous: a loaded machine is slow
    assert document["stale_after_s"] == 60
    listed = [
        (entry["obis"], entry["value"], entry["unit"], entry["raw"])
        for entry in document["readings"]
    ]
    assert listed == [
        (str(reading.code), reading.value, reading.unit, reading.raw)
        for reading in readout.readings
    ]
    assert document["import_kwh"] == Decimal("7408.2524")
    assert document["export_kwh"] == Decimal("1532.0077")
    assert document["power_w"] == (Decimal("0.412") - Decimal("0.100")) * 1000  # 1.7.0 - 2.7.0
    assert document["import_power_w"] == Decimal("412")
    assert document["export_power_w"] == Decimal("100")
    assert document["power_source"] == "meter"
    assert document["power_missing"] is None


def readings_of(endpoint: HttpEndpoint) -> dict:
    return json.loads(fetch(endpoint, "/api/v1/readings").body, parse_float=Decimal)


def test_a_counter_only_meter_gets_the_derived_power_from_its_counters(endpoint):
    # A real ME162 sends no 1.7.0/2.7.0: the derive stage computes the power from two readouts'
    # counters (tests/test_derive.py); the endpoint shows what it derived.
    def readout(import_kwh: str, export_kwh: str, monotonic: float) -> Readout:
        return make_readout(
            reg("1.8.0", import_kwh, "kWh"),
            reg("1.8.1", import_kwh, "kWh"),
            reg("1.8.2", "0.000", "kWh"),
            reg("2.8.0", export_kwh, "kWh"),
            monotonic=monotonic,
        )

    deriver = make_deriver()
    now = time.monotonic()
    first_values = deriver.derive(readout("1000.000", "5.000", now - 45))
    endpoint.publish(first_values)
    first = readings_of(endpoint)
    # One readout: the power is unknown, and the answer says why (never a guessed 0).
    assert first["power_w"] is None and first["power_source"] is None
    assert first["import_power_w"] is None and first["export_power_w"] is None
    assert first["power_missing"] == first_values.power_missing != ""
    assert first["import_kwh"] == Decimal("1000")  # the energy is there all the same

    # 25 Wh imported in 45 s = 2000 W, nothing exported.
    values = deriver.derive(readout("1000.025", "5.000", now))
    endpoint.publish(values)
    second = readings_of(endpoint)
    assert second["power_source"] == "counters"
    assert second["power_missing"] is None
    assert second["power_w"] == values.net_power.watts
    assert second["import_power_w"] == values.import_power.watts
    assert second["export_power_w"] == values.export_power.watts == 0
    assert abs(second["power_w"] - 2000) < 1


def test_the_endpoint_computes_no_power_of_its_own(endpoint):
    # Two counter-only readouts 40 s apart, each derived without the other: the derive stage
    # knows no power for either, and the endpoint (which once kept counters of its own) shows
    # none either.
    now = time.monotonic()
    for kwh, monotonic in (("100.000", now - 40), ("100.005", now)):
        endpoint.publish(
            make_deriver().derive(make_readout(reg("1.8.0", kwh, "kWh"), monotonic=monotonic))
        )
        document = readings_of(endpoint)
        assert document["power_w"] is None and document["power_source"] is None
        assert document["power_missing"]


@pytest.mark.parametrize(
    ("earlier", "later", "power", "source"),
    [
        # The meter's signed net power: import and export power split from it by its sign.
        (None, {"1.8.0": "100", "2.8.0": "5", "16.7.0": "-1.2345"}, ("-1234.5", "0", "1234.5"),
         "meter"),
        (None, {"1.8.0": "100", "2.8.0": "5", "16.7.0": "0.8"}, ("800", "800", "0"), "meter"),
        # A meter without export: its export power is 0, not unknown.
        (None, {"1.8.0": "100", "1.7.0": "0.3"}, ("300", "300", "0"), "meter"),
        # Import power from the meter, export power from the export counter: "mixed".
        ({"1.8.0": "100", "2.8.0": "5", "1.7.0": "0.3"},
         {"1.8.0": "100.005", "2.8.0": "5.002", "1.7.0": "0.3"}, ("180", "300", "120"), "mixed"),
        # ME162-like: only 1.8.0.
        ({"1.8.0": "100.000"}, {"1.8.0": "100.0075"}, ("450", "450", "0"), "counters"),
    ],
)  # fmt: skip
def test_the_power_fields_show_the_derived_power(endpoint, earlier, later, power, source):
    def readout(registers: dict[str, str], monotonic: float) -> Readout:
        return make_readout(
            *(
                reg(code, value, "kW" if ".7." in code else "kWh")
                for code, value in registers.items()
            ),
            monotonic=monotonic,
        )

    deriver = make_deriver()
    now = time.monotonic()
    if earlier is not None:
        deriver.derive(readout(earlier, now - 60))
    values = deriver.derive(readout(later, now))
    assert values.has_power, values.power_missing
    endpoint.publish(values)
    document = readings_of(endpoint)
    served = (document["power_w"], document["import_power_w"], document["export_power_w"])
    derived = (values.net_power.watts, values.import_power.watts, values.export_power.watts)
    assert served == derived
    assert all(
        abs(got - Decimal(want)) < Decimal("0.001") for got, want in zip(served, power, strict=True)
    ), served
    assert document["power_w"] == document["import_power_w"] - document["export_power_w"]
    assert document["power_source"] == source == values.net_power.source
    assert document["power_missing"] is None


def test_the_meters_own_power_register_wins(endpoint):
    endpoint.publish(me162())
    assert fetch(endpoint, "/api/v1/readings").json()["power_source"] == "meter"


def test_tariff_registers_are_summed_when_the_total_is_missing(endpoint):
    endpoint.publish(
        make_values(
            reg("1.8.1", "0.1", "kWh"),
            reg("1.8.2", "0.2", "kWh"),  # 0.1 + 0.2 in floats is 0.30000000000000004
            reg("2.8.1", "10", "kWh"),
            reg("2.8.2", "5.5", "kWh"),
            reg("1.7.0", "1.5", "kW"),  # import power only: no 2.7.0
        )
    )
    document = json.loads(fetch(endpoint, "/api/v1/readings").body, parse_float=Decimal)
    assert document["import_kwh"] == Decimal("0.3")
    assert document["export_kwh"] == Decimal("15.5")
    assert document["import_power_w"] == 1500
    # The meter counts export but sends no export power: from one readout that is unknown, so
    # the net power is too (never 1.7.0 alone as if nothing were exported).
    assert document["export_power_w"] is None
    assert document["power_w"] is None
    assert document["power_missing"]
    cumulated = json.loads(fetch(endpoint, "/api/electricity/cumulated").body, parse_float=Decimal)
    assert cumulated["value"] == Decimal("0.3")


def test_historic_values_are_never_served_as_the_current_total(endpoint):
    last_month = "1-0:1.8.0*07"
    endpoint.publish(
        make_values(reg(last_month, "6334.294", "kWh"), reg("1-0:1.8.0*255", "8048.375", "kWh"))
    )
    assert fetch(endpoint, "/api/electricity/cumulated").json()["value"] == 8048.375

    endpoint.publish(make_values(reg(last_month, "6334.294", "kWh"), reg("1.7.0", "0.2", "kW")))
    response = fetch(endpoint, "/api/electricity/cumulated")
    assert response.status == 503
    assert "1.8.0" in response.json()["error"]
    document = fetch(endpoint, "/api/v1/readings").json()
    assert document["import_kwh"] is None
    assert document["export_kwh"] is None
    assert document["power_w"] == 200
    assert document["readings"][0]["obis"] == last_month  # still listed, under its own code


def test_real_mt174_readout(endpoint):
    """A real ISKRA MT174 capture's registers (values from ../shared/testdata/expected.json)."""
    require_testdata()
    capture = expected()["iec62056-21/iskra_mt174-0001__smartmeter-obis.bin"]
    numbers = [
        Reading(ObisCode.parse(code), Decimal(item["raw"].split("*")[0]), item["unit"], item["raw"])
        for code, item in capture["obis"].items()
    ]
    texts = [
        Reading(ObisCode.parse(code), None, None, text) for code, text in capture["text"].items()
    ]
    endpoint.publish(make_values(*numbers, *texts))
    document = json.loads(fetch(endpoint, "/api/v1/readings").body, parse_float=Decimal)
    obis = capture["obis"]
    assert document["import_kwh"] == Decimal(str(obis["1-0:1.8.0*255"]["value"]))  # not *07
    assert document["export_kwh"] == Decimal(str(obis["1-0:2.8.0*255"]["value"]))
    expected_power = (
        Decimal(str(obis["1-0:1.7.0*255"]["value"])) - Decimal(str(obis["1-0:2.7.0*255"]["value"]))
    ) * 1000
    assert document["power_w"] == expected_power
    assert len(document["readings"]) == len(obis) + len(capture["text"])


# --- staleness -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/electricity/cumulated", "/api/v1/readings", "/healthz"])
def test_a_stale_reading_is_never_served(path):
    with running(stale_after=60) as endpoint:
        endpoint.publish(me162(age=61))
        response = fetch(endpoint, path)
        assert response.status == 503
        assert set(response.json()) == {"error"}
        assert b"7408" not in response.body

        endpoint.publish(me162(age=0))
        assert fetch(endpoint, path).status == 200


def test_a_reading_turns_stale_as_time_passes():
    with running(stale_after=0.5) as endpoint:
        endpoint.publish(me162())
        assert fetch(endpoint, "/healthz").status == 200
        time.sleep(0.8)
        response = fetch(endpoint, "/api/v1/readings")
        assert response.status == 503
        assert response.json() == {"error": "the latest reading is too old"}


def test_staleness_follows_the_monotonic_clock_not_the_wall_clock(endpoint):
    # The wall clock of a Pi without RTC is years off until NTP: that must not matter.
    endpoint.publish(make_values(reg("1.8.0", "1", "kWh"), wall=datetime(1970, 1, 1, tzinfo=UTC)))
    response = fetch(endpoint, "/api/electricity/cumulated")
    assert response.status == 200
    assert response.json()["time"] == "1970-01-01T00:00:00Z"


def test_healthz(endpoint):
    endpoint.publish(me162(age=3))
    document = json.loads(fetch(endpoint, "/healthz").body, parse_float=Decimal)
    assert document["status"] == "ok"
    assert Decimal(3) <= document["age_s"] < Decimal(10)


# --- HTTP behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_get_405_with_allow(endpoint, method):
    endpoint.publish(me162())
    response = parse_raw(
        exchange(endpoint, f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    )
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert json.loads(response.body) == {"error": "method not allowed"}


def test_a_client_still_sending_its_body_gets_the_405_without_a_broken_pipe(endpoint):
    # Closing with unread input makes the kernel answer the client's further data with a
    # reset: its next send fails, and a client such as http.client never reads our answer.
    with socket.create_connection(endpoint.address, timeout=5) as sock:
        sock.sendall(b"POST /api/v1/readings HTTP/1.1\r\nContent-Length: 300000\r\n\r\n")
        for _ in range(6):
            time.sleep(0.1)  # the server has answered by now
            sock.sendall(b"x" * 50_000)  # BrokenPipeError if the server closed too early
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert parse_raw(received).status == 405


def test_head_has_the_headers_of_get_and_no_body(endpoint):
    endpoint.publish(me162())
    get = fetch(endpoint, "/api/electricity/cumulated")
    raw = exchange(endpoint, b"HEAD /api/electricity/cumulated HTTP/1.1\r\nHost: x\r\n\r\n")
    head = parse_raw(raw)
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))
    assert head.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/index.html",
        "/etc/passwd",
        "/../etc/passwd",
        "/../../../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/api/v1/readings/../../../etc/passwd",
        "/api/v1/../../healthz",
        "//etc/passwd",
        "/./healthz",
        "/healthz/",
        "/HEALTHZ",
        "/healthz%00",
        "/api/v1/readings.json",
        "http://example.invalid/healthz",
        "*",
    ],
)
def test_unknown_paths_and_traversal_attempts_get_a_fixed_404(endpoint, path):
    endpoint.publish(me162())
    raw = exchange(endpoint, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = parse_raw(raw)
    assert response.status == 404
    assert json.loads(response.body) == {"error": "not found"}
    assert b"passwd" not in raw and b"root:" not in raw


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /<script>alert(1)</script> HTTP/1.1\r\n\r\n", 404),
        (b"<script>alert(1)</script>\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1 <script>\r\n\r\n", 400),
        (b"GET /healthz <script>/1.1\r\n\r\n", 400),
        (b"GET /<script>\x00 HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1\r\n<script>: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX: 1\r\n <script>folded\r\n\r\n", 400),
    ],
)
def test_request_data_is_never_reflected(endpoint, request_bytes, status):
    raw = exchange(endpoint, request_bytes)
    response = parse_raw(raw)
    assert response.status == status
    assert set(json.loads(response.body)) == {"error"}
    assert b"script" not in raw


def test_no_version_banner(endpoint):
    raw = exchange(endpoint, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parse_raw(raw).headers["server"] == "iskra-me162"
    assert b"Python" not in raw and b"BaseHTTP" not in raw


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 500 + b"\r\n", 431),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_huge_requests_are_refused_and_others_still_served(endpoint, request_bytes, status):
    endpoint.publish(me162())
    response = parse_raw(exchange(endpoint, request_bytes))
    assert response.status == status
    assert set(json.loads(response.body)) == {"error"}
    answer, elapsed = timed_fetch(endpoint, "/healthz")
    assert answer.status == 200
    assert elapsed < 1.0


def test_ordinary_large_headers_are_accepted(endpoint):
    # A browser with a few cookies for the host: well below the limit.
    endpoint.publish(me162())
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 6000 + b"\r\n\r\n"
    assert parse_raw(exchange(endpoint, request)).status == 200


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 431)])
def test_header_limit_boundary(endpoint, extra, status):
    # The header lines and the empty line that ends them: exactly the limit, or one byte more.
    endpoint.publish(me162())
    line = b"X: " + b"a" * (MAX_HEADER_BYTES - len(b"X: \r\n\r\n") + extra) + b"\r\n"
    request = b"GET /healthz HTTP/1.1\r\n" + line + b"\r\n"
    assert len(request) - len(b"GET /healthz HTTP/1.1\r\n") == MAX_HEADER_BYTES + extra
    assert parse_raw(exchange(endpoint, request)).status == status


def test_a_one_byte_per_second_client_is_cut_off_while_others_are_served():
    with running(request_timeout=2.0) as endpoint:
        endpoint.publish(me162())
        outcome: dict[str, object] = {}
        slow = socket.create_connection(endpoint.address, timeout=10)

        def trickle() -> None:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # 37 s at one byte per second
            start = time.monotonic()
            for byte in request:
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    break
                closed, _, _ = select.select([slow], [], [], 1.0)
                if closed:
                    break
            try:
                outcome["reply"] = slow.recv(1000)
            except OSError:
                outcome["reply"] = b""
            outcome["after"] = time.monotonic() - start

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            for _ in range(4):
                answer, elapsed = timed_fetch(endpoint, "/healthz")
                assert answer.status == 200
                assert elapsed < 1.0
                time.sleep(0.5)
            thread.join(15)
            assert not thread.is_alive()
        finally:
            slow.close()
        assert outcome["reply"] == b""  # closed without an answer
        assert 1.5 < outcome["after"] < 8  # at the 2 s limit, not when the request was complete


def test_200_idle_connections_neither_lock_out_a_client_nor_pile_up_threads(endpoint):
    endpoint.publish(me162())
    idle: list[socket.socket] = []
    try:
        for number in range(200):
            sock = socket.create_connection(endpoint.address, timeout=5)
            if number % 10 == 0:
                sock.sendall(b"GET /heal")  # half a request, never finished
            idle.append(sock)
        answer, elapsed = timed_fetch(endpoint, "/api/v1/readings")
        assert answer.status == 200
        assert elapsed < 1.0
        assert len(handler_threads()) <= 2 * MAX_CONNECTIONS
        # The server keeps at most MAX_CONNECTIONS of them: it has closed the oldest others.
        deadline = time.monotonic() + 5
        closed: list[socket.socket] = []
        while time.monotonic() < deadline:
            closed, _, _ = select.select(idle, [], [], 0.2)
            if len(closed) >= len(idle) - MAX_CONNECTIONS:
                break
        assert len(closed) >= len(idle) - MAX_CONNECTIONS
    finally:
        for sock in idle:
            sock.close()


def test_a_flood_of_connects_beyond_the_limit_is_handled_and_bounded():
    with running(max_connections=4) as endpoint:
        endpoint.publish(me162())
        idle = [socket.create_connection(endpoint.address, timeout=5) for _ in range(30)]
        try:
            for _ in range(3):
                answer, elapsed = timed_fetch(endpoint, "/healthz")
                assert answer.status == 200
                assert elapsed < 1.0
            assert len(handler_threads()) <= 8
        finally:
            for sock in idle:
                sock.close()


def test_publish_never_waits_for_stuck_clients(endpoint):
    endpoint.publish(me162())
    stuck = []
    try:
        for number in range(60):
            sock = socket.create_connection(endpoint.address, timeout=5)
            if number % 3 == 0:
                sock.sendall(b"GET /api/v1/readings HTTP/1.1\r\n")  # never finished
            elif number % 3 == 1:
                sock.sendall(b"GET /api/v1/readings HTTP/1.1\r\n\r\n")  # answer never read
            stuck.append(sock)
        readings = [make_values(reg("1.8.0", str(number), "kWh")) for number in range(200)]
        start = time.monotonic()
        for values in readings:
            endpoint.publish(values)
        assert time.monotonic() - start < 2.0  # 200 renders; no waiting on any client
        assert fetch(endpoint, "/api/electricity/cumulated").json()["value"] == 199
    finally:
        for sock in stuck:
            sock.close()


# --- life cycle ----------------------------------------------------------------------------------


def test_close_frees_the_port_and_ends_every_thread():
    endpoint = HttpEndpoint("127.0.0.1:0", 60)
    endpoint.start()
    port = endpoint.address[1]
    assert port != 0
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
    try:
        deadline = time.monotonic() + 5
        while len(handler_threads()) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        endpoint.close()
        assert time.monotonic() - start < 3.0
        names = {thread.name for thread in threading.enumerate()}
        assert "http-client" not in names
        assert "http-endpoint" not in names
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        endpoint.close()  # a second close is harmless
    finally:
        for sock in idle:
            sock.close()
    # As after a reload: a new endpoint binds the same port at once.
    with running(f"127.0.0.1:{port}") as again:
        assert again.address == ("127.0.0.1", port)
        assert fetch(again, "/healthz").status == 503


def test_port_in_use_is_a_clear_sink_error():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        endpoint = HttpEndpoint(f"127.0.0.1:{port}", 60)
        with pytest.raises(SinkError, match=rf"127\.0\.0\.1:{port} .*already in use"):
            endpoint.start()
        endpoint.close()


def test_an_address_this_machine_does_not_have_is_a_clear_sink_error():
    endpoint = HttpEndpoint("192.0.2.1:8080", 60)  # TEST-NET-1: never assigned to a host
    with pytest.raises(SinkError, match="no such address"):
        endpoint.start()


def test_start_twice_is_refused(endpoint):
    with pytest.raises(SinkError, match="already running"):
        endpoint.start()


def test_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with running("[::1]:0") as endpoint:
        endpoint.publish(me162())
        assert endpoint.address[0] == "::1"
        assert fetch(endpoint, "/healthz").status == 200


def test_requests_are_logged_at_debug_only_and_escaped(endpoint, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="iskra_me162.sinks.http")
    endpoint.publish(me162())
    fetch(endpoint, "/healthz")
    exchange(endpoint, b"GET /\x1b[31mred HTTP/1.1\r\n\r\n")
    exchange(endpoint, b"DELETE /healthz HTTP/1.1\r\n\r\n")
    fetch(endpoint, "/api/v1/readings?access_token=s3cr3t-t0ken&x=1")
    records = [r for r in caplog.records if r.name == "iskra_me162.sinks.http"]
    assert records, "requests are logged at DEBUG"
    # A token a client puts into the query string never reaches the log.
    assert not any("s3cr3t-t0ken" in record.getMessage() for record in records)
    assert any("/api/v1/readings?..." in record.getMessage() for record in records)
    assert all(record.levelno == logging.DEBUG for record in records)
    assert not any("\x1b" in record.getMessage() for record in records)
    assert any("\\x1b[31mred" in record.getMessage() for record in records)
    assert capsys.readouterr().err == ""  # nothing written to sys.stderr behind logging's back


# --- the documentation's Home Assistant configuration ----------------------------------------


def code_blocks(language: str) -> list[str]:
    """The ``.. code-block:: <language>`` blocks of README.rst, dedented."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        match = re.fullmatch(r"(\s*)\.\. code-block:: (\S+)\s*", line)
        if not match or match.group(2) != language:
            continue
        indent = len(match.group(1))
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        text = "\n".join(body).strip("\n")
        width = min(len(x) - len(x.lstrip()) for x in text.splitlines() if x.strip())
        blocks.append("\n".join(x[width:] for x in text.splitlines()))
    return blocks


def rest_config(path: str) -> dict:
    """The documented ``rest:`` entry whose resource ends with ``path``."""
    for block in code_blocks("yaml"):
        for entry in yaml.safe_load(block)["rest"]:
            if entry["resource"].endswith(path):
                return entry
    raise AssertionError(f"README.rst has no rest: block for {path}")


def render(template: str, body: bytes) -> str:
    """Render like Home Assistant's RESTful sensor: ``value``, and ``value_json`` if JSON."""
    variables: dict[str, object] = {"value": body.decode()}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(body)
    return jinja2.Environment(autoescape=False).from_string(template).render(variables)  # noqa: S701 - HA renders templates unescaped


def sensors_by_id(entry: dict) -> dict[str, dict]:
    return {sensor["unique_id"]: sensor for sensor in entry["sensor"]}


def test_documented_sensors_feed_the_energy_dashboard():
    sensors = sensors_by_id(rest_config("/api/v1/readings"))
    assert set(sensors) == {"iskra_me162_import", "iskra_me162_export", "iskra_me162_power"}
    for energy in ("iskra_me162_import", "iskra_me162_export"):
        assert sensors[energy]["unit_of_measurement"] == "kWh"
        assert sensors[energy]["device_class"] == "energy"
        assert sensors[energy]["state_class"] == "total_increasing"
    assert sensors["iskra_me162_power"]["unit_of_measurement"] == "W"
    assert sensors["iskra_me162_power"]["device_class"] == "power"
    assert sensors["iskra_me162_power"]["state_class"] == "measurement"
    for sensor in sensors.values():
        assert "availability" in sensor, f"{sensor['name']} would record garbage on a 503"


def test_documented_templates_give_our_numbers_and_unavailable_without_a_fresh_reading():
    entry = rest_config("/api/v1/readings")
    path = "/" + entry["resource"].split("/", 3)[3]
    sensors = sensors_by_id(entry)
    expected_values = {
        "iskra_me162_import": Decimal("7408.2524"),
        "iskra_me162_export": Decimal("1532.0077"),
        "iskra_me162_power": (Decimal("0.412") - Decimal("0.100")) * 1000,
    }
    with running(stale_after=60) as endpoint:
        before_first = fetch(endpoint, path)
        endpoint.publish(me162())
        fresh = fetch(endpoint, path)
        endpoint.publish(me162(age=100))
        stale = fetch(endpoint, path)
    assert fresh.status == 200
    assert before_first.status == stale.status == 503
    proxy_error = b"<html><body>502 Bad Gateway</body></html>"  # e.g. from a reverse proxy
    for unique_id, sensor in sensors.items():
        assert render(sensor["availability"], fresh.body) == "True"
        assert float(render(sensor["value_template"], fresh.body)) == float(
            expected_values[unique_id]
        )
        for unusable in (before_first.body, stale.body, proxy_error):
            assert render(sensor["availability"], unusable) == "False", unique_id


def test_documented_export_sensor_is_unavailable_for_a_meter_without_export():
    sensors = sensors_by_id(rest_config("/api/v1/readings"))
    with running() as endpoint:
        endpoint.publish(make_values(reg("1.8.0", "12.5", "kWh")))
        body = fetch(endpoint, "/api/v1/readings").body
    assert render(sensors["iskra_me162_import"]["availability"], body) == "True"
    assert render(sensors["iskra_me162_export"]["availability"], body) == "False"
    assert render(sensors["iskra_me162_power"]["availability"], body) == "False"


def test_documented_drop_in_sensor_for_the_old_cumulated_url():
    entry = rest_config("/api/electricity/cumulated")
    (sensor,) = entry["sensor"]
    assert (
        sensor["value_template"] == "{{ value_json.value }}"
    )  # what users of the old service have
    assert (sensor["unit_of_measurement"], sensor["device_class"], sensor["state_class"]) == (
        "kWh",
        "energy",
        "total_increasing",
    )
    with running() as endpoint:
        missing = fetch(endpoint, "/api/electricity/cumulated").body
        endpoint.publish(me162())
        body = fetch(endpoint, "/api/electricity/cumulated").body
    assert float(render(sensor["value_template"], body)) == 7408.2524
    assert render(sensor["availability"], body) == "True"
    assert render(sensor["availability"], missing) == "False"


def test_documented_example_json_has_the_real_shape(endpoint):
    (example_text,) = code_blocks("json")
    example = json.loads(example_text)
    endpoint.publish(me162())
    real = fetch(endpoint, "/api/v1/readings").json()
    assert list(example) == list(real)
    assert list(example["meter"]) == list(real["meter"])
    assert all(list(item) == list(real["readings"][0]) for item in example["readings"])
