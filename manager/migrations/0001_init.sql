-- Written once for both databases: `BIGSERIAL PRIMARY KEY` becomes
-- `INTEGER PRIMARY KEY AUTOINCREMENT` on SQLite (see db.rs). Times are
-- unix milliseconds.
CREATE TABLE clusters (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE instances (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    cluster_id BIGINT NOT NULL,
    hostname TEXT NOT NULL,
    addr TEXT NOT NULL,
    state TEXT NOT NULL,
    last_keep_alive_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (kind, cluster_id, addr)
);
CREATE TABLE personal_access_tokens (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    bio TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    args TEXT NOT NULL,
    result TEXT NOT NULL,
    cluster_ids TEXT NOT NULL,
    group_uuid TEXT NOT NULL,
    claimed_by TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, id);
