//! The batch's state in memory (overlay, prefetched rows, compiled rules)
//! and how it is written with the checkpoint in one transaction.

use super::{storage, Engine, NAME, ROWS_PER_STATEMENT};
use crate::probe;
use crate::ProjectionError;
use serde_json::Value;
use sqlx::{AnyConnection, Executor};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use userstream_domain::attribute::Definition;
use userstream_domain::rules::{self, Compiled, Condition};
use userstream_eventlog::{delete_pairs, statement_chunks, Dialect};

/// A rule group as the engine holds it.
#[derive(Debug, Clone)]
pub(super) struct RuleGroup {
    pub(super) company_id: String,
    pub(super) conditions: Vec<Condition>,
    pub(super) rule_version: i64,
    pub(super) deleted: bool,
}

/// A rule generation compiled once: its conditions, and whether a user
/// without any value satisfies it.
pub(super) struct CompiledRule {
    pub(super) rule: Vec<Compiled>,
    pub(super) matches_empty: bool,
}

/// Everything a batch changes, applied with the checkpoint in one transaction.
#[derive(Default)]
pub(super) struct Overlay {
    pub(super) users: BTreeMap<(String, String), (String, bool)>,
    /// `None` = value deleted.
    pub(super) values: BTreeMap<(String, String, String), Option<Value>>,
    pub(super) deleted_definitions: Vec<(String, String)>,
    pub(super) definitions: BTreeMap<(String, String), Definition>,
    pub(super) groups: BTreeMap<(String, String), RuleGroup>,
    /// Per group: user → member or not, after the batch.
    pub(super) members: BTreeMap<String, BTreeMap<String, bool>>,
    /// Groups whose members are all gone (deleted or turned manual).
    pub(super) cleared: BTreeSet<String>,
}

/// The committed state of the users a batch touches, read with three
/// queries per [`ROWS_PER_STATEMENT`] users instead of three per event.
#[derive(Default)]
pub(super) struct Prefetched {
    /// (application, user) pairs read; a missing entry below means "none".
    pub(super) covered: HashSet<(String, String)>,
    pub(super) values: HashMap<(String, String), HashMap<String, Value>>,
    pub(super) archived: HashMap<(String, String), bool>,
    /// User → the rule groups it is a member of.
    pub(super) members: HashMap<String, BTreeSet<String>>,
}

/// `$first, $first+1, …` for `n` values.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

impl Overlay {
    pub(super) fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.values.is_empty()
            && self.deleted_definitions.is_empty()
            && self.definitions.is_empty()
            && self.groups.is_empty()
            && self.members.is_empty()
            && self.cleared.is_empty()
    }
}

impl Engine {
    pub(super) async fn commit(&self, overlay: Overlay, from: i64, last: i64) -> Result<(), ProjectionError> {
        let _turn = self.db.write_turn().await;
        let mut conn = self.db.pool.acquire().await.map_err(storage)?;
        conn.execute(self.db.begin_write()).await?;
        let result = write_overlay(&mut conn, &overlay, from, last).await;
        match result {
            Ok(()) => {
                conn.execute("COMMIT").await?;
                Ok(())
            }
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(e)
            }
        }
    }
}

/// Writes the batch's state and moves the checkpoint from `from` to
/// `last`, inside the caller's transaction; fails with `LostLease` (and the
/// caller rolls back) when the checkpoint is no longer `from`.
pub(super) async fn write_overlay(
    conn: &mut AnyConnection,
    o: &Overlay,
    from: i64,
    last: i64,
) -> Result<(), ProjectionError> {
    write_users(conn, o).await?;
    write_definitions(conn, o).await?;
    write_values(conn, o).await?;
    write_groups(conn, o).await?;
    write_members(conn, o).await?;
    let moved =
        sqlx::query("UPDATE engine_state SET position = $1, inflight_from = NULL, inflight_to = NULL WHERE name = $2 AND position = $3")
            .bind(last)
            .bind(NAME)
            .bind(from)
            .execute(&mut *conn)
            .await?;
    if moved.rows_affected() != 1 {
        // Another instance committed this range (this one lost its lease).
        return Err(ProjectionError::LostLease(format!(
            "membership engine checkpoint moved from {from}: batch discarded"
        )));
    }
    Ok(())
}

/// Users: their company and whether they are archived.
async fn write_users(conn: &mut AnyConnection, o: &Overlay) -> Result<(), sqlx::Error> {
    let users: Vec<_> = o.users.iter().collect();
    for chunk in statement_chunks(&users, ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("({})", placeholders(4 * i + 1, 4))).collect();
        let sql = format!("INSERT INTO engine_users (application_id, user_id, company_id, archived) VALUES {} ON CONFLICT (application_id, user_id) DO UPDATE SET archived = excluded.archived", rows.join(", "));
        let mut q = sqlx::query(&sql);
        for ((app, user), (company, archived)) in chunk {
            q = q.bind(app).bind(user).bind(company).bind(i64::from(*archived));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Definitions: deleted ones with their values, then changed ones.
async fn write_definitions(conn: &mut AnyConnection, o: &Overlay) -> Result<(), sqlx::Error> {
    for (app, def) in &o.deleted_definitions {
        sqlx::query("DELETE FROM engine_values WHERE application_id = $1 AND definition_id = $2")
            .bind(app)
            .bind(def)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM engine_definitions WHERE application_id = $1 AND definition_id = $2")
            .bind(app)
            .bind(def)
            .execute(&mut *conn)
            .await?;
    }
    for ((app, def), d) in &o.definitions {
        sqlx::query("INSERT INTO engine_definitions (application_id, definition_id, definition) VALUES ($1, $2, $3) ON CONFLICT (application_id, definition_id) DO UPDATE SET definition = $3")
            .bind(app)
            .bind(def)
            .bind(serde_json::to_string(d).unwrap_or_default())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Values, with their index keys; deleted values.
async fn write_values(conn: &mut AnyConnection, o: &Overlay) -> Result<(), sqlx::Error> {
    // Rows with a number key and rows without go in separate statements, so
    // the SQL depends only on the row count (see `probe::number_slot`).
    let (numbers, others): (Vec<_>, Vec<_>) = o
        .values
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v, rules::index_keys(v))))
        .partition(|(_, _, (num, _))| num.is_some());
    for chunk in statement_chunks(&numbers, ROWS_PER_STATEMENT).chain(statement_chunks(&others, ROWS_PER_STATEMENT)) {
        let mut next = 1;
        let rows: Vec<String> = chunk
            .iter()
            .map(|(_, _, (num, _))| {
                let row = placeholders(next, 5);
                next += 5;
                format!("({row}, {})", probe::number_slot(*num, &mut next))
            })
            .collect();
        let sql = format!("INSERT INTO engine_values (application_id, user_id, definition_id, value, text_value, num_value) VALUES {} ON CONFLICT (application_id, user_id, definition_id) DO UPDATE SET value = excluded.value, num_value = excluded.num_value, text_value = excluded.text_value", rows.join(", "));
        let mut q = sqlx::query(&sql);
        for ((app, user, def), value, (num, text)) in chunk {
            q = q.bind(app).bind(user).bind(def).bind(value.to_string()).bind(text.as_deref());
            if let Some(n) = num {
                q = q.bind(*n);
            }
        }
        q.execute(&mut *conn).await?;
    }
    for ((app, user, def), _) in o.values.iter().filter(|(_, v)| v.is_none()) {
        sqlx::query("DELETE FROM engine_values WHERE application_id = $1 AND user_id = $2 AND definition_id = $3")
            .bind(app)
            .bind(user)
            .bind(def)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Rule groups and the definitions their conditions name.
async fn write_groups(conn: &mut AnyConnection, o: &Overlay) -> Result<(), sqlx::Error> {
    for ((app, group_id), g) in &o.groups {
        sqlx::query("DELETE FROM engine_group_definitions WHERE application_id = $1 AND group_id = $2")
            .bind(app)
            .bind(group_id)
            .execute(&mut *conn)
            .await?;
        if g.deleted || g.conditions.is_empty() {
            sqlx::query("DELETE FROM engine_groups WHERE application_id = $1 AND group_id = $2")
                .bind(app)
                .bind(group_id)
                .execute(&mut *conn)
                .await?;
            continue;
        }
        sqlx::query("INSERT INTO engine_groups (application_id, group_id, company_id, conditions, rule_version) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (application_id, group_id) DO UPDATE SET conditions = $4, rule_version = $5")
            .bind(app)
            .bind(group_id)
            .bind(&g.company_id)
            .bind(serde_json::to_string(&g.conditions).unwrap_or_default())
            .bind(g.rule_version)
            .execute(&mut *conn)
            .await?;
        let defs: BTreeSet<&str> = g.conditions.iter().map(|c| c.user_attribute_definition_id.as_str()).collect();
        for d in defs {
            sqlx::query("INSERT INTO engine_group_definitions (application_id, definition_id, group_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(app)
                .bind(d)
                .bind(group_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Members: cleared groups, then every join, then every leave.
async fn write_members(conn: &mut AnyConnection, o: &Overlay) -> Result<(), sqlx::Error> {
    for group_id in &o.cleared {
        sqlx::query("DELETE FROM engine_members WHERE group_id = $1").bind(group_id).execute(&mut *conn).await?;
    }
    // Every group's joins, then every group's leaves, many rows per statement.
    let pairs = |joined: bool| -> Vec<(&String, &String)> {
        o.members
            .iter()
            .flat_map(|(g, members)| members.iter().filter(move |(_, m)| **m == joined).map(move |(u, _)| (g, u)))
            .collect()
    };
    for chunk in statement_chunks(&pairs(true), ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("({})", placeholders(2 * i + 1, 2))).collect();
        let sql =
            format!("INSERT INTO engine_members (group_id, user_id) VALUES {} ON CONFLICT DO NOTHING", rows.join(", "));
        let mut q = sqlx::query(&sql);
        for (g, u) in chunk {
            q = q.bind(g.as_str()).bind(u.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    let dialect = Dialect::of(conn);
    for chunk in statement_chunks(&pairs(false), ROWS_PER_STATEMENT) {
        let sql = delete_pairs(dialect, "engine_members", ("group_id", "user_id"), chunk.len(), "");
        let mut q = sqlx::query(&sql);
        for (g, u) in chunk {
            q = q.bind(g.as_str()).bind(u.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
