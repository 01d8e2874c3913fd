"""Caseflow's event contracts: the only code the services share besides the service kit."""

from contracts.envelope import Event
from contracts.roster import StudentEnrolled, StudentUpdated
from contracts.sis import SisStudentEnrolled
from contracts.topics import EVENT_TYPES, TOPICS, Topic, topic_for

__all__ = ["EVENT_TYPES", "TOPICS", "Event", "SisStudentEnrolled", "StudentEnrolled", "StudentUpdated", "Topic", "topic_for"]
