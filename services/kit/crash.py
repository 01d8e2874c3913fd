"""Named crash points, so tests can kill a real process between any two steps.

A test starts a service with CASEFLOW_CRASH_AT=<point>; the process dies at once
(os._exit, no cleanup, no offset commit) the first time it reaches that point.
Unset in production, a crash point costs one dict lookup.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86


def crashpoint(name: str) -> None:
    if os.environ.get("CASEFLOW_CRASH_AT") == name:
        os.write(2, f"crash point {name} reached: exiting\n".encode())
        os._exit(CRASH_EXIT_CODE)
