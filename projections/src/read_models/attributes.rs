//! The attributes read model: definitions (latest version, deleted ones
//! flagged) and every user's values. Built from `attribute.*` events only.
//! Encrypted values are stored as the log has them: ciphertext.

use crate::probe::{self, Bind};
use crate::{Projection, ProjectionError};
use serde_json::Value;
use sqlx::{AnyConnection, Row};
use userstream_domain::attribute::{Definition, DefinitionEvent, ValuesEvent};
use userstream_domain::codec;
use userstream_domain::rules::{self, Probe};
use userstream_eventlog::{format_time, Db, Migration, RecordedEvent, Tenant};

pub const NAME: &str = "attributes_v1";

/// The tables, with the 8-byte float type of each backend.
macro_rules! ddl {
    ($float:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS attribute_definitions_v1 (
                company_id TEXT NOT NULL,
                application_id TEXT NOT NULL,
                definition_id TEXT NOT NULL,
                slug TEXT NOT NULL,
                name TEXT NOT NULL,
                kind TEXT NOT NULL,
                definition TEXT NOT NULL,
                version BIGINT NOT NULL,
                deleted BIGINT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (application_id, definition_id)
            );
            CREATE INDEX IF NOT EXISTS attribute_definitions_v1_list ON attribute_definitions_v1 (company_id, application_id, deleted, created_at);
            CREATE TABLE IF NOT EXISTS attribute_values_v1 (
                company_id TEXT NOT NULL,
                application_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                definition_id TEXT NOT NULL,
                attribute_id TEXT NOT NULL,
                value TEXT NOT NULL,
                num_value ",
            $float,
            ",
                text_value TEXT,
                customer_overridden BIGINT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (application_id, user_id, definition_id)
            );
            CREATE INDEX IF NOT EXISTS attribute_values_v1_id ON attribute_values_v1 (application_id, attribute_id);
            CREATE INDEX IF NOT EXISTS attribute_values_v1_num ON attribute_values_v1 (application_id, definition_id, num_value, user_id);
            CREATE INDEX IF NOT EXISTS attribute_values_v1_text ON attribute_values_v1 (application_id, definition_id, text_value, user_id);
            CREATE INDEX IF NOT EXISTS attribute_values_v1_definition ON attribute_values_v1 (application_id, definition_id, user_id);"
        )
    };
}

/// The filter's driving scan reads the (definition, user) index with the
/// typed values in it, and checks the other conditions in the same index:
/// no table row is read until a user matches. (Both spellings of the old
/// index go: a SQLite replay alternates names.)
const COVERING: &str = "DROP INDEX IF EXISTS attribute_values_v1_definition;
    DROP INDEX IF EXISTS attribute_values_v1_definition__r;
    CREATE INDEX IF NOT EXISTS attribute_values_v1_by_definition ON attribute_values_v1 (application_id, definition_id, user_id, num_value, text_value);";

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sqlite: ddl!("REAL"), postgres: ddl!("DOUBLE PRECISION") },
    Migration { version: 2, sqlite: COVERING, postgres: COVERING },
];

pub const TABLES: &[&str] = &["attribute_definitions_v1", "attribute_values_v1"];

#[derive(Debug, Clone, Copy, Default)]
pub struct AttributesProjection;

fn poison(event: &RecordedEvent, e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Poison { position: event.position, reason: e.to_string() }
}

impl Projection for AttributesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["attribute_definitions_v1", "attribute_values_v1"]
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        event.stream.starts_with("attrs-")
            || event.stream.starts_with("attrdef-")
            || (event.event_type == codec::USER_ERASED && event.stream.starts_with("user-"))
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let app = event.application_id.as_str();
        if let Some(user_id) = event.stream.strip_prefix("user-") {
            // An erased person's values go with them.
            if event.event_type == codec::USER_ERASED {
                sqlx::query("DELETE FROM attribute_values_v1 WHERE application_id = $1 AND user_id = $2")
                    .bind(app)
                    .bind(user_id)
                    .execute(&mut *conn)
                    .await?;
            }
            return Ok(());
        }
        if let Some(definition_id) = event.stream.strip_prefix("attrdef-") {
            let decoded = codec::decode_definition(&event.event_type, event.schema as u32, event.data.as_str())
                .map_err(|e| poison(event, e))?;
            match decoded {
                DefinitionEvent::Created(e) | DefinitionEvent::Updated(e) => {
                    let d = &e.definition;
                    let text = serde_json::to_string(d).map_err(|e| poison(event, e))?;
                    let at = format_time(e.at);
                    sqlx::query(
                        "INSERT INTO attribute_definitions_v1 (company_id, application_id, definition_id, slug, name, kind, definition, version, deleted, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9)
                         ON CONFLICT (application_id, definition_id) DO UPDATE SET slug = $4, name = $5, kind = $6, definition = $7, version = $8, updated_at = $9
                         WHERE attribute_definitions_v1.version < $8",
                    )
                    .bind(&event.company_id)
                    .bind(app)
                    .bind(definition_id)
                    .bind(&d.slug)
                    .bind(&d.name)
                    .bind(d.kind.as_str())
                    .bind(text)
                    .bind(event.version)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                DefinitionEvent::Deleted(e) => {
                    sqlx::query("UPDATE attribute_definitions_v1 SET deleted = 1, version = $1, updated_at = $2 WHERE application_id = $3 AND definition_id = $4")
                        .bind(event.version)
                        .bind(format_time(e.at))
                        .bind(app)
                        .bind(definition_id)
                        .execute(&mut *conn)
                        .await?;
                    // A deleted definition takes its values with it.
                    sqlx::query("DELETE FROM attribute_values_v1 WHERE application_id = $1 AND definition_id = $2")
                        .bind(app)
                        .bind(definition_id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        } else if let Some(user_id) = event.stream.strip_prefix("attrs-") {
            let decoded = codec::decode_values(&event.event_type, event.schema as u32, event.data.as_str())
                .map_err(|e| poison(event, e))?;
            match decoded {
                ValuesEvent::Upserted(e) => {
                    let at = format_time(e.at);
                    let (num, text) = rules::index_keys(&e.value);
                    let num_slot = probe::number_slot(num, &mut 10);
                    let sql = format!(
                        "INSERT INTO attribute_values_v1 (company_id, application_id, user_id, definition_id, attribute_id, value, customer_overridden, created_at, updated_at, text_value, num_value)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, {num_slot})
                         ON CONFLICT (application_id, user_id, definition_id) DO UPDATE SET attribute_id = $5, value = $6, customer_overridden = $7, updated_at = $8, text_value = $9, num_value = excluded.num_value"
                    );
                    let mut q = sqlx::query(&sql)
                        .bind(&event.company_id)
                        .bind(app)
                        .bind(user_id)
                        .bind(&e.definition_id)
                        .bind(&e.attribute_id)
                        .bind(e.value.to_string())
                        .bind(i64::from(e.customer_overridden))
                        .bind(at)
                        .bind(text);
                    if let Some(n) = num {
                        q = q.bind(n);
                    }
                    q.execute(&mut *conn).await?;
                }
                ValuesEvent::Deleted(e) => {
                    sqlx::query("DELETE FROM attribute_values_v1 WHERE application_id = $1 AND user_id = $2 AND definition_id = $3")
                        .bind(app)
                        .bind(user_id)
                        .bind(&e.definition_id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// A definition row.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionRow {
    pub definition: Definition,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
}

/// A value row; `value` is ciphertext for encrypted definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueRow {
    pub user_id: String,
    pub definition_id: String,
    pub attribute_id: String,
    pub value: Value,
    pub customer_overridden: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// Filters of the definition list (all optional).
#[derive(Debug, Clone, Default)]
pub struct DefinitionFilter {
    pub excluding_ids: Vec<String>,
    pub slug: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub customer_editable: Option<bool>,
    pub encrypted: Option<bool>,
    pub pinned: Option<bool>,
    pub pin_order: Option<i64>,
    pub is_locked: Option<bool>,
}

#[derive(Clone)]
pub struct AttributesQuery {
    db: Db,
}

fn decode_definition(row: &sqlx::any::AnyRow) -> Result<DefinitionRow, sqlx::Error> {
    let text: String = row.try_get("definition")?;
    let definition = serde_json::from_str(&text)
        .map_err(|e| sqlx::Error::ColumnDecode { index: "definition".into(), source: Box::new(e) })?;
    Ok(DefinitionRow {
        definition,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

fn decode_value(row: &sqlx::any::AnyRow) -> Result<ValueRow, sqlx::Error> {
    let text: String = row.try_get("value")?;
    Ok(ValueRow {
        user_id: row.try_get("user_id")?,
        definition_id: row.try_get("definition_id")?,
        attribute_id: row.try_get("attribute_id")?,
        value: serde_json::from_str(&text)
            .map_err(|e| sqlx::Error::ColumnDecode { index: "value".into(), source: Box::new(e) })?,
        customer_overridden: row.try_get::<i64, _>("customer_overridden")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const VALUE_COLUMNS: &str =
    "user_id, definition_id, attribute_id, value, customer_overridden, created_at, updated_at, company_id";

impl AttributesQuery {
    pub fn new(db: Db) -> Self {
        AttributesQuery { db }
    }

    /// A live definition of the tenant.
    pub async fn definition(&self, tenant: &Tenant, id: &str) -> Result<Option<DefinitionRow>, sqlx::Error> {
        let row = sqlx::query("SELECT definition, created_at, updated_at, version, company_id FROM attribute_definitions_v1 WHERE application_id = $1 AND definition_id = $2 AND deleted = 0")
            .bind(&tenant.application_id)
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        match row {
            Some(r) if r.try_get::<String, _>("company_id")? == tenant.company_id => Ok(Some(decode_definition(&r)?)),
            _ => Ok(None),
        }
    }

    /// Every live definition of the tenant, oldest first (an application has tens, not thousands).
    pub async fn definitions(&self, tenant: &Tenant) -> Result<Vec<DefinitionRow>, sqlx::Error> {
        let rows = sqlx::query("SELECT definition, created_at, updated_at, version FROM attribute_definitions_v1 WHERE company_id = $1 AND application_id = $2 AND deleted = 0 ORDER BY created_at, definition_id")
            .bind(&tenant.company_id)
            .bind(&tenant.application_id)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(decode_definition).collect()
    }

    /// Definitions matching `filter`, paged; and how many match.
    pub async fn list_definitions(
        &self,
        tenant: &Tenant,
        filter: &DefinitionFilter,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<DefinitionRow>, i64), sqlx::Error> {
        let all = self.definitions(tenant).await?;
        let keep = |r: &DefinitionRow| {
            let d = &r.definition;
            !filter.excluding_ids.contains(&d.id)
                && filter.slug.as_ref().is_none_or(|s| &d.slug == s)
                && filter.kind.as_ref().is_none_or(|k| d.kind.as_str() == k)
                && filter.name.as_ref().is_none_or(|n| d.name.to_lowercase().contains(&n.to_lowercase()))
                && filter.customer_editable.is_none_or(|v| d.customer_editable == v)
                && filter.encrypted.is_none_or(|v| d.encrypted == v)
                && filter.pinned.is_none_or(|v| d.pinned == v)
                && filter.pin_order.is_none_or(|v| d.pin_order == v)
                && filter.is_locked.is_none_or(|v| d.is_locked == v)
        };
        let matching: Vec<DefinitionRow> = all.into_iter().filter(keep).collect();
        let total = matching.len() as i64;
        let page = matching.into_iter().skip(((page_no - 1) * page_size) as usize).take(page_size as usize).collect();
        Ok((page, total))
    }

    /// One user's value of one definition.
    pub async fn value(
        &self,
        tenant: &Tenant,
        user_id: &str,
        definition_id: &str,
    ) -> Result<Option<ValueRow>, sqlx::Error> {
        let sql = format!("SELECT {VALUE_COLUMNS} FROM attribute_values_v1 WHERE application_id = $1 AND user_id = $2 AND definition_id = $3");
        let row = sqlx::query(&sql)
            .bind(&tenant.application_id)
            .bind(user_id)
            .bind(definition_id)
            .fetch_optional(&self.db.pool)
            .await?;
        self.own(tenant, row)
    }

    /// One value by its attribute id.
    pub async fn value_by_id(&self, tenant: &Tenant, attribute_id: &str) -> Result<Option<ValueRow>, sqlx::Error> {
        let sql =
            format!("SELECT {VALUE_COLUMNS} FROM attribute_values_v1 WHERE application_id = $1 AND attribute_id = $2");
        let row =
            sqlx::query(&sql).bind(&tenant.application_id).bind(attribute_id).fetch_optional(&self.db.pool).await?;
        self.own(tenant, row)
    }

    fn own(&self, tenant: &Tenant, row: Option<sqlx::any::AnyRow>) -> Result<Option<ValueRow>, sqlx::Error> {
        match row {
            Some(r) if r.try_get::<String, _>("company_id")? == tenant.company_id => Ok(Some(decode_value(&r)?)),
            _ => Ok(None),
        }
    }

    /// A user's values, paged by definition id; and how many there are.
    pub async fn values_of(
        &self,
        tenant: &Tenant,
        user_id: &str,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<ValueRow>, i64), sqlx::Error> {
        let sql = format!("SELECT {VALUE_COLUMNS} FROM attribute_values_v1 WHERE company_id = $1 AND application_id = $2 AND user_id = $3 ORDER BY definition_id LIMIT $4 OFFSET $5");
        let rows = sqlx::query(&sql)
            .bind(&tenant.company_id)
            .bind(&tenant.application_id)
            .bind(user_id)
            .bind(page_size)
            .bind((page_no - 1) * page_size)
            .fetch_all(&self.db.pool)
            .await?;
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM attribute_values_v1 WHERE company_id = $1 AND application_id = $2 AND user_id = $3")
            .bind(&tenant.company_id)
            .bind(&tenant.application_id)
            .bind(user_id)
            .fetch_one(&self.db.pool)
            .await?
            .try_get("n")?;
        Ok((rows.iter().map(decode_value).collect::<Result<_, _>>()?, total))
    }

    /// Every value of one definition (to re-check them against a changed definition).
    pub async fn values_of_definition(
        &self,
        tenant: &Tenant,
        definition_id: &str,
    ) -> Result<Vec<ValueRow>, sqlx::Error> {
        let sql = format!("SELECT {VALUE_COLUMNS} FROM attribute_values_v1 WHERE application_id = $1 AND definition_id = $2 AND company_id = $3");
        let rows = sqlx::query(&sql)
            .bind(&tenant.application_id)
            .bind(definition_id)
            .bind(&tenant.company_id)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(decode_value).collect()
    }
}

impl AttributesQuery {
    /// One step of a filter: up to `limit` live users of the tenant, in id
    /// order after `after`, whose value of the driving definition is within
    /// its probe and whose values of the `others` are within theirs (read
    /// through the (definition, user) index, so no sort is needed), with
    /// their values of `definition_ids`. The probes over-select at most: the
    /// caller checks the rule itself. Returns the candidate ids in order and
    /// their values.
    ///
    /// The others are looked up with `user_id` as a one-point range: with
    /// an equality SQLite takes the unique (application, user, definition)
    /// key and reads every table row; with the range it stays on the
    /// covering (application, definition, user, values) index (a third of
    /// the time over 1,000,000 users). The tenant's company is checked on
    /// the user row, which is read anyway.
    pub async fn scan(
        &self,
        tenant: &Tenant,
        driver: (&str, &Probe),
        others: &[(&str, Probe)],
        after: Option<&str>,
        limit: i64,
        definition_ids: &[String],
    ) -> Result<(Vec<String>, Vec<ValueRow>), sqlx::Error> {
        let mut binds = vec![
            Bind::Text(tenant.application_id.clone()),
            Bind::Text(driver.0.to_string()),
            Bind::Text(tenant.company_id.clone()),
        ];
        let mut next = 4;
        let mut inner = String::from(
            "SELECT a.user_id FROM attribute_values_v1 a JOIN users_v1 u ON u.application_id = a.application_id AND u.user_id = a.user_id AND u.archived = 0 AND u.company_id = $3 \
             WHERE a.application_id = $1 AND a.definition_id = $2",
        );
        inner.push_str(&probe::sql(driver.1, "a", true, &mut next, &mut binds));
        for (i, (definition_id, p)) in others.iter().enumerate() {
            binds.push(Bind::Text(definition_id.to_string()));
            next += 1;
            let alias = format!("b{i}");
            inner.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM attribute_values_v1 {alias} WHERE {alias}.application_id = a.application_id AND {alias}.definition_id = ${} AND {alias}.user_id >= a.user_id AND {alias}.user_id <= a.user_id{})",
                next - 1,
                probe::sql(p, &alias, true, &mut next, &mut binds)
            ));
        }
        binds.push(Bind::Text(after.unwrap_or("").to_string()));
        inner.push_str(&format!(" AND a.user_id > ${next} ORDER BY a.user_id LIMIT {limit}"));
        next += 1;
        let defs: Vec<String> = definition_ids
            .iter()
            .map(|d| {
                binds.push(Bind::Text(d.clone()));
                next += 1;
                format!("${}", next - 1)
            })
            .collect();
        let sql = format!(
            "SELECT c.user_id AS candidate, v.user_id, v.definition_id, v.attribute_id, v.value, v.customer_overridden, v.created_at, v.updated_at, v.company_id \
             FROM ({inner}) c LEFT JOIN attribute_values_v1 v ON v.application_id = $1 AND v.user_id = c.user_id AND v.definition_id IN ({}) \
             ORDER BY c.user_id",
            defs.join(", ")
        );
        let rows = probe::bind(sqlx::query(&sql), &binds).fetch_all(&self.db.pool).await?;
        let mut candidates: Vec<String> = Vec::new();
        let mut values = Vec::new();
        for r in &rows {
            let candidate: String = r.try_get("candidate")?;
            if candidates.last() != Some(&candidate) {
                candidates.push(candidate);
            }
            if r.try_get::<Option<String>, _>("definition_id")?.is_some() {
                values.push(decode_value(r)?);
            }
        }
        Ok((candidates, values))
    }

    /// The values of `definition_ids` for `user_ids`, by primary key.
    pub async fn values_for(
        &self,
        tenant: &Tenant,
        user_ids: &[String],
        definition_ids: &[String],
    ) -> Result<Vec<ValueRow>, sqlx::Error> {
        if user_ids.is_empty() || definition_ids.is_empty() {
            return Ok(Vec::new());
        }
        let users: Vec<String> = (0..user_ids.len()).map(|i| format!("${}", i + 2)).collect();
        let defs: Vec<String> = (0..definition_ids.len()).map(|i| format!("${}", i + 2 + user_ids.len())).collect();
        let sql = format!(
            "SELECT {VALUE_COLUMNS} FROM attribute_values_v1 WHERE application_id = $1 AND user_id IN ({}) AND definition_id IN ({})",
            users.join(", "),
            defs.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(&tenant.application_id);
        for u in user_ids {
            query = query.bind(u.as_str());
        }
        for d in definition_ids {
            query = query.bind(d.as_str());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if r.try_get::<String, _>("company_id")? == tenant.company_id {
                out.push(decode_value(r)?);
            }
        }
        Ok(out)
    }
}
