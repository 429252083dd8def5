//! The deployment files under `deploy/`: the Kubernetes manifests render with `kubectl
//! kustomize`, pass a Kubernetes schema check offline (PyPI's `kubernetes-validate`, strict,
//! for the newest Kubernetes it knows and the oldest these manifests support), and say what
//! matters for a fleet that never drops a request: a rolling update that keeps every replica
//! until its successor is ready, probes on the operator port, a grace period longer than the
//! drain, the hardened securityContext, and only real `TABULA_*` settings. The container
//! image's Containerfile is checked here too; building the image is `deploy/image/build.sh`,
//! outside the suite (a cold static build of wasmtime takes many minutes).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::harness::{TABULA, root};

/// Each overlay under `deploy/k8s/overlays`: one Redis of its own, and a Redis Cluster.
const OVERLAYS: [&str; 2] = ["redis", "redis-cluster"];

/// The validator and the command that installs it, named when it is missing.
const INSTALL_VALIDATOR: &str = "python3 -m pip install kubernetes-validate==1.37.0";

/// The oldest Kubernetes the manifests are for: the preStop `sleep` action (the image has no
/// shell for an `exec: sleep`) is on by default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";

#[test]
fn every_overlay_renders_and_passes_a_strict_schema_check() {
    for overlay in OVERLAYS {
        let yaml = render(&overlay_dir(overlay));
        for version in [None, Some(OLDEST_KUBERNETES)] {
            validate(&yaml, version, overlay);
        }
    }
}

#[test]
fn the_servicemonitor_component_renders_and_validates_with_an_overlay() {
    // A kustomization of our own, as an operator's overlay would be, adding the component.
    // kustomize takes only relative paths: this one is three levels below the root.
    let dir = root().join("target/manifests-tests/servicemonitor");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../../deploy/k8s/overlays/redis]\n\
         components: [../../../deploy/k8s/components/servicemonitor]\n",
    )
    .unwrap();
    let yaml = render(&dir);
    // The ServiceMonitor is a CRD the schemas do not know: a warning, not a failure; every
    // built-in kind beside it is still checked.
    validate(&yaml, None, "redis + components/servicemonitor");
    let docs = documents(&yaml);
    let monitor = find(&docs, "ServiceMonitor", "tabula");
    let service = find(&docs, "Service", "tabula-operator");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    for (key, value) in selector.as_object().unwrap() {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the ServiceMonitor selects the operator Service by {key}"
        );
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let deployment = find(&docs, "Deployment", "tabula");
    assert_eq!(
        port_number(deployment, &service["spec"]["ports"][0]["targetPort"]),
        operator_port(deployment),
        "the operator Service points at the operator listener"
    );
}

#[test]
fn the_deployment_rolls_without_losing_capacity_and_probes_the_operator_port() {
    for overlay in OVERLAYS {
        let docs = documents(&render(&overlay_dir(overlay)));
        let deployment = find(&docs, "Deployment", "tabula");
        let spec = &deployment["spec"];
        assert_eq!(spec["strategy"]["type"], "RollingUpdate", "{overlay}");
        assert_eq!(
            spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
            "{overlay}: an old replica must stay until its successor is ready"
        );
        assert!(
            spec.get("replicas").is_none(),
            "{overlay}: the HorizontalPodAutoscaler owns the replica count; a `replicas` in \
             the Deployment resets it on every apply"
        );

        let container = tabula_container(deployment);
        let operator = operator_port(deployment);
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{overlay}: {probe}");
            assert_eq!(
                port_number(deployment, &get["port"]),
                operator,
                "{overlay}: {probe} asks the operator listener"
            );
        }
        let annotations = &spec["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{overlay}");
        assert_eq!(
            annotations["prometheus.io/port"].as_str().unwrap(),
            operator.to_string(),
            "{overlay}: Prometheus scrapes the operator listener"
        );

        // SIGTERM comes after preStop; then tabula drains for the drain timeout. The pod must
        // not be killed before both are over.
        let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{overlay}: preStop sleeps before SIGTERM"));
        let drain = match env_value(container, "TABULA_DRAIN_TIMEOUT") {
            Some(value) => value.parse::<f64>().unwrap(),
            None => help_default("--drain-timeout").parse::<f64>().unwrap(),
        };
        let grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_f64()
            .unwrap();
        assert!(
            grace > pre_stop as f64 + drain,
            "{overlay}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s \
             plus the drain timeout {drain} s, or requests in flight are killed"
        );
    }
}

#[test]
fn pods_run_unprivileged_on_a_read_only_root() {
    for overlay in OVERLAYS {
        let docs = documents(&render(&overlay_dir(overlay)));
        for (kind, name) in [("Deployment", "tabula"), ("StatefulSet", "tabula-redis")] {
            let Some(workload) = try_find(&docs, kind, name) else {
                continue;
            };
            let pod = &workload["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
            for container in pod["containers"].as_array().unwrap() {
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(
                    security["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
            }
        }
        // The writable places tabula needs on a read-only root: the compile cache it is
        // told about, and the temporary directory of the supervisor's sockets.
        let deployment = find(&docs, "Deployment", "tabula");
        let container = tabula_container(deployment);
        let mounts: BTreeSet<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        let cache = env_value(container, "TABULA_CACHE_DIR").expect("TABULA_CACHE_DIR is set");
        assert!(mounts.contains(cache), "{overlay}: {cache} is a volume");
        assert!(mounts.contains("/tmp"), "{overlay}: /tmp is a volume");
    }
}

#[test]
fn secrets_come_from_secrets_and_every_setting_is_a_real_flag() {
    let flags = env_names();
    for overlay in OVERLAYS {
        let docs = documents(&render(&overlay_dir(overlay)));
        let deployment = find(&docs, "Deployment", "tabula");
        let container = tabula_container(deployment);
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            assert!(
                flags.contains(name),
                "{overlay}: {name} is not a setting of `tabula serve` (see its --help)"
            );
        }
        for name in ["TABULA_STORE", "TABULA_ADMIN_TOKEN"] {
            let var = container["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{overlay}: {name} is set"));
            assert!(
                var.get("value").is_none(),
                "{overlay}: {name} is a secret: it must come from a Secret, not the manifest"
            );
            assert!(
                var["valueFrom"]["secretKeyRef"]["name"].is_string(),
                "{overlay}: {name} comes from a secretKeyRef"
            );
        }
        // The artifact key is a file from a Secret, readable by the pod's group only.
        let key_file = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "TABULA_ARTIFACT_KEY_FILE")
            .unwrap_or_else(|| panic!("{overlay}: replicas share compiled artifacts"));
        let key_file = key_file["value"].as_str().unwrap();
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| key_file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{overlay}: {key_file} is on a volume"));
        assert_eq!(mount["readOnly"], true, "{overlay}");
        let volume = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(
            volume["secret"]["secretName"], "tabula-artifact-key",
            "{overlay}: the key comes from a Secret"
        );
        assert_eq!(
            volume["secret"]["defaultMode"], 0o440,
            "{overlay}: the key is readable by root and the pod's group only"
        );

        // The store's Secret is the overlay's (with its content hash in the name), so the
        // Deployment's reference must have been rewritten to it.
        let store = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "TABULA_STORE")
            .unwrap();
        let secret = store["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap();
        let stored = find(&docs, "Secret", secret);
        let key = store["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
        assert!(
            stored["data"][key].is_string(),
            "{overlay}: the Secret {secret} holds `{key}`"
        );
    }
}

#[test]
fn only_the_apps_port_is_open_to_the_network() {
    for overlay in OVERLAYS {
        let docs = documents(&render(&overlay_dir(overlay)));
        let deployment = find(&docs, "Deployment", "tabula");
        let policy = find(&docs, "NetworkPolicy", "tabula");
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (key, value) in policy["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(
                &labels[key], value,
                "{overlay}: the policy selects tabula's pods"
            );
        }
        let listen_port = |var: &str| -> u64 {
            let addr = env_value(tabula_container(deployment), var).unwrap();
            addr.rsplit(':').next().unwrap().parse().unwrap()
        };
        let apps = listen_port("TABULA_LISTEN");
        let private = [
            listen_port("TABULA_OPERATOR_LISTEN"),
            listen_port("TABULA_ADMIN_LISTEN"),
        ];
        let mut open = BTreeSet::new();
        for rule in policy["spec"]["ingress"].as_array().unwrap() {
            let ports: Vec<u64> = rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| port_number(deployment, &p["port"]))
                .collect();
            if rule.get("from").is_none() {
                open.extend(ports);
            } else {
                for port in ports {
                    assert!(
                        private.contains(&port),
                        "{overlay}: port {port} has a rule of its own"
                    );
                }
            }
        }
        assert_eq!(
            open,
            BTreeSet::from([apps]),
            "{overlay}: only the apps' port is open to any peer; the operator and admin \
             ports only to who the policy names"
        );
        let service = find(&docs, "Service", "tabula");
        for port in service["spec"]["ports"].as_array().unwrap() {
            assert_eq!(
                port_number(deployment, &port["targetPort"]),
                apps,
                "{overlay}: the Service exposes only the apps' port"
            );
        }
        // The autoscaler and the disruption budget act on these pods.
        let hpa = find(&docs, "HorizontalPodAutoscaler", "tabula");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "tabula");
        assert!(
            hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2,
            "{overlay}"
        );
        let pdb = find(&docs, "PodDisruptionBudget", "tabula");
        assert_eq!(
            pdb["spec"]["selector"], deployment["spec"]["selector"],
            "{overlay}"
        );
    }
}

#[test]
fn the_image_is_one_static_binary_from_scratch_as_a_numbered_user() {
    let file = std::fs::read_to_string(root().join("deploy/image/Containerfile")).unwrap();
    let instructions: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let from: Vec<&&str> = instructions
        .iter()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert_eq!(
        from.last().map(|l| l.trim()),
        Some("FROM scratch"),
        "the final stage is FROM scratch"
    );
    assert!(
        !instructions.iter().any(|line| line.starts_with("RUN ")),
        "a scratch image has no shell to RUN anything"
    );
    let user = instructions
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the image names its user");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric user (there is no /etc/passwd), so runAsNonRoot can check it");
    assert_ne!(uid, 0, "not root");
    assert!(
        file.contains("[\"/tabula\"]"),
        "the entry point is the binary itself, in exec form (no shell)"
    );
    // Every default the image sets is a real setting, and the listeners it opens are the
    // ones the manifests probe and expose.
    let flags = env_names();
    for name in file
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("TABULA_"))
    {
        assert!(
            flags.contains(name),
            "{name} is not a setting of `tabula serve`"
        );
    }
}

/// `deploy/k8s/overlays/NAME`.
fn overlay_dir(name: &str) -> PathBuf {
    root().join("deploy/k8s/overlays").join(name)
}

/// `kubectl kustomize DIR`: the manifests as they would be applied.
fn render(dir: &Path) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `kubectl kustomize` ({e}): the manifests' tests need kubectl 1.27 or \
                 later on PATH (it carries kustomize 5)"
            )
        });
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `kubernetes-validate --strict` on rendered manifests, for `version` (its newest when
/// `None`); panics with the validator's words on any invalid resource.
fn validate(yaml: &str, version: Option<&str>, what: &str) {
    let mut command = Command::new("kubernetes-validate");
    command.arg("--strict").arg("--quiet");
    if let Some(version) = version {
        command.args(["-k", version]);
    }
    let output = pipe(command.arg("-"), yaml).unwrap_or_else(|e| {
        panic!("running kubernetes-validate ({e}): install it with `{INSTALL_VALIDATOR}`")
    });
    assert!(
        output.status.success(),
        "{what}: the manifests do not validate against Kubernetes {}:\n{}{}",
        version.unwrap_or("(newest)"),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `command` with `input` on its standard input.
fn pipe(command: &mut Command, input: &str) -> std::io::Result<std::process::Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    child.wait_with_output()
}

/// The YAML documents of rendered manifests, as JSON. PyYAML reads them: it comes with
/// kubernetes-validate, and keeps a YAML parser out of the workspace's dependencies.
fn documents(yaml: &str) -> Vec<Value> {
    let output = pipe(
        Command::new("python3").args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ]),
        yaml,
    )
    .expect("running python3");
    assert!(
        output.status.success(),
        "reading the manifests with PyYAML failed (it comes with `{INSTALL_VALIDATOR}`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn try_find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    try_find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
}

fn tabula_container(deployment: &Value) -> &Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tabula")
        .expect("a container named tabula")
}

/// The value a container's `env` gives `name`, if it gives one literally.
fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)?["value"]
        .as_str()
}

/// The operator listener's port, from TABULA_OPERATOR_LISTEN.
fn operator_port(deployment: &Value) -> u64 {
    let addr = env_value(tabula_container(deployment), "TABULA_OPERATOR_LISTEN")
        .expect("TABULA_OPERATOR_LISTEN is set");
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A port given by number or by the name of one of the tabula container's ports.
fn port_number(deployment: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = port.as_str().expect("a port number or name");
    tabula_container(deployment)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// `tabula serve --help`, once.
fn serve_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let output = Command::new(&*TABULA)
            .args(["serve", "--help"])
            .env("COLUMNS", "1000")
            .output()
            .expect("running tabula serve --help");
        String::from_utf8(output.stdout).unwrap()
    })
}

/// Every `TABULA_*` variable `tabula serve` reads, from its --help.
fn env_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = serve_help()
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split('=').next().unwrap().to_string())
        .collect();
    // Not a flag: the admin listener's token is read only from the environment, so that it
    // never shows in a process listing.
    names.insert("TABULA_ADMIN_TOKEN".into());
    names
}

/// The `[default: …]` of `flag` in `tabula serve --help`.
fn help_default(flag: &str) -> String {
    let help = serve_help();
    let start = help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("{flag} in tabula serve --help"));
    let rest = &help[start..];
    let default = rest.find("[default: ").unwrap() + "[default: ".len();
    rest[default..].split(']').next().unwrap().to_string()
}
