"""Validates deploy/ against the published schemas and prints what the Rust
test (tests/tests/deploy.rs) compares with the binary.

- compose.yaml: the Compose Specification's JSON schema, as docker-compose
  1.29.2 ships it (installed without its dependencies: only the schema file
  is read, nothing of docker-compose runs).
- k8s/*.yaml: every document against the Kubernetes OpenAPI schemas of
  kubernetes-validate, strictly (unknown fields are errors).

Prints one JSON object: images, commands, environment names, ports and
probe paths, per file, and the Prometheus scrape jobs.
"""

import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES = "1.30"

root = pathlib.Path(sys.argv[1])
facts = {"compose": {}, "k8s": []}

compose = yaml.safe_load((root / "compose.yaml").read_text())
spec_path = pathlib.Path(sys.modules["jsonschema"].__file__).parents[1] / "compose" / "config" / "compose_spec.json"
spec = json.loads(spec_path.read_text())
errors = sorted(jsonschema.Draft201909Validator(spec).iter_errors(compose), key=str)
if errors:
    sys.exit("compose.yaml breaks the Compose Specification:\n" + "\n".join(f"- {e.json_path}: {e.message}" for e in errors))
for name, service in compose["services"].items():
    env = service.get("environment", {})
    env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
    command = service.get("command", [])
    facts["compose"][name] = {
        "image": service.get("image"),
        "build": service.get("build"),
        "command": command if isinstance(command, list) else command.split(),
        "env": env,
        "ports": service.get("ports", []),
        "depends_on": list(service.get("depends_on", [])),
        "volumes": service.get("volumes", []),
    }

for path in sorted((root / "k8s").glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            sys.exit(f"{path.name}: {doc['kind']} {doc['metadata']['name']} breaks the Kubernetes {KUBERNETES} schema: {e.message} at {list(e.path)}")
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        containers = []
        for c in pod.get("containers", []):
            containers.append({
                "image": c.get("image"),
                "args": c.get("args", []),
                "env": [e["name"] for e in c.get("env", [])],
                "env_values": {e["name"]: e.get("value") for e in c.get("env", [])},
                "ports": [p["containerPort"] for p in c.get("ports", [])],
                "probes": [c[p]["httpGet"] for p in ("readinessProbe", "livenessProbe") if p in c],
            })
        facts["k8s"].append({
            "file": path.name,
            "kind": doc["kind"],
            "name": doc["metadata"]["name"],
            "containers": containers,
            "service_ports": spec.get("ports", []) if doc["kind"] == "Service" else [],
            "selector": spec.get("selector"),
            "labels": spec.get("template", {}).get("metadata", {}).get("labels"),
        })

prometheus = yaml.safe_load((root / "prometheus.yml").read_text())
facts["prometheus"] = [
    {
        "metrics_path": job.get("metrics_path", "/metrics"),
        "authorization": job.get("authorization", {}).get("type"),
        "targets": [t for c in job.get("static_configs", []) for t in c.get("targets", [])],
    }
    for job in prometheus["scrape_configs"]
]

print(json.dumps(facts))
