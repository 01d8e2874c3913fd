"""The sender: a supervised background job, apart from the consumers, that sends the
deliveries due and records how each went.

One pass, in one transaction: lock up to CASEFLOW_NOTIFY_SEND_BATCH pending deliveries
whose time has come (FOR UPDATE SKIP LOCKED: instances share the work, none sends a
delivery another holds), write and send each over CASEFLOW_NOTIFY_SEND_CONCURRENCY SMTP
connections, record each outcome, commit. A delivery is sent once per pass that claims
it; it is claimed again only if that pass did not commit: a crash between the server's
acceptance and the commit sends it once more, with the same Message-ID (derived from the
event and the recipient), so the duplicate is recognisable downstream.

Outcomes (domain.outcome_of, domain.after_attempt): 2xx sent; 5xx failed, with the
server's reply, never retried; 4xx, a lost connection or a timeout retried later, waiting
CASEFLOW_NOTIFY_RETRY_FIRST_SECONDS and doubling up to CASEFLOW_NOTIFY_RETRY_MAX_SECONDS,
failed after CASEFLOW_NOTIFY_MAX_ATTEMPTS. A delivery that cannot even be written (a
template error) is failed alone: the others of the pass go on.

Readiness tells the truth: a pass that could not reach the SMTP server at all marks the job
failing (/readyz 503 naming it, with the error) until a message goes through or, while
nothing is due, the server answers a probe.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from services.kit import logs
from services.kit.crash import crashpoint
from services.notify import domain, store
from services.notify.mail import NotifyOptions, Outgoing, Reply, SmtpConnections, Templates, Writer

log = logs.get("caseflow.notify.sender")

PROBE_EVERY_SECONDS = 5.0
PRUNE_EVERY_SECONDS = 3600.0
_REPLY_LONGEST = 500


@dataclass(frozen=True)
class Pass:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    reached: bool = True  # False: no attempt got a reply from the server
    trouble: str | None = None  # the connection error, when not reached


async def send_deliveries(runtime) -> None:
    """The background job (ServiceDefinition.background): passes, back to back while
    deliveries are due, every CASEFLOW_NOTIFY_POLL_SECONDS otherwise."""
    options: NotifyOptions = runtime.definition.options
    templates = Templates()
    connections = SmtpConnections(options.smtp, options.send_concurrency)
    counted = _counters(runtime.metrics.registry)
    unreachable: str | None = None
    last_probe = 0.0
    last_pruned = 0.0
    try:
        while True:
            done = await _finishing(send_due(runtime.pool, connections, templates, options), options)
            for outcome in ("sent", "retried", "failed"):
                counted.labels(outcome=outcome).inc(getattr(done, outcome))
            if done.claimed and not done.reached:
                unreachable = f"cannot reach the SMTP server at {options.smtp.where}: {done.trouble}"
                runtime.tasks.failing(unreachable)
            elif done.claimed:
                unreachable = None
                runtime.tasks.succeeded()
            if done.claimed:
                continue
            await connections.close()  # between bursts, no connection is held open
            if unreachable and time.monotonic() - last_probe > PROBE_EVERY_SECONDS:
                last_probe = time.monotonic()
                probe = await connections.probe()
                if not probe.connection_failed:
                    unreachable = None
            if time.monotonic() - last_pruned > PRUNE_EVERY_SECONDS:
                async with runtime.pool.acquire() as conn:
                    pruned = await store.prune(conn, options.log_retention_days)
                if pruned:
                    log.info("delivery log pruned", deliveries=pruned, older_than_days=options.log_retention_days)
                last_pruned = time.monotonic()
            if unreachable:
                runtime.tasks.failing(unreachable)
            else:
                runtime.tasks.succeeded()
            await asyncio.sleep(options.poll_seconds)
    finally:
        await connections.close()


async def _finishing(one_pass, options: NotifyOptions) -> Pass:
    """Run a pass; when the service stops in the middle of one, let it finish (its sends are
    bounded by the SMTP timeout) and record what the server accepted, instead of rolling it
    back to send it all again after the restart."""
    running = asyncio.ensure_future(one_pass)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(running, timeout=options.smtp.timeout + 5)
        except Exception:  # noqa: BLE001 - stopping anyway: what was not recorded is sent again later
            pass
        raise


async def send_due(pool: asyncpg.Pool, connections: SmtpConnections, templates: Templates,
                   options: NotifyOptions) -> Pass:
    """One pass: claim, send, record, commit."""
    async with pool.acquire() as conn, conn.transaction():
        claimed = await store.claim_due(conn, options.send_batch, domain.DEFAULT_SENDER_NAME)
        if not claimed:
            return Pass()
        replies = await _send_all(claimed, connections, templates, options)
        now = datetime.now(UTC)
        rows, tally = [], {"sent": 0, "pending": 0, "failed": 0}
        for out in claimed:
            reply = replies[out.delivery_id]
            status, next_at = domain.after_attempt(domain.outcome_of(reply.code), out.attempts + 1, now, options.retry)
            tally[status] += 1
            if status == "failed":
                log.warning("delivery failed", delivery_id=out.delivery_id, event_id=out.event_id, notice=out.notice,
                            attempts=out.attempts + 1, reply=reply.text[:_REPLY_LONGEST])
            rows.append((out.delivery_id, status, next_at, reply.text[:_REPLY_LONGEST]))
        await store.record_attempts(conn, rows)
    reached = any(not r.connection_failed for r in replies.values())
    trouble = None if reached else next(iter(replies.values())).text
    return Pass(claimed=len(claimed), sent=tally["sent"], retried=tally["pending"], failed=tally["failed"],
                reached=reached, trouble=trouble)


async def _send_all(claimed: list[Outgoing], connections: SmtpConnections, templates: Templates,
                    options: NotifyOptions) -> dict[int, Reply]:
    """Send each over the connections, as many at once as there are connections; each
    notice of an event is written once (Writer), just before its first send."""
    waiting = list(reversed(claimed))
    replies: dict[int, Reply] = {}
    writer = Writer(templates, options)

    async def worker() -> None:
        while waiting:
            out = waiting.pop()
            replies[out.delivery_id] = await _attempt(out, connections, writer)

    await asyncio.gather(*(worker() for _ in range(min(options.send_concurrency, len(claimed)))))
    return replies


async def _attempt(out: Outgoing, connections: SmtpConnections, writer: Writer) -> Reply:
    try:
        message = writer.wire(out)
    except Exception as e:  # noqa: BLE001 - this delivery cannot be written; the others go on
        log.error("notice could not be written", delivery_id=out.delivery_id, notice=out.notice, error=repr(e))
        return Reply(554, f"not sent: the notice could not be written ({type(e).__name__})")
    try:
        reply = await connections.send(message)
    except Exception as e:  # noqa: BLE001 - an error nobody expected: retried later, the others go on
        log.error("send failed unexpectedly", delivery_id=out.delivery_id, error=repr(e))
        return Reply(None, f"not sent: {type(e).__name__}")
    if domain.outcome_of(reply.code) == domain.SENT:
        # The server has the message; the delivery is recorded sent only when this pass commits.
        crashpoint("notify.after_smtp_accepted")
    return reply


_COUNTERS: dict[int, Counter] = {}


def _counters(registry: CollectorRegistry) -> Counter:
    if id(registry) not in _COUNTERS:
        _COUNTERS[id(registry)] = Counter("notify_delivery_attempts", "Delivery attempts by outcome: sent, "
                                          "retried (4xx, connection lost), failed (5xx, or out of attempts)",
                                          ["outcome"], registry=registry, namespace="caseflow")
    return _COUNTERS[id(registry)]
