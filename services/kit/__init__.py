"""The small service kit every Caseflow service stands on: settings, logs, database,
inbox, outbox, consumer, HTTP basics and tokens. Plumbing only; no domain here."""
