//! The trace model end to end (SPEC §5, §10) on the built-in flows: Iterator and Loop parents,
//! links, conditions, agent traces and token usage, content capture with redaction; and the
//! collector's resilience: an OTLP outage, a flow it may not read, bad data from the API.

use std::collections::BTreeMap;
use std::time::Duration;

use bedrock_flow_emulator::scenario::Scenario;

use bedrock_flow_test_support::{self as support, Harness, OtlpServer, Received, TestConfig};

const FLOWS: [(&str, &str); 3] = [("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")];

fn finished_scenario(history: usize) -> Scenario {
    let mut s = support::history_scenario(history);
    s.outcomes.failed = 0.0;
    s.outcomes.timed_out = 0.0;
    s.outcomes.aborted = 0.0;
    s
}

fn by_trace(spans: &BTreeMap<String, Received>) -> BTreeMap<String, Vec<Received>> {
    let mut traces: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for s in spans.values() {
        traces.entry(s.trace_id.clone()).or_default().push(s.clone());
    }
    traces
}

fn node<'a>(trace: &'a [Received], name: &str) -> Vec<&'a Received> {
    let mut spans: Vec<&Received> = trace.iter().filter(|s| s.attr("aws.bedrock.flow.node.name") == Some(name)).collect();
    spans.sort_by_key(|s| s.start);
    spans
}

fn root(trace: &[Received]) -> &Received {
    trace.iter().find(|s| s.parent_span_id.is_empty()).expect("root span")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterators_loops_conditions_agents_and_content_capture() {
    let emulator = support::emulator(finished_scenario(12)).await;
    let otlp = OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestConfig::new(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.http), &FLOWS);
    config.protocol = "http/protobuf";
    config.extra =
        "capture_content = \"truncated\"\nmax_content_bytes = 128\nredact = [\"invoice|password\"]\nheaders = { \"x-api-key\" = \"secret-key\" }\n".into();
    let path = dir.path().join("config.toml");
    config.write(&path);
    let output = tokio::task::spawn_blocking(move || support::command(&["run", "--once", "--config", path.to_str().unwrap()]).output().unwrap()).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(otlp.receiver.headers.lock().unwrap().get("x-api-key").map(String::as_str), Some("secret-key"), "traces.headers reach the backend");
    let spans = otlp.receiver.unique();
    let traces = by_trace(&spans);
    assert_eq!(traces.len(), 36);
    let resource = &spans.values().next().unwrap().resource;
    assert_eq!(resource.get("service.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(resource.get("cloud.provider").map(String::as_str), Some("aws"));
    assert_eq!(resource.get("cloud.region").map(String::as_str), Some("us-east-1"));
    let (mut iterators, mut loops, mut conditions, mut agents) = (0, 0, 0, 0);
    for trace in traces.values() {
        let root = root(trace);
        assert_eq!(root.attr("gen_ai.operation.name"), Some("invoke_workflow"));
        assert_eq!(root.attr("openinference.span.kind"), Some("CHAIN"));
        let input_event = root.events.iter().find(|(n, _)| n == "gen_ai.workflow.input").expect("workflow input event");
        let content = input_event.1.get("content").expect("captured input");
        assert!(!content.contains("invoice") && !content.contains("password"), "redacted before export: {content}");
        assert!(root.events.iter().any(|(n, _)| n == "gen_ai.workflow.output"));
        for s in trace.iter().filter(|s| !s.parent_span_id.is_empty()) {
            assert!(s.name.starts_with(&format!("{} ", s.attr("aws.bedrock.flow.node.type").unwrap())));
            assert_eq!(s.kind, 1);
            for (_, attributes) in &s.events {
                if let Some(c) = attributes.get("content") {
                    assert!(c.len() <= 128 + 64, "truncated to max_content_bytes plus the marker: {} bytes", c.len());
                }
            }
        }
        match root.attr("gen_ai.workflow.name").unwrap() {
            "doc-batch" => {
                iterators += 1;
                let iterator = node(trace, "EachDocument");
                assert_eq!(iterator.len(), 1, "one Iterator run per input");
                let extracts = node(trace, "Extract");
                let items = iterator[0].events.iter().filter(|(n, _)| n == "aws.bedrock.flow.node.output").count();
                assert_eq!(extracts.len(), items, "the body runs once per item");
                for (i, e) in extracts.iter().enumerate() {
                    assert_eq!(e.parent_span_id, iterator[0].span_id, "Iterator runs are parents of the runs inside them");
                    assert_eq!(e.attr("aws.bedrock.flow.node.execution_chain"), Some(format!("[EachDocument[{i}]]").as_str()));
                    assert_eq!(e.attr("gen_ai.operation.name"), Some("execute_tool"));
                    let action = e.events.iter().find(|(n, _)| n == "aws.bedrock.flow.node_action").expect("Lambda action event");
                    assert_eq!(action.1.get("rpc.system").map(String::as_str), Some("aws-api"));
                    assert_eq!(action.1.get("rpc.service").map(String::as_str), Some("lambda"));
                    // Content is captured here, so the action's documents are read whole and go out.
                    assert!(action.1.get("content").is_some_and(|c| c.contains("FunctionName")), "the request: {:?}", action.1);
                    assert!(action.1.get("aws.bedrock.flow.action.response").is_some_and(|c| c.contains("StatusCode")), "the response: {:?}", action.1);
                }
                let summaries = node(trace, "Summarize");
                for (s, e) in summaries.iter().zip(&extracts) {
                    assert_eq!(s.links, vec![e.span_id.clone()], "a link to the source node's run that ended before");
                    assert_eq!(s.attr("gen_ai.request.model"), Some("anthropic.claude-3-haiku-20240307-v1:0"));
                    assert_eq!(s.attr("openinference.span.kind"), Some("LLM"));
                    assert!(s.attr("gen_ai.usage.input_tokens").unwrap().parse::<i64>().unwrap() >= 40);
                }
                let gather = node(trace, "Gather");
                assert_eq!(gather.len(), 1, "one Collector run");
                assert_eq!(gather[0].parent_span_id, root.span_id);
                assert_eq!(gather[0].events.iter().filter(|(n, _)| n == "aws.bedrock.flow.node.input").count(), items, "its inputs per iteration are events");
                assert!(iterator[0].end <= gather[0].end);
            }
            "refine-loop" => {
                loops += 1;
                let refine = node(trace, "Refine");
                assert_eq!(refine.len(), 1);
                let critiques = node(trace, "Critique");
                assert!(!critiques.is_empty());
                for c in &critiques {
                    assert_eq!(c.parent_span_id, refine[0].span_id, "Loop runs are parents of the runs inside them");
                }
                let controller = node(trace, "Again");
                assert_eq!(controller.len(), 1, "one LoopController run per entry into the loop");
                assert_eq!(controller[0].parent_span_id, refine[0].span_id);
                assert_eq!(controller[0].events.iter().filter(|(n, _)| n == "aws.bedrock.flow.node.input").count(), critiques.len());
            }
            "support-triage" => {
                let route = node(trace, "Route");
                assert_eq!(route.len(), 1);
                conditions += 1;
                let result = route[0].events.iter().find(|(n, _)| n == "aws.bedrock.flow.condition_result").expect("condition result event");
                let satisfied = route[0].attr("aws.bedrock.flow.condition.satisfied").unwrap();
                assert_eq!(result.1.get("aws.bedrock.flow.condition.satisfied").unwrap(), satisfied);
                if satisfied == "[isBilling]" {
                    agents += 1;
                    let agent = node(trace, "BillingAgent");
                    assert_eq!(agent[0].attr("gen_ai.operation.name"), Some("invoke_agent"));
                    assert!(agent[0].events.iter().any(|(n, a)| n == "aws.bedrock.flow.node_dependency" && !a.contains_key("rpc.system")));
                    assert!(agent[0].attr("gen_ai.usage.output_tokens").unwrap().parse::<i64>().unwrap() >= 50, "agent trace usage summed");
                    assert!(node(trace, "Docs").is_empty(), "the other branch did not run");
                } else {
                    assert_eq!(node(trace, "Docs")[0].attr("gen_ai.operation.name"), Some("retrieval"));
                }
                let input = node(trace, "FlowInputNode");
                assert_eq!(input[0].start, input[0].end, "the Input node is a zero-length run");
            }
            other => panic!("unknown flow {other}"),
        }
    }
    assert_eq!((iterators, loops, conditions), (12, 12, 12));
    assert!(
        agents > 0,
        "some tickets went to the billing agent: {}",
        traces
            .values()
            .flat_map(|t| node(t, "Route"))
            .map(|r| r.attr("aws.bedrock.flow.condition.satisfied").unwrap_or("-").to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    otlp.stop();
    emulator.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_outage_loses_nothing_and_export_resumes_by_itself() {
    let h = Harness::start(finished_scenario(15), &FLOWS).await;
    let (otlp, emulator) = (&h.otlp, &h.emulator);
    otlp.receiver.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let (child, exporter) = h.serve();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(otlp.receiver.refused.load(std::sync::atomic::Ordering::SeqCst) > 0, "the exporter tried");
    assert!(otlp.receiver.spans().is_empty());
    let (_, text) = support::http_get(exporter, "/metrics", None);
    assert!(support::sample(&text, "bedrock_flow_exporter_span_export_errors_total", &[]).unwrap() >= 1.0);
    assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_total", &[]), 0.0, "nothing counted before its spans were delivered");
    let rss_during = rss_kib(child.0.id());
    let calls_during = emulator.stats()["total_requests"].as_u64().unwrap();
    otlp.receiver.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        support::eventually(Duration::from_secs(90), || otlp.receiver.roots().len() == 45).await,
        "every execution arrives after the outage: {}",
        otlp.receiver.roots().len()
    );
    // Counted right after the checkpoint that follows the accepted export.
    let counted = || support::sum_samples(&support::http_get(exporter, "/metrics", None).1, "bedrock_flow_executions_total", &[]);
    assert!(support::eventually(Duration::from_secs(10), || counted() == 45.0).await, "counted: {}", counted());
    let spans = otlp.receiver.unique();
    for trace in by_trace(&spans).values() {
        let root = root(trace);
        assert!(trace.len() >= 3, "node spans of {} arrived too", root.attr("aws.bedrock.flow.execution.arn").unwrap());
    }
    let calls_after = emulator.stats()["total_requests"].as_u64().unwrap();
    assert!(calls_after - calls_during < 40, "the events read during the outage were kept, not read again: {} more calls", calls_after - calls_during);
    assert!(rss_during < 200 * 1024, "memory stays bounded during the outage: {rss_during} KiB");
    drop(child);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_on_one_flow_does_not_stop_the_others() {
    let mut s = finished_scenario(5);
    s.faults.access_denied_flows = vec!["DOCBATCH01".into()];
    let h = Harness::start(s, &FLOWS).await;
    let (_child, exporter) = h.serve();
    let otlp = &h.otlp;
    assert!(support::eventually(Duration::from_secs(30), || otlp.receiver.roots().len() == 10).await, "the two readable flows are exported");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(otlp.receiver.roots().iter().all(|r| r.attr("aws.bedrock.flow.id") != Some("DOCBATCH01")));
    let (_, text) = support::http_get(exporter, "/metrics", None);
    assert!(
        support::sample(&text, "bedrock_flow_exporter_api_request_errors_total", &[("operation", "ListFlowExecutions"), ("error_kind", "access_denied")])
            .unwrap()
            >= 2.0,
        "retried on later polls"
    );
    assert!(support::sample(&text, "bedrock_flow_exporter_last_successful_poll_timestamp_seconds", &[("flow_id", "SUPPORTTRI")]).is_some());
    assert!(support::sample(&text, "bedrock_flow_exporter_last_successful_poll_timestamp_seconds", &[("flow_id", "DOCBATCH01")]).is_none());
    let (_, page) = support::http_get(exporter, "/", None);
    assert!(page.contains("AccessDeniedException"), "the landing page shows the flow's last error");
    assert_eq!(support::http_get(exporter, "/-/ready", None).0, 200, "ready once every flow was polled, successfully or not");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_from_the_api_is_counted_and_skipped_without_a_panic() {
    let mut s = finished_scenario(30);
    s.faults.malformed_ratio = 1.0;
    s.traffic.running_at_start = 4;
    s.traffic.running_secs = 3;
    let h = Harness::start(s, &FLOWS).await;
    let (_child, exporter) = h.serve();
    let otlp = &h.otlp;
    assert!(
        support::eventually(Duration::from_secs(60), || otlp.receiver.roots().len() == 102).await,
        "every execution exported despite bad data: {}",
        otlp.receiver.roots().len()
    );
    let (_, text) = support::http_get(exporter, "/metrics", None);
    for reason in ["unknown_event_kind", "duplicate_event", "missing_timestamp"] {
        assert!(support::sample(&text, "bedrock_flow_exporter_invalid_events_total", &[("reason", reason)]).unwrap() >= 1.0, "{reason} counted");
    }
    let skewed = otlp.receiver.unique().values().filter(|s| s.attr("aws.bedrock.flow.clock_skew") == Some("true")).count();
    assert!(skewed >= 1, "an output before its input gives a zero-length span marked clock_skew");
    for s in otlp.receiver.unique().values().filter(|s| s.attr("aws.bedrock.flow.clock_skew") == Some("true")) {
        assert_eq!(s.start, s.end);
    }
    let log_text = h.log();
    assert!(!log_text.contains("panicked"), "no panic");
    let duplicate_lines = log_text.lines().filter(|l| l.contains("reason=\"duplicate_event\"") || l.contains("reason=duplicate_event")).count();
    assert_eq!(duplicate_lines, 1, "each kind of bad data is logged once, and this one occurred");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_cycle_while_ready_answers_503() {
    let mut s = finished_scenario(0);
    s.traffic.running_at_start = 12;
    s.traffic.running_secs = 600;
    s.faults.latency_ms = 150;
    s.flows.truncate(1);
    let mut h = Harness::start(s, &FLOWS[..1]).await;
    h.config.concurrency = 1;
    let (child, exporter) = h.serve();
    // Ready after the first cycle (12 executions x 2 streams x 150 ms, one at a time).
    assert!(support::eventually(Duration::from_secs(30), || support::http_get(exporter, "/-/ready", None).0 == 200).await);
    // The next cycle starts at once; signal in the middle of its first chunk (8 executions,
    // 2.4 s): the chunk finishes and is checkpointed, then the process exits.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = child.0.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive = std::net::TcpStream::connect(exporter).is_ok();
    assert!(alive, "the endpoint serves while the cycle drains: {}", h.log());
    assert_eq!(support::http_get(exporter, "/-/ready", None).0, 503, "not ready while draining");
    assert_eq!(support::http_get(exporter, "/-/healthy", None).0, 200, "still alive while draining");
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "exits cleanly after its cycle: {status:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_first_poll_not_after_the_backlog() {
    let mut s = finished_scenario(40);
    s.faults.latency_ms = 25;
    s.flows.truncate(1);
    let mut h = Harness::start(s, &FLOWS[..1]).await;
    h.config.concurrency = 1;
    let (_child, exporter) = h.serve();
    assert!(support::eventually(Duration::from_secs(10), || support::http_get(exporter, "/-/ready", None).0 == 200).await);
    let exported = h.otlp.receiver.roots().len();
    assert!(exported < 40, "ready while the backlog is still being exported ({exported} of 40 done)");
    assert!(support::eventually(Duration::from_secs(30), || h.otlp.receiver.roots().len() == 40).await);
    h.stop().await;
}

/// A backend that accepts each request but drops a span of it (OTLP's partial success, as
/// one over its limits answers), over gRPC and over HTTP: the spans it dropped are counted in
/// `spans_rejected_total` and said on `/` and in the log, the requests are not sent again (OTLP
/// forbids it), and the executions are counted as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_an_endpoint_drops_of_an_accepted_request_are_counted_and_not_sent_again() {
    for protocol in ["grpc", "http/protobuf"] {
        let mut h = Harness::start(finished_scenario(4), &FLOWS).await;
        if protocol != "grpc" {
            h.config.protocol = "http/protobuf";
            h.config.otlp = format!("http://{}", h.otlp.http);
        }
        h.otlp.receiver.drop_last_span.store(true, std::sync::atomic::Ordering::SeqCst);
        let (child, exporter) = h.serve();
        let metrics = || support::http_get(exporter, "/metrics", None).1;
        let counted = || support::sum_samples(&metrics(), "bedrock_flow_executions_total", &[]);
        assert!(support::eventually(Duration::from_secs(30), || counted() == 12.0).await, "{protocol}: every execution counted: {}", counted());
        let requests = h.otlp.receiver.requests.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(h.otlp.receiver.requests.load(std::sync::atomic::Ordering::SeqCst), requests, "{protocol}: nothing sent again");
        let dropped = h.otlp.receiver.dropped.load(std::sync::atomic::Ordering::SeqCst);
        assert!(dropped >= 1 && dropped == requests, "{protocol}: one span dropped a request: {dropped} of {requests} requests");
        let text = metrics();
        assert_eq!(support::sample(&text, "bedrock_flow_exporter_spans_rejected_total", &[]), Some(dropped as f64), "{protocol}: each dropped span counted");
        assert_eq!(support::sample(&text, "bedrock_flow_exporter_span_export_errors_total", &[]), Some(0.0), "{protocol}: no request failed");
        let page = support::http_get(exporter, "/", None).1;
        assert!(
            page.contains("The OTLP endpoint dropped spans") && page.contains("dropped 1 span(s) for the test"),
            "{protocol}: said on the status page: {page}"
        );
        assert!(h.log().contains("partial success"), "{protocol}: and in the log");
        let received = h.otlp.receiver.spans().len();
        let exported = support::sample(&text, "bedrock_flow_exporter_spans_exported_total", &[]).unwrap();
        assert_eq!(received + dropped, exported as usize, "{protocol}: what arrived and what was dropped make what was sent");
        drop(child);
        h.stop().await;
    }
}
