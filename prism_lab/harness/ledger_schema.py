"""The ledger's SQLite schema (harness/ledger.py creates and migrates it)."""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY, grid_path TEXT NOT NULL, grid_json TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    sweep TEXT NOT NULL, cell_id TEXT NOT NULL, axes_json TEXT NOT NULL, ordinal INTEGER NOT NULL,
    PRIMARY KEY (sweep, cell_id));
CREATE TABLE IF NOT EXISTS cell_runs (
    sweep TEXT NOT NULL, cell_id TEXT NOT NULL, role TEXT NOT NULL, run_key TEXT NOT NULL,
    PRIMARY KEY (sweep, cell_id, role));
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, label TEXT NOT NULL, config_json TEXT NOT NULL,
    inputs_json TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, heartbeat_at REAL,
    host TEXT, owner_pid INTEGER, pid INTEGER, artifact_path TEXT, log_path TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS metrics (
    run_key TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_key, name, step);
CREATE TABLE IF NOT EXISTS item_scores (
    run_key TEXT NOT NULL, benchmark TEXT NOT NULL, item TEXT NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (run_key, benchmark, item));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, run_key TEXT, sweep TEXT,
    kind TEXT NOT NULL, message TEXT NOT NULL);
"""
