"""A newcomer's first hour, as the README tells it (issue 10): `caseflow up`, then the
commands of README.md's "Trying it", as written: load the sample district, read the
roster, read a teacher's caseload, turn on a dictionary entry, publish a referral, see the
case on the dashboard by school.

The stack runs from its own CASEFLOW_HOME and free ports (so the test runs beside a
developer's own `./dev up`); the README's ports are rewritten to them, nothing else. A
person waits a moment between commands while events flow; here each curl is retried until
it answers with data (at most a minute)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.kit.settings import DEFAULT_PORTS
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def trying_it() -> str:
    """The first shell block of README.md's "Trying it" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Trying it\n"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


# Each curl is retried until it answers 2xx with data (not an empty list, not zero open
# cases), and its answer is printed between markers, for the test to read.
RETRYING_CURL = r"""
step=0
curl() {
  step=$((step + 1))
  for attempt in $(seq 120); do
    out=$(command curl -sf "$@") && [ -n "$out" ] && ! grep -q '"items":\[\]' <<<"$out" \
      && ! grep -q '"open_cases":0' <<<"$out" && break
    sleep 0.5
  done
  printf '\n### curl %s\n%s\n### end\n' "$step" "$out"
}
"""


def _stop_when_the_tests_die() -> None:
    """Linux: the stack gets SIGINT (a clean stop) if the test process dies first."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


@pytest.fixture
def stack(tmp_path):
    ports = {svc: free_port() for svc in DEFAULT_PORTS}
    env = {**os.environ, "CASEFLOW_HOME": str(tmp_path / "home"),
           "CASEFLOW_LOCAL_PG_PORT": str(free_port()), "CASEFLOW_LOCAL_KAFKA_PORT": str(free_port()),
           "CASEFLOW_LOCAL_SMTP_PORT": str(free_port()),
           **{f"CASEFLOW_{svc.upper()}_HTTP_PORT": str(port) for svc, port in ports.items()}}
    # CASEFLOW_TODAY stays (the tests' fixed date): the sample's enrolments are current on it.
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "CASEFLOW_TOPIC_PREFIX"):
        env.pop(name, None)
    log = tmp_path / "up.log"
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], cwd=ROOT, env=env,
                          stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                          preexec_fn=_stop_when_the_tests_die)
    try:
        deadline = time.monotonic() + 180
        while "caseflow is up" not in log.read_text():
            assert up.poll() is None, f"caseflow up ended:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"caseflow up not ready:\n{log.read_text()}"
            time.sleep(0.5)
        yield env, ports
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)


def test_the_readme_walk_works_as_written(stack):
    env, ports = stack
    script = trying_it()
    for svc, port in ports.items():
        script = script.replace(f"127.0.0.1:{DEFAULT_PORTS[svc]}", f"127.0.0.1:{port}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", RETRYING_CURL + script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    answers = {int(n): json.loads(body) for n, body in
               re.findall(r"### curl (\d+)\n(.*?)\n### end", done.stdout, re.S)}
    students, caseload, access, dictionary, dashboard = (answers[n] for n in (1, 2, 3, 4, 5))
    assert len(students["items"]) == 12  # the sample district's students
    assert {s["given_name"] for s in caseload["items"]} >= {"Sofia"}  # Maria Santos's homeroom 3-401
    assert all(w["reason"] == "homeroom" for s in caseload["items"] for w in s["why"])
    # Her token names only her: the roster's default for teachers gave her access.
    assert {(lv["level"], lv["school_id"], lv["basis"]) for lv in access["levels"]} == \
        {("caseload_viewer", "sch-02M001", "roster_default")}
    assert {i["trigger_kind"]: i["enabled"] for i in dictionary["items"]}["submit_form"] is True
    assert dashboard["by_school"] == [{"key": "sch-02M001", "open_cases": 1}]  # stu-0001's school
    assert re.search(r"^[0-9a-f-]{36}$", done.stdout, re.M), "caseflow publish prints the event id"
