//! The real binary against the emulator, spans into the in-process OTLP receiver: every
//! execution found once, every span delivered (with the ids, parents and times the SPEC
//! derives), API calls near the minimum, faults, restarts, crashes and bad data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use bedrock_flow_emulator::scenario::{ListOrder, Scenario};
use bedrock_flow_emulator::{flows, ExecutionFacts};
use bedrock_flow_exporter::config::CaptureContent;
use bedrock_flow_exporter::convert::{self, ContentPolicy, ExecutionView};
use bedrock_flow_exporter::model::{Event, ExecutionStatus, FlowDefinition, Timestamp};
use bedrock_flow_exporter::state::StateStore as _;
use bedrock_flow_exporter::timefmt::now_nanos;

use bedrock_flow_test_support::{self as support, run_binary, OtlpServer, TestConfig};

/// The spans the SPEC derives from what the emulator served: span id → (name, parent id).
pub fn expected_spans(facts: &ExecutionFacts, definition: &FlowDefinition, flow_name: &str) -> BTreeMap<String, (String, String)> {
    model_spans(facts, definition, flow_name).into_iter().map(|s| (hex(&s.span_id), (s.name, s.parent_span_id.map(|p| hex(&p)).unwrap_or_default()))).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Each received span of these executions has the span events the model gives it (their
/// number and names, in order): what a run gathered survives restarts with it.
pub fn assert_span_events_as_modelled(facts: &[ExecutionFacts], receiver: &support::Receiver) {
    let received = receiver.unique();
    for f in facts {
        let (definition, name) = definition_of(&f.flow_id);
        for span in model_spans(f, &definition, name) {
            let Some(got) = received.get(&hex(&span.span_id)) else { continue };
            let names: Vec<&str> = got.events.iter().map(|(n, _)| n.as_str()).collect();
            let expected: Vec<&str> = span.events.iter().map(|e| e.name.as_ref()).collect();
            assert_eq!(names, expected, "the events of {} in {}", span.name, f.arn);
        }
    }
}

fn model_spans(facts: &ExecutionFacts, definition: &FlowDefinition, flow_name: &str) -> Vec<bedrock_flow_exporter::span::SpanRecord> {
    let node: Vec<Event> = facts.node_events.iter().filter_map(|v| Event::from_wire(v).ok()).collect();
    let flow: Vec<Event> = facts.flow_events.iter().filter_map(|v| Event::from_wire(v).ok()).collect();
    let status = ExecutionStatus::parse(&facts.status);
    let types = convert::NodeTypes::of(definition);
    let view = ExecutionView {
        arn: &facts.arn,
        flow_id: &facts.flow_id,
        flow_name,
        alias: &facts.alias,
        version: &facts.version,
        status: &status,
        created_at: Timestamp(facts.created_at),
        ended_at: facts.ended_at.map(Timestamp),
        finished: status.is_terminal(),
        types: Some(&types),
        errors: &[],
    };
    convert::convert(&view, &node, &flow, &ContentPolicy { mode: CaptureContent::Off, ..ContentPolicy::default() }).spans
}

fn min_calls(facts: &[ExecutionFacts]) -> u64 {
    facts
        .iter()
        .map(|f| {
            let extra = u64::from(matches!(f.status.as_str(), "Failed" | "TimedOut"));
            f.node_events.len().div_ceil(10) as u64 + f.flow_events.len().div_ceil(10) as u64 + extra
        })
        .sum()
}

fn config_path(dir: &Path, config: &TestConfig) -> String {
    let path = dir.join("config.toml");
    config.write(&path);
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_once_exports_every_span_with_the_minimum_of_api_calls() {
    for order in [ListOrder::NewestFirst, ListOrder::Shuffled] {
        let mut scenario = Scenario::backlog(60, 45);
        scenario.list_order = order;
        scenario.outcomes.failed = 0.1;
        scenario.outcomes.timed_out = 0.05;
        let emulator = support::emulator(scenario).await;
        let otlp = OtlpServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        // The flow named by ARN: labels and attributes still carry the bare id.
        let mut config = TestConfig::new(
            dir.path(),
            &emulator.endpoint(),
            &format!("http://{}", otlp.grpc),
            &[("arn:aws:bedrock:us-east-1:123456789012:flow/BACKLOG001", "backlog")],
        );
        config.extra = "headers = { \"x-api-key\" = \"grpc-key\" }\n".into();
        let path = config_path(dir.path(), &config);
        let output = run_binary(vec!["run".into(), "--once".into(), "--config".into(), path]).await;
        assert_eq!(otlp.receiver.headers.lock().unwrap().get("x-api-key").map(String::as_str), Some("grpc-key"), "headers travel as gRPC metadata");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("run --once: 60 executions exported"), "{stdout}");

        let facts = emulator.executions(now_nanos());
        assert_eq!(facts.len(), 60);
        let definition = flows::backlog(45);
        let received = otlp.receiver.unique();
        let mut expected_total = 0;
        for f in &facts {
            let expected = expected_spans(f, &definition, "backlog");
            expected_total += expected.len();
            let root_id = support::expected_root_id(&f.arn);
            let root = received.get(&root_id).unwrap_or_else(|| panic!("root of {} missing", f.arn));
            assert_eq!(root.trace_id, support::expected_trace_id(&f.arn));
            assert_eq!(root.name, "invoke_workflow backlog");
            assert_eq!(root.start as i64, f.created_at);
            assert_eq!(root.end as i64, f.ended_at.unwrap());
            assert_eq!(root.attr("aws.bedrock.flow.execution.arn"), Some(f.arn.as_str()));
            assert_eq!(root.attr("aws.bedrock.flow.execution.status"), Some(f.status.as_str()));
            assert_eq!(root.attr("cloud.account.id"), Some("123456789012"));
            assert_eq!(root.kind, 1, "INTERNAL");
            assert_eq!(root.resource.get("service.name").map(String::as_str), Some("bedrock-flows"));
            assert_eq!(root.resource.get("cloud.account.id").map(String::as_str), Some("123456789012"), "the account of the configured flow ARN");
            match f.status.as_str() {
                "Succeeded" => assert_eq!(root.status_code, 1),
                "Failed" => {
                    assert_eq!(root.status_code, 2);
                    assert_eq!(root.attr("error.type"), Some("NODE_EXECUTION_FAILED"));
                }
                "TimedOut" => {
                    assert_eq!(root.status_code, 2);
                    assert_eq!(root.attr("error.type"), Some("timeout"));
                    assert_eq!(root.status_message, "The flow execution exceeded the maximum allowed runtime.", "message from GetFlowExecution");
                }
                other => panic!("unexpected status {other}"),
            }
            for (id, (name, parent)) in &expected {
                let span = received.get(id).unwrap_or_else(|| panic!("span {name} of {} missing", f.arn));
                assert_eq!(&span.name, name);
                assert_eq!(&span.parent_span_id, parent);
                assert_eq!(span.trace_id, root.trace_id);
                if !parent.is_empty() {
                    assert!(span.start >= root.start && span.end <= root.end.max(span.start), "{name} inside the execution");
                    assert_eq!(span.attr("aws.bedrock.flow.execution.arn"), Some(f.arn.as_str()));
                    assert_eq!(span.attr("aws.bedrock.flow.id"), Some("BACKLOG001"));
                }
            }
        }
        assert_eq!(received.len(), expected_total, "no span more than the model derives");
        assert_eq!(otlp.receiver.spans().len(), expected_total, "each span delivered once");

        let stats = emulator.stats();
        let events_calls = support::requests(&stats, "ListFlowExecutionEvents") + support::requests(&stats, "GetFlowExecution");
        let list_calls = support::requests(&stats, "ListFlowExecutions");
        let snapshot_calls = support::requests(&stats, "GetExecutionFlowSnapshot");
        let minimum = min_calls(&facts) + 6 + 1;
        let actual = events_calls + list_calls + snapshot_calls;
        assert_eq!(list_calls, 6, "ten executions a page");
        assert_eq!(snapshot_calls, 1, "one snapshot per flow version");
        assert!(actual as f64 <= minimum as f64 * 1.05, "{actual} API calls for a minimum of {minimum} ({order:?})");
        otlp.stop();
        emulator.stop().await;
    }
}

/// A scenario with executions that run while the collector polls.
fn live_scenario() -> Scenario {
    let mut s = Scenario::demo();
    s.time_scale = 3.0;
    s.traffic.executions_per_minute = 40.0;
    s.traffic.history = 4;
    s.traffic.running_at_start = 2;
    s.traffic.running_secs = 4;
    s.outcomes.failed = 0.1;
    s.outcomes.timeout_secs = 12.0;
    s
}

/// Spans by id: (name, parent id).
pub type SpanTree = BTreeMap<String, (String, String)>;

/// The spans the SPEC derives for these executions of the demo flows, and those received:
/// span id -> (name, parent id), to compare.
pub fn model_and_received(facts: &[ExecutionFacts], receiver: &support::Receiver) -> (SpanTree, SpanTree) {
    let mut expected = BTreeMap::new();
    for f in facts {
        let (definition, name) = definition_of(&f.flow_id);
        expected.extend(expected_spans(f, &definition, name));
    }
    let got = receiver.unique().iter().map(|(id, s)| (id.clone(), (s.name.clone(), s.parent_span_id.clone()))).collect();
    (expected, got)
}

pub fn definition_of(flow_id: &str) -> (FlowDefinition, &'static str) {
    match flow_id {
        "SUPPORTTRI" => (flows::support_triage(), "support-triage"),
        "DOCBATCH01" => (flows::doc_batch(), "doc-batch"),
        _ => (flows::refine_loop(), "refine-loop"),
    }
}

/// Runs the service for `secs` against a live scenario, then checks that every span it sent
/// is one the model derives (no event delivered twice), that finished executions are
/// complete, and that node spans went out while executions still ran.
async fn live_run(scenario: Scenario, secs: u64, protocol: &'static str) {
    let faulty = scenario.faults.token_ttl_secs > 0;
    let emulator = support::emulator(scenario).await;
    let otlp = OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = if protocol == "grpc" { format!("http://{}", otlp.grpc) } else { format!("http://{}", otlp.http) };
    let mut config = TestConfig::new(
        dir.path(),
        &emulator.endpoint(),
        &endpoint,
        &[("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")],
    );
    config.protocol = protocol;
    let path = config_path(dir.path(), &config);
    let log = dir.path().join("run.log");
    let child = support::spawn(&["run", "--config", &path], &log);
    let started = Instant::now();
    let mut saw_node_spans_before_root = false;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let spans = otlp.receiver.unique();
        let roots: BTreeSet<String> = spans.values().filter(|s| s.parent_span_id.is_empty()).map(|s| s.trace_id.clone()).collect();
        if spans.values().any(|s| !s.parent_span_id.is_empty() && !roots.contains(&s.trace_id)) {
            saw_node_spans_before_root = true;
        }
    }
    let stop_time = now_nanos();
    unsafe { libc_kill(child.0.id() as i32, 15) };
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "SIGTERM ends the service cleanly: {status:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(saw_node_spans_before_root, "node spans are exported while their execution runs");
    let received = otlp.receiver.unique();
    let all = otlp.receiver.spans();
    // Everything the collector could have read, up to its exit (it finishes its cycle after
    // SIGTERM); completeness is checked for executions that ended well before the stop.
    let facts = emulator.executions(now_nanos());
    let mut finished = 0;
    for f in &facts {
        let (definition, name) = definition_of(&f.flow_id);
        let expected = expected_spans(f, &definition, name);
        let trace = support::expected_trace_id(&f.arn);
        let got: Vec<_> = received.values().filter(|s| s.trace_id == trace).collect();
        for span in &got {
            if span.parent_span_id.is_empty() {
                continue;
            }
            let (expected_name, expected_parent) =
                expected.get(&span.span_id).unwrap_or_else(|| panic!("unexpected span {} in {}: an event delivered twice?", span.name, f.arn));
            assert_eq!(&span.name, expected_name);
            assert_eq!(&span.parent_span_id, expected_parent);
        }
        // Executions that ended well before the stop are complete: within a poll, the settle
        // delay and an export (4 s), and with faults also two more cycles of a read whose
        // calls were throttled through the SDK's four attempts (200 ms base backoff, doubling).
        let margin: i64 = if faulty { 8_000_000_000 } else { 4_000_000_000 };
        if f.ended_at.is_some_and(|e| e < stop_time - margin) {
            finished += 1;
            for (id, (name, _)) in &expected {
                assert!(received.contains_key(id), "{name} of finished {} missing", f.arn);
            }
        }
    }
    assert!(finished >= 5, "enough executions finished during the run: {finished}");
    if faulty {
        let stats = emulator.stats();
        let errors = |code: &str| stats["errors"][code].as_u64().unwrap_or(0);
        assert!(errors("ThrottlingException") > 10 && errors("InternalServerException") > 0, "the faults fired: {stats}");
        assert!(errors("ValidationException") > 0, "expired tail tokens were rejected and re-read: {stats}");
    }
    let duplicates = all.len() - received.len();
    assert_eq!(duplicates, 0, "no span exported twice without a crash");
    otlp.stop();
    emulator.stop().await;
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_executions_deliver_every_event_once_over_grpc() {
    live_run(live_scenario(), 14, "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_server_errors_and_expiring_tokens_change_nothing_over_http() {
    let mut s = live_scenario();
    s.faults.throttle_ratio = 0.3;
    s.faults.server_error_ratio = 0.05;
    s.faults.token_ttl_secs = 1;
    s.faults.latency_ms = 5;
    live_run(s, 16, "http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_checkpoints_without_exporting_or_counting_twice() {
    let mut s = support::history_scenario(3);
    s.time_scale = 3.0;
    s.traffic.running_at_start = 2;
    s.traffic.running_secs = 5;
    let emulator = support::emulator(s).await;
    let otlp = OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(
        dir.path(),
        &emulator.endpoint(),
        &format!("http://{}", otlp.grpc),
        &[("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")],
    );
    let path = config_path(dir.path(), &config);
    let first = run_binary(vec!["run".into(), "--once".into(), "--wait-secs".into(), "2".into(), "--config".into(), path.clone()]).await;
    let first_out = String::from_utf8_lossy(&first.stdout).to_string();
    let first_err = String::from_utf8_lossy(&first.stderr).to_string();
    assert_eq!(first.status.code(), Some(75), "unfinished executions exit 75: {first_out}\n{first_err}");
    assert!(first_err.contains("not finished within --wait-secs 2"), "{first_err}");
    let running: Vec<String> = emulator.executions(now_nanos()).into_iter().filter(|f| f.status == "Running").map(|f| f.arn).collect();
    assert_eq!(running.len(), 6, "two running per flow");
    for arn in &running {
        assert!(first_err.contains(arn.as_str()), "the unfinished execution {arn} is named");
    }
    let second = run_binary(vec!["run".into(), "--once".into(), "--wait-secs".into(), "60".into(), "--config".into(), path]).await;
    let second_out = String::from_utf8_lossy(&second.stdout).to_string();
    assert_eq!(second.status.code(), Some(0), "{second_out}\n{}", String::from_utf8_lossy(&second.stderr));
    let count = |out: &str| -> usize { out.split("run --once: ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap() };
    assert_eq!(count(&first_out) + count(&second_out), 15, "every execution counted once across the two runs: {first_out} / {second_out}");
    assert_eq!(count(&second_out), 6);
    let roots = otlp.receiver.spans().into_iter().filter(|s| s.parent_span_id.is_empty()).count();
    assert_eq!(roots, 15, "each root exported exactly once");
    assert_eq!(otlp.receiver.spans().len(), otlp.receiver.unique().len(), "no span exported twice");
    // The runs held across the restart kept the span events they had gathered.
    assert_span_events_as_modelled(&emulator.executions(now_nanos()), &otlp.receiver);
    otlp.stop();
    emulator.stop().await;
}

/// A long Iterator stopped mid-run and resumed by the next run: its span keeps every span
/// event it had gathered (saved as rows beside the fold state, appended per checkpoint), so the
/// spans that close after the restart carry the events the model gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_held_across_a_restart_keeps_its_span_events() {
    let emulator = support::emulator(Scenario::growing(60, 100, 10)).await;
    let otlp = OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), &[("DOCBATCH01", "doc-batch")]);
    let path = config_path(dir.path(), &config);
    let first = run_binary(vec!["run".into(), "--once".into(), "--wait-secs".into(), "4".into(), "--config".into(), path.clone()]).await;
    assert_eq!(first.status.code(), Some(75), "stopped while the Iterators run: {}", String::from_utf8_lossy(&first.stderr));
    let state = bedrock_flow_exporter::state::SqliteStore::open(&dir.path().join("state.sqlite")).unwrap();
    let held: usize = bedrock_flow_exporter::state::StateStore::load(&state).await.unwrap().iter().map(|s| s.events.len()).sum();
    drop(state);
    assert!(held > 20, "the open runs' span events are saved as rows: {held}");
    let second = run_binary(vec!["run".into(), "--once".into(), "--wait-secs".into(), "60".into(), "--config".into(), path]).await;
    assert_eq!(second.status.code(), Some(0), "{}", String::from_utf8_lossy(&second.stderr));
    let facts: Vec<_> = emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id == "DOCBATCH01").collect();
    assert_eq!(facts.len(), 2);
    let (expected, got) = model_and_received(&facts, &otlp.receiver);
    assert_eq!(got, expected);
    assert_span_events_as_modelled(&facts, &otlp.receiver);
    let iterators: Vec<usize> = otlp.receiver.unique().values().filter(|s| s.name == "Iterator EachDocument").map(|s| s.events.len()).collect();
    assert_eq!(iterators.len(), 2);
    assert!(iterators.iter().all(|n| *n > 60), "each Iterator span has its input and outputs: {iterators:?}");
    otlp.stop();
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_span_and_counts_nothing_twice() {
    let executions = 300;
    let emulator = support::emulator(Scenario::backlog(executions, 45)).await;
    let otlp = OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestConfig::new(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), &[("BACKLOG001", "backlog")]);
    config.rate = 500.0;
    config.concurrency = 4;
    let path = config_path(dir.path(), &config);
    let mut rng = bedrock_flow_emulator::rng::Rng::new(99);
    for round in 0..4 {
        let log = dir.path().join(format!("crash-{round}.log"));
        let child = support::spawn(&["run", "--once", "--config", &path], &log);
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1500))).await;
        drop(child); // SIGKILL
    }
    let state = bedrock_flow_exporter::state::SqliteStore::open(&dir.path().join("state.sqlite")).unwrap();
    let arns: Vec<String> = emulator.executions(now_nanos()).into_iter().map(|f| f.arn).collect();
    let finished_before = state.finished_among(&arns.iter().map(String::as_str).collect::<Vec<_>>()).await.unwrap().len();
    drop(state);
    let before_final = otlp.receiver.roots().len();
    assert!(finished_before <= before_final, "an execution is finished only after its root was accepted");
    let output = run_binary(vec!["run".into(), "--once".into(), "--config".into(), path]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let counted_now: usize = stdout.split("run --once: ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap();
    assert_eq!(counted_now, executions - finished_before, "the final run counts exactly the executions not finished before: {stdout}");
    let definition = flows::backlog(45);
    let received = otlp.receiver.unique();
    let facts = emulator.executions(now_nanos());
    let mut expected_total = 0;
    for f in &facts {
        let expected = expected_spans(f, &definition, "backlog");
        expected_total += expected.len();
        for id in expected.keys() {
            assert!(received.contains_key(id), "a span of {} was lost", f.arn);
        }
    }
    assert_eq!(received.len(), expected_total);
    assert_eq!(otlp.receiver.roots().len(), executions);
    assert!(finished_before > 0 || before_final == 0, "the kills happened during the drain");
    otlp.stop();
    emulator.stop().await;
}

/// Listing calls of a service run over `secs` with the given order; a new execution started
/// half-way must be found either way.
async fn listing_calls(order: ListOrder, secs: u64) -> (u64, u64) {
    let mut s = support::history_scenario(200);
    s.list_order = order;
    s.flows.truncate(1);
    let mut h = support::Harness::start(s, &[("SUPPORTTRI", "support-triage")]).await;
    h.config.poll_extra = "full_scan_secs = 3600".into();
    let (_child, _) = h.serve();
    assert!(support::eventually(Duration::from_secs(30), || h.otlp.receiver.roots().len() == 200).await, "history exported");
    let before = support::requests(&h.emulator.stats(), "ListFlowExecutions");
    let client = crate::emulator_sdk::client(&h.emulator.endpoint()).await;
    let input = aws_sdk_bedrockagentruntime::types::FlowInput::builder()
        .node_name("FlowInputNode")
        .content(aws_sdk_bedrockagentruntime::types::FlowInputContent::Document(aws_smithy_types::Document::String("late ticket".into())))
        .build()
        .unwrap();
    let started = client.start_flow_execution().flow_identifier("SUPPORTTRI").flow_alias_identifier("SUPPORLIVE").inputs(input).send().await.unwrap();
    let arn = started.execution_arn().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = support::requests(&h.emulator.stats(), "ListFlowExecutions");
    let root = support::expected_root_id(&arn);
    assert!(
        support::eventually(Duration::from_secs(30), || h.otlp.receiver.unique().contains_key(&root)).await,
        "the execution started later is found ({order:?})"
    );
    h.stop().await;
    (after - before, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_stops_early_only_when_the_order_is_proven() {
    // Newest first: after the first full scan, a poll reads about one page (21 pages a scan).
    let (calls, secs) = listing_calls(ListOrder::NewestFirst, 6).await;
    assert!(calls <= 3 * secs, "{calls} listing calls in {secs} s of newest-first polling");
    // Shuffled: the order is not proven, so every poll reads every page.
    let (calls, secs) = listing_calls(ListOrder::Shuffled, 4).await;
    assert!(calls >= 20 * (secs - 1), "{calls} listing calls in {secs} s of shuffled polling: full scans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assumed_role_and_per_flow_region_and_endpoint_overrides() {
    use bedrock_flow_emulator::ASSUMED_ACCESS_KEY_ID;
    let finished = |flow: usize, region: &str| {
        let mut s = support::history_scenario(4);
        s.flows = vec![s.flows[flow].clone()];
        s.region = region.into();
        s
    };
    let us = support::emulator(finished(0, "us-east-1")).await;
    let eu = support::emulator(finished(1, "eu-west-1")).await;
    let otlp = OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[state]\npath = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nrole_arn = \"arn:aws:iam::123456789012:role/flow-observer\"\nmax_requests_per_second = 200\n\
             [poll]\ninterval_secs = 1\nsettle_secs = 0\n[traces]\nendpoint = \"http://{}\"\n\
             [[flows]]\nid = \"SUPPORTTRI\"\n\
             [[flows]]\nid = \"DOCBATCH01\"\nregion = \"eu-west-1\"\nendpoint_url = \"{}\"\n",
            dir.path().join("state.sqlite").display(),
            us.endpoint(),
            otlp.grpc,
            eu.endpoint()
        ),
    )
    .unwrap();
    let output = run_binary(vec!["run".into(), "--once".into(), "--config".into(), path.display().to_string()]).await;
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let roots = otlp.receiver.roots();
    assert_eq!(roots.len(), 8, "both flows, each from its own endpoint");
    assert_eq!(roots.iter().filter(|r| r.attr("cloud.region") == Some("eu-west-1")).count(), 4);
    for (emulator, region) in [(&us, "us-east-1"), (&eu, "eu-west-1")] {
        let stats = emulator.stats();
        assert!(support::requests(&stats, "AssumeRole") >= 1, "the role was assumed through STS at {region}: {stats}");
        let signers = stats["signers"].as_object().unwrap();
        let assumed = signers.get(&format!("{ASSUMED_ACCESS_KEY_ID}/{region}")).and_then(|v| v.as_u64()).unwrap_or(0);
        let api_calls: u64 = ["ListFlowExecutions", "ListFlowExecutionEvents", "GetExecutionFlowSnapshot", "GetFlowExecution"]
            .iter()
            .map(|op| support::requests(&stats, op))
            .sum();
        assert_eq!(assumed, api_calls, "every Bedrock call at {region} is signed with the assumed role's key for that region: {signers:?}");
        let base = signers.get(&format!("AKIDTEST/{region}")).and_then(|v| v.as_u64()).unwrap_or(0);
        assert_eq!(base, support::requests(&stats, "AssumeRole"), "the base credentials sign only the AssumeRole calls");
    }
    otlp.stop();
    us.stop().await;
    eu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_region_come_from_a_named_profile() {
    let mut s = support::history_scenario(3);
    s.flows.truncate(1);
    let emulator = support::emulator(s).await;
    let otlp = OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws-config"), "[profile observer]\nregion = eu-central-1\n").unwrap();
    std::fs::write(dir.path().join("aws-credentials"), "[observer]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = secret\n").unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[state]\npath = \"{}\"\n[aws]\nprofile = \"observer\"\nendpoint_url = \"{}\"\nmax_requests_per_second = 200\n[poll]\nsettle_secs = 0\n[traces]\nendpoint = \"http://{}\"\n[[flows]]\nid = \"SUPPORTTRI\"\n",
            dir.path().join("state.sqlite").display(),
            emulator.endpoint(),
            otlp.grpc
        ),
    )
    .unwrap();
    let (config_file, credentials_file) = (dir.path().join("aws-config"), dir.path().join("aws-credentials"));
    let output = tokio::task::spawn_blocking(move || {
        support::command(&["run", "--once", "--config", path.to_str().unwrap()])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_CONFIG_FILE", config_file)
            .env("AWS_SHARED_CREDENTIALS_FILE", credentials_file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(otlp.receiver.roots().len(), 3);
    let stats = emulator.stats();
    let signers = stats["signers"].as_object().unwrap();
    assert_eq!(signers.keys().collect::<Vec<_>>(), vec!["AKIDFROMPROFILE/eu-central-1"], "the profile's key and region sign every call");
    otlp.stop();
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_whose_events_answer_404_are_finished_with_what_was_read() {
    let mut s = support::history_scenario(20);
    s.outcomes.failed = 0.0;
    s.outcomes.timed_out = 0.0;
    s.outcomes.aborted = 0.0;
    s.faults.vanished_ratio = 0.3;
    s.flows.truncate(1);
    let h = support::Harness::start(s, &[("SUPPORTTRI", "support-triage")]).await;
    let output = run_binary(vec!["run".into(), "--once".into(), "--config".into(), h.config_path()]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("run --once: 20 executions exported"), "{stdout}");
    let spans = h.otlp.receiver.unique();
    let roots = h.otlp.receiver.roots();
    assert_eq!(roots.len(), 20, "every execution finished, the vanished ones too");
    let childless = roots.iter().filter(|r| !spans.values().any(|s| s.parent_span_id == r.span_id)).count();
    let stats = h.emulator.stats();
    let not_found = stats["errors"]["ResourceNotFoundException"].as_u64().unwrap_or(0);
    assert!(childless >= 2 && not_found >= 2 * childless as u64, "{childless} executions without node spans, {not_found} 404s");
    for r in roots.iter().filter(|r| !spans.values().any(|s| s.parent_span_id == r.span_id)) {
        assert_eq!(r.attr("aws.bedrock.flow.execution.status"), Some("Succeeded"), "a vanished finished execution keeps its listed status");
    }
    h.stop().await;
}

/// A collector in this process (no config file, no binary) on one flow of the emulator, on
/// `store`.
async fn collector_in_process(
    emulator: &bedrock_flow_emulator::EmulatorHandle,
    config: &bedrock_flow_exporter::config::Config,
    (id, name): (&str, &str),
    store: std::sync::Arc<dyn bedrock_flow_exporter::state::StateStore>,
) -> bedrock_flow_exporter::collector::Collector {
    use bedrock_flow_exporter::collector::{Collector, Flow, StatusBoard};
    use bedrock_flow_exporter::export::Exporter;
    use bedrock_flow_exporter::metrics::Metrics;
    use bedrock_flow_exporter::source::{AwsTarget, FlowSource, RequestBudget, StaticCredentials};
    use std::sync::Arc;
    let metrics = Arc::new(Metrics::new(true));
    let target = AwsTarget { region: Some("us-east-1".into()), endpoint_url: Some(emulator.endpoint()), ..AwsTarget::default() };
    let credentials = StaticCredentials { access_key_id: "AKIDTEST".into(), secret_access_key: "secret".into() };
    let source = FlowSource::new(&target, Arc::new(RequestBudget::per_second(1000.0)), Some(&credentials), metrics.clone()).await;
    let flow = Flow {
        id: id.into(),
        name: name.into(),
        aliases: Vec::new(),
        source,
        lease_key: format!("us-east-1//{id}"),
        budget: Arc::new(RequestBudget::per_second(1000.0)),
    };
    let board = Arc::new(StatusBoard::new(&[(id.into(), name.into())]));
    let exporter = Arc::new(Exporter::new(&config.traces, Some("us-east-1"), None).unwrap());
    Collector::new(vec![flow], store, exporter, metrics, board, config, None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_does_the_same_work_on_the_memory_store() {
    use bedrock_flow_exporter::config::Config;
    use bedrock_flow_exporter::state::{MemoryStore, StateStore};
    use std::sync::Arc;

    let emulator = support::emulator(Scenario::backlog(25, 45)).await;
    let otlp = OtlpServer::start().await;
    let mut config = Config::default();
    config.traces.endpoint = format!("http://{}", otlp.grpc);
    config.poll.interval_secs = 1;
    let store = Arc::new(MemoryStore::default());
    let mut collector = collector_in_process(&emulator, &config, ("BACKLOG001", "backlog"), store.clone()).await;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let outcome = collector.run_once(Duration::from_secs(60), stop).await;
    assert!(outcome.complete(), "{outcome:?}");
    assert!(collector.summary().starts_with("25 executions exported"), "{}", collector.summary());
    let facts = emulator.executions(now_nanos());
    let expected: usize = facts.iter().map(|f| expected_spans(f, &flows::backlog(45), "backlog").len()).sum();
    assert_eq!(otlp.receiver.unique().len(), expected, "every span");
    let arns: Vec<&str> = facts.iter().map(|f| f.arn.as_str()).collect();
    assert_eq!(store.finished_among(&arns).await.unwrap().len(), 25, "each finished in the store");
    assert!(store.load().await.unwrap().is_empty());
    otlp.stop();
    emulator.stop().await;
}

/// The flows of one target (region, profile, role, endpoint) share one SDK client: one pool
/// of connections to the API. Three flows read one request at a time (`concurrency = 1`) come
/// on fewer connections than there are flows; a client per flow opened one each at least.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flows_of_one_target_share_one_client_and_its_connections() {
    let flows = [("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")];
    let mut h = support::Harness::start(support::history_scenario(3), &flows).await;
    h.config.concurrency = 1;
    let output = run_binary(vec!["run".into(), "--once".into(), "--config".into(), h.config_path()]).await;
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("run --once: 9 executions exported"), "{}", String::from_utf8_lossy(&output.stdout));
    let stats = h.emulator.stats();
    let connections = stats["connections"].as_u64().unwrap();
    assert!(stats["total_requests"].as_u64().unwrap() >= 30, "many requests: {stats}");
    assert!((1..flows.len() as u64).contains(&connections), "{connections} connections for {} flows of one target", flows.len());
    h.stop().await;
}

/// A shared store whose load of a flow just taken fails once: the replica leaves the flow out
/// of its work (no reading without its checkpoints), takes it again at the next cycle, loads it
/// whole, and resumes each execution from its checkpointed cursor: every span arrives, each
/// execution is counted once, and the events read before are not read again from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_load_fails_is_taken_again_and_resumed_from_its_checkpoints() {
    use bedrock_flow_exporter::config::Config;
    use bedrock_flow_exporter::state::{self as state, MemoryStore, StateError};
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A `MemoryStore` that says it is shared, holds no flow at its first coordination and
    /// every flow after, and fails its first `load_flows`.
    struct Flaky {
        inner: Arc<MemoryStore>,
        coordinations: AtomicUsize,
        loads: AtomicUsize,
    }
    #[async_trait::async_trait]
    impl state::StateStore for Flaky {
        async fn load(&self) -> Result<Vec<state::Saved>, StateError> {
            self.inner.load().await
        }
        async fn load_flows(&self, flow_ids: &[String]) -> Result<Vec<state::Saved>, StateError> {
            if self.loads.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(StateError::Remote("the load fails for the test".into()));
            }
            self.inner.load_flows(flow_ids).await
        }
        async fn checkpoint(&self, checkpoints: &[state::Checkpoint], parcels: &[state::Parcel]) -> Result<Vec<i64>, StateError> {
            self.inner.checkpoint(checkpoints, parcels).await
        }
        async fn save_all(&self, executions: Vec<bedrock_flow_exporter::collector::lifecycle::Tracked>) -> Result<(), StateError> {
            self.inner.save_all(executions).await
        }
        async fn outbox(&self) -> Result<Vec<state::ParcelInfo>, StateError> {
            self.inner.outbox().await
        }
        async fn parcels(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, StateError> {
            self.inner.parcels(ids).await
        }
        async fn delivered(&self, ids: &[i64]) -> Result<(), StateError> {
            self.inner.delivered(ids).await
        }
        async fn postpone(&self, ids: &[i64], not_before: i64) -> Result<(), StateError> {
            self.inner.postpone(ids, not_before).await
        }
        async fn snapshot(&self, flow_id: &str, key: &str) -> Result<Option<String>, StateError> {
            self.inner.snapshot(flow_id, key).await
        }
        async fn put_snapshot(&self, flow_id: &str, key: &str, definition: &str) -> Result<(), StateError> {
            self.inner.put_snapshot(flow_id, key, definition).await
        }
        async fn flow_marks(&self, flow_id: &str) -> Result<state::FlowMarks, StateError> {
            self.inner.flow_marks(flow_id).await
        }
        async fn set_flow_marks(&self, flow_id: &str, last_poll: i64, last_full_scan: Option<i64>) -> Result<(), StateError> {
            self.inner.set_flow_marks(flow_id, last_poll, last_full_scan).await
        }
        async fn finished_among(&self, arns: &[&str]) -> Result<HashSet<String>, StateError> {
            self.inner.finished_among(arns).await
        }
        async fn prune(&self, before: i64) -> Result<usize, StateError> {
            self.inner.prune(before).await
        }
        fn shared(&self) -> bool {
            true
        }
        async fn coordinate(&self, flows: &[String], _: i64, _: state::Share) -> Result<state::Leases, StateError> {
            let first = self.coordinations.fetch_add(1, Ordering::SeqCst) == 0;
            let held = if first { Default::default() } else { flows.iter().map(|f| (f.clone(), 1)).collect() };
            Ok(state::Leases { held, members: 1, holders: Default::default() })
        }
    }

    let emulator = support::emulator(Scenario::growing(100, 100, 12)).await;
    let otlp = OtlpServer::start().await;
    let mut config = Config::default();
    config.traces.endpoint = format!("http://{}", otlp.grpc);
    config.poll.interval_secs = 1;
    config.poll.settle_secs = 1;
    let collector_on = |store: Arc<dyn state::StateStore>| collector_in_process(&emulator, &config, ("DOCBATCH01", "doc-batch"), store);
    let calls = || support::requests(&emulator.stats(), "ListFlowExecutionEvents");
    // A first process reads about two thirds of the two running executions and stops.
    let memory = Arc::new(MemoryStore::default());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut first = collector_on(memory.clone()).await;
    let outcome = first.run_once(Duration::from_secs(8), stop.clone()).await;
    assert_eq!(outcome.unfinished.len(), 2, "{outcome:?}");
    drop(first);
    let read_before = calls();
    // A replica on the same store takes the flow at its second coordination; the load fails.
    let flaky = Arc::new(Flaky { inner: memory, coordinations: AtomicUsize::new(0), loads: AtomicUsize::new(0) });
    let mut second = collector_on(flaky.clone()).await;
    let outcome = second.run_once(Duration::from_secs(60), stop).await;
    assert!(outcome.complete(), "{outcome:?}");
    assert_eq!(flaky.loads.load(Ordering::SeqCst), 2, "the failed load is made again at the next cycle");
    assert!(second.summary().starts_with("2 executions exported"), "{}", second.summary());
    let facts: Vec<_> = emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id == "DOCBATCH01").collect();
    assert_eq!(facts.len(), 2);
    let (expected, got) = model_and_received(&facts, &otlp.receiver);
    assert_eq!(got, expected, "every span of the model, with its id and parent");
    let pages: u64 = facts.iter().map(|f| (f.node_events.len().div_ceil(10) + f.flow_events.len().div_ceil(10)) as u64).sum();
    let read_after = calls() - read_before;
    assert!(read_after < pages, "resumed from the checkpointed cursors: {read_after} event calls after the takeover, {pages} pages in all");
    otlp.stop();
    emulator.stop().await;
}
