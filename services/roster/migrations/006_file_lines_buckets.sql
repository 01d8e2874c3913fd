-- file_lines split into buckets by a hash of the sourcedId, so the reconcile view reads one
-- bucket of a file instead of detoasting and scanning the whole file's array (18 ms at a
-- quarter of New York City, growing with the district). A file of n rows has 2^k buckets,
-- the fewest holding at most 128 rows on average (k at most 20); bucket b of 2^k is
-- numbered 2^k + b, so a lookup asks for its sourcedId's bucket at every k. The hash is the
-- first 28 bits of the sourcedId's MD5 (hashtext is not promised to stay the same across
-- PostgreSQL versions). services/roster/store.py builds the same SQL (sourced_id_hash_sql,
-- file_lines_bucket_sql): the hash and the numbering are copied here as they are now.
ALTER TABLE file_lines ADD COLUMN bucket integer;

-- The rows kept before: each re-split into its buckets, in the order of their seq (the
-- newest file holding a sourcedId stays the newest), then removed.
INSERT INTO file_lines (district_id, entity, import_id, bucket, source_ids, lines)
SELECT o.district_id, o.entity, o.import_id,
       n.buckets + (('x' || substr(md5(u.source_id), 1, 7))::bit(28)::int & (n.buckets - 1)),
       array_agg(u.source_id ORDER BY u.at), array_agg(u.line ORDER BY u.at)
FROM file_lines o
CROSS JOIN LATERAL (
    SELECT (1 << least(20, greatest(0, ceil(log(2, greatest(cardinality(o.source_ids), 1)::numeric / 128))))::int)
           AS buckets) n
CROSS JOIN LATERAL unnest(o.source_ids, o.lines) WITH ORDINALITY AS u(source_id, line, at)
WHERE o.bucket IS NULL
GROUP BY o.seq, o.district_id, o.entity, o.import_id, 4
ORDER BY o.seq, 4;

DELETE FROM file_lines WHERE bucket IS NULL;
ALTER TABLE file_lines ALTER COLUMN bucket SET NOT NULL;
DROP INDEX file_lines_by_district;
CREATE INDEX file_lines_by_bucket ON file_lines (district_id, entity, bucket, seq);
