"""compose.yaml and deploy/Dockerfile agree with the code: what runs, on which port, with which settings.

Nothing here starts Docker; the files are read and checked against services/ as the source of truth.
"""

from __future__ import annotations

import ast
import json
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from services import cli
from services.kit import settings
from services.kit.settings import DEFAULT_PORTS, SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES_DIR = ROOT / "services"


# --- reading compose.yaml ----------------------------------------------------------------------

def caseflow_services() -> dict[str, dict]:
    """The compose services built from the project's own image (the rest are Kafka, PostgreSQL, SMTP)."""
    return {name: svc for name, svc in COMPOSE["services"].items() if "build" in svc}


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def as_argv(value: str | list) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def caseflow_invocations(svc: dict) -> list[list[str]]:
    """The `caseflow ...` argument lists a compose service runs, without the leading `caseflow`."""
    command = as_argv(svc.get("command", []))
    entrypoint = svc.get("entrypoint")
    if entrypoint is None:  # the image's ENTRYPOINT, i.e. `caseflow`
        return [command]
    entrypoint = as_argv(entrypoint)
    assert entrypoint[:1] in (["sh"], ["/bin/sh"]) and entrypoint[1:] == ["-c"], entrypoint
    script = " ".join(command)
    invocations = []
    for step in script.split("&&"):
        argv = shlex.split(step)
        assert argv[:1] == ["caseflow"], f"expected a caseflow command, got {step!r}"
        invocations.append(argv[1:])
    return invocations


def parse(argv: list[str]):
    try:
        return cli.parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`caseflow {shlex.join(argv)}` is not a valid caseflow command")


def runs(argv: list[str]) -> str | None:
    """The service `caseflow <argv>` runs, if it is a valid `caseflow run` command."""
    try:
        args = cli.parser().parse_args(argv)
    except SystemExit:
        return None  # reported by the rule for that compose service's commands
    return args.service if args.command == "run" else None


def runner_of(service: str) -> tuple[str, dict]:
    """The compose service whose command is `caseflow run <service>`."""
    found = []
    for name, svc in caseflow_services().items():
        for argv in caseflow_invocations(svc):
            if runs(argv) == service:
                found.append((name, svc))
    assert len(found) == 1, f"{service} should run in exactly one compose service, runs in {[n for n, _ in found]}"
    return found[0]


def published_ports(svc: dict) -> list[tuple[int, int]]:
    """(host port, container port) pairs, short or long syntax."""
    pairs = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            pairs.append((int(port["published"]), int(port["target"])))
        else:
            *_, host, container = str(port).split(":")
            pairs.append((int(host), int(container.split("/")[0])))
    return pairs


# --- reading the code: which environment variables does it read? -------------------------------

def _is_environ(node: ast.AST) -> bool:
    """`env` (load()'s copy of the environment) or `os.environ`."""
    return (isinstance(node, ast.Name) and node.id == "env") or (
        isinstance(node, ast.Attribute) and node.attr == "environ"
        and isinstance(node.value, ast.Name) and node.value.id == "os")


def _names(arg: ast.AST) -> set[str]:
    """A literal name, or an f-string over `service.upper()` expanded for every service."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr):
        names = set()
        for service in SERVICES:
            parts = []
            for value in arg.values:
                if isinstance(value, ast.Constant):
                    parts.append(value.value)
                elif (isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Call)
                      and isinstance(value.value.func, ast.Attribute) and value.value.func.attr == "upper"
                      and isinstance(value.value.func.value, ast.Name) and value.value.func.value.id == "service"):
                    parts.append(service.upper())
                else:
                    return set()  # built from something else (the get() helper's own lookups)
            names.add("".join(parts))
        return names
    return set()


def variables_the_code_reads() -> set[str]:
    names: set[str] = set()
    for path in SERVICES_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                # env.get("X") / os.environ.get("X") / os.getenv("X")
                if (isinstance(func, ast.Attribute) and func.attr == "get" and _is_environ(func.value)) or (
                        isinstance(func, ast.Attribute) and func.attr == "getenv"
                        and isinstance(func.value, ast.Name) and func.value.id == "os"):
                    names |= _names(node.args[0])
                # settings.load()'s helper: get("X") reads CASEFLOW_<SERVICE>_X, then CASEFLOW_X
                elif isinstance(func, ast.Name) and func.id == "get" and path.name == "settings.py":
                    for name in _names(node.args[0]):
                        names.add(f"CASEFLOW_{name}")
                        names |= {f"CASEFLOW_{service.upper()}_{name}" for service in SERVICES}
            elif isinstance(node, ast.Subscript) and _is_environ(node.value):  # os.environ["X"]
                names |= _names(node.slice)
    return names


READ = variables_the_code_reads()


def test_the_scan_finds_what_settings_load_demonstrably_reads():
    """Guards the scanner itself: each of these changes what load() returns, and the scan sees it."""
    probes = {
        "CASEFLOW_CASES_HTTP_PORT": lambda v: settings.load("cases", {v: "9000"}).http_port == 9000,
        "CASEFLOW_HTTP_HOST": lambda v: settings.load("cases", {v: "0.0.0.0"}).http_host == "0.0.0.0",
        "CASEFLOW_JWT_SECRET": lambda v: settings.load("notify", {v: "s"}).auth.secret == "s",
        "KAFKA_BOOTSTRAP_SERVERS": lambda v: settings.load("roster", {v: "k:1"}).kafka.bootstrap_servers == "k:1",
        "DATABASE_URL": lambda v: settings.load("roster", {v: "postgresql://h/x"}).database_url
        == "postgresql://h/caseflow_roster",
        "CASEFLOW_TRANSFERS_DATABASE_URL": lambda v: settings.load("transfers", {v: "postgresql://t/t"}).database_url
        == "postgresql://t/t",
    }
    for name, honoured in probes.items():
        assert honoured(name), f"load() ignores {name}"
        assert name in READ, f"the scan misses {name}"


# --- the rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("service", SERVICES)
def test_every_service_in_the_code_runs_in_compose(service):
    runner_of(service)


def test_every_caseflow_command_in_compose_is_a_real_one():
    for svc in caseflow_services().values():
        for argv in caseflow_invocations(svc):
            parse(argv)


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_published_on_its_default_port(service):
    name, svc = runner_of(service)
    port = DEFAULT_PORTS[service]
    env = environment(svc)
    assert published_ports(svc) == [(port, port)], f"{name} should publish {port}:{port}"
    assert env.get(f"CASEFLOW_{service.upper()}_HTTP_PORT") == str(port)
    assert settings.load(service, env).http_port == port


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_listens_on_all_interfaces_inside_its_container(service):
    _, svc = runner_of(service)
    assert settings.load(service, environment(svc)).http_host == "0.0.0.0"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_healthy_when_ready_on_its_own_port(service):
    name, svc = runner_of(service)
    test = " ".join(as_argv(svc["healthcheck"]["test"]))
    assert f"127.0.0.1:{DEFAULT_PORTS[service]}/readyz" in test, f"{name}'s healthcheck: {test}"


def test_every_variable_compose_sets_is_one_the_code_reads():
    for name, svc in caseflow_services().items():
        unread = set(environment(svc)) - READ
        assert not unread, f"{name} sets variables no code reads: {sorted(unread)}"


def test_services_reach_kafka_and_postgres_by_their_compose_names():
    for name, svc in caseflow_services().items():
        env = environment(svc)
        for server in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            assert server.split(":")[0] in COMPOSE["services"], f"{name}: no compose service {server}"
        assert urlsplit(env["DATABASE_URL"]).hostname in COMPOSE["services"], name
        for service in SERVICES:  # each still gets a database of its own on that server
            assert settings.load(service, env).database_url.endswith(f"/caseflow_{service}")


@pytest.mark.parametrize("service", SERVICES)
def test_services_start_after_init_has_finished(service):
    _, svc = runner_of(service)
    assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_init_provisions_topics_and_migrates_every_database_with_real_cli_commands():
    init = COMPOSE["services"]["init"]
    commands = [parse(argv) for argv in caseflow_invocations(init)]
    assert [c.command for c in commands] == ["topics", "migrate"]
    migrate = commands[1]
    assert migrate.service == "all" and migrate.create_database
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_kafka_does_not_create_topics_on_its_own():
    env = environment(COMPOSE["services"]["kafka"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # init creates them with their partitions


# --- the image ---------------------------------------------------------------------------------

def dockerfiles() -> set[Path]:
    paths = set()
    for svc in caseflow_services().values():
        build = svc["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        paths.add((context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))))
    return paths


def instructions(dockerfile: Path, keyword: str) -> list[str]:
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[0].upper() == keyword]


def test_every_caseflow_service_uses_one_image_from_an_existing_dockerfile():
    paths = dockerfiles()
    assert len(paths) == 1, paths
    assert all(path.is_file() for path in paths), paths
    assert len({svc.get("image") for svc in caseflow_services().values()}) == 1


def test_the_image_runs_the_caseflow_command():
    (dockerfile,) = dockerfiles()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["caseflow"] == "services.cli:main"
    assert json.loads(instructions(dockerfile, "ENTRYPOINT")[-1]) == ["caseflow"]
    parse(json.loads(instructions(dockerfile, "CMD")[-1]))  # the default command is a real one


def test_the_image_runs_as_a_non_root_user_without_optional_extras():
    (dockerfile,) = dockerfiles()
    user = instructions(dockerfile, "USER")
    assert user and user[-1] not in ("root", "0")
    syncs = [run for run in instructions(dockerfile, "RUN") if "uv sync" in run]
    assert syncs and all("--frozen" in run and "--no-dev" in run for run in syncs)
    assert not any("--extra" in run or "--all-extras" in run for run in syncs)
