//! User groups (stream `group-{id}`): details, conditions, and membership.
//!
//! - A group with `conditions` is a rule group: its members are exactly the
//!   users whose attributes satisfy every condition. The membership engine
//!   keeps it so and records each change as `group.membership_changed`.
//! - A group without conditions is a manual group: members are added and
//!   removed by PatchGroupMembers. Adding a member twice changes nothing and
//!   appends nothing, so the state holds the member set.
//! - Membership events carry many users at once (a full evaluation of a rule
//!   over a million users is a few hundred events, not a million), and the
//!   cause of the change.

use crate::rules::Condition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use time::OffsetDateTime;

/// The details a client sets. Frozen as the payload of the v1 group events;
/// new fields must have serde defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupDetails {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The client's `type` (free text in the Fynd API; `conditional` or `manual` by default).
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub file_url: String,
}

impl GroupDetails {
    /// The client's `type`, or `conditional` / `manual` when it sent none.
    pub fn kind_or_default(&self) -> &str {
        match (self.kind.is_empty(), self.is_rule()) {
            (false, _) => &self.kind,
            (true, true) => "conditional",
            (true, false) => "manual",
        }
    }

    pub fn is_rule(&self) -> bool {
        !self.conditions.is_empty()
    }

    pub fn check(&self) -> Result<(), GroupError> {
        if self.name.trim().is_empty() || self.name.chars().count() > 128 {
            return Err(GroupError::Invalid { field: "name", message: "must be 1 to 128 characters".into() });
        }
        if self.description.chars().count() > 1024 {
            return Err(GroupError::Invalid { field: "description", message: "at most 1024 characters".into() });
        }
        if self.tags.len() > 20 || self.tags.iter().any(|t| t.trim().is_empty() || t.chars().count() > 64) {
            return Err(GroupError::Invalid { field: "tags", message: "at most 20 tags of 1 to 64 characters".into() });
        }
        if self.category.chars().count() > 64 {
            return Err(GroupError::Invalid { field: "category", message: "at most 64 characters".into() });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum GroupState {
    #[default]
    NotCreated,
    Live(Box<Group>),
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: String,
    pub uid: i64,
    pub details: GroupDetails,
    /// Bumped by every change of the conditions; the engine evaluates each
    /// generation over all users once.
    pub rule_version: i64,
    /// Members of a manual group (rule groups' members live with the engine).
    pub members: BTreeSet<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupCommand {
    Create {
        id: String,
        uid: i64,
        details: GroupDetails,
    },
    Update(GroupDetails),
    Delete,
    /// Evaluate a rule group again over all users (a new rule generation).
    Refresh,
    /// PatchGroupMembers on a manual group; `unmatched` counts rows that named no user.
    PatchMembers {
        add: Vec<String>,
        remove: Vec<String>,
        unmatched: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("{field} is invalid: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("group not found")]
    NotFound,
    #[error("group already exists")]
    AlreadyExists,
    #[error("the members of a rule group follow its conditions; edit the conditions instead")]
    RuleGroupMembers,
}

/// `group.created` / `group.updated` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupWritten {
    pub group_id: String,
    pub uid: i64,
    pub details: GroupDetails,
    pub rule_version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `group.deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupDeleted {
    pub group_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Why membership changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Cause {
    /// PatchGroupMembers.
    Manual,
    /// The event at this position (an attribute, user or definition change).
    Event { position: i64, event_type: String },
    /// A full evaluation of the rule generation `rule_version`.
    Evaluation { rule_version: i64 },
}

/// `group.membership_changed` v1: users who joined and left, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipChanged {
    pub group_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
    /// Rows of a manual patch that named no user.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmatched: i64,
    pub cause: Cause,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// `group.evaluated` v1: the engine finished evaluating a rule generation
/// over all users; the group is `active` from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupEvaluated {
    pub group_id: String,
    pub rule_version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupEvent {
    Created(GroupWritten),
    Updated(GroupWritten),
    Deleted(GroupDeleted),
    MembershipChanged(MembershipChanged),
    Evaluated(GroupEvaluated),
}

pub fn decide(state: &GroupState, command: GroupCommand, now: OffsetDateTime) -> Result<Vec<GroupEvent>, GroupError> {
    match (state, command) {
        (GroupState::NotCreated, GroupCommand::Create { id, uid, details }) => {
            details.check()?;
            let rule_version = i64::from(details.is_rule());
            Ok(vec![GroupEvent::Created(GroupWritten { group_id: id, uid, details, rule_version, at: now })])
        }
        (_, GroupCommand::Create { .. }) => Err(GroupError::AlreadyExists),
        (GroupState::Live(g), GroupCommand::Update(details)) => {
            details.check()?;
            if details == g.details {
                return Ok(vec![]);
            }
            let rule_version = if details.conditions != g.details.conditions && details.is_rule() {
                g.rule_version + 1
            } else {
                g.rule_version
            };
            // A rule group turned manual: the engine lets its rule members go.
            Ok(vec![GroupEvent::Updated(GroupWritten {
                group_id: g.id.clone(),
                uid: g.uid,
                details,
                rule_version,
                at: now,
            })])
        }
        (GroupState::Live(g), GroupCommand::Refresh) => Ok(if g.details.is_rule() {
            vec![GroupEvent::Updated(GroupWritten {
                group_id: g.id.clone(),
                uid: g.uid,
                details: g.details.clone(),
                rule_version: g.rule_version + 1,
                at: now,
            })]
        } else {
            vec![]
        }),
        (GroupState::Live(g), GroupCommand::Delete) => {
            Ok(vec![GroupEvent::Deleted(GroupDeleted { group_id: g.id.clone(), at: now })])
        }
        (GroupState::Live(g), GroupCommand::PatchMembers { .. }) if g.details.is_rule() => {
            Err(GroupError::RuleGroupMembers)
        }
        (GroupState::Live(g), GroupCommand::PatchMembers { add, remove, unmatched }) => {
            let joined: BTreeSet<String> = add.into_iter().filter(|u| !g.members.contains(u)).collect();
            let left: BTreeSet<String> =
                remove.into_iter().filter(|u| g.members.contains(u) && !joined.contains(u)).collect();
            if joined.is_empty() && left.is_empty() && unmatched == 0 {
                return Ok(vec![]);
            }
            Ok(vec![GroupEvent::MembershipChanged(MembershipChanged {
                group_id: g.id.clone(),
                joined: joined.into_iter().collect(),
                left: left.into_iter().collect(),
                unmatched,
                cause: Cause::Manual,
                at: now,
            })])
        }
        (GroupState::NotCreated | GroupState::Deleted, _) => Err(GroupError::NotFound),
    }
}

pub fn evolve(state: GroupState, event: &GroupEvent) -> GroupState {
    match (state, event) {
        (GroupState::NotCreated, GroupEvent::Created(e)) => GroupState::Live(Box::new(Group {
            id: e.group_id.clone(),
            uid: e.uid,
            details: e.details.clone(),
            rule_version: e.rule_version,
            members: BTreeSet::new(),
            created_at: e.at,
            updated_at: e.at,
        })),
        (GroupState::Live(mut g), GroupEvent::Updated(e)) => {
            g.details = e.details.clone();
            g.rule_version = e.rule_version;
            g.updated_at = e.at;
            GroupState::Live(g)
        }
        (GroupState::Live(_), GroupEvent::Deleted(_)) => GroupState::Deleted,
        (GroupState::Live(mut g), GroupEvent::MembershipChanged(e)) => {
            // Only manual membership is kept here; the engine owns rule members.
            if e.cause == Cause::Manual {
                for u in &e.joined {
                    g.members.insert(u.clone());
                }
                for u in &e.left {
                    g.members.remove(u);
                }
            }
            GroupState::Live(g)
        }
        (state, _) => state,
    }
}

/// The group stream kind (`group-{id}`). A live group holds its `uid`.
pub struct GroupStream;

impl crate::stream::Stream for GroupStream {
    const KIND: &'static str = "group";
    type State = GroupState;
    type Command = GroupCommand;
    type Event = GroupEvent;
    type Rejection = GroupError;

    fn decide(
        state: &GroupState,
        command: GroupCommand,
        ctx: &crate::stream::Context,
    ) -> Result<Vec<GroupEvent>, GroupError> {
        decide(state, command, ctx.now)
    }

    fn evolve(state: GroupState, event: &GroupEvent) -> GroupState {
        evolve(state, event)
    }

    fn encode(event: &GroupEvent) -> crate::codec::EncodedEvent {
        crate::codec::encode_group(event)
    }

    fn decode(event_type: &str, schema: u32, data: &str) -> Result<GroupEvent, crate::codec::DecodeError> {
        crate::codec::decode_group(event_type, schema, data)
    }

    fn command_name(command: &GroupCommand) -> &'static str {
        match command {
            GroupCommand::Create { .. } => "CreateGroup",
            GroupCommand::Update(_) => "UpdateGroup",
            GroupCommand::Delete => "DeleteGroup",
            GroupCommand::Refresh => "RefreshGroup",
            GroupCommand::PatchMembers { .. } => "PatchGroupMembers",
        }
    }

    fn unique_keys(state: &GroupState) -> Vec<String> {
        match state {
            GroupState::Live(g) => vec![format!("group_uid:{}", g.uid)],
            _ => Vec::new(),
        }
    }
}
