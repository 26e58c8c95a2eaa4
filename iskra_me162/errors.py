"""One exception hierarchy for the whole daemon.

The main loop decides per kind what to do: a :class:`ProtocolError` drops one readout or frame,
a :class:`PortError` reopens the port, a :class:`SinkError` retries that sink next cycle, a
:class:`ConfigError` stops start-up (or keeps the old config on reload).
"""

from __future__ import annotations


class IskraError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(IskraError):
    """The configuration file is unreadable or invalid.

    ``path`` and ``line`` (1-based, 0 when the problem is not tied to one line) let the
    command line print ``path:line: message`` as compilers do.
    """

    def __init__(self, message: str, path: str = "", line: int = 0) -> None:
        self.message = message
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path and self.line:
            return f"{self.path}:{self.line}: {self.message}"
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message


class ProtocolError(IskraError):
    """Bytes from the meter do not form a valid message (garbage, truncation, bad structure)."""


class ChecksumError(ProtocolError):
    """A message arrived whole but its checksum (IEC BCC, SML CRC) does not match."""


class WrongProtocol(ProtocolError):
    """The meter speaks another protocol than the configured one: a setting to change, not a
    passing fault."""


class PortError(IskraError):
    """The serial port could not be opened, vanished, or failed while reading or writing."""


class MeterTimeout(PortError):
    """The meter did not answer (completely) within the time the protocol allows."""


class ReadoutRejected(IskraError):
    """A verified readout whose values must not be published: a negative or jumping counter,
    energy registers that differ from the meter's usual set. Nothing of it reaches a sink."""


class SinkError(IskraError):
    """A sink (Domoticz, MQTT, ...) could not take a reading; it is retried next cycle."""


class StateError(IskraError):
    """The state file could not be read or written."""
