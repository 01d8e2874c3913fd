"""The cases service. Not built yet: it starts, migrates its database (inbox and
outbox) and serves health, so the whole system runs and deploys from day one."""

from __future__ import annotations

from pathlib import Path

from services.kit.runtime import ServiceDefinition


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="cases",
        directory=Path(__file__).parent,
        description="Opens cases per each district's trigger dictionary; tasks, timeline, dashboard; publishes CaseOpened.",
    )
