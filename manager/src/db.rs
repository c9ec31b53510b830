//! The manager's one query layer: sqlx's `Any` driver over an embedded
//! SQLite file (the default, under `--data-dir`) or PostgreSQL (`--database
//! postgres://...`, for several manager replicas). Every query is written
//! once with `$N` placeholders, which both accept; the only dialect
//! difference is the job queue's row lock (see [`Db::claim_job`]).
//!
//! Migrations are plain SQL files embedded in the binary, applied in order
//! and recorded in `weightcast_migrations`, so no tool and no live database
//! is needed to build.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The embedded migrations, in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_console.sql")),
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("unsupported database URL {0:?}: expected postgres://user@host/db or sqlite://FILE")]
    BadUrl(String),
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    pub backend: Backend,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A scheduler or seed peer as registered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub id: i64,
    pub kind: String,
    pub cluster_id: i64,
    pub cluster: String,
    pub hostname: String,
    pub addr: String,
    pub state: String,
    pub last_keep_alive_at: i64,
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    pub state: String,
    pub expires_at: Option<i64>,
}

/// A token as the console lists it (never its hash).
#[derive(Debug, Clone)]
pub struct TokenListing {
    pub row: TokenRow,
    pub created_at: i64,
}

/// A signed-in console session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub user: String,
    pub csrf: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub bio: String,
    pub user_id: i64,
    pub args: String,
    pub result: String,
    pub cluster_ids: String,
    pub group_uuid: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const JOB_COLUMNS: &str =
    "id, type, state, bio, user_id, args, result, cluster_ids, group_uuid, created_at, updated_at";

fn job_row(r: &AnyRow) -> Result<JobRow, sqlx::Error> {
    Ok(JobRow {
        id: r.try_get("id")?,
        kind: r.try_get("type")?,
        state: r.try_get("state")?,
        bio: r.try_get("bio")?,
        user_id: r.try_get("user_id")?,
        args: r.try_get("args")?,
        result: r.try_get("result")?,
        cluster_ids: r.try_get("cluster_ids")?,
        group_uuid: r.try_get("group_uuid")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn instance_row(r: &AnyRow) -> Result<Instance, sqlx::Error> {
    Ok(Instance {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        cluster_id: r.try_get("cluster_id")?,
        cluster: r.try_get("name")?,
        hostname: r.try_get("hostname")?,
        addr: r.try_get("addr")?,
        state: r.try_get("state")?,
        last_keep_alive_at: r.try_get("last_keep_alive_at")?,
    })
}

impl Db {
    /// Opens `database` (a `postgres://` or `sqlite://` URL), else the
    /// SQLite file `manager.db` under `data_dir`, and applies migrations.
    pub async fn open(database: Option<&str>, data_dir: &Path) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match database {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                (u.to_string(), Backend::Postgres)
            }
            Some(u) if u.starts_with("sqlite:") => (u.to_string(), Backend::Sqlite),
            Some(u) => return Err(DbError::BadUrl(u.to_string())),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| DbError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let file = data_dir.join("manager.db");
                (
                    format!("sqlite://{}?mode=rwc", file.display()),
                    Backend::Sqlite,
                )
            }
        };
        // SQLite serializes writers anyway; one connection per process
        // avoids "database is locked" between our own connections.
        let max = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 8,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS weightcast_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        for (version, sql) in MIGRATIONS {
            let applied =
                sqlx::query("SELECT version FROM weightcast_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?
                    .is_some();
            if applied {
                continue;
            }
            let sql = match self.backend {
                Backend::Postgres => sql.to_string(),
                Backend::Sqlite => {
                    sql.replace("BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT")
                }
            };
            let mut tx = self.pool.begin().await?;
            for stmt in statements(&sql) {
                sqlx::query(&stmt).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO weightcast_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            if let Err(e) = tx.commit().await {
                // Another replica applied it at the same moment.
                let now =
                    sqlx::query("SELECT version FROM weightcast_migrations WHERE version = $1")
                        .bind(*version)
                        .fetch_optional(&self.pool)
                        .await?;
                if now.is_none() {
                    return Err(e.into());
                }
            }
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }

    // ---- clusters and instances ----

    /// The id of cluster `name`, created on first use.
    pub async fn cluster_id(&self, name: &str) -> Result<i64, DbError> {
        sqlx::query(
            "INSERT INTO clusters (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT id FROM clusters WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("id")?)
    }

    pub async fn clusters(&self) -> Result<Vec<(i64, String)>, DbError> {
        let rows = sqlx::query("SELECT id, name FROM clusters ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    /// A keepalive: registers the instance, or marks it active again.
    pub async fn keep_alive(
        &self,
        kind: &str,
        cluster: &str,
        hostname: &str,
        addr: &str,
    ) -> Result<(), DbError> {
        let cluster_id = self.cluster_id(cluster).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO instances (kind, cluster_id, hostname, addr, state, last_keep_alive_at, created_at) \
             VALUES ($1, $2, $3, $4, 'active', $5, $5) \
             ON CONFLICT (kind, cluster_id, addr) DO UPDATE SET hostname = excluded.hostname, state = 'active', last_keep_alive_at = excluded.last_keep_alive_at",
        )
        .bind(kind)
        .bind(cluster_id)
        .bind(hostname)
        .bind(addr)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks inactive every instance not heard from within `ttl`; returns
    /// those it changed.
    pub async fn mark_stale(&self, ttl: Duration) -> Result<Vec<Instance>, DbError> {
        let cutoff = now_ms() - ttl.as_millis() as i64;
        let stale = self
            .instances_where("i.state = 'active' AND i.last_keep_alive_at < $1", cutoff)
            .await?;
        if !stale.is_empty() {
            sqlx::query("UPDATE instances SET state = 'inactive' WHERE state = 'active' AND last_keep_alive_at < $1")
                .bind(cutoff)
                .execute(&self.pool)
                .await?;
        }
        Ok(stale)
    }

    async fn instances_where(&self, cond: &str, arg: i64) -> Result<Vec<Instance>, DbError> {
        let sql = format!(
            "SELECT i.id, i.kind, i.cluster_id, c.name, i.hostname, i.addr, i.state, i.last_keep_alive_at \
             FROM instances i JOIN clusters c ON c.id = i.cluster_id WHERE {cond} ORDER BY i.id"
        );
        let rows = sqlx::query(&sql).bind(arg).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(instance_row).collect::<Result<_, _>>()?)
    }

    /// Every registered instance (active or not).
    pub async fn instances(&self) -> Result<Vec<Instance>, DbError> {
        self.instances_where("i.id >= $1", 0).await
    }

    /// Active instances of `kind` in cluster `cluster_id` heard from within `ttl`.
    pub async fn active(
        &self,
        kind: &str,
        cluster_id: i64,
        ttl: Duration,
    ) -> Result<Vec<Instance>, DbError> {
        let cutoff = now_ms() - ttl.as_millis() as i64;
        Ok(self
            .instances_where("i.state = 'active' AND i.last_keep_alive_at >= $1", cutoff)
            .await?
            .into_iter()
            .filter(|i| i.kind == kind && i.cluster_id == cluster_id)
            .collect())
    }

    // ---- tokens ----

    pub async fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        scopes: &[String],
        expires_at: Option<i64>,
    ) -> Result<i64, DbError> {
        let exists = sqlx::query("SELECT id FROM personal_access_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_some() {
            return Err(DbError::Conflict(format!(
                "a token named {name:?} exists already: pick another --name"
            )));
        }
        let row = sqlx::query(
            "INSERT INTO personal_access_tokens (name, token_hash, scopes, state, expires_at, created_at) \
             VALUES ($1, $2, $3, 'active', $4, $5) RETURNING id",
        )
        .bind(name)
        .bind(token_hash)
        .bind(scopes.join(","))
        .bind(expires_at)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRow>, DbError> {
        let row = sqlx::query("SELECT id, name, scopes, state, expires_at FROM personal_access_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let scopes: String = r.try_get("scopes")?;
        Ok(Some(TokenRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            scopes: scopes
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            state: r.try_get("state")?,
            expires_at: r.try_get("expires_at")?,
        }))
    }

    pub async fn set_token_state(&self, name: &str, state: &str) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE personal_access_tokens SET state = $1 WHERE name = $2")
            .bind(state)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A page of tokens, newest first, and how many there are.
    pub async fn tokens(
        &self,
        page: i64,
        per_page: i64,
    ) -> Result<(Vec<TokenListing>, i64), DbError> {
        let rows = sqlx::query("SELECT id, name, scopes, state, expires_at, created_at FROM personal_access_tokens ORDER BY id DESC LIMIT $1 OFFSET $2")
            .bind(per_page)
            .bind((page - 1).max(0) * per_page)
            .fetch_all(&self.pool)
            .await?;
        let total = sqlx::query("SELECT COUNT(*) AS n FROM personal_access_tokens")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let list = rows
            .iter()
            .map(|r| {
                let scopes: String = r.try_get("scopes")?;
                Ok(TokenListing {
                    row: TokenRow {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        scopes: scopes
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect(),
                        state: r.try_get("state")?,
                        expires_at: r.try_get("expires_at")?,
                    },
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((list, total))
    }

    // ---- console users and sessions ----

    /// Sets `name`'s password hash, creating the user if needed.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<(), DbError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO users (name, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(password_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // A new password ends the sessions opened with the old one.
        sqlx::query("DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE name = $1)")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `(user id, password hash)` of `name`.
    pub async fn user_password(&self, name: &str) -> Result<Option<(i64, String)>, DbError> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some((r.try_get("id")?, r.try_get("password_hash")?)))
    }

    pub async fn user_count(&self) -> Result<i64, DbError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    pub async fn create_session(
        &self,
        user_id: i64,
        token_hash: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), DbError> {
        let now = now_ms();
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO sessions (token_hash, user_id, csrf, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash)
            .bind(user_id)
            .bind(csrf)
            .bind(expires_at)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The unexpired session whose cookie hashes to `token_hash`.
    pub async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>, DbError> {
        let row = sqlx::query(
            "SELECT u.name, s.csrf, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(SessionRow {
            user: r.try_get("name")?,
            csrf: r.try_get("csrf")?,
            expires_at: r.try_get("expires_at")?,
        }))
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- jobs ----

    pub async fn insert_job(
        &self,
        kind: &str,
        bio: &str,
        user_id: i64,
        args: &str,
        cluster_ids: &str,
        group_uuid: &str,
    ) -> Result<JobRow, DbError> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO jobs (type, state, bio, user_id, args, result, cluster_ids, group_uuid, created_at, updated_at) \
             VALUES ($1, 'PENDING', $2, $3, $4, '{{}}', $5, $6, $7, $7) RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(kind)
            .bind(bio)
            .bind(user_id)
            .bind(args)
            .bind(cluster_ids)
            .bind(group_uuid)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        Ok(job_row(&row)?)
    }

    pub async fn job(&self, id: i64) -> Result<Option<JobRow>, DbError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_row).transpose()?)
    }

    /// Jobs newest first, optionally of one type and state; a page of them.
    pub async fn jobs(
        &self,
        kind: Option<&str>,
        state: Option<&str>,
        page: i64,
        per_page: i64,
    ) -> Result<(Vec<JobRow>, i64), DbError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 = '' OR type = $1) AND ($2 = '' OR state = $2) ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        );
        let rows = sqlx::query(&sql)
            .bind(kind.unwrap_or(""))
            .bind(state.unwrap_or(""))
            .bind(per_page)
            .bind((page - 1).max(0) * per_page)
            .fetch_all(&self.pool)
            .await?;
        let total = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE ($1 = '' OR type = $1) AND ($2 = '' OR state = $2)")
            .bind(kind.unwrap_or(""))
            .bind(state.unwrap_or(""))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok((rows.iter().map(job_row).collect::<Result<_, _>>()?, total))
    }

    pub async fn delete_job(&self, id: i64) -> Result<bool, DbError> {
        let r = sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Takes the oldest pending job nobody holds (or whose holder's lease
    /// ran out) for `owner` until `lease`. One statement: on PostgreSQL the
    /// row is locked with `FOR UPDATE SKIP LOCKED`, so replicas never take
    /// the same job; SQLite runs the statement under its database lock.
    pub async fn claim_job(&self, owner: &str, lease: Duration) -> Result<Option<JobRow>, DbError> {
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET claimed_by = $1, lease_until = $2 WHERE id = (\
               SELECT id FROM jobs WHERE state = 'PENDING' AND (lease_until IS NULL OR lease_until < $3) \
               ORDER BY id LIMIT 1{lock}) RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(owner)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_row).transpose()?)
    }

    /// Records a job's progress and extends its lease; `false` when the job
    /// is gone or another replica holds it now.
    pub async fn update_job(
        &self,
        id: i64,
        owner: &str,
        state: &str,
        result: &str,
        lease: Duration,
    ) -> Result<bool, DbError> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, updated_at = $3, lease_until = $4 WHERE id = $5 AND claimed_by = $6",
        )
        .bind(state)
        .bind(result)
        .bind(now)
        .bind(now + lease.as_millis() as i64)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// The statements of a migration file (`;`-separated, comments dropped).
fn statements(sql: &str) -> Vec<String> {
    // Whole-line comments go first, so that a ';' written in a comment
    // cannot cut a statement in two (the splitter does not parse SQL).
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    code.split(';')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn migration_files_split_into_statements() {
        let s = statements(
            "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\nCREATE INDEX i ON a (x);\n-- end\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], "CREATE TABLE a (x INT)");
    }
}
