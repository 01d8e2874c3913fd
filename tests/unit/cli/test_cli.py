"""The `caseflow` command line finds the stack `caseflow up` runs, says in one line what it
could not reach, and publishes only events its contract accepts (issue 10)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from deploy.local.stack import STACK_FILE
from services import cli


@pytest.fixture(autouse=True)
def fresh_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_ENV", None)
    monkeypatch.setenv("CASEFLOW_HOME", str(tmp_path))
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_commands_use_the_stack_caseflow_up_runs_when_no_database_or_broker_is_named(tmp_path, capsys):
    (tmp_path / STACK_FILE).write_text(json.dumps({
        "pid": os.getpid(), "http_ports": {},
        "env": {"DATABASE_URL": "postgresql://postgres@127.0.0.1:55432/postgres",
                "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "KAFKA_ENABLE_IDEMPOTENCE": "false"}}))
    s = cli._settings("roster")  # noqa: SLF001
    assert s.database_url.startswith("postgresql://postgres@127.0.0.1:55432/")
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092" and s.kafka.enable_idempotence is False
    assert "using the local stack `caseflow up` runs" in capsys.readouterr().err


def test_a_stack_that_stopped_or_a_database_named_by_the_caller_wins(tmp_path, monkeypatch):
    (tmp_path / STACK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "http_ports": {},
                                                   "env": {"DATABASE_URL": "postgresql://x@127.0.0.1:55432/p"}}))
    assert "55432" not in cli._settings("roster").database_url  # noqa: SLF001 - no such process: not running
    monkeypatch.setattr(cli, "_ENV", None)
    (tmp_path / STACK_FILE).write_text(json.dumps({"pid": os.getpid(), "http_ports": {},
                                                   "env": {"DATABASE_URL": "postgresql://x@127.0.0.1:55432/p"}}))
    monkeypatch.setenv("DATABASE_URL", "postgresql://me@db.example.org:5433/postgres")
    assert cli._settings("roster").database_url.startswith("postgresql://me@db.example.org:5433/")  # noqa: SLF001


def test_a_database_that_does_not_answer_is_one_line_saying_what_was_tried(monkeypatch, capsys):
    port = closed_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:secret@127.0.0.1:{port}/postgres")
    assert cli.main(["migrate", "roster"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("caseflow migrate: could not reach PostgreSQL at "
                                                         f"127.0.0.1:{port}/")
    assert "secret" not in err and "DATABASE_URL" in err


def test_the_default_database_is_named_as_the_default(capsys, monkeypatch):
    monkeypatch.setattr("services.kit.settings.database_url",
                        lambda service, env: f"postgresql://postgres@127.0.0.1:{closed_port()}/caseflow_{service}")
    assert cli.main(["migrate", "roster"]) == 1
    assert "DATABASE_URL is not set: the default" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["publish", "sis.nothing.v1", "--type", "x", "{}"], "no topic 'sis.nothing.v1'"),
    (["publish", "sis.students.v1", "--type", "sis.student_flew.v1", "{}"], "carries no 'sis.student_flew.v1'"),
    (["publish", "sis.students.v1", "--type", "sis.student_enrolled.v1", "{not json"], "the event is not JSON"),
    (["publish", "sis.students.v1", "--type", "sis.student_enrolled.v1", '{"district_id": "nycdoe"}'],
     "sis.student_enrolled.v1 is invalid"),
])
def test_publish_refuses_what_its_contract_would_dead_letter(argv, said, capsys):
    assert cli.main(argv) == 2
    assert said in capsys.readouterr().err
