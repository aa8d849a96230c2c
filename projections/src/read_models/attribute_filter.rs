//! One page of the users an ad-hoc attribute rule matches: the scan planner
//! behind `POST …/user_attribute/filter`.
//!
//! Candidates come from the cheapest source there is: the users an email or
//! phone names (a few at most); else an index scan driven by the most
//! selective-looking probe of the rule, with the other probes checked in the
//! same index; else (every condition also holds for users without a value)
//! every live user, in id order. Each batch of candidates is checked against
//! the whole rule in memory; batches grow while matches are sparse.

use crate::probe;
use crate::read_models::attributes::{AttributesQuery, ValueRow};
use crate::read_models::users::UsersQuery;
use std::collections::{HashMap, HashSet};
use userstream_domain::rules::{self, Compiled, Probe};
use userstream_eventlog::Tenant;

/// Most users scanned per step.
const SCAN_BATCH: i64 = 1000;

/// A page of matching users with their values of the rule's definitions.
#[derive(Debug, Default)]
pub struct FilterPage {
    pub users: Vec<(String, Vec<ValueRow>)>,
    pub has_next: bool,
}

/// Where the candidates come from.
enum Source<'a> {
    /// The users the request's contacts name, checked once.
    Named(Vec<String>),
    /// An index scan on one probe, the others checked in the same index.
    Index { driver: (&'a str, Probe), others: Vec<(&'a str, Probe)> },
    /// Every live user.
    Everyone,
}

/// The read models a filter reads.
pub struct AttributeFilter<'a> {
    pub users: &'a UsersQuery,
    pub attributes: &'a AttributesQuery,
    pub tenant: &'a Tenant,
}

impl AttributeFilter<'_> {
    /// Page `page` (from 1) of `limit` users matching `rule`, narrowed to the
    /// users `contacts` (emails, phones) name when there are any.
    pub async fn page(
        &self,
        rule: &[Compiled],
        contacts: &[String],
        page: i64,
        limit: i64,
    ) -> Result<FilterPage, sqlx::Error> {
        let definitions: Vec<String> = {
            let mut ids: Vec<String> = rule.iter().map(|c| c.definition_id.clone()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let source = self.source(rule, contacts).await?;
        let wanted = (page * limit + 1) as usize;
        let mut matched: Vec<(String, Vec<ValueRow>)> = Vec::new();
        let mut after: Option<String> = None;
        // A few candidates per wanted user first, more while matches are sparse.
        let mut step = ((wanted * 3) as i64).clamp(50, SCAN_BATCH);
        loop {
            let (batch, values) = self.candidates(&source, after.as_deref(), step, &definitions).await?;
            let Some(last) = batch.last().cloned() else { break };
            let mut found = matching(rule, &batch, values);
            if let Source::Named(_) = source {
                // Archived users are no candidates (the scans join on live users already).
                let ids: Vec<String> = found.iter().map(|(u, _)| u.clone()).collect();
                let live: HashSet<String> =
                    self.users.by_ids(self.tenant, &ids).await?.into_iter().map(|u| u.user_id).collect();
                found.retain(|(u, _)| live.contains(u));
                matched.extend(found);
                break;
            }
            matched.extend(found);
            if matched.len() >= wanted {
                break;
            }
            after = Some(last);
            step = (step * 2).min(SCAN_BATCH);
        }
        let has_next = matched.len() >= wanted;
        let skip = ((page - 1) * limit) as usize;
        Ok(FilterPage { users: matched.into_iter().skip(skip).take(limit as usize).collect(), has_next })
    }

    async fn source<'r>(&self, rule: &'r [Compiled], contacts: &[String]) -> Result<Source<'r>, sqlx::Error> {
        let contacts: Vec<String> = contacts.iter().filter(|t| !t.trim().is_empty()).cloned().collect();
        if !contacts.is_empty() {
            let mut ids: Vec<String> =
                self.users.search(self.tenant, &contacts).await?.into_iter().map(|u| u.user_id).collect();
            ids.sort();
            return Ok(Source::Named(ids));
        }
        let mut probes: Vec<(&str, Probe)> =
            rule.iter().filter_map(|c| c.probe().map(|p| (c.definition_id.as_str(), p))).collect();
        probes.sort_by_key(|(_, p)| probe::rank(p));
        if probes.is_empty() {
            return Ok(Source::Everyone);
        }
        let driver = probes.remove(0);
        Ok(Source::Index { driver, others: probes })
    }

    /// The next candidates after `after` (at most `step`), with their values.
    async fn candidates(
        &self,
        source: &Source<'_>,
        after: Option<&str>,
        step: i64,
        definitions: &[String],
    ) -> Result<(Vec<String>, Vec<ValueRow>), sqlx::Error> {
        let (tenant, attributes) = (self.tenant, self.attributes);
        match source {
            Source::Named(_) if after.is_some() => Ok((Vec::new(), Vec::new())),
            Source::Named(ids) => Ok((ids.clone(), attributes.values_for(tenant, ids, definitions).await?)),
            Source::Index { driver: (def, probe), others } => {
                attributes.scan(tenant, (def, probe), others, after, step, definitions).await
            }
            Source::Everyone => {
                let ids = self.users.ids_after(tenant, after, step).await?;
                let values = attributes.values_for(tenant, &ids, definitions).await?;
                Ok((ids, values))
            }
        }
    }
}

/// The users of `batch` (in order) whose values satisfy `rule`.
fn matching(rule: &[Compiled], batch: &[String], values: Vec<ValueRow>) -> Vec<(String, Vec<ValueRow>)> {
    let mut by_user: HashMap<String, Vec<ValueRow>> = HashMap::new();
    for v in values {
        by_user.entry(v.user_id.clone()).or_default().push(v);
    }
    let mut found = Vec::new();
    for user in batch {
        let mine = by_user.remove(user).unwrap_or_default();
        if rules::matches(rule, |id| mine.iter().find(|v| v.definition_id == id).map(|v| &v.value)) {
            found.push((user.clone(), mine));
        }
    }
    found
}
