"""The P1 rendering of the derive stage's values: U1;U2;R1;R2;CONS;PROD for Domoticz.

Energy and power themselves are computed (and tested) in the derive stage, tests/test_derive.py;
here only how :func:`iskra_me162.p1.p1_values` turns them into the six whole numbers.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from iskra_me162.derive import Values
from iskra_me162.errors import SinkError
from iskra_me162.obis import ObisCode, Reading
from iskra_me162.p1 import P1Values, p1_values, whole_w, whole_wh
from iskra_me162.readout import MeterIdentity, Readout

# make_readout lives in tests/readouts.py; other test files still import it from here.
from tests.readouts import START, derive_pair, make_deriver, make_readout
from tests.testdata import require_testdata


def p1_of(registers: dict, earlier: dict | None = None, seconds: float = 60.0, **options):
    """The P1 update of ``registers`` read ``seconds`` after ``earlier`` (default: the same, so
    power from counters is 0 W)."""
    return p1_values(derive_pair(registers, earlier, seconds), **options)


def counters(p1: P1Values | None) -> tuple[int, int, int, int]:
    assert p1 is not None
    return (p1.u1, p1.u2, p1.r1, p1.r2)


# --- P1Values ---------------------------------------------------------------------------------


def test_svalue_is_six_integers_in_domoticz_order():
    assert P1Values(u1=1, u2=2, r1=3, r2=4, cons=5, prod=6).svalue == "1;2;3;4;5;6"


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


# --- counters: U1/U2 and R1/R2 ------------------------------------------------------------------


def test_counters_are_whole_wh_of_the_exact_energy():
    assert counters(p1_of({"1.8.0": "0008048.375", "2.8.0": "0000000.001"})) == (8048375, 0, 1, 0)


def test_counters_are_rounded_down_to_whole_wh():
    p1 = p1_of({"1.8.1": ("14796777.9", "Wh"), "1.8.2": ("2012.4", "Wh")})
    assert counters(p1) == (14796777, 2012, 0, 0)


@pytest.mark.parametrize(
    ("wh", "whole"),
    [("0", 0), ("0.999", 0), ("1", 1), ("14796777.9", 14796777), ("2012.4", 2012)],
)
def test_whole_wh_rounds_down(wh, whole):
    assert whole_wh(Decimal(wh)) == whole


def test_tariff_registers_go_to_u1_u2_and_r1_r2():
    registers = {
        "1.8.0": "300.000",
        "1.8.1": "100.000",
        "1.8.2": "200.000",
        "2.8.0": "70.000",
        "2.8.1": "30.000",
        "2.8.2": "40.000",
    }
    assert counters(p1_of(registers)) == (100000, 200000, 30000, 40000)


def test_tariffless_meter_puts_total_in_u1_and_r1():
    p1 = p1_of({"1.8.0": "13925.5", "2.8.0": "7041.2292533"})
    assert counters(p1) == (13925500, 0, 7041229, 0)


def test_a_missing_tariff_register_is_zero_when_the_other_is_there():
    assert counters(p1_of({"1.8.0": "3.000", "1.8.2": "2.000"})) == (0, 2000, 0, 0)
    assert counters(p1_of({"1.8.1": "1.000"})) == (1000, 0, 0, 0)


def test_total_repeated_in_tariff_1_is_not_added_twice():
    # MT175 / most SML meters: 1.8.0 = 1.8.1, 1.8.2 = 0.
    registers = {
        "1.8.0": ("15338555.7", "Wh"),
        "1.8.1": ("15338555.7", "Wh"),
        "1.8.2": ("0", "Wh"),
    }
    assert counters(p1_of(registers)) == (15338555, 0, 0, 0)


def test_meter_without_export_registers_sends_zero_export_and_zero_production():
    p1 = p1_of({"1.8.0": "1.2963", "1.7.0": "0.25"})
    assert p1 == P1Values(1296, 0, 0, 0, 250, 0)
    # Power from counters likewise: a meter that counts no export produces nothing.
    assert p1_of({"1.8.0": "1.3063"}, {"1.8.0": "1.2963"}, 36) == P1Values(1306, 0, 0, 0, 1000, 0)


def test_export_from_total_when_only_import_has_tariffs():
    # ZPA GH305: import tariffs, export only as a total.
    registers = {"1.8.0": "18116.3002", "1.8.1": "0", "1.8.2": "18116.3002", "2.8.0": "19306.0989"}
    assert counters(p1_of(registers)) == (0, 18116300, 19306098, 0)


def test_tariffs_3_and_up_have_no_place_in_p1():
    p1 = p1_of({"1.8.1": "1.000", "1.8.2": "2.000", "1.8.3": "0.500"})
    assert counters(p1) == (1000, 2000, 0, 0)


def test_swap_tariffs_swaps_both_directions_and_nothing_else():
    earlier = {"1.8.1": "1.000", "1.8.2": "2.000", "2.8.1": "3.000", "2.8.2": "4.000"}
    later = {"1.8.1": "1.000", "1.8.2": "2.010", "2.8.1": "3.000", "2.8.2": "4.002"}
    assert p1_of(later, earlier, swap_tariffs=True) == P1Values(2010, 1000, 4002, 3000, 600, 120)
    assert p1_of(later, earlier) == P1Values(1000, 2010, 3000, 4002, 600, 120)


def test_readout_without_import_register_is_an_error():
    values = make_deriver().derive(make_readout(1, {"2.8.0": "5.000", "1.7.0": "0.100"}))
    with pytest.raises(SinkError, match=r"no import energy register \(1\.8\.0"):
        p1_values(values)


# --- power: CONS and PROD -------------------------------------------------------------------


def test_register_power_is_rendered_at_once_and_rounded_half_up():
    readout = make_readout(
        10, {"1.8.0": ("3432336.327", "Wh"), "2.8.0": ("209.9675", "Wh"), "16.7.0": ("104.5", "W")}
    )
    values = make_deriver().derive(readout)
    assert p1_values(values) == P1Values(3432336, 0, 209, 0, 105, 0)


def test_negative_16_7_0_goes_to_prod():
    registers = {"1.8.0": "6959.6694", "2.8.0": "953.2515", "16.7.0": ("-1557", "W")}
    values = make_deriver().derive(make_readout(10, registers))
    assert p1_values(values) == P1Values(6959669, 0, 953251, 0, 0, 1557)


@pytest.mark.parametrize(
    ("watts", "whole"),
    [("0", 0), ("0.4999", 0), ("0.5", 1), ("2.5", 3), ("104.5", 105), ("514.2857", 514)],
)
def test_whole_w_rounds_half_up(watts, whole):
    assert whole_w(Decimal(watts)) == whole


def test_power_from_counters_is_rounded_to_whole_watts():
    # 1 Wh in 42 s = 85.714 W; 1 Wh in 32 s = 112.5 W (half up)
    assert p1_of({"1.8.0": "1.001"}, {"1.8.0": "1.000"}, 42).cons == 86
    assert p1_of({"1.8.0": "1.001"}, {"1.8.0": "1.000"}, 32).cons == 113


def test_no_power_figure_gives_no_p1_update():
    deriver = make_deriver()
    first = deriver.derive(make_readout(100, {"1.8.0": "1000.000", "2.8.0": "500.000"}))
    assert first.power_missing
    assert p1_values(first) is None
    second = deriver.derive(make_readout(160, {"1.8.0": "1000.020", "2.8.0": "500.005"}))
    # 20 Wh in 60 s = 1200 W; 5 Wh in 60 s = 300 W
    assert p1_values(second) == P1Values(1000020, 0, 500005, 0, 1200, 300)


def test_import_power_alone_is_not_enough_for_p1():
    # 1.7.0 but no 2.7.0, and the meter counts export: PROD needs a second readout.
    deriver = make_deriver()
    first = deriver.derive(make_readout(0, {"1.8.0": "1", "2.8.0": "1", "1.7.0": "0.5"}))
    assert first.import_power is not None and first.export_power is None
    assert p1_values(first) is None
    second = deriver.derive(make_readout(60, {"1.8.0": "1", "2.8.0": "1.002", "1.7.0": "0.25"}))
    assert p1_values(second) == P1Values(1000, 0, 1002, 0, 250, 120)


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
    values = make_deriver().derive(_capture_readout(capture))
    assert p1_values(values).svalue == expected


@pytest.mark.parametrize(
    "capture",
    [
        "iec62056-21/emh_ehz-e0018e__smartmeter-obis.bin",  # 1.8.1 only, no unit
        "sml/dzg_0282c0b0__smllib.bin",  # 1.8.0 and 2.8.0, no power register
    ],
)
def test_real_captures_without_power_registers_wait_for_a_second_readout(capture):
    deriver = make_deriver()  # min_span_s = 30
    values: Values = deriver.derive(_capture_readout(capture, monotonic=1.0))
    assert p1_values(values) is None and values.power_missing
    values = deriver.derive(_capture_readout(capture, monotonic=11.0))  # too soon
    assert p1_values(values) is None and "at least 30 s" in values.power_missing
    p1 = p1_values(deriver.derive(_capture_readout(capture, monotonic=61.0)))
    assert p1 is not None and p1.cons == 0 and p1.prod == 0
    assert p1.u1 > 0
