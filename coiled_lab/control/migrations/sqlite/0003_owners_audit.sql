-- Team mode: every cluster has an owner ('' for the clusters of a one-user store) and every
-- action is audited.
ALTER TABLE clusters ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX clusters_live_owner ON clusters(owner) WHERE status NOT IN ('stopped', 'error');
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    cluster_id TEXT,
    cluster_name TEXT,
    per_hour REAL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_cluster ON audit(cluster_id, seq);
CREATE INDEX audit_by_actor ON audit(actor, seq);
CREATE INDEX audit_by_time ON audit(time);
