"""Logging set-up: print_debug 0/1/2 = WARNING/INFO/DEBUG, and secrets never reach the output.

Modules never format passwords into messages in the first place; :class:`RedactSecrets` is the
second line of defence for text we do not control (exception messages of libraries, URLs).
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
REDACTED = "********"


class RedactSecrets(logging.Filter):
    """Replaces every configured secret in a record's final text."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(secret for secret in secrets if secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = message
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, redacted, instead of letting the formatter do it later.
            formatted = logging.Formatter().formatException(record.exc_info)
            for secret in self.secrets:
                formatted = formatted.replace(secret, REDACTED)
            text = f"{text}\n{formatted}"
            record.exc_info = None
            record.exc_text = None
        if text != message or record.args:
            record.msg, record.args = text, None
        return True


def setup_logging(print_debug: int, secrets: tuple[str, ...] = (), stream: object = None) -> None:
    """(Re)configure the root logger. Under systemd the journal adds time stamps itself."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RedactSecrets(secrets))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(print_debug, logging.DEBUG))
    # paho stays at INFO even at print_debug 2: it logs one line per MQTT packet.
    for noisy in ("iskra_me162.sinks.mqtt.paho",):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


def use_syslog(print_debug: int, secrets: tuple[str, ...] = ()) -> None:
    """After --daemon detached: log to syslog (/dev/log) when there is one."""
    from logging.handlers import SysLogHandler

    if not os.path.exists("/dev/log"):  # noqa: PTH110 - one call, no Path needed
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = SysLogHandler(address="/dev/log", facility=SysLogHandler.LOG_DAEMON)
    handler.setFormatter(logging.Formatter("iskra-me162[%(process)d]: %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(print_debug, logging.DEBUG))
