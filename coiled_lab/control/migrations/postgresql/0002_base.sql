-- The schema as of version 2 (clusters, instances, events, the prices cache): the SQLite
-- store's, with PostgreSQL's types (8-byte floats for times, identities for seq).
CREATE TABLE clusters (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    target TEXT NOT NULL,
    message TEXT,
    state TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    stopped_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX clusters_live_name ON clusters(name) WHERE status NOT IN ('stopped', 'error');
CREATE TABLE instances (
    cluster_id TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    role TEXT NOT NULL,
    address TEXT,
    vm_type TEXT,
    zone TEXT,
    spot INTEGER NOT NULL DEFAULT 0,
    launched_at DOUBLE PRECISION NOT NULL,
    terminated_at DOUBLE PRECISION,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (cluster_id, id)
);
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cluster_id TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_by_cluster ON events(cluster_id, seq);
CREATE TABLE prices (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    fetched_at DOUBLE PRECISION NOT NULL
);
