//! The command line: example configs validate, bad config exits 64 naming the key, --help and
//! --version work, check-config prints the effective config with the environment applied.

use std::path::Path;

use bedrock_flow_test_support as support;

#[test]
fn example_configs_and_scenarios_parse_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = bedrock_flow_exporter::config::Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!config.flows.is_empty());
            checked += 1;
        }
    }
    assert!(checked >= 3);
    for entry in std::fs::read_dir(dir.join("scenarios")).unwrap() {
        let path = entry.unwrap().path();
        bedrock_flow_emulator::Scenario::load(path.to_str().unwrap(), 0, 0).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[poll]\ninterval_secs = 0\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "poll.interval_secs"),
        ("[poll]\nintervalsecs = 5\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "intervalsecs"),
        ("[[flows]]\nid = \"nope\"\n", "flows[0].id"),
        ("[traces]\ncapture_content = \"some\"\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "capture_content"),
        ("[state]\npath = \"x.sqlite\"\nurl = \"postgresql://u@db/x\"\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "state.url"),
        ("[state]\nurl = \"mysql://u@db/x\"\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "state.url"),
        ("[state]\nurl = \"postgresql://u@db/x\"\nlease_secs = 10\n[poll]\ninterval_secs = 15\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "state.lease_secs"),
        ("[traces]\nendpoint = \"https://otel.example:4317\"\ncertificate = \"/nonexistent/ca.pem\"\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "traces.certificate"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for command in ["run", "check-config"] {
            let out = support::command(&[command, "--config", path.to_str().unwrap()]).output().unwrap();
            assert_eq!(out.status.code(), Some(64), "{command} with {text}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(key), "{key} named: {stderr}");
        }
    }
    let missing = support::command(&["run", "--config", "/nonexistent/config.toml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(64));
    // A standard variable with a value that cannot be used: 64, naming the key and the variable.
    std::fs::write(dir.path().join("good.toml"), "[[flows]]\nid = \"ABCDEFGHIJ\"\n").unwrap();
    let good = dir.path().join("good.toml");
    let env = support::command(&["check-config", "--config", good.to_str().unwrap()]).env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd").output().unwrap();
    assert_eq!(env.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&env.stderr);
    assert!(stderr.contains("traces.compression (from OTEL_EXPORTER_OTLP_TRACES_COMPRESSION)"), "{stderr}");
    let usage = support::command(&["run", "--no-such-flag"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(64), "bad usage is 64 too");
}

#[test]
fn help_version_and_check_config() {
    for args in [&["--help"][..], &["--version"], &["run", "--help"], &["emulate", "--help"], &["demo", "--help"], &["check-config", "--help"]] {
        let out = support::command(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
    let version = support::command(&["--version"]).output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bedrock-flow-exporter.toml");
    let out = support::command(&["check-config", "--config", path.to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("endpoint = \"http://collector:4318\""), "{effective}");
    assert!(effective.contains("protocol = \"http/protobuf\""));
    assert!(effective.contains("interval_secs = 15"));
    let from_env = support::command(&["check-config"]).env("BEDROCK_FLOW_EXPORTER_CONFIG", &path).output().unwrap();
    assert_eq!(from_env.status.code(), Some(0), "the config path comes from the environment too");
}

/// The shared store's URL from the environment: validated, shown without its password.
#[test]
fn check_config_shows_the_state_url_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.toml");
    std::fs::write(&path, "[[flows]]\nid = \"ABCDEFGHIJ\"\n").unwrap();
    let out = support::command(&["check-config", "--config", path.to_str().unwrap()])
        .env("BEDROCK_FLOW_EXPORTER_STATE_URL", "postgresql://exporter:s3cr3t-pw@db.internal:5432/flows")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("url = \"postgresql://exporter:***@db.internal:5432/flows\""), "{effective}");
    assert!(!effective.contains("s3cr3t") && !String::from_utf8_lossy(&out.stderr).contains("s3cr3t"), "never the password");
    assert!(effective.contains("lease_secs = 30"));
    assert!(!effective.contains("path ="), "no SQLite path with a URL");
    let bad = support::command(&["check-config", "--config", path.to_str().unwrap()])
        .env("BEDROCK_FLOW_EXPORTER_STATE_URL", "postgresql://exporter:s3cr3t-pw@db.internal:notaport/flows")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("state.url") && !stderr.contains("s3cr3t"), "{stderr}");
}

type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts `args` with its stdout piped: the child and its stdout lines.
fn start_printing(args: &[&str]) -> (std::process::Child, Lines) {
    use std::io::BufRead;
    let mut child = support::command(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Reads the demo's output up to the status page URL and returns its address.
fn demo_status_page(lines: &mut Lines) -> std::net::SocketAddr {
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(url) = line.trim().strip_prefix("status page:") {
            return url.trim().trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
        }
    }
    panic!("the demo prints its URLs");
}

/// Ctrl-C, then a clean exit.
fn interrupt(mut child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C stops it cleanly: {status:?}");
}

#[test]
fn demo_shows_live_executions_metrics_and_the_flows() {
    let (child, mut lines) = start_printing(&["demo", "--listen", "127.0.0.1:0"]);
    let address = demo_status_page(&mut lines);
    let mut finished_lines = 0;
    let started = std::time::Instant::now();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains(" spans  trace ") && !line.ends_with("trace id") {
            finished_lines += 1;
            if finished_lines >= 5 {
                break;
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "live executions within a minute");
    }
    assert!(finished_lines >= 5, "the demo prints one line per finished execution");
    let (status, page) = support::http_get(address, "/", None);
    assert_eq!(status, 200);
    for flow in ["support-triage", "doc-batch", "refine-loop"] {
        assert!(page.contains(flow), "{flow} on the status page");
    }
    let (_, metrics) = support::http_get(address, "/metrics", None);
    assert!(support::sum_samples(&metrics, "bedrock_flow_executions_total", &[]) >= 5.0, "non-zero executions_total");
    interrupt(child);
}

#[test]
fn demo_takes_a_free_port_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (child, mut lines) = start_printing(&["demo", "--listen", &format!("127.0.0.1:{port}")]);
    let address = demo_status_page(&mut lines);
    assert_ne!(address.port(), port, "another port than the taken one");
    assert_eq!(support::http_get(address, "/-/healthy", None).0, 200, "the status page serves on the printed port");
    interrupt(child);
}

#[test]
fn emulate_names_its_flows_at_start_and_in_its_stats() {
    let (child, mut lines) = start_printing(&["emulate", "--listen", "127.0.0.1:0"]);
    let mut printed = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let last = line.starts_with("stats:");
        printed.push(line);
        if last {
            break;
        }
    }
    let address: std::net::SocketAddr = printed[0].trim_start_matches("emulator listening on http://").parse().unwrap();
    let expected = [("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")];
    for (id, name) in expected {
        assert!(printed.iter().any(|l| l.contains(&format!("flow {id}  name {name}  aliases ")) && l.contains("TSTALIASID (version DRAFT)")), "{printed:?}");
    }
    let (_, stats) = support::http_get(address, "/_emulator/stats", None);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let served: Vec<(&str, &str)> = stats["flows"].as_array().unwrap().iter().map(|f| (f["id"].as_str().unwrap(), f["name"].as_str().unwrap())).collect();
    assert_eq!(served, expected);
    assert!(stats["flows"][0]["aliases"].as_array().unwrap().iter().any(|a| a["id"] == "TSTALIASID" && a["version"] == "DRAFT"));
    interrupt(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_log_format_json() {
    let mut s = support::history_scenario(2);
    s.flows.truncate(1);
    let h = support::Harness::start(s, &[("SUPPORTTRI", "support-triage")]).await;
    let path = h.config_path();
    let output =
        tokio::task::spawn_blocking(move || support::command(&["--log-format", "json", "run", "--once", "--config", &path]).output().unwrap()).await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string() && value["timestamp"].is_string(), "{line}");
    }
    assert!(stderr.contains("\"message\":\"execution exported\""), "{stderr}");
    h.stop().await;
}
