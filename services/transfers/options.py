"""The transfers service's own settings (CASEFLOW_TRANSFERS_*)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class TransfersOptions:
    """code_ttl_days: how long a request's authentication code, and so the request, stays
    open (issue 12: "expires after a configurable window (default 14 days)"); a fraction of
    a day is allowed. expiry_poll_seconds: how often the expiry job looks for requests
    whose window passed (accepting also checks, at once)."""

    code_ttl_days: float = 14.0
    expiry_poll_seconds: float = 60.0

    @property
    def code_ttl(self) -> timedelta:
        return timedelta(days=self.code_ttl_days)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TransfersOptions:
        """Raises ValueError naming the setting that is not a positive number."""
        env = dict(os.environ if env is None else env)
        values = {}
        for field, name, default in (("code_ttl_days", "CASEFLOW_TRANSFERS_CODE_TTL_DAYS", "14"),
                                     ("expiry_poll_seconds", "CASEFLOW_TRANSFERS_EXPIRY_POLL_SECONDS", "60")):
            text = env.get(name) or default
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{name} must be a number, not {text!r}") from None
            if not (math.isfinite(value) and value > 0) or (field == "code_ttl_days" and value > 3650):
                raise ValueError(f"{name} must be more than 0" + (" and at most 3650" if field == "code_ttl_days" else ""))
            values[field] = value
        return cls(**values)
