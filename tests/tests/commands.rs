//! The command handler, on every backend: what it reads before deciding.

use time::OffsetDateTime;
use userstream_api::clock::Clock;
use userstream_api::commands::{CommandError, Commands, Meta, Rejection};
use userstream_domain::user::{Context, CreateUser, UserError};
use userstream_domain::{Email, Username};
use userstream_eventlog::{Db, EventLog, SqlEventLog, Tenant};
use userstream_tests::fresh_databases;

fn create(id: &userstream_domain::UserId, email: &str) -> CreateUser {
    CreateUser {
        user_id: id.clone(),
        username: Username::parse("username", email.split('@').next().unwrap_or("u")).expect("username"),
        phone: None,
        email: Some(Email::parse("email", email).expect("email")),
        first_name: None,
        last_name: None,
        gender: None,
        meta: None,
        external_id: None,
        rr_id: None,
        verified: true,
    }
}

/// A create reads nothing first (its id is fresh), yet an id that exists
/// after all is decided on what the stream holds: refused as "already
/// exists", never merged, nothing appended.
#[tokio::test]
async fn a_create_whose_minted_id_exists_already_is_refused_not_merged() {
    for db in fresh_databases().await {
        let log = SqlEventLog::open(Db::connect(&db.url).await.expect("connect")).await.expect("log");
        let commands = Commands::new(log.clone(), Clock::system());
        let tenant = Tenant { company_id: "1".into(), application_id: "app".into() };
        let meta = Meta { tenant, actor: "t".into(), correlation_id: "c".into(), idempotency_key: None };
        let ctx = Context::at(OffsetDateTime::now_utc());
        let id = ctx.id(0);
        commands.create_user(&meta, create(&id, "first@example.com"), &ctx).await.expect("first create");
        let head = log.head().await.expect("head");
        let again = commands.create_user(&meta, create(&id, "second@example.com"), &ctx).await;
        match again {
            Err(CommandError::Rejected(Rejection::User(UserError::AlreadyExists))) => {}
            Err(e) => panic!("{}: expected already exists, got {e:?}", db.backend),
            Ok(_) => panic!("{}: a second create of the same id succeeded", db.backend),
        }
        assert_eq!(log.head().await.expect("head"), head, "{}: nothing appended", db.backend);
        let stream = log.read_stream(&format!("user-{id}")).await.expect("stream");
        assert_eq!(stream.len(), 1, "{}", db.backend);
        assert!(stream[0].data.as_str().contains("first@example.com"), "{}", db.backend);
    }
}
