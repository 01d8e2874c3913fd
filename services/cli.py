"""`caseflow`: run a service, migrate, provision topics, mint a dev token, export schemas,
import a roster package, publish an event, or bring the whole local stack up.

Commands that reach PostgreSQL or Kafka (migrate, topics, roster import, publish) use
DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS when set; otherwise, while `caseflow up` runs from
this CASEFLOW_HOME, the stack it started (it says so on stderr); otherwise the defaults.
A connection that fails is one line saying what was tried and how to point elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from services.kit.settings import SERVICES

_ENV: dict[str, str] | None = None


def environment() -> dict[str, str]:
    """The environment commands read settings from: this process's, or, when it names no
    database and no broker, the one of the stack `caseflow up` runs from CASEFLOW_HOME."""
    global _ENV
    if _ENV is None:
        from deploy.local.stack import running_stack
        from services.kit.settings import HOME

        _ENV = dict(os.environ)
        if "DATABASE_URL" not in _ENV and "KAFKA_BOOTSTRAP_SERVERS" not in _ENV:
            stack = running_stack(Path(_ENV.get("CASEFLOW_HOME") or HOME))
            if stack is not None:
                _ENV.update(stack["env"])
                print(f"caseflow: using the local stack `caseflow up` runs (PostgreSQL {_where(_ENV['DATABASE_URL'])}, "
                      f"Kafka {_ENV['KAFKA_BOOTSTRAP_SERVERS']})", file=sys.stderr)
    return _ENV


def _settings(service: str):
    from services.kit import settings

    return settings.load(service, environment())


def _where(dsn: str) -> str:
    """host:port/database of a PostgreSQL URL, without its user or password."""
    url = urlsplit(dsn)
    return f"{url.hostname or 'localhost'}:{url.port or 5432}{url.path}"


def _definition(service: str):
    return importlib.import_module(f"services.{service}.app").definition()


def cmd_run(args: argparse.Namespace) -> int:
    from services.kit.runtime import serve

    asyncio.run(serve(_definition(args.service)))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from services.kit import db

    async def go() -> None:
        for service in SERVICES if args.service == "all" else [args.service]:
            s = _settings(service)
            if args.create_database:
                await db.ensure_database(s.database_url)
            conn = await db.connect(s.database_url)
            try:
                applied = await db.migrate(conn, db.migrations_for(service, _definition(service).directory))
            finally:
                await conn.close()
            print(f"{service}: {'applied ' + ', '.join(applied) if applied else 'up to date'}")

    asyncio.run(go())
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from services.kit.topics import provision

    created = asyncio.run(provision(_settings("roster").kafka, args.replication_factor))
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import os

    from services.kit.auth import mint
    from services.kit.settings import dev_secret

    secret = os.environ.get("CASEFLOW_JWT_SECRET") or dev_secret()
    print(mint(secret, email=args.email, district_id=args.district, schools=args.school or [],
               roles=args.role or [], ttl_seconds=args.ttl))
    return 0


def cmd_contracts(args: argparse.Namespace) -> int:
    from contracts import schemas_export

    if args.action == "check":
        stale = schemas_export.stale()
        if stale:
            print("stale JSON Schemas (run `caseflow contracts export`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("JSON Schemas are up to date")
        return 0
    if args.action == "baseline":
        written, kept = schemas_export.write_missing_baselines()
        for event_type in written:
            print(f"baseline written: contracts/baselines/{event_type}.json")
        print(f"{len(kept)} event types already have a baseline, left as they are (a baseline is never overwritten)")
        return 0
    print(json.dumps(schemas_export.export()))
    return 0


def cmd_roster_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dataclasses import replace

    from services.kit import db
    from services.roster.importer import ImportOptions, run_import

    async def go() -> int:
        s = _settings("roster")
        conn = await db.connect(s.database_url)
        try:
            await db.migrate(conn, db.migrations_for("roster", _definition("roster").directory))
        finally:
            await conn.close()
        pool = await db.create_pool(s.database_url, min_size=1, max_size=2)
        try:
            options = ImportOptions.from_env(environment())
            if args.wipe_share is not None:
                options = replace(options, guards=replace(options.guards, students=args.wipe_share))
            result = await run_import(pool, district_id=args.district, path=Path(args.path), kafka=s.kafka,
                                      origin="cli", dry_run=args.dry_run, confirm=args.confirm, options=options)
        finally:
            await pool.close()
        print(f"import {result.import_id} of {args.path} for district {args.district}: {result.status}")
        if result.message:
            print(f"  {result.message}")
        for kind, n in result.counts.items():
            examples = result.examples.get(kind)
            print(f"  {kind:28s} {n:>10,}" + (f"   e.g. {', '.join(examples)}" if examples else ""))
        if result.problems:
            print(f"problems ({result.error_count:,} rows skipped, {result.warning_count:,} warnings):")
            print("  file,line,sourcedId,column,value,reason")
            for p in result.problems[: args.show_problems]:
                print(f"  {p.severity}: {p.file},{p.line},{p.source_id or ''},{p.column or ''},{p.value or ''},"
                      f"{p.reason}")
            if len(result.problems) > args.show_problems:
                print(f"  ... and {len(result.problems) - args.show_problems:,} more (see the import's report)")
        return {"applied": 0, "dry_run": 0, "held": 3}.get(result.status, 1)

    return asyncio.run(go())


def cmd_access(args: argparse.Namespace) -> int:
    """A district's first district admin, written to the caseload service's database with
    its AccessGranted event (the service's outbox relay publishes it): for a district that
    has none yet, without restarting the service with CASEFLOW_DISTRICT_ADMINS."""
    from services.caseload import actions
    from services.kit import db, outbox
    from services.kit.consumer import UnitOfWork

    async def go() -> int:
        s = _settings("caseload")
        conn = await db.connect(s.database_url)
        try:
            await db.migrate(conn, db.migrations_for("caseload", _definition("caseload").directory))
            async with conn.transaction():
                uow = UnitOfWork(conn, source="caseflow.cli", settings=s)
                outcome = await actions.grant_district_admin(uow, args.district, args.email,
                                                             by=f"command line ({os.environ.get('USER', 'unknown')})")
                await outbox.write(conn, uow.outgoing)
        finally:
            await conn.close()
        print(f"{args.email.strip().lower()} district_admin of {args.district}: {outcome}")
        return 0

    return asyncio.run(go())


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish one event, checked against its contract, with its CloudEvents headers."""
    import uuid
    from datetime import UTC, datetime

    from aiokafka import AIOKafkaProducer
    from pydantic import ValidationError

    from contracts import cloudevents
    from contracts.topics import TOPICS

    topic = TOPICS.get(args.topic)
    if topic is None:
        print(f"caseflow publish: no topic {args.topic!r}; topics: {', '.join(sorted(TOPICS))}", file=sys.stderr)
        return 2
    cls = topic.event_class(args.type)
    if cls is None:
        types = ", ".join(sorted(t.model_fields["event_type"].default for t in topic.events))
        print(f"caseflow publish: {args.topic} carries no {args.type!r}; it carries {types}", file=sys.stderr)
        return 2
    try:
        data = json.loads(args.json)
    except json.JSONDecodeError as e:
        print(f"caseflow publish: the event is not JSON: {e.msg} (line {e.lineno}, column {e.colno})", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print("caseflow publish: the event must be a JSON object", file=sys.stderr)
        return 2
    data = {"event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC).isoformat(), **data,
            "event_type": args.type}
    try:
        event = cls.model_validate(data)
    except ValidationError as e:
        print(f"caseflow publish: {args.type} is invalid: {cloudevents.describe(e)}", file=sys.stderr)
        return 2
    kafka = _settings("roster").kafka
    key = args.key or str(getattr(event, topic.key_field) or "")
    if not key:
        print(f"caseflow publish: no key: set --key or {topic.key_field}", file=sys.stderr)
        return 2

    name = kafka.topic(topic.name)

    async def go() -> bool:
        producer = AIOKafkaProducer(**kafka.client_options(), enable_idempotence=kafka.enable_idempotence)
        try:
            await producer.start()
            if name not in (await producer.client.fetch_all_metadata()).topics():
                return False
            await producer.send_and_wait(name, cloudevents.encode(event), key=key.encode(),
                                         headers=cloudevents.headers_for(event, "caseflow.cli"))
            return True
        finally:
            await producer.stop()

    if not asyncio.run(go()):
        print(f"caseflow publish: the broker at {kafka.bootstrap_servers} has no topic {name}; "
              f"create the topics with `caseflow topics`", file=sys.stderr)
        return 1
    print(event.event_id)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from deploy.local.stack import up

    return up(with_smtp=not args.no_smtp)


def parser() -> argparse.ArgumentParser:
    """The `caseflow` command line, without running anything (compose's commands are checked against it)."""
    parser = argparse.ArgumentParser(prog="caseflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one service")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("migrate", help="apply a service's database migrations")
    p.add_argument("service", choices=(*SERVICES, "all"))
    p.add_argument("--create-database", action="store_true", help="create the service's database if missing")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("topics", help="create the registry's topics and dead-letter topics")
    p.add_argument("--replication-factor", type=int, default=1)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("token", help="mint a development token signed with the local secret")
    p.add_argument("--email", required=True)
    p.add_argument("--district", required=True)
    p.add_argument("--school", action="append", help="repeat for several schools")
    p.add_argument("--role", action="append", help="repeat: caseload_viewer, caseload_editor, manage_cases, "
                   "district_admin, school_admin, provider, supervisor. Without --role and --school the token "
                   "names only the person and district (as an SSO sign-in does): access then comes from grants")
    p.add_argument("--ttl", type=int, default=8 * 3600, help="seconds")
    p.set_defaults(func=cmd_token)

    access = sub.add_parser("access", help="access levels").add_subparsers(dest="access_command", required=True)
    p = access.add_parser("grant-district-admin",
                          help="make someone a district's district admin (its first one, who grants the rest)")
    p.add_argument("--district", required=True)
    p.add_argument("--email", required=True, help="their login email (what their sign-in token names)")
    p.set_defaults(func=cmd_access)

    p = sub.add_parser("contracts", help="the events' JSON Schemas in contracts/schemas/ and contracts/baselines/")
    p.add_argument("action", choices=("export", "check", "baseline"),
                   help="export: write them; check: fail if stale; "
                        "baseline: freeze the schema of event types that have no baseline yet (never overwrites)")
    p.set_defaults(func=cmd_contracts)

    roster = sub.add_parser("roster", help="roster tasks").add_subparsers(dest="roster_command", required=True)
    p = roster.add_parser("import", help="import a OneRoster package (folder or .zip) for a district")
    p.add_argument("path")
    p.add_argument("--district", required=True)
    p.add_argument("--dry-run", action="store_true", help="show the changes without making them")
    p.add_argument("--confirm", action="store_true",
                   help="apply even if a guard holds it (many withdrawals, deactivations or removals, many rejected "
                        "rows, another district's org)")
    p.add_argument("--wipe-share", type=float, default=None,
                   help="hold an import that would withdraw more than this share of active students "
                        "(default CASEFLOW_ROSTER_WIPE_SHARE or 0.20)")
    p.add_argument("--show-problems", type=int, default=50)
    p.set_defaults(func=cmd_roster_import)

    p = sub.add_parser("publish", help="publish one event to a topic, checked against its contract")
    p.add_argument("topic", help="e.g. sis.students.v1")
    p.add_argument("--type", required=True, help="the event type, e.g. sis.student_enrolled.v1")
    p.add_argument("--key", help="the record's key (default: the topic's key field of the event)")
    p.add_argument("json", help="the event as JSON; event_id and occurred_at are filled in when absent")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("up", help="install nothing, start everything: embedded broker, PostgreSQL, SMTP sink, "
                       "all five services")
    p.add_argument("--no-smtp", action="store_true")
    p.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # its reader stopped reading (`| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - only a connection failure is turned into one line
        line = _unreachable(e)
        if line is None:
            raise
        print(f"caseflow {args.command}: {line}", file=sys.stderr)
        return 1


def _unreachable(e: BaseException) -> str | None:
    """One line for a database or broker that did not answer; None for any other error."""
    import socket

    import asyncpg
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    env = environment()
    if isinstance(e, (ConnectionRefusedError, ConnectionResetError, TimeoutError, socket.gaierror,
                      asyncpg.CannotConnectNowError, asyncpg.InvalidAuthorizationSpecificationError,
                      asyncpg.InvalidCatalogNameError)):
        where = _where(env.get("DATABASE_URL") or "postgresql://localhost:5432/")
        told = "DATABASE_URL" if env.get("DATABASE_URL") else "DATABASE_URL is not set: the default"
        return (f"could not reach PostgreSQL at {where} ({told}): {type(e).__name__}: {str(e).splitlines()[0][:160]}. "
                f"Start the local stack with `./dev up`, or set DATABASE_URL=postgresql://user@host:port/postgres")
    if isinstance(e, (KafkaConnectionError, KafkaTimeoutError)):
        where = env.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
        told = "KAFKA_BOOTSTRAP_SERVERS" if env.get("KAFKA_BOOTSTRAP_SERVERS") else "KAFKA_BOOTSTRAP_SERVERS is not set"
        return (f"could not reach Kafka at {where} ({told}). Start the local stack with `./dev up`, or set "
                f"KAFKA_BOOTSTRAP_SERVERS=host:port")
    return None


if __name__ == "__main__":
    sys.exit(main())
