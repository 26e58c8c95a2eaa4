"""The one JSON writer of the sinks: exact decimal numbers and UTC times.

``json`` writes a Decimal only as a float, and a float rounds: 7408.2524 kWh would go out as
7408.252399999999. The sinks publish energy and power as Decimal, so they write JSON here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal


def number_text(value: Decimal) -> str:
    """An exact decimal as text: no exponent, no trailing zeros, ``0`` for any zero;
    ``null`` for NaN and infinities (which are not JSON)."""
    if not value.is_finite():
        return "null"
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def to_json(value: object) -> str:
    """Compact JSON of dicts, lists, strings, Decimals, ints, floats, bools and None.

    Strings come out ASCII-only, so any text from a meter arrives escaped. A float that is NaN
    or infinite raises ValueError: that would be a bug.
    """
    if isinstance(value, Mapping):
        members = (f"{json.dumps(str(key))}:{to_json(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(item) for item in value) + "]"
    if isinstance(value, Decimal):
        return number_text(value)
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value, allow_nan=False)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC to the second, e.g. ``2024-05-01T12:00:00Z``; naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
