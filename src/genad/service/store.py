"""SQLite store for inspections, jobs and stored models, so a restart of the service loses nothing.

One connection shared by all threads behind a lock: the service writes a few rows per request,
so a lock is simpler and safer than a pool, and WAL keeps readers from blocking the writer.
Rows hold JSON text; the pictures live as files next to the database, named by server ids.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genad.errors import GenadError

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
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    detector TEXT NOT NULL,
    params TEXT NOT NULL,
    n_references INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    source TEXT NOT NULL,
    manifest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS models_created ON models(created);
"""

# columns added after the first release: (table, column, type), added to older databases
_ADDED_COLUMNS = [
    ("inspections", "model_id", "TEXT"),
    ("inspections", "model_name", "TEXT"),
]

#: job states; the last three are final
JOB_STATES = ("queued", "running", "done", "failed", "interrupted", "cancelled")
FINAL_STATES = ("done", "failed", "interrupted", "cancelled")


def new_id() -> str:
    """Server-side ids: 32 hex digits, safe as a folder name, never taken from a request."""
    return uuid.uuid4().hex


def name_key(name: str) -> str:
    """What makes two model names the same: Unicode NFC form, case folded ("Line" == "LINE")."""
    return unicodedata.normalize("NFC", name).casefold()


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
    #: the stored model that scored it (POST /v1/models), kept even after the model is deleted
    model_id: str | None = None
    model_name: str | None = None


@dataclass
class StoredModel:
    """A fitted detector kept as a model file (STORAGE/models/<id>.genad) and its row."""

    id: str
    name: str
    created: float
    detector: str
    params: dict[str, Any]
    n_references: int
    size_bytes: int
    source: dict[str, Any]
    manifest: dict[str, Any]


class NameTaken(GenadError):
    """A model name already in use (HTTP 409)."""


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
    """Inspections, jobs and stored models in one SQLite file (stdlib sqlite3)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._tx() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:  # names from the list above, not a request
                have = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

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
                "INSERT INTO inspections (id, created, filename, detector, params, n_normals, width, height, "
                "result, has_heatmap, model_id, model_name) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
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
                    ins.model_id,
                    ins.model_name,
                ),
            )

    def get_inspection(self, inspection_id: str) -> Inspection | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM inspections WHERE id=?", (inspection_id,)).fetchone()
        return None if row is None else _inspection(row)

    def list_inspections(self, limit: int = 20, offset: int = 0) -> list[Inspection]:
        return [_inspection(r) for r in self._newest("inspections", limit, offset)]

    def count_inspections(self) -> int:
        return self._count("inspections")

    def delete_inspection(self, inspection_id: str) -> bool:
        return self._delete("inspections", inspection_id)

    # -- one home for the row queries of the tables above and below (names are ours, never a request's)
    def _newest(self, table: str, limit: int, offset: int) -> list[sqlite3.Row]:
        with self._tx() as db:
            return db.execute(
                f"SELECT * FROM {table} ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()

    def _count(self, table: str) -> int:
        with self._tx() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def _delete(self, table: str, row_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(f"DELETE FROM {table} WHERE id=?", (row_id,))
        return cur.rowcount > 0

    # -- stored models ---------------------------------------------------------------------------
    def add_model(self, m: StoredModel) -> None:
        """NameTaken if another model has this name (compared by `name_key`: any case)."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO models (id, name, name_key, created, detector, params, n_references, size_bytes, "
                    "source, manifest) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        m.id,
                        m.name,
                        name_key(m.name),
                        m.created,
                        m.detector,
                        json.dumps(m.params),
                        m.n_references,
                        m.size_bytes,
                        json.dumps(m.source),
                        json.dumps(m.manifest),
                    ),
                )
        except sqlite3.IntegrityError as e:
            raise NameTaken(f"a model named {m.name!r} already exists: pick another name, or delete that one") from e

    def get_model(self, model_id: str) -> StoredModel | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM models WHERE id=?", (model_id,)).fetchone()
        return None if row is None else _model(row)

    def model_named(self, name: str) -> StoredModel | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM models WHERE name_key=?", (name_key(name),)).fetchone()
        return None if row is None else _model(row)

    def list_models(self, limit: int = 100, offset: int = 0) -> list[StoredModel]:
        return [_model(r) for r in self._newest("models", limit, offset)]

    def count_models(self) -> int:
        return self._count("models")

    def delete_model(self, model_id: str) -> bool:
        return self._delete("models", model_id)

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
        if fields.get("status") in ("done", "failed", "cancelled") and "error" not in fields:
            # a job that finishes carries no error left from before (say, "the service stopped")
            fields["error"] = None
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
        model_id=row["model_id"],
        model_name=row["model_name"],
    )


def _model(row: sqlite3.Row) -> StoredModel:
    return StoredModel(
        id=row["id"],
        name=row["name"],
        created=row["created"],
        detector=row["detector"],
        params=json.loads(row["params"]),
        n_references=row["n_references"],
        size_bytes=row["size_bytes"],
        source=json.loads(row["source"]),
        manifest=json.loads(row["manifest"]),
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
