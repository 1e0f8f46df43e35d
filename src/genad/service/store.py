"""SQLite store for inspections and jobs, so a restart of the service loses nothing.

One connection shared by all threads behind a lock: the service writes a few rows per request,
so a lock is simpler and safer than a pool, and WAL keeps readers from blocking the writer.
Rows hold JSON text; the pictures live as files next to the database, named by server ids.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    filename TEXT,
    detector TEXT NOT NULL,
    params TEXT NOT NULL,
    n_normals INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    result TEXT NOT NULL,
    has_heatmap INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inspections_created ON inspections(created);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    request TEXT NOT NULL,
    summary TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
"""

#: job states; the last three are final
JOB_STATES = ("queued", "running", "done", "failed", "interrupted", "cancelled")
FINAL_STATES = ("done", "failed", "interrupted", "cancelled")


def new_id() -> str:
    """Server-side ids: 32 hex digits, safe as a folder name, never taken from a request."""
    return uuid.uuid4().hex


def is_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


@dataclass
class Inspection:
    id: str
    created: float
    filename: str | None
    detector: str
    params: dict[str, Any]
    n_normals: int
    width: int | None
    height: int | None
    result: dict[str, Any]
    has_heatmap: bool


@dataclass
class Job:
    id: str
    kind: str
    status: str
    created: float
    request: dict[str, Any]
    started: float | None = None
    finished: float | None = None
    done: int = 0
    total: int | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Store:
    """Inspections and jobs in one SQLite file (stdlib sqlite3)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._tx() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- inspections -------------------------------------------------------------------------
    def add_inspection(self, ins: Inspection) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO inspections VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    ins.id,
                    ins.created,
                    ins.filename,
                    ins.detector,
                    json.dumps(ins.params),
                    ins.n_normals,
                    ins.width,
                    ins.height,
                    json.dumps(ins.result),
                    int(ins.has_heatmap),
                ),
            )

    def get_inspection(self, inspection_id: str) -> Inspection | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM inspections WHERE id=?", (inspection_id,)).fetchone()
        return None if row is None else _inspection(row)

    def list_inspections(self, limit: int = 20, offset: int = 0) -> list[Inspection]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM inspections ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [_inspection(r) for r in rows]

    def count_inspections(self) -> int:
        with self._tx() as db:
            return int(db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0])

    def delete_inspection(self, inspection_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM inspections WHERE id=?", (inspection_id,))
        return cur.rowcount > 0

    # -- jobs --------------------------------------------------------------------------------
    def add_job(self, job: Job) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, status, created, request) VALUES (?,?,?,?,?)",
                (job.id, job.kind, job.status, job.created, json.dumps(job.request)),
            )

    def get_job(self, job_id: str) -> Job | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list_jobs(self, limit: int = 20) -> list[Job]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [_job(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set columns of a job; dict values are stored as JSON."""
        allowed = {"status", "started", "finished", "done", "total", "summary", "error"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"not job columns: {sorted(bad)}")
        cols = ", ".join(f"{k}=?" for k in fields)  # keys come from the allow-list above
        vals = [json.dumps(v) if isinstance(v, dict) else v for v in fields.values()]
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id=?", (*vals, job_id))

    def mark_interrupted(self) -> int:
        """At start-up: jobs that were queued or running when the last process ended can no
        longer finish; say so instead of showing them as running for ever."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status='interrupted', finished=?, "
                "error='the service stopped while this job was running: resume it with "
                "POST /v1/jobs/' || id || '/resume' WHERE status IN ('queued', 'running')",
                (time.time(),),
            )
        return cur.rowcount


def _inspection(row: sqlite3.Row) -> Inspection:
    return Inspection(
        id=row["id"],
        created=row["created"],
        filename=row["filename"],
        detector=row["detector"],
        params=json.loads(row["params"]),
        n_normals=row["n_normals"],
        width=row["width"],
        height=row["height"],
        result=json.loads(row["result"]),
        has_heatmap=bool(row["has_heatmap"]),
    )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        created=row["created"],
        request=json.loads(row["request"]),
        started=row["started"],
        finished=row["finished"],
        done=row["done"],
        total=row["total"],
        summary=None if row["summary"] is None else json.loads(row["summary"]),
        error=row["error"],
    )
