"""The Domoticz sink against a real HTTP server on 127.0.0.1 (tests/httpstub.py): what it sends
for which values. The HTTP client itself: tests/test_domoticz_client.py and
tests/test_domoticz_connection.py; the same values in every sink: tests/test_one_truth.py."""

from __future__ import annotations

import pytest

from iskra_me162.errors import SinkError
from iskra_me162.p1 import P1Values
from iskra_me162.sinks.domoticz import DomoticzSink
from tests.httpstub import DomoticzStub
from tests.readouts import derive_pair, make_deriver, make_readout

USER = "meterman"
PASSWORD = "pa55-W0rd:with;odd&chars%"  # distinctive, with characters that URLs would mangle
IDX = 42
WITH_POWER = {  # a meter that reports its power: sent at once
    "1.8.1": "8048.375",
    "1.8.2": "10.5",
    "2.8.0": "1.25",
    "1.7.0": ("908", "W"),
    "2.7.0": ("0", "W"),
}


@pytest.fixture
def stub():
    with DomoticzStub(devices={IDX}) as server:
        yield server


def sink_for(server: str, **options: object) -> DomoticzSink:
    options.setdefault("timeout", 5.0)
    return DomoticzSink(server, IDX, **options)  # type: ignore[arg-type]


def test_publish_sends_the_p1_update(stub):
    sink = sink_for(stub.server)
    sent = sink.publish(derive_pair(WITH_POWER))
    sink.close()
    assert sent == P1Values(8048375, 10500, 1250, 0, 908, 0)
    (request,) = stub.requests
    assert request.method == "GET" and request.path == "/json.htm"
    assert request.raw_query == (
        f"type=command&param=udevice&idx={IDX}&nvalue=0&svalue=8048375;10500;1250;0;908;0"
    )
    assert request.accepted and request.svalue_well_formed
    assert "Authorization" not in request.headers
    assert stub.svalue(IDX) == "8048375;10500;1250;0;908;0"


def test_nothing_is_sent_without_a_power_figure_then_power_from_counters(stub):
    # An ME162 has no power register: the first readout has no power (P1 needs one), the
    # next one, a minute later, has it from the change of the counter.
    deriver = make_deriver()
    sink = sink_for(stub.server)
    assert sink.publish(deriver.derive(make_readout(0, {"1.8.0": "100.000"}))) is None
    assert stub.requests == []
    sent = sink.publish(deriver.derive(make_readout(60, {"1.8.0": "100.050"})))
    assert sent is not None and sent.svalue == "100050;0;0;0;3000;0"
    assert [r.svalue for r in stub.updates()] == ["100050;0;0;0;3000;0"]
    sink.close()


def test_swap_tariffs(stub):
    sink_for(stub.server, swap_tariffs=True).publish(derive_pair(WITH_POWER))
    assert stub.svalue(IDX) == "10500;8048375;0;1250;908;0"


def test_values_without_import_energy_are_a_sink_error_and_nothing_is_sent(stub):
    values = derive_pair({"2.8.0": "1.000", "2.7.0": ("100", "W")})
    with pytest.raises(SinkError, match="no import energy register"):
        sink_for(stub.server).publish(values)
    assert stub.requests == []


def test_a_failed_push_is_a_sink_error_and_the_next_one_goes_out(stub):
    sink = sink_for(stub.server)
    stub.failure = "500"
    with pytest.raises(SinkError, match="HTTP 500"):
        sink.publish(derive_pair(WITH_POWER))
    stub.failure = None
    assert sink.publish(derive_pair(WITH_POWER)) is not None
    assert len(stub.updates()) == 1


@pytest.mark.parametrize("index", [-1, True, 1.0, "42"])
def test_sink_rejects_a_bad_device_index(index):
    with pytest.raises(ValueError, match="device index"):
        DomoticzSink("host:8080", index)  # type: ignore[arg-type]


def test_sink_rejects_a_bad_server_and_timeout():
    with pytest.raises(ValueError, match="no valid host name"):
        DomoticzSink("host!:8080", IDX)
    with pytest.raises(ValueError, match="timeout"):
        DomoticzSink("host:8080", IDX, timeout=0)


def test_device_index_zero_is_left_to_domoticz(stub):
    with pytest.raises(SinkError, match=r"idx 0 .*status ERR"):
        DomoticzSink(stub.server, 0).publish(derive_pair(WITH_POWER))


def test_the_sink_hands_its_login_to_the_client():
    with DomoticzStub(username=USER, password=PASSWORD, devices={IDX}) as server:
        sink = sink_for(server.server, username=USER, password=PASSWORD)
        sink.publish(derive_pair(WITH_POWER))
        (request,) = server.requests
        assert request.auth_user == USER and request.authorized and request.accepted
        assert PASSWORD not in repr(sink)
