//! The official Fynd platform SDK (`@gofynd/fdk-client-javascript` 3.4.2,
//! strict response checks) against the real binary. `deploy/test.sh`
//! installs the SDK into `tests/sdk/` with `npm ci`.

use std::path::Path;
use userstream_tests::TestApp;

#[tokio::test]
async fn the_fynd_sdk_drives_every_customers_session_and_config_method() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
    assert!(
        sdk.join("node_modules/@gofynd/fdk-client-javascript").exists(),
        "the SDK is not installed: run `npm ci --prefix tests/sdk` (deploy/test.sh does)"
    );
    let files = std::env::temp_dir().join(format!("userstream-sdk-files-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&files).expect("files dir");
    let files_env = files.display().to_string();
    let app = TestApp::spawn_on(userstream_tests::fresh_sqlite(), &[("USERSTREAM_FILES_DIR", &files_env)]).await;
    let files_arg = files.display().to_string();
    let args = ["fynd-customers.js", &app.base, &app.key.api_key, &app.key.api_secret, &files_arg];
    let stdout = userstream_tests::run_script(Path::new("node"), &sdk, &args, &[]).await;
    assert!(
        stdout.contains("customers, timeline, session, config, attribute, group and bulk job methods passed"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&files);
}

/// The official Passage SDK (`passage-identity` 3.0.2): the generated client
/// for all seven user calls and the list filters, and the `Passage` wrapper.
/// `deploy/test.sh` installs it into the venv `tests/sdk/.venv`.
#[tokio::test]
async fn the_passage_sdk_drives_all_seven_user_calls_and_the_list_filters() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
    let python = sdk.join(".venv/bin/python");
    assert!(
        python.exists(),
        "the Passage SDK venv is missing: python3 -m venv tests/sdk/.venv && tests/sdk/.venv/bin/pip install -r tests/sdk/requirements.txt (deploy/test.sh does)"
    );
    let app = TestApp::spawn().await;
    let args = ["passage-users.py", &app.base, userstream_tests::APP, &app.key.bearer];
    let stdout = userstream_tests::run_script(&python, &sdk, &args, &[]).await;
    assert!(stdout.contains("all seven user calls and the list filters passed"), "{stdout}");
}
