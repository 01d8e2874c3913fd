"""structlog JSON logs, with personal data redacted before anything is written.

Student names, emails, birth dates and transfer authentication codes never reach the
logs, whichever library logged them: stdlib records go through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import structlog

REDACTED = "[redacted]"
PERSONAL_KEYS = frozenset(
    {
        "given_name", "family_name", "first_name", "last_name", "middle_name", "name", "full_name",
        "student_name", "preferred_name", "email", "email_address", "birth_date", "birthdate",
        "date_of_birth", "dob", "auth_code", "authentication_code", "transfer_code", "code",
        "password", "token", "authorization", "secret",
    }
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_BEARER = re.compile(r"(?i)bearer\s+[\w.-]+")


def redact(value: Any, key: str | None = None) -> Any:
    if key is not None and key.lower() in PERSONAL_KEYS and value is not None:
        return REDACTED
    if isinstance(value, str):
        return _BEARER.sub("Bearer " + REDACTED, _EMAIL.sub(REDACTED, value))
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [redact(v) for v in value]
    return value


def redact_processor(_logger: Any, _method: str, event_dict: dict) -> dict:
    """structlog processor: drop personal data by key, and emails/bearer tokens in text."""
    return {k: (v if k in ("timestamp", "level", "logger") else redact(v, k)) for k, v in event_dict.items()}


class RepeatLimit(logging.Filter):
    """Let through one record per logger and message kind every `seconds`; the next one
    after that says how many were held back (`suppressed`). For the Kafka clients' own
    loggers (aiokafka, faststream's broker loggers), which log every failed connect and
    request: with the broker away that is a line per retry, per client.

    A kind is the message's template (aiokafka logs "Unable connect to node with id %s: %s",
    whatever the node and error), so a new kind of failure shows at once."""

    def __init__(self, seconds: float, prefixes: tuple[str, ...] = ("aiokafka", "faststream"),
                 suffixes: tuple[str, ...] = (".broker",)) -> None:
        super().__init__()
        self.seconds = seconds
        self._prefixes = prefixes
        self._suffixes = suffixes
        self._kinds: dict[tuple[str, str], list] = {}  # kind -> [last let through at, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if record.levelno < logging.WARNING or not (name.startswith(self._prefixes) or name.endswith(self._suffixes)):
            return True
        message = record.msg.get("event", "") if isinstance(record.msg, dict) else record.msg
        kind = (name, str(message))
        now = time.monotonic()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.seconds:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.suppressed = seen[1]  # shown beside the message (structlog's ExtraAdder)
        if len(self._kinds) > 1000:  # kinds are templates, a few dozen; never let it grow unbounded
            self._kinds.clear()
        self._kinds[kind] = [now, 0]
        return True


def _drop_color_message(_logger, _method, event: dict) -> dict:
    """uvicorn adds its message again with terminal colours: not for JSON lines."""
    event.pop("color_message", None)
    return event


def configure(service: str, level: str = "INFO", stream=None, *, kafka_log_every: float = 60.0) -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_color_message,
            _stamp(service),
            redact_processor,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatLimit(kafka_log_every))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stamp(service: str):
    def add_service(_logger: Any, _method: str, event_dict: dict) -> dict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
