//! Data-driven tests of the trace model: each file in `tests/fixtures/convert/` holds an
//! execution, its snapshot and its events as the wire carries them, and the expected spans,
//! one line each. `check` renders the conversion the same way and compares. To accept a new
//! rendering after a deliberate change, run with `BFE_BLESS=1` and review the diff.

use serde_json::Value;

use super::*;
use crate::config::CaptureContent;

fn render_value(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.clone(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::StrArray(items) => format!("[{}]", items.join(",")),
    }
}

/// Attributes every span of the execution carries: left out of the rendering.
const NOISE: [&str; 2] = ["aws.bedrock.flow.execution.arn", "aws.bedrock.flow.id"];

fn render(conversion: &Conversion, created_at: i64) -> Vec<String> {
    let mut names: std::collections::HashMap<[u8; 8], String> = conversion.spans.iter().map(|s| (s.span_id, s.name.clone())).collect();
    if let Some(first) = conversion.spans.first() {
        // The root's id, when the root itself is not produced yet (running executions).
        let root = conversion.spans.iter().find(|s| s.parent_span_id.is_none()).map(|s| s.span_id);
        if root.is_none() {
            if let Some(parent) = first.parent_span_id {
                names.entry(parent).or_insert_with(|| "root (not yet produced)".into());
            }
        }
    }
    let ms = |t: i64| (t - created_at) as f64 / 1e6;
    let mut lines = Vec::new();
    for s in &conversion.spans {
        let parent = s.parent_span_id.map(|p| names.get(&p).cloned().unwrap_or_else(|| "?".into())).unwrap_or_else(|| "-".into());
        let status = match &s.status {
            SpanStatus::Unset => "UNSET".to_string(),
            SpanStatus::Ok => "OK".to_string(),
            SpanStatus::Error(d) => format!("ERROR({d})"),
        };
        let mut attributes: Vec<String> =
            s.attributes.iter().filter(|(k, _)| !NOISE.contains(&k.as_str())).map(|(k, v)| format!("{k}={}", render_value(v))).collect();
        attributes.sort();
        let events: Vec<String> = s
            .events
            .iter()
            .map(|e| {
                let mut attrs: Vec<String> = e.attributes.iter().map(|(k, v)| format!("{k}={}", render_value(v))).collect();
                attrs.sort();
                format!("{}@{}{{{}}}", e.name, ms(e.time), attrs.join(";"))
            })
            .collect();
        let links: Vec<String> = s.links.iter().map(|l| names.get(l).cloned().unwrap_or_else(|| "?".into())).collect();
        lines.push(format!(
            "{} | parent={parent} | {}..{} ms | {status} | {} | events: {} | links: {}",
            s.name,
            ms(s.start),
            ms(s.end),
            attributes.join(", "),
            events.join(", "),
            links.join(", ")
        ));
    }
    for p in &conversion.problems {
        lines.push(format!("problem {}: {}", p.reason, p.detail));
    }
    lines
}

fn events(value: &Value) -> Vec<Event> {
    value.as_array().map(|a| a.iter().map(|v| Event::from_wire(v).unwrap_or_else(|e| panic!("fixture event {v}: {e}"))).collect()).unwrap_or_default()
}

fn time(value: &Value) -> Option<i64> {
    value.as_str().and_then(crate::timefmt::parse_nanos)
}

/// Converts the fixture's execution and compares with its `expected` lines.
fn check(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut fixture: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let execution = &fixture["execution"];
    let arn = execution["arn"].as_str().unwrap_or("arn:aws:bedrock:us-east-1:123456789012:flow/ABCDEFGHIJ/alias/KLMNOPQRST/execution/fixture");
    let status = ExecutionStatus::parse(execution["status"].as_str().unwrap());
    let created_at = time(&execution["created_at"]).unwrap();
    let definition: Option<FlowDefinition> = (!fixture["definition"].is_null()).then(|| serde_json::from_value(fixture["definition"].clone()).unwrap());
    let errors: Vec<ExecutionError> = serde_json::from_value(execution["errors"].clone()).unwrap_or_default();
    let node_events = events(&fixture["node_events"]);
    let flow_events = events(&fixture["flow_events"]);
    let capture = &fixture["capture"];
    let policy = ContentPolicy {
        mode: match capture["mode"].as_str() {
            Some("truncated") => CaptureContent::Truncated,
            Some("full") => CaptureContent::Full,
            _ => CaptureContent::Off,
        },
        max_bytes: capture["max_bytes"].as_u64().unwrap_or(8192) as usize,
        redact: capture["redact"].as_array().into_iter().flatten().map(|r| Regex::new(r.as_str().unwrap()).unwrap()).collect(),
    };
    let view = ExecutionView {
        arn,
        flow_id: "ABCDEFGHIJ",
        flow_name: "fixture-flow",
        alias: "KLMNOPQRST",
        version: "1",
        status: &status,
        created_at: Timestamp(created_at),
        ended_at: time(&execution["ended_at"]).map(Timestamp),
        finished: execution["finished"].as_bool().unwrap_or(true),
        definition: definition.as_ref(),
        errors: &errors,
        node_events: &node_events,
        flow_events: &flow_events,
    };
    let conversion = convert(&view, &policy);
    // The same input always gives the same output (ids included).
    assert_eq!(convert(&view, &policy).spans, conversion.spans);
    let actual = render(&conversion, created_at);
    let expected: Vec<String> = fixture["expected"].as_array().map(|a| a.iter().map(|l| l.as_str().unwrap().to_string()).collect()).unwrap_or_default();
    if actual != expected {
        if std::env::var_os("BFE_BLESS").is_some() {
            fixture["expected"] = Value::Array(actual.into_iter().map(Value::String).collect());
            std::fs::write(path, serde_json::to_string_pretty(&fixture).unwrap() + "\n").unwrap();
            return;
        }
        panic!("{}:\nexpected:\n{}\nactual:\n{}\n", path.display(), expected.join("\n"), actual.join("\n"));
    }
    // Ids follow SPEC §5 and no span id is zero or repeated.
    let mut ids = std::collections::HashSet::new();
    for s in &conversion.spans {
        assert_eq!(s.trace_id, trace_id(arn));
        assert_ne!(s.span_id, [0; 8]);
        assert!(ids.insert(s.span_id), "duplicate span id in {}", path.display());
    }
}

#[test]
fn fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    paths.sort();
    assert!(paths.len() >= 10, "fixtures for every rule");
    for path in paths {
        check(&path);
    }
}

#[test]
fn truncation_cuts_on_a_character_boundary_with_a_short_marker() {
    let text = "é".repeat(10); // 20 bytes
    let cut = truncate(&text, 5);
    assert_eq!(cut, "éé…[truncated 16 bytes]");
    assert!(cut.len() - 4 <= 64);
    assert_eq!(truncate("short", 5), "short");
}

#[test]
fn never_panics_on_arbitrary_event_orders() {
    // Every permutation-ish mix of kinds, missing names and times, for a node of each type.
    let kinds = ["Input", "Output", "Iterator", "Collector", "Loop", "LoopInput", "LoopController", "Condition", "Prompt"];
    let nodes: Vec<Value> = kinds.iter().map(|k| serde_json::json!({"name": format!("N{k}"), "type": k})).collect();
    let definition: FlowDefinition = serde_json::from_value(serde_json::json!({"nodes": nodes})).unwrap();
    let mut rng = bedrock_flow_emulator::rng::Rng::new(3);
    for _ in 0..300 {
        let mut list = Vec::new();
        for _ in 0..rng.between(0, 30) {
            let node = format!("N{}", rng.pick(&kinds));
            let ts = if rng.chance(0.1) {
                serde_json::json!("bad")
            } else {
                serde_json::json!(crate::timefmt::format_nanos(rng.between(1, 1_000) as i64 * 1_000_000))
            };
            let chain = if rng.chance(0.3) {
                serde_json::json!([{"nodeName": "NIterator", "type": "Iterator", "index": rng.between(0, 3)}])
            } else {
                serde_json::json!([])
            };
            let event = match rng.between(0, 6) {
                0 => {
                    serde_json::json!({"nodeInputEvent": {"nodeName": node, "timestamp": ts, "fields": [{"name": "a", "content": {"document": 1}, "executionChain": chain, "source": {"nodeName": "NPrompt", "outputFieldName": "o", "expression": "$.data"}}]}})
                }
                1 => {
                    serde_json::json!({"nodeOutputEvent": {"nodeName": node, "timestamp": ts, "fields": [{"name": "arraySize", "content": {"document": rng.between(0, 3)}}]}})
                }
                2 => serde_json::json!({"nodeFailureEvent": {"nodeName": node, "timestamp": ts, "errorCode": "VALIDATION", "errorMessage": "m"}}),
                3 => serde_json::json!({"conditionResultEvent": {"nodeName": node, "timestamp": ts, "satisfiedConditions": [{"conditionName": "c"}]}}),
                4 => {
                    serde_json::json!({"nodeActionEvent": {"nodeName": node, "timestamp": ts, "requestId": "r", "serviceName": "s", "operationName": "o", "operationResponse": {"usage": {"inputTokens": -5}}}})
                }
                5 => serde_json::json!({"flowFailureEvent": {"timestamp": ts, "errorCode": "X", "errorMessage": "m"}}),
                _ => serde_json::json!({"somethingNew": {}}),
            };
            list.push(Event::from_wire(&event).unwrap());
        }
        for status in ["Succeeded", "Failed", "TimedOut", "Aborted", "Running", "InProgress"] {
            let status = ExecutionStatus::parse(status);
            for finished in [true, false] {
                let view = ExecutionView {
                    arn: "arn",
                    flow_id: "F",
                    flow_name: "f",
                    alias: "A",
                    version: "1",
                    status: &status,
                    created_at: Timestamp(5),
                    ended_at: Some(Timestamp(500_000_000)),
                    finished,
                    definition: Some(&definition),
                    errors: &[],
                    node_events: &list,
                    flow_events: &[],
                };
                let conversion = convert(&view, &ContentPolicy::default());
                for s in &conversion.spans {
                    assert!(s.end >= s.start, "no negative span");
                }
            }
        }
    }
}
