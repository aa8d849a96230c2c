//! Crashes and faults under load, black-box, with the figures printed:
//! `kill -9` of the PostgreSQL server during 10,000 concurrent commands, a
//! full disk under SQLite, and a client that writes an oversized body whole
//! before it reads the answer.

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use userstream_tests::{dumps, replay, settle, shadow, TestApp, TestDb, MODELS};

fn deploy(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(script)
}

/// A PostgreSQL cluster of this test's own (the shared test cluster must
/// not be killed), removed on drop.
struct OwnCluster {
    dir: String,
    url: String,
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let out = Command::new("bash").arg(deploy("postgres.sh")).arg("start").output().expect("postgres.sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        OwnCluster { url: var("DATABASE_URL_TEST"), dir: var("USERSTREAM_PG_DIR") }
    }

    /// `kill -9` of the postmaster and every process it started.
    fn kill_9(&self) {
        let pid_file = std::fs::read_to_string(format!("{}/data/postmaster.pid", self.dir)).expect("postmaster.pid");
        let pid = pid_file.lines().next().expect("pid").trim().to_string();
        let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
        assert!(Command::new("kill").args(["-9", &pid]).status().expect("kill").success());
        // The children notice the postmaster's death; wait until none is left.
        for _ in 0..200 {
            let left = Command::new("pgrep").args(["-P", &pid]).output().expect("pgrep");
            if left.stdout.is_empty() {
                return;
            }
            let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts the killed server again; it recovers from its WAL. A start
    /// right after the kill can find the old shared memory still attached
    /// by a dying backend: it is tried again for up to 10 s.
    fn restart(&self) {
        let mut last = String::new();
        for _ in 0..20 {
            let out =
                Command::new("bash").arg(deploy("postgres.sh")).args(["restart", &self.dir]).output().expect("restart");
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).to_string();
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("restart: {last}");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(deploy("postgres.sh")).args(["stop", &self.dir]).output();
    }
}

/// What a load run saw: the user ids answered 2xx, and how many were sent.
struct Outcome {
    sent: usize,
    acknowledged: Vec<String>,
    failed: usize,
    /// Answers other than 200 and 503 `storage_unavailable`.
    other: Vec<String>,
}

/// `count` CreateUser commands, `in_flight` at a time; phone numbers from `first_phone` on.
async fn create_many(app: &TestApp, count: usize, in_flight: usize, tag: &str, first_phone: usize) -> Outcome {
    let url = app.customers();
    let results: Vec<Result<String, String>> = futures_util::stream::iter(0..count)
        .map(|n| {
            let (client, url) = (app.client.clone(), url.clone());
            let body = json!({"phone_number": format!("9{:09}", first_phone + n), "username": format!("{tag}{n}")});
            async move {
                let r = client
                    .post(&url)
                    .json(&body)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .map_err(|e| format!("no answer: {e}"))?;
                let status = r.status().as_u16();
                let v: Value = r.json().await.map_err(|_| format!("{status} without a JSON body"))?;
                match (status, v["user"]["_id"].as_str()) {
                    (200, Some(id)) => Ok(id.to_string()),
                    _ => Err(format!("{status} {}", v["code"].as_str().unwrap_or_default())),
                }
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let (mut acknowledged, mut other) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(id) => acknowledged.push(id),
            Err(answer) if answer == "503 storage_unavailable" => {}
            Err(answer) => other.push(answer),
        }
    }
    Outcome { sent: count, failed: count - acknowledged.len(), acknowledged, other }
}

/// Every user id whose `user.created` is in the log, and how often.
async fn created_in_log(db: &userstream_eventlog::Db) -> Vec<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT stream, COUNT(*) FROM events WHERE event_type = 'user.created' GROUP BY stream",
    )
    .fetch_all(&db.pool)
    .await
    .expect("created events")
}

async fn every_projection_equals_a_rebuild(app: &TestApp, db: &TestDb) {
    settle(app).await;
    let live = userstream_eventlog::Db::connect(&db.url).await.expect("connect");
    let head = app.head().await;
    for (projection, tables) in MODELS {
        replay(db, &["--projection", projection, "--to", &head.to_string()]);
        let fresh = shadow(db, projection).await;
        assert_eq!(dumps(&fresh, tables).await, dumps(&live, tables).await, "{projection}: live == rebuilt");
        fresh.pool.close().await;
    }
}

#[tokio::test]
async fn postgres_killed_9_under_10000_concurrent_commands_loses_nothing_acknowledged() {
    if std::env::var("DATABASE_URL_TEST").is_err() {
        assert!(std::env::var("CI").is_err(), "CI runs the tests through deploy/postgres.sh run");
        eprintln!("no PostgreSQL for tests: skipped");
        return;
    }
    let cluster = OwnCluster::start();
    let db = TestDb { backend: "postgres", url: cluster.url.clone() };
    let app = TestApp::spawn_on(db.clone(), &[]).await;

    let load = create_many(&app, 10_000, 64, "pg", 100_000_000);
    let crash = async {
        while app.head().await < 2_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.kill_9();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart();
    };
    let (outcome, ()) = tokio::join!(load, crash);

    let log = userstream_eventlog::Db::connect(&db.url).await.expect("connect");
    let created = created_in_log(&log).await;
    let twice: Vec<_> = created.iter().filter(|(_, n)| *n > 1).collect();
    let in_log: HashSet<&str> = created.iter().filter_map(|(s, _)| s.strip_prefix("user-")).collect();
    let lost: Vec<_> = outcome.acknowledged.iter().filter(|id| !in_log.contains(id.as_str())).collect();
    eprintln!(
        "postgres kill -9: sent {}, acknowledged {}, answered 503 {}, found after recovery {}, lost {}",
        outcome.sent,
        outcome.acknowledged.len(),
        outcome.failed,
        in_log.len(),
        lost.len()
    );
    assert!(outcome.failed > 0, "the kill happened while commands were in flight");
    assert!(outcome.other.is_empty(), "refused commands answer 503 storage_unavailable: {:?}", outcome.other);
    assert!(outcome.acknowledged.len() >= 2_000, "{} acknowledged", outcome.acknowledged.len());
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
    assert!(twice.is_empty(), "created twice: {twice:?}");

    // The service recovered: it takes commands again, and every read model
    // equals a rebuild from the log.
    let after = create_many(&app, 20, 4, "after", 200_000_000).await;
    assert_eq!(after.acknowledged.len(), 20, "the service takes commands after the database returned");
    every_projection_equals_a_rebuild(&app, &db).await;
}

/// A small filesystem of this test's own, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(format!("userstream-full-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn available(&self) -> u64 {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&self.dir).output().expect("df");
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df avail")
    }

    /// Fills the disk but for `leave` bytes.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.dir.join("filler");
        let size = self.available().saturating_sub(leave);
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            file.write_all(&chunk[..n]).expect("fill");
            written += n as u64;
        }
        file.sync_all().expect("sync");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_loses_nothing_acknowledged_and_recovers() {
    let Some(disk) = SmallDisk::mount(64) else {
        eprintln!("this machine does not let the test mount a small filesystem: skipped");
        return;
    };
    let db = TestDb { backend: "sqlite", url: format!("sqlite://{}", disk.dir.join("full.db").display()) };
    let app = TestApp::spawn_on(db.clone(), &[]).await;
    let warm = create_many(&app, 200, 8, "warm", 300_000_000).await;
    assert_eq!(warm.acknowledged.len(), 200);
    settle(&app).await;

    let filler = disk.fill(256 * 1024);
    let url = app.customers();
    let (mut acknowledged, mut full, mut other) = (warm.acknowledged, 0, Vec::new());
    let mut refused = Vec::new();
    let mut sent = warm.sent;
    for n in 0..5_000 {
        let body = json!({"phone_number": format!("8{:09}", 100_000_000 + n), "username": format!("full{n}")});
        let r = app.client.post(&url).json(&body).send().await.expect("send");
        sent += 1;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        match status {
            200 => acknowledged.push(v["user"]["_id"].as_str().expect("id").to_string()),
            503 => {
                assert_eq!(v["code"], "storage_full", "{v}");
                refused.push(format!("full{n}"));
                assert!(v["message"].as_str().is_some_and(|m| m.contains("no space")), "{v}");
                full += 1;
                if full >= 20 {
                    break;
                }
            }
            _ => other.push((status, v)),
        }
    }
    assert!(other.is_empty(), "a full disk answers 503, not: {other:?}");
    assert!(full >= 20, "the disk never filled: {} acknowledged", acknowledged.len());

    // Space returns: commands succeed again, and nothing acknowledged is lost.
    std::fs::remove_file(&filler).expect("free the disk");
    let mut recovered = false;
    for n in 0..100 {
        let body = json!({"phone_number": format!("7{:09}", 100_000_000 + n), "username": format!("back{n}")});
        let r = app.client.post(&url).json(&body).send().await.expect("send");
        sent += 1;
        if r.status() == 200 {
            let v: Value = r.json().await.expect("json");
            acknowledged.push(v["user"]["_id"].as_str().expect("id").to_string());
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "commands still fail after space returned");
    let log = userstream_eventlog::Db::connect(&db.url).await.expect("connect");
    let in_log: HashSet<String> = created_in_log(&log)
        .await
        .into_iter()
        .filter_map(|(s, _)| s.strip_prefix("user-").map(str::to_string))
        .collect();
    let lost: Vec<_> = acknowledged.iter().filter(|id| !in_log.contains(*id)).collect();
    eprintln!(
        "full disk: sent {sent}, acknowledged {}, answered 503 {full}, found after recovery {}, lost {}",
        acknowledged.len(),
        in_log.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
    settle(&app).await;
    assert_eq!(app.total_users().await, in_log.len() as i64, "the read model caught up with the log");
    for id in acknowledged.iter().step_by(50) {
        let r = app.client.get(format!("{url}/{id}")).send().await.expect("get");
        assert_eq!(r.status(), 200, "acknowledged user {id}");
    }
    // A 503 wrote nothing.
    for username in &refused {
        let (status, found) = userstream_tests::call(app.client.get(format!("{url}/search?query={username}"))).await;
        assert_eq!((status, found["users"].as_array().map(Vec::len)), (200, Some(0)), "{username}: {found}");
    }
    drop(app);
}

/// Writes a request whose body is `size` bytes in full, then reads the answer.
fn post_whole_body(base: &str, path: &str, token: &str, size: usize) -> std::io::Result<String> {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        let n = chunk.len().min(size - sent);
        stream.write_all(&chunk[..n])?;
        sent += n;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[tokio::test]
async fn an_oversize_body_gets_413_even_when_the_client_writes_it_whole_first() {
    let app = TestApp::spawn().await;
    let path = app.customers().replacen(&app.base, "", 1);
    let (base, token) = (app.base.clone(), app.token.clone());
    let answer = tokio::task::spawn_blocking(move || post_whole_body(&base, &path, &token, 8 * 1024 * 1024))
        .await
        .expect("join")
        .expect("the client writes its whole body and reads an answer, not a broken pipe");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // A client that asks first (`Expect: 100-continue`) gets the 413 without sending the body.
    let addr = app.base.trim_start_matches("http://").to_string();
    let path = app.customers().replacen(&app.base, "", 1);
    let token = app.token.clone();
    let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(&addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 9000000\r\nExpect: 100-continue\r\n\r\n"
        );
        stream.write_all(head.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .await
    .expect("join")
    .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
