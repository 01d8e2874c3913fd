"""The bench harness's pure parts and the one table bench/run prints (no broker, no
database, no timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import figures  # noqa: E402
import harness  # noqa: E402

from contracts.topics import CASE_TRIGGERS, ROSTER_STUDENTS  # noqa: E402
from services.kit.settings import KafkaSettings  # noqa: E402


def test_a_consumer_group_is_named_with_the_topic_prefix_as_the_kit_names_it():
    # bench/cases.py once waited on "caseflow.cases.roster-students" while the service
    # committed under the prefixed name: a lag that never reached 0.
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="bk1234.")
    ((group, partitions),) = harness.consumer_groups(kafka, [("caseflow.cases.roster-students", ROSTER_STUDENTS)])
    assert group == "bk1234.caseflow.cases.roster-students"
    assert {tp.topic for tp in partitions} == {"bk1234." + ROSTER_STUDENTS.name}
    assert len(partitions) == ROSTER_STUDENTS.partitions


def test_a_service_s_groups_are_its_subscriptions_consumers():
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="p.")
    pairs = [(s.consumer, s.topic) for s in harness.subscriptions("cases") if s.topic is CASE_TRIGGERS]
    assert [g for g, _ in harness.consumer_groups(kafka, pairs)] == [f"p.{pairs[0][0]}"]


def test_ports_from_a_base_follow_the_start_order_and_free_ones_stay_below_the_ephemeral_range():
    ports = harness.Ports(18100)
    assert [ports.next() for _ in range(3)] == [18100, 18101, 18102]
    free = harness.Ports()
    assert all(20_000 <= free.next() < 32_768 for _ in range(5))


@pytest.mark.parametrize(("p", "expected"), [(50, 50), (99, 99), (100, 100), (0, 1)])
def test_percentiles_are_nearest_rank(p, expected):
    assert harness.pct([float(v) for v in range(100, 0, -1)], p) == expected


def test_no_values_have_no_percentile():
    assert harness.pct([], 99) != harness.pct([], 99)  # NaN


def test_the_table_gives_each_figure_its_goal_measure_baseline_ratio_and_notes():
    rows = [
        figures.Row("Slice end to end per instance: roster", ">= 20,000 ev/s", 8_000.0, "ev/s", 80_000.0,
                    "aiokafka+COPY+commit", False, "10 passes", load=1.5),
        figures.Row("Caseload page p99", "< 50 ms", 40.0, "ms", 10.0, "/healthz", True, load=0.5),
        figures.Row("Roster import", "-", None, "", note="FAILED: RuntimeError: boom", load=2.0),
    ]
    text = figures.table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["figure", "goal"]
    slice_line = next(line for line in lines if line.startswith("Slice"))
    assert "8,000 ev/s" in slice_line and "80,000 ev/s aiokafka+COPY+commit" in slice_line
    assert "0.10x" in slice_line and "NO" in slice_line and slice_line.endswith("[1]")
    page_line = next(line for line in lines if line.startswith("Caseload page"))
    assert "4.00x" in page_line and "yes" in page_line
    assert "[1] 10 passes" in text and "[3] FAILED: RuntimeError: boom" in text
    assert json.loads(json.dumps([r.as_dict() for r in rows]))[2]["ratio"] is None


def test_quick_sizes_are_smaller_than_the_scale_s_and_say_what_the_import_ran_at():
    quick, full = figures.Sizes.of(0.1, quick=True), figures.Sizes.of(0.1, quick=False)
    assert quick.import_scale < full.import_scale == 0.1
    assert quick.dashboard_cases < full.dashboard_cases == 200_000
    assert "not judged" in figures.extrapolated(1.0, quick.import_scale)
    assert "-> 100 s at 1.0" in figures.extrapolated(10.0, 0.1)


async def test_the_dashboard_s_statement_recorder_passes_transactions_and_settings_through():
    import cases

    class Connection:
        def __init__(self):
            self.ran = []

        def transaction(self):
            return "a transaction"

        async def execute(self, sql, *args):
            self.ran.append(sql)

        async def fetch(self, sql, *args):
            self.ran.append(sql)
            return []

    conn = Connection()
    recorder = cases.Recorder(conn)
    assert recorder.transaction() == "a transaction"
    await recorder.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    await recorder.fetch("SELECT 1 WHERE $1", True)
    assert recorder.settings == ["SET LOCAL plan_cache_mode = force_custom_plan"]
    assert recorder.statements == [("SELECT 1 WHERE $1", (True,))]
    assert conn.ran == ["SET LOCAL plan_cache_mode = force_custom_plan", "SELECT 1 WHERE $1"]
