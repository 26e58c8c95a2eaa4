"""The derive stage: energy, power from registers and from counter change, plausibility, and
the state file it owns."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest

from iskra_me162.derive import FROM_COUNTERS, FROM_METER, spans_for
from iskra_me162.derive.counters import CounterSnapshot, CounterWindow
from iskra_me162.derive.registers import register_power
from iskra_me162.derive.stage import SHAPE_CONFIRMATIONS
from iskra_me162.errors import ReadoutRejected
from iskra_me162.readout import MeterIdentity
from tests.readouts import START, derive_pair, make_deriver, make_readout

W = Decimal


def watts(power):
    return None if power is None else power.watts


# --- power from registers: one rule, net = import - export ---------------------------------------

REGISTER_CASES = [
    # registers, (import W, export W, net W)
    ({}, (None, None, None)),
    ({"1.7.0": "0.3"}, (300, None, None)),
    ({"2.7.0": "0.5"}, (None, 500, None)),
    ({"1.7.0": "0.3", "2.7.0": "0.1"}, (300, 100, 200)),
    ({"16.7.0": "-0.2"}, (0, 200, -200)),
    ({"16.7.0": "0.45"}, (450, 0, 450)),
    ({"1.7.0": "0.3", "16.7.0": "-0.2"}, (300, 500, -200)),
    ({"2.7.0": "0.5", "16.7.0": "0.1"}, (600, 500, 100)),
    ({"1.7.0": "0.3", "2.7.0": "0.5", "16.7.0": "-0.2"}, (300, 500, -200)),
    ({"1.7.0": "-0.25"}, (0, 250, -250)),  # a signed 1.7.0
    ({"1.7.0": "-0.25", "2.7.0": "0"}, (0, 0, 0)),  # not signed when 2.7.0 is there
]


@pytest.mark.parametrize(("registers", "expected"), REGISTER_CASES)
def test_register_power(registers, expected):
    readout = make_readout(1, registers)
    found = tuple(watts(p) for p in register_power(readout))
    assert found == tuple(None if e is None else W(e) for e in expected)


def test_register_power_says_where_it_came_from():
    importing, exporting, net = register_power(make_readout(1, {"1.7.0": "0.3", "16.7.0": "-0.2"}))
    assert (importing.source, importing.registers) == (FROM_METER, "1.7.0")
    assert exporting.registers == "1.7.0-16.7.0"
    assert net.registers == "16.7.0"


def test_power_register_in_another_unit_is_ignored():
    assert register_power(make_readout(1, {"1.7.0": ("5", "A")})) == (None, None, None)


# --- energy -------------------------------------------------------------------------------------


def test_energy_is_exact_wh_with_tariffs_as_sent():
    values = derive_pair(
        {"1.8.0": "0008048.375", "1.8.1": "8000", "1.8.2": "48.375", "2.8.0": "0.001"}
    )
    assert values.import_energy.total_wh == W("8048375")
    assert values.import_energy.tariffs_wh == ((1, W("8000000")), (2, W("48375")))
    assert values.import_energy.source == "1.8.0"
    assert values.export_energy.total_wh == W("1")
    assert values.import_energy.has_tariffs


def test_energy_total_is_the_sum_of_tariffs_without_a_total_register():
    values = derive_pair({"1.8.1": "100.5", "1.8.2": "200.25"})
    assert values.import_energy.total_wh == W("300750")
    assert values.import_energy.source == "1.8.1+1.8.2"
    assert values.export_energy is None


@pytest.mark.parametrize(
    ("registers", "has_tariffs"),
    [
        ({"1.8.0": "15338.5557", "1.8.1": "15338.5557", "1.8.2": "0"}, False),  # MT175
        ({"1.8.0": "15338.5557", "1.8.1": "15338.5557"}, False),
        ({"1.8.0": "100"}, False),
        ({"1.8.0": "300", "1.8.1": "100", "1.8.2": "200"}, True),
        ({"1.8.1": "100", "1.8.2": "0"}, False),  # the second tariff never counted yet
        ({"1.8.0": "300", "1.8.1": "0", "1.8.2": "300"}, False),  # ZPA GH305: all in tariff 2
    ],
)
def test_tariffs_are_real_only_when_they_say_more_than_the_total(registers, has_tariffs):
    assert derive_pair(registers).import_energy.has_tariffs is has_tariffs


@pytest.mark.parametrize(
    ("registers", "message"),
    [
        ({"1.8.0": ("5", "kW")}, "not an energy unit"),
        ({"1.8.0": "-1"}, "negative"),
        ({"1.8.0": "1", "2.8.1": "-0.001"}, "negative"),
    ],
)
def test_unusable_counters_reject_the_readout(registers, message):
    with pytest.raises(ReadoutRejected, match=message):
        make_deriver().derive(make_readout(1, registers))


def test_a_readout_without_energy_registers_still_has_register_power():
    values = make_deriver().derive(make_readout(1, {"16.7.0": ("123.4", "W")}))
    assert values.import_energy is None
    assert watts(values.net_power) == W("123.4")


# --- power from counter change -------------------------------------------------------------------


def test_counter_power_over_the_interval():
    values = derive_pair({"1.8.0": "100.0075"}, {"1.8.0": "100.000"}, seconds=60)
    assert watts(values.import_power) == W(450)
    assert values.import_power.source == FROM_COUNTERS
    assert values.import_power.registers == "1.8.0"
    assert values.import_power.span_s == 60
    # The meter counts no export: there is none.
    assert watts(values.export_power) == 0
    assert watts(values.net_power) == W(450)
    assert values.power_missing == ""


def test_counter_power_is_in_whole_watts_rounded_half_up():
    assert watts(derive_pair({"1.8.0": "100.0075"}, {"1.8.0": "100"}, 61).import_power) == 443
    assert watts(derive_pair({"1.8.0": "100.001"}, {"1.8.0": "100"}, 48).import_power) == 75


def test_counter_power_in_both_directions():
    values = derive_pair(
        {"1.8.0": "100.001", "2.8.0": "50.004"}, {"1.8.0": "100.000", "2.8.0": "50.000"}, 36
    )
    assert (watts(values.import_power), watts(values.export_power)) == (W(100), W(400))
    assert watts(values.net_power) == W(-300)


def test_first_readout_has_no_power_and_says_why():
    values = make_deriver().derive(make_readout(1, {"1.8.0": "100"}))
    assert values.import_power is None and values.net_power is None
    assert "no earlier readout" in values.power_missing


def test_power_from_a_short_interval_is_never_published():
    # A reload that read the meter seconds after the last readout: 1 Wh in 8 s is not 450 W.
    values = derive_pair({"1.8.0": "100.001"}, {"1.8.0": "100.000"}, seconds=8)
    assert values.import_power is None
    assert "at least 30 s" in values.power_missing


def test_short_interval_uses_the_readout_before_when_that_is_old_enough():
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "100.000"}))
    deriver.derive(make_readout(60, {"1.8.0": "100.0075"}))
    values = deriver.derive(make_readout(68, {"1.8.0": "100.0085"}))
    assert values.import_power.span_s == 68  # from the readout at 0, not at 60
    assert watts(values.import_power) == W("0.0085") * 1000 * 3600 / 68


def test_push_meter_gets_power_over_a_sliding_window():
    deriver = make_deriver()
    figures = []
    for second in range(0, 121):  # one frame a second at 300 W: 1 Wh every 12 s
        wh = W(second * 300) / 3600
        values = deriver.derive(make_readout(second, {"1.8.0": (str(wh), "Wh")}))
        figures.append(values.import_power)
    assert all(p is None for p in figures[:30])
    assert all(p is not None and p.span_s == 30 and watts(p) == 300 for p in figures[30:])
    assert len(deriver._window.snapshots) <= 32  # bounded by the window, not by uptime


def test_gap_longer_than_max_span_gives_no_power():
    values = derive_pair({"1.8.0": "101"}, {"1.8.0": "100"}, seconds=901)
    assert values.import_power is None
    assert "901 s old" in values.power_missing


def test_meter_with_import_register_gets_export_from_counters():
    values = derive_pair(
        {"1.7.0": "0.2", "1.8.0": "10", "2.8.0": "5.006"},
        {"1.7.0": "0.2", "1.8.0": "10", "2.8.0": "5"},
    )
    assert values.import_power.source == FROM_METER
    assert (values.export_power.source, watts(values.export_power)) == (FROM_COUNTERS, W(360))
    assert watts(values.net_power) == W(-160)
    assert values.net_power.source == "mixed"


def test_spans_follow_the_update_interval():
    assert spans_for(60) == (30, 900)
    assert spans_for(300) == (150, 3000)


def test_window_rejects_nonsense_spans():
    with pytest.raises(ValueError):
        CounterWindow(0, 10)
    with pytest.raises(ValueError):
        CounterWindow(20, 10)


# --- plausibility --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("later", "reason"),
    [
        ({"1.8.0": "99.999"}, "went backwards"),
        ({"1.8.0": "2100"}, "jumped by"),
    ],
)
def test_implausible_counters_reject_the_readout_even_with_power_registers(later, reason):
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "100", "1.7.0": "0.1"}))
    with pytest.raises(ReadoutRejected, match=reason):
        deriver.derive(make_readout(60, later | {"1.7.0": "0.1"}))
    # The rejected readout is the new reference: the next consistent one is published.
    values = deriver.derive(make_readout(120, {"1.8.0": later["1.8.0"], "1.7.0": "0.1"}))
    assert watts(values.import_power) == 100


def test_another_meter_starts_afresh():
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "100"}))
    other = MeterIdentity("ISK", "ME162-0033", "87654321")
    with pytest.raises(ReadoutRejected, match="meter changed"):
        deriver.derive(make_readout(60, {"1.8.0": "5"}, identity=other))


def test_a_register_left_out_holds_the_readout_back(caplog):
    deriver = make_deriver()
    full = {"1.8.1": "100", "1.8.2": "200"}
    deriver.derive(make_readout(0, full))
    with pytest.raises(ReadoutRejected, match=r"held back.*missing: 1\.8\.2"):
        deriver.derive(make_readout(60, {"1.8.1": "100.001"}))
    caplog.set_level(logging.WARNING)
    values = deriver.derive(make_readout(120, {"1.8.1": "100.002", "1.8.2": "200"}))
    assert values.import_energy.tariff_wh(2) == W(200000)
    assert "usual energy registers again" in caplog.text


def test_a_new_register_set_becomes_normal_after_confirmations():
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "100"}))
    for n in range(1, SHAPE_CONFIRMATIONS):
        with pytest.raises(ReadoutRejected):
            deriver.derive(make_readout(60 * n, {"1.8.0": "100", "2.8.0": "1"}))
    # Confirmed; the register set changed, so the counters start afresh once.
    with pytest.raises(ReadoutRejected, match="energy registers changed"):
        deriver.derive(make_readout(60 * SHAPE_CONFIRMATIONS, {"1.8.0": "100", "2.8.0": "1"}))
    values = deriver.derive(
        make_readout(60 * SHAPE_CONFIRMATIONS + 60, {"1.8.0": "100", "2.8.0": "1"})
    )
    assert watts(values.import_power) == 0


def test_the_same_readout_twice_gives_the_same_values():
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "100"}))
    readout = make_readout(60, {"1.8.0": "100.0075"})
    assert deriver.derive(readout) is deriver.derive(readout)


# --- the state file ------------------------------------------------------------------------------


def test_state_file_is_written_without_any_sink_and_power_continues_after_a_restart(tmp_path):
    path = tmp_path / "state"
    first = make_deriver(state_path=str(path))
    first.derive(make_readout(0, {"1.8.0": "100.000"}))
    assert path.exists()  # after the first readout
    first.derive(make_readout(60, {"1.8.0": "100.0075"}))
    first.close()
    document = json.loads(path.read_text())
    assert document["version"] == 2
    assert [s["import_wh"] for s in document["snapshots"]] == ["100000.000", "100007.5000"]

    restarted = make_deriver(state_path=str(path))  # a few seconds later
    values = restarted.derive(make_readout(65, {"1.8.0": "100.00825"}))
    assert values.import_power.span_s == 65  # from the older snapshot: long enough
    assert watts(values.import_power) == 457  # 8.25 Wh in 65 s, in whole watts


def test_state_file_of_another_boot_is_not_used(tmp_path, caplog):
    path = tmp_path / "state"
    make_deriver(state_path=str(path)).derive(make_readout(0, {"1.8.0": "100"}))
    values = make_deriver(state_path=str(path), boot_id="boot-b").derive(
        make_readout(60, {"1.8.0": "100.0075"})
    )
    assert values.import_power is None
    assert "before a reboot" in values.power_missing


def test_state_file_is_written_at_most_once_per_min_span_and_at_close(tmp_path):
    path = tmp_path / "state"

    def saved_times():
        return [s["monotonic"] for s in json.loads(path.read_text())["snapshots"]]

    deriver = make_deriver(state_path=str(path))
    deriver.derive(make_readout(0, {"1.8.0": "100"}))
    assert saved_times() == [0]
    deriver.derive(make_readout(10, {"1.8.0": "100"}))  # a push meter's next frame
    assert saved_times() == [0]
    deriver.derive(make_readout(30, {"1.8.0": "100"}))
    assert saved_times() == [0, 10, 30]
    deriver.derive(make_readout(35, {"1.8.0": "100"}))
    assert saved_times() == [0, 10, 30]
    deriver.close()
    assert saved_times()[-1] == 35


def test_dry_run_deriver_reads_but_never_writes(tmp_path):
    path = tmp_path / "state"
    make_deriver(state_path=str(path)).derive(make_readout(0, {"1.8.0": "100.000"}))
    before = path.read_bytes()
    deriver = make_deriver(state_path=str(path), save_state=False)
    values = deriver.derive(make_readout(60, {"1.8.0": "100.0075"}))
    deriver.close()
    assert watts(values.import_power) == 450
    assert path.read_bytes() == before


def test_version_1_state_file_is_read(tmp_path):
    path = tmp_path / "state"
    path.write_text(
        json.dumps(
            {
                "format": "iskra-me162-state",
                "version": 1,
                "meter_id": "12345678",
                "sources": "1.8.0|-",
                "import_wh": "100000",
                "export_wh": None,
                "boot_id": "boot-a",
                "monotonic": 0.0,
                "wall_time": START.isoformat(),
                "sent": {"u1": 100000, "u2": 0, "r1": 0, "r2": 0},
            }
        )
    )
    values = make_deriver(state_path=str(path)).derive(make_readout(60, {"1.8.0": "100.0075"}))
    assert watts(values.import_power) == 450


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        '{"format": "other"}',
        '{"format": "iskra-me162-state", "version": 9}',
        '{"format": "iskra-me162-state", "version": 2, "boot_id": "boot-a", "meter_id": "m",'
        ' "sources": "1.8.0|-", "snapshots": []}',
        '{"format": "iskra-me162-state", "version": 2, "boot_id": "boot-a", "meter_id": "m",'
        ' "sources": "1.8.0|-", "snapshots": [{"import_wh": "-1", "export_wh": null,'
        ' "monotonic": 1, "wall_time": "2025-01-01T00:00:00+00:00"}]}',
        '{"format": "iskra-me162-state", "version": 2, "boot_id": "boot-a", "meter_id": "m",'
        ' "sources": "1.8.0|-", "snapshots": [{"import_wh": "1", "export_wh": null,'
        ' "monotonic": 5, "wall_time": "2025-01-01T00:00:00+00:00"}, {"import_wh": "1",'
        ' "export_wh": null, "monotonic": 4, "wall_time": "2025-01-01T00:00:00+00:00"}]}',
    ],
)
def test_bad_state_file_is_ignored_with_a_warning_and_replaced(tmp_path, caplog, content):
    path = tmp_path / "state"
    path.write_text(content)
    caplog.set_level(logging.WARNING)
    deriver = make_deriver(state_path=str(path))
    values = deriver.derive(make_readout(60, {"1.8.0": "100"}))
    assert values.import_power is None
    assert "state file" in caplog.text or str(path) in caplog.text
    assert json.loads(path.read_text())["version"] == 2


def test_snapshot_round_trip_keeps_exact_energy(tmp_path):
    path = tmp_path / "state"
    deriver = make_deriver(state_path=str(path))
    deriver.derive(make_readout(0, {"1.8.0": "0008048.3751", "2.8.0": "0.0001"}))
    saved = json.loads(path.read_text())["snapshots"][0]
    assert (saved["import_wh"], saved["export_wh"]) == ("8048375.1000", "0.1000")
    assert CounterSnapshot.__slots__  # a plain, slotted value type


# --- behaviour kept from the P1Calculator tests (old tests/test_p1.py) ----------------------------


def test_historic_billing_periods_are_not_mistaken_for_current_registers():
    values = derive_pair({"1-0:1.8.0*255": "100.000", "1-0:1.8.0*07": "50.000"})
    assert values.import_energy.total_wh == W(100000)


def test_negative_power_registers_are_clamped_in_both_directions():
    readout = make_readout(1, {"1.7.0": ("-3", "W"), "2.7.0": ("-1", "W")})
    assert tuple(watts(p) for p in register_power(readout)) == (0, 0, 0)


def test_counter_power_from_the_sum_of_all_tariffs_without_a_total():
    earlier = {"1.8.1": "1.000", "1.8.2": "2.000", "1.8.3": "0.500"}
    later = {"1.8.1": "1.004", "1.8.2": "2.004", "1.8.3": "0.502"}  # tariff 3 counts too
    values = derive_pair(later, earlier, seconds=36)
    assert watts(values.import_power) == 1000  # 10 Wh in 36 s
    assert values.import_power.registers == "1.8.1+1.8.2+1.8.3"


def test_power_comes_from_the_previous_readout_not_an_older_one():
    # Domoticz down for an hour makes no difference: every readout goes through the derive
    # stage, and the power is that of the last interval, not the average since a push worked.
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "100.000"}))
    deriver.derive(make_readout(1800, {"1.8.0": "101.500"}))  # 3 kW for half an hour
    values = deriver.derive(make_readout(1860, {"1.8.0": "101.502"}))  # then 120 W
    assert watts(values.import_power) == 120


@pytest.mark.parametrize(
    ("before", "after", "reason", "then", "power"),
    [
        (
            {"1.8.0": "5000.000"},
            {"1.8.0": "4999.000"},
            "import counter went backwards by 1000 Wh",
            {"1.8.0": "4999.010"},
            (600, 0),
        ),
        (  # meter replaced: both counters back to 0
            {"1.8.0": "25000.000", "2.8.0": "3000.000"},
            {"1.8.0": "0.000", "2.8.0": "0.000"},
            "meter replaced or reset",
            {"1.8.0": "0.010", "2.8.0": "0.000"},
            (600, 0),
        ),
        (
            {"1.8.0": "1.000", "2.8.0": "9.000"},
            {"1.8.0": "1.001", "2.8.0": "8.000"},
            "export counter went backwards",
            {"1.8.0": "1.001", "2.8.0": "8.001"},
            (0, 60),
        ),
    ],
)
def test_counters_backwards_start_afresh_and_never_give_negative_power(
    before, after, reason, then, power
):
    deriver = make_deriver()
    deriver.derive(make_readout(0, before))
    with pytest.raises(ReadoutRejected, match=reason):
        deriver.derive(make_readout(60, after))
    values = deriver.derive(make_readout(120, then))  # measured from the rejected readout
    assert (watts(values.import_power), watts(values.export_power)) == power


def test_absurd_jump_follows_max_power():
    deriver = make_deriver(max_power_w=50_000)
    deriver.derive(make_readout(0, {"1.8.0": "1000.000"}))
    # 1 kWh in 60 s would be 60 kW, more than a 50 kW connection
    with pytest.raises(ReadoutRejected, match=r"jumped by 1000 Wh in 60\.0 s"):
        deriver.derive(make_readout(60, {"1.8.0": "1001.000"}))
    # right at the limit is still power
    values = deriver.derive(make_readout(120, {"1.8.0": "1001.833"}))
    assert watts(values.import_power) == 49980


def test_default_maximum_is_100_kw():
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "0"}))
    assert watts(deriver.derive(make_readout(36, {"1.8.0": "1.000"})).import_power) == 100_000
    with pytest.raises(ReadoutRejected, match="jumped"):  # 100.1 kW
        deriver.derive(make_readout(72, {"1.8.0": "2.001"}))


@pytest.mark.parametrize("max_power_w", [0, -1])
def test_deriver_refuses_a_nonsense_max_power(max_power_w):
    with pytest.raises(ValueError, match="max_power_w"):
        make_deriver(max_power_w=max_power_w)


def test_a_register_removed_for_good_is_taken_after_confirmations(caplog):
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "10.000", "2.8.0": "1.000"}))
    # Held back twice: a line left out now and then must not go out as R1 = 0 ...
    for n in range(1, SHAPE_CONFIRMATIONS):
        with pytest.raises(ReadoutRejected, match=r"held back.*missing: 2\.8\.0"):
            deriver.derive(make_readout(60 * n, {"1.8.0": f"10.00{n}"}))
    # ... the third time in a row it is the meter's new normal: counted afresh, then used.
    caplog.set_level(logging.WARNING)
    changed = r"registers changed from 1\.8\.0\|2\.8\.0 to 1\.8\.0\|-"
    with pytest.raises(ReadoutRejected, match=changed):
        deriver.derive(make_readout(180, {"1.8.0": "10.003"}))
    assert "new normal" in caplog.text
    values = deriver.derive(make_readout(240, {"1.8.0": "10.004"}))
    assert values.export_energy is None
    assert (watts(values.import_power), watts(values.export_power)) == (60, 0)


def test_a_tariff_register_left_out_now_and_then_is_never_published(caplog):
    full = {"1.8.0": "30.000", "1.8.1": "20.000", "1.8.2": "10.000"}
    deriver = make_deriver()
    deriver.derive(make_readout(0, full))
    published, held_back = [], 0
    caplog.set_level(logging.WARNING)
    for step in range(1, 9):
        more = step * W("0.001")
        registers = {code: f"{W(v) + more:f}" for code, v in full.items()}
        if step % 3:  # 1.8.1 missing two readouts in a row, then back
            del registers["1.8.1"]
        try:
            published.append(deriver.derive(make_readout(step * 60, registers)))
        except ReadoutRejected as error:
            assert "held back" in str(error)
            held_back += 1
    assert held_back == 6
    assert [v.import_energy.tariff_wh(1) for v in published] == [20003, 20006]
    assert [watts(v.import_power) for v in published] == [60, 60]  # over 180 s each
    assert caplog.text.count("usual energy registers again") == 2
    assert "new normal" not in caplog.text


def test_a_missing_total_is_held_back_too():
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "30.000", "1.8.1": "20.000"}))
    with pytest.raises(ReadoutRejected, match=r"held back.*missing: 1\.8\.0"):
        deriver.derive(make_readout(60, {"1.8.1": "20.001"}))
    values = deriver.derive(make_readout(120, {"1.8.0": "30.002", "1.8.1": "20.002"}))
    assert watts(values.import_power) == 60


def test_the_readout_after_a_gap_longer_than_max_span_is_the_next_baseline():
    deriver = make_deriver(max_span_s=600)
    deriver.derive(make_readout(0, {"1.8.0": "10.000"}))
    values = deriver.derive(make_readout(601, {"1.8.0": "10.100"}))
    assert values.import_power is None and "601 s old" in values.power_missing
    values = deriver.derive(make_readout(661, {"1.8.0": "10.101"}))
    assert watts(values.import_power) == 60


def test_no_time_passed_gives_no_power():
    deriver = make_deriver()
    deriver.derive(make_readout(50, {"1.8.0": "10.000"}))
    values = deriver.derive(make_readout(50, {"1.8.0": "10.000"}))
    assert values.import_power is None
    with pytest.raises(ReadoutRejected, match="jumped"):  # energy in no time
        deriver.derive(make_readout(50, {"1.8.0": "10.001"}))
    with pytest.raises(ReadoutRejected, match="jumped"):  # monotonic backwards
        deriver.derive(make_readout(40, {"1.8.0": "10.002"}))


def test_wall_clock_jumps_do_not_affect_power():
    deriver = make_deriver()
    deriver.derive(make_readout(100, {"1.8.0": "1.000"}, wall_time=START))
    # NTP set the clock back ten years between the readouts; 60 s passed really
    back, ahead = START.replace(year=2015), START.replace(year=2035)
    values = deriver.derive(make_readout(160, {"1.8.0": "1.010"}, wall_time=back))
    assert watts(values.import_power) == 600
    values = deriver.derive(make_readout(220, {"1.8.0": "1.020"}, wall_time=ahead))
    assert watts(values.import_power) == 600


@pytest.mark.parametrize(
    "unusable",
    [
        {"2.8.0": "1.000"},  # no import register: held back
        {"1.8.0": "-1"},
        {"1.8.0": ("5.000", "kvarh")},
    ],
)
def test_an_unusable_readout_leaves_the_baseline_alone(unusable):
    deriver = make_deriver()
    deriver.derive(make_readout(0, {"1.8.0": "1.000"}))
    with pytest.raises(ReadoutRejected):
        deriver.derive(make_readout(30, unusable))
    assert watts(deriver.derive(make_readout(60, {"1.8.0": "1.010"})).import_power) == 600


def test_push_meter_without_power_registers_gets_power_with_a_long_update_interval():
    deriver = make_deriver(min_span_s=150, max_span_s=3000)  # spans_for(300)
    for second in range(0, 301):  # one frame a second at 300 W: 1 Wh every 12 s
        wh = W(second * 300) / 3600
        values = deriver.derive(make_readout(second, {"1.8.0": (str(wh), "Wh")}))
    assert values.import_power is not None, values.power_missing
    assert watts(values.import_power) == 300
