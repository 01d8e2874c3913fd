"""structlog JSON logs, with personal data redacted before anything is written.

Student names, emails, birth dates and transfer authentication codes never reach the
logs, whichever library logged them: stdlib records go through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
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


def configure(service: str, level: str = "INFO", stream=None) -> None:
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
            _stamp(service),
            redact_processor,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
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
