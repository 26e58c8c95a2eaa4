"""The status page at ``/`` (issue 13): rendered from hand-made values and health first, then
served by the real daemon against a simulated ME162 and looked at in a real headless Chromium.

What Chromium must see: the same numbers as ``GET /api/v1/readings`` fetched around it, no
console message at all (the page has no script; a CSP violation, a failed load or a parse error
would show up there), one chart point per minute of history, and none of the configured user
names and passwords. Its phone-sized screenshot is kept in ``test-artifacts/`` (ignored by git).
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.derive.values import FROM_COUNTERS, Power, Values
from iskra_me162.health import HealthSnapshot, PowerPoint, SinkState
from iskra_me162.jsontext import number_text
from iskra_me162.readout import MeterIdentity
from iskra_me162.simulator.model import MeterConfig
from iskra_me162.simulator.pty_meter import PtyMeter
from iskra_me162.sinks import status_page
from iskra_me162.sinks.http import HttpEndpoint, PageContext
from iskra_me162.sinks.pages import http_pages
from tests.broker import free_port
from tests.daemonproc import REPO, DaemonProcess, write_config
from tests.httpstub import DomoticzStub
from tests.readouts import derive_pair

NOW = datetime(2025, 3, 1, 14, 0, tzinfo=UTC)
NUMBER_KEYS = ("power_w", "import_power_w", "export_power_w", "import_kwh", "export_kwh")
ARTIFACTS = REPO / "test-artifacts"


# --- reading the page -------------------------------------------------------------------------


class Page(html.parser.HTMLParser):
    """What the tests look at in a page: elements by id (attributes and text), the chart's
    polylines and circles, every tag and attribute, the visible text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, dict[str, str]] = {}
        self.text_of: dict[str, str] = {}
        self.polylines: list[dict[str, str]] = []
        self.circles: list[dict[str, str]] = []
        self.svg: dict[str, str] | None = None
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.texts: list[str] = []
        self._open: list[tuple[str, str | None]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attributes))
        if tag == "svg":
            self.svg = attributes
        if tag == "polyline" and "mean" in attributes.get("class", "").split():
            self.polylines.append(attributes)
        if tag == "circle":
            self.circles.append(attributes)
        key = attributes.get("id")
        if key is not None:
            self.by_id[key] = attributes
            self.text_of[key] = ""
        if tag not in ("meta", "link", "line", "polyline", "polygon", "circle", "br", "img"):
            self._open.append((tag, key))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            opened, _ = self._open.pop()
            if opened == tag:
                break

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        for _, key in self._open:
            if key is not None:
                self.text_of[key] += data

    @property
    def visible_text(self) -> str:
        return " ".join(" ".join(self.texts).split())

    def chart_points(self) -> list[tuple[float, float]]:
        points = []
        for polyline in self.polylines:
            for pair in polyline["points"].split():
                x, y = pair.split(",")
                points.append((float(x), float(y)))
        return points


def render(context: PageContext, now: datetime = NOW) -> tuple[str, Page]:
    content_type, body = status_page.render(context, now=now)
    assert content_type == "text/html; charset=utf-8"
    text = body.decode("utf-8")
    return text, Page(text)


# --- hand-made values and health --------------------------------------------------------------


def me162_values(watts: int = 1800) -> Values:
    """An ME162 read twice a minute apart: power from its counters."""
    wh = Decimal(watts) / 60 / 1000  # kWh in a minute
    later = (Decimal("5123.456") + wh).quantize(Decimal("0.001"))
    return derive_pair(
        {"1.8.1": str(later), "1.8.2": "2310.002", "2.8.1": "812.100", "2.8.2": "0.500"},
        {"1.8.1": "5123.456", "1.8.2": "2310.002", "2.8.1": "812.100", "2.8.2": "0.500"},
    )


def history(minutes: int, end: datetime = NOW, gap: range = range(0)) -> tuple[PowerPoint, ...]:
    points = []
    for index in range(minutes):
        if index in gap:
            continue
        start = end - timedelta(minutes=minutes - index)
        mean = 500 + 400 * ((index % 120) - 60) / 60
        points.append(PowerPoint(start, mean, mean - 50, mean + 80))
    return tuple(points)


def health(values: Values | None, **changes: object) -> HealthSnapshot:
    snapshot = HealthSnapshot(
        started=NOW - timedelta(days=2),
        readouts=120,
        failures={"checksum": 2, "timeout": 1, "port": 0, "rejected": 0, "other": 0},
        last_hour_ok=58,
        last_hour_failed=2,
        last_readout=None if values is None else NOW - timedelta(seconds=3),
        last_readout_age_s=None if values is None else 3.0,
        last_error="",
        baudrate=9600,
        fallbacks=1,
        meter_counters={},
        sinks=(
            SinkState("domoticz", True, 100, 0, NOW - timedelta(seconds=3), ""),
            SinkState("mqtt", True, 100, 0, NOW - timedelta(seconds=3), ""),
        ),
        history=history(90),
        today_since=NOW.replace(hour=0, minute=0, second=20),
        today_import_wh=Decimal("4321.5"),
        today_export_wh=Decimal("0"),
    )
    return replace(snapshot, **changes)


def fresh(values: Values, **changes: object) -> PageContext:
    return PageContext(values=values, age_s=3.0, stale=False, health=health(values, **changes))


def readings_json(values: Values) -> dict:
    """``/api/v1/readings`` for ``values``, from the real endpoint's renderer."""
    from iskra_me162.sinks.http import _Snapshot

    snapshot = _Snapshot.render(values, 120.0)
    body = snapshot.readings_head + b"0" + snapshot.readings_tail
    return json.loads(body, parse_float=Decimal, parse_int=Decimal)


def assert_numbers_match(page: Page, document: dict) -> None:
    """Every number of the JSON on the page, written as the JSON writes it."""
    assert page.by_id["now"]["data-time"] == document["time"]
    for key in NUMBER_KEYS:
        value = document[key]
        expected = "null" if value is None else number_text(Decimal(value))
        assert page.by_id[key]["data-json"] == expected, key
        assert page.text_of[key] == ("—" if value is None else expected), key


# --- unit level -------------------------------------------------------------------------------


def test_the_numbers_are_the_json_numbers_as_the_json_writes_them():
    values = me162_values()
    text, page = render(fresh(values))
    document = readings_json(values)
    assert document["power_w"] is not None and document["export_kwh"] is not None
    assert_numbers_match(page, document)
    assert page.text_of["import_kwh"] == "7433.488"  # 5123.486 + 2310.002 (T1 + T2)
    assert page.text_of["export_kwh"] == "812.6"
    assert page.by_id["state"]["data-state"] == "fresh"
    assert page.text_of["today_import_kwh"] == "4.3215"
    assert page.text_of["today_export_kwh"] == "0"
    assert "Import today 4.3215 kWh Export today" in page.visible_text  # from 00:00:20:
    assert "kWh since" not in page.visible_text  # the daemon ran through midnight
    assert "T1 5123.486 · T2 2310.002" in page.visible_text  # a real two-tariff meter
    assert '<meta http-equiv="refresh" content="10">' in text
    assert "ISK ME162-0033 · 12345678" in page.visible_text


def test_power_not_known_yet_shows_a_dash_and_why():
    values = derive_pair({"1.8.0": "100.000"}, seconds=60)
    values = replace(values, net_power=None, import_power=None, power_missing="one readout only")
    _, page = render(fresh(values))
    assert_numbers_match(page, readings_json(values))
    assert page.text_of["power_w"] == "—" and page.by_id["power_w"]["data-json"] == "null"
    assert "not known yet: one readout only" in page.visible_text
    assert page.text_of["export_kwh"] == "—"  # the meter counts no export


def test_exported_power_is_negative_as_in_the_json():
    values = me162_values()
    export = Power(Decimal("250"), FROM_COUNTERS, "2.8.0", 60.0)
    values = replace(
        values,
        import_power=Power(Decimal(0), FROM_COUNTERS, "1.8.0", 60.0),
        export_power=export,
        net_power=Power(Decimal("-250"), FROM_COUNTERS, "1.8.0-2.8.0", 60.0),
    )
    _, page = render(fresh(values))
    assert_numbers_match(page, readings_json(values))
    assert page.text_of["power_w"] == "-250"
    assert "fed into the grid" in page.visible_text


def test_before_the_first_readout_it_says_so_and_shows_no_number():
    context = PageContext(values=None, age_s=None, stale=True, health=health(None, history=()))
    _, page = render(context)
    assert page.by_id["state"]["data-state"] == "none"
    assert "No reading from the meter yet" in page.visible_text
    assert not set(NUMBER_KEYS) & set(page.by_id)
    assert "no power figures yet" in page.visible_text
    assert page.by_id["chart"]["data-points"] == "0"
    assert page.text_of["last_readout"] == "none yet"


def test_without_health_the_page_still_renders():
    values = me162_values()
    _, page = render(PageContext(values=values, age_s=1.0, stale=False, health=None))
    assert_numbers_match(page, readings_json(values))
    assert "chart" not in page.by_id


def test_a_stale_reading_is_not_shown_as_current():
    values = me162_values()
    context = PageContext(values=values, age_s=725.0, stale=True, health=health(values))
    text, page = render(context)
    assert page.by_id["state"]["data-state"] == "stale"
    assert "No current reading: the latest is 12 min old" in page.visible_text
    assert not set(NUMBER_KEYS) & set(page.by_id)
    assert "today_import_kwh" not in page.by_id
    for number in ("7433.488", "812.6", "1800", "4.3215"):
        assert number not in text, number
    assert page.by_id["chart"]["data-points"] == "90"  # the history is history: still shown


def test_meter_and_error_texts_are_escaped():
    values = me162_values()
    hostile = MeterIdentity("<b>", 'ME162"><script>alert(1)</script>', "1&2")
    values = replace(values, readout=replace(values.readout, identity=hostile))
    context = fresh(
        values,
        last_error="bad answer <img src=x onerror=alert(2)> & more",
        meter_counters={"crc_<errors>": 1},
        sinks=(SinkState("domoticz", False, 1, 1, None, "HTTP 500 <iframe src=//evil>"),),
    )
    text, page = render(context)
    assert [tag for tag, _ in page.tags if tag in ("script", "img", "iframe", "b")] == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; more" in text
    assert "&lt;iframe src=//evil&gt;" in text
    assert "crc &lt;errors&gt; 1" in text
    assert page.by_id["meter"] is not None and "1&2" in page.text_of["meter"]


def test_credentials_in_error_texts_are_cut_out():
    values = me162_values()
    sinks = (
        SinkState(
            "domoticz",
            False,
            0,
            3,
            None,
            "cannot reach Domoticz at http://admin:hunter2@dz.lan:8080: connection refused",
        ),
        SinkState("mqtt", False, 0, 1, None, "broker said no: password=hunter3&token=abc123"),
    )
    text, page = render(fresh(values, sinks=sinks, last_error="rfc2217://me:hunter4@pi:2217"))
    for secret in ("hunter2", "hunter3", "hunter4", "abc123", "admin"):
        assert secret not in text, secret
    assert "http://dz.lan:8080" in page.visible_text
    assert "password=…&token=…" in page.visible_text


def test_the_chart_has_one_point_per_minute_and_stays_inside():
    values = me162_values()
    full = history(1440)
    text, page = render(fresh(values, history=full))
    points = page.chart_points()
    assert len(points) == 1440 == int(page.by_id["chart"]["data-points"])
    assert len(page.polylines) == 1
    left, right = status_page.PAD_LEFT, status_page.CHART_W - status_page.PAD_RIGHT
    top, bottom = status_page.PAD_TOP, status_page.CHART_H - status_page.PAD_BOTTOM
    assert all(left <= x <= right and top <= y <= bottom for x, y in points)
    xs = [x for x, _ in points]
    assert xs == sorted(xs)
    labels = [text for text in page.texts if text.endswith(" kW") or text.endswith(" W")]
    assert "0 kW" in labels or "0 W" in labels
    assert {"18:00", "00:00", "06:00"} <= set(page.texts)
    assert len(text.encode()) < 100_000  # bounded: the history is


def test_a_gap_in_the_history_breaks_the_line_and_a_lone_minute_is_a_dot():
    values = me162_values()

    def minute(ago: int) -> PowerPoint:
        return PowerPoint(NOW - timedelta(minutes=ago), 300.0, 250.0, 400.0)

    points = (
        tuple(minute(ago) for ago in range(100, 70, -1))  # 30 minutes
        + tuple(minute(ago) for ago in range(50, 30, -1))  # 20 minutes, after a gap
        + (minute(5),)  # alone
    )
    _, page = render(fresh(values, history=points))
    assert len(page.chart_points()) == 51 == int(page.by_id["chart"]["data-points"])
    assert [len(line["points"].split()) for line in page.polylines] == [30, 20, 1]
    assert len(page.circles) == 1  # the lone minute


def test_a_daemon_reading_every_five_minutes_gets_a_line_not_dots():
    values = me162_values()
    points = tuple(
        PowerPoint(NOW - timedelta(minutes=5 * ago), 300.0, 250.0, 400.0)
        for ago in range(288, 0, -1)
    )
    _, page = render(fresh(values, history=points))
    assert [len(line["points"].split()) for line in page.polylines] == [288]
    assert page.circles == []


def test_today_since_when_the_daemon_started_today():
    values = me162_values()
    started = NOW.replace(hour=9, minute=41)
    _, page = render(
        fresh(values, started=started, today_since=started + timedelta(seconds=3)), now=NOW
    )
    label = started.astimezone().strftime("%H:%M")
    assert f"Import today 4.3215 kWh since {label}" in page.visible_text


def test_the_page_loads_nothing_and_runs_no_script():
    values = me162_values()
    text, page = render(fresh(values, history=history(1440)))
    assert "<script" not in text.lower()
    for tag, attributes in page.tags:
        assert "src" not in attributes, tag
        assert not any(name.startswith("on") for name in attributes), tag
        if "href" in attributes:
            assert attributes["href"] in ("data:,", "/api/v1/readings"), attributes
    assert "http://" not in text and "https://" not in text
    assert "default-src 'none'" in text


def test_render_time_is_bounded():
    values = me162_values()
    context = fresh(values, history=history(1440))
    started = time.perf_counter()
    for _ in range(10):
        status_page.render(context)
    assert (time.perf_counter() - started) / 10 < 0.25  # about 10 ms on a Pi-class core


def test_the_endpoint_serves_the_page_at_the_root():
    assert http_pages()["/"] is status_page.render
    endpoint = HttpEndpoint("127.0.0.1:0", 60.0, pages=http_pages())
    endpoint.start()
    try:
        _, port = endpoint.address
        status, headers, body = fetch(port, "/")
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert "No reading from the meter yet" in Page(body.decode()).visible_text
        values = me162_values()
        endpoint.publish(
            replace(values, readout=replace(values.readout, monotonic=time.monotonic()))
        )
        _, _, body = fetch(port, "/")
        _, _, readings = fetch(port, "/api/v1/readings")
        assert_numbers_match(Page(body.decode()), json.loads(readings, parse_float=Decimal))
    finally:
        endpoint.close()


# --- the real daemon in a real Chromium -------------------------------------------------------

_install_lock = threading.Lock()


def ensure_chromium() -> str:
    """Debian's chromium, installed through apt-get when missing (as root), as tests/broker.py
    does for mosquitto."""
    with _install_lock:
        found = shutil.which("chromium")
        if found:
            return found
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(
                "chromium is not installed and cannot be installed here (needs root and "
                "apt-get): run 'apt-get install chromium' to run the browser tests"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=900)
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        found = shutil.which("chromium")
        if result.returncode != 0 or not found:
            pytest.fail(f"apt-get install chromium failed:\n{result.stdout}\n{result.stderr}")
        return found


class Chromium:
    """``chromium --headless=new`` runs, one process each, with console messages on stderr."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile

    def run(self, url: str, *args: str) -> tuple[str, list[str]]:
        """stdout and the console messages of loading ``url``."""
        command = [
            self.binary,
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "--enable-logging=stderr",
            "--v=0",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),
            *args,
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
        return result.stdout, console

    def dump_dom(self, url: str) -> tuple[str, list[str]]:
        return self.run(url, "--dump-dom")

    def screenshot(self, url: str, path: Path, width: int = 412, height: int = 915) -> list[str]:
        _, console = self.run(url, f"--screenshot={path}", f"--window-size={width},{height}")
        return console


def fetch(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


DZ_USER, DZ_PASSWORD = "dz-user-7f3a", "dz-pass-91c2"
MQTT_USER, MQTT_PASSWORD = "mq-user-55e1", "mq-pass-0b7d"
INTERVAL = 3


def test_the_daemon_page_in_chromium(tmp_path):
    """One daemon, one simulated ME162, Domoticz refusing the login and no MQTT broker (so both
    sinks' errors are on the page), credentials for both in the config; then Chromium."""
    browser = Chromium(ensure_chromium(), tmp_path / "chromium-profile")
    # The console check must be able to fail: a page with a script error shows in it.
    _, console = browser.dump_dom("data:text/html,<p>x</p><script>notDefined()</script>")
    assert any("notDefined" in line for line in console), console

    meter = PtyMeter(link=str(tmp_path / "ttyIR"), config=MeterConfig(import_w=1800, speedup=4.0))
    meter.start()
    http_port = free_port()
    with DomoticzStub(username="someone-else", password="not-this", devices=(7,)) as domoticz:
        config = write_config(
            tmp_path / "iskra-me162.conf",
            port=str(meter.link),
            update_interval=INTERVAL,
            use_highspeed=True,
            print_debug=1,
            state_file=str(tmp_path / "state.json"),
            http_listen=f"127.0.0.1:{http_port}",
            domoticzserver=domoticz.server,
            domoticzusername=DZ_USER,
            domoticzpassword=DZ_PASSWORD,
            device_index=7,
            mqtt_host="127.0.0.1",
            mqtt_port=free_port(),  # nobody listens
            mqtt_username=MQTT_USER,
            mqtt_password=MQTT_PASSWORD,
        )
        daemon = DaemonProcess(config)
        url = f"http://127.0.0.1:{http_port}/"
        try:
            seen = watch_until_power(daemon, http_port, readouts_with_power=2)
            dom, document, console = page_with_json(browser, url, http_port)
            raw = fetch(http_port, "/")[2].decode()
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "status-page.png"
            shot.unlink(missing_ok=True)
            screenshot_console = browser.screenshot(url, shot)
        finally:
            status, _ = daemon.stop()
            daemon.close()
            meter.stop()
    assert status == 0, daemon.output

    assert console == [] and screenshot_console == [], console + screenshot_console
    page = Page(dom)
    assert page.by_id["state"]["data-state"] == "fresh", page.visible_text
    assert_numbers_match(page, document)
    assert document["power_w"] is not None

    # The chart: one point per minute with power. The test saw every readout (it polls faster
    # than the daemon reads), so it knows how many minutes' buckets the daemon opened.
    assert len(page.chart_points()) == int(page.by_id["chart"]["data-points"])
    assert len(page.chart_points()) == expected_minutes(seen), (seen, page.polylines)

    # The link and the sinks as the daemon saw them.
    assert int(page.text_of["last_hour"].split()[0]) >= len(seen)
    assert page.text_of["baudrate"] == "9600 Bd"
    sinks = {attributes["data-sink"]: attributes for _, attributes in page.tags
             if "data-sink" in attributes}  # fmt: skip
    assert sinks["domoticz"]["data-ok"] == "false" and sinks["mqtt"]["data-ok"] == "false"
    assert "HTTP 401" in page.visible_text and "MQTT broker at 127.0.0.1" in page.visible_text
    connected = [a["data-connected"] for _, a in page.tags if "data-connected" in a]
    assert connected == ["false"] and "not connected" in page.visible_text  # MQTT only

    # No secret from the configuration, in the served page or the rendered DOM.
    for secret in (DZ_USER, DZ_PASSWORD, MQTT_USER, MQTT_PASSWORD):
        assert secret not in raw and secret not in dom, secret
    assert DZ_PASSWORD in config.read_text()  # the check above checks something

    assert png_size(shot) == (412, 915)
    assert shot.stat().st_size > 10_000, "an empty screenshot"
    print(f"screenshot: {shot}")


def watch_until_power(
    daemon: DaemonProcess, port: int, readouts_with_power: int, timeout: float = 40.0
) -> dict[str, Decimal]:
    """Poll ``/api/v1/readings`` until ``readouts_with_power`` readouts had a power; returns
    the time of every readout seen with power and that power. Before the first readout the
    page must say there is none (checked when the JSON says so before and after)."""
    seen: dict[str, Decimal] = {}
    checked_empty = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = fetch(port, "/api/v1/readings") if port_open(port) else (0, {}, b"")
        if status == 503 and not checked_empty and b"no reading" in body:
            page = fetch(port, "/")[2].decode()
            if b"no reading" in fetch(port, "/api/v1/readings")[2]:
                assert "No reading from the meter yet" in page
                checked_empty = True
        if status == 200:
            document = json.loads(body, parse_float=Decimal)
            if document["power_w"] is not None:
                seen[document["time"]] = document["power_w"]
                if len(seen) >= readouts_with_power:
                    return seen
        time.sleep(0.2)
    raise AssertionError(f"no {readouts_with_power} readouts with power:\n{daemon.output}")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def page_with_json(browser: Chromium, url: str, port: int) -> tuple[str, dict, list[str]]:
    """Chromium's DOM of the page and the JSON of the same readout, fetched around it."""
    for _ in range(5):
        before = json.loads(fetch(port, "/api/v1/readings")[2], parse_float=Decimal)
        dom, console = browser.dump_dom(url)
        after = json.loads(fetch(port, "/api/v1/readings")[2], parse_float=Decimal)
        shown = Page(dom).by_id.get("now", {}).get("data-time")
        for document in (before, after):
            if document.get("time") == shown:
                return dom, document, console
    raise AssertionError(f"the page never showed the readout of the JSON around it:\n{dom}")


def expected_minutes(seen: dict[str, Decimal]) -> int:
    """The daemon's one-minute buckets for readouts at these times (a new one 60 s after the
    last one opened)."""
    times = sorted(datetime.fromisoformat(when.replace("Z", "+00:00")) for when in seen)
    buckets, opened = 0, None
    for moment in times:
        if opened is None or (moment - opened).total_seconds() >= 60:
            buckets, opened = buckets + 1, moment
    return buckets
