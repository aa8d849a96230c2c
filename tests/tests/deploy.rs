//! `deploy/` is checked: the compose file and the Kubernetes manifests
//! against their published schemas (`tests/ops/check_deploy.py`), and
//! against the binary: images, subcommands, environment names, ports and
//! probe paths agree with what `userstream` reads and serves; the
//! Prometheus configuration scrapes exactly the compose instances; the
//! Dockerfile is a multi-stage build of that binary; the Grafana dashboard
//! asks only for metrics the service exports. No container engine runs on
//! the test machines, so the image itself is not built here.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use userstream_tests::{binary, fresh_sqlite, Logged};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository").to_path_buf()
}

fn python() -> PathBuf {
    let python = repo().join("tests/ops/.venv/bin/python");
    assert!(python.exists(), "tests/ops/.venv is missing (deploy/test.sh makes it)");
    python
}

fn check(deploy: &Path) -> Result<Value, String> {
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/ops/check_deploy.py"))
        .arg(deploy)
        .output()
        .expect("run check_deploy.py");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("facts JSON"))
}

/// The subcommands and environment variables of the binary, from its help.
fn binary_surface() -> (BTreeSet<String>, BTreeSet<String>) {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(binary()).args(args).arg("--help").output().expect("help");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let top = help(&[]);
    let commands: BTreeSet<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let mut env = BTreeSet::new();
    for command in &commands {
        for piece in help(&[command.as_str()]).split("[env: ").skip(1) {
            env.insert(piece.split('=').next().unwrap_or_default().to_string());
        }
    }
    (commands, env)
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

#[tokio::test]
async fn compose_and_kubernetes_follow_their_schemas_and_the_binary() {
    let deploy = repo().join("deploy");
    let facts = check(&deploy).unwrap_or_else(|e| panic!("{e}"));
    let (commands, env_names) = binary_surface();
    assert!(commands.contains("serve") && commands.contains("migrate"), "{commands:?}");
    assert!(env_names.contains("DATABASE_URL") && env_names.contains("USERSTREAM_LISTEN"), "{env_names:?}");

    // The Dockerfile: a build stage and a slim runtime stage that runs the binary.
    let dockerfile = std::fs::read_to_string(deploy.join("Dockerfile")).expect("Dockerfile");
    let stages: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2 && stages[0].contains(" AS build"), "multi-stage: {stages:?}");
    assert!(stages.last().is_some_and(|s| s.contains("-slim") && !s.contains(" AS ")), "{stages:?}");
    assert!(dockerfile.contains("cargo build --release --locked -p userstream"));
    assert!(dockerfile.contains("COPY --from=build /src/target/release/userstream /usr/local/bin/userstream"));
    assert!(dockerfile.contains("ENTRYPOINT [\"userstream\"]"));
    assert!(dockerfile.lines().any(|l| l.starts_with("USER ") && !l.contains("root")), "runs as a user");
    let dockerfile_env: Vec<(&str, &str)> =
        dockerfile.lines().filter_map(|l| l.strip_prefix("ENV ")).filter_map(|l| l.split_once('=')).collect();
    let listen = dockerfile_env.iter().find(|(k, _)| *k == "USERSTREAM_LISTEN").expect("ENV USERSTREAM_LISTEN").1;
    let port = port_of(listen);
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    for (name, _) in &dockerfile_env {
        assert!(env_names.contains(*name), "the Dockerfile sets {name}, which the binary does not read");
    }

    // Compose: every userstream service runs the image of the Dockerfile
    // with a subcommand and environment the binary knows.
    let services = facts["compose"].as_object().expect("services");
    let ours: Vec<(&String, &Value)> =
        services.iter().filter(|(_, s)| s["build"]["dockerfile"] == "deploy/Dockerfile").collect();
    let instances: Vec<&String> = ours
        .iter()
        .filter(|(_, s)| s["command"].as_array().is_none_or(|c| c.is_empty() || c[0] == "serve"))
        .map(|(n, _)| *n)
        .collect();
    assert!(instances.len() >= 2, "two or more instances: {instances:?}");
    for (name, service) in &ours {
        assert_eq!(service["image"], "userstream:latest", "{name}");
        if let Some(command) = service["command"].as_array().and_then(|c| c.first()).and_then(Value::as_str) {
            assert!(commands.contains(command), "{name} runs `{command}`, not a subcommand");
        }
        for variable in service["env"].as_object().expect("env").keys() {
            assert!(env_names.contains(variable), "{name} sets {variable}, which the binary does not read");
        }
        assert!(
            service["env"]["DATABASE_URL"].as_str().is_some_and(|u| u.contains("@postgres:")),
            "{name} uses the postgres service"
        );
    }
    assert!(services.contains_key("postgres") && services.contains_key("nats"));
    assert!(services["nats"]["command"].as_array().is_some_and(|c| c.iter().any(|a| a == "-js")), "JetStream on");
    for instance in &instances {
        assert!(services[instance.as_str()]["env"]["NATS_URL"].as_str().is_some_and(|u| u.contains("nats:4222")));
    }
    // The load balancer proxies to exactly the instances, on the image's port.
    let nginx = std::fs::read_to_string(deploy.join("nginx.conf")).expect("nginx.conf");
    let upstreams: BTreeSet<String> = nginx
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server ").and_then(|s| s.strip_suffix(';')))
        .map(str::to_string)
        .collect();
    let expected: BTreeSet<String> = instances.iter().map(|i| format!("{i}:{port}")).collect();
    assert_eq!(upstreams, expected);
    let lb = services
        .values()
        .find(|s| s["image"].as_str().is_some_and(|i| i.starts_with("nginx")))
        .expect("a load balancer");
    assert!(lb["volumes"][0].as_str().is_some_and(|v| v.starts_with("./nginx.conf:")));

    // Prometheus scrapes exactly the instances, on /metrics, with a credential.
    for job in facts["prometheus"].as_array().expect("scrape jobs") {
        assert_eq!(job["metrics_path"], "/metrics");
        assert_eq!(job["authorization"], "Bearer", "a credential: /metrics is closed to others");
        let targets: BTreeSet<String> =
            job["targets"].as_array().expect("targets").iter().filter_map(Value::as_str).map(str::to_string).collect();
        assert_eq!(targets, expected);
    }

    // Kubernetes: the image, subcommands, environment, ports and probes.
    let server = Logged::spawn(&fresh_sqlite(), "warn", &[]);
    let mut deployments = 0;
    for resource in facts["k8s"].as_array().expect("k8s") {
        for container in resource["containers"].as_array().expect("containers") {
            assert_eq!(container["image"], "userstream:latest", "{resource}");
            let command = container["args"][0].as_str().expect("a subcommand");
            assert!(commands.contains(command), "{command}");
            for variable in container["env"].as_array().expect("env") {
                let variable = variable.as_str().expect("name");
                assert!(env_names.contains(variable), "{variable} is not read by the binary");
            }
            if let Some(listen) = container["env_values"]["USERSTREAM_LISTEN"].as_str() {
                let ports: Vec<u16> = container["ports"]
                    .as_array()
                    .expect("ports")
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|p| p as u16)
                    .collect();
                assert_eq!(ports, [port_of(listen)]);
            }
            for probe in container["probes"].as_array().expect("probes") {
                let path = probe["path"].as_str().expect("path");
                let r = reqwest::get(format!("{}{path}", server.base)).await.expect("probe");
                assert_eq!(r.status(), 200, "probe {path}");
                assert_eq!(probe["port"].as_u64(), Some(u64::from(port)));
            }
            deployments += usize::from(resource["kind"] == "Deployment");
        }
        if resource["kind"] == "Service" {
            let pods =
                facts["k8s"].as_array().expect("k8s").iter().find(|r| r["kind"] == "Deployment").expect("deployment");
            assert_eq!(resource["selector"], pods["labels"], "the Service selects the Deployment's pods");
            assert_eq!(resource["service_ports"][0]["targetPort"].as_u64(), Some(u64::from(port)));
        }
    }
    assert_eq!(deployments, 1);

    // The checks can fail: a broken copy of each file is refused.
    let broken = std::env::temp_dir().join(format!("userstream-deploy-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(broken.join("k8s")).expect("dir");
    let compose = std::fs::read_to_string(deploy.join("compose.yaml")).expect("compose");
    let k8s = std::fs::read_to_string(deploy.join("k8s/userstream.yaml")).expect("k8s");
    std::fs::write(broken.join("compose.yaml"), compose.replace("service_healthy", "when_ready")).expect("write");
    std::fs::write(broken.join("k8s/userstream.yaml"), &k8s).expect("write");
    let error = check(&broken).expect_err("a bad depends_on condition");
    assert!(error.contains("Compose Specification"), "{error}");
    std::fs::write(broken.join("compose.yaml"), &compose).expect("write");
    std::fs::write(broken.join("k8s/userstream.yaml"), k8s.replace("replicas: 2", "replicas: two")).expect("write");
    let error = check(&broken).expect_err("replicas that are not a number");
    assert!(error.contains("Kubernetes"), "{error}");
    std::fs::write(broken.join("k8s/userstream.yaml"), k8s.replace("containerPort:", "containerPorts:"))
        .expect("write");
    let error = check(&broken).expect_err("an unknown field");
    assert!(error.contains("Kubernetes"), "{error}");
    let _ = std::fs::remove_dir_all(&broken);
}

/// The runtime stage is Debian slim: the binary may need no shared library
/// beyond the C library and libgcc, which that image has.
#[test]
fn the_binary_needs_only_what_a_slim_image_has() {
    let out = std::process::Command::new("ldd").arg(binary()).output().expect("ldd");
    let libraries: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
        .collect();
    assert!(!libraries.is_empty(), "ldd printed nothing");
    let slim = [
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    for library in libraries {
        assert!(slim.contains(&library.as_str()), "the binary needs {library}, which debian:bookworm-slim lacks");
    }
}

/// Every metric the Grafana dashboard queries is one the service exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/userstream.json")).expect("dashboard"),
    )
    .expect("JSON");
    let exported: Vec<&str> = userstream_api::metrics::NAMES.iter().map(|(name, _, _)| *name).collect();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("userstream_") {
                    let base = ["_bucket", "_count", "_sum"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                    used.insert(format!("userstream_{base}"));
                }
            }
        }
    }
    for name in &used {
        assert!(exported.contains(&name.as_str()), "the dashboard queries {name}, which is not exported");
    }
    for name in exported {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}
