-- The teachers of a class, without reading its class list: store.refresh_caseloads goes
-- from a batch's students to their classes (class_members_by_person), then to each class's
-- teachers here. Through the primary key (class_id, person_id) that lookup read every
-- member of the class (~190 rows per class, per student) to find its one or two teachers.
CREATE INDEX class_members_teachers ON class_members (class_id, person_id) WHERE role = 'teacher';
