"""SQLite: schema and migrations, the one writer, the ledger, outboxes and queries.

Everything that changes state lives here as plain functions of a `sqlite3.Connection`
that run inside the writer's transaction; imports flow toward this package.
"""
