"""The run history's SQLite tables, as migrations.

``runs`` (one row per run, with its owning process and, for a sweep's run, its sweep
and point), ``metrics`` (step/eval rows, typed columns plus JSON), ``layers`` (stored
activation bytes per layer) and ``sweeps`` (one row per sweep).  The database's
``PRAGMA user_version`` counts the migrations applied to it.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

# Schema migrations: entry i brings user_version from i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'interrupted', 'failed')),
            error TEXT,
            config_json TEXT NOT NULL DEFAULT '{}',
            summary_json TEXT,
            tags TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS runs_status_created ON runs (status, created_at)",
        """CREATE TABLE IF NOT EXISTS metrics (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            variant TEXT NOT NULL,
            kind TEXT NOT NULL,
            step INTEGER NOT NULL,
            epoch INTEGER,
            loss REAL,
            accuracy REAL,
            act_bytes INTEGER,
            data_json TEXT NOT NULL
        )""",
        """CREATE INDEX IF NOT EXISTS metrics_run_kind_variant_step
            ON metrics (run_id, kind, variant, step)""",
        """CREATE TABLE IF NOT EXISTS layers (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            variant TEXT NOT NULL,
            layer TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            PRIMARY KEY (run_id, variant, layer)
        )""",
    ),
    # 1 -> 2: ids are never reused (AUTOINCREMENT) and each run records its owning
    # process.  SQLite cannot add AUTOINCREMENT in place, so ``runs`` is rebuilt with
    # its ids; foreign keys are off meanwhile so metrics and layers are kept.
    (
        """CREATE TABLE runs_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'interrupted', 'failed')),
            error TEXT,
            config_json TEXT NOT NULL DEFAULT '{}',
            summary_json TEXT,
            tags TEXT,
            host TEXT,
            pid INTEGER,
            pid_start INTEGER,
            boot_id TEXT,
            pid_ns TEXT
        )""",
        """INSERT INTO runs_v2 (id, name, kind, created_at, updated_at, finished_at, status,
                               error, config_json, summary_json, tags)
            SELECT id, name, kind, created_at, updated_at, finished_at, status,
                   error, config_json, summary_json, tags FROM runs""",
        "DROP TABLE runs",
        "ALTER TABLE runs_v2 RENAME TO runs",
        "CREATE INDEX IF NOT EXISTS runs_status_created ON runs (status, created_at)",
    ),
    # 2 -> 3: sweeps get ids of their own (never reused) and each run of a sweep names its
    # sweep and its point (0: the sweep's dense baseline, 1..n: its Facto settings).  Older
    # runs keep NULL there: they belong to no sweep.
    (
        """CREATE TABLE IF NOT EXISTS sweeps (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at REAL NOT NULL,
            points INTEGER NOT NULL,
            config_json TEXT NOT NULL DEFAULT '{}'
        )""",
        "ALTER TABLE runs ADD COLUMN sweep_id INTEGER",
        "ALTER TABLE runs ADD COLUMN sweep_point INTEGER",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
