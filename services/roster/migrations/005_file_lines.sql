-- Where each row was in a file, apart from what it said: a re-import whose rows moved (a
-- line added near the top moves every row after it) writes one row per file here instead
-- of rewriting every row of last_file_rows. source_ids and lines are parallel: lines[i] is
-- the line (header = 1) of source_ids[i] in the users.csv or classes.csv of import_id.
-- The newest (seq) holding a sourcedId is its latest file; a bulk file's replaces the
-- district's older ones of that entity (what it leaves out has no row of the latest file).
CREATE TABLE file_lines (
    seq         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id text    NOT NULL,
    entity      text    NOT NULL,                  -- user, class
    import_id   uuid    NOT NULL,
    source_ids  text[]  NOT NULL,
    lines       integer[] NOT NULL
);
CREATE INDEX file_lines_by_district ON file_lines (district_id, entity, seq);

-- last_file_rows.line is now the row's line when what it said last changed (or when it was
-- written before this migration): file_lines, where it has the row, says where it is now.
