-- An assignee's task list (GET /v1/tasks): their tasks by status and due date.
CREATE INDEX tasks_by_assignee ON tasks (district_id, assignee_email, status, due_date, task_id);
