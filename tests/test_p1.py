"""P1 values from readouts: counters, power from registers and from counter deltas."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from iskra_me162.errors import SinkError
from iskra_me162.obis import ObisCode, Reading
from iskra_me162.p1 import P1Calculator, P1Values, read_counters, register_power
from iskra_me162.readout import MeterIdentity, Readout
from tests.testdata import require_testdata

METER = MeterIdentity("ISK", "ME162-0033", "12345678")
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_readout(
    monotonic: float,
    registers: dict[str, str | tuple[str, str | None]],
    *,
    identity: MeterIdentity = METER,
    wall_time: datetime | None = None,
) -> Readout:
    """A readout from ``{"1.8.0": "123.456"}`` (kWh / kW by C group) or ``{"1.8.0": (v, unit)}``."""
    readings = []
    for code, spec in registers.items():
        if isinstance(spec, tuple):
            value, unit = spec
        else:
            value, unit = spec, ("kW" if ".7." in code else "kWh")
        readings.append(Reading(ObisCode.parse(code), Decimal(value), unit, f"{value}*{unit}"))
    return Readout(
        identity=identity,
        readings=tuple(readings),
        wall_time=wall_time or START + timedelta(seconds=monotonic),
        monotonic=monotonic,
    )


# --- P1Values ---------------------------------------------------------------------------------


def test_svalue_is_six_integers_in_domoticz_order():
    values = P1Values(u1=1, u2=2, r1=3, r2=4, cons=5, prod=6)
    assert values.svalue == "1;2;3;4;5;6"
    assert values.counters == (1, 2, 3, 4)


@pytest.mark.parametrize(
    "bad",
    [
        {"u1": -1},
        {"cons": -5},
        {"prod": 1.5},
        {"r1": Decimal("1")},
        {"u2": None},
        {"r2": True},
        {"cons": "7"},
    ],
)
def test_p1values_refuse_anything_but_non_negative_ints(bad):
    fields = {"u1": 1, "u2": 2, "r1": 3, "r2": 4, "cons": 5, "prod": 6} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        P1Values(**fields)


# --- counters ---------------------------------------------------------------------------------


def test_energy_is_exact_decimal_wh():
    counters = read_counters(make_readout(1, {"1.8.0": "0008048.375", "2.8.0": "0000000.001"}))
    assert (counters.u1, counters.u2, counters.r1, counters.r2) == (8048375, 0, 1, 0)
    assert counters.import_wh == Decimal("8048375")


def test_counters_are_rounded_down_to_whole_wh():
    readout = make_readout(1, {"1.8.1": ("14796777.9", "Wh"), "1.8.2": ("2012.4", "Wh")})
    counters = read_counters(readout)
    assert (counters.u1, counters.u2) == (14796777, 2012)
    assert counters.import_wh == Decimal("14798790.3")  # exact, for power


def test_tariff_registers_go_to_u1_u2_and_r1_r2():
    readout = make_readout(
        1,
        {
            "1.8.0": "300.000",
            "1.8.1": "100.000",
            "1.8.2": "200.000",
            "2.8.0": "70.000",
            "2.8.1": "30.000",
            "2.8.2": "40.000",
        },
    )
    counters = read_counters(readout)
    assert (counters.u1, counters.u2, counters.r1, counters.r2) == (100000, 200000, 30000, 40000)
    assert counters.sources == "1.8.0|2.8.0"


def test_tariffless_meter_puts_total_in_u1_and_r1():
    counters = read_counters(make_readout(1, {"1.8.0": "13925.5", "2.8.0": "7041.2292533"}))
    assert (counters.u1, counters.u2, counters.r1, counters.r2) == (13925500, 0, 7041229, 0)


def test_total_repeated_in_tariff_1_is_not_added_twice():
    # MT175 / most SML meters: 1.8.0 = 1.8.1, 1.8.2 = 0.
    readout = make_readout(
        1, {"1.8.0": ("15338555.7", "Wh"), "1.8.1": ("15338555.7", "Wh"), "1.8.2": ("0", "Wh")}
    )
    counters = read_counters(readout)
    assert (counters.u1, counters.u2) == (15338555, 0)
    assert counters.import_wh == Decimal("15338555.7")


def test_meter_without_export_registers_sends_zero_export():
    counters = read_counters(make_readout(1, {"1.8.0": "1.2963"}))
    assert (counters.u1, counters.u2, counters.r1, counters.r2) == (1296, 0, 0, 0)
    assert counters.export_wh is None
    assert counters.sources == "1.8.0|-"


def test_export_from_total_when_only_import_has_tariffs():
    # ZPA GH305: import tariffs, export only as a total.
    readout = make_readout(
        1, {"1.8.0": "18116.3002", "1.8.1": "0", "1.8.2": "18116.3002", "2.8.0": "19306.0989"}
    )
    counters = read_counters(readout)
    assert (counters.u1, counters.u2, counters.r1, counters.r2) == (0, 18116300, 19306098, 0)


def test_power_total_is_the_sum_of_all_tariffs_without_a_total_register():
    readout = make_readout(1, {"1.8.1": "1.000", "1.8.2": "2.000", "1.8.3": "0.500"})
    counters = read_counters(readout)
    assert (counters.u1, counters.u2) == (1000, 2000)  # tariff 3 has no place in P1
    assert counters.import_wh == Decimal("3500")
    assert counters.sources == "1.8.1+1.8.2+1.8.3|-"


def test_swap_tariffs_swaps_both_directions():
    readout = make_readout(
        1, {"1.8.1": "1.000", "1.8.2": "2.000", "2.8.1": "3.000", "2.8.2": "4.000"}
    )
    counters = read_counters(readout, swap_tariffs=True)
    assert (counters.u1, counters.u2, counters.r1, counters.r2) == (2000, 1000, 4000, 3000)
    assert counters.import_wh == Decimal("3000")  # totals are not affected


def test_readout_without_import_register_is_an_error():
    with pytest.raises(SinkError, match=r"no import energy register \(1\.8\.0"):
        read_counters(make_readout(1, {"2.8.0": "5.000", "1.7.0": "0.100"}))


def test_negative_counter_is_an_error():
    with pytest.raises(SinkError, match=r"1\.8\.0 is negative"):
        read_counters(make_readout(1, {"1.8.0": "-5.000"}))


def test_energy_register_with_non_energy_unit_is_an_error():
    with pytest.raises(SinkError, match=r"1\.8\.0 has unit 'kvarh'"):
        read_counters(make_readout(1, {"1.8.0": ("5.000", "kvarh")}))


def test_historic_billing_periods_are_not_mistaken_for_current_registers():
    readout = make_readout(1, {"1-0:1.8.0*255": "100.000", "1-0:1.8.0*07": "50.000"})
    assert read_counters(readout).u1 == 100000


# --- power from registers ---------------------------------------------------------------------


def test_power_registers_1_7_0_and_2_7_0():
    assert register_power(make_readout(1, {"1.7.0": "0.908", "2.7.0": "0.010"})) == (
        Decimal("908.000"),
        Decimal("10.000"),
    )


def test_signed_16_7_0_is_split_into_consumption_and_production():
    assert register_power(make_readout(1, {"16.7.0": ("-3094", "W")})) == (0, 3094)
    assert register_power(make_readout(1, {"16.7.0": ("563.5", "W")})) == (Decimal("563.5"), 0)


def test_negative_1_7_0_without_2_7_0_is_a_signed_sum():
    assert register_power(make_readout(1, {"1.7.0": ("-120", "W")})) == (0, 120)


def test_negative_power_is_clamped_when_both_directions_exist():
    assert register_power(make_readout(1, {"1.7.0": ("-3", "W"), "2.7.0": ("-1", "W")})) == (0, 0)


def test_no_power_registers():
    assert register_power(make_readout(1, {"1.8.0": "1"})) == (None, None)


def test_power_register_with_wrong_unit_is_ignored():
    assert register_power(make_readout(1, {"1.7.0": ("230", "V")})) == (None, None)


# --- the calculator ---------------------------------------------------------------------------


def test_register_power_is_sent_at_once_and_rounded_half_up():
    calculator = P1Calculator()
    readout = make_readout(
        10, {"1.8.0": ("3432336.327", "Wh"), "2.8.0": ("209.9675", "Wh"), "16.7.0": ("104.5", "W")}
    )
    assert calculator.use(readout) == P1Values(3432336, 0, 209, 0, 105, 0)


def test_negative_16_7_0_goes_to_prod():
    calculator = P1Calculator()
    registers = {"1.8.0": "6959.6694", "2.8.0": "953.2515", "16.7.0": ("-1557", "W")}
    readout = make_readout(10, registers)
    assert calculator.use(readout) == P1Values(6959669, 0, 953251, 0, 0, 1557)


def test_cold_start_without_power_registers_waits_for_the_second_readout(caplog):
    calculator = P1Calculator()
    first = make_readout(100, {"1.8.0": "1000.000", "2.8.0": "500.000"})
    with caplog.at_level(logging.INFO):
        assert calculator.use(first) is None
    assert "cold start" in caplog.text
    second = make_readout(160, {"1.8.0": "1000.020", "2.8.0": "500.005"})
    # 20 Wh in 60 s = 1200 W; 5 Wh in 60 s = 300 W
    assert calculator.use(second) == P1Values(1000020, 0, 500005, 0, 1200, 300)


def test_power_from_deltas_is_rounded_to_whole_watts():
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "1.000"}))
    # 1 Wh in 7 s = 514.2857 W
    values = calculator.use(make_readout(7, {"1.8.0": "1.001"}))
    assert values == P1Values(1001, 0, 0, 0, 514, 0)


def test_power_from_sum_of_tariffs_without_total():
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.1": "1.000", "1.8.2": "2.000"}))
    values = calculator.use(make_readout(36, {"1.8.1": "1.006", "1.8.2": "2.004"}))
    assert values is not None and values.cons == 1000  # 10 Wh in 36 s


def test_mixed_register_and_delta_power():
    # 1.7.0 but no 2.7.0, and the meter counts export: PROD comes from the export counter.
    calculator = P1Calculator()
    assert calculator.use(make_readout(0, {"1.8.0": "1", "2.8.0": "1", "1.7.0": "0.5"})) is None
    values = calculator.use(make_readout(3600, {"1.8.0": "1", "2.8.0": "3", "1.7.0": "0.25"}))
    assert (values.cons, values.prod) == (250, 2000)


def test_preview_has_no_side_effects():
    calculator = P1Calculator()
    first = make_readout(0, {"1.8.0": "1.000"})
    assert calculator.preview(first) is None
    assert calculator.preview(first) is None
    calculator.use(first)
    second = make_readout(360, {"1.8.0": "1.100"})
    assert calculator.preview(second) == P1Values(1100, 0, 0, 0, 1000, 0)
    # preview did not move the baseline: a later readout is still measured from ``first``
    third = make_readout(720, {"1.8.0": "1.150"})
    assert calculator.preview(third) == P1Values(1150, 0, 0, 0, 750, 0)


def test_the_same_readout_twice_gives_the_same_answer():
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "1.000"}))
    second = make_readout(60, {"1.8.0": "1.010"})
    values = calculator.use(second)
    assert values == P1Values(1010, 0, 0, 0, 600, 0)
    assert calculator.use(second) == values
    assert calculator.preview(second) == values


def test_power_uses_the_previous_used_readout_not_the_previous_sent_one():
    # Domoticz down for an hour: readouts are used (observed / failed pushes) meanwhile; the next
    # push shows the power of the last interval, not the average since the last successful push.
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "100.000"}))
    calculator.use(make_readout(1800, {"1.8.0": "101.500"}))  # 3 kW for half an hour
    values = calculator.use(make_readout(1860, {"1.8.0": "101.502"}))  # then 120 W
    assert values is not None and values.cons == 120


def test_counter_backwards_rebases_and_never_gives_negative_power(caplog):
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "5000.000"}))
    with caplog.at_level(logging.WARNING):
        assert calculator.use(make_readout(60, {"1.8.0": "4999.000"})) is None
    assert "went backwards" in caplog.text
    # the new value is the new base
    assert calculator.use(make_readout(120, {"1.8.0": "4999.010"})).cons == 600


def test_meter_replacement_with_counter_reset(caplog):
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "25000.000", "2.8.0": "3000.000"}))
    with caplog.at_level(logging.WARNING):
        assert calculator.use(make_readout(600, {"1.8.0": "0.000", "2.8.0": "0.000"})) is None
    assert "meter replaced or reset" in caplog.text
    values = calculator.use(make_readout(660, {"1.8.0": "0.010", "2.8.0": "0.000"}))
    assert values == P1Values(10, 0, 0, 0, 600, 0)


def test_export_counter_backwards_rebases_too(caplog):
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "1.000", "2.8.0": "9.000"}))
    with caplog.at_level(logging.WARNING):
        assert calculator.use(make_readout(60, {"1.8.0": "1.001", "2.8.0": "8.000"})) is None
    assert "export counter went backwards" in caplog.text


def test_absurd_jump_rebases(caplog):
    calculator = P1Calculator(max_power_w=50_000)
    calculator.use(make_readout(0, {"1.8.0": "1000.000"}))
    # 1 kWh in 60 s would be 60 kW, more than a 50 kW connection
    with caplog.at_level(logging.WARNING):
        assert calculator.use(make_readout(60, {"1.8.0": "1001.000"})) is None
    assert "jumped by 1000.000 Wh in 60.0 s" in caplog.text
    # right at the limit is still power
    assert calculator.use(make_readout(120, {"1.8.0": "1001.833"})).cons == 49980


def test_default_maximum_is_100_kw():
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "0"}))
    assert calculator.use(make_readout(36, {"1.8.0": "1.000"})).cons == 100_000
    assert calculator.use(make_readout(72, {"1.8.0": "2.001"})) is None  # 100.1 kW


def test_absurd_jump_is_not_sent_even_when_the_meter_reports_power(caplog):
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "0", "1.7.0": "1.0"}))
    with caplog.at_level(logging.WARNING):
        # Domoticz would book the jump as consumed energy: never sent.
        assert calculator.use(make_readout(1, {"1.8.0": "99999", "1.7.0": "1.0"})) is None
    assert "jumped" in caplog.text
    # A new meter (or a counter that really is there now): the next consistent readout counts.
    values = calculator.use(make_readout(61, {"1.8.0": "99999.016", "1.7.0": "1.0"}))
    assert values == P1Values(99999016, 0, 0, 0, 1000, 0)


def test_register_set_change_rebases(caplog):
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "10.000", "2.8.0": "1.000"}))
    with caplog.at_level(logging.WARNING):
        # Held back twice (a line left out now and then must not send R1 = 0) ...
        assert calculator.use(make_readout(60, {"1.8.0": "10.001"})) is None
        assert calculator.use(make_readout(120, {"1.8.0": "10.002"})) is None
        assert "readout held back" in caplog.text
        # ... the third time in a row it is the meter's new normal: re-based, then used.
        assert calculator.use(make_readout(180, {"1.8.0": "10.003"})) is None
    assert "registers changed from 1.8.0|2.8.0 to 1.8.0|-" in caplog.text
    assert calculator.use(make_readout(240, {"1.8.0": "10.004"})) == P1Values(10004, 0, 0, 0, 60, 0)


def test_a_tariff_register_left_out_now_and_then_is_never_sent_as_zero(caplog):
    full = {"1.8.0": "30.000", "1.8.1": "20.000", "1.8.2": "10.000"}
    calculator = P1Calculator(state=None)
    calculator.use(make_readout(0, full))
    sent = []
    with caplog.at_level(logging.WARNING):
        for step in range(1, 9):
            more = step * Decimal("0.001")
            registers = {code: f"{Decimal(v) + more:f}" for code, v in full.items()}
            if step % 3:  # 1.8.1 missing two readouts in a row, then back
                del registers["1.8.1"]
            readout = make_readout(step * 60, registers)
            preview = calculator.preview(readout)
            values = calculator.use(readout)
            assert preview == values
            if values is not None:
                sent.append(values)
    assert [values.u1 for values in sent] == [20003, 20006]  # only the complete readouts
    assert [values.cons for values in sent] == [60, 60]
    assert caplog.text.count("readout held back") == 3  # once per episode, not per readout
    assert caplog.text.count("usual energy registers again") == 2


def test_a_missing_total_is_held_back_too():
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "30.000", "1.8.1": "20.000"}))
    assert calculator.use(make_readout(60, {"1.8.1": "20.001"})) is None
    assert calculator.use(make_readout(120, {"1.8.0": "30.002", "1.8.1": "20.002"})).cons == 60


def test_other_meter_rebases(caplog):
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "10.000"}))
    other = MeterIdentity("ISK", "ME162-0033", "99999999")
    with caplog.at_level(logging.WARNING):
        assert calculator.use(make_readout(60, {"1.8.0": "20.000"}, identity=other)) is None
    assert "meter changed from 12345678 to 99999999" in caplog.text


def test_a_gap_longer_than_max_interval_rebases(caplog):
    calculator = P1Calculator(max_interval_s=600)
    calculator.use(make_readout(0, {"1.8.0": "10.000"}))
    with caplog.at_level(logging.INFO):
        assert calculator.use(make_readout(601, {"1.8.0": "10.100"})) is None
    assert "601 s old" in caplog.text
    assert calculator.use(make_readout(661, {"1.8.0": "10.101"})).cons == 60


def test_no_time_passed_rebases():
    calculator = P1Calculator()
    calculator.use(make_readout(50, {"1.8.0": "10.000"}))
    assert calculator.use(make_readout(50, {"1.8.0": "10.001"})) is None
    assert calculator.use(make_readout(40, {"1.8.0": "10.002"})) is None  # monotonic backwards


def test_wall_clock_jumps_do_not_affect_power():
    calculator = P1Calculator()
    calculator.use(make_readout(100, {"1.8.0": "1.000"}, wall_time=START))
    # NTP set the clock back ten years between the readouts; 60 s passed really
    back = START - timedelta(days=3650)
    assert calculator.use(make_readout(160, {"1.8.0": "1.010"}, wall_time=back)).cons == 600
    forward = START + timedelta(days=3650)
    assert calculator.use(make_readout(220, {"1.8.0": "1.020"}, wall_time=forward)).cons == 600


def test_unusable_readout_leaves_the_baseline_alone():
    calculator = P1Calculator()
    calculator.use(make_readout(0, {"1.8.0": "1.000"}))
    with pytest.raises(SinkError):
        calculator.use(make_readout(30, {"2.8.0": "1.000"}))
    assert calculator.use(make_readout(60, {"1.8.0": "1.010"})).cons == 600


def test_calculator_rejects_nonsense_limits():
    with pytest.raises(ValueError):
        P1Calculator(max_power_w=0)
    with pytest.raises(ValueError):
        P1Calculator(max_interval_s=-1)


# --- real meter captures (values from ../shared/testdata/expected.json) -----------------------


def _capture_readout(name: str, monotonic: float = 1.0) -> Readout:
    path = require_testdata() / "expected.json"
    entry = json.loads(path.read_text(), parse_float=Decimal)[name]
    readings = tuple(
        Reading(ObisCode.parse(code), Decimal(spec["value"]), spec["unit"], str(spec["value"]))
        for code, spec in entry["obis"].items()
    )
    return Readout(MeterIdentity("X", name), readings, START, monotonic)


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        # 0008048.375 kWh in 1.8.0 and 1.8.1, 1.7.0 = 0.908 kW, no export
        ("iec62056-21/iskra_mt174-0001__smartmeter-obis.bin", "8048375;0;0;0;908;0"),
        # 1.8.1 = 0, 1.8.2 = 18116.3002 kWh, 2.8.0 = 19306.0989 kWh, 16.7.0 = -3094 W
        ("iec62056-21/zpa_gh305_a__tibberlink.bin", "0;18116300;19306098;0;0;3094"),
        # DSMR: tariffs both ways, 1.7.0 = 0.244 kW
        ("iec62056-21/dsmr_iskra_mt382-1000__dsmr_parser.bin", "4426;2399;2444;0;244;0"),
        # SML, 1.8.0 = 1.8.1 (5046264.9 Wh + 10.3 Wh in 1.8.2), export likewise, 16.7.0 = -1 W
        ("sml/emh_issue912__tibberlink.bin", "5046264;10;7997897;1;0;1"),
        # SML, totals only: 3432336.327 Wh, 209.9675 Wh, 16.7.0 = 104.54 W
        ("sml/easymeter_q3aa2064__tibberlink.bin", "3432336;0;209;0;105;0"),
    ],
)
def test_real_captures_with_power_registers(capture, expected):
    assert P1Calculator().use(_capture_readout(capture)).svalue == expected


@pytest.mark.parametrize(
    "capture",
    [
        "iec62056-21/emh_ehz-e0018e__smartmeter-obis.bin",  # 1.8.1 only, no unit
        "sml/dzg_0282c0b0__smllib.bin",  # 1.8.0 and 2.8.0, no power register
    ],
)
def test_real_captures_without_power_registers_wait_for_a_second_readout(capture):
    calculator = P1Calculator()
    assert calculator.use(_capture_readout(capture, monotonic=1.0)) is None
    values = calculator.use(_capture_readout(capture, monotonic=61.0))
    assert values is not None and values.cons == 0 and values.prod == 0
    assert values.u1 > 0
