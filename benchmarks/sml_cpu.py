"""CPU per frame for an SML meter that pushes one frame per second (issue #6, item 3).

The real daemon (``protocol = "sml"``) reads a simulated ISKRA MT175 (:class:`SmlPtyMeter`) on
a real pty, with the bytes paced at 9600 Bd as on the wire, so the daemon reads each frame in
the pieces a UART would hand over. Two configurations run side by side, each with its own
meter: the HTTP endpoint with the default ``update_interval`` (every frame decoded and served,
Domoticz pushed once a minute) and Domoticz pushed on every frame (``update_interval = 1``).
CPU time from the scheduler (/proc/<pid>/task/*/schedstat) over a window, divided by the frames
the meter pushed in it; also given as a share of one core.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

from benchmarks.common import Section, cpu_exact_s, cpu_ticks_s
from benchmarks.daemon_runs import IDX, daemon, free_port
from iskra_me162.simulator.sml_push import SmlPtyMeter, SmlPushConfig
from tests.daemonproc import write_config
from tests.httpstub import DomoticzStub

CONFIGS = (
    ("http", "HTTP endpoint, update_interval 60", 60),
    ("domoticz", "Domoticz + HTTP endpoint, update_interval 1", 1),
)


def _last_frame(meter: SmlPtyMeter) -> int:
    frames = meter.frames
    return frames[-1].number if frames else 0


def run(quick: bool) -> Section:
    section = Section("SML push meter, one frame per second: CPU per frame (real process)")
    window = 10.0 if quick else 60.0
    details: dict[str, object] = {"window_s": window}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stub = stack.enter_context(DomoticzStub(devices={IDX}))
        runs = []
        for name, label, interval in CONFIGS:
            link = Path(tmp) / f"tty-{name}"
            meter = SmlPtyMeter(link=link, config=SmlPushConfig(interval=1.0, speedup=1.0))
            stack.enter_context(meter)
            settings: dict[str, object] = {
                "protocol": "sml",
                "port": str(link),
                "update_interval": interval,
                "print_debug": 1,
                "state_file": "",
                "http_listen": f"127.0.0.1:{free_port()}",
            }
            if name == "domoticz":
                settings |= {"domoticzserver": stub.server, "device_index": IDX}
            config = write_config(Path(tmp) / f"sml-{name}.conf", **settings)
            process = stack.enter_context(daemon(config))
            runs.append((name, label, meter, process))
        time.sleep(4.0)  # start-up, the first frames, the first push
        before = {}
        for name, _, meter, process in runs:
            before[name] = (cpu_exact_s(process.pid), cpu_ticks_s(process.pid), _last_frame(meter))
        time.sleep(window)
        for name, label, meter, process in runs:
            exact, ticks, frame = before[name]
            frames = _last_frame(meter) - frame
            if frames <= 0:
                section.errors.append(f"{name}: the meter pushed no frame in the window")
                continue
            per_frame = (cpu_exact_s(process.pid) - exact) / frames
            share = (cpu_exact_s(process.pid) - exact) / window
            section.add(f"{label}: CPU per frame", per_frame * 1000, "ms")
            section.add(f"{label}: share of one core", share * 100, "%")
            details[name] = {
                "frames": frames,
                "cpu_per_frame_ms": per_frame * 1000,
                "ticks_per_frame_ms": (cpu_ticks_s(process.pid) - ticks) / frames * 1000,
                "core_share_percent": share * 100,
            }
            if "Traceback" in process.output:
                section.errors.append(f"{name}: the daemon logged a traceback")
        details["domoticz_updates"] = len(stub.updates())
    section.details = details
    return section
