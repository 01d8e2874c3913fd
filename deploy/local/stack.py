"""`caseflow up`: the whole stack on embedded defaults, no Docker, nothing to install.

Starts, in this order (and stops in reverse):

* PostgreSQL (embedded, real PostgreSQL binaries) on 127.0.0.1:$CASEFLOW_LOCAL_PG_PORT
  (default 55432), data kept in ``$CASEFLOW_HOME/pg/`` across runs;
* a Kafka-compatible broker (embedded Tansu, **memory only**: every start is an empty
  cluster) on 127.0.0.1:$CASEFLOW_LOCAL_KAFKA_PORT (default 9092), log in ``tansu/``;
* an SMTP sink (aiosmtpd, in a thread) on 127.0.0.1:$CASEFLOW_LOCAL_SMTP_PORT (default
  2525) that saves every message as ``$CASEFLOW_HOME/mail/<timestamp>-<n>.eml``
  (skipped with ``--no-smtp``);
* the registry's topics and each service's database (``caseflow_<service>``);
* the five services as child processes (``python -m services.<name>``), all at once,
  each logging to ``$CASEFLOW_HOME/logs/<service>.log``.

Then it waits for every ``/readyz``, prints where everything is, and runs until Ctrl-C
or SIGTERM.  ``CASEFLOW_UP_EXIT_WHEN_READY=1`` stops everything right after the summary
(exit code 0 only if all five were healthy): the CI smoke test of this command.

``CASEFLOW_HOME`` defaults to ``<repo>/.caseflow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deploy.local.embedded import (
    EmbeddedBroker,
    EmbeddedError,
    EmbeddedPostgres,
    _Child,
    _log_tail,
    _port_in_use,
    install_signal_handlers,
)

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
LOG_ROTATE_BYTES = 5 * 1024 * 1024

# Tansu delays each group join by ~session_timeout/2 (see embedded.py); keep joins short.
LOCAL_KAFKA_SESSION_TIMEOUT_MS = "3000"
LOCAL_KAFKA_HEARTBEAT_INTERVAL_MS = "500"


class StackError(RuntimeError):
    """Startup failed; the message says why (and what to change)."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None


def _require_free(port: int, what: str, env_name: str) -> None:
    if _port_in_use(port):
        raise StackError(
            f"port {port} is already in use, so {what} cannot start there.\n"
            f"Stop whatever listens on 127.0.0.1:{port} or choose another port: {env_name}=<port> caseflow up"
        )


# --------------------------------------------------------------------------- SMTP sink


class MailSink:
    """aiosmtpd handler: every accepted message becomes ``<folder>/<timestamp>-<n>.eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        with self._lock:
            n = next(self._n)
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:]
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        head = (f"X-Envelope-From: {envelope.mail_from}\r\n"
                f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{stamp}-{n}.eml"
        tmp = path.with_suffix(".eml.tmp")
        tmp.write_bytes(head + content)
        tmp.replace(path)  # readers never see half a message
        return "250 Message accepted for delivery"


def _start_smtp(port: int, folder: Path) -> Any:
    from aiosmtpd.controller import Controller

    controller = Controller(MailSink(folder), hostname="127.0.0.1", port=port)
    controller.start()  # its own thread and event loop; returns once it accepts connections
    return controller


# --------------------------------------------------------------------------- services


def _rotate(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            log.replace(log.with_suffix(".log.1"))


def _service_env(base: dict[str, str], *, home: Path, bootstrap: str, dsn: str,
                 smtp_port: int) -> dict[str, str]:
    """What every service child sees: the caller's environment, pointed at the embedded stack."""
    from services.kit.settings import dev_secret

    env = {k: v for k, v in base.items()
           # The embedded broker is plain-text and the embedded server hosts every database:
           # stray production settings must not leak in.
           if not k.startswith("KAFKA_") and not k.endswith("DATABASE_URL")}
    env.update(
        PYTHONPATH=str(REPO) + (os.pathsep + base["PYTHONPATH"] if base.get("PYTHONPATH") else ""),
        PYTHONUNBUFFERED="1",
        CASEFLOW_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_ENABLE_IDEMPOTENCE="false",  # Tansu has no InitProducerId
        KAFKA_SESSION_TIMEOUT_MS=LOCAL_KAFKA_SESSION_TIMEOUT_MS,
        KAFKA_HEARTBEAT_INTERVAL_MS=LOCAL_KAFKA_HEARTBEAT_INTERVAL_MS,
        DATABASE_URL=dsn,
        CASEFLOW_SMTP_HOST="127.0.0.1",
        CASEFLOW_SMTP_PORT=str(smtp_port),
        CASEFLOW_ROSTER_DROP_FOLDER=base.get("CASEFLOW_ROSTER_DROP_FOLDER") or str(home / "drop"),
        # The sample district's first district admin (README, "Trying it").
        CASEFLOW_DISTRICT_ADMINS=base.get("CASEFLOW_DISTRICT_ADMINS") or "nycdoe=admin@schools.example.org",
    )
    if not env.get("CASEFLOW_JWT_SECRET"):
        env["CASEFLOW_JWT_SECRET"] = dev_secret()
    return env


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:  # noqa: S310 - local
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop_services(children: dict[str, _Child]) -> None:
    """SIGTERM to every service at once, wait up to STOP_TIMEOUT each (in parallel), then kill."""
    if not children:
        return
    with ThreadPoolExecutor(max_workers=len(children)) as pool:
        list(pool.map(lambda c: c.stop(signal.SIGTERM, STOP_TIMEOUT), children.values()))


# --------------------------------------------------------------------------- up


def up(with_smtp: bool = True) -> int:
    """Run the whole stack until Ctrl-C/SIGTERM; 0 on a clean run, 1 if it could not start."""
    with contextlib.suppress(ValueError):  # only possible from the main thread
        install_signal_handlers()  # SIGTERM/SIGHUP -> SystemExit, so cleanup below runs
        # A shell without job control starts `caseflow up &` with SIGINT ignored; `kill -INT`
        # must still stop the stack like Ctrl-C does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    exit_when_ready = os.environ.get("CASEFLOW_UP_EXIT_WHEN_READY", "").lower() in ("1", "true", "yes")
    with contextlib.ExitStack() as stack:
        try:
            return _run(stack, with_smtp=with_smtp, started=started, exit_when_ready=exit_when_ready)
        except StackError as e:
            _say(f"\ncaseflow up: {e}")
            return 1
        except EmbeddedError as e:
            _say(f"\ncaseflow up: {e}")
            return 1
        except KeyboardInterrupt:
            _say("\ninterrupted (Ctrl-C)")
            return 0
        except SystemExit as e:
            _say(f"\nterminated by signal {_signal_name(e.code)}")
            return 0
        finally:
            # Cleanup must finish: a second Ctrl-C / SIGTERM must not abandon children.
            saved: dict[int, Any] = {}
            with contextlib.suppress(ValueError):  # only possible from the main thread
                for s in (signal.SIGINT, signal.SIGTERM):
                    saved[s] = signal.signal(s, signal.SIG_IGN)
            try:
                _say("stopping: services, SMTP sink, broker, PostgreSQL ...")
                t0 = time.monotonic()
                stack.close()
                _say(f"stopped in {time.monotonic() - t0:.1f}s")
            finally:
                for s, handler in saved.items():
                    signal.signal(s, handler)
    return 0  # pragma: no cover - unreachable


STACK_FILE = "local-stack.json"


def _write_stack_file(home: Path, env: dict[str, str], ports: dict[str, int]) -> Path:
    """What the CLI needs to find this running stack (`running_stack`): where the broker and
    PostgreSQL are and which process runs them. Removed when the stack stops."""
    import json

    path = home / STACK_FILE
    path.write_text(json.dumps({
        "pid": os.getpid(),
        "env": {k: env[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_ENABLE_IDEMPOTENCE", "DATABASE_URL",
                                    "CASEFLOW_ROSTER_DROP_FOLDER") if k in env},
        "http_ports": ports,
    }, indent=2) + "\n")
    return path


def running_stack(home: Path) -> dict | None:
    """The stack `caseflow up` runs from this home, if it runs: {"pid", "env", "http_ports"}."""
    import json

    path = home / STACK_FILE
    try:
        stack = json.loads(path.read_text())
        os.kill(int(stack["pid"]), 0)  # alive?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stack


def _signal_name(code: object) -> str:
    with contextlib.suppress(TypeError, ValueError):
        return signal.Signals(int(code) - 128).name  # type: ignore[call-overload]
    return str(code)


def _run(stack: contextlib.ExitStack, *, with_smtp: bool, started: float, exit_when_ready: bool) -> int:
    from services.kit import db, settings
    from services.kit.topics import provision

    home = Path(os.environ.get("CASEFLOW_HOME") or settings.HOME).expanduser().resolve()
    pg_port = _env_port("CASEFLOW_LOCAL_PG_PORT", 55432)
    kafka_port = _env_port("CASEFLOW_LOCAL_KAFKA_PORT", 9092)
    smtp_port = _env_port("CASEFLOW_LOCAL_SMTP_PORT", 2525)
    mail_dir, logs_dir = home / "mail", home / "logs"
    for d in (home, mail_dir, logs_dir, home / "tansu"):
        d.mkdir(parents=True, exist_ok=True)

    # Check every port before starting anything: a clear message beats a half-started stack.
    _require_free(pg_port, "PostgreSQL", "CASEFLOW_LOCAL_PG_PORT")
    _require_free(kafka_port, "the embedded Kafka broker (Tansu)", "CASEFLOW_LOCAL_KAFKA_PORT")
    if with_smtp:
        _require_free(smtp_port, "the SMTP sink", "CASEFLOW_LOCAL_SMTP_PORT")
    probe_env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"}
    ports = {svc: settings.load(svc, probe_env).http_port for svc in settings.SERVICES}
    for svc, port in ports.items():
        _require_free(port, f"the {svc} service", f"CASEFLOW_{svc.upper()}_HTTP_PORT")

    _say(f"caseflow up: state in {home}")

    # 1. PostgreSQL and the broker, side by side (stop callbacks registered first: a
    #    Ctrl-C during start still stops whatever got started).
    pg = EmbeddedPostgres(home / "pg", pg_port)
    broker = EmbeddedBroker(kafka_port, home / "tansu")
    stack.callback(pg.stop)
    stack.callback(broker.stop)
    smtp: list[Any] = []

    def stop_smtp() -> None:
        for c in smtp:
            with contextlib.suppress(Exception):
                c.stop()

    stack.callback(stop_smtp)
    t0 = time.monotonic()
    jobs: list[tuple[str, Callable[[], Any]]] = [("PostgreSQL", pg.start), ("broker", broker.start)]
    if with_smtp:
        jobs.append(("SMTP sink", lambda: smtp.append(_start_smtp(smtp_port, mail_dir))))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [(name, pool.submit(fn)) for name, fn in jobs]
        for name, fut in futures:
            try:
                fut.result()
            except (EmbeddedError, StackError):
                raise
            except OSError as e:
                raise StackError(f"{name} failed to start: {e}") from e
    _say(f"  PostgreSQL, broker{', SMTP sink' if with_smtp else ''} up in {time.monotonic() - t0:.1f}s")

    # 2. Topics and databases.
    env = _service_env(dict(os.environ), home=home, bootstrap=broker.bootstrap, dsn=pg.dsn, smtp_port=smtp_port)
    Path(env["CASEFLOW_ROSTER_DROP_FOLDER"]).mkdir(parents=True, exist_ok=True)  # the folder the summary announces
    kafka = settings.KafkaSettings(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                                   topic_prefix=env.get("CASEFLOW_TOPIC_PREFIX", ""))

    async def prepare() -> list[str]:
        created, *_ = await asyncio.gather(
            provision(kafka),
            *(db.ensure_database(settings.load(svc, env).database_url) for svc in settings.SERVICES),
        )
        return created

    t0 = time.monotonic()
    created = asyncio.run(prepare())
    _say(f"  {len(created)} topics provisioned, {len(settings.SERVICES)} databases ready "
         f"in {time.monotonic() - t0:.1f}s")

    # 3. The five services, all at once.
    children: dict[str, _Child] = {}
    stack.callback(_stop_services, children)
    for svc in settings.SERVICES:
        log = logs_dir / f"{svc}.log"
        _rotate(log)
        children[svc] = _Child([sys.executable, "-m", f"services.{svc}"], log, env=env, cwd=REPO,
                               deathsig=signal.SIGKILL)
    _say(f"  started {', '.join(settings.SERVICES)}; waiting for /readyz ...")

    # 4. Readiness.
    t0 = time.monotonic()
    deadline = t0 + READY_TIMEOUT
    pending = dict(ports)
    while pending:
        for svc, port in list(pending.items()):
            child = children[svc]
            if not child.alive():
                return _failed(f"{svc} exited with code {child.proc.returncode} before it was ready",
                               svc, child, pending)
            if _ready(port):
                del pending[svc]
                _say(f"  {svc:<10} ready after {time.monotonic() - started:5.1f}s")
        if pending and time.monotonic() > deadline:
            svc = next(iter(pending))
            return _failed(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(pending)}", svc, children[svc],
                           pending)
        if pending:
            time.sleep(0.2)
    elapsed = time.monotonic() - started

    stack_file = _write_stack_file(home, env, ports)
    stack.callback(stack_file.unlink, missing_ok=True)
    _summary(elapsed, ports, env, broker=broker, pg=pg, smtp_port=smtp_port if with_smtp else None,
             mail_dir=mail_dir, logs_dir=logs_dir)
    if exit_when_ready:
        _say("CASEFLOW_UP_EXIT_WHEN_READY is set: all five services healthy, stopping.")
        return 0

    # 5. Run until Ctrl-C / SIGTERM (SystemExit); warn once if something dies meanwhile.
    _say("Ctrl-C to stop.")
    reported: set[str] = set()
    while True:
        time.sleep(1.0)
        for svc, child in children.items():
            if svc not in reported and not child.alive():
                reported.add(svc)
                _say(f"warning: {svc} exited with code {child.proc.returncode}; see {child.log_path}")


def _failed(reason: str, svc: str, child: _Child, pending: dict[str, int]) -> int:
    _say(f"\ncaseflow up: {reason}")
    _say(f"--- last lines of {child.log_path} ---")
    _say(_log_tail(child.log_path))
    _say("---")
    others = [s for s in pending if s != svc]
    if others:
        _say(f"(also not ready: {', '.join(others)}; their logs are next to it)")
    return 1


def _summary(elapsed: float, ports: dict[str, int], env: dict[str, str], *, broker: EmbeddedBroker,
             pg: EmbeddedPostgres, smtp_port: int | None, mail_dir: Path, logs_dir: Path) -> None:
    rule = "-" * 78
    _say()
    _say(rule)
    _say(f"caseflow is up: all {len(ports)} services healthy in {elapsed:.1f}s")
    _say(rule)
    _say(f"{'service':<10} {'URL':<24} {'API docs':<30} AsyncAPI")
    for svc, port in ports.items():
        url = f"http://127.0.0.1:{port}"
        _say(f"{svc:<10} {url:<24} {url + '/docs':<30} {url}/asyncapi.json")
    _say(rule)
    _say(f"Kafka       {broker.bootstrap}   (embedded Tansu, memory only: topics and "
         f"offsets vanish on stop)")
    _say(f"PostgreSQL  {pg.dsn}   (databases caseflow_<service>; data in {pg.data_dir})")
    if smtp_port is not None:
        _say(f"SMTP sink   127.0.0.1:{smtp_port}   (every mail saved as .eml in {mail_dir})")
    else:
        _say("SMTP sink   off (--no-smtp)")
    _say(f"Logs        {logs_dir}/<service>.log")
    _say(f"Drop folder {env['CASEFLOW_ROSTER_DROP_FOLDER']}/<district>/inbox/   (OneRoster .zip or folder; "
         f"filed in processed/, held/ or failed/ with a report)")
    _say(rule)
    roster = f"http://127.0.0.1:{ports['roster']}"
    cli = "caseflow" if shutil.which("caseflow") else str(Path(sys.executable).parent / "caseflow")
    if os.environ.get("CASEFLOW_JWT_SECRET"):
        _say("Try it (tokens are signed with your CASEFLOW_JWT_SECRET; keep it set for `caseflow token`):")
    else:
        _say(f"Try it (tokens are signed with the dev secret in {env['CASEFLOW_HOME']}/dev-jwt-secret):")
        if os.environ.get("CASEFLOW_HOME"):
            cli = f"CASEFLOW_HOME={env['CASEFLOW_HOME']} {cli}"
    _say(f"  {cli} roster import tests/fixtures/oneroster/bulk_small --district nycdoe   # the sample district")
    _say(f"  TOKEN=$({cli} token --email admin@schools.example.org --district nycdoe)   "
         f"# nycdoe's district admin (CASEFLOW_DISTRICT_ADMINS)")
    _say(f'  curl -H "Authorization: Bearer $TOKEN" {roster}/v1/students')
    _say("  (README.md, 'Trying it': a teacher's caseload, a case opened from a published trigger, the dashboard)")
    _say(rule)
