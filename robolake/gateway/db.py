"""The gateway's small relational store (API keys, upload sessions): a SQLite file on a
laptop, PostgreSQL when several gateway replicas must share it (`ROBOLAKE_GATEWAY_DB`,
e.g. `postgresql://user:password@host:5432/robolake`). Statements are written once with
`?` placeholders and portable types."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


class Database:
    def __init__(self, target: str | Path):
        text = str(target)
        self.is_postgres = text.startswith(("postgresql://", "postgres://"))
        self._lock = threading.Lock()
        if self.is_postgres:
            import psycopg2

            self.conn = psycopg2.connect(text)
            self.conn.autocommit = True
        else:
            path = Path(text)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")  # the CLI and the gateway share it
            self.conn.execute("PRAGMA busy_timeout=30000")

    def execute(self, sql: str, params: tuple = ()) -> tuple[list[tuple], int]:
        """(rows, rowcount) of one statement."""
        with self._lock:
            cur = self.conn.cursor()
            try:
                cur.execute(sql.replace("?", "%s") if self.is_postgres else sql, params)
                rows = cur.fetchall() if cur.description else []
                return [tuple(r) for r in rows], cur.rowcount
            finally:
                cur.close()

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        rows, _ = self.execute(sql, params)
        return rows[0] if rows else None

    def create(self, schema: str) -> None:
        for statement in (s.strip() for s in schema.split(";")):
            if statement:
                self.execute(statement)


def open_database(state: Path) -> Database:
    """$ROBOLAKE_GATEWAY_DB (PostgreSQL, shared by replicas), else <state>/gateway.db."""
    return Database(os.environ.get("ROBOLAKE_GATEWAY_DB") or state / "gateway.db")
