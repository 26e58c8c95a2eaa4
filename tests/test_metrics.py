"""``GET /metrics``: a real endpoint on 127.0.0.1, parsed with prometheus_client's own parser,
the numbers checked against ``/api/v1/readings`` and the daemon's health record; and the real
daemon serving it."""

from __future__ import annotations

import http.client
import json
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="prometheus_client is not installed (scripts/bootstrap --test)"
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from iskra_me162.errors import ChecksumError, MeterTimeout  # noqa: E402
from iskra_me162.health import Health  # noqa: E402
from iskra_me162.sinks.http import HttpEndpoint  # noqa: E402
from iskra_me162.sinks.pages import http_pages  # noqa: E402
from tests.test_http_endpoint import fetch, me162  # noqa: E402


def parsed(body: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} from the text format, by Prometheus' parser."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def families(body: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(body.decode("utf-8"))}


@pytest.fixture
def served():
    health = Health()
    endpoint = HttpEndpoint("127.0.0.1:0", 60.0, pages=http_pages(), health=health)
    endpoint.start()
    try:
        yield endpoint, health
    finally:
        endpoint.close()


def test_metrics_equal_the_json_and_the_health_record(served):
    endpoint, health = served
    values = me162()
    health.readout_failed(ChecksumError("BCC wrong"))
    health.readout_failed(MeterTimeout("no answer"))
    health.readout_ok(baudrate=9600)
    health.derived(values)
    health.pushed("http")
    health.pushed("domoticz", "HTTP 401")
    health.pushed("mqtt", connected=False)
    endpoint.publish(values)
    answer = fetch(endpoint, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parsed(answer.body)
    readings = fetch(endpoint, "/api/v1/readings").json()
    energy = samples["iskra_me162_energy_wh_total"]
    assert (
        Decimal(str(energy[(("direction", "import"), ("tariff", "total"))]))
        == Decimal(str(readings["import_kwh"])) * 1000
    )
    assert energy[(("direction", "import"), ("tariff", "1"))] == 5123101.0
    assert energy[(("direction", "export"), ("tariff", "total"))] == 1532007.7
    power = samples["iskra_me162_power_watts"]
    assert power[(("direction", "net"), ("source", "meter"))] == readings["power_w"]
    assert power[(("direction", "import"), ("source", "meter"))] == readings["import_power_w"]
    failures = samples["iskra_me162_read_failures_total"]
    assert failures[(("kind", "checksum"),)] == 1 and failures[(("kind", "timeout"),)] == 1
    assert samples["iskra_me162_checksum_errors_total"][()] == 1
    assert samples["iskra_me162_readouts_total"][()] == 1
    assert samples["iskra_me162_baud_rate"][()] == 9600
    assert samples["iskra_me162_sink_up"] == {
        (("sink", "domoticz"),): 0,
        (("sink", "http"),): 1,
        (("sink", "mqtt"),): 1,
    }
    assert samples["iskra_me162_sink_connected"] == {(("sink", "mqtt"),): 0}
    assert samples["iskra_me162_sink_errors_total"][(("sink", "domoticz"),)] == 1
    last = samples["iskra_me162_last_success_timestamp_seconds"][()]
    assert abs(last - time.time()) < 60
    info = samples["iskra_me162_meter_info"]
    ((labels, value),) = info.items()
    assert value == 1 and dict(labels)["manufacturer"] == readings["meter"]["manufacturer"]
    kinds = families(answer.body)
    assert kinds["iskra_me162_energy_wh"] == "counter"
    assert kinds["iskra_me162_power_watts"] == "gauge"


def test_no_energy_or_power_before_the_first_reading_or_when_stale():
    health = Health()
    endpoint = HttpEndpoint("127.0.0.1:0", 1.0, pages=http_pages(), health=health)
    endpoint.start()
    try:
        before = parsed(fetch(endpoint, "/metrics").body)
        assert "iskra_me162_energy_wh_total" not in before
        assert before["iskra_me162_readouts_total"][()] == 0
        endpoint.publish(me162(age=5.0))  # older than stale_after
        stale = parsed(fetch(endpoint, "/metrics").body)
        assert "iskra_me162_energy_wh_total" not in stale
        assert "iskra_me162_power_watts" not in stale
        assert stale["iskra_me162_reading_age_seconds"][()] >= 5.0
    finally:
        endpoint.close()


def test_the_daemon_serves_metrics_that_parse_and_match_its_readings(tmp_path):
    from tests.daemonproc import DaemonProcess, write_config
    from tests.test_daemon_sml_e2e import free_port, get, wait_http

    port = free_port()
    daemon = DaemonProcess(
        write_config(
            tmp_path / "metrics.conf",
            port="sim://me162",
            http_listen=f"127.0.0.1:{port}",
            update_interval=60,
            state_file="",
        )
    )
    try:
        wait_http(port)
        deadline = time.monotonic() + 20
        while get(port, "/healthz")[0] != 200:
            assert time.monotonic() < deadline, daemon.output
            time.sleep(0.2)
        _status, readings = get(port, "/api/v1/readings")
        samples = parsed(fetch_metrics(port))
        energy = samples["iskra_me162_energy_wh_total"]
        total = energy[(("direction", "import"), ("tariff", "total"))]
        assert Decimal(str(total)) == Decimal(str(readings["import_kwh"])) * 1000
        assert samples["iskra_me162_readouts_total"][()] >= 1
        assert samples["iskra_me162_sink_up"][(("sink", "http"),)] == 1
    finally:
        status_code, _ = daemon.stop()
        daemon.close()
    assert status_code == 0, daemon.output


def test_the_grafana_dashboard_uses_only_metrics_we_serve(served):
    """examples/grafana-dashboard.json: every metric its queries name is in /metrics."""
    endpoint, health = served
    values = me162()
    health.readout_ok(baudrate=9600)
    health.derived(values)
    health.pushed("http")
    endpoint.publish(values)
    served_names = {
        family.name
        for family in text_string_to_metric_families(fetch(endpoint, "/metrics").body.decode())
    }
    dashboard = json.loads(
        (Path(__file__).parents[1] / "examples" / "grafana-dashboard.json").read_text()
    )
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for query in queries for name in re.findall(r"\biskra_me162_\w+", query)}
    assert used, "the dashboard queries no metric"
    # A counter family is named without _total; its samples (what queries use) have it.
    missing = {name for name in used if name.removesuffix("_total") not in served_names}
    assert not missing, f"the dashboard uses metrics /metrics does not serve: {missing}"


def test_a_meter_that_stays_at_300_baud_counts_as_a_fallback(tmp_path):
    """A meter that proposes 9600 Bd and stays at 300: the failed high-speed readout shows in
    /metrics as a fall-back, and the next readout at 300 Bd as the baud rate in use."""
    from iskra_me162.simulator.model import Faults, MeterConfig
    from iskra_me162.simulator.pty_meter import PtyMeter
    from tests.daemonproc import DaemonProcess, write_config
    from tests.test_daemon_sml_e2e import free_port, wait_http

    link = tmp_path / "ttyIR"
    port = free_port()
    with PtyMeter(link=str(link), config=MeterConfig(faults=Faults(ignore_baud=True))):
        daemon = DaemonProcess(
            write_config(
                tmp_path / "stubborn.conf",
                port=str(link),
                http_listen=f"127.0.0.1:{port}",
                update_interval=1,
                state_file="",
            )
        )
        try:
            wait_http(port)
            deadline = time.monotonic() + 60
            while True:
                samples = parsed(fetch_metrics(port))
                if samples.get("iskra_me162_baud_rate", {}).get(()) == 300:
                    break
                assert time.monotonic() < deadline, daemon.output
                time.sleep(0.5)
            assert samples["iskra_me162_highspeed_fallbacks_total"][()] >= 1
            assert (
                samples["iskra_me162_read_failures_total"][(("kind", "timeout"),)]
                + samples["iskra_me162_read_failures_total"][(("kind", "other"),)]
                >= 1
            )
        finally:
            status_code, _ = daemon.stop()
            daemon.close()
    assert status_code == 0, daemon.output


def fetch_metrics(port: int) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read()
    finally:
        connection.close()
