//! Reads of the users read model: get, list, search, sessions, counts.

use crate::read_models::filter::{Field, Filter, SqlBuilder};
use sqlx::Row;
use userstream_eventlog::{Db, Tenant};

use super::{decode_row, UserRow, COLUMNS};

/// Queries over the users read model. Archived users are never returned.
#[derive(Clone)]
pub struct UsersQuery {
    db: Db,
}

/// One active session as the read model holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub session_id: String,
    pub domain: String,
    pub user_agent: String,
    pub ip: String,
    pub expires_at: String,
    pub created_at: String,
}

/// The most users one search returns.
pub const MAX_SEARCH_RESULTS: usize = 100;

/// The largest page a list may ask for.
pub const MAX_PAGE_SIZE: i64 = 500;

impl UsersQuery {
    pub fn new(db: Db) -> Self {
        UsersQuery { db }
    }

    pub async fn get(&self, tenant: &Tenant, user_id: &str) -> Result<Option<UserRow>, sqlx::Error> {
        Ok(self.by_ids(tenant, &[user_id.to_lowercase()]).await?.pop())
    }

    /// Live users of the tenant among `ids`. The statement names only the
    /// primary key, so its plan is a key lookup however stale the planner's
    /// statistics are; tenant and archive state are checked on the rows.
    pub async fn by_ids(&self, tenant: &Tenant, ids: &[String]) -> Result<Vec<UserRow>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM users_v1 u WHERE u.application_id = $1 AND u.user_id IN ({})",
            list.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(&tenant.application_id);
        for id in ids {
            query = query.bind(id.as_str());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            let user = decode_row(row)?;
            if user.company_id == tenant.company_id && !user.archived {
                users.push(user);
            }
        }
        Ok(users)
    }

    /// The sessions of a user still valid at `now` (RFC 3339 text), newest first.
    pub async fn sessions(&self, tenant: &Tenant, user_id: &str, now: &str) -> Result<Vec<SessionRow>, sqlx::Error> {
        let rows = sqlx::query("SELECT s.session_id, s.domain, s.user_agent, s.ip, s.expires_at, s.created_at FROM user_sessions_v1 s JOIN users_v1 u ON u.application_id = s.application_id AND u.user_id = s.user_id WHERE s.application_id = $1 AND s.user_id = $2 AND u.company_id = $3 AND s.expires_at > $4 ORDER BY s.created_at DESC")
            .bind(&tenant.application_id)
            .bind(user_id)
            .bind(&tenant.company_id)
            .bind(now)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    session_id: r.try_get("session_id")?,
                    domain: r.try_get("domain")?,
                    user_agent: r.try_get("user_agent")?,
                    ip: r.try_get("ip")?,
                    expires_at: r.try_get("expires_at")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Up to `limit` live user ids of the tenant in id order, after `after`.
    pub async fn ids_after(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        let sql = format!(
            "SELECT user_id FROM users_v1 WHERE application_id = $1 AND company_id = $2 AND archived = 0 AND user_id > $3 ORDER BY user_id LIMIT {limit}"
        );
        sqlx::query_scalar::<_, String>(&sql)
            .bind(&tenant.application_id)
            .bind(&tenant.company_id)
            .bind(after.unwrap_or(""))
            .fetch_all(&self.db.pool)
            .await
    }

    /// A page of users, newest first, and the number of users matching.
    pub async fn list(
        &self,
        tenant: &Tenant,
        filter: Option<&Filter>,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<UserRow>, i64), sqlx::Error> {
        let offset = (page_no.max(1) - 1) * page_size;
        let (sql, binds) = list_page_sql(tenant, filter);
        let mut query =
            sqlx::query(&sql).bind(&tenant.company_id).bind(&tenant.application_id).bind(page_size).bind(offset);
        for b in &binds {
            query = query.bind(b.as_str());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let items = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
        let total = if filter.is_none() {
            sqlx::query_scalar::<_, i64>(
                "SELECT live FROM user_counts_v1 WHERE company_id = $1 AND application_id = $2",
            )
            .bind(&tenant.company_id)
            .bind(&tenant.application_id)
            .fetch_optional(&self.db.pool)
            .await?
            .unwrap_or(0)
        } else {
            let mut cond = SqlBuilder::starting_after(2);
            let live = live_users(tenant, filter, &mut cond);
            let sql = format!("SELECT COUNT(*) FROM users_v1 u WHERE {live}");
            let mut query = sqlx::query_scalar::<_, i64>(&sql).bind(&tenant.company_id).bind(&tenant.application_id);
            for b in &cond.binds {
                query = query.bind(b.as_str());
            }
            query.fetch_one(&self.db.pool).await?
        };
        Ok((items, total))
    }

    /// Users matching any of `terms`, each an id, email, phone, username or
    /// external id (exact; emails and usernames case-insensitively). Every
    /// lookup uses an index.
    pub async fn search(&self, tenant: &Tenant, terms: &[String]) -> Result<Vec<UserRow>, sqlx::Error> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let mut b = SqlBuilder::starting_after(1);
        let lists: Vec<(Field, Vec<String>)> =
            [Field::UserId, Field::Email, Field::Phone, Field::Username, Field::ExternalId]
                .into_iter()
                .map(|f| (f, terms.iter().map(|t| crate::read_models::filter::normalise(f, t)).collect()))
                .collect();
        let mut parts = Vec::new();
        for (field, values) in &lists {
            let mut s = SqlBuilder::starting_after(1 + b.binds.len());
            let head = match field {
                Field::Email => {
                    "SELECT user_id FROM user_contacts_v1 WHERE application_id = $1 AND kind = 'email' AND value IN ("
                }
                Field::Phone => {
                    "SELECT user_id FROM user_contacts_v1 WHERE application_id = $1 AND kind = 'phone' AND value IN ("
                }
                Field::UserId => "SELECT user_id FROM users_v1 WHERE application_id = $1 AND user_id IN (",
                Field::Username => "SELECT user_id FROM users_v1 WHERE application_id = $1 AND username_key IN (",
                _ => "SELECT user_id FROM users_v1 WHERE application_id = $1 AND external_id IN (",
            };
            s.sql.push_str(head);
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    s.sql.push_str(", ");
                }
                s.bind(v.clone());
            }
            s.sql.push(')');
            parts.push(s.sql);
            b.binds.extend(s.binds);
        }
        // First the matching ids (index lookups only), then their rows by
        // primary key: two statements whose plans cannot go wrong, whatever
        // the planner believes about table sizes.
        let sql = format!("SELECT user_id FROM ({}) m", parts.join(" UNION "));
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(&tenant.application_id);
        for v in &b.binds {
            query = query.bind(v.as_str());
        }
        let mut ids = query.fetch_all(&self.db.pool).await?;
        ids.truncate(MAX_SEARCH_RESULTS);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut users = self.by_ids(tenant, &ids).await?;
        users.sort_by(|a, b| (&b.created_at, &b.user_id).cmp(&(&a.created_at, &a.user_id)));
        Ok(users)
    }
}

/// Rows of an export handed over at once.
pub const EXPORT_PAGE: usize = 1_000;

impl UsersQuery {
    /// Every live user of the tenant matching `filter`, oldest first, as of
    /// one log position, sent to `out` in pages. One transaction reads the
    /// users projection's checkpoint and then the rows: a snapshot on both
    /// backends (a SQLite read transaction, PostgreSQL `REPEATABLE READ`),
    /// so the rows are exactly the read model at that checkpoint, which is
    /// returned. Stops early (without error) when `out` is closed.
    pub async fn export(
        &self,
        tenant: &Tenant,
        filter: Option<&Filter>,
        out: tokio::sync::mpsc::Sender<Vec<UserRow>>,
    ) -> Result<i64, sqlx::Error> {
        use futures_util::TryStreamExt;
        let mut tx = self.db.pool.begin().await?;
        if self.db.dialect == userstream_eventlog::Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
            .bind(super::NAME)
            .fetch_optional(&mut *tx)
            .await?;
        let mut cond = SqlBuilder::starting_after(2);
        let live = live_users(tenant, filter, &mut cond);
        let sql = format!("SELECT {COLUMNS} FROM users_v1 u WHERE {live} ORDER BY u.seq");
        let mut query = sqlx::query(&sql).bind(&tenant.company_id).bind(&tenant.application_id);
        for b in &cond.binds {
            query = query.bind(b.as_str());
        }
        {
            let mut rows = query.fetch(&mut *tx);
            let mut page = Vec::with_capacity(EXPORT_PAGE);
            while let Some(row) = rows.try_next().await? {
                page.push(decode_row(&row)?);
                if page.len() == EXPORT_PAGE && out.send(std::mem::take(&mut page)).await.is_err() {
                    return Ok(position.unwrap_or(0));
                }
            }
            if !page.is_empty() {
                let _ = out.send(page).await;
            }
        }
        tx.rollback().await?;
        Ok(position.unwrap_or(0))
    }
}

/// A page of `list`: the SQL (company `$1`, application `$2`, `LIMIT $3`,
/// `OFFSET $4`) and the filter's values for `$5` on.
pub fn list_page_sql(tenant: &Tenant, filter: Option<&Filter>) -> (String, Vec<String>) {
    let mut cond = SqlBuilder::starting_after(4);
    let live = live_users(tenant, filter, &mut cond);
    (format!("SELECT {COLUMNS} FROM users_v1 u WHERE {live} ORDER BY u.seq DESC LIMIT $3 OFFSET $4"), cond.binds)
}

/// The condition of the tenant's (`$1`, `$2`) live users that `filter`
/// matches, its values bound in `cond`. When the filter names its users by
/// index lookups, those are found first and the tenant's list index is
/// kept out of the plan (`company_id || ''`, `archived + 0` cannot use it);
/// otherwise that index drives, in `seq` order.
fn live_users(tenant: &Tenant, filter: Option<&Filter>, cond: &mut SqlBuilder) -> String {
    let Some(filter) = filter else {
        return "u.company_id = $1 AND u.application_id = $2 AND u.archived = 0".to_string();
    };
    let mut candidates = SqlBuilder::starting_after(cond.offset);
    let looked_up = filter.candidates(&tenant.application_id, &mut candidates);
    let mut sql = if looked_up {
        cond.binds.append(&mut candidates.binds);
        format!(
            "u.company_id || '' = $1 AND u.application_id = $2 AND u.archived + 0 = 0 AND u.user_id IN ({}) AND ",
            candidates.sql
        )
    } else {
        "u.company_id = $1 AND u.application_id = $2 AND u.archived = 0 AND ".to_string()
    };
    let mut rest = SqlBuilder::starting_after(cond.offset + cond.binds.len());
    filter.to_sql(&mut rest);
    cond.binds.append(&mut rest.binds);
    sql.push_str(&rest.sql);
    sql
}

/// How a bulk row names its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserKey {
    Id,
    Email,
    Phone,
}

impl UsersQuery {
    /// The live users of the tenant that `values` name (ids, emails or
    /// phones, normalised as a search normalises them), as the value as
    /// given → user id. Two statements per 500 values, each naming only a
    /// primary key (contacts by value, then users by id), so the plans are
    /// key lookups whatever the planner believes; tenant and archive state
    /// are checked on the rows (as [`UsersQuery::by_ids`] does).
    pub async fn resolve(
        &self,
        tenant: &Tenant,
        key: UserKey,
        values: &[String],
    ) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
        let field = match key {
            UserKey::Id => Field::UserId,
            UserKey::Email => Field::Email,
            UserKey::Phone => Field::Phone,
        };
        let mut found = std::collections::HashMap::new();
        for part in values.chunks(500) {
            let normal: Vec<String> = part.iter().map(|v| crate::read_models::filter::normalise(field, v)).collect();
            let mut given: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
            for (n, raw) in normal.iter().zip(part) {
                given.entry(n.as_str()).or_default().push(raw.as_str());
            }
            let list = (0..normal.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
            // value → user id, by the contacts' primary key (ids are their own value).
            let mut candidates: Vec<(String, String)> = Vec::new();
            if key == UserKey::Id {
                candidates.extend(normal.iter().map(|v| (v.clone(), v.clone())));
            } else {
                let kind = if key == UserKey::Email { "email" } else { "phone" };
                let sql = format!("SELECT value, user_id FROM user_contacts_v1 WHERE application_id = $1 AND kind = '{kind}' AND value IN ({list})");
                let mut query = sqlx::query(&sql).bind(&tenant.application_id);
                for v in &normal {
                    query = query.bind(v.as_str());
                }
                for row in query.fetch_all(&self.db.pool).await? {
                    candidates.push((row.try_get("value")?, row.try_get("user_id")?));
                }
            }
            let ids: Vec<String> = candidates.iter().map(|(_, id)| id.clone()).collect();
            let live: std::collections::HashSet<String> =
                self.by_ids(tenant, &ids).await?.into_iter().map(|u| u.user_id).collect();
            for (value, id) in candidates {
                let spellings = given.get(value.as_str()).filter(|_| live.contains(&id));
                for raw in spellings.into_iter().flatten() {
                    found.insert(raw.to_string(), id.clone());
                }
            }
        }
        Ok(found)
    }
}
