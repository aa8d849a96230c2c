//! The Passage user list over the users read model: prefix-operator filters
//! (`ne: gt: lt: like: not_like:`), multi-field `order_by`, `created_before`
//! anchoring and page/limit paging.
//!
//! Parsing turns every value into a checked, typed condition first, so the
//! SQL holds only placeholders for text and literal numbers already parsed.

use super::filter::SqlBuilder;
use super::users::{decode_row, UserRow, COLUMNS};
use sqlx::Row;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use userstream_eventlog::{format_time, Db, Tenant};

/// The largest page.
pub const MAX_LIMIT: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 20;
/// Time text before any login: what Passage answers for `last_login_at`.
pub const NEVER: &str = "0001-01-01T00:00:00.000000Z";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Like,
    NotLike,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Bool,
    Time,
    Status,
}

/// A filterable field: its query name, kind and SQL expression.
const FIELDS: &[(&str, Kind, &str)] = &[
    ("identifier", Kind::Text, ""),
    ("id", Kind::Text, "u.user_id"),
    ("login_count", Kind::Int, "u.login_count"),
    ("status", Kind::Status, "u.blocked"),
    ("email_verified", Kind::Bool, "u.email_verified"),
    ("created_at", Kind::Time, "u.created_at"),
    ("updated_at", Kind::Time, "u.updated_at"),
    ("last_login_at", Kind::Time, "COALESCE(u.last_login_at, '0001-01-01T00:00:00.000000Z')"),
];

/// Fields a list may be ordered by (not `identifier`).
const ORDER_FIELDS: &[(&str, &str)] = &[
    ("id", "u.user_id"),
    ("created_at", "u.seq"),
    ("updated_at", "u.updated_at"),
    ("login_count", "u.login_count"),
    ("last_login_at", "COALESCE(u.last_login_at, '0001-01-01T00:00:00.000000Z')"),
    ("email", "u.email"),
    ("phone", "u.phone"),
    ("status", "u.blocked"),
];

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    /// Already parsed: safe to write into the SQL as a literal.
    Int(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    field: &'static str,
    expr: &'static str,
    op: Op,
    value: Value,
}

/// A checked list request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub page: i64,
    pub limit: i64,
    /// Unix seconds; only users created before it are listed.
    pub created_before: i64,
    /// `created_before` as a time (checked by `parse`).
    before: OffsetDateTime,
    conditions: Vec<Condition>,
    order: Vec<(&'static str, bool)>,
}

fn split_op(raw: &str) -> Result<(Op, &str), String> {
    const OPS: &[(&str, Op)] =
        &[("ne:", Op::Ne), ("gt:", Op::Gt), ("lt:", Op::Lt), ("like:", Op::Like), ("not_like:", Op::NotLike)];
    for (prefix, op) in OPS {
        if let Some(rest) = raw.strip_prefix(prefix) {
            return Ok((*op, rest));
        }
    }
    // `word:` that is no operator is an error; a time like `2024-01-01T00:00` is a value.
    if let Some((head, _)) = raw.split_once(':') {
        if !head.is_empty() && head.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(format!("unknown operator {head}: (use ne:, gt:, lt:, like: or not_like:)"));
        }
    }
    Ok((Op::Eq, raw))
}

fn parse_time(field: &str, raw: &str) -> Result<String, String> {
    OffsetDateTime::parse(raw, &Rfc3339)
        .map(format_time)
        .map_err(|_| format!("{field} must be a timestamp like 2006-01-02T15:04:05.000000Z, got {raw:?}"))
}

impl ListQuery {
    /// Checks the query parameters of a list request; `now` is the default
    /// `created_before`. Unknown parameters are ignored.
    pub fn parse(pairs: &[(String, String)], now: OffsetDateTime) -> Result<ListQuery, String> {
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.trim());
        let int = |k: &str, default: i64, min: i64, max: i64| -> Result<i64, String> {
            match get(k) {
                None | Some("") => Ok(default),
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(format!("{k} must be an integer from {min} to {max}")),
                },
            }
        };
        let page = int("page", 1, 1, 1_000_000)?;
        let limit = int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
        let created_before = int("created_before", now.unix_timestamp() + 1, 0, 253_402_300_799)?;
        let before = OffsetDateTime::from_unix_timestamp(created_before)
            .map_err(|_| format!("created_before is out of range: {created_before}"))?;
        let mut conditions = Vec::new();
        for (name, kind, expr) in FIELDS {
            let Some(raw) = get(name) else {
                continue;
            };
            let (op, value) = split_op(raw).map_err(|e| format!("{name}: {e}"))?;
            let like = matches!(op, Op::Like | Op::NotLike);
            let value = match kind {
                Kind::Text => Value::Text(value.to_lowercase()),
                Kind::Int if !like => {
                    Value::Int(value.parse().map_err(|_| format!("{name} must be an integer, got {value:?}"))?)
                }
                Kind::Bool if !like && matches!(op, Op::Eq | Op::Ne) => match value {
                    "true" => Value::Int(1),
                    "false" => Value::Int(0),
                    _ => return Err(format!("{name} must be true or false, got {value:?}")),
                },
                Kind::Status if matches!(op, Op::Eq | Op::Ne) => match value {
                    "active" => Value::Int(0),
                    "inactive" => Value::Int(1),
                    // No user is ever pending here: a value no row has.
                    "pending" => Value::Int(-1),
                    _ => return Err(format!("status must be active, inactive or pending, got {value:?}")),
                },
                Kind::Time if !like => Value::Text(parse_time(name, value)?),
                _ => return Err(format!("{name} does not support this operator")),
            };
            conditions.push(Condition { field: name, expr, op, value });
        }
        let mut order = Vec::new();
        if let Some(raw) = get("order_by").filter(|v| !v.is_empty()) {
            for part in raw.split(',') {
                let (field, dir) = part.trim().split_once(':').unwrap_or((part.trim(), "ASC"));
                let expr = ORDER_FIELDS
                    .iter()
                    .find(|(name, _)| *name == field)
                    .map(|(_, expr)| *expr)
                    .ok_or_else(|| format!("order_by: cannot order by {field:?}"))?;
                let desc = match dir.to_ascii_uppercase().as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    _ => return Err(format!("order_by: direction must be ASC or DESC, got {dir:?}")),
                };
                order.push((expr, desc));
            }
            if order.len() > ORDER_FIELDS.len() {
                return Err("order_by names too many fields".into());
            }
        }
        Ok(ListQuery { page, limit, created_before, before, conditions, order })
    }

    fn where_sql(&self, b: &mut SqlBuilder) {
        // `|| ''` keeps the planner off the created_at index here: paging
        // walks the list index in order and checks the anchor per row.
        b.sql.push_str(" AND (u.created_at || '') < ");
        b.bind(format_time(self.before));
        for c in &self.conditions {
            b.sql.push_str(" AND ");
            if c.field == "identifier" && c.op == Op::Eq {
                // Exact: the contacts index, not a scan.
                b.sql.push_str("u.user_id IN (SELECT c.user_id FROM user_contacts_v1 c WHERE c.application_id = $2 AND c.kind IN ('email', 'phone') AND c.value = ");
                if let Value::Text(t) = &c.value {
                    b.bind(t.clone());
                }
                b.sql.push(')');
            } else if c.field == "identifier" {
                b.sql.push('(');
                condition(b, "u.email", c.op, &c.value);
                b.sql.push_str(if matches!(c.op, Op::Ne | Op::NotLike) { " AND " } else { " OR " });
                condition(b, "u.phone", c.op, &c.value);
                b.sql.push(')');
            } else {
                condition(b, c.expr, c.op, &c.value);
            }
        }
    }
}

/// `expr <op> value`, with `like` a case-insensitive substring match.
fn condition(b: &mut SqlBuilder, expr: &str, op: Op, value: &Value) {
    let sql_op = match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Gt => ">",
        Op::Lt => "<",
        Op::Like => "LIKE",
        Op::NotLike => "NOT LIKE",
    };
    match value {
        Value::Int(n) => b.sql.push_str(&format!("{expr} {sql_op} {n}")),
        Value::Text(t) if matches!(op, Op::Like | Op::NotLike) => {
            let escaped = t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            b.sql.push_str(&format!("LOWER({expr}) {sql_op} "));
            b.bind(format!("%{escaped}%"));
            b.sql.push_str(" ESCAPE '\\'");
        }
        Value::Text(t) => {
            b.sql.push_str(&format!("{expr} {sql_op} "));
            b.bind(t.clone());
        }
    }
}

/// A page of users for the Passage list, and how many match in all.
pub async fn list(db: &Db, tenant: &Tenant, q: &ListQuery) -> Result<(Vec<UserRow>, i64), sqlx::Error> {
    let mut b = SqlBuilder::starting_after(2);
    q.where_sql(&mut b);
    let mut order: Vec<String> =
        q.order.iter().map(|(expr, desc)| format!("{expr} {}", if *desc { "DESC" } else { "ASC" })).collect();
    order.push("u.seq DESC".into());
    // An exact identifier or id names at most a few users: written so that
    // only the primary key (application_id, user_id) can serve the query.
    let keyed = q.conditions.iter().any(|c| c.op == Op::Eq && matches!(c.field, "identifier" | "id"));
    let base = if keyed {
        format!(
            "FROM users_v1 u WHERE (u.company_id || '') = $1 AND u.application_id = $2 AND (u.archived + 0) = 0{}",
            b.sql
        )
    } else {
        format!("FROM users_v1 u WHERE u.company_id = $1 AND u.application_id = $2 AND u.archived = 0{}", b.sql)
    };
    let sql = format!(
        "SELECT {COLUMNS} {base} ORDER BY {} LIMIT {} OFFSET {}",
        order.join(", "),
        q.limit,
        (q.page - 1) * q.limit
    );
    let mut query = sqlx::query(&sql).bind(&tenant.company_id).bind(&tenant.application_id);
    for v in &b.binds {
        query = query.bind(v.as_str());
    }
    let rows = query.fetch_all(&db.pool).await?;
    let users = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
    let total = match q.statuses() {
        Some(statuses) => count_by_status(db, tenant, q, &statuses).await?,
        None => {
            let count_sql = format!("SELECT COUNT(*) AS n {base}");
            let mut count = sqlx::query(&count_sql).bind(&tenant.company_id).bind(&tenant.application_id);
            for v in &b.binds {
                count = count.bind(v.as_str());
            }
            count.fetch_one(&db.pool).await?.try_get("n")?
        }
    };
    Ok((users, total))
}

impl ListQuery {
    /// When every condition is on `status`: the `blocked` values (0, 1)
    /// they allow. `None` when another field is filtered.
    fn statuses(&self) -> Option<Vec<i64>> {
        let mut allowed = vec![0, 1];
        for c in &self.conditions {
            let (Value::Int(v), "status") = (&c.value, c.field) else {
                return None;
            };
            allowed.retain(|s| if c.op == Op::Eq { s == v } else { s != v });
        }
        Some(allowed)
    }
}

/// The total of a status-only list without a scan: the application's
/// live/blocked counters, minus the (few) matching users created at or after
/// `created_before`, found through the `created_at` index.
async fn count_by_status(db: &Db, tenant: &Tenant, q: &ListQuery, statuses: &[i64]) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT live, blocked FROM user_counts_v1 WHERE company_id = $1 AND application_id = $2")
        .bind(&tenant.company_id)
        .bind(&tenant.application_id)
        .fetch_optional(&db.pool)
        .await?;
    let (live, blocked): (i64, i64) = match row {
        Some(r) => (r.try_get("live")?, r.try_get("blocked")?),
        None => (0, 0),
    };
    let mut total = 0;
    for s in statuses {
        total += if *s == 1 { blocked } else { live - blocked };
    }
    if statuses.is_empty() {
        return Ok(0);
    }
    let before = q.before;
    let list: Vec<String> = statuses.iter().map(i64::to_string).collect();
    let newer = format!(
        "SELECT COUNT(*) AS n FROM users_v1 u WHERE u.company_id = $1 AND u.application_id = $2 AND u.archived = 0 AND u.created_at >= $3 AND u.blocked IN ({})",
        list.join(", ")
    );
    let newer: i64 = sqlx::query(&newer)
        .bind(&tenant.company_id)
        .bind(&tenant.application_id)
        .bind(format_time(before))
        .fetch_one(&db.pool)
        .await?
        .try_get("n")?;
    Ok(total - newer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ListQuery, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).expect("query");
        ListQuery::parse(&pairs, OffsetDateTime::UNIX_EPOCH)
    }

    #[test]
    fn operators_split_only_at_known_prefixes() {
        assert_eq!(split_op("like:a@b.c"), Ok((Op::Like, "a@b.c")));
        assert_eq!(split_op("2024-01-01T00:00:00Z"), Ok((Op::Eq, "2024-01-01T00:00:00Z")));
        assert_eq!(split_op("gt:2024-01-01T00:00:00Z"), Ok((Op::Gt, "2024-01-01T00:00:00Z")));
        assert!(split_op("foo:bar").is_err());
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        assert!(parse("limit=501").expect_err("refused").contains("limit"));
        assert!(parse("order_by=identifier:ASC").expect_err("refused").contains("order_by"));
        assert!(parse("order_by=created_at:SIDEWAYS").expect_err("refused").contains("direction"));
        assert!(parse("created_at=gt:not-a-date").expect_err("refused").contains("created_at"));
        assert!(parse("login_count=like:3").is_err());
        assert!(parse("status=sleeping").is_err());
        assert!(parse("identifier=zz:x").expect_err("refused").contains("unknown operator"));
    }

    #[test]
    fn like_escapes_wildcards() {
        let q = parse("identifier=like:a_%25").expect("query");
        let mut b = SqlBuilder::starting_after(2);
        q.where_sql(&mut b);
        assert!(b.binds.contains(&"%a\\_\\%%".to_string()), "{:?}", b.binds);
    }
}
