-- Each school's default case manager: a case opened at the school starts with them as its
-- case manager (and CaseOpened names them, for the notice of issue 13).
CREATE TABLE school_case_managers (
    district_id  text        NOT NULL,
    school_id    text        NOT NULL,
    case_manager text        NOT NULL,
    changed_by   text        NOT NULL,
    changed_at   timestamptz NOT NULL,
    PRIMARY KEY (district_id, school_id)
);
