//! The README's walk-through works exactly as written, against the real binary.

use userstream_tests::TestApp;

/// The files directory of a service on a SQLite file: `files/` beside it.
fn files_dir(app: &TestApp) -> std::path::PathBuf {
    let path = app.db.url.trim_start_matches("sqlite://");
    let dir = std::path::Path::new(path).parent().expect("database dir").join("files");
    std::fs::create_dir_all(&dir).expect("files dir");
    dir
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README");
    let start = readme.find("<!-- walkthrough -->").expect("walkthrough marker");
    let end = readme.find("<!-- /walkthrough -->").expect("end marker");
    let block = &readme[start..end];
    let script = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(script, _)| script)
        .expect("a sh code block");
    assert!(script.contains("http://127.0.0.1:8080"), "the walk-through talks to the default address");

    let app = TestApp::spawn().await;
    let script = script.replace("http://127.0.0.1:8080", &app.base);
    let dir = std::env::temp_dir().join(format!("userstream-readme-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("US_KEY", &app.key.api_key)
        .env("US_SECRET", &app.key.api_secret)
        .env("FILES", files_dir(&app))
        .current_dir(&dir)
        .output()
        .await
        .expect("run bash");
    assert!(
        output.status.success(),
        "walk-through failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"alice@example.com\""), "{stdout}");
    assert!(stdout.contains("\"ready\":true"), "{stdout}");
    assert!(stdout.contains("\"total_users\":1"), "the rule group was evaluated: {stdout}");
    assert!(stdout.contains("\"count\":{\"error\":1,\"success\":1,\"total\":2}"), "the import job: {stdout}");
    assert!(stdout.contains("3,") && stdout.contains("email"), "the error file: {stdout}");
    assert!(stdout.contains("\"username\":"), "the export: {stdout}");
    assert!(stdout.contains("\"erased\":true") && stdout.contains("Personal data erased"), "the erasure: {stdout}");
    // Bob was created once despite two attempts with one Idempotency-Key.
    let list: serde_json::Value = app
        .client
        .get(format!("{}/customers/search?q=bob", app.fynd("1", "000000000000000000000001")))
        .header("x-min-position", app.head().await.to_string())
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    assert_eq!(list["users"].as_array().map(Vec::len), Some(1), "{list}");
}
