"""The simulated meter in programming mode (issue 12): the sans-I/O model with byte strings, the
load profile, then whole sessions over a real pty and over ``sim://``, driven by a small client
written here with the protocol core (request, ident, ACK option 1, P0, R1 ..., B0) - not by the
daemon.
"""

from __future__ import annotations

import itertools
import re
import time
from decimal import Decimal

import pytest
import serial

from iskra_me162.errors import ConfigError, ProtocolError
from iskra_me162.protocols.iec62056_21 import (
    PROGRAMMING_MODE,
    REPEAT_REQUEST,
    REQUEST,
    IdentificationReceiver,
    Operand,
    OperandReceiver,
    ProgrammingModeRefused,
    RegisterReceiver,
    build_ack,
    build_break,
    build_read,
    data_baudrate,
    is_allowed_command,
)
from iskra_me162.simulator import (
    ALLOWED_KINDS,
    MT174,
    SIMPLE,
    LoadStep,
    MeterConfig,
    MeterModel,
    PtyMeter,
    SessionState,
    parse_config,
    parse_load,
)
from iskra_me162.simulator.__main__ import _options, build_parser
from iskra_me162.simulator.model import classify
from iskra_me162.urlhandler.protocol_sim import parse_url

INSTANT = float("inf")
ACK_PROG = b"\x06051\r\n"
ACK_READOUT = b"\x06050\r\n"
NAK = b"\x15"
P0 = b"\x01P0\x02()\x03`"
SOH, STX, ETX = b"\x01", b"\x02", b"\x03"


def xor_bcc(data: bytes) -> bytes:
    result = 0
    for byte in data:
        result ^= byte
    return bytes([result])


def command(head: bytes, data: bytes | None = None) -> bytes:
    body = head + (b"" if data is None else STX + data) + ETX
    return SOH + body + xor_bcc(body)


def answer_of(data: bytes) -> bytes:
    return STX + data + ETX + xor_bcc(data + ETX)


def model(now: float = 0.0, **options: str) -> MeterModel:
    options.setdefault("speedup", "inf")
    options.setdefault("progmode", "on")
    return MeterModel(parse_config(options), now)


def enter(meter: MeterModel, now: float = 0.0, ack: bytes = ACK_PROG):
    """Request and option-1 ACK on the model: (ident, the answer to the ACK as a list)."""
    [ident] = meter.receive(REQUEST, now)
    return ident, meter.receive(ack, ident.end + 0.05)


def read(meter: MeterModel, register: str, now: float):
    answers = meter.receive(build_read(register), now)
    if not answers:
        return None
    [answer] = answers
    receiver = RegisterReceiver(register)
    receiver.feed(answer.data)
    return answer, receiver.result()


# --- the model: programming mode -------------------------------------------------------------
def test_the_default_meter_has_no_programming_mode():
    meter = MeterModel(MeterConfig(speedup=INSTANT), 0.0)
    assert meter.config.progmode == "ignore"
    ident, answers = enter(meter)
    assert answers == []
    assert meter.state(ident.end + 0.1) is SessionState.IDLE


def test_p0_after_the_reaction_time_at_the_switched_rate_then_r1():
    meter = model(import_wh="1234567,765432", export_wh="13465,0", power="0")
    ident, [operand] = enter(meter, 10.0)
    assert operand.data == P0
    assert operand.baud == 9600
    assert operand.start == pytest.approx(ident.end + 0.05 + 0.2)  # ISK: 200 ms
    assert meter.state(operand.end) is SessionState.PROGRAMMING
    assert meter.listen_baud_at(operand.end) == 9600
    answer, value = read(meter, "1.8.0", 11.0)
    assert answer.data == answer_of(b"(0001999.999*kWh)")
    assert (answer.baud, answer.start) == (9600, pytest.approx(11.2))
    assert value.reading.value == Decimal("1999.999")
    assert read(meter, "2.8.0", 12.0)[1].reading.raw == "0000013.465*kWh"
    assert read(meter, "1.8.2", 13.0)[1].reading.value == Decimal("765.432")
    assert [r.register for r in meter.reads] == ["1.8.0", "2.8.0", "1.8.2"]
    assert meter.reads[0].value == "0001999.999*kWh"


def test_r1_answers_every_register_as_the_readout_shows_it():
    for profile in ("me162", "mt174", "simple"):
        meter = model(profile=profile, power="0")
        [ident] = meter.receive(REQUEST, 0.0)
        meter.receive(ACK_READOUT, ident.end)
        lines = meter.history[-1].lines
        ident, _ = enter(meter, 5.0)
        for number, (code, value) in enumerate(lines):
            answer, _ = read(meter, code, 10.0 + number)
            assert answer.data == answer_of(f"({value})".encode())


def test_short_and_long_obis_codes_name_the_same_register():
    meter = model(profile="mt174", power="0")
    enter(meter)
    long = read(meter, "1-0:1.8.0*255", 5.0)[1].reading
    short = read(meter, "1.8.0", 6.0)[1].reading
    assert long.value == short.value
    assert read(meter, "1.8.4", 7.0)[1].reading is not None
    assert read(meter, "0-0:C.1.0*255", 8.0)[1].reading.raw == "61234567"


@pytest.mark.parametrize("register", ["1.8.9", "3.8.0", "1.7.0", "0.9.1", "2-0:1.8.0", "1.8.0*7"])
def test_unknown_registers_get_error(register):
    meter = model()
    enter(meter)
    answer, value = read(meter, register, 5.0)
    assert answer.data == answer_of(b"(ERROR)")
    assert value.reading is None
    assert meter.reads[-1].value is None
    assert meter.state(answer.end) is SessionState.PROGRAMMING  # it goes on


def test_b0_ends_the_session_and_the_next_request_starts_a_fresh_one():
    meter = model()
    enter(meter)
    assert meter.receive(build_break(), 5.0) == []
    assert meter.state(5.0) is SessionState.IDLE
    assert meter.listen_baud_at(5.0) == 300
    assert read(meter, "1.8.0", 6.0) is None  # no programming mode any more
    _, [operand] = enter(meter, 7.0)
    assert operand.data == P0
    assert read(meter, "1.8.0", 9.0) is not None


def test_nak_repeats_the_last_answer():
    meter = model(power="0")
    enter(meter)
    [again] = meter.receive(REPEAT_REQUEST, 3.0)
    assert again.data == P0
    answer, _ = read(meter, "1.8.1", 4.0)
    [again] = meter.receive(REPEAT_REQUEST, 5.0)
    assert again.data == answer.data
    assert again.start == pytest.approx(5.2)


def test_inactivity_timeout_drops_programming_mode():
    meter = model(progmode_timeout="2.5")
    _, [operand] = enter(meter)
    answer, _ = read(meter, "1.8.0", operand.end + 2.0)  # each command restarts the clock
    assert meter.state(answer.end + 2.4) is SessionState.PROGRAMMING
    assert meter.state(answer.end + 2.6) is SessionState.IDLE
    assert meter.progmode_timeouts == 1
    assert meter.listen_baud_at(answer.end + 3) == 300
    assert read(meter, "1.8.0", answer.end + 3.0) is None
    _, [operand] = enter(meter, answer.end + 4.0)
    assert operand.data == P0


def test_the_default_inactivity_timeout_is_60_seconds():
    meter = model()
    _, [operand] = enter(meter)
    assert meter.config.progmode_timeout == 60.0
    assert meter.state(operand.end + 59.9) is SessionState.PROGRAMMING
    assert meter.state(operand.end + 60.1) is SessionState.IDLE


def test_bad_bcc_and_forbidden_commands_get_nak_and_change_nothing():
    meter = model(power="0")
    enter(meter)
    before = meter.registers(5.0)
    bad_bcc = build_read("1.8.0")[:-1] + b"\x00"
    forbidden = [
        command(b"W1", b"1.8.0(0000000.000)"),
        command(b"W2", b"C.1.0(1)"),
        command(b"E2", b"0.9.1()"),
        command(b"P1", b"(00000000)"),
        command(b"P2", b"(12345678)"),
        command(b"B1"),
        command(b"R2", b"1.8.0()"),
        command(b"R1", b"1.8.0(5)"),
    ]
    for number, message in enumerate([bad_bcc, *forbidden]):
        [nak] = meter.receive(message, 6.0 + number)
        assert nak.data == NAK
        assert meter.state(nak.end) is SessionState.PROGRAMMING
    assert meter.registers(20.0) == before
    assert meter.violations == 1 + len(forbidden)
    assert [c.kind for c in meter.commands][-len(forbidden) - 1 :] == ["bad_bcc"] + [
        "forbidden"
    ] * len(forbidden)
    assert not any(is_allowed_command(message) for message in [bad_bcc, *forbidden])


def test_the_command_log_holds_what_the_reader_wrote():
    meter = model()
    enter(meter)
    meter.receive(build_read("1.8.0"), 5.0)
    meter.receive(build_read("2.8.0"), 5.01)  # while the meter still talks: not heard, logged
    meter.receive(b"\x00\x7f", 6.0, sent=REPEAT_REQUEST)  # garbled on the line, logged as sent
    meter.receive(build_break(), 7.0)
    kinds = [(c.kind, c.register) for c in meter.commands]
    assert kinds == [
        ("request", ""),
        ("ack", ""),
        ("read", "1.8.0"),
        ("read", "2.8.0"),
        ("repeat", ""),
        ("break", ""),
    ]
    assert all(c.allowed for c in meter.commands)
    assert meter.violations == 0
    assert meter.command_counts["read"] == 2
    assert [c.at for c in meter.commands][2:] == [5.0, 5.01, 6.0, 7.0]
    assert meter.reads[-1].register == "1.8.0"  # the one that was heard


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (REQUEST, "request"),
        (b"/?61234567!\r\n", "request"),
        (ACK_PROG, "ack"),
        (ACK_READOUT, "ack"),
        (b"\x06052\r\n", "forbidden"),
        (b"\x06150\r\n", "forbidden"),
        (b"\x06081\r\n", "forbidden"),
        (build_read("1.8.0"), "read"),
        (build_break(), "break"),
        (NAK, "repeat"),
        (command(b"W1", b"1.8.0(1)"), "forbidden"),
        (command(b"B0", b"()"), "forbidden"),
        (build_break()[:-1] + b"x", "bad_bcc"),
        (b"hello\r\n", "garbage"),
        (b"\x02(1)\x03\x02", "garbage"),
    ],
)
def test_classify(message, kind):
    assert classify(message)[0] == kind
    assert (kind in ALLOWED_KINDS) == is_allowed_command(message)


def test_ignore_baud_keeps_programming_mode_at_300():
    meter = model(ignore_baud="1")
    _, [operand] = enter(meter)
    assert operand.baud == 300
    assert meter.listen_baud_at(operand.end) == 300
    answer, _ = read(meter, "1.8.0", 5.0)
    assert answer.baud == 300


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"progmode": "ignore"}, "nothing"),
        ({"progmode": "0"}, "nothing"),
        ({"progmode": "nak"}, "nak"),
        ({"progmode": "readout"}, "readout"),
        ({"refuse_progmode": "nak"}, "nak"),
        ({"refuse_progmode": "1"}, "nak"),
        ({"refuse_progmode": "readout"}, "readout"),
        ({"refuse_progmode": "ignore"}, "nothing"),
    ],
)
def test_meters_without_programming_mode_and_refusals(options, expect):
    meter = model(**options)
    ident, answers = enter(meter)
    receiver = OperandReceiver()
    if expect == "nothing":
        assert answers == []
    else:
        [answer] = answers
        assert answer.baud == 9600
        with pytest.raises(ProgrammingModeRefused):
            receiver.feed(answer.data)
        if expect == "readout":
            assert len(meter.history) == 1
            assert meter.history[0].baud == 9600
    later = answers[0].end if answers else ident.end
    assert meter.state(later + 0.01) is SessionState.IDLE
    assert meter.listen_baud_at(later + 0.01) == 300


def test_refusal_is_a_runtime_fault():
    meter = model()
    enter(meter)
    meter.receive(build_break(), 5.0)
    meter.faults = parse_config({"refuse_progmode": "nak"}).faults
    assert enter(meter, 10.0)[1][0].data == NAK
    meter.faults = parse_config({}).faults
    assert enter(meter, 20.0)[1][0].data == P0


def test_bad_bcc_on_the_nth_read_and_an_intact_repeat():
    meter = model(read_bad_bcc_at="3", power="0")
    enter(meter)
    datas = []
    for number in range(4):
        [answer] = meter.receive(build_read("1.8.0"), 5.0 + number)
        datas.append(answer.data)
    assert datas[0] == datas[1] == datas[3] != datas[2]
    assert datas[2][:-1] == datas[0][:-1]
    with pytest.raises(ProtocolError, match="BCC"):
        RegisterReceiver("1.8.0").feed(datas[2])
    assert [r.fault for r in meter.reads] == ["", "", "bad_bcc", ""]
    meter2 = model(read_bad_bcc_at="1", power="0")
    enter(meter2)
    [bad] = meter2.receive(build_read("1.8.0"), 5.0)
    [again] = meter2.receive(REPEAT_REQUEST, 6.0)
    assert bad.data != again.data == datas[0]


def test_silence_from_t_for_s_seconds():
    meter = model(silent_from="10", silent_for="5", progmode_timeout="60", power="0")
    enter(meter)
    assert read(meter, "1.8.0", 9.0) is not None
    assert read(meter, "1.8.0", 10.0) is None
    assert meter.receive(build_break(), 12.0) == []  # not heard
    assert read(meter, "1.8.0", 14.9) is None
    assert meter.state(14.9) is SessionState.PROGRAMMING
    assert read(meter, "1.8.0", 15.0) is not None
    assert meter.command_counts["read"] == 4  # all of them are in the log


def test_a_long_silence_outlasts_programming_mode():
    meter = model(silent_from="5", silent_for="20", progmode_timeout="10")
    enter(meter)
    assert read(meter, "1.8.0", 4.0) is not None
    assert read(meter, "1.8.0", 6.0) is None
    assert meter.receive(REQUEST, 20.0) == []  # silent, and no longer in programming mode
    assert meter.state(20.0) is SessionState.IDLE
    assert enter(meter, 30.0)[1][0].data == P0


def test_error_registers_and_the_silent_switch():
    meter = model(error_registers="1.8.0, 2.8.0")
    enter(meter)
    assert read(meter, "1.8.0", 5.0)[1].reading is None
    assert read(meter, "2.8.0", 6.0)[1].reading is None
    assert read(meter, "1.8.1", 7.0)[1].reading is not None
    meter.faults = parse_config({"silent": "1"}).faults
    assert read(meter, "1.8.1", 8.0) is None


def test_the_simple_profile_and_addressed_requests_in_programming_mode():
    meter = MeterModel(MeterConfig(profile=SIMPLE, speedup=INSTANT, progmode="on"), 0.0)
    [ident] = meter.receive(b"/?61234567!\r\n", 0.0)
    [operand] = meter.receive(b"\x06051\r\n", ident.end)
    assert operand.data == P0
    assert read(meter, "1.8.1", 3.0)[1].reading is None  # no tariffs


# --- load profiles ---------------------------------------------------------------------------
def test_load_profile_text():
    assert parse_load("300,2000@20s") == (LoadStep(0.0, 300), LoadStep(20.0, 2000))
    assert parse_load("300,2000@20s,800@60s")[2] == LoadStep(60.0, 800)
    assert parse_load("0@0, 10 @ 1.5s,5@2") == (
        LoadStep(0.0, 0),
        LoadStep(1.5, 10),
        LoadStep(2.0, 5),
    )
    config = parse_config({"load": "300,2000@20s", "export_load": "0,100@5"})
    assert (config.start_import_w, config.start_export_w) == (300, 0)
    assert parse_url("sim://me162?load=300,2000@20s&progmode=on").load[1] == LoadStep(20, 2000)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"load": ""}, "is not W or W@Ts"),
        ({"load": "300,"}, "is not W or W@Ts"),
        ({"load": "lots"}, "is not W or W@Ts"),
        ({"load": "-5"}, "is not W or W@Ts"),
        ({"load": "300@20s"}, "first step starts at 0"),
        ({"load": "300,2000@20s,800@10s"}, "step times must increase"),
        ({"load": "300,2000@20s,800@20s"}, "step times must increase"),
        ({"load": "300,20000000@5"}, "power must be"),
        ({"load": "300,2000@5m"}, "is not W or W@Ts"),
        ({"load": "300", "power": "5"}, "power and load"),
        ({"export_load": "1", "export": "5"}, "export and export_load"),
        ({"progmode": "perhaps"}, "progmode"),
        ({"progmode_timeout": "0"}, "progmode_timeout"),
        ({"refuse_progmode": "sometimes"}, "refuse_progmode"),
        ({"read_bad_bcc_at": "-1"}, "read_bad_bcc_at"),
        ({"silent_for": "-1"}, "silent_for"),
        ({"error_registers": "1.8.0,nonsense"}, "not an OBIS code"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(options)


def test_bad_load_in_a_url():
    with pytest.raises(ConfigError, match=r"sim://me162\?load=1,2@0: .*increase"):
        parse_url("sim://me162?load=1,2@0")
    with pytest.raises(ConfigError, match="load: the first step"):
        MeterConfig(load=(LoadStep(1.0, 5),))


def test_counters_step_when_the_integrated_energy_crosses_each_wh():
    # 3600 W = 1 Wh/s; from 10 s on 7200 W = 2 Wh/s; from 12.25 s on 0 W
    meter = model(load="3600,7200@10s,0@12.25s", import_wh="0,0", now=100.0)
    assert meter.registers(109.999).import_total_wh == 9
    assert meter.registers(110.0).import_total_wh == 10
    assert meter.registers(110.499).import_total_wh == 10
    assert meter.registers(110.5).import_total_wh == 11
    assert meter.registers(112.0).import_total_wh == 14
    assert meter.registers(112.25).import_total_wh == 14  # 14.5 Wh: half a Wh stays behind
    assert meter.registers(1000.0).import_total_wh == 14


def test_steps_apply_at_their_instant_however_rarely_the_meter_is_asked():
    often = model(load="1000,3000@7.5s,200@13s", import_wh="0,0")
    for tenth in range(0, 300):
        often.registers(tenth / 10)
    rarely = model(load="1000,3000@7.5s,200@13s", import_wh="0,0")
    assert rarely.registers(30.0) == often.registers(30.0)
    expected_j = 1000 * 7.5 + 3000 * 5.5 + 200 * 17
    assert rarely.registers(30.0).import_total_wh == int(expected_j // 3600)


def test_export_load_and_set_power_between_steps():
    meter = model(export_load="0,3600@5s", load="0", import_wh="0,0", export_wh="0,0")
    assert meter.registers(4.9).export_total_wh == 0
    assert meter.registers(7.0).export_total_wh == 2
    meter.set_power(7.0, import_w=7200)  # until the next step of its profile (there is none)
    assert meter.registers(8.0).import_total_wh == 2
    assert meter.registers(8.0).import_w == 7200


def test_cli_flags():
    args = build_parser().parse_args(
        ["--progmode", "on", "--load", "300,2000@20s", "--read-bad-bcc-at", "5"]
    )
    options = _options(args)
    assert options == {"progmode": "on", "load": "300,2000@20s", "read_bad_bcc_at": "5"}
    config = parse_config(options)
    assert (config.progmode, config.faults.read_bad_bcc_at) == ("on", 5)


# --- a small client with the protocol core, over a real line ---------------------------------
class Client:
    """A programming-mode reader written with the protocol core; checks every message it sends."""

    def __init__(self, ser: serial.SerialBase) -> None:
        self.ser = ser
        self.sent: list[bytes] = []
        self.polls: list[tuple[str, float, float, int]] = []  # register, sent, received, Wh

    def send(self, message: bytes) -> None:
        assert is_allowed_command(message), message
        self.sent.append(message)
        self.ser.write(message)
        self.ser.flush()

    def receive(self, receiver, data: bytes = b"", timeout: float = 3.0):
        receiver.feed(data)
        deadline = time.monotonic() + timeout
        while (result := receiver.result()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer")
            receiver.feed(self.ser.read(self.ser.in_waiting or 1))
        return result

    def baud(self, rate: int) -> None:
        if self.ser.baudrate != rate:  # a pty refuses a change that changes nothing
            self.ser.baudrate = rate

    def enter(self) -> Operand:
        self.baud(300)
        self.send(REQUEST)
        ident_rx = IdentificationReceiver()
        ident = self.receive(ident_rx)
        time.sleep(ident.reaction_time)
        self.send(build_ack(ident, highspeed=True, option=PROGRAMMING_MODE))
        self.baud(data_baudrate(ident, highspeed=True))
        return self.receive(OperandReceiver(), ident_rx.trailing_data)

    def read(self, register: str, timeout: float = 3.0):
        sent = time.monotonic()
        self.send(build_read(register))
        value = self.receive(RegisterReceiver(register), timeout=timeout)
        if value.reading is not None:
            wh = int(value.reading.value * 1000)
            self.polls.append((register, sent, time.monotonic(), wh))
        return value

    def leave(self) -> None:
        self.send(build_break())
        time.sleep(0.05)
        self.baud(300)


def crossings(start_wh: int, steps: list[tuple[float, int]], started: float, until: float):
    """(Wh, instant) of every 1 Wh step of a counter that starts at start_wh at ``started``."""
    result = []
    joules = 0.0
    bounds = [*(started + at for at, _ in steps[1:]), until]
    t = started
    for (_, watts), end in zip(steps, bounds, strict=True):
        while watts > 0:
            due = t + ((len(result) + 1) * 3600 - joules) / watts
            if due > end:
                break
            result.append((start_wh + len(result) + 1, due))
        joules += watts * (end - t)
        t = end
    return result


def check_steps(client: Client, register: str, expected: list[tuple[int, float]]) -> int:
    """Every step the polls saw lies between the previous poll and this one; returns how many."""
    polls = [p for p in client.polls if p[0] == register]
    seen = 0
    for (_, sent_before, _, wh_before), (_, _, received, wh) in itertools.pairwise(polls):
        steps = [at for number, at in expected if wh_before < number <= wh]
        assert len(steps) == wh - wh_before, (register, wh_before, wh, expected)
        for at in steps:
            assert sent_before - 0.005 <= at <= received + 0.005, (register, at, sent_before)
        seen += len(steps)
    # A step the counter missed would show up one poll late, before ``sent_before``: so every
    # step is seen, each within one poll interval of its true instant.
    return seen


@pytest.fixture
def pty_meter(tmp_path):
    meters = []

    def make(**options: str) -> PtyMeter:
        options.setdefault("progmode", "on")
        meter = PtyMeter(tmp_path / "ttyMETER", parse_config(options))
        meters.append(meter.start())
        return meter

    yield make
    for meter in meters:
        meter.stop()


def open_port(path) -> serial.Serial:
    return serial.Serial(str(path), 300, bytesize=7, parity="E", timeout=0.05)


def test_pty_session_sees_each_step_of_a_load_step_within_one_poll(pty_meter):
    # 1800 W (a Wh every 2 s), then 7200 W (every 0.5 s) from 3 s on; export 0, then 3600 W
    # (a Wh a second) from 4 s on. Each R1 takes the meter's 200 ms and the line's ~25 ms.
    meter = pty_meter(
        load="1800,7200@3s", export_load="0,3600@4s", import_wh="1000,0", export_wh="500,0"
    )
    with open_port(meter.port) as ser:
        client = Client(ser)
        assert client.enter() == Operand("")
        assert meter.state() is SessionState.PROGRAMMING
        deadline = meter.started + 6.5
        while time.monotonic() < deadline:
            client.read("1.8.0")
            client.read("2.8.0")
        client.leave()
    assert meter.state() is SessionState.IDLE
    intervals = [b[2] - a[2] for a, b in zip(client.polls[::2], client.polls[2::2], strict=False)]
    assert max(intervals) < 1.5  # two registers a cycle, ~0.45 s
    until = meter.started + 7.0
    imports = crossings(1000, [(0, 1800), (3, 7200)], meter.started, until)
    exports = crossings(500, [(0, 0), (4, 3600)], meter.started, until)
    assert check_steps(client, "1.8.0", imports) >= 6
    assert check_steps(client, "2.8.0", exports) >= 1
    assert meter.violations == 0
    assert all(is_allowed_command(c.data) for c in meter.commands)
    assert [c.data for c in meter.commands] == client.sent
    assert client.sent[-1] == build_break()
    assert {r.baud for r in meter.reads} == {9600}


def test_pty_inactivity_timeout_and_a_fresh_session(pty_meter):
    meter = pty_meter(progmode_timeout="1.0", power="0")
    with open_port(meter.port) as ser:
        client = Client(ser)
        client.enter()
        assert client.read("1.8.0").reading.value == Decimal("1999.999")
        time.sleep(1.3)
        assert meter.state() is SessionState.IDLE
        with pytest.raises(TimeoutError):
            client.read("1.8.0", timeout=0.6)  # at 9600 Bd to a meter listening at 300
        assert client.enter() == Operand("")  # a fresh session
        assert client.read("2.8.0").reading.value == Decimal("13.465")
        client.leave()
    assert meter.violations == 0


def test_pty_b0_then_a_readout_session(pty_meter):
    meter = pty_meter()
    with open_port(meter.port) as ser:
        client = Client(ser)
        client.enter()
        assert client.read("9.9.9").reading is None  # (ERROR)
        client.leave()
        assert meter.state() is SessionState.IDLE
        client.send(REQUEST)
        ident_rx = IdentificationReceiver()
        ident = client.receive(ident_rx)
        assert ident.raw == b"/ISK5ME162-0033"
    assert meter.violations == 0


@pytest.mark.parametrize("refusal", ["nak", "readout"])
def test_pty_refused_programming_mode(pty_meter, refusal):
    meter = pty_meter(progmode=refusal)
    with open_port(meter.port) as ser, pytest.raises(ProgrammingModeRefused):
        Client(ser).enter()
    assert meter.state() is SessionState.IDLE


def test_pty_meter_without_programming_mode_stays_silent(pty_meter):
    meter = pty_meter(progmode="ignore")
    with open_port(meter.port) as ser, pytest.raises(TimeoutError):
        client = Client(ser)
        client.send(REQUEST)
        ident = client.receive(IdentificationReceiver())
        client.send(build_ack(ident, highspeed=True, option=PROGRAMMING_MODE))
        client.baud(9600)
        client.receive(OperandReceiver(), timeout=0.8)


def test_pty_counts_what_a_reader_must_not_send(pty_meter):
    meter = pty_meter(power="0")
    with open_port(meter.port) as ser:
        client = Client(ser)
        client.enter()
        before = meter.registers()
        ser.write(command(b"W1", b"1.8.0(0000000.000)"))  # bypasses the client's check
        ser.flush()
        with pytest.raises(ProtocolError, match="NAK"):
            client.receive(RegisterReceiver("1.8.0"))
        client.leave()
    assert meter.registers() == before
    assert meter.violations == 1
    assert [c.kind for c in meter.commands if not c.allowed] == ["forbidden"]


# --- the same meter behind sim:// -------------------------------------------------------------
@pytest.fixture
def sim_url():
    added = "iskra_me162.urlhandler" not in serial.protocol_handler_packages
    if added:
        serial.protocol_handler_packages.append("iskra_me162.urlhandler")

    def open_url(url: str):
        return serial.serial_for_url(url, baudrate=300, bytesize=7, parity="E", timeout=0.05)

    yield open_url
    if added:
        serial.protocol_handler_packages.remove("iskra_me162.urlhandler")


def test_sim_url_session_with_a_load_step(sim_url):
    with sim_url("sim://me162?progmode=on&load=3600,36000@3s&import_wh=0,0") as ser:
        client = Client(ser)
        client.enter()  # about 1.3 s at 300 Bd
        first = client.read("1.8.0").reading.value
        time.sleep(max(0.0, ser.started + 3.5 - time.monotonic()))
        second = client.read("1.8.0").reading.value
        client.leave()
        assert ser.state() is SessionState.IDLE
        assert ser.violations == 0
        assert [c.kind for c in ser.commands] == ["request", "ack", "read", "read", "break"]
        reads = ser.reads
    assert first <= Decimal("0.002")  # 1 Wh/s
    assert second - first >= Decimal("0.004")  # then 10 Wh/s from 3 s on
    assert [r.register for r in reads] == ["1.8.0", "1.8.0"]


def test_sim_url_meter_without_programming_mode_and_sml_meters(sim_url):
    with (
        sim_url("sim://me162?progmode=nak&speedup=inf") as ser,
        pytest.raises(ProgrammingModeRefused),
    ):
        Client(ser).enter()
    with sim_url("sim://mt175?speedup=inf") as ser, pytest.raises(ConfigError, match="SML"):
        ser.commands  # noqa: B018


def test_mt174_programming_mode_answers_at_20_ms():
    meter = MeterModel(MeterConfig(profile=MT174, speedup=INSTANT, progmode="on"), 0.0)
    [ident] = meter.receive(REQUEST, 0.0)
    [operand] = meter.receive(ACK_PROG, ident.end)
    assert operand.start == pytest.approx(ident.end + 0.02)
