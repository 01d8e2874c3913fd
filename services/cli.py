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

    from services.kit import db, settings
    from services.roster.importer import ImportOptions, run_import

    async def go() -> int:
        s = settings.load("roster")
        conn = await db.connect(s.database_url)
        try:
            await db.migrate(conn, db.migrations_for("roster", _definition("roster").directory))
        finally:
            await conn.close()
        pool = await db.create_pool(s.database_url, min_size=1, max_size=2)
        try:
            options = ImportOptions.from_env()
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
            print(f"  {kind:22s} {n:>10,}" + (f"   e.g. {', '.join(examples)}" if examples else ""))
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
