"""The derive stage between the readout and the sinks (see :mod:`iskra_me162.derive.stage`)."""

from iskra_me162.derive.stage import Deriver, spans_for
from iskra_me162.derive.values import FROM_COUNTERS, FROM_METER, Energy, Power, Values

__all__ = ["FROM_COUNTERS", "FROM_METER", "Deriver", "Energy", "Power", "Values", "spans_for"]
