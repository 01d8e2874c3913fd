-- One SIS enrolment fact as store.enrol_students sends a turn of them: the students' ids as
-- one array, everything else as one array of these rows (domain.enrolment_columns after the
-- first, in order). asyncpg looks at every element of an array parameter in Python (is it
-- itself an array?), so thirteen arrays of one column each cost thirteen looks per fact
-- where one array of rows costs one.
CREATE TYPE sis_enrolment_fact AS (
    district_id     text,
    source_id       text,
    school_id       text,
    grade           text,
    given_name      text,
    family_name     text,
    birth_date      date,
    email           text,
    state_id        text,
    school_ids      text,  -- every school, the home school first, as an array literal (kit.db.text_array)
    roster_event_id uuid,
    occurred_at     text,  -- ISO 8601, as the event says it
    correlation_id  text
);
