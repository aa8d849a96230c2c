//! The event codec: golden fixtures of every (type, version) ever written
//! decode forever, and encode → decode is the identity.

use proptest::prelude::*;
use std::path::Path;
use time::OffsetDateTime;
use userstream_domain::codec::{self, v1};
use userstream_domain::platform;
use userstream_domain::user::{EmailEntry, PhoneEntry, UserEvent};
use userstream_domain::{Email, Gender, Name, Phone, UserId, Username};

#[test]
fn every_golden_fixture_decodes_and_reencodes_to_the_same_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        let event_type = doc["type"].as_str().expect("type");
        let schema = doc["schema"].as_u64().expect("schema") as u32;
        if event_type.starts_with("attribute.definition_") {
            let event = codec::decode_definition(event_type, schema, &doc["data"]).expect("definition event");
            assert_eq!(codec::encode_definition(&event).data, doc["data"], "{}", path.display());
            seen.push(event_type.to_string());
            continue;
        }
        if event_type.starts_with("attribute.") {
            let event = codec::decode_values(event_type, schema, &doc["data"]).expect("attribute event");
            assert_eq!(codec::encode_values(&event).data, doc["data"], "{}", path.display());
            seen.push(event_type.to_string());
            continue;
        }
        if event_type.starts_with("group.") {
            let event = codec::decode_group(event_type, schema, &doc["data"]).expect("group event");
            assert_eq!(codec::encode_group(&event).data, doc["data"], "{}", path.display());
            seen.push(event_type.to_string());
            continue;
        }
        if event_type.starts_with("platform.") {
            let event = platform::decode(event_type, schema, &doc["data"])
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(platform::encode(&event).data, doc["data"], "{}", path.display());
            seen.push(event_type.to_string());
            continue;
        }
        let event =
            codec::decode(event_type, schema, &doc["data"]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let again = codec::encode(&event);
        assert_eq!((again.event_type, again.schema), (event_type, schema), "{}", path.display());
        assert_eq!(again.data, doc["data"], "{}", path.display());
        seen.push(event_type.to_string());
    }
    seen.sort();
    let mut all: Vec<String> = codec::USER_EVENT_TYPES.iter().map(|s| s.to_string()).collect();
    all.push(codec::PLATFORM_CONFIG_UPDATED.to_string());
    all.extend(codec::ATTRIBUTE_AND_GROUP_EVENT_TYPES.iter().map(|s| s.to_string()));
    all.sort();
    assert_eq!(seen, all, "every event type needs a golden fixture");
}

#[test]
fn unknown_types_and_versions_are_errors_not_guesses() {
    assert!(codec::decode("user.created", 99, &serde_json::json!({})).is_err());
    assert!(codec::decode("user.teleported", 1, &serde_json::json!({})).is_err());
    assert!(codec::decode("user.blocked", 1, &serde_json::json!({"reason": 5})).is_err());
}

fn time_strategy() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..4_000_000_000, 0u32..1_000_000).prop_map(|(s, us)| {
        OffsetDateTime::from_unix_timestamp(s).expect("in range") + time::Duration::microseconds(i64::from(us))
    })
}

fn name() -> impl Strategy<Value = Option<Name>> {
    proptest::option::of("[A-Za-z ]{0,20}".prop_map(|s| Name::parse("n", &s).expect("valid")))
}

fn emails() -> impl Strategy<Value = Vec<EmailEntry>> {
    proptest::collection::vec(("[a-z]{1,10}", any::<bool>(), any::<bool>()), 0..3).prop_map(|v| {
        v.into_iter()
            .map(|(l, p, a)| EmailEntry {
                email: Email::parse("e", &format!("{l}@example.com")).expect("valid"),
                primary: p,
                verified: a,
                active: !a,
            })
            .collect()
    })
}

fn phones() -> impl Strategy<Value = Vec<PhoneEntry>> {
    proptest::collection::vec(("[0-9]{6,10}", any::<bool>()), 1..3).prop_map(|v| {
        v.into_iter()
            .map(|(d, p)| PhoneEntry {
                // Built, not parsed: the log holds numbers of any age, also
                // ones today's metadata would refuse.
                phone: Phone { country_code: 91, number: d },
                primary: p,
                verified: p,
                active: true,
            })
            .collect()
    })
}

fn event() -> impl Strategy<Value = UserEvent> {
    prop_oneof![
        (
            "[0-9a-f]{24}",
            "[a-z]{3,12}",
            name(),
            name(),
            emails(),
            phones(),
            time_strategy(),
            proptest::option::of("[a-z0-9]{1,8}")
        )
            .prop_map(|(id, u, f, l, e, p, at, ext)| UserEvent::Created(v1::UserCreated {
                user_id: UserId::parse("id", &id).expect("valid"),
                username: Username::parse("u", &u).expect("valid"),
                first_name: f,
                last_name: l,
                gender: Some(Gender::Other),
                emails: e,
                phone_numbers: p,
                meta: serde_json::json!({"k": ext.clone()}),
                external_id: ext,
                rr_id: None,
                account_type: "user".into(),
                at,
            })),
        (name(), proptest::option::of(emails()), proptest::option::of(phones()), time_strategy()).prop_map(
            |(f, e, p, at)| {
                UserEvent::Updated(v1::UserUpdated {
                    first_name: f,
                    last_name: None,
                    gender: None,
                    meta: None,
                    external_id: None,
                    rr_id: Some("r".into()),
                    emails: e,
                    phone_numbers: p,
                    at,
                })
            }
        ),
        (".{0,20}", time_strategy()).prop_map(|(reason, at)| UserEvent::Blocked(v1::UserBlocked { reason, at })),
        (".{0,20}", time_strategy()).prop_map(|(reason, at)| UserEvent::Unblocked(v1::UserUnblocked { reason, at })),
        time_strategy().prop_map(|at| UserEvent::Archived(v1::UserArchived { at })),
        (".{0,20}", time_strategy()).prop_map(|(reason, at)| UserEvent::Restored(v1::UserRestored { reason, at })),
    ]
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity(e in event()) {
        let encoded = codec::encode(&e);
        let decoded = codec::decode(encoded.event_type, encoded.schema, &encoded.data).expect("decodes");
        prop_assert_eq!(decoded, e);
    }

    #[test]
    fn evolve_is_total_over_any_history(history in proptest::collection::vec(event(), 0..12)) {
        // Never panics, and a live state always has a phone to be reached on.
        let state = userstream_domain::user::replay(history.iter());
        if let Some(user) = state.live() {
            prop_assert!(!user.username.as_str().is_empty());
        }
    }
}
