"""The derive stage's state file (real files: StateStore, SavedState) and the counter functions
behind power from counter change (implausible, power_between, CounterWindow).

The Deriver's use of them (power continues after a restart, not after a reboot, bad files are
replaced, version 1 files are read, written at most once per min_span_s) is in
tests/test_derive.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162.derive.counters import (
    MAX_SNAPSHOTS,
    CounterPower,
    CounterSnapshot,
    CounterWindow,
    implausible,
    power_between,
)
from iskra_me162.derive.state import (
    STATE_FORMAT,
    STATE_VERSION,
    SavedState,
    StateStore,
    current_boot_id,
)
from iskra_me162.errors import ReadoutRejected
from tests.readouts import make_deriver, make_readout

BOOT = "3f0c6a4e-0000-4000-8000-000000000001"
OTHER_BOOT = "3f0c6a4e-0000-4000-8000-000000000002"
WHEN = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def snapshot(monotonic: float = 100.0, imported: str = "1000", exported: str | None = "5"):
    return CounterSnapshot(
        meter_id="12345678",
        sources="1.8.0|2.8.0" if exported is not None else "1.8.0|-",
        import_wh=Decimal(imported),
        export_wh=None if exported is None else Decimal(exported),
        monotonic=float(monotonic),  # as time.monotonic() gives it
        wall_time=WHEN,
    )


def saved(monotonic: float = 100.0, imported: str = "1000", boot: str = BOOT) -> SavedState:
    return SavedState(snapshots=(snapshot(monotonic, imported),), boot_id=boot)


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- round trip and format --------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "state"
    state = SavedState(
        snapshots=(snapshot(63.5, "8048370", None), snapshot(123.25, "8048375.125", None)),
        boot_id=BOOT,
    )
    assert StateStore(path, boot_id=BOOT).save(state) is True
    assert StateStore(path, boot_id=BOOT).load() == state


def test_state_file_is_versioned_json_with_exact_decimals(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=BOOT).save(saved(imported="8048375.125"))
    document = json.loads(path.read_text())
    assert document["format"] == STATE_FORMAT
    assert document["version"] == STATE_VERSION == 2
    assert document["boot_id"] == BOOT
    assert (document["meter_id"], document["sources"]) == ("12345678", "1.8.0|2.8.0")
    assert document["snapshots"] == [
        {
            "import_wh": "8048375.125",
            "export_wh": "5",
            "monotonic": 100.0,
            "wall_time": "2025-03-01T12:00:00+00:00",
        }
    ]


def _version_1_document() -> dict[str, object]:
    """A state file as the program before the derive stage wrote it."""
    return {
        "format": STATE_FORMAT,
        "version": 1,
        "meter_id": "12345678",
        "sources": "1.8.0|2.8.0",
        "import_wh": "1000",
        "export_wh": "5",
        "boot_id": BOOT,
        "monotonic": 100.0,
        "wall_time": WHEN.isoformat(),
        "sent": {"u1": 1, "u2": 0, "r1": 0, "r2": 0},
    }


def test_version_1_file_loads_as_its_one_snapshot(tmp_path):
    path = tmp_path / "state"
    path.write_text(json.dumps(_version_1_document()))
    assert StateStore(path, boot_id=BOOT).load() == saved()


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
    assert store.path is None


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
        (b'{"format": "iskra-me162-state", "version": 3}', "format version 3"),
        (b'{"format": "iskra-me162-state"}', "format version None"),
        (b'{"format": "iskra-me162-state", "version": 1}', "invalid content"),
        (b'{"format": "iskra-me162-state", "version": 2}', "invalid content"),
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


def _entry(monotonic: float = 100.0) -> dict[str, object]:
    return {
        "import_wh": "1000",
        "export_wh": "5",
        "monotonic": monotonic,
        "wall_time": WHEN.isoformat(),
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("import_wh", "-5"),
        ("import_wh", "NaN"),
        ("import_wh", "Infinity"),
        ("import_wh", 1000),
        ("import_wh", None),
        ("export_wh", "abc"),
        ("monotonic", "100"),
        ("monotonic", True),
        ("monotonic", None),
        ("wall_time", "yesterday"),
        ("wall_time", 0),
        ("meter_id", None),
        ("sources", 7),
        ("boot_id", None),
        ("snapshots", {}),
        ("snapshots", []),
        ("snapshots", [1]),
        ("snapshots", [_entry(100.0), _entry(100.0)]),  # not strictly in time order
        ("snapshots", [_entry(float(n)) for n in range(MAX_SNAPSHOTS + 1)]),
    ],
)
def test_invalid_fields_are_corrupt_state(tmp_path, caplog, field, value):
    path = tmp_path / "state"
    StateStore(path, boot_id=BOOT).save(saved())
    document = json.loads(path.read_text())
    if field in document["snapshots"][0]:
        document["snapshots"][0][field] = value
    else:
        document[field] = value
    path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING):
        assert StateStore(path, boot_id=BOOT).load() is None
    assert "invalid content" in warnings_in(caplog)[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("import_wh", "-5"), ("export_wh", "abc"), ("monotonic", "100"), ("meter_id", None)],
)
def test_invalid_fields_of_a_version_1_file_are_corrupt_state(tmp_path, caplog, field, value):
    path = tmp_path / "state"
    path.write_text(json.dumps(_version_1_document() | {field: value}))
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


def test_a_deriver_with_an_unwritable_state_file_keeps_deriving(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        deriver = make_deriver(state_path=str(tmp_path / "no-such-dir" / "state"))
        deriver.derive(make_readout(0, {"1.8.0": "100.000"}))
        values = deriver.derive(make_readout(60, {"1.8.0": "100.0075"}))
        deriver.close()
    assert values.import_power.watts == 450
    assert sum("cannot write state file" in message for message in warnings_in(caplog)) == 1


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


def test_the_same_state_is_not_written_again(tmp_path):
    path = tmp_path / "state"
    store = StateStore(path, boot_id=BOOT)
    assert store.save(saved(100, "1000")) is True
    before = path.stat()
    assert store.save(saved(100, "1000")) is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert store.save(saved(160, "1001")) is True


def test_unchanged_after_restart_is_not_rewritten(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=BOOT).save(saved(100, "1000"))
    before = path.stat()
    store = StateStore(path, boot_id=BOOT)
    store.load()
    assert store.save(saved(100, "1000")) is False
    assert path.stat().st_ino == before.st_ino


def test_newer_times_are_a_change_even_when_the_counters_stand_still(tmp_path):
    # A restarted daemon computes power over the span since the newest snapshot: a file with old
    # times would make it wait (too old) or average over too long. The file lives on tmpfs, and
    # the derive stage writes it at most every half update interval.
    path = tmp_path / "state"
    store = StateStore(path, boot_id=BOOT)
    assert store.save(saved(100, "1000")) is True
    assert store.save(saved(100, "1000")) is False  # the very same state
    assert store.save(saved(160, "1000")) is True
    assert StateStore(path, boot_id=BOOT).load().latest.monotonic == 160


def test_a_new_boot_is_a_change(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=OTHER_BOOT).save(saved(100, "1000", boot=OTHER_BOOT))
    store = StateStore(path, boot_id=BOOT)
    store.load()
    assert store.save(saved(5, "1000", boot=BOOT)) is True
    assert StateStore(path, boot_id=BOOT).load().boot_id == BOOT


# --- implausible and power_between ----------------------------------------------------------


def test_power_between_two_snapshots():
    result = power_between(snapshot(100, "1000", "5"), snapshot(136, "1010", "6"))
    assert result == CounterPower(import_w=Decimal(1000), export_w=Decimal(100), span_s=36.0)


def test_power_between_without_export():
    result = power_between(snapshot(0, "0", None), snapshot(3600, "250", None))
    assert result == CounterPower(import_w=Decimal(250), export_w=None, span_s=3600.0)


def test_power_between_has_no_limit_of_its_own():
    # The longest span allowed is CounterWindow's business (max_span_s).
    result = power_between(snapshot(0, "1000", "5"), snapshot(86400, "13000", "5"))
    assert result == CounterPower(import_w=Decimal(500), export_w=Decimal(0), span_s=86400.0)


@pytest.mark.parametrize(
    ("later", "reason"),
    [
        (snapshot(160, "999", "5"), "the import counter went backwards by 1 Wh"),
        (snapshot(160, "1000", "4"), "the export counter went backwards by 1 Wh"),
        (snapshot(101, "1028", "5"), "the import counter jumped by 28 Wh in 1.0 s"),
        (snapshot(101, "1000", "33"), "the export counter jumped by 28 Wh in 1.0 s"),
        (snapshot(136, "2001", "5"), "jumped by 1001 Wh in 36.0 s, more than a 100000 W"),
        (snapshot(100, "1001", "5"), "jumped by 1 Wh in 0.0 s"),  # no time passed
        (snapshot(50, "1001", "5"), "jumped by 1 Wh"),  # monotonic backwards
        (snapshot(160, "1001", None), "registers changed from 1.8.0|2.8.0 to 1.8.0|-"),
        (replace(snapshot(160, "1001"), meter_id="other"), "meter changed from 12345678 to other"),
    ],
)
def test_implausible_readouts(later, reason):
    assert reason in implausible(snapshot(100, "1000", "5"), later, max_power_w=100_000)


@pytest.mark.parametrize(
    "later",
    [
        snapshot(160, "1001", "5"),
        snapshot(100, "1000", "5"),  # no time passed, nothing counted: nothing to reject
        snapshot(136, "2000", "5"),  # 1000 Wh in 36 s: exactly 100 kW
        snapshot(3700, "1000", "5"),  # a long gap is no reason (see CounterWindow)
    ],
)
def test_plausible_readouts(later):
    assert implausible(snapshot(100, "1000", "5"), later, max_power_w=100_000) == ""


def test_implausible_follows_max_power():
    later = snapshot(160, "1833", "5")  # 833 Wh in 60 s = 49980 W
    assert implausible(snapshot(100), later, max_power_w=50_000) == ""
    assert "49000 W connection" in implausible(snapshot(100), later, max_power_w=49_000)


# --- CounterWindow ----------------------------------------------------------------------------


def test_window_baseline_reasons():
    window = CounterWindow(min_span_s=30, max_span_s=3600)
    assert window.baseline_for(snapshot(100)) == (None, "there is no earlier readout yet")
    window.add(snapshot(100))
    baseline, why = window.baseline_for(snapshot(110))
    assert baseline is None
    assert "too recent" in why and "at least 30 s" in why
    baseline, why = window.baseline_for(snapshot(3701))
    assert baseline is None and "3601 s old (more than 3600 s)" in why
    assert window.baseline_for(snapshot(3700)) == (snapshot(100), "")


def test_window_keeps_what_the_next_readout_needs_and_no_more():
    window = CounterWindow(min_span_s=30, max_span_s=900)
    for second in (0, 10, 20, 30, 40):
        window.add(snapshot(second))
    # For the next readout (> 40) the newest one at least 30 s older is 10 or later.
    assert [s.monotonic for s in window.snapshots] == [10, 20, 30, 40]
    assert window.baseline_for(snapshot(45))[0] == snapshot(10)
    assert window.latest == snapshot(40)


def test_window_restart_replaces_everything():
    window = CounterWindow(min_span_s=30, max_span_s=900)
    window.add(snapshot(0))
    window.restart([snapshot(50), snapshot(60)])
    assert window.snapshots == (snapshot(50), snapshot(60))
    window.restart()
    assert window.latest is None


# --- the Deriver with a state file: reboots and meters changed while the daemon was down -------


def test_after_a_reboot_the_second_readout_gives_power_and_the_file_takes_the_new_boot(
    tmp_path, caplog
):
    path = tmp_path / "state"
    StateStore(path, boot_id=OTHER_BOOT).save(saved(5000, "1000", boot=OTHER_BOOT))
    # after the reboot monotonic restarts near 0: comparing would give nonsense
    deriver = make_deriver(state_path=str(path), boot_id=BOOT)
    first = deriver.derive(make_readout(30, {"1.8.0": "1.001", "2.8.0": "0.005"}))
    assert first.import_power is None and "before a reboot" in first.power_missing
    # Written whatever sinks are enabled: the file is this boot's from the first readout on.
    assert StateStore(path, boot_id=BOOT).load().boot_id == BOOT
    second = deriver.derive(make_readout(90, {"1.8.0": "1.002", "2.8.0": "0.005"}))
    assert (second.import_power.watts, second.export_power.watts) == (60, 0)


def test_a_restart_right_after_a_reboot_continues_from_the_first_readout(tmp_path):
    path = tmp_path / "state"
    StateStore(path, boot_id=OTHER_BOOT).save(saved(5000, "1000", boot=OTHER_BOOT))
    make_deriver(state_path=str(path), boot_id=BOOT).derive(make_readout(30, {"1.8.0": "1.001"}))
    values = make_deriver(state_path=str(path), boot_id=BOOT).derive(
        make_readout(90, {"1.8.0": "1.002"})
    )
    assert values.import_power.watts == 60


def test_counter_backwards_against_the_state_file_is_rejected(tmp_path):
    path = tmp_path / "state"
    first = make_deriver(state_path=str(path), boot_id=BOOT)
    first.derive(make_readout(100, {"1.8.0": "1.000"}))
    first.derive(make_readout(160, {"1.8.0": "1.010"}))
    first.close()
    restarted = make_deriver(state_path=str(path), boot_id=BOOT)
    with pytest.raises(ReadoutRejected, match="went backwards"):  # meter replaced meanwhile
        restarted.derive(make_readout(220, {"1.8.0": "0.005"}))
    values = restarted.derive(make_readout(280, {"1.8.0": "0.006"}))
    assert values.import_power.watts == 60
