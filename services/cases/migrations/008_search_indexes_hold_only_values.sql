-- A case opens with no team, no team leader and (unless its school has a default) no case
-- manager, yet each of 002's search indexes took an entry for it: three of the ten index
-- entries every opened case wrote (bench/cases.py --only throughput: 12% of storing a batch
-- of opened cases). Search only looks a team, leader or manager up by a value, so the
-- indexes hold only the cases that have one.
DROP INDEX cases_by_team_number;
DROP INDEX cases_by_leader_number;
DROP INDEX cases_by_manager_number;
CREATE INDEX cases_by_team_number ON cases (district_id, lower(team_name), case_number) WHERE team_name IS NOT NULL;
CREATE INDEX cases_by_leader_number ON cases (district_id, lower(team_leader), case_number) WHERE team_leader IS NOT NULL;
CREATE INDEX cases_by_manager_number ON cases (district_id, lower(case_manager), case_number) WHERE case_manager IS NOT NULL;
