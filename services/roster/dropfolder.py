"""The drop folder: how districts deliver files by SFTP today.

Layout, per district: <drop>/<district>/inbox/ receives packages (a .zip, or a folder with
manifest.csv). A package is picked up once it is complete: its size and modification time
have not changed between two looks. It is moved to processing/ (a rename, so it is picked
up once even with several instances), imported, then moved to processed/, held/ or failed/
with its report beside it (<name>.report.json and <name>.problems.csv).
"""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
from pathlib import Path

from services.kit import logs
from services.roster.importer import ImportOptions, ImportResult, run_import

log = logs.get("caseflow.roster.drop")


def _fingerprint(path: Path) -> tuple:
    if path.is_dir():
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()))
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns)


def _is_candidate(path: Path) -> bool:
    if path.name.startswith("."):
        return False  # half-written uploads (.name.part, editors' temp files)
    return path.suffix == ".zip" or (path.is_dir() and (path / "manifest.csv").exists())


async def requeue_on_start(runtime) -> None:
    """One-shot background job of the roster service: packages a stop left in processing/
    go back to their inbox."""
    options: ImportOptions = runtime.definition.options
    if options.drop_folder is not None:
        requeued = requeue_interrupted(options.drop_folder)
        if requeued:
            log.warning("drop-folder packages interrupted by a stop, back in their inbox", packages=requeued)


async def watch(runtime) -> None:
    """Background job of the roster service: a pass over every district's inbox each poll.
    A bad package is filed in failed/ with its report by the pass; a pass that fails (the
    folder unreadable, the database away) reaches the kit's supervisor: logged, restarted
    with backoff, and /readyz says the drop folder is down meanwhile."""
    options: ImportOptions = runtime.definition.options
    if options.drop_folder is None:
        return
    seen: dict[Path, tuple] = {}
    log.info("watching the drop folder", folder=str(options.drop_folder))
    while True:
        failed: dict[str, str] = {}
        seen = await scan_once(runtime.pool, runtime.settings.kafka, options, seen, runtime.relay.wake, failed)
        if failed:
            runtime.tasks.failing("drop folder of " + ", ".join(f"{d} ({why})" for d, why in sorted(failed.items())))
        else:
            runtime.tasks.succeeded()
        await asyncio.sleep(options.drop_poll_seconds)


def requeue_interrupted(drop_folder: Path) -> list[str]:
    """A package left in processing/ by a stop was never applied: put it back in the inbox,
    so the next pass imports it."""
    moved = []
    for leftover in sorted(drop_folder.glob("*/processing/*")):
        inbox = leftover.parent.parent / "inbox"
        inbox.mkdir(exist_ok=True)
        if not (inbox / leftover.name).exists():
            leftover.rename(inbox / leftover.name)
            moved.append(f"{leftover.parent.parent.name}/{leftover.name}")
    return moved


async def scan_once(pool, kafka, options: ImportOptions, seen: dict[Path, tuple], on_applied=lambda: None,
                    failed: dict[str, str] | None = None) -> dict[Path, tuple]:
    """One look at every district's inbox; import what has settled since the last look. A
    district whose inbox cannot be read is noted in `failed` (district -> why, logged) and
    the others go on; a database failure ends the pass (it would fail them all)."""
    now: dict[Path, tuple] = {}
    for inbox in sorted(options.drop_folder.glob("*/inbox")):
        district = inbox.parent.name
        try:
            for path in sorted(inbox.iterdir()):
                if not _is_candidate(path):
                    continue
                fingerprint = _fingerprint(path)
                if seen.get(path) != fingerprint:
                    now[path] = fingerprint  # new or still growing: look again next time
                    continue
                await _process(pool, kafka, options, district, path)
                on_applied()
        except OSError as e:
            log.error("a district's drop folder could not be read", district_id=district, error=repr(e))
            if failed is not None:
                failed[district] = type(e).__name__
    return now


async def _process(pool, kafka, options: ImportOptions, district: str, path: Path) -> ImportResult | None:
    base = path.parent.parent
    processing = base / "processing" / path.name
    processing.parent.mkdir(exist_ok=True)
    try:
        path.rename(processing)  # only one instance wins the rename
    except FileNotFoundError:
        return None
    try:
        result = await run_import(pool, district_id=district, path=processing, kafka=kafka, origin="drop-folder",
                                  options=options)
    except BaseException:
        processing.rename(path)  # not imported (the database away, a stop): back in the inbox for the next pass
        raise
    outcome = {"applied": "processed", "held": "held"}.get(result.status, "failed")
    target_dir = base / outcome
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    if target.exists():
        target = target_dir / f"{path.stem}-{result.import_id}{path.suffix}"
    shutil.move(str(processing), target)
    if result.status == "held":  # confirmed later (POST /v1/imports/<id>/confirm) from where it now is
        async with pool.acquire() as conn:
            await conn.execute("UPDATE imports SET package_path = $2 WHERE import_id = $1", result.import_id,
                               str(target))
    _write_report(target, result)
    log.info("drop folder package handled", district_id=district, package=path.name, outcome=outcome,
             import_id=str(result.import_id))
    return result


def within(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def settle_package(options: ImportOptions, path: Path, result: ImportResult) -> None:
    """Where a package goes once its import is final (applied, rejected, failed): an upload
    (kept under the packages folder) is removed; a drop-folder package confirmed from held/
    is filed in processed/ or failed/ with its new report; a package the district keeps
    elsewhere (a command-line import held, then confirmed) is left where it is."""
    if within(path, options.packages):
        path.unlink(missing_ok=True)
        return
    held = path.parent
    if options.drop_folder is None or held.name != "held" or not within(path, options.drop_folder):
        return
    target_dir = held.parent / ("processed" if result.status == "applied" else "failed")
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    if target.exists():
        target = target_dir / f"{path.name.removesuffix('.zip')}-{result.import_id}{'.zip' if path.suffix == '.zip' else ''}"
    shutil.move(str(path), target)
    stem = path.name.removesuffix(".zip")
    for left in (held / f"{stem}.report.json", held / f"{stem}.problems.csv"):
        left.unlink(missing_ok=True)
    _write_report(target, result)


def _write_report(package: Path, result: ImportResult) -> None:
    report = {
        "import_id": str(result.import_id), "district_id": result.district_id, "status": result.status,
        "message": result.message, "counts": result.counts, "rows_skipped": result.error_count,
        "warnings": result.warning_count, "held_because": result.holds if result.status == "held" else [],
    }
    stem = package.name.removesuffix(".zip")
    # Each written beside as a hidden file, then renamed into place: whoever watches the
    # folder sees the problems and then the report, each whole. The report comes last.
    problems = package.parent / f".{stem}.problems.csv.part"
    with open(problems, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["severity", "file", "line", "sourcedId", "column", "value", "reason"])
        for p in result.problems:
            w.writerow([p.severity, p.file, p.line, p.source_id, p.column, p.value, p.reason])
    problems.replace(package.parent / f"{stem}.problems.csv")
    written = package.parent / f".{stem}.report.json.part"
    written.write_text(json.dumps(report, indent=2) + "\n")
    written.replace(package.parent / f"{stem}.report.json")
