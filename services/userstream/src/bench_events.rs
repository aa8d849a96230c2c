//! `userstream bench --events`: what the events-out issue promises.
//! - as-of reads of a user with 1,000 events in its stream;
//! - commit → NATS delivery latency at a steady command rate (with `--nats`);
//! - replay rate into fresh read models over 1,000,000+ events.

use crate::bench::{histogram, ms, Bench};
use crate::bench_groups::{bulk_load, catch_up, post, put, record};
use anyhow::{bail, Context as _};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use userstream_eventlog::EventLog;
use userstream_projections::registry::{ReadModel, WithProjection};
use userstream_projections::replay::Rebuild;
use userstream_projections::Projection;

const P: &str = "/service/platform/user/v1.0/company/1/application/000000000000000000000001";

pub struct EventsBench {
    pub samples: u64,
    pub rate: u64,
    pub seconds: u64,
    pub replay_events: u64,
    /// (URL, subject prefix) when the service publishes to NATS.
    pub nats: Option<(String, String)>,
}

pub async fn run(bench: Arc<Bench>, args: EventsBench) -> anyhow::Result<Vec<(String, String)>> {
    let mut rows = Vec::new();
    as_of(&bench, args.samples, &mut rows).await?;
    if let Some((url, prefix)) = &args.nats {
        nats_latency(&bench, url, prefix, args.rate, args.seconds, &mut rows).await?;
    } else {
        eprintln!("no --nats: skipping the commit → NATS delivery measurement");
    }
    replay_rate(&bench, args.replay_events, &mut rows).await?;
    Ok(rows)
}

/// GET user `as_of` a random one of its 1,000 versions.
async fn as_of(bench: &Bench, samples: u64, rows: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    let (status, created) = post(
        bench,
        "/customers",
        json!({"phone_number": "8000000001", "username": "asof", "email": "asof@bench.example"}),
    )
    .await?;
    if status != StatusCode::OK {
        bail!("create: {status} {created}");
    }
    let id = created["user"]["_id"].as_str().context("id")?.to_string();
    let mut positions = Vec::with_capacity(1000);
    for i in 0..999 {
        let (status, body) = put(bench, &format!("/customers/{id}"), json!({"first_name": format!("Name{i}")})).await?;
        if status != StatusCode::OK {
            bail!("update {i}: {status} {body}");
        }
    }
    let stream_id = userstream_domain::StreamId::user(&userstream_domain::UserId::parse("user_id", &id)?);
    let stream = bench.service.state.commands.log().read_stream(stream_id.as_str()).await?;
    positions.extend(stream.iter().map(|e| e.position));
    if positions.len() != 1000 {
        bail!("the user's stream has {} events, not 1000", positions.len());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut h = histogram();
    for _ in 0..samples {
        let k = rng.gen_range(0..positions.len());
        let t = Instant::now();
        let (status, body) =
            bench.call(Request::get(format!("{P}/customers/{id}?as_of={}", positions[k])).body(Body::empty())?).await?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
        let expected = if k == 0 { None } else { Some(format!("Name{}", k - 1)) };
        if status != StatusCode::OK || body["user"]["first_name"].as_str().map(str::to_string) != expected {
            bail!("as_of {}: {status} {body}", positions[k]);
        }
    }
    record(
        rows,
        ("as-of user read, 1,000 events in the stream".into(), format!("p50 {}, p99 {}", ms(&h, 0.5), ms(&h, 0.99))),
    );
    Ok(())
}

/// CreateUser at `rate` per second for `seconds`; latency from each
/// command's acknowledgement to its event arriving at a NATS subscriber.
async fn nats_latency(
    bench: &Arc<Bench>,
    url: &str,
    prefix: &str,
    rate: u64,
    seconds: u64,
    rows: &mut Vec<(String, String)>,
) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to {url}"))?;
    let mut subscription = client.subscribe(format!("{prefix}.>")).await?;
    let arrivals: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let receiver = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let at = Instant::now();
                if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&message.payload) {
                    if let (Some(p), Ok(mut a)) = (event["position"].as_i64(), arrivals.lock()) {
                        a.insert(p, at);
                    }
                }
            }
        })
    };
    let acks: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        for _ in 0..per_tick {
            let (bench, acks) = (bench.clone(), acks.clone());
            tasks.push(tokio::spawn(async move {
                let (_, position) = bench.create().await?;
                if let Ok(mut a) = acks.lock() {
                    a.push((position, Instant::now()));
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let achieved = acks.lock().map(|a| a.len()).unwrap_or(0) as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    let acked: Vec<(i64, Instant)> = acks.lock().map(|a| a.clone()).unwrap_or_default();
    loop {
        let have = arrivals.lock().map(|a| acked.iter().filter(|(p, _)| a.contains_key(p)).count()).unwrap_or(0);
        if have == acked.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} of {} events did not arrive on NATS within 60 s", acked.len() - have, acked.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.abort();
    let mut h = histogram();
    if let Ok(arrivals) = arrivals.lock() {
        for (p, acked_at) in &acked {
            if let Some(arrived) = arrivals.get(p) {
                h.record(arrived.saturating_duration_since(*acked_at).as_micros().max(1) as u64)?;
            }
        }
    }
    record(
        rows,
        (
            format!("commit → NATS delivery, CreateUser at {achieved:.0}/s for {seconds} s"),
            format!("p50 {}, p99 {}, max {:.2} ms", ms(&h, 0.5), ms(&h, 0.99), h.max() as f64 / 1000.0),
        ),
    );
    Ok(())
}

/// Bulk-appends users until the log holds `events`, lets the live models
/// catch up, then rebuilds each read model into fresh tables.
async fn replay_rate(bench: &Bench, events: u64, rows: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    let log = bench.service.state.commands.log().clone();
    let head = log.head().await?;
    if (head as u64) < events {
        eprintln!("appending {} user.created events …", events - head as u64);
        bulk_load(bench, 0, events - head as u64, |_| Vec::new()).await?;
        eprintln!("  live projections catching up …");
        let secs = catch_up(bench).await?;
        eprintln!("  caught up in {secs:.1} s");
    }
    let head = log.head().await?;
    for model in ReadModel::ALL {
        model.with(Rebuilt { log: &log, head, rows: &mut *rows }).await?;
    }
    Ok(())
}

struct Rebuilt<'a> {
    log: &'a userstream_eventlog::SqlEventLog,
    head: i64,
    rows: &'a mut Vec<(String, String)>,
}

impl WithProjection for Rebuilt<'_> {
    type Output = anyhow::Result<()>;
    async fn call<P: Projection + Clone>(self, projection: P) -> anyhow::Result<()> {
        rebuild(self.log, projection, self.head, self.rows).await
    }
}

async fn rebuild<P: Projection + Clone>(
    log: &userstream_eventlog::SqlEventLog,
    projection: P,
    head: i64,
    rows: &mut Vec<(String, String)>,
) -> anyhow::Result<()> {
    let name = projection.name();
    let mut rebuild = Rebuild::start(log, projection).await?;
    let started = Instant::now();
    let reached = rebuild.run_to(head, &mut |_| {}).await?;
    // A PostgreSQL rebuild is not done until its read indexes exist.
    rebuild.build_indexes().await?;
    let secs = started.elapsed().as_secs_f64();
    let switch_started = Instant::now();
    let switched = rebuild.switch(&mut |_| {}).await?;
    record(
        rows,
        (
            format!("replay {name} into fresh tables, {reached} events"),
            format!(
                "{:.0} events/s ({secs:.1} s), switch {:.2} s (writes held up {} ms)",
                reached as f64 / secs,
                switch_started.elapsed().as_secs_f64(),
                switched.locked.as_millis()
            ),
        ),
    );
    Ok(())
}
