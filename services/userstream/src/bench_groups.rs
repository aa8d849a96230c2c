//! `userstream bench --groups`: the membership engine and the attribute
//! filter. Users and attribute values are bulk-appended straight to the log
//! (many streams per append) so the setup is quick; everything measured goes
//! through the HTTP router like a client.

use crate::bench::{histogram, ms, Bench};
use anyhow::{bail, Context as _};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use userstream_domain::attribute::{AttributeUpserted, ValuesEvent};
use userstream_domain::codec::{self, v1};
use userstream_domain::user::UserEvent;
use userstream_domain::{Email, Phone, StreamId, UserId, Username};
use userstream_eventlog::{AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppend, Tenant};

const APP: &str = "000000000000000000000001";
const P: &str = "/service/platform/user/v1.0/company/1/application/000000000000000000000001";
const STREAMS_PER_APPEND: usize = 500;

fn new_event(encoded: codec::EncodedEvent, at: OffsetDateTime) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: encoded.event_type.to_string(),
        schema: i64::from(encoded.schema),
        occurred_at: at,
        data: encoded.data,
    }
}

/// Keeps a result row and prints it at once (a long run keeps what it measured).
pub(crate) fn record(rows: &mut Vec<(String, String)>, row: (String, String)) {
    eprintln!("| {} | {} |", row.0, row.1);
    rows.push(row);
}

fn user_id(n: u64) -> UserId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&0x6a00_0000u32.to_be_bytes());
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    UserId::from_bytes(bytes)
}

/// Appends users `from..to`, each with the values `values(user)` gives
/// (definition id, number).
pub(crate) async fn bulk_load(
    bench: &Bench,
    from: u64,
    to: u64,
    values: impl Fn(u64) -> Vec<(String, f64)>,
) -> anyhow::Result<()> {
    let log = bench.service.state.commands.log().clone();
    let now = OffsetDateTime::now_utc();
    let tenant = Tenant { company_id: "1".into(), application_id: APP.into() };
    let mut n = from;
    while n < to {
        let end = (n + STREAMS_PER_APPEND as u64).min(to);
        let mut streams = Vec::new();
        for u in n..end {
            let id = user_id(u);
            let created = UserEvent::Created(v1::UserCreated {
                user_id: id.clone(),
                username: Username::parse("username", &format!("bench{u}"))?,
                first_name: None,
                last_name: None,
                gender: None,
                emails: vec![v1::EmailEntry {
                    email: Email::parse("email", &format!("g{u}@bench.example"))?,
                    primary: true,
                    verified: true,
                    active: true,
                }],
                phone_numbers: vec![v1::PhoneEntry {
                    phone: Phone::parse("phone", &format!("7{u:09}"))?,
                    primary: true,
                    verified: true,
                    active: true,
                }],
                meta: json!({}),
                external_id: None,
                rr_id: None,
                account_type: "user".into(),
                at: now,
            });
            streams.push(StreamAppend {
                stream: StreamId::user(&id).to_string(),
                expected: ExpectedVersion::NoStream,
                events: vec![new_event(codec::encode(&created), now)],
            });
            let values = values(u)
                .into_iter()
                .enumerate()
                .map(|(i, (d, v))| {
                    let e = ValuesEvent::Upserted(AttributeUpserted {
                        definition_id: d,
                        attribute_id: user_id(u * 100 + i as u64 + 1_000_000_000).to_string(),
                        value: json!(v),
                        customer_overridden: false,
                        at: now,
                    });
                    new_event(codec::encode_values(&e), now)
                })
                .collect::<Vec<_>>();
            if !values.is_empty() {
                streams.push(StreamAppend {
                    stream: StreamId::values(id.as_str()).to_string(),
                    expected: ExpectedVersion::Any,
                    events: values,
                });
            }
        }
        log.append(AppendRequest {
            tenant: tenant.clone(),
            actor: "bench".into(),
            correlation_id: "bench-load".into(),
            causation_id: None,
            streams,
            reserve: vec![],
            release: vec![],
            idempotency_key: None,
        })
        .await
        .map_err(|e| anyhow::anyhow!("bulk append: {e}"))?;
        n = end;
    }
    Ok(())
}

/// Waits until the engine and the read models have every event; returns seconds.
pub(crate) async fn catch_up(bench: &Bench) -> anyhow::Result<f64> {
    let started = Instant::now();
    let state = &bench.service.state;
    let head = state.commands.log().head().await?;
    loop {
        let done = state.engine.wait_for(head, Duration::from_secs(10)).await
            && state.users.wait_for(head, Duration::from_secs(1)).await
            && state.attributes.wait_for(head, Duration::from_secs(1)).await;
        if done {
            break;
        }
        eprintln!("  engine at {} of {head}", state.engine.status().position);
    }
    // The engine's own output must reach the groups read model too.
    let head = state.commands.log().head().await?;
    while !state.groups.wait_for(head, Duration::from_secs(10)).await {}
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) async fn post(bench: &Bench, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
    bench
        .call(
            Request::post(format!("{P}{path}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))?,
        )
        .await
}

pub(crate) async fn put(bench: &Bench, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
    bench
        .call(
            Request::put(format!("{P}{path}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))?,
        )
        .await
}

pub async fn run(
    bench: Arc<Bench>,
    users: u64,
    rule_groups: u64,
    eval_users: u64,
    samples: u64,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut s = Scenario {
        bench,
        rng: rand::rngs::StdRng::seed_from_u64(7),
        users,
        rule_groups,
        definitions: Vec::new(),
        groups: Vec::new(),
        rows: Vec::new(),
    };
    s.create_definitions().await?;
    s.load_users().await?;
    s.create_rule_groups().await?;
    s.upsert_to_members(samples).await?;
    s.members_search(samples).await?;
    if eval_users > users {
        s.load_more(eval_users).await?;
    }
    s.evaluate_big_group(eval_users).await?;
    s.filter(eval_users, samples).await?;
    Ok(s.rows)
}

/// The groups benchmark's state, in the order its steps build it. One
/// seeded generator draws every random choice, in the same order each run.
struct Scenario {
    bench: Arc<Bench>,
    rng: rand::rngs::StdRng,
    users: u64,
    rule_groups: u64,
    /// The 20 number definitions' ids.
    definitions: Vec<String>,
    /// (group id, definition index, threshold) of each small rule group.
    groups: Vec<(String, usize, i32)>,
    rows: Vec<(String, String)>,
}

impl Scenario {
    /// 20 number definitions.
    async fn create_definitions(&mut self) -> anyhow::Result<()> {
        for i in 0..20 {
            let (status, d) = post(
                &self.bench,
                "/user_attribute/definition",
                json!({"name": format!("D{i}"), "slug": format!("d{i}"), "type": "number"}),
            )
            .await?;
            if status != StatusCode::CREATED {
                bail!("definition: {status} {d}");
            }
            self.definitions.push(d["_id"].as_str().context("id")?.to_string());
        }
        Ok(())
    }

    /// Users, each with 3 values on random definitions among the 20.
    async fn load_users(&mut self) -> anyhow::Result<()> {
        let users = self.users;
        eprintln!("loading {users} users with 3 attribute values each …");
        let started = Instant::now();
        let picks: Vec<[usize; 3]> = (0..users)
            .map(|_| [self.rng.gen_range(0..20), self.rng.gen_range(0..20), self.rng.gen_range(0..20)])
            .collect();
        bulk_load(&self.bench, 0, users, |u| {
            let mut defs: Vec<usize> = picks[u as usize].to_vec();
            defs.sort_unstable();
            defs.dedup();
            defs.into_iter().map(|d| (self.definitions[d].clone(), ((u * 7 + d as u64 * 13) % 100) as f64)).collect()
        })
        .await?;
        let secs = catch_up(&self.bench).await?;
        record(
            &mut self.rows,
            (
                format!("engine + read models catching up on {users} users with 3 values each"),
                format!("{:.1} s after the load ({:.1} s total)", secs, started.elapsed().as_secs_f64()),
            ),
        );
        Ok(())
    }

    /// Rule groups: one condition each on a random definition, high thresholds (small groups).
    async fn create_rule_groups(&mut self) -> anyhow::Result<()> {
        let users = self.users;
        let rule_groups = self.rule_groups;
        eprintln!("creating {rule_groups} rule groups …");
        for g in 0..rule_groups {
            let d = self.rng.gen_range(0..20);
            let threshold = 95 + self.rng.gen_range(0..5);
            let (status, body) = post(&self.bench, "/user_group", json!({"name": format!("G{g}"), "description": "bench", "conditions": [{"user_attribute_definition_id": self.definitions[d], "type": "gte", "value": threshold.to_string()}]})).await?;
            if status != StatusCode::CREATED {
                bail!("group: {status} {body}");
            }
            self.groups.push((body["_id"].as_str().context("id")?.to_string(), d, threshold));
        }
        let secs = catch_up(&self.bench).await?;
        record(
            &mut self.rows,
            (
                format!("{rule_groups} rule groups evaluated over {users} users"),
                format!("{secs:.1} s after the last create"),
            ),
        );
        Ok(())
    }

    /// Upsert → the user is in (or out of) the members list.
    async fn upsert_to_members(&mut self, samples: u64) -> anyhow::Result<()> {
        let users = self.users;
        let rule_groups = self.rule_groups;
        eprintln!("measuring attribute upsert → members list …");
        let mut lag: Histogram<u64> = histogram();
        // Where the time goes: command acknowledged, engine past the event, its
        // membership event in the groups read model.
        let (mut acked, mut engined, mut grouped): (Histogram<u64>, Histogram<u64>, Histogram<u64>) =
            (histogram(), histogram(), histogram());
        for i in 0..samples.min(500) {
            let (group_id, d, threshold) = &self.groups[self.rng.gen_range(0..self.groups.len())];
            let u = self.rng.gen_range(0..users);
            let id = user_id(u);
            let joining = i % 2 == 0;
            let value = if joining { *threshold as f64 + 1.0 } else { 0.0 };
            let t = Instant::now();
            let (status, body) = put(
                &self.bench,
                &format!("/user_attribute/definition/{}/user/{id}", self.definitions[*d]),
                json!({"attribute": {"value": value}}),
            )
            .await?;
            if status != StatusCode::OK {
                bail!("upsert: {status} {body}");
            }
            acked.record(t.elapsed().as_micros().max(1) as u64)?;
            let head = self.bench.service.state.commands.log().head().await?;
            let (engine, groups) = (self.bench.service.state.engine.clone(), self.bench.service.state.groups.clone());
            let log = self.bench.service.state.commands.log().clone();
            // The list reads the groups read model: wait (without spinning on
            // the two cores the pipeline needs) until that model has the engine's
            // answer, then confirm through the list itself.
            engine.wait_for(head, Duration::from_secs(30)).await;
            engined.record(t.elapsed().as_micros().max(1) as u64)?;
            let after = log.head().await?;
            groups.wait_for(after, Duration::from_secs(30)).await;
            grouped.record(t.elapsed().as_micros().max(1) as u64)?;
            // The page of one member that starts right after the user's
            // predecessor (user ids are the cursor) holds the user iff a member.
            let from = if u == 0 { String::new() } else { format!("&cursor={}", user_id(u - 1)) };
            loop {
                let (status, page) = self
                    .bench
                    .call(
                        Request::get(format!("{P}/user_group/{group_id}/users?page_size=1{from}"))
                            .body(Body::empty())?,
                    )
                    .await?;
                if status != StatusCode::OK {
                    bail!("members: {status} {page}");
                }
                let present = page["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|m| m["user_id"] == json!(id.as_str())));
                if present == joining {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("membership of user {u} in {group_id} did not follow within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            lag.record(t.elapsed().as_micros().max(1) as u64)?;
        }
        eprintln!(
            "  of which: acknowledged p50 {} p99 {}; engine done p50 {} p99 {}; groups model p50 {} p99 {}",
            ms(&acked, 0.5),
            ms(&acked, 0.99),
            ms(&engined, 0.5),
            ms(&engined, 0.99),
            ms(&grouped, 0.5),
            ms(&grouped, 0.99)
        );
        record(
            &mut self.rows,
            (
                format!("attribute upsert → members list ({users} users, 20 definitions, {rule_groups} rule groups)"),
                format!("p50 {}, p99 {}", ms(&lag, 0.5), ms(&lag, 0.99)),
            ),
        );
        Ok(())
    }

    /// A members search by email (`q`): a substring match checked against
    /// each member's contacts, so its cost follows the group's size.
    async fn members_search(&mut self, samples: u64) -> anyhow::Result<()> {
        let users = self.users;
        let rule_groups = self.rule_groups;
        let mut search: Histogram<u64> = histogram();
        for _ in 0..samples.min(500) {
            let (group_id, _, _) = &self.groups[self.rng.gen_range(0..self.groups.len())];
            let u = self.rng.gen_range(0..users);
            let t = Instant::now();
            let (status, page) = self
                .bench
                .call(
                    Request::get(format!("{P}/user_group/{group_id}/users?q=g{u}%40self.bench.example&page_size=5"))
                        .body(Body::empty())?,
                )
                .await?;
            search.record(t.elapsed().as_micros().max(1) as u64)?;
            if status != StatusCode::OK {
                bail!("members search: {status} {page}");
            }
        }
        record(
            &mut self.rows,
            (
                format!("members list searched by email (`q`), {users} users, {rule_groups} rule groups"),
                format!("p50 {}, p99 {}", ms(&search, 0.5), ms(&search, 0.99)),
            ),
        );
        Ok(())
    }

    /// Users up to `eval_users` with values on d0..d2, without the small groups.
    async fn load_more(&mut self, eval_users: u64) -> anyhow::Result<()> {
        let users = self.users;
        // Without the 1,000 small groups: loading would otherwise measure
        // them following 900,000 new users (a membership event for most
        // users), not the evaluation of one new group.
        eprintln!("deleting the {} rule groups …", self.groups.len());
        for (group_id, _, _) in &self.groups {
            let (status, body) =
                self.bench.call(Request::delete(format!("{P}/user_group/{group_id}")).body(Body::empty())?).await?;
            if status != StatusCode::OK {
                bail!("delete group: {status} {body}");
            }
        }
        eprintln!("loading users up to {eval_users} with values on 3 definitions …");
        let first = &self.definitions[..3];
        let started = Instant::now();
        bulk_load(&self.bench, users, eval_users, |u| {
            first.iter().enumerate().map(|(i, d)| (d.clone(), ((u * 31 + i as u64 * 17) % 100) as f64)).collect()
        })
        .await?;
        let secs = catch_up(&self.bench).await?;
        record(
            &mut self.rows,
            (
                format!("loading {} more users with 3 values (bulk appends) and catching up", eval_users - users),
                format!("{:.1} s ({secs:.1} s catching up)", started.elapsed().as_secs_f64()),
            ),
        );

        Ok(())
    }

    /// A new rule group over every user, until it is active.
    async fn evaluate_big_group(&mut self, eval_users: u64) -> anyhow::Result<()> {
        let users = self.users;
        let t = Instant::now();
        let (status, body) = post(
            &self.bench,
            "/user_group",
            json!({"name": "Big", "description": "bench", "conditions": [
                {"user_attribute_definition_id": self.definitions[0], "type": "gte", "value": "90"},
                {"user_attribute_definition_id": self.definitions[1], "type": "exists", "value": ""}
            ]}),
        )
        .await?;
        if status != StatusCode::CREATED {
            bail!("big group: {status} {body}");
        }
        let big = body["_id"].as_str().context("id")?.to_string();
        let evaluated = loop {
            let (_, g) = self.bench.call(Request::get(format!("{P}/user_group/{big}")).body(Body::empty())?).await?;
            if g["status"] == "active" {
                break g;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        record(
            &mut self.rows,
            (
                format!("new rule group evaluated over {} users → active", eval_users.max(users)),
                format!("{:.2} s, {} members", t.elapsed().as_secs_f64(), evaluated["total_users"]),
            ),
        );
        Ok(())
    }

    /// The attribute filter: three conditions, pages 1–10.
    async fn filter(&mut self, eval_users: u64, samples: u64) -> anyhow::Result<()> {
        let users = self.users;
        let mut filter: Histogram<u64> = histogram();
        for i in 0..samples.min(1000) {
            let page = 1 + i % 10;
            let body = json!({"query": {"type": "and", "limit": 10, "page": page, "conditions": [
                {"definition_id": self.definitions[0], "type": "gte", "value": "30"},
                {"definition_id": self.definitions[1], "type": "lt", "value": "80"},
                {"definition_id": self.definitions[2], "type": "between", "value": "10,90"}
            ]}});
            let t = Instant::now();
            let (status, found) = post(&self.bench, "/user_attribute/users", body).await?;
            filter.record(t.elapsed().as_micros().max(1) as u64)?;
            if status != StatusCode::OK || found["items"].as_array().map(Vec::len) != Some(10) {
                bail!("filter page {page}: {status} {found}");
            }
        }
        record(
            &mut self.rows,
            (
                format!("filter users by 3 attribute conditions, {} users (pages 1–10)", eval_users.max(users)),
                format!("p50 {}, p99 {}", ms(&filter, 0.5), ms(&filter, 0.99)),
            ),
        );
        Ok(())
    }
}
