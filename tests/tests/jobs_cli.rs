//! `userstream import users FILE` and `userstream export users FILE`, the
//! real binary on a SQLite file: the summary, Ctrl-C in the middle, and the
//! same command resuming the job.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use userstream_tests::{binary, APP};

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("userstream-cli-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        Scratch { dir }
    }

    fn database(&self) -> String {
        format!("sqlite://{}", self.dir.join("cli.db").display())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command.args(args).args(["--database", &self.database(), "--application", APP]);
        command.env("USERSTREAM_FILES_DIR", self.dir.join("files")).env("RUST_LOG", "warn");
        command
    }

    async fn count(&self, sql: &str) -> i64 {
        let db = userstream_eventlog::Db::connect(&self.database()).await.expect("connect");
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&db.pool).await.unwrap_or(0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn users_file(path: &Path, n: u32) {
    let mut csv = String::from("username,phone_number,email\n");
    for i in 0..n {
        csv.push_str(&format!("user{i},9{i:09},u{i}@x.io\n"));
    }
    csv.push_str("x,9999999999,bad\n");
    std::fs::write(path, csv).expect("write");
}

#[tokio::test]
async fn an_import_prints_its_summary_and_an_export_writes_the_file() {
    let s = Scratch::new();
    let file = s.dir.join("users.csv");
    users_file(&file, 20);
    let out = s.command(&["import", "users", file.to_str().expect("path")]).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("completed: 21 rows, 20 applied, 1 rejected"), "{stdout}");
    assert!(stdout.contains("rejected rows: ") && stdout.contains("errors.csv"), "{stdout}");
    let exported = s.dir.join("out.jsonl");
    let out = s.command(&["export", "users", exported.to_str().expect("path")]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&exported).expect("export file");
    assert_eq!(text.lines().count(), 20, "{text}");
    // A file the CLI cannot read is an error, not a job.
    let out = s.command(&["import", "users", "/nonexistent.csv"]).output().expect("run");
    assert!(!out.status.success());
}

#[tokio::test]
async fn ctrl_c_stops_an_import_and_the_same_command_resumes_it() {
    let s = Scratch::new();
    let file = s.dir.join("many.csv");
    let n = 60_000;
    users_file(&file, n);
    let path = file.to_str().expect("path").to_string();
    let mut child =
        s.command(&["import", "users", &path]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    // Ctrl-C once the job has recorded progress.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while s.count("SELECT COUNT(*) FROM events WHERE event_type = 'job.progressed'").await == 0 {
        assert!(std::time::Instant::now() < deadline, "no progress recorded");
        assert!(child.try_wait().expect("wait").is_none(), "the import ended before it was interrupted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stopped: {stderr}");
    assert!(stderr.contains("resumes on the next run"), "{stderr}");
    let created = s.count("SELECT COUNT(*) FROM events WHERE event_type = 'user.created'").await;
    assert!(created > 0 && created < i64::from(n), "stopped midway: {created} users");

    let out = s.command(&["import", "users", &path]).output().expect("run");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout} {stderr}");
    assert!(stderr.contains("resuming job"), "{stderr}");
    assert!(stdout.contains(&format!("completed: {} rows, {n} applied, 1 rejected", n + 1)), "{stdout}");
    assert_eq!(s.count("SELECT COUNT(*) FROM events WHERE event_type = 'user.created'").await, i64::from(n));
    assert_eq!(
        s.count("SELECT COUNT(*) FROM events WHERE stream LIKE 'job-%' AND event_type = 'job.created'").await,
        1
    );
}
