//! The groups read model: one row per group (details, status, totals) and
//! its members. Built from `group.*` events only, so membership here is
//! exactly what the membership events said, in log order.

use crate::{Projection, ProjectionError};
use serde_json::Value;
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;
use userstream_domain::codec;
use userstream_domain::group::{GroupEvent, GroupWritten, MembershipChanged};
use userstream_eventlog::{delete_pairs, format_time, placeholders, Db, Dialect, Migration, RecordedEvent, Tenant};

pub const NAME: &str = "groups_v1";

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS groups_v1 (
        company_id TEXT NOT NULL,
        application_id TEXT NOT NULL,
        group_id TEXT NOT NULL,
        uid BIGINT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        kind TEXT NOT NULL,
        category TEXT NOT NULL,
        tags TEXT NOT NULL,
        conditions TEXT NOT NULL,
        file_url TEXT NOT NULL,
        rule_version BIGINT NOT NULL,
        evaluated_version BIGINT NOT NULL,
        total_users BIGINT NOT NULL,
        error_count BIGINT NOT NULL,
        version BIGINT NOT NULL,
        deleted BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (application_id, group_id)
    );
    CREATE INDEX IF NOT EXISTS groups_v1_list ON groups_v1 (company_id, application_id, deleted, uid);
    CREATE TABLE IF NOT EXISTS group_members_v1 (
        group_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        joined_at_position BIGINT NOT NULL,
        PRIMARY KEY (group_id, user_id)
    );";

const MIGRATIONS: &[Migration] = &[Migration { version: 1, sqlite: DDL, postgres: DDL }];

pub const TABLES: &[&str] = &["groups_v1", "group_members_v1"];

/// Member rows per multi-row statement.
const ROWS_PER_STATEMENT: usize = 400;

#[derive(Debug, Clone, Copy, Default)]
pub struct GroupsProjection;

async fn write_details(conn: &mut AnyConnection, event: &RecordedEvent, e: &GroupWritten) -> Result<(), sqlx::Error> {
    let d = &e.details;
    let kind = d.kind_or_default();
    sqlx::query(
        "INSERT INTO groups_v1 (company_id, application_id, group_id, uid, name, description, kind, category, tags, conditions, file_url, rule_version, evaluated_version, total_users, error_count, version, deleted, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, 0, 0, $13, 0, $14, $14)
         ON CONFLICT (application_id, group_id) DO UPDATE SET name = $5, description = $6, kind = $7, category = $8, tags = $9, conditions = $10, file_url = $11, rule_version = $12, version = $13, updated_at = $14",
    )
    .bind(&event.company_id)
    .bind(&event.application_id)
    .bind(&e.group_id)
    .bind(e.uid)
    .bind(&d.name)
    .bind(&d.description)
    .bind(kind)
    .bind(&d.category)
    .bind(serde_json::to_string(&d.tags).unwrap_or_default())
    .bind(serde_json::to_string(&d.conditions).unwrap_or_default())
    .bind(&d.file_url)
    .bind(e.rule_version)
    .bind(event.version)
    .bind(format_time(e.at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Projection for GroupsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["groups_v1", "group_members_v1"]
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        event.stream.starts_with("group-")
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let dialect = Dialect::of(conn);
        self.apply_batch(conn, dialect, std::slice::from_ref(event)).await
    }

    /// Runs of membership events are written as their net effect, a few
    /// multi-row statements per run; other events one by one, in order.
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        dialect: Dialect,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut run: Vec<(&RecordedEvent, MembershipChanged)> = Vec::new();
        for event in events.iter().filter(|e| e.stream.starts_with("group-")) {
            let decoded = codec::decode_group(&event.event_type, event.schema as u32, event.data.as_str())
                .map_err(|e| ProjectionError::Poison { position: event.position, reason: e.to_string() })?;
            if let GroupEvent::MembershipChanged(e) = decoded {
                run.push((event, e));
                continue;
            }
            write_memberships(conn, dialect, &run).await?;
            run.clear();
            let app = event.application_id.as_str();
            match decoded {
                GroupEvent::MembershipChanged(e) => write_memberships(conn, dialect, &[(event, e)]).await?,
                GroupEvent::Created(e) | GroupEvent::Updated(e) => write_details(conn, event, &e).await?,
                GroupEvent::Deleted(e) => {
                    sqlx::query("UPDATE groups_v1 SET deleted = 1, total_users = 0, updated_at = $1 WHERE application_id = $2 AND group_id = $3")
                        .bind(format_time(e.at))
                        .bind(app)
                        .bind(&e.group_id)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("DELETE FROM group_members_v1 WHERE group_id = $1")
                        .bind(&e.group_id)
                        .execute(&mut *conn)
                        .await?;
                }
                GroupEvent::Evaluated(e) => {
                    sqlx::query("UPDATE groups_v1 SET evaluated_version = $1 WHERE application_id = $2 AND group_id = $3 AND evaluated_version < $1")
                        .bind(e.rule_version)
                        .bind(app)
                        .bind(&e.group_id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        write_memberships(conn, dialect, &run).await?;
        Ok(())
    }
}

/// What a run of membership events leaves of one (group, user).
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Joined (at this position) and never left in the run: a member from
    /// before keeps their row.
    Join(i64),
    Leave,
    /// Left, then joined again (at this position): a new row.
    Rejoin(i64),
}

/// Writes a run of membership events (in log order; within an event joins
/// before leaves) as the one-by-one writes would leave the tables: the
/// rows that go are deleted, then the new ones inserted, counting through
/// `RETURNING` what really changed, then every group's totals at once.
async fn write_memberships(
    conn: &mut AnyConnection,
    dialect: Dialect,
    run: &[(&RecordedEvent, MembershipChanged)],
) -> Result<(), sqlx::Error> {
    if run.is_empty() {
        return Ok(());
    }
    let mut fates: BTreeMap<(&str, &str), Fate> = BTreeMap::new();
    // group → (application, net change, unmatched rows, last change time)
    let mut groups: BTreeMap<&str, (&str, i64, i64, String)> = BTreeMap::new();
    for (event, e) in run {
        for user in &e.joined {
            let fate = fates.entry((e.group_id.as_str(), user.as_str())).or_insert(Fate::Join(event.position));
            if let Fate::Leave = fate {
                *fate = Fate::Rejoin(event.position);
            }
        }
        for user in &e.left {
            fates.insert((e.group_id.as_str(), user.as_str()), Fate::Leave);
        }
        let totals = groups.entry(e.group_id.as_str()).or_insert((event.application_id.as_str(), 0, 0, String::new()));
        totals.2 += e.unmatched;
        totals.3 = format_time(e.at);
    }
    let gone: Vec<(&str, &str)> =
        fates.iter().filter(|(_, f)| !matches!(f, Fate::Join(_))).map(|(key, _)| *key).collect();
    for chunk in gone.chunks(ROWS_PER_STATEMENT) {
        let sql =
            delete_pairs(dialect, "group_members_v1", ("group_id", "user_id"), chunk.len(), " RETURNING group_id");
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for (group, user) in chunk {
            query = query.bind(*group).bind(*user);
        }
        for group in query.fetch_all(&mut *conn).await? {
            if let Some(totals) = groups.get_mut(group.as_str()) {
                totals.1 -= 1;
            }
        }
    }
    let new: Vec<(&str, &str, i64)> = fates
        .iter()
        .filter_map(|((g, u), f)| match f {
            Fate::Join(p) | Fate::Rejoin(p) => Some((*g, *u, *p)),
            Fate::Leave => None,
        })
        .collect();
    for chunk in new.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO group_members_v1 (group_id, user_id, joined_at_position) VALUES {} ON CONFLICT DO NOTHING RETURNING group_id",
            placeholders(dialect, chunk.len(), 3, 0)
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for (group, user, position) in chunk {
            query = query.bind(*group).bind(*user).bind(*position);
        }
        for group in query.fetch_all(&mut *conn).await? {
            if let Some(totals) = groups.get_mut(group.as_str()) {
                totals.1 += 1;
            }
        }
    }
    let groups: Vec<_> = groups.into_iter().collect();
    for chunk in groups.chunks(ROWS_PER_STATEMENT / 5) {
        let sql = format!(
            "UPDATE groups_v1 SET total_users = groups_v1.total_users + d.column3, error_count = groups_v1.error_count + d.column4, updated_at = d.column5 \
             FROM (VALUES {}) AS d WHERE groups_v1.application_id = d.column1 AND groups_v1.group_id = d.column2",
            placeholders(dialect, chunk.len(), 5, 0)
        );
        let mut query = sqlx::query(&sql);
        for (group, (app, delta, unmatched, at)) in chunk {
            query = query.bind(*app).bind(*group).bind(*delta).bind(*unmatched).bind(at.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub group_id: String,
    pub application_id: String,
    pub uid: i64,
    pub name: String,
    pub description: String,
    pub kind: String,
    pub category: String,
    pub tags: Vec<String>,
    pub conditions: Value,
    pub file_url: String,
    pub rule_version: i64,
    pub evaluated_version: i64,
    pub total_users: i64,
    pub error_count: i64,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl GroupRow {
    /// `pending` while the engine has not evaluated the current rule over all users.
    pub fn status(&self) -> &'static str {
        if self.evaluated_version < self.rule_version {
            "pending"
        } else {
            "active"
        }
    }
}

const GROUP_COLUMNS: &str = "group_id, application_id, company_id, uid, name, description, kind, category, tags, conditions, file_url, rule_version, evaluated_version, total_users, error_count, version, created_at, updated_at";

fn decode_group(row: &sqlx::any::AnyRow) -> Result<GroupRow, sqlx::Error> {
    let json = |name: &str| -> Result<Value, sqlx::Error> {
        let text: String = row.try_get(name)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode { index: name.into(), source: Box::new(e) })
    };
    Ok(GroupRow {
        group_id: row.try_get("group_id")?,
        application_id: row.try_get("application_id")?,
        uid: row.try_get("uid")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        kind: row.try_get("kind")?,
        category: row.try_get("category")?,
        tags: serde_json::from_value(json("tags")?).unwrap_or_default(),
        conditions: json("conditions")?,
        file_url: row.try_get("file_url")?,
        rule_version: row.try_get("rule_version")?,
        evaluated_version: row.try_get("evaluated_version")?,
        total_users: row.try_get("total_users")?,
        error_count: row.try_get("error_count")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Filters of the group list.
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub uid: Option<i64>,
    pub category: Option<String>,
    pub tags: Vec<String>,
}

#[derive(Clone)]
pub struct GroupsQuery {
    db: Db,
}

impl GroupsQuery {
    pub fn new(db: Db) -> Self {
        GroupsQuery { db }
    }

    pub async fn get(&self, tenant: &Tenant, group_id: &str) -> Result<Option<GroupRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM groups_v1 WHERE application_id = $1 AND group_id = $2 AND deleted = 0"
        );
        let row = sqlx::query(&sql).bind(&tenant.application_id).bind(group_id).fetch_optional(&self.db.pool).await?;
        match row {
            Some(r) if r.try_get::<String, _>("company_id")? == tenant.company_id => Ok(Some(decode_group(&r)?)),
            _ => Ok(None),
        }
    }

    /// Every live group of the tenant, by uid (tags, categories and filters
    /// are applied in memory: an application has hundreds or thousands).
    pub async fn all(&self, tenant: &Tenant) -> Result<Vec<GroupRow>, sqlx::Error> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM groups_v1 WHERE company_id = $1 AND application_id = $2 AND deleted = 0 ORDER BY uid");
        let rows =
            sqlx::query(&sql).bind(&tenant.company_id).bind(&tenant.application_id).fetch_all(&self.db.pool).await?;
        rows.iter().map(decode_group).collect()
    }

    pub async fn list(
        &self,
        tenant: &Tenant,
        filter: &GroupFilter,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<GroupRow>, i64), sqlx::Error> {
        let keep = |g: &GroupRow| {
            filter.name.as_ref().is_none_or(|n| g.name.to_lowercase().contains(&n.to_lowercase()))
                && filter.kind.as_ref().is_none_or(|k| &g.kind == k)
                && filter.status.as_ref().is_none_or(|s| g.status() == s)
                && filter.uid.is_none_or(|u| g.uid == u)
                && filter.category.as_ref().is_none_or(|c| &g.category == c)
                && filter.tags.iter().all(|t| g.tags.contains(t))
        };
        let matching: Vec<GroupRow> = self.all(tenant).await?.into_iter().filter(keep).collect();
        let total = matching.len() as i64;
        let page = matching.into_iter().skip(((page_no - 1) * page_size) as usize).take(page_size as usize).collect();
        Ok((page, total))
    }

    /// The highest uid given in the application (0 when none).
    pub async fn max_uid(&self, tenant: &Tenant) -> Result<i64, sqlx::Error> {
        let row = sqlx::query("SELECT MAX(uid) AS m FROM groups_v1 WHERE application_id = $1")
            .bind(&tenant.application_id)
            .fetch_one(&self.db.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.unwrap_or(0))
    }

    /// The live groups of the tenant `user_id` is a member of, each with the
    /// position of the membership event that made them join. One primary-key
    /// probe per group of the tenant (an application has hundreds or
    /// thousands), so no index by user is needed.
    pub async fn groups_of(&self, tenant: &Tenant, user_id: &str) -> Result<Vec<(GroupRow, i64)>, sqlx::Error> {
        let columns = GROUP_COLUMNS.split(',').map(|c| format!("g.{}", c.trim())).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT {columns}, m.joined_at_position FROM groups_v1 g JOIN group_members_v1 m \
             ON m.group_id = g.group_id AND m.user_id = $3 \
             WHERE g.company_id = $1 AND g.application_id = $2 AND g.deleted = 0 ORDER BY g.uid"
        );
        let rows = sqlx::query(&sql)
            .bind(&tenant.company_id)
            .bind(&tenant.application_id)
            .bind(user_id)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(|r| Ok((decode_group(r)?, r.try_get::<i64, _>("joined_at_position")?))).collect()
    }

    /// A page of member ids by user id (keyset: stable while members come and
    /// go): after `cursor` going forward, or before it going back. `q` narrows
    /// to members whose email or phone contains it.
    pub async fn members(
        &self,
        tenant: &Tenant,
        group_id: &str,
        cursor: Option<&str>,
        backward: bool,
        page_size: i64,
        q: Option<&str>,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut sql = String::from("SELECT m.user_id FROM group_members_v1 m WHERE m.group_id = $1");
        let mut binds: Vec<String> = vec![group_id.to_string()];
        if let Some(c) = cursor {
            binds.push(c.to_string());
            sql.push_str(&format!(" AND m.user_id {} ${}", if backward { "<" } else { ">" }, binds.len()));
        }
        if let Some(q) = q {
            binds.push(tenant.application_id.clone());
            let app = binds.len();
            binds.push(format!("%{}%", q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
            // Per member through the contacts' (application, user) index: the
            // cost follows the members read, not the application's size.
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM user_contacts_v1 c WHERE c.application_id = ${app} AND c.user_id = m.user_id AND c.value LIKE ${} ESCAPE '\\')",
                binds.len()
            ));
        }
        sql.push_str(&format!(" ORDER BY m.user_id {} LIMIT {}", if backward { "DESC" } else { "ASC" }, page_size));
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for b in &binds {
            query = query.bind(b.as_str());
        }
        let mut ids = query.fetch_all(&self.db.pool).await?;
        if backward {
            ids.reverse();
        }
        Ok(ids)
    }
}
