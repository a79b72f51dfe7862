//! No container engine runs here, so this test reads the real-stack files
//! (docker-compose.yml, Grafana provisioning, Tempo config) and checks what
//! "traces to profiles" depends on: services, environment, feature toggles,
//! data-source uids, the `tracesToProfiles` block (exactly as in
//! docs/PYROSCOPE-PROTOCOL.md) and the service-name mapping.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const REGIONS: [&str; 3] = ["us-east", "eu-north", "ap-south"];

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs =
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {y:?}"))
}

fn strings(y: &Yaml, what: &str) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {y:?}"))
        .iter()
        .map(|v| match v {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("{what}: unexpected {other:?}"),
        })
        .collect()
}

/// A service's environment as (name, value) pairs (map or `K=V` list form).
fn env(service: &Yaml, name: &str) -> Vec<(String, String)> {
    match &service["environment"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("{name}: env value {other:?}"),
                };
                (s(k, name).to_string(), v)
            })
            .collect(),
        Yaml::Array(a) => a
            .iter()
            .map(|kv| {
                let (k, v) = s(kv, name).split_once('=').expect("K=V");
                (k.to_string(), v.to_string())
            })
            .collect(),
        Yaml::BadValue => Vec::new(),
        other => panic!("{name}: environment {other:?}"),
    }
}

fn env_var(service: &Yaml, name: &str, var: &str) -> Option<String> {
    env(service, name)
        .into_iter()
        .find(|(k, _)| k == var)
        .map(|(_, v)| v)
}

/// `http://host:port` → (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}: expected http://"));
    let (host, port) = rest
        .trim_end_matches('/')
        .split_once(':')
        .unwrap_or_else(|| panic!("{url}: no port"));
    (host.to_string(), port.parse().unwrap())
}

/// Container ports a service publishes (`"host:container"` or `"container"`).
fn container_ports(service: &Yaml, name: &str) -> Vec<u16> {
    if service["ports"].is_badvalue() {
        return Vec::new();
    }
    strings(&service["ports"], name)
        .iter()
        .map(|p| p.rsplit(':').next().unwrap().parse().unwrap())
        .collect()
}

/// The `tracesToProfiles` block given in the repository's
/// `docs/PYROSCOPE-PROTOCOL.md`, under "Grafana Tempo data source".
fn protocol_traces_to_profiles() -> Yaml {
    let doc = demo_dir().join("../docs/PYROSCOPE-PROTOCOL.md");
    let text = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
    let section = &text[text
        .find("## Grafana Tempo data source")
        .expect("section \"Grafana Tempo data source\"")..];
    let start = section.find("```yaml").expect("yaml block") + "```yaml".len();
    let end = section[start..].find("```").expect("end of yaml block");
    let block = YamlLoader::load_from_str(&section[start..start + end])
        .unwrap_or_else(|e| panic!("{}: {e}", doc.display()))
        .remove(0);
    let link = block["jsonData"]["tracesToProfiles"].clone();
    assert!(
        link.as_hash().is_some_and(|h| !h.is_empty()),
        "{}: no jsonData.tracesToProfiles in the yaml block",
        doc.display()
    );
    link
}

#[test]
fn grafana_provisioning_links_traces_to_profiles() {
    let ds = load(&demo_dir().join("grafana/provisioning/datasources/datasources.yaml"));
    assert_eq!(ds["apiVersion"].as_i64(), Some(1));
    let sources = ds["datasources"].as_vec().expect("datasources list");
    let by_type = |t: &str| {
        let found: Vec<&Yaml> = sources
            .iter()
            .filter(|d| d["type"].as_str() == Some(t))
            .collect();
        assert_eq!(found.len(), 1, "exactly one {t} data source");
        found[0]
    };
    let pyroscope = by_type("grafana-pyroscope-datasource");
    let by_uid = |uid: &str| {
        sources
            .iter()
            .find(|d| d["uid"].as_str() == Some(uid))
            .unwrap_or_else(|| panic!("no data source with uid {uid}"))
    };
    let tempo = by_uid("tempo");
    assert_eq!(tempo["isDefault"].as_bool(), Some(true));

    // One Tempo data source per profile type, the same but for the type:
    // "Tempo (wall)" and "Tempo (memory)".
    let tempos: Vec<&Yaml> = sources
        .iter()
        .filter(|d| d["type"].as_str() == Some("tempo"))
        .collect();
    assert_eq!(tempos.len(), 3, "Tempo, Tempo (wall), Tempo (memory)");
    for (uid, name, type_id) in [
        (
            "tempo-wall",
            "Tempo (wall)",
            "wall:wall:nanoseconds:wall:nanoseconds",
        ),
        (
            "tempo-memory",
            "Tempo (memory)",
            "memory:alloc_space:bytes:space:bytes",
        ),
    ] {
        let other = by_uid(uid);
        assert_eq!(s(&other["name"], "name"), name);
        assert_eq!(other["url"], tempo["url"]);
        let mut expected = tempo["jsonData"]["tracesToProfiles"].clone();
        if let Some(v) = expected
            .as_mut_hash()
            .and_then(|h| h.get_mut(&Yaml::String("profileTypeId".into())))
        {
            *v = Yaml::String(type_id.into());
        }
        assert_eq!(other["jsonData"]["tracesToProfiles"], expected, "{name}");
    }

    // Exactly the block from the protocol notes.
    assert_eq!(
        tempo["jsonData"]["tracesToProfiles"],
        protocol_traces_to_profiles()
    );
    let link = &tempo["jsonData"]["tracesToProfiles"];
    assert_eq!(
        s(&link["datasourceUid"], "datasourceUid"),
        s(&pyroscope["uid"], "pyroscope uid")
    );
    assert_eq!(s(&pyroscope["uid"], "uid"), "pyroscope");
    assert_eq!(link["customQuery"].as_bool(), Some(false));
    let tags = link["tags"].as_vec().unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(
        (s(&tags[0]["key"], "key"), s(&tags[0]["value"], "value")),
        ("service.name", "service_name")
    );

    // URLs point at the compose services and ports.
    let compose = load(&demo_dir().join("docker-compose.yml"));
    let services = &compose["services"];
    for (ds, service) in [(tempo, "tempo"), (pyroscope, "pyroscope")] {
        let (host, port) = host_port(s(&ds["url"], "url"));
        assert_eq!(host, service);
        assert!(
            !services[service].is_badvalue(),
            "no compose service {service}"
        );
        assert!(container_ports(&services[service], service).contains(&port));
    }
    // Tempo's query port is the one in its config.
    let tempo_config = load(&demo_dir().join("tempo/tempo.yaml"));
    let (_, tempo_port) = host_port(s(&tempo["url"], "url"));
    assert_eq!(
        tempo_config["server"]["http_listen_port"].as_i64(),
        Some(i64::from(tempo_port))
    );
    assert_eq!(s(&pyroscope["url"], "url"), "http://pyroscope:4040");
}

#[test]
fn compose_runs_grafana_tempo_pyroscope_regions_and_load() {
    let compose = load(&demo_dir().join("docker-compose.yml"));
    let services = &compose["services"];
    for name in ["grafana", "tempo", "pyroscope", "load-generator"]
        .iter()
        .chain(REGIONS.iter())
    {
        assert!(
            !services[*name].is_badvalue(),
            "compose lacks service {name}"
        );
    }

    // Grafana: feature toggles, anonymous admin, provisioning mounted.
    let grafana = &services["grafana"];
    let toggles = env_var(grafana, "grafana", "GF_FEATURE_TOGGLES_ENABLE").expect("toggles");
    let toggles: Vec<&str> = toggles
        .split([' ', ','])
        .filter(|t| !t.is_empty())
        .collect();
    assert!(
        toggles.contains(&"traceToProfiles") && toggles.contains(&"tracesEmbeddedFlameGraph"),
        "{toggles:?}"
    );
    assert_eq!(
        env_var(grafana, "grafana", "GF_AUTH_ANONYMOUS_ENABLED").as_deref(),
        Some("true")
    );
    assert_eq!(
        env_var(grafana, "grafana", "GF_AUTH_ANONYMOUS_ORG_ROLE").as_deref(),
        Some("Admin")
    );
    let volumes = strings(&grafana["volumes"], "grafana volumes");
    let provisioning = volumes
        .iter()
        .find(|v| v.split(':').nth(1) == Some("/etc/grafana/provisioning"))
        .expect("provisioning volume");
    let host_dir = demo_dir().join(provisioning.split(':').next().unwrap());
    assert!(
        host_dir.join("datasources/datasources.yaml").is_file(),
        "{}",
        host_dir.display()
    );

    // Tempo: its config file is mounted and receives OTLP/HTTP on 4318.
    let tempo = &services["tempo"];
    let command = strings(&tempo["command"], "tempo command").join(" ");
    let config_in_container = command
        .split("-config.file=")
        .nth(1)
        .expect("-config.file")
        .split(' ')
        .next()
        .unwrap();
    let mount = strings(&tempo["volumes"], "tempo volumes")
        .into_iter()
        .find(|v| v.split(':').nth(1) == Some(config_in_container))
        .expect("tempo config mounted");
    let tempo_config = load(&demo_dir().join(mount.split(':').next().unwrap()));
    let otlp_http = s(
        &tempo_config["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        "otlp http",
    );
    assert_eq!(otlp_http, "0.0.0.0:4318");

    // Every instrumented service sends to the stack, and its profiles'
    // service_name is its OTel service.name (Grafana's tag mapping).
    let bin = env!("CARGO_BIN_EXE_ride-sharing-demo");
    let dockerfile = demo_dir().join("Dockerfile");
    assert!(dockerfile.is_file());
    let mut targets = String::new();
    for name in REGIONS.iter().copied().chain(["load-generator"]) {
        let service = &services[name];
        let get = |var: &str| env_var(service, name, var);
        assert_eq!(
            get("PYROSCOPE_SERVER_ADDRESS").as_deref(),
            Some("http://pyroscope:4040"),
            "{name}"
        );
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://tempo:4318"),
            "{name}"
        );
        if REGIONS.contains(&name) {
            // The region services push wall profiles ("Tempo (wall)").
            assert_eq!(
                get("PYROSCOPE_PROFILING_WALLTIME_ENABLED").as_deref(),
                Some("true"),
                "{name}"
            );
        }
        let otel_name =
            get("OTEL_SERVICE_NAME").unwrap_or_else(|| panic!("{name}: OTEL_SERVICE_NAME"));
        if let Some(app) = get("PYROSCOPE_APPLICATION_NAME") {
            assert_eq!(
                app, otel_name,
                "{name}: service_name must equal service.name"
            );
        }
        assert_eq!(s(&service["build"]["context"], "context"), "..");
        assert_eq!(
            demo_dir()
                .join("..")
                .join(s(&service["build"]["dockerfile"], "dockerfile"))
                .canonicalize()
                .unwrap(),
            dockerfile.canonicalize().unwrap()
        );
        // The command is one the binary accepts.
        let command = strings(&service["command"], name);
        let check = Command::new(bin)
            .args(&command)
            .arg("--check")
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: {command:?}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let parsed = String::from_utf8_lossy(&check.stdout).to_string();
        if REGIONS.contains(&name) {
            assert_eq!(
                otel_name, "ride-sharing-app",
                "{name}: Grafana's demo service name"
            );
            assert_eq!(
                get("PYROSCOPE_LABELS").as_deref(),
                Some(format!("region={name}").as_str())
            );
            // Each request's samples carry its vehicle (the Grafana query
            // `{service_name="ride-sharing-app", vehicle="car"}`).
            assert_eq!(
                get("PYROSCOPE_SPAN_LABELS").as_deref(),
                Some("vehicle"),
                "{name}"
            );
            assert!(
                parsed.contains("mode: Serve")
                    && parsed.contains(&format!("region: Some({name:?})")),
                "{parsed}"
            );
            assert!(
                parsed.contains("port: 5000") && parsed.contains("bind: \"0.0.0.0\""),
                "{parsed}"
            );
        } else {
            assert!(
                parsed.contains("mode: Load") && parsed.contains("duration: None"),
                "{parsed}"
            );
            targets = parsed;
        }
    }
    // The load generator orders from every region's service.
    for region in REGIONS {
        assert!(
            targets.contains(&format!("({region:?}, \"http://{region}:5000\")")),
            "{targets}"
        );
    }
}
