"""Settings from the environment (12-factor). Each service has its own database."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

SERVICES = ("roster", "caseload", "cases", "transfers", "notify")
DEFAULT_PORTS = {"roster": 8101, "caseload": 8102, "cases": 8103, "transfers": 8104, "notify": 8105}
HOME = Path(os.environ.get("CASEFLOW_HOME", Path(__file__).resolve().parents[2] / ".caseflow"))


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False)
    ssl_cafile: str | None = None
    # Off only against brokers without InitProducerId (the embedded dev broker).
    enable_idempotence: bool = True
    topic_prefix: str = ""
    session_timeout_ms: int = 10000
    heartbeat_interval_ms: int = 3000
    # The largest message (key, value and headers) Caseflow publishes: at most what the
    # brokers and topics accept (message.max.bytes / max.message.bytes, about 1 MiB by
    # default). An event larger than this is refused when it is emitted.
    max_message_bytes: int = 1_000_000
    # After a failed connect to a broker address, the next waits this long, doubling up
    # to the maximum (services/kit/backoff.py); one connect at a time per address.
    reconnect_backoff_ms: int = 100
    reconnect_backoff_max_ms: int = 5000
    # The Kafka clients' own warnings and errors (a failed connect, ...): one line per
    # kind every this many seconds, then how many were held back (services/kit/logs.py).
    log_repeat_seconds: float = 60.0

    def client_options(self) -> dict:
        """Connection options for aiokafka clients, SASL/TLS passed through."""
        options: dict = {"bootstrap_servers": self.bootstrap_servers, "security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.ssl_cafile:
            import ssl

            options["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return options

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


class AuthSettings(BaseModel):
    # Production verifies tokens against an issuer's public key (RS256/ES256);
    # development signs and verifies with a local shared secret (HS256).
    public_key: str | None = Field(default=None, repr=False)
    secret: str | None = Field(default=None, repr=False)
    issuer: str = "caseflow"
    audience: str = "caseflow"


class Settings(BaseModel):
    service: str
    database_url: str = Field(repr=False)
    kafka: KafkaSettings
    auth: AuthSettings
    http_host: str = "127.0.0.1"
    http_port: int
    # The largest request body a route takes (JSON): larger answers 413. Uploads (the
    # roster's packages) have their own limit.
    http_max_body_bytes: int = 1_048_576
    consumer_batch_size: int = 2000
    inbox_retention_days: int = 14
    log_level: str = "INFO"
    # Python's cyclic garbage collector runs its youngest generation after this many
    # allocations (Python's default: 700); 0 leaves Python's defaults and freezes nothing.
    gc_threshold: int = 50_000


def load(service: str, env: dict[str, str] | None = None) -> Settings:
    """Read one service's settings: CASEFLOW_<SERVICE>_* first, then the shared names."""
    env = dict(os.environ if env is None else env)
    own = f"CASEFLOW_{service.upper()}_"

    def get(name: str, default: str | None = None) -> str | None:
        return env.get(own + name) or env.get(f"CASEFLOW_{name}") or default

    kafka = KafkaSettings(
        bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        security_protocol=env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        sasl_mechanism=env.get("KAFKA_SASL_MECHANISM"),
        sasl_username=env.get("KAFKA_SASL_USERNAME"),
        sasl_password=env.get("KAFKA_SASL_PASSWORD"),
        ssl_cafile=env.get("KAFKA_SSL_CAFILE"),
        enable_idempotence=env.get("KAFKA_ENABLE_IDEMPOTENCE", "true").lower() in ("1", "true", "yes"),
        topic_prefix=env.get("CASEFLOW_TOPIC_PREFIX", ""),
        session_timeout_ms=int(env.get("KAFKA_SESSION_TIMEOUT_MS", "10000")),
        heartbeat_interval_ms=int(env.get("KAFKA_HEARTBEAT_INTERVAL_MS", "3000")),
        max_message_bytes=int(env.get("KAFKA_MAX_MESSAGE_BYTES", "1000000")),
        reconnect_backoff_ms=int(env.get("KAFKA_RECONNECT_BACKOFF_MS", "100")),
        reconnect_backoff_max_ms=int(env.get("KAFKA_RECONNECT_BACKOFF_MAX_MS", "5000")),
        log_repeat_seconds=float(env.get("KAFKA_LOG_REPEAT_SECONDS", "60")),
    )
    auth = AuthSettings(
        public_key=_read_key(get("JWT_PUBLIC_KEY")),
        secret=get("JWT_SECRET"),
        issuer=get("JWT_ISSUER", "caseflow"),
        audience=get("JWT_AUDIENCE", "caseflow"),
    )
    return Settings(
        service=service,
        database_url=database_url(service, env),
        kafka=kafka,
        auth=auth,
        http_host=get("HTTP_HOST", "127.0.0.1"),
        http_port=int(get("HTTP_PORT", str(DEFAULT_PORTS[service]))),
        http_max_body_bytes=int(get("HTTP_MAX_BODY_BYTES", "1048576")),
        consumer_batch_size=int(get("CONSUMER_BATCH_SIZE", "2000")),
        inbox_retention_days=int(get("INBOX_RETENTION_DAYS", "14")),
        log_level=get("LOG_LEVEL", "INFO"),
        gc_threshold=int(get("GC_THRESHOLD", "50000")),
    )


def database_url(service: str, env: dict[str, str]) -> str:
    """CASEFLOW_<SERVICE>_DATABASE_URL, or database caseflow_<service> on DATABASE_URL's server.

    Services never share a database, even when one server hosts all five.
    """
    own = env.get(f"CASEFLOW_{service.upper()}_DATABASE_URL")
    if own:
        return own
    server = env.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/caseflow_{service}"))


def _read_key(value: str | None) -> str | None:
    if value and not value.lstrip().startswith("-----") and Path(value).is_file():
        return Path(value).read_text()
    return value


def dev_secret() -> str:
    """The local development signing secret, made once under .caseflow/."""
    path = HOME / "dev-jwt-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()
