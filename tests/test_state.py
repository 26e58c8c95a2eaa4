"""The state file (real files) and power from counter deltas across restarts."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.p1 import P1Calculator, P1Values
from iskra_me162.state import (
    STATE_FORMAT,
    STATE_VERSION,
    CounterSnapshot,
    DeltaPower,
    Rebase,
    SavedState,
    StateStore,
    current_boot_id,
    power_between,
)
from tests.test_p1 import make_readout

BOOT = "3f0c6a4e-0000-4000-8000-000000000001"
OTHER_BOOT = "3f0c6a4e-0000-4000-8000-000000000002"
WHEN = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def snapshot(monotonic: float = 100.0, imported: str = "1000", exported: str | None = "5"):
    return CounterSnapshot(
        meter_id="12345678",
        sources="1.8.0|2.8.0" if exported is not None else "1.8.0|-",
        import_wh=Decimal(imported),
        export_wh=None if exported is None else Decimal(exported),
        monotonic=monotonic,
        wall_time=WHEN,
    )


def saved(monotonic: float = 100.0, imported: str = "1000", boot: str = BOOT) -> SavedState:
    return SavedState(snapshot(monotonic, imported), sent=(1, 0, 0, 0), boot_id=boot)


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- round trip and format --------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "state"
    state = SavedState(snapshot(123.25, "8048375.125", None), sent=(8048375, 0, 0, 0), boot_id=BOOT)
    assert StateStore(path, boot_id=BOOT).save(state) is True
    assert StateStore(path, boot_id=BOOT).load() == state


def test_state_file_is_versioned_json_with_exact_decimals(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=BOOT).save(saved(imported="8048375.125"))
    document = json.loads(path.read_text())
    assert document["format"] == STATE_FORMAT
    assert document["version"] == STATE_VERSION == 1
    assert document["import_wh"] == "8048375.125"
    assert document["boot_id"] == BOOT
    assert document["sent"] == {"u1": 1, "u2": 0, "r1": 0, "r2": 0}


def test_boot_id_is_the_kernels():
    boot_id = current_boot_id()
    if not Path("/proc/sys/kernel/random/boot_id").exists():
        pytest.skip("no /proc/sys/kernel/random/boot_id on this system")
    assert len(boot_id) == 36 and boot_id.count("-") == 4
    assert StateStore(None).boot_id == boot_id


def test_no_path_means_no_state_and_no_warnings(caplog):
    store = StateStore(None, boot_id=BOOT)
    with caplog.at_level(logging.DEBUG):
        assert store.load() is None
        assert store.save(saved()) is False
    assert warnings_in(caplog) == []


# --- bad files: a warning, once per cause, and the daemon goes on -----------------------------


def test_missing_file_warns_once(tmp_path, caplog):
    store = StateStore(tmp_path / "state", boot_id=BOOT)
    with caplog.at_level(logging.DEBUG):
        assert store.load() is None
        assert store.load() is None
    assert len(warnings_in(caplog)) == 1
    assert "does not exist" in warnings_in(caplog)[0]


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b'{"format": "iskra-me162-state", "vers', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"8048375;0;0;0;0;0\n", "not valid JSON"),  # e.g. the old program's state file
        (b'{"counters": [1, 2, 3]}', "not an iskra-me162 state file"),
        (b"[1, 2, 3]", "not an iskra-me162 state file"),
        (b'"iskra-me162-state"', "not an iskra-me162 state file"),
        (b'{"format": "iskra-me162-state", "version": 2}', "format version 2"),
        (b'{"format": "iskra-me162-state"}', "format version None"),
        (b'{"format": "iskra-me162-state", "version": 1}', "invalid content"),
        (b"x" * 70_000, "too large"),
    ],
)
def test_unusable_file_warns_and_is_replaced_by_the_next_save(tmp_path, caplog, content, cause):
    path = tmp_path / "state"
    path.write_bytes(content)
    store = StateStore(path, boot_id=BOOT)
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
        assert store.load() is None
    assert len(warnings_in(caplog)) == 1
    assert cause in warnings_in(caplog)[0]
    assert store.save(saved()) is True
    assert StateStore(path, boot_id=BOOT).load() == saved()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("import_wh", "-5"),
        ("import_wh", "NaN"),
        ("import_wh", 1000),
        ("export_wh", "abc"),
        ("monotonic", "100"),
        ("monotonic", True),
        ("wall_time", "yesterday"),
        ("meter_id", None),
        ("sent", {"u1": -1, "u2": 0, "r1": 0, "r2": 0}),
        ("sent", {"u1": 1.5, "u2": 0, "r1": 0, "r2": 0}),
        ("sent", {"u1": 1}),
        ("sent", [1, 0, 0, 0]),
    ],
)
def test_invalid_fields_are_corrupt_state(tmp_path, caplog, field, value):
    path = tmp_path / "state"
    StateStore(path, boot_id=BOOT).save(saved())
    document = json.loads(path.read_text())
    document[field] = value
    path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING):
        assert StateStore(path, boot_id=BOOT).load() is None
    assert "invalid content" in warnings_in(caplog)[0]


def test_unreadable_state_path_warns(tmp_path, caplog):
    (tmp_path / "state").mkdir()  # a directory: unreadable as a file even for root
    with caplog.at_level(logging.WARNING):
        assert StateStore(tmp_path / "state", boot_id=BOOT).load() is None
    assert "cannot read state file" in warnings_in(caplog)[0]


# Unwritable for root too: root ignores permission bits, so the tests use paths the kernel
# refuses to anyone: a directory component that is a regular file (ENOTDIR), a directory that
# does not exist (ENOENT), and a target that is a directory (EISDIR on rename).
def test_unwritable_under_a_regular_file_warns_once_and_keeps_going(tmp_path, caplog):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("I am a file")
    store = StateStore(blocker / "state", boot_id=BOOT)
    with caplog.at_level(logging.DEBUG):
        assert store.load() is None  # unreadable: one warning
        assert store.save(saved(100, "1000")) is False
        assert store.save(saved(160, "1001")) is False
        assert store.save(saved(220, "1002")) is False
    messages = warnings_in(caplog)
    assert len(messages) == 2, messages
    assert f"cannot write state file {blocker / 'state'}: Not a directory" in messages[1]
    assert blocker.read_text() == "I am a file"


def test_unwritable_in_a_missing_directory(tmp_path, caplog):
    store = StateStore(tmp_path / "no-such-dir" / "state", boot_id=BOOT)
    with caplog.at_level(logging.WARNING):
        assert store.save(saved()) is False
    assert "No such file or directory" in warnings_in(caplog)[0]
    assert not (tmp_path / "no-such-dir").exists()


def test_target_is_a_directory_leaves_no_temp_file(tmp_path, caplog):
    target = tmp_path / "state"
    target.mkdir()
    store = StateStore(target, boot_id=BOOT)
    with caplog.at_level(logging.WARNING):
        assert store.save(saved()) is False
    assert "cannot write state file" in warnings_in(caplog)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    assert list(target.iterdir()) == []


def test_writable_again_after_a_failure_is_logged_and_warns_again_next_time(tmp_path, caplog):
    directory = tmp_path / "later"
    store = StateStore(directory / "state", boot_id=BOOT)
    with caplog.at_level(logging.WARNING):
        assert store.save(saved(100, "1000")) is False
        directory.mkdir()
        assert store.save(saved(160, "1001")) is True
        directory.joinpath("state").unlink()
        directory.rmdir()
        assert store.save(saved(220, "1002")) is False
    messages = warnings_in(caplog)
    assert len(messages) == 3
    assert "written again" in messages[1]
    assert "cannot write" in messages[2]


# --- atomic, and only on change ---------------------------------------------------------------


def test_atomic_write_leaves_no_temp_files_and_replaces_the_file(tmp_path):
    path = tmp_path / "state"
    store = StateStore(path, boot_id=BOOT)
    store.save(saved(100, "1000"))
    first_inode = path.stat().st_ino
    store.save(saved(160, "1001"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    # a new file renamed over the old one, never the old one rewritten in place
    assert path.stat().st_ino != first_inode
    assert StateStore(path, boot_id=BOOT).load() == saved(160, "1001")
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_written_only_when_something_changed(tmp_path):
    path = tmp_path / "state"
    store = StateStore(path, boot_id=BOOT)
    assert store.save(saved(100, "1000")) is True
    before = path.stat()
    # same counters later: the time alone is no reason to write (SD card)
    assert store.save(saved(160, "1000")) is False
    assert store.save(saved(220, "1000")) is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert StateStore(path, boot_id=BOOT).load().snapshot.monotonic == 100
    assert store.save(saved(280, "1001")) is True


def test_unchanged_after_restart_is_not_rewritten(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=BOOT).save(saved(100, "1000"))
    before = path.stat()
    store = StateStore(path, boot_id=BOOT)
    store.load()
    assert store.save(saved(500, "1000")) is False
    assert path.stat().st_ino == before.st_ino


def test_a_new_boot_is_a_change(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=OTHER_BOOT).save(saved(100, "1000", boot=OTHER_BOOT))
    store = StateStore(path, boot_id=BOOT)
    store.load()
    assert store.save(saved(5, "1000", boot=BOOT)) is True


# --- power_between ----------------------------------------------------------------------------


def test_power_between_two_snapshots():
    result = power_between(snapshot(100, "1000", "5"), snapshot(136, "1010", "6"))
    assert result == DeltaPower(import_w=Decimal(1000), export_w=Decimal(100), seconds=36.0)


def test_power_between_without_export():
    result = power_between(snapshot(0, "0", None), snapshot(3600, "250", None))
    assert result == DeltaPower(import_w=Decimal(250), export_w=Decimal(0), seconds=3600.0)


@pytest.mark.parametrize(
    ("later", "reason", "warn"),
    [
        (snapshot(160, "999", "5"), "import counter went backwards by 1 Wh", True),
        (snapshot(160, "1000", "4"), "export counter went backwards", True),
        (snapshot(100, "1000", "5"), "no time passed", True),
        (snapshot(50, "1001", "5"), "no time passed", True),
        (snapshot(3701, "1001", "5"), "3601 s old", False),
        (snapshot(101, "1028", "5"), "jumped by 28 Wh in 1.0 s", True),
        (snapshot(160, "1001", None), "registers changed from 1.8.0|2.8.0 to 1.8.0|-", True),
    ],
)
def test_power_between_rebases(later, reason, warn):
    result = power_between(snapshot(100, "1000", "5"), later, max_interval_s=3600)
    assert isinstance(result, Rebase)
    assert reason in result.reason
    assert result.warn is warn


def test_no_interval_limit_by_default():
    # update_interval may be hours: a long gap gives an average, never a refusal
    result = power_between(snapshot(0, "1000", "5"), snapshot(86400, "13000", "5"))
    assert result == DeltaPower(import_w=Decimal(500), export_w=Decimal(0), seconds=86400.0)


def test_power_between_other_meter():
    other = CounterSnapshot("other", "1.8.0|2.8.0", Decimal(1001), Decimal(5), 160.0, WHEN)
    result = power_between(snapshot(100), other)
    assert isinstance(result, Rebase) and "meter changed" in result.reason


# --- power across a restart -------------------------------------------------------------------


def _run(path: Path, boot: str, monotonic: float, imported: str) -> P1Values | None:
    """One daemon process: load the state, use one readout, record it as sent."""
    calculator = P1Calculator(state=StateStore(path, boot_id=boot))
    readout = make_readout(monotonic, {"1.8.0": imported})
    values = calculator.use(readout)
    if values is not None:
        calculator.record_sent(readout, values)
    return values


def test_power_continues_across_a_restart_in_the_same_boot(tmp_path):
    path = tmp_path / "state"
    calculator = P1Calculator(state=StateStore(path, boot_id=BOOT))
    calculator.use(make_readout(100, {"1.8.0": "1.000"}))
    readout = make_readout(160, {"1.8.0": "1.010"})
    values = calculator.use(readout)
    calculator.record_sent(readout, values)
    # the process restarts: the first readout of the new process gets a correct power figure
    assert _run(path, BOOT, 220, "1.020") == P1Values(1020, 0, 0, 0, 600, 0)


def test_after_a_reboot_the_state_is_not_used_for_power(tmp_path, caplog):
    path = tmp_path / "state"
    StateStore(path, boot_id=OTHER_BOOT).save(
        SavedState(snapshot(5000, "1000", None), sent=(1000, 0, 0, 0), boot_id=OTHER_BOOT)
    )
    # after the reboot monotonic restarts near 0: comparing would give nonsense
    with caplog.at_level(logging.INFO):
        assert _run(path, BOOT, 30, "1.001") is None
    assert "before a reboot" in caplog.text
    assert _run(path, BOOT, 90, "1.002") is None  # nothing was sent, so nothing was stored


def test_after_a_reboot_the_second_readout_gives_power(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=OTHER_BOOT).save(saved(5000, "1000", boot=OTHER_BOOT))
    calculator = P1Calculator(state=StateStore(path, boot_id=BOOT))
    assert calculator.use(make_readout(30, {"1.8.0": "1.001", "2.8.0": "0.005"})) is None
    readout = make_readout(90, {"1.8.0": "1.002", "2.8.0": "0.005"})
    values = calculator.use(readout)
    assert values == P1Values(1002, 0, 5, 0, 60, 0)
    calculator.record_sent(readout, values)
    assert StateStore(path, boot_id=BOOT).load().boot_id == BOOT


def test_counter_backwards_against_the_state_file_rebases(tmp_path, caplog):
    path = tmp_path / "state"
    assert _run(path, BOOT, 100, "1.000") is None
    calculator = P1Calculator(state=StateStore(path, boot_id=BOOT))
    calculator.use(make_readout(100, {"1.8.0": "1.000"}))
    readout = make_readout(160, {"1.8.0": "1.010"})
    calculator.record_sent(readout, calculator.use(readout))
    with caplog.at_level(logging.WARNING):
        assert _run(path, BOOT, 220, "0.005") is None  # meter replaced while we were down
    assert "went backwards" in caplog.text


def test_preview_does_not_write_state(tmp_path):
    path = tmp_path / "state"
    calculator = P1Calculator(state=StateStore(path, boot_id=BOOT))
    calculator.preview(make_readout(0, {"1.8.0": "1", "1.7.0": "0.1"}))
    calculator.use(make_readout(1, {"1.8.0": "1", "1.7.0": "0.1"}))  # used, not sent
    assert not path.exists()
