"""Mail: the notify service's settings, its notices written from the templates in
services/notify/templates/ (a plain-text and an HTML part, HTML autoescaped), and the
SMTP connections they are sent over (aiosmtplib: STARTTLS or implicit TLS, login,
timeouts; a few connections kept open and reused)."""

from __future__ import annotations

import asyncio
import email.policy
import functools
import os
import re
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.notify import domain

TEMPLATES = Path(__file__).parent / "templates"


def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} is true or false, not {value!r}")


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # STARTTLS: "auto" upgrades when the server offers it, "true" requires it, "false" never.
    starttls: str = "auto"
    tls: bool = False  # implicit TLS from the first byte (port 465); excludes STARTTLS
    timeout: float = 30.0  # each connect and each command
    cafile: str | None = None  # a private CA for the server's certificate
    from_address: str = "notices@caseflow.example.org"

    def client(self) -> aiosmtplib.SMTP:
        context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        start_tls = {"auto": None, "true": True, "false": False}[self.starttls]
        return aiosmtplib.SMTP(hostname=self.host, port=self.port, username=self.username, password=self.password,
                               use_tls=self.tls, start_tls=False if self.tls else start_tls, timeout=self.timeout,
                               tls_context=context)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NotifyOptions:
    """The notify service's settings: the SMTP server (CASEFLOW_SMTP_*) and its own
    (CASEFLOW_NOTIFY_*)."""

    smtp: SmtpSettings = SmtpSettings()
    app_url: str = "http://127.0.0.1:8080"  # where the notices' links point: Caseflow's web app
    send_concurrency: int = 8  # SMTP connections, each sending one message at a time
    send_batch: int = 500  # deliveries claimed by one pass
    poll_seconds: float = 0.5  # how often the sender looks for deliveries due
    retry: domain.RetryPolicy = domain.RetryPolicy()
    log_retention_days: int = 90  # deliveries sent or failed are kept this long in the log

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> NotifyOptions:
        env = dict(os.environ if env is None else env)
        starttls = (env.get("CASEFLOW_SMTP_STARTTLS") or "auto").lower()
        if starttls in ("1", "yes", "on"):
            starttls = "true"
        if starttls in ("0", "no", "off"):
            starttls = "false"
        if starttls not in ("auto", "true", "false"):
            raise ValueError(f"CASEFLOW_SMTP_STARTTLS is auto, true or false, not {starttls!r}")
        tls = _flag(env.get("CASEFLOW_SMTP_TLS"), "CASEFLOW_SMTP_TLS", False)
        if tls and starttls == "true":
            raise ValueError("CASEFLOW_SMTP_TLS (implicit TLS) and CASEFLOW_SMTP_STARTTLS=true exclude each other")
        retry = domain.RetryPolicy()
        options = cls(
            smtp=SmtpSettings(
                host=env.get("CASEFLOW_SMTP_HOST") or "127.0.0.1",
                port=int(env.get("CASEFLOW_SMTP_PORT") or ("465" if tls else "25")),
                username=env.get("CASEFLOW_SMTP_USERNAME") or None,
                password=env.get("CASEFLOW_SMTP_PASSWORD") or None,
                starttls=starttls,
                tls=tls,
                timeout=float(env.get("CASEFLOW_SMTP_TIMEOUT") or "30"),
                cafile=env.get("CASEFLOW_SMTP_CAFILE") or None,
                from_address=env.get("CASEFLOW_SMTP_FROM") or "notices@caseflow.example.org",
            ),
            app_url=env.get("CASEFLOW_NOTIFY_APP_URL") or "http://127.0.0.1:8080",
            send_concurrency=int(env.get("CASEFLOW_NOTIFY_SEND_CONCURRENCY") or "8"),
            send_batch=int(env.get("CASEFLOW_NOTIFY_SEND_BATCH") or "500"),
            poll_seconds=float(env.get("CASEFLOW_NOTIFY_POLL_SECONDS") or "0.5"),
            retry=domain.RetryPolicy(
                first_seconds=float(env.get("CASEFLOW_NOTIFY_RETRY_FIRST_SECONDS") or retry.first_seconds),
                max_seconds=float(env.get("CASEFLOW_NOTIFY_RETRY_MAX_SECONDS") or retry.max_seconds),
                max_attempts=int(env.get("CASEFLOW_NOTIFY_MAX_ATTEMPTS") or retry.max_attempts),
            ),
            log_retention_days=int(env.get("CASEFLOW_NOTIFY_LOG_RETENTION_DAYS") or "90"),
        )
        if options.send_concurrency < 1 or options.send_batch < 1:
            raise ValueError("CASEFLOW_NOTIFY_SEND_CONCURRENCY and CASEFLOW_NOTIFY_SEND_BATCH are at least 1")
        return options


# ---------------------------------------------------------------------------- writing a notice


class Templates:
    """The notices' templates: `<notice>.txt` and `<notice>.html` for each kind of notice."""

    def __init__(self, folder: Path = TEMPLATES) -> None:
        self._env = Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(["html"]),
                                undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                keep_trailing_newline=True)
        missing = [f"{n}.{ext}" for n in domain.NOTICES for ext in ("txt", "html")
                   if not (folder / f"{n}.{ext}").is_file()]
        if missing:
            raise RuntimeError(f"notice templates missing: {missing}")

    def render(self, notice: str, values: dict[str, Any]) -> tuple[str, str]:
        """(plain text, HTML)."""
        return (self._env.get_template(f"{notice}.txt").render(values),
                self._env.get_template(f"{notice}.html").render(values))


@dataclass(frozen=True)
class Outgoing:
    """One delivery as the sender claimed it: who, which notice, and what it says."""

    delivery_id: int
    event_id: str
    notice: str
    recipient: str
    message_id: str
    attempts: int
    subject: str
    context: dict[str, Any]
    sender_name: str


class _Headers(HeaderRegistry):
    """The stdlib's registry, faster where every message says the same: it makes a new class
    for every header it is asked for (here, one per name), and parses a header's value each
    time (here, once per name and value: a parsed header is an immutable str)."""

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one registry per process, kept for good
    def __getitem__(self, name):
        return super().__getitem__(name)

    def __call__(self, name, value):
        if isinstance(value, str):
            return self._parsed(name, value)
        return super().__call__(name, value)  # an Address, ...

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def _parsed(self, name, value):
        return super().__call__(name, value)


_POLICY = email.policy.default.clone(header_factory=_Headers())
_WIRE = email.policy.SMTP  # on the wire: CRLF line ends, headers folded at 78
# A recipient whose address goes into a header as it is: ASCII, no space, no line break.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


def notice_message(out: Outgoing, templates: Templates, options: NotifyOptions) -> EmailMessage:
    """What every recipient of this notice of this event reads, From the district's sender
    name, both parts from the templates: the message but for To and Message-ID. The same
    for all of them, so it carries nothing of the recipient (not even their name)."""
    notice = domain.NOTICES[out.notice]
    values = {**out.context, "subject": out.subject, "sender_name": out.sender_name, "required": notice.required,
              "link": domain.link(options.app_url, out.context["path"]),
              "preferences_link": domain.link(options.app_url, "/notices/preferences")}
    text, html = templates.render(out.notice, values)
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = out.subject
    message["From"] = Address(display_name=out.sender_name, addr_spec=options.smtp.from_address)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to a notice
    message["X-Caseflow-Notice"] = out.notice
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def compose(out: Outgoing, templates: Templates, options: NotifyOptions) -> EmailMessage:
    """The whole message one recipient gets: To them, with the Message-ID of (event, recipient)."""
    message = notice_message(out, templates, options)
    message["To"] = out.recipient
    message["Message-ID"] = out.message_id
    return message


@dataclass(frozen=True)
class Wire:
    """A message as it is sent: envelope sender and recipient, and the message (its bytes,
    or an EmailMessage for aiosmtplib to write, when the recipient needs SMTPUTF8)."""

    sender: str
    recipient: str
    data: bytes | EmailMessage


class Writer:
    """Writes messages for the sender, each notice of an event once: a burst of 10,000
    recipients of one notice is written once and sent 10,000 times, each time after its
    own To and Message-ID headers. Keep one per pass."""

    def __init__(self, templates: Templates, options: NotifyOptions) -> None:
        self._templates = templates
        self._options = options
        self._written: dict[tuple[str, str, str], bytes] = {}

    def wire(self, out: Outgoing) -> Wire:
        sender = self._options.smtp.from_address
        if not _PLAIN_ADDRESS.fullmatch(out.recipient):
            return Wire(sender, out.recipient, compose(out, self._templates, self._options))
        key = (out.event_id, out.notice, out.sender_name)
        body = self._written.get(key)
        if body is None:
            body = self._written[key] = notice_message(out, self._templates, self._options).as_bytes(policy=_WIRE)
        head = f"To: {out.recipient}\r\nMessage-ID: {out.message_id}\r\n".encode("ascii")
        return Wire(sender, out.recipient, head + body)


# ---------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Reply:
    """How one send ended: the server's reply code (None: no reply, the connection failed or
    timed out) and its text, or the error."""

    code: int | None
    text: str

    @property
    def connection_failed(self) -> bool:
        return self.code is None


class SmtpConnections:
    """Up to `size` SMTP connections, opened when needed and reused for message after
    message; a connection that fails is dropped and opened again for the next message."""

    def __init__(self, settings: SmtpSettings, size: int) -> None:
        self._settings = settings
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(settings.client())

    async def send(self, message: Wire) -> Reply:
        client = await self._idle.get()
        try:
            for attempt in (1, 2):
                reused = client.is_connected
                try:
                    if not client.is_connected:
                        await client.connect()
                    if isinstance(message.data, EmailMessage):
                        _, text = await client.send_message(message.data, sender=message.sender,
                                                            recipients=[message.recipient])
                    else:
                        _, text = await client.sendmail(message.sender, [message.recipient], message.data)
                    return Reply(250, text)
                except aiosmtplib.SMTPRecipientsRefused as e:
                    refused = e.recipients[0]
                    return Reply(refused.code, f"{refused.code} {refused.message}")
                except aiosmtplib.SMTPResponseException as e:
                    if isinstance(e, aiosmtplib.SMTPConnectResponseError | aiosmtplib.SMTPAuthenticationError):
                        _drop(client)  # the server would not let this connection in: no reply to the message
                        return Reply(None, f"{e.code} {e.message}")
                    return Reply(e.code, f"{e.code} {e.message}")
                except ValueError as e:  # an address aiosmtplib will not put in an envelope
                    return Reply(550, f"not sent: {e}")
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                    _drop(client)
                    if reused and attempt == 1:
                        continue  # a connection kept open may have been closed by the server meanwhile
                    return Reply(None, f"{type(e).__name__}: {e}")
            raise AssertionError("unreachable")
        finally:
            self._idle.put_nowait(client)

    async def probe(self) -> Reply:
        """Connect and say goodbye: whether the server answers at all."""
        client = self._settings.client()
        try:
            await client.connect()
            await client.quit()
            return Reply(250, "the server answers")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            _drop(client)
            return Reply(None, f"{type(e).__name__}: {e}")

    async def close(self) -> None:
        """Say goodbye on every open connection (between bursts)."""
        clients = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        for client in clients:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    _drop(client)
            self._idle.put_nowait(client)


def _drop(client: aiosmtplib.SMTP) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a broken connection: nothing more to do
        pass
