"""Write the seed corpus of one harness into a directory: ``python fuzz/seeds.py NAME DIR``.

* ``iec62056_21``: every capture in ``../shared/testdata/iec62056-21`` and readouts of the
  simulated ME162 and MT174 (intact, with a bad BCC, cut short, with echo and noise);
* ``sml``: every capture in ``../shared/testdata/sml``;
* ``config``: the shipped configuration file, one line per key with its default, and lines of
  Python code the parser must refuse.

Missing test data is reported on stderr; the simulator's readouts and the config corpus are
always there, so a harness never starts from nothing.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO.parent / "shared" / "testdata"


def _captures(folder: str) -> list[bytes]:
    path = TESTDATA / folder
    if not path.is_dir():
        print(f"seeds: {path} not found; seeding without the real captures", file=sys.stderr)
        return []
    return [file.read_bytes() for file in sorted(path.glob("*.bin"))]


def _simulated_readouts() -> list[bytes]:
    """Whole mode C sessions as a reader sees them, from the simulator's own meter model."""
    from iskra_me162.simulator.model import Faults, MeterConfig, MeterModel
    from iskra_me162.simulator.profiles import MT174

    seeds = []
    variants = [
        MeterConfig(speedup=float("inf")),
        MeterConfig(profile=MT174, speedup=float("inf")),
        MeterConfig(speedup=float("inf"), faults=Faults(bad_bcc_every=1)),
        MeterConfig(speedup=float("inf"), faults=Faults(truncate_every=1)),
        MeterConfig(speedup=float("inf"), faults=Faults(noise=4, noise_byte=0)),
    ]
    for config in variants:
        model = MeterModel(config, 0.0)
        sent = b"/?!\r\n"
        answer = model.receive(sent, 0.0)
        ident = b"".join(t.data for t in answer)
        ack = b"\x06050\r\n"
        ack_time = max(t.end for t in answer) + 0.3  # after the reaction time, in the window
        data = b"".join(t.data for t in model.receive(ack, ack_time))
        seeds.append(sent + ident + ack + data)
    return seeds


def _config_texts() -> list[bytes]:
    from iskra_me162.config import KEYS

    texts = [(REPO / "etc" / "default" / "iskra-me162").read_bytes()]
    lines = []
    for key, spec in KEYS.items():
        if spec.default is None:
            continue
        value = f'"{spec.default}"' if isinstance(spec.default, str) else str(spec.default)
        lines.append(f"{key} = {value}")
    texts.append("\n".join(lines).encode())
    texts += [
        b'port = __import__("os").system("touch /tmp/pwned")\n',
        b'domoticzserver = f"{__import__(\'os\').getcwd()}"\n',
        b"update_interval = 60 * 2\n",
        b"print_debug = 2 # comment\nport = 'sim://me162' # with a # in a comment\n",
        b'domoticzpassword = "p\\"a\\\\ss#word"\ndomoticzusername = "u"\n',
    ]
    return texts


def main() -> int:
    name, target = sys.argv[1], Path(sys.argv[2])
    sources = {
        "iec62056_21": lambda: _captures("iec62056-21") + _simulated_readouts(),
        "sml": lambda: _captures("sml"),
        "config": _config_texts,
    }
    if name not in sources:
        print(f"seeds: unknown harness {name!r} (known: {', '.join(sources)})", file=sys.stderr)
        return 2
    target.mkdir(parents=True, exist_ok=True)
    seeds = sources[name]()
    for data in seeds:
        (target / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)  # noqa: S324 - a file name, not security
    print(f"seeds: {len(seeds)} for {name} in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
