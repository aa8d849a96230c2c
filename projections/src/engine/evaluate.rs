//! Deciding memberships: incremental re-evaluation per event, and full
//! evaluation of a new rule generation over every user of an application.

use super::{placeholders, Engine, Output, Overlay, RuleGroup, ROWS_PER_STATEMENT, USERS_PER_EVENT};
use crate::probe;
use crate::ProjectionError;
use serde_json::Value;
use sqlx::Row;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use time::OffsetDateTime;
use userstream_domain::attribute::{DefinitionEvent, ValuesEvent};
use userstream_domain::codec;
use userstream_domain::group::{Cause, GroupEvaluated, GroupEvent, MembershipChanged};
use userstream_domain::rules::{self, Compiled};
use userstream_domain::user::UserEvent;
use userstream_eventlog::RecordedEvent;

/// Values by user, then by definition.
type UserValues = HashMap<String, HashMap<String, Value>>;

impl Engine {
    /// Re-evaluates `groups` for one user and records joins and leaves.
    pub(super) async fn reevaluate(
        &mut self,
        overlay: &mut Overlay,
        output: &mut Output,
        event: &RecordedEvent,
        user: &str,
        groups: &[String],
    ) -> Result<(), sqlx::Error> {
        if groups.is_empty() {
            return Ok(());
        }
        let app = event.application_id.as_str();
        let live = self.archived(overlay, app, user).await? == Some(false);
        let values = if live { self.user_values(overlay, app, user).await? } else { HashMap::new() };
        let committed = self.memberships(app, user).await?;
        for group_id in groups {
            let Some(g) = self.group(overlay, app, group_id).await? else {
                continue;
            };
            if g.deleted || g.conditions.is_empty() {
                continue;
            }
            let rule = self.rule(overlay, app, group_id, &g).await?;
            let should = live && !rule.rule.is_empty() && rules::matches(&rule.rule, |id| values.get(id));
            let is = Self::is_member(overlay, &committed, group_id, user);
            if should != is {
                overlay.members.entry(group_id.clone()).or_default().insert(user.to_string(), should);
                let change = MembershipChanged {
                    group_id: group_id.clone(),
                    joined: if should { vec![user.to_string()] } else { vec![] },
                    left: if should { vec![] } else { vec![user.to_string()] },
                    unmatched: 0,
                    cause: Cause::Event { position: event.position, event_type: event.event_type.clone() },
                    at: event.occurred_at,
                };
                output
                    .entry((g.company_id.clone(), app.to_string()))
                    .or_default()
                    .entry(group_id.clone())
                    .or_default()
                    .push(GroupEvent::MembershipChanged(change));
            }
        }
        Ok(())
    }

    /// Groups an empty (new) user can satisfy.
    pub(super) async fn groups_matching_empty(
        &mut self,
        overlay: &Overlay,
        app: &str,
    ) -> Result<Arc<Vec<String>>, sqlx::Error> {
        if let Some(cached) = self.empty_matching.get(app) {
            return Ok(cached.clone());
        }
        let candidates: Vec<(String, RuleGroup)> =
            self.rule_groups(overlay, app).map(|(id, g)| (id.clone(), g.clone())).collect();
        let mut out = Vec::new();
        for (id, g) in candidates {
            let cached = self.compiled.get(&id).filter(|(v, _)| *v == g.rule_version).map(|(_, r)| r.matches_empty);
            let matches_empty = match cached {
                Some(m) => m,
                None => self.rule(overlay, app, &id, &g).await?.matches_empty,
            };
            if matches_empty {
                out.push(id);
            }
        }
        let out = Arc::new(out);
        self.empty_matching.insert(app.to_string(), out.clone());
        Ok(out)
    }

    pub(super) async fn apply(
        &mut self,
        event: &RecordedEvent,
        overlay: &mut Overlay,
        output: &mut Output,
    ) -> Result<(), ProjectionError> {
        let app = event.application_id.clone();
        let poison =
            |e: codec::DecodeError| ProjectionError::Poison { position: event.position, reason: e.to_string() };
        if let Some(user) = event.stream.strip_prefix("user-") {
            let decoded = userstream_domain::decode(&event.event_type, event.schema as u32, event.data.as_str())
                .map_err(poison)?;
            let key = (app.clone(), user.to_string());
            match decoded {
                UserEvent::Created(_) => {
                    overlay.users.insert(key, (event.company_id.clone(), false));
                    let groups = self.groups_matching_empty(overlay, &app).await?;
                    self.reevaluate(overlay, output, event, user, &groups).await?;
                }
                UserEvent::Archived(_) | UserEvent::Restored(_) | UserEvent::Erased(_) => {
                    // An erased person leaves every rule group as an archived one does.
                    let archived = !matches!(decoded, UserEvent::Restored(_));
                    overlay.users.insert(key, (event.company_id.clone(), archived));
                    let groups = self.all_rule_groups(overlay, &app).await?;
                    self.reevaluate(overlay, output, event, user, &groups).await?;
                    if matches!(decoded, UserEvent::Erased(_)) {
                        // Its values go too (an encrypted one is sealed only by the master key).
                        for definition in self.user_values(overlay, &app, user).await?.into_keys() {
                            overlay.values.insert((app.clone(), user.to_string(), definition), None);
                        }
                    }
                }
                _ => {}
            }
        } else if let Some(user) = event.stream.strip_prefix("attrs-") {
            let decoded =
                codec::decode_values(&event.event_type, event.schema as u32, event.data.as_str()).map_err(poison)?;
            let (definition_id, value) = match decoded {
                ValuesEvent::Upserted(e) => (e.definition_id, Some(e.value)),
                ValuesEvent::Deleted(e) => (e.definition_id, None),
            };
            overlay.values.insert((app.clone(), user.to_string(), definition_id.clone()), value);
            let groups = self.groups_using(overlay, &app, &definition_id).await?;
            self.reevaluate(overlay, output, event, user, &groups).await?;
        } else if event.stream.starts_with("attrdef-") {
            match codec::decode_definition(&event.event_type, event.schema as u32, event.data.as_str())
                .map_err(poison)?
            {
                DefinitionEvent::Created(e) | DefinitionEvent::Updated(e) => {
                    self.compiled.clear();
                    self.empty_matching.clear();
                    overlay.definitions.insert((app, e.definition.id.clone()), e.definition);
                }
                DefinitionEvent::Deleted(e) => {
                    self.compiled.clear();
                    self.empty_matching.clear();
                    overlay.values.retain(|(a, _, d), _| !(a == &app && d == &e.definition_id));
                    overlay.deleted_definitions.push((app, e.definition_id));
                }
            }
        } else if let Some(group_id) = event.stream.strip_prefix("group-") {
            let decoded =
                codec::decode_group(&event.event_type, event.schema as u32, event.data.as_str()).map_err(poison)?;
            if !matches!(decoded, GroupEvent::MembershipChanged(_) | GroupEvent::Evaluated(_)) {
                self.empty_matching.remove(&app);
            }
            match decoded {
                GroupEvent::Created(e) | GroupEvent::Updated(e) => {
                    let was_rule = self.group(overlay, &app, group_id).await?.is_some_and(|g| !g.conditions.is_empty());
                    overlay.groups.insert(
                        (app.clone(), group_id.to_string()),
                        RuleGroup {
                            company_id: event.company_id.clone(),
                            conditions: e.details.conditions.clone(),
                            rule_version: e.rule_version,
                            deleted: false,
                        },
                    );
                    if was_rule && !e.details.is_rule() {
                        self.release_all(overlay, output, event, group_id).await?;
                    }
                }
                GroupEvent::Deleted(_) => {
                    overlay.groups.insert(
                        (app.clone(), group_id.to_string()),
                        RuleGroup {
                            company_id: event.company_id.clone(),
                            conditions: vec![],
                            rule_version: 0,
                            deleted: true,
                        },
                    );
                    overlay.members.remove(group_id);
                    overlay.cleared.insert(group_id.to_string());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A rule group turned manual: every rule member leaves.
    pub(super) async fn release_all(
        &self,
        overlay: &mut Overlay,
        output: &mut Output,
        event: &RecordedEvent,
        group_id: &str,
    ) -> Result<(), sqlx::Error> {
        let mut members: BTreeSet<String> =
            sqlx::query_scalar::<_, String>("SELECT user_id FROM engine_members WHERE group_id = $1")
                .bind(group_id)
                .fetch_all(&self.db.pool)
                .await?
                .into_iter()
                .collect();
        for (u, m) in overlay.members.remove(group_id).unwrap_or_default() {
            if m {
                members.insert(u);
            } else {
                members.remove(&u);
            }
        }
        overlay.cleared.insert(group_id.to_string());
        let left: Vec<String> = members.into_iter().collect();
        let streams = output.entry((event.company_id.clone(), event.application_id.clone())).or_default();
        let cause = Cause::Event { position: event.position, event_type: event.event_type.clone() };
        let events = streams.entry(group_id.to_string()).or_default();
        push_changes(events, group_id, &[], &left, &cause, event.occurred_at);
        Ok(())
    }

    /// Evaluates every rule generation the batch created over all users of
    /// its application, then marks it evaluated.
    pub(super) async fn evaluate_new_generations(
        &mut self,
        overlay: &mut Overlay,
        output: &mut Output,
        last: i64,
    ) -> Result<(), ProjectionError> {
        let fresh: Vec<((String, String), RuleGroup)> = overlay
            .groups
            .iter()
            .filter(|(_, g)| !g.deleted && !g.conditions.is_empty())
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        for ((app, group_id), g) in fresh {
            let stored = sqlx::query_scalar::<_, i64>(
                "SELECT rule_version FROM engine_groups WHERE application_id = $1 AND group_id = $2",
            )
            .bind(&app)
            .bind(&group_id)
            .fetch_optional(&self.db.pool)
            .await?;
            if stored == Some(g.rule_version) {
                continue;
            }
            let rule = self.rule(overlay, &app, &group_id, &g).await?;
            let matching = self.matching_users(overlay, &app, &rule.rule).await?;
            let mut current: BTreeSet<String> = if overlay.cleared.contains(&group_id) {
                BTreeSet::new()
            } else {
                sqlx::query_scalar::<_, String>("SELECT user_id FROM engine_members WHERE group_id = $1")
                    .bind(&group_id)
                    .fetch_all(&self.db.pool)
                    .await?
                    .into_iter()
                    .collect()
            };
            for (u, m) in overlay.members.get(&group_id).cloned().unwrap_or_default() {
                if m {
                    current.insert(u);
                } else {
                    current.remove(&u);
                }
            }
            let joined: Vec<String> = matching.difference(&current).cloned().collect();
            let left: Vec<String> = current.difference(&matching).cloned().collect();
            let members = overlay.members.entry(group_id.clone()).or_default();
            for u in &joined {
                members.insert(u.clone(), true);
            }
            for u in &left {
                members.insert(u.clone(), false);
            }
            let now = OffsetDateTime::now_utc();
            let events =
                output.entry((g.company_id.clone(), app.clone())).or_default().entry(group_id.clone()).or_default();
            let cause = Cause::Evaluation { rule_version: g.rule_version };
            push_changes(events, &group_id, &joined, &left, &cause, now);
            events.push(GroupEvent::Evaluated(GroupEvaluated {
                group_id: group_id.clone(),
                rule_version: g.rule_version,
                at: now,
            }));
            tracing::debug!(group_id, joined = joined.len(), left = left.len(), last, "rule evaluated");
        }
        Ok(())
    }

    /// Every live user of the application the rule matches, from the engine's
    /// tables plus the batch's overlay.
    pub(super) async fn matching_users(
        &self,
        overlay: &Overlay,
        app: &str,
        rule: &[Compiled],
    ) -> Result<BTreeSet<String>, sqlx::Error> {
        if rule.is_empty() {
            return Ok(BTreeSet::new());
        }
        let definitions: BTreeSet<&str> = rule.iter().map(|c| c.definition_id.as_str()).collect();
        let deleted = |d: &str| overlay.deleted_definitions.iter().any(|(a, id)| a == app && id == d);
        let live_defs: Vec<&str> = definitions.iter().copied().filter(|d| !deleted(d)).collect();
        // A rule an empty user cannot satisfy needs a value its probe finds:
        // only those users (and the batch's) are candidates.
        let driver = rule
            .iter()
            .filter(|c| !deleted(&c.definition_id))
            .filter_map(|c| c.probe().map(|p| (c, p)))
            .min_by_key(|(_, p)| probe::rank(p));
        let matches_empty = rules::matches(rule, |_| None);
        // Users matched from the index keys alone (archived ones still to drop).
        let mut keyed: Vec<String> = Vec::new();
        let mut values = match driver {
            Some((c, p)) if !matches_empty => {
                // The batch's changes may make others match: read theirs in full.
                let touched: BTreeSet<String> = overlay
                    .values
                    .keys()
                    .filter(|(a, _, d)| a == app && definitions.contains(d.as_str()))
                    .map(|(_, u, _)| u.clone())
                    .collect();
                let mut candidates = BTreeSet::new();
                if rule.iter().all(|c| c.holds_keys(None).is_some()) {
                    keyed = self.matching_by_keys(app, rule, (c, &p), &live_defs).await?;
                    keyed.retain(|u| !touched.contains(u));
                } else {
                    candidates = self.probe_candidates(app, &c.definition_id, &p).await?;
                }
                candidates.extend(touched);
                self.values_of(app, &candidates.into_iter().collect::<Vec<_>>(), &live_defs).await?
            }
            _ => self.all_values_of(app, &live_defs).await?,
        };
        for ((a, u, d), v) in &overlay.values {
            if a == app && definitions.contains(d.as_str()) {
                let entry = values.entry(u.clone()).or_default();
                match v {
                    Some(v) => entry.insert(d.clone(), v.clone()),
                    None => entry.remove(d),
                };
            }
        }
        let archived = self.archived_users(overlay, app).await?;
        let empty = HashMap::new();
        let matches = |u: &String| {
            let vals = values.get(u).unwrap_or(&empty);
            !archived.contains(u) && rules::matches(rule, |id| vals.get(id))
        };
        if !matches_empty {
            // Only users with values can match: no need to list every user.
            let mut found: BTreeSet<String> = values.keys().filter(|u| matches(u)).cloned().collect();
            found.extend(keyed.into_iter().filter(|u| !archived.contains(u)));
            return Ok(found);
        }
        let mut all: BTreeSet<String> =
            sqlx::query_scalar::<_, String>("SELECT user_id FROM engine_users WHERE application_id = $1")
                .bind(app)
                .fetch_all(&self.db.pool)
                .await?
                .into_iter()
                .collect();
        all.extend(overlay.users.keys().filter(|(a, _)| a == app).map(|(_, u)| u.clone()));
        Ok(all.into_iter().filter(|u| matches(u)).collect())
    }

    /// The users with a value of `definition` that `p` finds, through its index.
    async fn probe_candidates(
        &self,
        app: &str,
        definition: &str,
        p: &rules::Probe,
    ) -> Result<BTreeSet<String>, sqlx::Error> {
        let mut next = 3;
        let mut binds = Vec::new();
        let condition = probe::sql(p, "v", false, &mut next, &mut binds);
        let sql = format!(
            "SELECT v.user_id FROM engine_values v WHERE v.application_id = $1 AND v.definition_id = $2{condition}"
        );
        let query = probe::bind(sqlx::query(&sql).bind(app).bind(definition), &binds);
        let mut candidates = BTreeSet::new();
        for r in query.fetch_all(&self.db.pool).await? {
            candidates.insert(r.try_get::<String, _>("user_id")?);
        }
        Ok(candidates)
    }

    /// The committed values of `defs` of the `users`, by user.
    async fn values_of(&self, app: &str, users: &[String], defs: &[&str]) -> Result<UserValues, sqlx::Error> {
        let mut values = UserValues::new();
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT user_id, definition_id, value FROM engine_values WHERE application_id = $1 AND user_id IN ({}) AND definition_id IN ({})",
                placeholders(2, chunk.len()),
                placeholders(2 + chunk.len(), defs.len())
            );
            let mut q = sqlx::query(&sql).bind(app);
            for u in chunk {
                q = q.bind(u.as_str());
            }
            for d in defs {
                q = q.bind(*d);
            }
            for r in q.fetch_all(&self.db.pool).await? {
                let text: String = r.try_get("value")?;
                values
                    .entry(r.try_get("user_id")?)
                    .or_default()
                    .insert(r.try_get("definition_id")?, serde_json::from_str(&text).unwrap_or(Value::Null));
            }
        }
        Ok(values)
    }

    /// Every committed value of `defs` in the application, by user.
    async fn all_values_of(&self, app: &str, defs: &[&str]) -> Result<UserValues, sqlx::Error> {
        let mut values = UserValues::new();
        for d in defs {
            let rows = sqlx::query(
                "SELECT user_id, value FROM engine_values WHERE application_id = $1 AND definition_id = $2",
            )
            .bind(app)
            .bind(*d)
            .fetch_all(&self.db.pool)
            .await?;
            for r in rows {
                let text: String = r.try_get("value")?;
                values
                    .entry(r.try_get("user_id")?)
                    .or_default()
                    .insert(d.to_string(), serde_json::from_str(&text).unwrap_or(Value::Null));
            }
        }
        Ok(values)
    }

    /// The application's archived users as of the batch (they are few: these
    /// are loaded, not the live ones).
    async fn archived_users(&self, overlay: &Overlay, app: &str) -> Result<BTreeSet<String>, sqlx::Error> {
        let mut archived: BTreeSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT user_id FROM engine_users WHERE application_id = $1 AND archived = 1",
        )
        .bind(app)
        .fetch_all(&self.db.pool)
        .await?
        .into_iter()
        .collect();
        for ((a, u), (_, gone)) in &overlay.users {
            if a == app {
                if *gone {
                    archived.insert(u.clone());
                } else {
                    archived.remove(u);
                }
            }
        }
        Ok(archived)
    }

    /// The users with a value the driver's probe finds for whom every
    /// condition holds, decided from the typed index keys of their values
    /// (`holds_keys`: the rule has no multi-value definition), read in one
    /// query over covering indexes: no value is parsed and no table row read.
    /// `defs` are the rule's live definitions.
    pub(super) async fn matching_by_keys(
        &self,
        app: &str,
        rule: &[Compiled],
        driver: (&Compiled, &rules::Probe),
        defs: &[&str],
    ) -> Result<Vec<String>, sqlx::Error> {
        let (c, p) = driver;
        // The driver's probe admits numbers only or text only: read just
        // that key, so the (definition, number|text, user) index covers it.
        let (n0, t0) = match p {
            rules::Probe::Range { .. } | rules::Probe::Numbers(_) => ("v0.num_value", "NULL"),
            rules::Probe::Texts(_) => ("NULL", "v0.text_value"),
            rules::Probe::Exists => ("v0.num_value", "v0.text_value"),
        };
        let others: Vec<&str> = defs.iter().copied().filter(|d| *d != c.definition_id).collect();
        let mut columns = format!("v0.user_id, {n0}, {t0}");
        let mut joins = String::new();
        for (i, _) in others.iter().enumerate() {
            let a = format!("v{}", i + 1);
            columns.push_str(&format!(", {a}.user_id, {a}.num_value, {a}.text_value"));
            // A one-point range keeps SQLite on the covering index (see
            // `AttributesQuery::scan`).
            joins.push_str(&format!(
                " LEFT JOIN engine_values {a} ON {a}.application_id = v0.application_id AND {a}.definition_id = ${} AND {a}.user_id >= v0.user_id AND {a}.user_id <= v0.user_id",
                i + 3
            ));
        }
        let mut next = others.len() + 3;
        let mut binds = Vec::new();
        let condition = probe::sql(p, "v0", false, &mut next, &mut binds);
        let sql = format!(
            "SELECT {columns} FROM engine_values v0{joins} WHERE v0.application_id = $1 AND v0.definition_id = $2{condition}"
        );
        let mut query = sqlx::query(&sql).bind(app).bind(&c.definition_id);
        for d in &others {
            query = query.bind(*d);
        }
        let rows = probe::bind(query, &binds).fetch_all(&self.db.pool).await?;
        // Each definition's (user id, number, text) columns: the user id is
        // NULL when the left join found no value (a JSON value has no keys).
        let column = |d: &str| {
            if d == c.definition_id {
                Some(0)
            } else {
                others.iter().position(|o| *o == d).map(|i| 3 + 3 * i)
            }
        };
        let mut found = Vec::new();
        for r in &rows {
            let mut holds = true;
            for condition in rule {
                let keys = match column(&condition.definition_id) {
                    Some(i) => {
                        let present: Option<String> = r.try_get(i)?;
                        let number: Option<f64> = r.try_get(i + 1)?;
                        let text: Option<String> = r.try_get(i + 2)?;
                        present.map(|_| (number, text))
                    }
                    None => None,
                };
                let keys = keys.as_ref().map(|(n, t)| (*n, t.as_deref()));
                if condition.holds_keys(keys) != Some(true) {
                    holds = false;
                    break;
                }
            }
            if holds {
                found.push(r.try_get::<String, _>(0)?);
            }
        }
        Ok(found)
    }
}

/// Membership events for many joins and leaves: at most [`USERS_PER_EVENT`]
/// users each, joins first.
fn push_changes(
    events: &mut Vec<GroupEvent>,
    group_id: &str,
    joined: &[String],
    left: &[String],
    cause: &Cause,
    at: OffsetDateTime,
) {
    let change = |joined: &[String], left: &[String]| {
        GroupEvent::MembershipChanged(MembershipChanged {
            group_id: group_id.to_string(),
            joined: joined.to_vec(),
            left: left.to_vec(),
            unmatched: 0,
            cause: cause.clone(),
            at,
        })
    };
    events.extend(joined.chunks(USERS_PER_EVENT).map(|chunk| change(chunk, &[])));
    events.extend(left.chunks(USERS_PER_EVENT).map(|chunk| change(&[], chunk)));
}
