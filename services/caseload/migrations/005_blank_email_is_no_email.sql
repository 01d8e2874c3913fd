-- A blank email is no email (domain.login_email): the staff projection keeps a login email
-- as the domain reads it (no surrounding whitespace, lower case) or NULL, so the SQL that
-- builds caseloads compares emails as they are, and `email IS NOT NULL` means "matched".
-- Until now a StaffUpserted with email "" or spaces made that string a caseload owner.
UPDATE staff SET email = nullif(lower(regexp_replace(email, '^\s+|\s+$', '', 'g')), '')
WHERE email IS NOT NULL;
ALTER TABLE staff ADD CONSTRAINT staff_email_is_a_login_email CHECK (email <> '' AND email = btrim(email));
DROP INDEX staff_by_email;
CREATE INDEX staff_by_login_email ON staff (district_id, email) WHERE email IS NOT NULL;

-- A provider named by a blank email (a path of spaces) was no one: their authorisations
-- go, their links end (kept as history). The memberships blank owners held leave as the
-- service starts, each removal published (upkeep.drop_blank_owners).
DELETE FROM provider_authorisations WHERE provider_email ~ '^\s*$';
UPDATE provider_links SET ended_at = now(), ended_by = 'caseflow', ended_why = 'no provider: the email was blank'
WHERE provider_email ~ '^\s*$' AND ended_at IS NULL;
