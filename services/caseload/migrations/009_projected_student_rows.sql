-- A student as store.project_students sends a batch of them: one array of these rows, in the
-- order of domain.ProjectedStudent's fields. asyncpg looks at every element of an array
-- parameter in Python (is it itself an array?), so eleven arrays of one column each cost
-- eleven looks per student where one array of rows costs one.
CREATE TYPE projected_student AS (
    student_id  uuid,
    district_id text,
    school_id   text,
    grade       text,
    given_name  text,
    family_name text,
    state_id    text,
    status      text,
    as_of       timestamptz,
    source_id   text,
    school_ids  text[]
);
