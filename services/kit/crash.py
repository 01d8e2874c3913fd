"""Named crash and fail points, so tests can break a real process between any two steps.

A test starts a service with CASEFLOW_CRASH_AT=<point>; the process dies at once
(os._exit, no cleanup, no offset commit) the first time it reaches that point.

With CASEFLOW_FAIL_AT=<point> the process lives, but the step raises InjectedFailure
(an error nobody expects, for the supervisor to catch), each time it is reached while the
file named by CASEFLOW_FAIL_WHILE exists (always, when that is unset): a test removes the
file to let the process recover.

Unset in production, each point costs one dict lookup.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86


class InjectedFailure(RuntimeError):
    """Raised at a fail point; no code handles it on purpose."""


def crashpoint(name: str) -> None:
    if os.environ.get("CASEFLOW_CRASH_AT") == name:
        os.write(2, f"crash point {name} reached: exiting\n".encode())
        os._exit(CRASH_EXIT_CODE)


def failpoint(name: str) -> None:
    if os.environ.get("CASEFLOW_FAIL_AT") == name:
        held_by = os.environ.get("CASEFLOW_FAIL_WHILE")
        if held_by is None or os.path.exists(held_by):
            raise InjectedFailure(f"fail point {name} reached")
