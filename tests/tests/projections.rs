//! The projection runner and the users read model, on every backend.

use serde_json::json;
use sqlx::AnyConnection;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use userstream_api::commands::{Commands, Meta};
use userstream_domain::user::{Context, CreateUser, UpdateUser, UserCommand};
use userstream_domain::{Email, Phone, Username};
use userstream_eventlog::{AppendRequest, Db, EventLog, Migration, RecordedEvent, SqlEventLog, Tenant};
use userstream_projections::read_models::users::{UsersProjection, UsersQuery, TABLES};
use userstream_projections::{Projection, ProjectionError, Runner};
use userstream_tests::fresh_databases;

/// Records every application of every event, without any idempotence of
/// its own, so a double-apply or a skip shows in the table.
#[derive(Clone)]
struct Recorder {
    applied: Arc<AtomicUsize>,
    fail_at: Option<usize>,
}

const RECORDER_DDL: &str = "CREATE TABLE IF NOT EXISTS recorded (position BIGINT NOT NULL)";

impl Projection for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn migrations(&self) -> &'static [Migration] {
        &[Migration { version: 1, sqlite: RECORDER_DDL, postgres: RECORDER_DDL }]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["recorded"]
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &RecordedEvent) -> Result<(), ProjectionError> {
        sqlx::query("INSERT INTO recorded (position) VALUES ($1)").bind(event.position).execute(&mut *conn).await?;
        let n = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(n) == self.fail_at {
            // The process dies here, mid-batch, after writing part of it.
            return Err(ProjectionError::Storage(sqlx::Error::Protocol("simulated crash".into())));
        }
        Ok(())
    }
}

/// A projection applied strictly one event at a time (the trait's default
/// `apply_batch`), to compare with a projection's own batched path.
struct OneByOne<P>(P);

impl<P: Projection> Projection for OneByOne<P> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn migrations(&self) -> &'static [Migration] {
        self.0.migrations()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &RecordedEvent) -> Result<(), ProjectionError> {
        self.0.apply(conn, event).await
    }
}

fn tenant() -> Tenant {
    Tenant { company_id: "1".into(), application_id: "app".into() }
}

/// One event of `event_type` with `data` on `stream`, in the test tenant.
fn one_event(stream: &str, event_type: &str, data: serde_json::Value) -> AppendRequest {
    userstream_tests::one_event_request(tenant(), stream, event_type, data)
}

async fn append_n(log: &SqlEventLog, n: i64) {
    for i in 0..n {
        log.append(one_event(&format!("thing-{i}"), "thing.made", json!({}))).await.expect("append");
    }
}

async fn recorded(db: &Db) -> (i64, i64) {
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM recorded").fetch_one(&db.pool).await.expect("count");
    let distinct: i64 =
        sqlx::query_scalar("SELECT COUNT(DISTINCT position) FROM recorded").fetch_one(&db.pool).await.expect("count");
    (total, distinct)
}

#[tokio::test]
async fn a_crash_mid_batch_repeats_the_batch_without_double_apply_or_skip() {
    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        let log = SqlEventLog::open(db.clone()).await.expect("open");
        append_n(&log, 25).await;

        let crashing = Recorder { applied: Arc::new(AtomicUsize::new(0)), fail_at: Some(17) };
        let runner = Runner::new(log.clone(), crashing).await.expect("runner").with_batch_size(10);
        assert_eq!(runner.step().await.expect("first batch"), 10, "{backend}");
        assert!(runner.step().await.is_err(), "{backend}: the second batch crashes at its 7th event");
        assert_eq!(runner.handle().status().position, 10, "{backend}: checkpoint stays at the last committed batch");
        assert_eq!(recorded(&db).await, (10, 10), "{backend}: the crashed batch left nothing behind");

        // A new runner (a restarted process) resumes from the checkpoint.
        let restarted = Recorder { applied: Arc::new(AtomicUsize::new(0)), fail_at: None };
        let runner = Runner::new(log.clone(), restarted).await.expect("runner").with_batch_size(10);
        let handle = runner.handle();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(runner.run(cancel.clone(), Duration::from_millis(20)));
        assert!(handle.wait_for(25, Duration::from_secs(10)).await, "{backend}: runner did not catch up");
        cancel.cancel();
        task.await.expect("join");
        assert_eq!(recorded(&db).await, (25, 25), "{backend}: every event applied exactly once");
    }
}

#[tokio::test]
async fn a_poison_event_stops_the_projection_and_is_reported() {
    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        let log = SqlEventLog::open(db.clone()).await.expect("open");
        let req = one_event("user-61f02c3dcc701256044ed6c0", "user.created", json!({"not": "a user"}));
        log.append(req).await.expect("append");
        let runner = Runner::new(log.clone(), UsersProjection).await.expect("runner");
        let handle = runner.handle();
        tokio::time::timeout(Duration::from_secs(10), runner.run(CancellationToken::new(), Duration::from_millis(20)))
            .await
            .unwrap_or_else(|_| panic!("{backend}: the runner should stop on a poison event"));
        let status = handle.status();
        assert_eq!(status.position, 0, "{backend}: the poison event is not skipped");
        assert!(status.failure.as_deref().is_some_and(|f| f.contains("poison event 1")), "{backend}: {status:?}");
        let stored: Option<String> = sqlx::query_scalar("SELECT failure FROM checkpoints WHERE name = 'users_v1'")
            .fetch_one(&db.pool)
            .await
            .expect("checkpoint");
        assert!(stored.is_some(), "{backend}: the failure is recorded in the checkpoint row");
    }
}

async fn dump(db: &Db) -> Vec<String> {
    dump_tables(db, TABLES).await
}

async fn dump_tables(db: &Db, tables: &[&str]) -> Vec<String> {
    let mut rows = Vec::new();
    for table in tables {
        let sql = format!("SELECT * FROM {table}");
        for row in sqlx::query(&sql).fetch_all(&db.pool).await.expect("dump") {
            use sqlx::Row;
            let mut cells = vec![table.to_string()];
            for i in 0..row.len() {
                let cell = row
                    .try_get::<Option<String>, _>(i)
                    .map(|v| v.unwrap_or_else(|| "NULL".into()))
                    .or_else(|_| row.try_get::<i64, _>(i).map(|v| v.to_string()))
                    .expect("text or integer cell");
                cells.push(cell);
            }
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

/// Empties the users read model and moves its checkpoint back to 0.
async fn reset_users_model(db: &Db) {
    reset_model(db, TABLES, "users_v1").await;
}

/// Empties a read model's `tables` and moves its checkpoint `name` back to 0.
async fn reset_model(db: &Db, tables: &[&str], name: &str) {
    for table in tables {
        sqlx::query(&format!("DELETE FROM {table}")).execute(&db.pool).await.expect("clear");
    }
    sqlx::query("UPDATE checkpoints SET position = 0 WHERE name = $1")
        .bind(name)
        .execute(&db.pool)
        .await
        .expect("reset");
}

/// The users model rebuilt from position 0 one event at a time (the
/// trait's default `apply_batch`), as its rows.
async fn users_one_event_at_a_time(db: &Db, log: &SqlEventLog) -> Vec<String> {
    reset_users_model(db).await;
    let runner = Runner::new(log.clone(), OneByOne(UsersProjection)).await.expect("runner");
    while runner.step().await.expect("step") > 0 {}
    dump(db).await
}

/// Runs a command on one user's stream.
async fn on_user(
    commands: &Commands,
    meta: &Meta,
    id: &userstream_domain::UserId,
    command: UserCommand,
    ctx: &Context,
) -> Result<userstream_api::commands::Outcome, userstream_api::commands::CommandError> {
    commands
        .handle::<userstream_domain::user::UserStream>(meta, userstream_domain::StreamId::user(id), command, None, ctx)
        .await
}

/// Live changes, then a rebuild from position 0: the same rows.
#[tokio::test]
async fn rebuilding_the_users_read_model_from_zero_equals_the_live_one() {
    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        let log = SqlEventLog::open(db.clone()).await.expect("open");
        let runner = Runner::new(log.clone(), UsersProjection).await.expect("runner");
        let handle = runner.handle();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(runner.run(cancel.clone(), Duration::from_millis(20)));

        let commands = Commands::new(log.clone(), userstream_api::clock::Clock::system());
        let meta = Meta { tenant: tenant(), actor: "t".into(), correlation_id: "c".into(), idempotency_key: None };
        let ctx = Context::at(OffsetDateTime::now_utc());
        let mut ids = Vec::new();
        for i in 0..12 {
            let id = commands.context_of(&Default::default()).id(0);
            let create = CreateUser {
                user_id: id.clone(),
                username: Username::parse("u", &format!("user{i}")).expect("u"),
                phone: Some(Phone::parse("p", &format!("98765{i:05}")).expect("p")),
                email: Some(Email::parse("e", &format!("u{i}@example.com")).expect("e")),
                first_name: None,
                last_name: None,
                gender: None,
                meta: Some(json!({"i": i})),
                external_id: Some(format!("ext-{i}")),
                rr_id: None,
                verified: true,
            };
            commands.create_user(&meta, create, &ctx).await.expect("create");
            ids.push(id);
        }
        let update = UpdateUser {
            emails: Some(vec![userstream_domain::user::EmailEntry {
                email: Email::parse("e", "changed@example.com").expect("e"),
                primary: true,
                verified: false,
                active: true,
            }]),
            ..Default::default()
        };
        on_user(&commands, &meta, &ids[0], UserCommand::Update(update), &ctx).await.expect("update");
        commands.set_blocked(&meta, &ids[1..4], true, "r", &ctx).await.expect("block");
        commands.set_blocked(&meta, &ids[2..3], false, "r", &ctx).await.expect("unblock");
        on_user(&commands, &meta, &ids[5], UserCommand::Archive, &ctx).await.expect("archive");
        on_user(&commands, &meta, &ids[6], UserCommand::Archive, &ctx).await.expect("archive");
        let last = on_user(&commands, &meta, &ids[6], UserCommand::Restore { reason: "r".into() }, &ctx)
            .await
            .expect("restore")
            .position;
        assert!(handle.wait_for(last, Duration::from_secs(10)).await, "{backend}");
        cancel.cancel();
        task.await.expect("join");

        let query = UsersQuery::new(db.clone());
        let (_, total) = query.list(&tenant(), None, 1, 10).await.expect("list");
        assert_eq!(total, 11, "{backend}: 12 created, one archived");
        let live = dump(&db).await;

        reset_users_model(&db).await;
        let runner = Runner::new(log.clone(), UsersProjection).await.expect("runner").with_batch_size(7);
        while runner.step().await.expect("step") > 0 {}
        assert_eq!(dump(&db).await, live, "{backend}: rebuilt rows differ from the live ones");
        assert_eq!(log.head().await.expect("head"), runner.handle().status().position, "{backend}");

        // The multi-row path and the one-event-at-a-time path build the same rows.
        assert_eq!(
            users_one_event_at_a_time(&db, &log).await,
            live,
            "{backend}: event-by-event rows differ from the batched ones"
        );
    }
}

/// On SQLite, created users are in the read model when their create is
/// acknowledged (the log's writer applies them in its own transaction,
/// with the runner's checkpoint), without the runner ever running; any
/// other user event is left to the runner, which the writer then waits
/// for before it applies creates again. The rows equal a rebuild. On
/// PostgreSQL nothing is applied inline.
#[tokio::test]
async fn created_users_are_in_the_read_model_when_acknowledged_on_sqlite() {
    use userstream_projections::read_models::users::InlineUsers;
    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        let log = SqlEventLog::open(db.clone()).await.expect("open");
        let runner = Runner::new(log.clone(), UsersProjection).await.expect("runner");
        let inline = log.set_inline(Arc::new(InlineUsers));
        assert_eq!(inline, backend == "sqlite", "{backend}: inline only on SQLite");
        assert!(!log.set_inline(Arc::new(InlineUsers)), "{backend}: set once");
        let commands = Commands::new(log.clone(), userstream_api::clock::Clock::system());
        let meta = Meta { tenant: tenant(), actor: "t".into(), correlation_id: "c".into(), idempotency_key: None };
        let ctx = Context::at(OffsetDateTime::now_utc());
        let create = |i: usize| CreateUser {
            user_id: commands.context_of(&Default::default()).id(0),
            username: Username::parse("u", &format!("inline{i}")).expect("u"),
            phone: Some(Phone::parse("p", &format!("98766{i:05}")).expect("p")),
            email: Some(Email::parse("e", &format!("inline{i}@example.com")).expect("e")),
            first_name: None,
            last_name: None,
            gender: None,
            meta: None,
            external_id: None,
            rr_id: None,
            verified: false,
        };
        let checkpoint = || async {
            sqlx::query_scalar::<_, i64>("SELECT position FROM checkpoints WHERE name = 'users_v1'")
                .fetch_one(&db.pool)
                .await
                .expect("checkpoint")
        };
        let query = UsersQuery::new(db.clone());
        let mut ids = Vec::new();
        for i in 0..3 {
            let command = create(i);
            ids.push(command.user_id.clone());
            let outcome = commands.create_user(&meta, command, &ctx).await.expect("create");
            let (_, total) = query.list(&tenant(), None, 1, 10).await.expect("list");
            let at = checkpoint().await;
            if backend == "sqlite" {
                assert_eq!((total, at), (i as i64 + 1, outcome.position), "{backend}: in the model when acknowledged");
            } else {
                assert_eq!((total, at), (0, 0), "{backend}: left to the runner");
            }
        }
        let update = UpdateUser {
            first_name: Some(userstream_domain::Name::parse("f", "Ada").expect("name")),
            ..Default::default()
        };
        let updated = on_user(&commands, &meta, &ids[0], UserCommand::Update(update), &ctx).await.expect("update");
        let behind = checkpoint().await;
        assert!(behind < updated.position, "{backend}: an update is the runner's");
        // The checkpoint is behind now: this create waits for the runner too.
        let waiting = commands.create_user(&meta, create(3), &ctx).await.expect("create");
        assert_eq!(checkpoint().await, behind, "{backend}: nothing inline while the runner is behind");
        while runner.step().await.expect("step") > 0 {}
        assert_eq!(checkpoint().await, waiting.position, "{backend}: the runner caught up");
        let last = commands.create_user(&meta, create(4), &ctx).await.expect("create");
        if backend == "sqlite" {
            assert_eq!(checkpoint().await, last.position, "{backend}: inline again once caught up");
        }
        while runner.step().await.expect("step") > 0 {}
        assert_eq!(checkpoint().await, last.position, "{backend}");
        let (_, total) = query.list(&tenant(), None, 1, 10).await.expect("list");
        assert_eq!(total, 5, "{backend}");
        let live = dump(&db).await;
        assert!(live.iter().any(|row| row.contains("|Ada|")), "{backend}: the update is applied");
        assert_eq!(users_one_event_at_a_time(&db, &log).await, live, "{backend}: inline rows equal a rebuild");
    }
}

/// A run of `user.created` longer than one statement (200 users), with more
/// contacts per user than ride along in the users' statement (the first
/// 400; the rest get statements of their own), builds the same rows as one
/// event at a time.
#[tokio::test]
async fn long_runs_of_created_users_with_many_contacts_equal_one_at_a_time() {
    use userstream_domain::user::{EmailEntry, PhoneEntry};
    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        let log = SqlEventLog::open(db.clone()).await.expect("open");
        let now = OffsetDateTime::now_utc();
        let mut streams = Vec::new();
        for i in 0..450 {
            let id = userstream_domain::Context::at(now).id(i);
            let email = |k: usize| EmailEntry {
                email: Email::parse("e", &format!("u{i}-{k}@example.com")).expect("email"),
                primary: k == 0,
                verified: k == 1,
                active: true,
            };
            let created = userstream_domain::codec::v1::UserCreated {
                user_id: id.clone(),
                username: Username::parse("u", &format!("many{i}")).expect("username"),
                first_name: None,
                last_name: None,
                gender: None,
                emails: (0..3).map(email).collect(),
                phone_numbers: vec![PhoneEntry {
                    phone: Phone::parse("p", &format!("97{i:08}")).expect("phone"),
                    primary: true,
                    verified: false,
                    active: true,
                }],
                meta: json!({"i": i}),
                external_id: None,
                rr_id: None,
                account_type: "user".into(),
                at: now,
            };
            let mut request = one_event(
                &format!("user-{}", id.as_str()),
                "user.created",
                serde_json::to_value(&created).expect("json"),
            );
            streams.append(&mut request.streams);
        }
        let mut request = one_event("unused", "unused", json!({}));
        request.streams = streams;
        log.append(request).await.expect("append 450 users at once");

        let runner = Runner::new(log.clone(), UsersProjection).await.expect("runner").with_batch_size(1000);
        while runner.step().await.expect("step") > 0 {}
        let contacts: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM user_contacts_v1").fetch_one(&db.pool).await.expect("count");
        assert_eq!(contacts, 450 * 4, "{backend}");
        let batched = dump(&db).await;

        assert_eq!(
            users_one_event_at_a_time(&db, &log).await,
            batched,
            "{backend}: event-by-event rows differ from the batched ones"
        );
    }
}

/// The plan the database chooses for `sql`, as text: `run` executes the
/// statement it is given with the values bound.
async fn plan<F, Fut>(dialect: userstream_eventlog::Dialect, sql: &str, run: F) -> String
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Vec<sqlx::any::AnyRow>>,
{
    let (explain, column) = match dialect {
        userstream_eventlog::Dialect::Sqlite => (format!("EXPLAIN QUERY PLAN {sql}"), 3),
        userstream_eventlog::Dialect::Postgres => (format!("EXPLAIN {sql}"), 0),
    };
    let rows = run(explain).await;
    rows.iter().map(|row| sqlx::Row::get::<String, _>(row, column)).collect::<Vec<_>>().join("\n")
}

/// Deleting many (group, user) pairs probes the primary key once per pair
/// and never scans the table, on every backend (PostgreSQL planned the
/// plain `(a, b) IN (VALUES …)` as a hash join over a sequential scan).
#[tokio::test]
async fn deleting_pairs_probes_the_key_and_never_scans_the_table() {
    use sqlx::Executor;
    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        db.pool
            .execute("CREATE TABLE pairs (g TEXT NOT NULL, u TEXT NOT NULL, PRIMARY KEY (g, u))")
            .await
            .expect("table");
        db.pool
            .execute(
                "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) \
                 INSERT INTO pairs SELECT 'g1', 'u' || n FROM s",
            )
            .await
            .expect("rows");
        db.pool.execute("ANALYZE pairs").await.expect("analyze");
        let n = 1000;
        let sql = userstream_eventlog::delete_pairs(db.dialect, "pairs", ("g", "u"), n, "");
        let bind = |sql: String| {
            let pool = db.pool.clone();
            async move {
                let mut query = sqlx::query(&sql);
                for i in 0..n {
                    query = query.bind("g1").bind(format!("u{}", i * 7 + 1));
                }
                query.fetch_all(&pool).await.expect("run")
            }
        };
        let plan = plan(db.dialect, &sql, bind).await;
        assert!(!plan.contains("SCAN pairs") && !plan.contains("Seq Scan on pairs"), "{backend}: {plan}");
        bind(sql).await;
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pairs").fetch_one(&db.pool).await.expect("count");
        assert_eq!(left, 20000 - n as i64, "{backend}");
    }
}

/// A customers list filtered by an id, an email, a phone, a username or an
/// external id (the console's JSON search) looks those users up and sorts
/// them; it never walks the tenant's list index testing every user, which
/// SQLite (no statistics) would otherwise prefer. Other filters still do.
#[tokio::test]
async fn a_list_filtered_by_lookups_reads_only_the_users_it_names() {
    use sqlx::Executor;
    use userstream_projections::read_models::filter::Filter;
    use userstream_projections::read_models::users::list_page_sql;
    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        let log = SqlEventLog::open(db.clone()).await.expect("open");
        Runner::new(log.clone(), UsersProjection).await.expect("runner: the users tables");
        let hex = match db.dialect {
            userstream_eventlog::Dialect::Sqlite => "printf('%024x', n)",
            userstream_eventlog::Dialect::Postgres => "lpad(to_hex(n), 24, '0')",
        };
        let series =
            "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) SELECT n FROM s) AS s";
        db.pool
            .execute(
                format!(
                    "INSERT INTO users_v1 (company_id, application_id, user_id, seq, version, username, username_key, \
                     first_name, last_name, gender, emails, phone_numbers, meta, external_id, account_type, blocked, archived, \
                     created_at, updated_at, email, phone, email_verified, phone_verified, login_count) \
                     SELECT '1', 'app', {hex}, n, 1, 'user' || n, 'user' || n, 'First', 'Last', 'male', '[]', '[]', '{{}}', \
                     'ext' || n, 'user', 0, 0, 't', 't', 'user' || n || '@example.com', '+9198' || n, 1, 1, 0 FROM {series}"
                )
                .as_str(),
            )
            .await
            .expect("users");
        db.pool
            .execute(
                format!(
                    "INSERT INTO user_contacts_v1 (application_id, user_id, kind, value) \
                     SELECT 'app', {hex}, 'email', 'user' || n || '@example.com' FROM {series} \
                     UNION ALL SELECT 'app', {hex}, 'phone', '+9198' || n FROM {series}"
                )
                .as_str(),
            )
            .await
            .expect("contacts");
        if db.dialect == userstream_eventlog::Dialect::Postgres {
            // As autovacuum would; SQLite keeps no statistics, as in service.
            db.pool.execute("ANALYZE users_v1; ANALYZE user_contacts_v1").await.expect("analyze");
        }
        let user_5 = format!("{:024x}", 5);
        let query = UsersQuery::new(db.clone());
        for (q, expected) in [
            (r#"{"username": "user5"}"#.to_string(), vec![5]),
            (r#"{"email": "user7@example.com", "first_name": "First"}"#.to_string(), vec![7]),
            (r#"{"$or": [{"phone": "+919811"}, {"email": "user12@example.com"}]}"#.to_string(), vec![12, 11]),
            (format!(r#"{{"_id": {{"$in": ["{user_5}"]}}}}"#), vec![5]),
            (r#"{"external_id": "ext9"}"#.to_string(), vec![9]),
        ] {
            let filter = Filter::parse_json(&q).expect("filter");
            let (sql, binds) = list_page_sql(&tenant(), Some(&filter));
            let run = |sql: String| {
                let (pool, binds) = (db.pool.clone(), binds.clone());
                async move {
                    let mut query = sqlx::query(&sql).bind("1").bind("app").bind(20_i64).bind(0_i64);
                    for b in &binds {
                        query = query.bind(b.clone());
                    }
                    query.fetch_all(&pool).await.expect("run")
                }
            };
            let plan = plan(db.dialect, &sql, run).await;
            for walk in ["users_v1_list", "users_v1_created", "SCAN u", "Seq Scan on users_v1"] {
                assert!(!plan.contains(walk), "{backend}, {q}: {plan}");
            }
            let (rows, total) = query.list(&tenant(), Some(&filter), 1, 20).await.expect("list");
            let ids: Vec<String> = rows.iter().map(|u| u.user_id.clone()).collect();
            let expected: Vec<String> = expected.iter().map(|n| format!("{n:024x}")).collect();
            assert_eq!((ids, total), (expected.clone(), expected.len() as i64), "{backend}, {q}");
        }
        // A filter no index answers still walks the list, in order.
        let filter = Filter::parse_json(r#"{"first_name": {"$regex": "^Fir"}}"#).expect("filter");
        let (rows, total) = query.list(&tenant(), Some(&filter), 1, 2).await.expect("list");
        assert_eq!((rows.len(), total), (2, 20000), "{backend}");
        assert_eq!(rows[0].user_id, format!("{:024x}", 20000), "{backend}: newest first");
    }
}

/// Runs of membership events are written as their net effect; random runs
/// with leaves, rejoins, repeats and unmatched rows leave the same rows and
/// totals as writing them one event at a time, and every total is the
/// number of member rows.
#[tokio::test]
async fn membership_runs_written_at_once_equal_one_event_at_a_time() {
    use rand::{Rng, SeedableRng};
    use userstream_domain::codec;
    use userstream_domain::group::{Cause, GroupDetails, GroupEvent, GroupWritten, MembershipChanged};
    use userstream_projections::read_models::groups::{GroupsProjection, NAME, TABLES as GROUP_TABLES};

    for test_db in fresh_databases().await {
        let backend = test_db.backend;
        let db = Db::connect(&test_db.url).await.expect("connect");
        let log = SqlEventLog::open(db.clone()).await.expect("open");
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let groups: Vec<String> = (0..3).map(|i| format!("01a2000000000000000000{i:02}")).collect();
        let append = |group: &str, event: GroupEvent| {
            let encoded = codec::encode_group(&event);
            one_event(&format!("group-{group}"), encoded.event_type, encoded.data)
        };
        for (i, g) in groups.iter().enumerate() {
            let details = GroupDetails { name: format!("g{i}"), ..Default::default() };
            let created = GroupWritten {
                group_id: g.clone(),
                uid: i as i64 + 1,
                details,
                rule_version: 0,
                at: OffsetDateTime::now_utc(),
            };
            log.append(append(g, GroupEvent::Created(created))).await.expect("append");
        }
        let users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
        for _ in 0..300 {
            let g = &groups[rng.gen_range(0..groups.len())];
            let pick = |rng: &mut rand::rngs::StdRng| -> Vec<String> {
                users.iter().filter(|_| rng.gen_bool(0.3)).cloned().collect()
            };
            let change = MembershipChanged {
                group_id: g.clone(),
                joined: pick(&mut rng),
                left: pick(&mut rng),
                unmatched: rng.gen_range(0..2),
                cause: Cause::Manual,
                at: OffsetDateTime::now_utc(),
            };
            log.append(append(g, GroupEvent::MembershipChanged(change))).await.expect("append");
        }

        let runner = Runner::new(log.clone(), GroupsProjection).await.expect("runner").with_batch_size(37);
        while runner.step().await.expect("step") > 0 {}
        let batched = dump_tables(&db, GROUP_TABLES).await;
        let totals: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT total_users, (SELECT COUNT(*) FROM group_members_v1 m WHERE m.group_id = g.group_id) FROM groups_v1 g",
        )
        .fetch_all(&db.pool)
        .await
        .expect("totals");
        assert_eq!(totals.len(), 3, "{backend}");
        for (total, rows) in totals {
            assert_eq!(total, rows, "{backend}: total_users is not the number of members");
        }

        reset_model(&db, GROUP_TABLES, NAME).await;
        let runner = Runner::new(log.clone(), OneByOne(GroupsProjection)).await.expect("runner");
        while runner.step().await.expect("step") > 0 {}
        assert_eq!(dump_tables(&db, GROUP_TABLES).await, batched, "{backend}: one event at a time differs from runs");
    }
}
