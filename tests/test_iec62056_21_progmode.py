"""IEC 62056-21 programming mode (option 1) in the protocol core: the messages the daemon sends,
the allow-list every sent byte must pass, and the receivers of P0 and of R1 answers.

The meter's answers are built here with a BCC computed from its definition (XOR of every byte
after SOH, or after STX when there is no header, up to and including ETX), so the tests do not
lean on the code under test.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.protocols.iec62056_21 import (
    ALLOWED_COMMANDS,
    MAX_ANSWER,
    PROGRAMMING_MODE,
    REPEAT_REQUEST,
    REQUEST,
    IdentificationReceiver,
    Operand,
    OperandReceiver,
    ProgrammingModeRefused,
    RegisterReceiver,
    RegisterValue,
    build_ack,
    build_break,
    build_read,
    is_allowed_command,
    parse_identification,
)

SOH, STX, ETX, NAK = b"\x01", b"\x02", b"\x03", b"\x15"
ME162 = parse_identification(b"/ISK5ME162-0033")


def xor_bcc(data: bytes) -> bytes:
    result = 0
    for byte in data:
        result ^= byte
    return bytes([result])


def command(head: bytes, data: bytes | None = None) -> bytes:
    """SOH head [STX data] ETX BCC, BCC over everything after SOH."""
    body = head + (b"" if data is None else STX + data) + ETX
    return SOH + body + xor_bcc(body)


def answer(data: bytes) -> bytes:
    """STX data ETX BCC, BCC over everything after STX."""
    return STX + data + ETX + xor_bcc(data + ETX)


P0_EMPTY = command(b"P0", b"()")
P0_SERIAL = command(b"P0", b"(61234567)")
VALUE = answer(b"(0032927.960*kWh)")


def receive(receiver, data: bytes):
    receiver.feed(data)
    return receiver.result()


def splits(data: bytes):
    """Every way to cut ``data`` in two, and byte by byte."""
    for cut in range(len(data) + 1):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


# --- what the daemon sends -------------------------------------------------------------------
def test_programming_mode_ack_and_the_readout_ack_is_unchanged():
    assert PROGRAMMING_MODE == "1"
    assert build_ack(ME162, highspeed=True, option=PROGRAMMING_MODE) == b"\x06051\r\n"
    assert build_ack(ME162, highspeed=False, option="1") == b"\x06001\r\n"
    assert build_ack(ME162, highspeed=True) == b"\x06050\r\n"
    assert build_ack(ME162, True, "0") == b"\x06050\r\n"
    for option in ("2", "6", "", "01"):
        with pytest.raises(ValueError, match="option"):
            build_ack(ME162, True, option)


def test_read_and_break_messages():
    assert build_read("1.8.0") == SOH + b"R1" + STX + b"1.8.0()" + ETX + b"Z"
    assert build_read("1.8.0") == command(b"R1", b"1.8.0()")
    assert build_read("2.8.0") == command(b"R1", b"2.8.0()")
    assert build_read("1-0:1.8.1*255") == command(b"R1", b"1-0:1.8.1*255()")
    assert build_read("C.1.0") == command(b"R1", b"C.1.0()")
    assert build_break() == b"\x01B0\x03q" == command(b"B0")
    assert REPEAT_REQUEST == NAK


@pytest.mark.parametrize("register", ["", "1.8.0()", "1.8.0)\x03", "W1", "1.8.0\x02", "１.8.0"])
def test_read_refuses_anything_but_an_obis_code(register):
    with pytest.raises(ProtocolError):
        build_read(register)


@pytest.mark.parametrize(
    "message",
    [
        REQUEST,
        b"/?28342193!\r\n",
        b"\x06050\r\n",
        b"\x06000\r\n",
        b"\x06051\r\n",
        b"\x06061\r\n",
        build_read("1.8.0"),
        build_read("2.8.0"),
        build_read("1.8.2"),
        build_read("1-0:2.8.0*255"),
        build_break(),
        REPEAT_REQUEST,
    ],
)
def test_allowed_commands(message):
    assert message.startswith(ALLOWED_COMMANDS)
    assert is_allowed_command(message)


@pytest.mark.parametrize(
    "message",
    [
        command(b"W1", b"1.8.0(0000000.000)"),  # write
        command(b"W2", b"0.9.1(120000)"),
        command(b"W5", b"C.1.0(1)"),
        command(b"E2", b"0.9.1()"),  # execute
        command(b"E1", b"reset()"),
        command(b"P1", b"(00000000)"),  # password
        command(b"P2", b"(12345678)"),
        command(b"P0", b"()"),  # the meter's message, never ours
        command(b"B1"),
        command(b"B0", b"()"),
        command(b"R2", b"1.8.0()"),  # formatted read
        command(b"R3", b"P.01(;)"),  # load profile / partial blocks
        command(b"R5", b"1.8.0()"),
        command(b"R1", b"1.8.0(1)"),  # an R1 that carries data
        command(b"R1", b"()"),
        command(b"R1")[:-1] + b"\x00",
        build_read("1.8.0")[:-1] + b"\x00",  # wrong BCC
        build_break()[:-1] + b"p",
        build_read("1.8.0") + b"\x00",  # anything after the BCC
        build_read("1.8.0")[:-1],  # cut short
        build_read("1.8.0") + build_break(),  # two messages are two writes
        b"\x06052\r\n",  # option 2: binary (HDLC) mode
        b"\x06150\r\n",  # another protocol character
        b"\x06071\r\n",  # no such baud character
        b"\x06050",
        REQUEST + REQUEST,
        b"/?!",
        b"/?x/!\r\n",
        NAK + NAK,
        b"\x06",
        b"\x04",
        b"",
        b"\x01",
        b"\x00/?!\r\n",
    ],
)
def test_everything_else_is_refused(message):
    assert not is_allowed_command(message)


# --- P0: the meter's answer to the option-1 ACK ------------------------------------------------
@pytest.mark.parametrize(("raw", "data"), [(P0_EMPTY, ""), (P0_SERIAL, "61234567")])
def test_operand_at_every_split_point(raw, data):
    for pieces in splits(raw):
        receiver, fed = OperandReceiver(), 0
        for piece in pieces:
            receiver.feed(piece)
            fed += len(piece)
            assert (receiver.result() is None) == (fed < len(raw))
        assert receiver.result() == Operand(data)


def test_operand_after_the_echo_of_the_ack_and_noise():
    ack = build_ack(ME162, True, PROGRAMMING_MODE)
    assert receive(OperandReceiver(), ack + P0_EMPTY) == Operand("")
    assert receive(OperandReceiver(), b"\x7f\x00\x7f" + P0_SERIAL) == Operand("61234567")
    assert receive(OperandReceiver(), ack + b"\r\n\x7f" + P0_EMPTY) == Operand("")


def test_operand_follows_the_identification_in_one_read():
    ident_rx = IdentificationReceiver()
    ident_rx.feed(b"/ISK5ME162-0033\r\n" + P0_EMPTY[:4])
    assert ident_rx.result() == ME162
    receiver = OperandReceiver()
    receiver.feed(ident_rx.trailing_data)
    assert receiver.result() is None
    assert receive(receiver, P0_EMPTY[4:] + b"\x7f") == Operand("")
    assert receive(receiver, b"more") == Operand("")  # after the answer: ignored


def test_nak_or_a_readout_instead_of_p0_is_a_refusal():
    for raw in (NAK, b"\x7f" + NAK, answer(b"1.8.0(0032927.960*kWh)\r\n!\r\n")):
        receiver = OperandReceiver()
        with pytest.raises(ProgrammingModeRefused):
            receiver.feed(raw)
        with pytest.raises(ProgrammingModeRefused):  # and it stays failed
            receiver.result()
    assert issubclass(ProgrammingModeRefused, ProtocolError)


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (P0_EMPTY[:-1] + b"\x00", ChecksumError, "BCC"),
        (P0_SERIAL.replace(b"612", b"613"), ChecksumError, "BCC"),
        (command(b"P0", b"61234567"), ProtocolError, "P0"),  # no brackets
        (command(b"P1", b"()"), ProtocolError, "P1"),
        (command(b"B0"), ProtocolError, "expected SOH P0"),  # the meter ends the session
        (b"\x7f" * (MAX_ANSWER + 1), ProtocolError, "no complete answer"),
        (SOH + b"P0" + STX + b"(" * MAX_ANSWER, ProtocolError, "no complete answer"),
    ],
)
def test_bad_operand(raw, error, message):
    receiver = OperandReceiver()
    with pytest.raises(error, match=message) as raised:
        receiver.feed(raw)
    assert not isinstance(raised.value, ProgrammingModeRefused)  # a fault, not a refusal
    with pytest.raises(error):
        receiver.feed(P0_EMPTY)  # a failed receiver stays failed


# --- R1 answers -------------------------------------------------------------------------------
def test_register_value_at_every_split_point():
    for pieces in splits(VALUE):
        receiver, fed = RegisterReceiver("1.8.0"), 0
        for piece in pieces:
            receiver.feed(piece)
            fed += len(piece)
            assert (receiver.result() is None) == (fed < len(VALUE))
        value = receiver.result()
        assert isinstance(value, RegisterValue)
        assert value.register == "1.8.0"
        assert value.raw == "(0032927.960*kWh)"
        reading = value.reading
        assert reading is not None
        assert reading.code.text == "1.8.0"
        assert (reading.value, reading.unit, reading.raw) == (
            Decimal("32927.960"),
            "kWh",
            "0032927.960*kWh",
        )


def test_register_value_after_the_echo_of_the_read():
    read = build_read("2.8.0")
    value = receive(RegisterReceiver("2.8.0"), read + answer(b"(0000013.465*kWh)"))
    assert value.reading.value == Decimal("13.465")
    # noise before the echo: the echo is recognised by its R1 head and skipped all the same
    value = receive(RegisterReceiver("2.8.0"), b"\x00" + read + answer(b"(0000013.465*kWh)"))
    assert value.reading.value == Decimal("13.465")


def test_the_echo_of_a_repeat_request_is_not_the_meters_nak():
    receiver = RegisterReceiver("1.8.0", repeat=True)
    assert receive(receiver, NAK + VALUE).reading.value == Decimal("32927.960")
    assert receive(RegisterReceiver("1.8.0", repeat=True), VALUE).reading is not None  # no echo
    with pytest.raises(ProtocolError, match="NAK"):
        RegisterReceiver("1.8.0", repeat=True).feed(NAK + NAK)  # the meter's own NAK
    with pytest.raises(ProtocolError, match="NAK"):
        RegisterReceiver("1.8.0").feed(NAK)


@pytest.mark.parametrize(
    ("register", "data", "value", "unit"),
    [
        ("1.8.0", b"1.8.0(0032927.960*kWh)", "32927.960", "kWh"),  # with the address
        ("1.8.0", b"1-0:1.8.0*255(0032927.960*kWh)", "32927.960", "kWh"),
        ("1-0:1.8.0*255", b"(0032927.960*kWh)", "32927.960", "kWh"),
        ("1.8.1", b"(0001234.567*kWh)\r\n", "1234.567", "kWh"),
        ("1.7.0", b"(1.250*kW)", "1.250", "kW"),
        ("1.8.0", b"(032942.0231)", "32942.0231", None),  # EMH style, no unit
    ],
)
def test_register_value_forms(register, data, value, unit):
    reading = receive(RegisterReceiver(register), answer(data)).reading
    assert (reading.value, reading.unit) == (Decimal(value), unit)


def test_text_registers_keep_their_text():
    reading = receive(RegisterReceiver("C.1.0"), answer(b"(61234567)")).reading
    assert (reading.value, reading.raw) == (None, "61234567")
    reading = receive(RegisterReceiver("F.F"), answer(b"(0000000)")).reading
    assert reading.raw == "0000000"


@pytest.mark.parametrize("data", [b"(ERROR)", b"(ERR)", b"(ER01)", b"(error)", b"1.8.0(ERROR)"])
def test_unknown_register(data):
    value = receive(RegisterReceiver("1.8.0"), answer(data))
    assert value.reading is None
    assert value.raw == data.decode()


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (VALUE[:-1] + bytes([VALUE[-1] ^ 1]), ChecksumError, "BCC"),
        (VALUE.replace(b"927", b"926"), ChecksumError, "BCC"),
        (NAK, ProtocolError, "NAK"),
        (b"\x7f\x7f" + NAK, ProtocolError, "NAK"),
        (command(b"B0"), ProtocolError, "not an answer for 1.8.0: 'B0'"),
        (answer(b"2.8.0(0000013.465*kWh)"), ProtocolError, "not an answer for 1.8.0"),
        (answer(b"(1)(2)\r\n2.8.0(3)"), ProtocolError, "not an answer"),
        (answer(b""), ProtocolError, "not an answer"),
        (answer(b"garbage"), ProtocolError, "not an answer"),
        (answer(b"(0032927.960*kWh"), ProtocolError, "not an answer"),
        (command(b"P0", b"()"), ProtocolError, "not an answer"),
        (b"\x00" * (MAX_ANSWER + 1), ProtocolError, "no complete answer"),
        (STX + b"9" * MAX_ANSWER, ProtocolError, "no complete answer"),
    ],
)
def test_bad_register_answers(raw, error, message):
    receiver = RegisterReceiver("1.8.0")
    with pytest.raises(error, match=message) as raised:
        receiver.feed(raw)
    assert not isinstance(raised.value, ProgrammingModeRefused)
    with pytest.raises(error):  # it stays failed
        receiver.result()


def test_extra_groups_go_to_extra():
    reading = receive(RegisterReceiver("1.6.0"), answer(b"(01.234*kW)(2401011200)")).reading
    assert reading.value == Decimal("1.234")
    assert reading.extra == ("2401011200",)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(min_value=1, max_value=8))
def test_receivers_raise_only_protocol_errors(noise, chunk):
    for receiver in (OperandReceiver(), RegisterReceiver("1.8.0")):
        data = noise + VALUE + P0_EMPTY
        try:
            for start in range(0, len(data), chunk):
                receiver.feed(data[start : start + chunk])
            result = receiver.result()
        except ProtocolError:
            continue
        assert result is None or isinstance(result, Operand | RegisterValue)


# --- a whole session with byte strings alone --------------------------------------------------
def test_a_whole_programming_mode_session():
    sent = []

    def send(message: bytes) -> bytes:
        assert is_allowed_command(message), message
        sent.append(message)
        return message

    send(REQUEST)
    ident_rx = IdentificationReceiver()
    ident_rx.feed(REQUEST + b"/ISK5ME162-0033\r\n")  # with the head's echo of the request
    ident = ident_rx.result()
    assert ident.reaction_time == pytest.approx(0.2)
    ack = send(build_ack(ident, highspeed=True, option=PROGRAMMING_MODE))
    assert receive(OperandReceiver(), ack + P0_EMPTY) == Operand("")
    values = {}
    for register, data in (("1.8.0", b"(0032927.960*kWh)"), ("2.8.0", b"(0000013.465*kWh)")):
        read = send(build_read(register))
        values[register] = receive(RegisterReceiver(register), read + answer(data)).reading.value
    read = send(build_read("1.8.9"))
    assert receive(RegisterReceiver("1.8.9"), answer(b"(ERROR)")).reading is None
    send(build_break())
    assert values == {"1.8.0": Decimal("32927.960"), "2.8.0": Decimal("13.465")}
    assert sent == [
        b"/?!\r\n",
        b"\x06051\r\n",
        b"\x01R1\x021.8.0()\x03Z",
        b"\x01R1\x022.8.0()\x03Y",
        b"\x01R1\x021.8.9()\x03S",
        b"\x01B0\x03q",
    ]
