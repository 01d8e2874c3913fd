"""The expiry job: pending requests whose authentication code's window passed become
expired (TransferExpired), every CASEFLOW_TRANSFERS_EXPIRY_POLL_SECONDS. Accepting (and
every other action on a request) checks the window too, at once, so a request is never
accepted late for want of a pass of this job."""

from __future__ import annotations

import asyncio

from services.transfers import actions


async def expire_transfer_requests(runtime) -> None:
    """Supervised by the kit (restarted if it fails; /readyz names it while down). A request
    that cannot be expired is logged and retried next pass while the others expire; the
    pass is then reported as failing in part, so /readyz shows it."""
    options = runtime.definition.options
    while True:
        _, failed = await actions.expire_due(runtime)
        if failed:
            runtime.tasks.failing(f"{failed} transfer request(s) could not be expired; retrying each pass")
        else:
            runtime.tasks.succeeded()
        await asyncio.sleep(options.expiry_poll_seconds)
