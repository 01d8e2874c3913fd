from contracts import schemas_export


def test_the_committed_json_schemas_match_the_models():
    stale = schemas_export.stale()
    assert stale == [], f"stale JSON Schemas: {stale}; run `caseflow contracts export` and commit them"


def test_there_is_a_schema_for_every_event_type_and_the_topic_registry():
    names = set(schemas_export.rendered())
    assert {"sis.student_enrolled.v1.json", "roster.student_enrolled.v1.json", "topics.json"} <= names
