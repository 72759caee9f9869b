-- The schema as of version 2 (clusters, instances, events, the prices cache). Stores made
-- before numbered migrations were made by this script, run idempotently at every open, so
-- it stays idempotent: it completes a version-1 store (whose prices table is missing).
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    target TEXT NOT NULL,
    message TEXT,
    state TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    stopped_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS clusters_live_name
    ON clusters(name) WHERE status NOT IN ('stopped', 'error');
CREATE TABLE IF NOT EXISTS instances (
    cluster_id TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    role TEXT NOT NULL,
    address TEXT,
    vm_type TEXT,
    zone TEXT,
    spot INTEGER NOT NULL DEFAULT 0,
    launched_at REAL NOT NULL,
    terminated_at REAL,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (cluster_id, id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_cluster ON events(cluster_id, seq);
CREATE TABLE IF NOT EXISTS prices (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    fetched_at REAL NOT NULL
);
