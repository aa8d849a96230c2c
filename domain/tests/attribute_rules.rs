//! Business rules of attribute definitions, values, group rules and groups,
//! given/when/then.

use serde_json::{json, Value};
use time::macros::datetime;
use time::OffsetDateTime;
use userstream_domain::attribute::{
    decide_definition, decide_values, evolve_definition, evolve_values, AttrError, AttrType, Definition,
    DefinitionCommand, DefinitionState, NewValue, Validation, ValuesCommand, ValuesEvent, ValuesState,
};
use userstream_domain::group::{self, Cause, GroupCommand, GroupDetails, GroupError, GroupEvent, GroupState};
use userstream_domain::rules::{compile, index_keys, matches, Condition, Op, RuleError};

const T0: OffsetDateTime = datetime!(2026-01-01 10:00 UTC);

fn definition(id: &str, kind: AttrType, validations: Vec<Validation>) -> Definition {
    let mut d = Definition::new(id, kind);
    d.name = id.into();
    d.slug = id.into();
    d.validations = validations;
    d
}

fn rule_of(e: Result<Value, AttrError>) -> &'static str {
    match e {
        Err(AttrError::Rule { rule, .. }) => rule,
        other => panic!("expected a rule error, got {other:?}"),
    }
}

#[test]
fn a_value_of_the_wrong_type_is_refused_naming_the_rule() {
    let age = definition("age", AttrType::Number, vec![]);
    assert_eq!(rule_of(age.validate(&json!("forty"))), "type");
    let flag = definition("vip", AttrType::Boolean, vec![]);
    assert_eq!(rule_of(flag.validate(&json!("yes"))), "type");
    let day = definition("birthday", AttrType::Date, vec![]);
    assert_eq!(rule_of(day.validate(&json!("31/12/2000"))), "type");
    assert_eq!(day.validate(&json!("2000-12-31")), Ok(json!("2000-12-31")));
}

#[test]
fn values_breaking_min_max_regex_or_enum_are_refused_naming_the_rule() {
    let age = definition("age", AttrType::Number, vec![Validation::Min(18.0), Validation::Max(120.0)]);
    assert_eq!(rule_of(age.validate(&json!(17))), "min");
    assert_eq!(rule_of(age.validate(&json!(121))), "max");
    assert_eq!(age.validate(&json!(40)), Ok(json!(40.0)));
    let code =
        definition("code", AttrType::String, vec![Validation::Regex("^[A-Z]{3}$".into()), Validation::MaxLength(3)]);
    assert_eq!(rule_of(code.validate(&json!("abc"))), "regex");
    let tier = definition("tier", AttrType::Enum, vec![Validation::Enum(vec!["gold".into(), "silver".into()])]);
    assert_eq!(rule_of(tier.validate(&json!("bronze"))), "enum");
    assert_eq!(tier.validate(&json!("gold")), Ok(json!("gold")));
}

#[test]
fn emails_phones_and_datetimes_are_normalised() {
    let email = definition("mail", AttrType::Email, vec![]);
    assert_eq!(email.validate(&json!("A@B.com")), Ok(json!("a@b.com")));
    let when = definition("seen", AttrType::Datetime, vec![]);
    assert_eq!(when.validate(&json!("2026-01-01T12:00:00+02:00")), Ok(json!("2026-01-01T10:00:00Z")));
}

#[test]
fn a_multi_value_attribute_takes_a_list_and_checks_every_item() {
    let mut tags = definition("tags", AttrType::String, vec![Validation::MaxLength(5)]);
    tags.multi_value = true;
    assert_eq!(rule_of(tags.validate(&json!("one"))), "type");
    assert_eq!(rule_of(tags.validate(&json!(["ok", "too long"]))), "max_length");
    assert_eq!(tags.validate(&json!(["a", "b"])), Ok(json!(["a", "b"])));
}

#[test]
fn definitions_whose_validations_do_not_fit_their_type_are_refused() {
    let bad = definition("flag", AttrType::Boolean, vec![Validation::Min(1.0)]);
    assert!(matches!(bad.check(), Err(AttrError::Invalid { field: "validations", .. })));
    let no_values = definition("tier", AttrType::Enum, vec![]);
    assert!(no_values.check().is_err());
    let bad_regex = definition("code", AttrType::String, vec![Validation::Regex("(".into())]);
    assert!(bad_regex.check().is_err());
    let mut bad_default = definition("age", AttrType::Number, vec![Validation::Min(18.0)]);
    bad_default.default_value = Some(json!(3));
    assert!(matches!(bad_default.check(), Err(AttrError::Invalid { field: "default_value", .. })));
}

#[test]
fn a_locked_definition_refuses_edits_and_deletion() {
    let mut d = definition("age", AttrType::Number, vec![]);
    d.is_locked = true;
    let events =
        decide_definition(&DefinitionState::NotCreated, DefinitionCommand::Create(d.clone()), T0).expect("created");
    let state = events.iter().fold(DefinitionState::NotCreated, evolve_definition);
    let mut changed = d.clone();
    changed.name = "Years".into();
    assert_eq!(decide_definition(&state, DefinitionCommand::Update(changed), T0), Err(AttrError::Locked("age".into())));
    assert_eq!(decide_definition(&state, DefinitionCommand::Delete, T0), Err(AttrError::Locked("age".into())));
}

#[test]
fn upserting_the_same_value_emits_nothing_and_a_changed_value_keeps_its_id() {
    let new = |v: Value, id: &str| NewValue {
        definition_id: "age".into(),
        new_attribute_id: id.into(),
        value: v,
        customer_overridden: false,
    };
    let events =
        decide_values(&ValuesState::default(), ValuesCommand::Upsert(vec![new(json!(30.0), "a1")]), T0).expect("ok");
    let state = events.iter().fold(ValuesState::default(), evolve_values);
    assert!(decide_values(&state, ValuesCommand::Upsert(vec![new(json!(30.0), "a2")]), T0).expect("ok").is_empty());
    let events = decide_values(&state, ValuesCommand::Upsert(vec![new(json!(31.0), "a3")]), T0).expect("ok");
    let [ValuesEvent::Upserted(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(e.attribute_id, "a1");
    let missing = ValuesCommand::Delete { definition_ids: vec!["other".into()], ignore_missing: false };
    assert_eq!(decide_values(&state, missing, T0), Err(AttrError::NoValue("other".into())));
}

fn cond(id: &str, op: Op, value: &str) -> Condition {
    Condition { user_attribute_definition_id: id.into(), op, value: value.into() }
}

#[test]
fn operators_a_type_has_no_meaning_for_are_refused() {
    let defs = [definition("vip", AttrType::Boolean, vec![]), definition("age", AttrType::Number, vec![])];
    let find = |id: &str| defs.iter().find(|d| d.id == id);
    assert!(matches!(compile(&[cond("vip", Op::Gt, "true")], find), Err(RuleError::Unsupported { op: "gt", .. })));
    assert!(matches!(compile(&[cond("age", Op::Between, "18")], find), Err(RuleError::BadValue { .. })));
    assert!(matches!(compile(&[cond("age", Op::Eq, "old")], find), Err(RuleError::BadValue { .. })));
    assert!(matches!(compile(&[cond("nope", Op::Eq, "1")], find), Err(RuleError::UnknownDefinition { .. })));
    let mut secret = definition("ssn", AttrType::String, vec![]);
    secret.encrypted = true;
    assert!(matches!(compile(&[cond("ssn", Op::Exists, "")], |_| Some(&secret)), Err(RuleError::Encrypted { .. })));
}

#[test]
fn every_condition_must_hold() {
    let mut interests = definition("interests", AttrType::String, vec![]);
    interests.multi_value = true;
    let defs = [definition("age", AttrType::Number, vec![]), definition("city", AttrType::String, vec![]), interests];
    let find = |id: &str| defs.iter().find(|d| d.id == id);
    let rule = compile(
        &[cond("age", Op::Between, "18,65"), cond("city", Op::In, "pune,goa"), cond("interests", Op::Contains, "golf")],
        find,
    )
    .expect("compiles");
    let user = |age: f64, city: &str, interests: Value| {
        let values = [("age", json!(age)), ("city", json!(city)), ("interests", interests)];
        matches(&rule, |id| values.iter().find(|(k, _)| *k == id).map(|(_, v)| v))
    };
    assert!(user(30.0, "goa", json!(["golf", "chess"])));
    assert!(user(18.0, "pune", json!(["golf"])), "between is inclusive");
    assert!(!user(66.0, "goa", json!(["golf"])));
    assert!(!user(30.0, "delhi", json!(["golf"])));
    assert!(!user(30.0, "goa", json!(["chess"])));

    let absent = compile(&[cond("city", Op::NotExists, ""), cond("age", Op::Neq, "30")], find).expect("compiles");
    assert!(matches(&absent, |_| None), "not_exists and neq hold for a user without values");
    let present = compile(&[cond("city", Op::Exists, "")], find).expect("compiles");
    assert!(!matches(&present, |_| None));
}

fn details(conditions: Vec<Condition>) -> GroupDetails {
    GroupDetails {
        name: "G".into(),
        description: String::new(),
        kind: String::new(),
        category: String::new(),
        tags: vec![],
        conditions,
        file_url: String::new(),
    }
}

fn live_group(conditions: Vec<Condition>) -> GroupState {
    let create = GroupCommand::Create { id: "g1".into(), uid: 1, details: details(conditions) };
    group::decide(&GroupState::NotCreated, create, T0)
        .expect("created")
        .iter()
        .fold(GroupState::NotCreated, group::evolve)
}

#[test]
fn adding_a_member_twice_changes_nothing_and_appends_nothing() {
    let state = live_group(vec![]);
    let patch = || GroupCommand::PatchMembers { add: vec!["u1".into()], remove: vec![], unmatched: 0 };
    let events = group::decide(&state, patch(), T0).expect("ok");
    let [GroupEvent::MembershipChanged(m)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!((m.joined.clone(), m.cause.clone()), (vec!["u1".to_string()], Cause::Manual));
    let state = events.iter().fold(state, group::evolve);
    assert!(group::decide(&state, patch(), T0).expect("ok").is_empty());
    let remove = GroupCommand::PatchMembers { add: vec![], remove: vec!["u2".into()], unmatched: 0 };
    assert!(group::decide(&state, remove, T0).expect("ok").is_empty(), "removing a non-member is a no-op");
}

#[test]
fn a_rule_group_refuses_manual_members_and_new_conditions_start_a_new_generation() {
    let state = live_group(vec![cond("age", Op::Gte, "18")]);
    let patch = GroupCommand::PatchMembers { add: vec!["u1".into()], remove: vec![], unmatched: 0 };
    assert_eq!(group::decide(&state, patch, T0), Err(GroupError::RuleGroupMembers));
    let events =
        group::decide(&state, GroupCommand::Update(details(vec![cond("age", Op::Gte, "21")])), T0).expect("ok");
    let [GroupEvent::Updated(u)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(u.rule_version, 2);
    let renamed = GroupDetails { name: "H".into(), ..details(vec![cond("age", Op::Gte, "18")]) };
    let events = group::decide(&state, GroupCommand::Update(renamed), T0).expect("ok");
    let [GroupEvent::Updated(u)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(u.rule_version, 1, "a rename is not a new rule");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
    /// Index probes may over-select but never miss: whenever a condition
    /// holds for a value, its probe admits that value's index keys; and the
    /// conditions without a probe are exactly those that hold without a value.
    /// A single value's index keys decide its conditions as the value does.
    #[test]
    fn an_index_probe_admits_every_value_its_condition_holds_for(
        op in proptest::sample::select(vec![Op::Eq, Op::Neq, Op::Gt, Op::Gte, Op::Lt, Op::Lte, Op::In, Op::Nin, Op::Exists, Op::NotExists, Op::Between, Op::Contains]),
        kind in proptest::sample::select(vec![AttrType::Number, AttrType::String, AttrType::Boolean]),
        a in -2i32..2, b in -2i32..2, v in -3i32..3, multi in proptest::bool::ANY, half in proptest::bool::ANY,
    ) {
        let mut d = definition("d", kind, vec![]);
        d.multi_value = multi;
        let (operand, value) = match kind {
            AttrType::Number if half => (format!("{a},{b}"), json!(f64::from(v) / 2.0)),
            AttrType::Number => (format!("{a},{b}"), json!(v)),
            AttrType::Boolean => ((a > 0).to_string(), json!(v > 0)),
            // Text that reads like a boolean stays text.
            _ if half => (format!("k{a},true"), json!(if v > 0 { "true" } else { "false" })),
            _ => (format!("k{a},k{b}"), json!(format!("k{v}"))),
        };
        let operand = if matches!(op, Op::In | Op::Nin | Op::Between) { operand } else { operand.split(',').next().unwrap_or_default().to_string() };
        let value = if multi { json!([value]) } else { value };
        let Ok(rule) = compile(&[cond("d", op, &operand)], |id| (id == "d").then_some(&d)) else { return Ok(()) };
        let c = &rule[0];
        // The index keys alone decide a single value's conditions.
        let (n, t) = index_keys(&value);
        let expected = |held: bool| (!multi).then_some(held);
        proptest::prop_assert_eq!(c.holds_keys(Some((n, t.as_deref()))), expected(c.holds(Some(&value))), "{:?} {} on {}", op, operand, value);
        proptest::prop_assert_eq!(c.holds_keys(None), expected(c.holds(None)), "{:?} {} without a value", op, operand);
        match c.probe() {
            None => proptest::prop_assert!(c.holds(None), "{op:?} has no probe but needs a value"),
            Some(probe) => {
                proptest::prop_assert!(!c.holds(None), "{op:?} holds without a value but has a probe");
                if c.holds(Some(&value)) {
                    let (n, t) = index_keys(&value);
                    proptest::prop_assert!(multi || probe.admits(n, t.as_deref()), "{op:?} {operand} holds for {value} but {probe:?} misses it");
                    proptest::prop_assert!(!multi || probe == userstream_domain::rules::Probe::Exists);
                }
            }
        }
    }
}
