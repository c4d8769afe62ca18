//! A real Prometheus (Debian's package) scrapes the exporter while it polls the emulator:
//! every dashboard query returns data, the alert rules load, exemplars carry trace ids,
//! `promtool check metrics` accepts a real scrape, and the metric values agree with what the
//! emulator produced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bedrock_flow_exporter::model::Event;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use bedrock_flow_test_support::{self as support, Harness, Running};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn query(prometheus: SocketAddr, path: &str, promql: &str) -> Value {
    let (status, body) = support::http_get(prometheus, &format!("{path}?query={}", utf8_percent_encode(promql, NON_ALPHANUMERIC)), None);
    assert_eq!(status, 200, "{promql}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn start_prometheus(dir: &Path, target: SocketAddr) -> (Running, SocketAddr) {
    // The shipped example (deploy/prometheus.yml), with this test's target, a 1 s interval and
    // the rules path made absolute.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("deploy/prometheus.yml")).unwrap();
    let rules = root.join("dashboards/bedrock-flows-alerts.yml");
    let text = example
        .replace("localhost:9464", &target.to_string())
        .replace("15s", "1s")
        .replace("../dashboards/bedrock-flows-alerts.yml", &rules.display().to_string());
    assert!(text.contains(&target.to_string()) && text.contains(&rules.display().to_string()), "the example names a target and the rules");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, text).unwrap();
    let port = free_port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={address}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the prometheus binary (Debian package `prometheus`; .ci/run installs it)");
    (Running(child), address)
}

fn promql_of_dashboard() -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/bedrock-flows.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            exprs.push(expr.replace("$flow", ".*").replace("$alias", ".*").replace("$__rate_interval", "1m").replace("$__range", "5m"));
        }
    }
    assert!(exprs.len() >= 20, "the dashboard has its panels: {}", exprs.len());
    exprs
}

fn sum_usage(value: &Value, key: &str) -> u64 {
    match value {
        Value::Object(map) => map.iter().map(|(k, v)| if k == key { v.as_u64().unwrap_or(0) } else { sum_usage(v, key) }).sum(),
        Value::Array(items) => items.iter().map(|v| sum_usage(v, key)).sum(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_and_every_dashboard_query_returns_data() {
    let mut scenario = support::history_scenario(20);
    scenario.traffic.running_at_start = 1;
    scenario.traffic.running_secs = 600;
    scenario.outcomes.failed = 0.15;
    scenario.outcomes.aborted = 0.0;
    let h = Harness::start(scenario, &[("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")]).await;
    let (emulator, otlp, dir) = (&h.emulator, &h.otlp, &h.dir);
    let (_exporter, exporter) = h.serve();

    // Every finished execution exported: 20 per flow.
    let facts: Vec<_> = emulator.executions(bedrock_flow_exporter::timefmt::now_nanos()).into_iter().filter(|f| f.status != "Running").collect();
    assert_eq!(facts.len(), 60);
    assert!(support::eventually(Duration::from_secs(30), || otlp.receiver.roots().len() == 60).await, "roots: {}", otlp.receiver.roots().len());
    let (prom, prometheus) = start_prometheus(dir.path(), exporter);
    let _prom = prom;
    tokio::time::sleep(Duration::from_secs(8)).await;

    let (status, text) = support::http_get(exporter, "/metrics", None);
    assert_eq!(status, 200);
    // promtool check metrics on a real scrape.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(checked.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));

    // The values agree with what the emulator produced.
    let mut by_status: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut node_failures: BTreeMap<String, f64> = BTreeMap::new();
    let mut conditions: BTreeMap<String, f64> = BTreeMap::new();
    let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
    let mut duration_sum = 0.0;
    for f in &facts {
        *by_status.entry((f.flow_id.clone(), f.status.clone())).or_default() += 1.0;
        duration_sum += (f.ended_at.unwrap() - f.created_at) as f64 / 1e9;
        for event in f.node_events.iter().filter_map(|v| Event::from_wire(v).ok()) {
            match event {
                Event::NodeFailure(e) => *node_failures.entry(e.error_code).or_default() += 1.0,
                Event::ConditionResult(e) => *conditions.entry(e.satisfied_conditions[0].condition_name.clone()).or_default() += 1.0,
                Event::NodeAction(e) => {
                    let usage = e.operation_response.as_ref().and_then(|r| r.get("usage")).cloned().unwrap_or(Value::Null);
                    input_tokens += usage["inputTokens"].as_u64().unwrap_or(0);
                    output_tokens += usage["outputTokens"].as_u64().unwrap_or(0);
                }
                Event::NodeDependency(e) => {
                    input_tokens += sum_usage(&Value::Array(e.trace_elements.agent_traces.clone()), "inputTokens");
                    output_tokens += sum_usage(&Value::Array(e.trace_elements.agent_traces.clone()), "outputTokens");
                }
                _ => {}
            }
        }
    }
    for ((flow_id, status), n) in &by_status {
        assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_total", &[("flow_id", flow_id), ("status", status)]), *n, "{flow_id} {status}");
        assert_eq!(support::sum_samples(&text, "bedrock_flow_execution_duration_seconds_count", &[("flow_id", flow_id), ("status", status)]), *n);
    }
    assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_total", &[]), 60.0);
    // The latest end per series, whatever order the executions were processed in (ARN order).
    let mut last_end: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    for f in &facts {
        let end = last_end.entry((f.flow_id.as_str(), f.alias.as_str(), f.status.as_str())).or_default();
        *end = (*end).max(f.ended_at.unwrap());
    }
    for ((flow_id, alias, status), end) in &last_end {
        let gauge = support::sample(&text, "bedrock_flow_last_execution_end_timestamp_seconds", &[("flow_id", flow_id), ("alias", alias), ("status", status)]);
        assert!(gauge.is_some_and(|g| (g - *end as f64 / 1e9).abs() < 1e-3), "{flow_id} {alias} {status}: {gauge:?} vs {}", *end as f64 / 1e9);
    }
    let measured_sum = support::sum_samples(&text, "bedrock_flow_execution_duration_seconds_sum", &[]);
    assert!((measured_sum - duration_sum).abs() < 0.01, "duration sum {measured_sum} vs {duration_sum}");
    assert!(!node_failures.is_empty(), "the scenario failed some executions");
    for (code, n) in &node_failures {
        assert_eq!(support::sum_samples(&text, "bedrock_flow_node_failures_total", &[("error_code", code)]), *n, "node failures {code}");
    }
    let failed = by_status.iter().filter(|((_, s), _)| s == "Failed").map(|(_, n)| n).sum::<f64>();
    assert_eq!(support::sum_samples(&text, "bedrock_flow_failures_total", &[("error_code", "NODE_EXECUTION_FAILED")]), failed);
    for (condition, n) in &conditions {
        assert_eq!(support::sum_samples(&text, "bedrock_flow_condition_results_total", &[("node", "Route"), ("condition", condition)]), *n);
    }
    assert_eq!(support::sum_samples(&text, "bedrock_flow_node_tokens_total", &[("token_type", "input")]), input_tokens as f64);
    assert_eq!(support::sum_samples(&text, "bedrock_flow_node_tokens_total", &[("token_type", "output")]), output_tokens as f64);
    assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_running", &[]), 3.0, "one running per flow");
    assert!(support::sum_samples(&text, "bedrock_flow_exporter_spans_exported_total", &[]) >= otlp.receiver.unique().len() as f64);
    assert_eq!(support::sample(&text, "bedrock_flow_exporter_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(support::sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);

    // OpenMetrics with exemplars for scrapers that ask for it.
    let (_, openmetrics) = support::http_get(exporter, "/metrics", Some("application/openmetrics-text; version=1.0.0"));
    assert!(openmetrics.contains("bedrock_flow_execution_duration_seconds_bucket") && openmetrics.contains("# {trace_id=\""), "exemplars in OpenMetrics");
    assert!(openmetrics.trim_end().ends_with("# EOF"));

    // Every dashboard query returns data through Prometheus.
    for expr in promql_of_dashboard() {
        let answer = query(prometheus, "/api/v1/query", &expr);
        assert_eq!(answer["status"], "success", "{expr}");
        assert!(!answer["data"]["result"].as_array().unwrap().is_empty(), "no data for dashboard query {expr}");
    }
    let answer = query(prometheus, "/api/v1/query", "sum by (status) (bedrock_flow_executions_total)");
    let from_prometheus: BTreeMap<String, f64> = answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["metric"]["status"].as_str().unwrap().to_string(), r["value"][1].as_str().unwrap().parse().unwrap()))
        .collect();
    for status in ["Succeeded", "Failed"] {
        let expected: f64 = by_status.iter().filter(|((_, s), _)| s == status).map(|(_, n)| n).sum();
        assert_eq!(from_prometheus.get(status).copied().unwrap_or(0.0), expected, "Prometheus agrees for {status}");
    }
    // The dashboard's variables have values.
    let (_, flows) = support::http_get(prometheus, "/api/v1/label/flow_name/values", None);
    for name in ["support-triage", "doc-batch", "refine-loop"] {
        assert!(flows.contains(name), "{flows}");
    }
    // Exemplars stored by Prometheus carry the trace ids of real executions.
    let now = bedrock_flow_exporter::timefmt::now_nanos() / 1_000_000_000;
    let (_, exemplars) = support::http_get(
        prometheus,
        &format!(
            "/api/v1/query_exemplars?query={}&start={}&end={}",
            utf8_percent_encode("bedrock_flow_execution_duration_seconds_bucket", NON_ALPHANUMERIC),
            now - 600,
            now + 60
        ),
        None,
    );
    let exemplars: Value = serde_json::from_str(&exemplars).unwrap();
    let trace_ids: BTreeSet<String> = facts.iter().map(|f| support::expected_trace_id(&f.arn)).collect();
    let stored: Vec<String> = exemplars["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["exemplars"].as_array().unwrap().iter().map(|e| e["labels"]["trace_id"].as_str().unwrap().to_string()))
        .collect();
    assert!(!stored.is_empty(), "Prometheus stored exemplars: {exemplars}");
    assert!(stored.iter().all(|t| trace_ids.contains(t)), "exemplars name real traces");
    // The alert rules load.
    let (_, rules) = support::http_get(prometheus, "/api/v1/rules", None);
    let rules: Value = serde_json::from_str(&rules).unwrap();
    assert_eq!(rules["data"]["groups"][0]["rules"].as_array().unwrap().len(), 11);

    // The landing page and the health endpoints.
    let (status, page) = support::http_get(exporter, "/", None);
    assert_eq!(status, 200);
    assert!(page.contains("support-triage") && page.contains("DOCBATCH01") && page.contains("Succeeded: "), "{page}");
    assert_eq!(support::http_get(exporter, "/-/healthy", None).0, 200);
    assert_eq!(support::http_get(exporter, "/-/ready", None).0, 200);
    h.stop().await;
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let check = std::process::Command::new("promtool").args(["check", "rules", "bedrock-flows-alerts.yml"]).current_dir(&dir).output().expect("promtool");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert!(String::from_utf8_lossy(&check.stdout).contains("SUCCESS: 11 rules found"));
    let test = std::process::Command::new("promtool").args(["test", "rules", "bedrock-flows-alerts.test.yml"]).current_dir(&dir).output().unwrap();
    assert!(test.status.success(), "promtool test rules: {}{}", String::from_utf8_lossy(&test.stdout), String::from_utf8_lossy(&test.stderr));
    // Every alert has a unit test that shows it firing.
    let tests = std::fs::read_to_string(dir.join("bedrock-flows-alerts.test.yml")).unwrap();
    for alert in [
        "BedrockFlowFailureRatioHigh",
        "BedrockFlowExecutionNearTimeLimit",
        "BedrockFlowExporterPollerStalled",
        "BedrockFlowExporterThrottled",
        "BedrockFlowExporterSpanExportFailing",
        "BedrockFlowExporterFlowUnheld",
        "BedrockFlowExporterReadingPaused",
        "BedrockFlowExporterOutboxFilling",
        "BedrockFlowExporterStateStoreDown",
        "BedrockFlowExporterStateStoreFailing",
        "BedrockFlowExporterSpansLost",
    ] {
        assert!(tests.contains(&format!("alertname: {alert}")), "{alert} has a test");
    }
}

/// The expression of one alert rule in the shipped rules file.
fn alert_expr(alert: &str) -> String {
    let rules = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/bedrock-flows-alerts.yml")).unwrap();
    let rest = rules.split(&format!("alert: {alert}\n")).nth(1).unwrap_or_else(|| panic!("{alert} in the rules"));
    let body = rest.split("expr: |\n").nth(1).unwrap();
    body.lines().take_while(|l| !l.trim_start().starts_with("for:")).map(str::trim).collect::<Vec<_>>().join(" ")
}

/// The expression of the dashboard panel with this title, as Prometheus takes it.
fn panel_expr(title: &str) -> String {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/bedrock-flows.json")).unwrap()).unwrap();
    let panel = dashboard["panels"].as_array().unwrap().iter().find(|p| p["title"] == title).unwrap_or_else(|| panic!("panel {title}"));
    panel["targets"][0]["expr"].as_str().unwrap().replace("$__rate_interval", "1m")
}

fn scalar(answer: &Value) -> Option<f64> {
    answer["data"]["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_that_the_sdk_retries_absorb_shows_on_the_panel_and_fires_the_alert() {
    let mut scenario = support::history_scenario(10);
    scenario.traffic.running_at_start = 5;
    scenario.traffic.running_secs = 600;
    scenario.faults.throttle_ratio = 0.3;
    let h = Harness::start(scenario, &[("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")]).await;
    let (_exporter, exporter) = h.serve();
    let (_prom, prometheus) = start_prometheus(h.dir.path(), exporter);
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Every attempt the emulator served is counted, and every throttled one as an error. The
    // emulator counts a request when it arrives, the exporter when its answer is back: what was
    // served before a scrape (answered within the pause) is counted by it, and nothing more
    // than was served after it.
    let early = h.emulator.stats();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, text) = support::http_get(exporter, "/metrics", None);
    let late = h.emulator.stats();
    let served = |stats: &Value| stats["total_requests"].as_f64().unwrap();
    let throttled = |stats: &Value| stats["errors"]["ThrottlingException"].as_f64().unwrap();
    let attempts = support::sum_samples(&text, "bedrock_flow_exporter_api_requests_total", &[]);
    let throttled_attempts = support::sum_samples(&text, "bedrock_flow_exporter_api_request_errors_total", &[("error_kind", "throttled")]);
    assert!(served(&early) <= attempts && attempts <= served(&late), "served {} ≤ attempts {attempts} ≤ served {}", served(&early), served(&late));
    assert!(
        throttled(&early) <= throttled_attempts && throttled_attempts <= throttled(&late),
        "throttled {} ≤ throttled attempts {throttled_attempts} ≤ {}",
        throttled(&early),
        throttled(&late)
    );
    let served = served(&late);
    assert!(served > 200.0, "enough attempts for a share: {served}");

    let share = scalar(&query(prometheus, "/api/v1/query", &panel_expr("Throttled share of API calls")));
    assert!(share.is_some_and(|s| (0.2..0.4).contains(&s)), "the Throttled share panel shows about 0.3: {share:?}");
    let alert = query(prometheus, "/api/v1/query", &alert_expr("BedrockFlowExporterThrottled"));
    assert!(scalar(&alert).is_some_and(|s| s > 0.2), "the alert's expression is true: {alert}");
    h.stop().await;
}
