-- Live cluster names are unique per owner: alice and bob may each have a live "analysis",
-- and neither learns of the other's. (The owner index is the new one's prefix.)
DROP INDEX clusters_live_name;
DROP INDEX clusters_live_owner;
CREATE UNIQUE INDEX clusters_live_owner_name ON clusters(owner, name) WHERE status NOT IN ('stopped', 'error');
