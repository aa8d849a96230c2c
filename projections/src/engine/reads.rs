//! What a batch reads of the committed state: its overlay first (what the
//! batch changed so far), then the engine's tables, prefetched per batch.

use super::{placeholders, CompiledRule, Engine, Overlay, Prefetched, RuleGroup, ROWS_PER_STATEMENT};
use serde_json::Value;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use userstream_domain::attribute::Definition;
use userstream_domain::codec;
use userstream_domain::rules;
use userstream_eventlog::RecordedEvent;

impl Engine {
    /// Reads the committed values, status and memberships of every user
    /// whose events in `events` may need a re-evaluation.
    pub(super) async fn prefetch(&self, events: &[RecordedEvent]) -> Result<Prefetched, sqlx::Error> {
        let mut by_app: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut created = Vec::new();
        for e in events {
            // A user just created has nothing committed yet (values need a
            // live user): it is covered with no values and no memberships,
            // and only archive and restore read what is stored.
            let user = match e.stream.strip_prefix("user-") {
                Some(u)
                    if matches!(
                        e.event_type.as_str(),
                        codec::USER_ARCHIVED | codec::USER_RESTORED | codec::USER_ERASED
                    ) =>
                {
                    u
                }
                Some(u) if e.event_type == codec::USER_CREATED => {
                    created.push((e.application_id.clone(), u.to_string()));
                    continue;
                }
                Some(_) => continue,
                None => match e.stream.strip_prefix("attrs-") {
                    Some(u) => u,
                    None => continue,
                },
            };
            by_app.entry(e.application_id.as_str()).or_default().insert(user);
        }
        let mut out = Prefetched::default();
        out.covered.extend(created);
        for (app, users) in by_app {
            let users: Vec<&str> = users.into_iter().collect();
            for chunk in users.chunks(ROWS_PER_STATEMENT) {
                let list = placeholders(2, chunk.len());
                let sql = format!("SELECT user_id, definition_id, value FROM engine_values WHERE application_id = $1 AND user_id IN ({list})");
                let mut q = sqlx::query(&sql).bind(app);
                for u in chunk {
                    q = q.bind(*u);
                }
                for r in q.fetch_all(&self.db.pool).await? {
                    let text: String = r.try_get("value")?;
                    out.values
                        .entry((app.to_string(), r.try_get("user_id")?))
                        .or_default()
                        .insert(r.try_get("definition_id")?, serde_json::from_str(&text).unwrap_or(Value::Null));
                }
                let sql = format!(
                    "SELECT user_id, archived FROM engine_users WHERE application_id = $1 AND user_id IN ({list})"
                );
                let mut q = sqlx::query(&sql).bind(app);
                for u in chunk {
                    q = q.bind(*u);
                }
                for r in q.fetch_all(&self.db.pool).await? {
                    out.archived
                        .insert((app.to_string(), r.try_get("user_id")?), r.try_get::<i64, _>("archived")? != 0);
                }
                let sql = format!(
                    "SELECT user_id, group_id FROM engine_members WHERE user_id IN ({})",
                    placeholders(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for u in chunk {
                    q = q.bind(*u);
                }
                for r in q.fetch_all(&self.db.pool).await? {
                    out.members.entry(r.try_get("user_id")?).or_default().insert(r.try_get("group_id")?);
                }
                out.covered.extend(chunk.iter().map(|u| (app.to_string(), u.to_string())));
            }
        }
        Ok(out)
    }

    pub(super) async fn group(
        &self,
        overlay: &Overlay,
        app: &str,
        group_id: &str,
    ) -> Result<Option<RuleGroup>, sqlx::Error> {
        let key = (app.to_string(), group_id.to_string());
        Ok(overlay.groups.get(&key).or_else(|| self.groups.get(&key)).cloned())
    }

    /// Live rule groups of the application (committed, then the batch's changes).
    pub(super) fn rule_groups<'a>(
        &'a self,
        overlay: &'a Overlay,
        app: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a RuleGroup)> + 'a {
        let committed = self
            .groups
            .range((app.to_string(), String::new())..)
            .take_while(move |((a, _), _)| a == app)
            .filter(move |(k, _)| !overlay.groups.contains_key(*k));
        let batch = overlay.groups.iter().filter(move |((a, _), _)| a == app);
        committed.chain(batch).filter(|(_, g)| !g.deleted && !g.conditions.is_empty()).map(|((_, id), g)| (id, g))
    }

    /// Rule groups of the application whose conditions name `definition_id`.
    pub(super) async fn groups_using(
        &self,
        overlay: &Overlay,
        app: &str,
        definition_id: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        Ok(self
            .rule_groups(overlay, app)
            .filter(|(_, g)| g.conditions.iter().any(|c| c.user_attribute_definition_id == definition_id))
            .map(|(id, _)| id.clone())
            .collect())
    }

    pub(super) async fn all_rule_groups(&self, overlay: &Overlay, app: &str) -> Result<Vec<String>, sqlx::Error> {
        Ok(self.rule_groups(overlay, app).map(|(id, _)| id.clone()).collect())
    }

    pub(super) async fn definition(
        &self,
        overlay: &Overlay,
        app: &str,
        id: &str,
    ) -> Result<Option<Definition>, sqlx::Error> {
        if let Some(d) = overlay.definitions.get(&(app.to_string(), id.to_string())) {
            return Ok(Some(d.clone()));
        }
        let text = sqlx::query_scalar::<_, String>(
            "SELECT definition FROM engine_definitions WHERE application_id = $1 AND definition_id = $2",
        )
        .bind(app)
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The compiled rule of a group generation; a rule that no longer
    /// compiles (a definition changed under it) matches nobody.
    pub(super) async fn rule(
        &mut self,
        overlay: &Overlay,
        app: &str,
        group_id: &str,
        g: &RuleGroup,
    ) -> Result<Arc<CompiledRule>, sqlx::Error> {
        if let Some((version, r)) = self.compiled.get(group_id) {
            if *version == g.rule_version {
                return Ok(r.clone());
            }
        }
        let mut defs = Vec::new();
        for c in &g.conditions {
            if let Some(d) = self.definition(overlay, app, &c.user_attribute_definition_id).await? {
                defs.push(d);
            }
        }
        let compiled = rules::compile(&g.conditions, |id| defs.iter().find(|d| d.id == id)).unwrap_or_else(|e| {
            tracing::warn!(group_id, error = %e, "rule does not compile; it matches nobody");
            Vec::new()
        });
        if self.compiled.len() > 100_000 {
            self.compiled.clear();
            self.empty_matching.clear();
        }
        let matches_empty = !compiled.is_empty() && rules::matches(&compiled, |_| None);
        let compiled = Arc::new(CompiledRule { rule: compiled, matches_empty });
        self.compiled.insert(group_id.to_string(), (g.rule_version, compiled.clone()));
        Ok(compiled)
    }

    pub(super) async fn user_values(
        &self,
        overlay: &Overlay,
        app: &str,
        user: &str,
    ) -> Result<HashMap<String, Value>, sqlx::Error> {
        let key = (app.to_string(), user.to_string());
        let mut values = HashMap::new();
        if self.prefetched.covered.contains(&key) {
            if let Some(v) = self.prefetched.values.get(&key) {
                values = v.clone();
            }
        } else {
            let rows = sqlx::query(
                "SELECT definition_id, value FROM engine_values WHERE application_id = $1 AND user_id = $2",
            )
            .bind(app)
            .bind(user)
            .fetch_all(&self.db.pool)
            .await?;
            for r in rows {
                let text: String = r.try_get("value")?;
                values.insert(r.try_get("definition_id")?, serde_json::from_str(&text).unwrap_or(Value::Null));
            }
        }
        for (def_app, def) in &overlay.deleted_definitions {
            if def_app == app {
                values.remove(def);
            }
        }
        for ((a, u, d), v) in overlay.values.range((app.to_string(), user.to_string(), String::new())..) {
            if a != app || u != user {
                break;
            }
            match v {
                Some(v) => values.insert(d.clone(), v.clone()),
                None => values.remove(d),
            };
        }
        Ok(values)
    }

    /// The rule groups a user is a member of, as committed.
    pub(super) async fn memberships(&self, app: &str, user: &str) -> Result<BTreeSet<String>, sqlx::Error> {
        if self.prefetched.covered.contains(&(app.to_string(), user.to_string())) {
            return Ok(self.prefetched.members.get(user).cloned().unwrap_or_default());
        }
        Ok(sqlx::query_scalar::<_, String>("SELECT group_id FROM engine_members WHERE user_id = $1")
            .bind(user)
            .fetch_all(&self.db.pool)
            .await?
            .into_iter()
            .collect())
    }

    pub(super) fn is_member(overlay: &Overlay, committed: &BTreeSet<String>, group_id: &str, user: &str) -> bool {
        if let Some(m) = overlay.members.get(group_id).and_then(|m| m.get(user)) {
            return *m;
        }
        !overlay.cleared.contains(group_id) && committed.contains(group_id)
    }

    pub(super) async fn archived(&self, overlay: &Overlay, app: &str, user: &str) -> Result<Option<bool>, sqlx::Error> {
        let key = (app.to_string(), user.to_string());
        if let Some((_, a)) = overlay.users.get(&key) {
            return Ok(Some(*a));
        }
        if self.prefetched.covered.contains(&key) {
            return Ok(self.prefetched.archived.get(&key).copied());
        }
        let row = sqlx::query_scalar::<_, i64>(
            "SELECT archived FROM engine_users WHERE application_id = $1 AND user_id = $2",
        )
        .bind(app)
        .bind(user)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.map(|a| a != 0))
    }
}
