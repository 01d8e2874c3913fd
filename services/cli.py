"""`caseflow`: run a service, migrate, provision topics, mint a dev token, export schemas,
or bring the whole local stack up."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys

from services.kit.settings import SERVICES


def _definition(service: str):
    return importlib.import_module(f"services.{service}.app").definition()


def cmd_run(args: argparse.Namespace) -> int:
    from services.kit.runtime import serve

    asyncio.run(serve(_definition(args.service)))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from services.kit import db, settings

    async def go() -> None:
        for service in SERVICES if args.service == "all" else [args.service]:
            s = settings.load(service)
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
    from services.kit import settings
    from services.kit.topics import provision

    created = asyncio.run(provision(settings.load("roster").kafka, args.replication_factor))
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
    print(json.dumps(schemas_export.export()))
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
                   "district_admin, school_admin, provider, supervisor")
    p.add_argument("--ttl", type=int, default=8 * 3600, help="seconds")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("contracts", help="the events' JSON Schemas in contracts/schemas/")
    p.add_argument("action", choices=("export", "check"), help="export: write them; check: fail if stale")
    p.set_defaults(func=cmd_contracts)

    p = sub.add_parser("up", help="install nothing, start everything: embedded broker, PostgreSQL, SMTP sink, "
                       "all five services")
    p.add_argument("--no-smtp", action="store_true")
    p.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
