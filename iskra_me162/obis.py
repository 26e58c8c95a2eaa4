"""OBIS codes and single register readings, shared by every protocol and sink.

An OBIS code names a register: ``A-B:C.D.E*F``. IEC 62056-21 meters often write only ``C.D.E``
(``1.8.0``), letters stand for reserved groups (``C.1.0``, ``F.F``), and SML carries the six
groups as bytes. All of them parse into :class:`ObisCode`, which compares registers by what
they mean, not by how a meter spelled them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal

from iskra_me162.errors import ProtocolError

# IEC 62056-61 letter codes for value group C (and D/E in practice): C=96, F=97, L=98, P=99.
_LETTER_GROUPS = {"C": 96, "F": 97, "L": 98, "P": 99}

# [A-B:]C.D[.E][*F or &F]; C/D/E may be numbers or a reserved letter.
_OBIS_RE = re.compile(
    r"^(?:(?P<a>\d{1,3})-(?P<b>\d{1,3}):)?"
    r"(?P<c>\d{1,3}|[CFLP])\.(?P<d>\d{1,3}|[CFLP])(?:\.(?P<e>\d{1,3}|[CFLP]))?"
    r"(?:[*&](?P<f>\d{1,3}))?$",
    re.ASCII,  # \d must not accept non-ASCII digits
)

CURRENT_BILLING_PERIOD = 255  # F = 255 (or no F) is "now"; other F values are history


def _group_number(text: str) -> int:
    letter = _LETTER_GROUPS.get(text)
    return int(text) if letter is None else letter


@dataclass(frozen=True, order=True, slots=True)
class ObisCode:
    """A parsed OBIS code. Groups that the meter left out are ``None``."""

    c: int
    d: int
    e: int | None = None
    a: int | None = None
    b: int | None = None
    f: int | None = None
    # The spelling the meter used, for logs and tables; not part of equality.
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> ObisCode:
        """Parse ``1.8.0``, ``1-0:1.8.0*255``, ``C.1.0``, ``F.F`` ... or raise ProtocolError."""
        return _parse_cached(text)

    @classmethod
    def _parse(cls, text: str) -> ObisCode:
        match = _OBIS_RE.fullmatch(text)
        if match is None:
            raise ProtocolError(f"not an OBIS code: {text!r}")
        a, b, c, d, e, f = match.groups()
        return cls(
            c=_group_number(c),
            d=_group_number(d),
            e=None if e is None else _group_number(e),
            a=None if a is None else int(a),
            b=None if b is None else int(b),
            f=None if f is None else int(f),
            text=text,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ObisCode:
        """The six-byte form SML uses (A, B, C, D, E, F)."""
        if len(raw) != 6:
            raise ProtocolError(f"an OBIS code has 6 bytes, got {len(raw)}")
        a, b, c, d, e, f = raw
        return cls(a=a, b=b, c=c, d=d, e=e, f=f, text=f"{a}-{b}:{c}.{d}.{e}*{f}")

    @property
    def cde(self) -> str:
        """``C.D.E`` with numbers only, e.g. ``1.8.0`` (``96.1.0`` for ``C.1.0``)."""
        return f"{self.c}.{self.d}.{self.e if self.e is not None else 0}"

    def means(self, cde: str) -> bool:
        """True when this is the *current* electricity register ``cde`` (e.g. ``"1.8.0"``).

        Historic values (F other than 255) and other media (A other than 1) never match, so
        ``1-0:1.8.0*07`` (last month's total) is not mistaken for today's total.
        """
        if self.a not in (None, 1):
            return False
        if self.f not in (None, CURRENT_BILLING_PERIOD):
            return False
        return self.cde == cde

    def __str__(self) -> str:
        if self.text:
            return self.text
        core = f"{self.c}.{self.d}" + (f".{self.e}" if self.e is not None else "")
        prefix = f"{self.a}-{self.b}:" if self.a is not None and self.b is not None else ""
        suffix = f"*{self.f}" if self.f is not None else ""
        return prefix + core + suffix


# A meter sends the same few dozen codes in every readout, and a code is immutable: parsing each
# spelling once halves the cost of a data line (the regex and seven frozen fields were half of
# it), which keeps the IEC decoder at its peer's speed (docs/performance.rst). Bounded, and an
# invalid code raises instead of being cached, so garbage cannot fill it.
@functools.lru_cache(maxsize=512)
def _parse_cached(text: str) -> ObisCode:
    return ObisCode._parse(text)


@dataclass(frozen=True, slots=True)
class Reading:
    """One register as the meter sent it.

    ``value`` is the number (``Decimal``, so counters never drift through float rounding) or
    ``None`` for text registers (serial numbers, error flags, hex strings); ``raw`` is the
    value as sent, for tables and for text registers. ``unit`` is the unit string as sent
    (``"kWh"``, ``"W"``), ``""`` for a ``*`` with nothing after it, ``None`` when absent.
    ``extra`` holds further groups on the same line (e.g. the time stamp of a maximum demand).
    """

    code: ObisCode
    value: Decimal | None
    unit: str | None
    raw: str
    extra: tuple[str, ...] = ()
