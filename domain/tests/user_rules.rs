//! One test per business rule of the user stream, given/when/then.

use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use userstream_domain::user::{
    decide, evolve, replay, Context, CreateUser, EmailEntry, PhoneEntry, StartSession, UniqueKind, UpdateUser,
    UserCommand, UserError, UserEvent, UserState,
};
use userstream_domain::{Email, Name, Phone, UserId, Username};

const T0: OffsetDateTime = datetime!(2026-01-01 10:00 UTC);

fn ctx_at(now: OffsetDateTime) -> Context {
    Context::at(now)
}

fn create() -> UserCommand {
    UserCommand::Create(CreateUser {
        user_id: UserId::parse("user_id", "61f02c3dcc701256044ed6c0").expect("id"),
        username: Username::parse("username", "Alice").expect("username"),
        phone: Some(Phone::parse("phone_number", "9876543210").expect("phone")),
        email: Some(Email::parse("email", "alice@example.com").expect("email")),
        first_name: Some(Name::parse("first_name", "Alice").expect("name")),
        last_name: None,
        gender: None,
        meta: None,
        external_id: None,
        rr_id: None,
        verified: true,
    })
}

/// Given these commands (each must succeed), the resulting state.
fn given(commands: Vec<(UserCommand, OffsetDateTime)>) -> UserState {
    let mut state = UserState::NotCreated;
    for (c, at) in commands {
        let events = decide(&state, c, &ctx_at(at)).expect("given command succeeds");
        state = events.iter().fold(state, evolve);
    }
    state
}

fn email(e: &str, primary: bool) -> EmailEntry {
    EmailEntry { email: Email::parse("email", e).expect("email"), primary, verified: false, active: true }
}

fn phone(p: &str, primary: bool) -> PhoneEntry {
    PhoneEntry { phone: Phone::parse("phone", p).expect("phone"), primary, verified: false, active: true }
}

#[test]
fn creating_a_user_records_user_created_with_primary_email_and_phone() {
    let events = decide(&UserState::NotCreated, create(), &ctx_at(T0)).expect("created");
    let [UserEvent::Created(e)] = events.as_slice() else { panic!("expected one UserCreated, got {events:?}") };
    assert_eq!(e.emails, vec![EmailEntry { primary: true, verified: true, ..email("alice@example.com", true) }]);
    assert_eq!(e.phone_numbers.len(), 1);
    assert!(e.phone_numbers[0].primary);
    assert_eq!(e.at, T0);
    assert_eq!(e.account_type, "user");
}

#[test]
fn creating_a_user_that_exists_is_refused() {
    let state = given(vec![(create(), T0)]);
    assert_eq!(decide(&state, create(), &ctx_at(T0)), Err(UserError::AlreadyExists));
}

#[test]
fn updating_a_user_that_does_not_exist_is_refused() {
    let update = UserCommand::Update(UpdateUser::default());
    assert_eq!(decide(&UserState::NotCreated, update, &ctx_at(T0)), Err(UserError::NotFound));
}

#[test]
fn an_update_that_changes_nothing_emits_nothing() {
    let state = given(vec![(create(), T0)]);
    let same = UpdateUser { first_name: Some(Name::parse("first_name", "Alice").expect("name")), ..Default::default() };
    assert_eq!(decide(&state, UserCommand::Update(same), &ctx_at(T0)), Ok(vec![]));
}

#[test]
fn an_update_records_only_the_fields_that_changed() {
    let state = given(vec![(create(), T0)]);
    let update = UpdateUser {
        first_name: Some(Name::parse("first_name", "Alice").expect("name")),
        last_name: Some(Name::parse("last_name", "Smith").expect("name")),
        ..Default::default()
    };
    let events = decide(&state, UserCommand::Update(update), &ctx_at(T0 + Duration::hours(1))).expect("ok");
    let [UserEvent::Updated(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(e.first_name, None);
    assert_eq!(e.last_name.as_ref().map(|n| n.as_str()), Some("Smith"));
    let after = events.iter().fold(state, evolve);
    assert_eq!(after.live().map(|u| u.updated_at), Some(T0 + Duration::hours(1)));
}

#[test]
fn emails_listed_twice_in_an_update_are_refused() {
    let state = given(vec![(create(), T0)]);
    let update = UpdateUser { emails: Some(vec![email("a@b.co", true), email("A@b.co", false)]), ..Default::default() };
    assert!(matches!(
        decide(&state, UserCommand::Update(update), &ctx_at(T0)),
        Err(UserError::DuplicateInList { field: "emails", .. })
    ));
}

#[test]
fn two_primary_phone_numbers_are_refused() {
    let state = given(vec![(create(), T0)]);
    let update = UpdateUser {
        phone_numbers: Some(vec![phone("9876500001", true), phone("9876500002", true)]),
        ..Default::default()
    };
    assert_eq!(
        decide(&state, UserCommand::Update(update), &ctx_at(T0)),
        Err(UserError::SeveralPrimaries { field: "phone_numbers" })
    );
}

#[test]
fn removing_every_email_and_phone_number_is_refused() {
    let state = given(vec![(create(), T0)]);
    let update = UpdateUser { phone_numbers: Some(vec![]), emails: Some(vec![]), ..Default::default() };
    assert_eq!(decide(&state, UserCommand::Update(update), &ctx_at(T0)), Err(UserError::NoContact));
}

#[test]
fn removing_the_phone_numbers_of_a_user_with_an_email_is_accepted() {
    let state = given(vec![(create(), T0)]);
    let update = UpdateUser { phone_numbers: Some(vec![]), ..Default::default() };
    let events = decide(&state, UserCommand::Update(update), &ctx_at(T0)).expect("accepted");
    assert!(matches!(events.as_slice(), [UserEvent::Updated(u)] if u.phone_numbers == Some(vec![])));
}

#[test]
fn creating_a_user_without_email_and_phone_is_refused() {
    let UserCommand::Create(mut c) = create() else { unreachable!() };
    c.email = None;
    c.phone = None;
    assert_eq!(decide(&UserState::NotCreated, UserCommand::Create(c), &ctx_at(T0)), Err(UserError::NoContact));
}

fn login(id: &str, max_age: i64, rolling: bool) -> UserCommand {
    UserCommand::StartSession(StartSession {
        session_id: id.into(),
        domain: "shop.example".into(),
        user_agent: "test".into(),
        ip: "127.0.0.1".into(),
        max_age,
        rolling,
    })
}

fn sessions_of(state: &UserState, now: OffsetDateTime) -> Vec<String> {
    match state {
        UserState::Live(u) | UserState::Archived { user: u, .. } => u.active_sessions(now),
        UserState::NotCreated | UserState::Erased { .. } => vec![],
    }
}

#[test]
fn a_login_starts_a_session_and_counts_it() {
    let state = given(vec![(create(), T0), (login("s1", 3600, false), T0), (login("s2", 60, false), T0)]);
    let Some(user) = state.live() else { panic!("live") };
    assert_eq!(user.login_count, 2);
    assert_eq!(user.last_login_at, Some(T0));
    assert_eq!(sessions_of(&state, T0), vec!["s1".to_string(), "s2".to_string()]);
    assert_eq!(sessions_of(&state, T0 + Duration::minutes(2)), vec!["s1".to_string()], "s2 expired");
}

#[test]
fn blocking_or_archiving_revokes_every_active_session_in_the_same_append() {
    for command in [UserCommand::Block { reason: "fraud".into() }, UserCommand::Archive] {
        let state = given(vec![(create(), T0), (login("s1", 3600, false), T0), (login("s2", 3600, false), T0)]);
        let events = decide(&state, command, &ctx_at(T0)).expect("accepted");
        let [_, UserEvent::SessionsRevoked(r)] = events.as_slice() else { panic!("got {events:?}") };
        assert_eq!(r.session_ids, vec!["s1".to_string(), "s2".to_string()]);
        let after = events.iter().fold(state, evolve);
        assert!(sessions_of(&after, T0).is_empty());
    }
}

#[test]
fn a_blocked_user_cannot_start_a_session() {
    let state = given(vec![(create(), T0), (UserCommand::Block { reason: String::new() }, T0)]);
    assert_eq!(decide(&state, login("s1", 60, false), &ctx_at(T0)), Err(UserError::Blocked));
}

#[test]
fn revoking_a_session_the_user_does_not_have_is_refused() {
    let state = given(vec![(create(), T0), (login("s1", 60, false), T0)]);
    let revoke = UserCommand::RevokeSessions { session_ids: Some(vec!["other".into()]), reason: String::new() };
    assert_eq!(decide(&state, revoke, &ctx_at(T0)), Err(UserError::SessionNotFound("other".into())));
    let expired = UserCommand::RevokeSessions { session_ids: Some(vec!["s1".into()]), reason: String::new() };
    assert!(decide(&state, expired, &ctx_at(T0 + Duration::minutes(5))).is_err(), "expired sessions are gone");
}

#[test]
fn a_rolling_session_is_extended_once_half_its_life_is_used() {
    let state = given(vec![(create(), T0), (login("s1", 3600, true), T0)]);
    let touch = || UserCommand::TouchSession { session_id: "s1".into() };
    assert_eq!(decide(&state, touch(), &ctx_at(T0 + Duration::minutes(10))), Ok(vec![]), "plenty of life left");
    let later = T0 + Duration::minutes(40);
    let events = decide(&state, touch(), &ctx_at(later)).expect("extended");
    let [UserEvent::SessionExtended(e)] = events.as_slice() else { panic!("got {events:?}") };
    assert_eq!(e.expires_at, later + Duration::hours(1));
    let fixed = given(vec![(create(), T0), (login("s1", 3600, false), T0)]);
    assert_eq!(decide(&fixed, touch(), &ctx_at(later)), Ok(vec![]), "non-rolling sessions never extend");
}

#[test]
fn replaced_lists_without_a_primary_make_the_first_entry_primary() {
    let state = given(vec![(create(), T0)]);
    let update =
        UpdateUser { emails: Some(vec![email("x@y.co", false), email("z@y.co", false)]), ..Default::default() };
    let events = decide(&state, UserCommand::Update(update), &ctx_at(T0)).expect("ok");
    let after = events.iter().fold(state, evolve);
    let user = after.live().expect("live");
    assert_eq!(user.emails.iter().map(|e| e.primary).collect::<Vec<_>>(), vec![true, false]);
}

#[test]
fn replacing_emails_moves_the_unique_values_the_user_holds() {
    let state = given(vec![(create(), T0)]);
    let update = UpdateUser { emails: Some(vec![email("new@example.com", true)]), ..Default::default() };
    let events = decide(&state, UserCommand::Update(update), &ctx_at(T0)).expect("ok");
    let after = events.iter().fold(state, evolve);
    let keys = after.unique_keys();
    assert!(keys.contains(&(UniqueKind::Email, "new@example.com".into())));
    assert!(!keys.contains(&(UniqueKind::Email, "alice@example.com".into())));
}

#[test]
fn blocking_an_active_user_records_user_blocked() {
    let state = given(vec![(create(), T0)]);
    let events = decide(&state, UserCommand::Block { reason: "fraud".into() }, &ctx_at(T0)).expect("ok");
    assert!(matches!(events.as_slice(), [UserEvent::Blocked(b)] if b.reason == "fraud"));
    assert!(events.iter().fold(state, evolve).live().is_some_and(|u| u.blocked));
}

#[test]
fn blocking_a_blocked_user_emits_nothing() {
    let state = given(vec![(create(), T0), (UserCommand::Block { reason: String::new() }, T0)]);
    assert_eq!(decide(&state, UserCommand::Block { reason: String::new() }, &ctx_at(T0)), Ok(vec![]));
}

#[test]
fn unblocking_an_active_user_emits_nothing() {
    let state = given(vec![(create(), T0)]);
    assert_eq!(decide(&state, UserCommand::Unblock { reason: String::new() }, &ctx_at(T0)), Ok(vec![]));
}

#[test]
fn unblocking_a_blocked_user_records_user_unblocked() {
    let state = given(vec![(create(), T0), (UserCommand::Block { reason: String::new() }, T0)]);
    let events = decide(&state, UserCommand::Unblock { reason: "ok".into() }, &ctx_at(T0)).expect("ok");
    assert!(matches!(events.as_slice(), [UserEvent::Unblocked(_)]));
}

#[test]
fn archived_user_frees_email_phone_and_username_for_new_registration() {
    let state = given(vec![(create(), T0)]);
    assert_eq!(state.unique_keys().len(), 3);
    let archived = given(vec![(create(), T0), (UserCommand::Archive, T0)]);
    assert!(matches!(archived, UserState::Archived { .. }));
    assert!(archived.unique_keys().is_empty());
}

#[test]
fn archiving_an_archived_user_emits_nothing() {
    let state = given(vec![(create(), T0), (UserCommand::Archive, T0)]);
    assert_eq!(decide(&state, UserCommand::Archive, &ctx_at(T0)), Ok(vec![]));
}

#[test]
fn an_archived_user_cannot_be_blocked_or_updated() {
    let state = given(vec![(create(), T0), (UserCommand::Archive, T0)]);
    assert_eq!(decide(&state, UserCommand::Block { reason: String::new() }, &ctx_at(T0)), Err(UserError::NotFound));
    assert_eq!(decide(&state, UserCommand::Update(UpdateUser::default()), &ctx_at(T0)), Err(UserError::NotFound));
}

#[test]
fn restoring_within_the_window_brings_the_user_back_with_its_values() {
    let state = given(vec![(create(), T0), (UserCommand::Archive, T0)]);
    let later = T0 + Duration::days(29);
    let events = decide(&state, UserCommand::Restore { reason: "asked".into() }, &ctx_at(later)).expect("ok");
    let after = events.iter().fold(state, evolve);
    assert_eq!(after.unique_keys().len(), 3);
    assert!(after.live().is_some());
}

#[test]
fn restoring_after_the_window_is_refused() {
    let state = given(vec![(create(), T0), (UserCommand::Archive, T0)]);
    let later = T0 + Duration::days(30) + Duration::seconds(1);
    assert_eq!(
        decide(&state, UserCommand::Restore { reason: String::new() }, &ctx_at(later)),
        Err(UserError::RestoreWindowPassed { days: 30 })
    );
}

#[test]
fn the_restore_window_follows_delete_account_day() {
    let state = given(vec![(create(), T0), (UserCommand::Archive, T0)]);
    let ctx = Context { delete_account_day: 2, ..Context::at(T0 + Duration::days(3)) };
    assert_eq!(
        decide(&state, UserCommand::Restore { reason: String::new() }, &ctx),
        Err(UserError::RestoreWindowPassed { days: 2 })
    );
}

#[test]
fn restoring_a_live_user_emits_nothing() {
    let state = given(vec![(create(), T0)]);
    assert_eq!(decide(&state, UserCommand::Restore { reason: String::new() }, &ctx_at(T0)), Ok(vec![]));
}

#[test]
fn restoring_a_user_that_never_existed_is_refused() {
    assert_eq!(
        decide(&UserState::NotCreated, UserCommand::Restore { reason: String::new() }, &ctx_at(T0)),
        Err(UserError::NotFound)
    );
}

#[test]
fn a_blocked_user_stays_blocked_through_archive_and_restore() {
    let state = given(vec![
        (create(), T0),
        (UserCommand::Block { reason: String::new() }, T0),
        (UserCommand::Archive, T0),
        (UserCommand::Restore { reason: String::new() }, T0),
    ]);
    assert!(state.live().is_some_and(|u| u.blocked));
}

#[test]
fn evolve_ignores_events_that_do_not_fit_the_state() {
    let blocked = UserEvent::Blocked(userstream_domain::codec::v1::UserBlocked { reason: String::new(), at: T0 });
    assert_eq!(replay([&blocked]), UserState::NotCreated);
}

#[test]
fn erasing_a_user_frees_its_values_and_every_later_command_is_not_found() {
    let erase = || UserCommand::Erase { reason: "request".into() };
    let erased = given(vec![(create(), T0), (erase(), T0)]);
    assert!(matches!(erased, UserState::Erased { .. }));
    assert!(erased.unique_keys().is_empty() && erased.live().is_none());
    assert_eq!(decide(&erased, erase(), &ctx_at(T0)), Ok(vec![]), "a second erase changes nothing");
    assert_eq!(decide(&erased, UserCommand::Restore { reason: String::new() }, &ctx_at(T0)), Err(UserError::NotFound));
    assert_eq!(decide(&erased, UserCommand::Archive, &ctx_at(T0)), Err(UserError::NotFound));
    let archived_then_erased = given(vec![(create(), T0), (UserCommand::Archive, T0), (erase(), T0)]);
    assert!(matches!(archived_then_erased, UserState::Erased { .. }));
    assert_eq!(decide(&UserState::NotCreated, erase(), &ctx_at(T0)), Err(UserError::NotFound));
}

#[test]
fn personal_fields_are_named_per_event_type_and_subjects_are_users() {
    use userstream_domain::codec::{personal_fields, subject_of};
    let created =
        serde_json::json!({"username": "a", "emails": [], "phone_numbers": [], "meta": {}, "account_type": "user"});
    assert_eq!(personal_fields("user.created", &created), vec!["username", "emails", "phone_numbers", "meta"]);
    assert_eq!(
        personal_fields("user.session_started", &serde_json::json!({"ip": "1", "user_agent": "x", "domain": "d"})),
        vec!["user_agent", "ip"]
    );
    assert!(personal_fields("attribute.upserted", &serde_json::json!({"value": 3})).is_empty());
    assert_eq!(personal_fields("attribute.upserted", &serde_json::json!({"value": {"enc": "v1:x"}})), vec!["value"]);
    assert!(personal_fields("user.blocked", &serde_json::json!({"reason": "r"})).is_empty());
    assert_eq!(subject_of("attrs-abc").as_deref(), Some("user-abc"));
    assert_eq!(subject_of("user-abc").as_deref(), Some("user-abc"));
    assert_eq!(subject_of("group-abc"), None);
}
