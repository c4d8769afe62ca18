//! Data-driven tests of the trace model: each file in `tests/fixtures/convert/` holds an
//! execution, its snapshot and its events as the wire carries them, and the expected spans,
//! one line each. `check` renders the conversion the same way and compares. To accept a new
//! rendering after a deliberate change, run with `BFE_BLESS=1` and review the diff.

use serde_json::Value;

use super::*;
use crate::config::CaptureContent;

fn render_value(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.to_string(),
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
            s.attributes.iter().filter(|(k, _)| !NOISE.contains(&k.as_ref())).map(|(k, v)| format!("{k}={}", render_value(v))).collect();
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
    let types = definition.as_ref().map(NodeTypes::of);
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
        types: types.as_ref(),
        errors: &errors,
    };
    let conversion = convert(&view, &node_events, &flow_events, &policy);
    // The same input always gives the same output (ids included).
    assert_eq!(convert(&view, &node_events, &flow_events, &policy).spans, conversion.spans);
    // And so does every split of it into chunks.
    let mut rng = bedrock_flow_emulator::rng::Rng::new(path.to_string_lossy().len() as u64);
    assert_split_invariant(&view, &node_events, &flow_events, &policy, &mut rng, &path.display().to_string());
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
    let types = NodeTypes::of(&definition);
    let mut rng = bedrock_flow_emulator::rng::Rng::new(3);
    for _ in 0..120 {
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
                    types: Some(&types),
                    errors: &[],
                };
                let conversion = convert(&view, &list, &[], &ContentPolicy::default());
                for s in &conversion.spans {
                    assert!(s.end >= s.start, "no negative span");
                }
                assert_split_invariant(&view, &list, &[], &ContentPolicy::default(), &mut rng, "random events");
            }
        }
    }
}

/// A problem as compared: reason, detail, event.
type ProblemKey = (String, String, Option<(bool, usize)>);

/// Spans and problems in a comparable order: spans by id, problems by reason and event.
fn canonical(mut spans: Vec<SpanRecord>, mut problems: Vec<Problem>) -> (Vec<SpanRecord>, Vec<ProblemKey>) {
    spans.sort_by_key(|s| s.span_id);
    let mut problems: Vec<_> = problems.drain(..).map(|p| (p.reason.to_string(), p.detail, p.event)).collect();
    problems.sort();
    (spans, problems)
}

/// Folds the history in random splits (each stream cut at its own points, the same number of
/// chunks; empty chunks included; the execution finished only with the last chunk), and as the
/// collector folds a read (each stream's pages of ten, then the final fold), and compares with
/// the fold in one piece. The state goes through its saved form between random chunks.
fn assert_split_invariant(
    view: &ExecutionView<'_>,
    node: &[Event],
    flow: &[Event],
    policy: &ContentPolicy,
    rng: &mut bedrock_flow_emulator::rng::Rng,
    what: &str,
) {
    let whole = convert(view, node, flow, policy);
    let expected = canonical(whole.spans, whole.problems);
    for attempt in 0..6 {
        let chunks = if attempt == 0 { node.len().max(flow.len()).max(1) } else { rng.between(2, 8) as usize };
        let cuts = |len: usize, rng: &mut bedrock_flow_emulator::rng::Rng| {
            let mut points: Vec<usize> =
                (1..chunks).map(|i| if attempt == 0 { (i * len / chunks).min(len) } else { rng.between(0, len as u64) as usize }).collect();
            points.sort();
            let mut bounds = vec![0];
            bounds.extend(points);
            bounds.push(len);
            bounds
        };
        let (node_cuts, flow_cuts) = (cuts(node.len(), rng), cuts(flow.len(), rng));
        let mut state = ExecutionState::default();
        let mut spans = Vec::new();
        let mut problems = Vec::new();
        for i in 0..chunks {
            let part = ExecutionView { finished: view.finished && i == chunks - 1, ..*view };
            let new =
                NewEvents { node: &node[node_cuts[i]..node_cuts[i + 1]], flow: &flow[flow_cuts[i]..flow_cuts[i + 1]], first: (node_cuts[i], flow_cuts[i]) };
            let out = fold(&mut state, &part, new, policy);
            spans.extend(out.spans);
            problems.extend(out.problems);
            state = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        }
        let actual = canonical(spans, problems);
        assert_eq!(actual.1, expected.1, "{what}: problems differ with cuts {node_cuts:?} / {flow_cuts:?}");
        assert_eq!(actual.0.len(), expected.0.len(), "{what}: span count differs with cuts {node_cuts:?} / {flow_cuts:?}");
        for (a, e) in actual.0.iter().zip(&expected.0) {
            assert_eq!(a, e, "{what}: a span differs with cuts {node_cuts:?} / {flow_cuts:?}");
        }
    }
    // And as the collector folds a read: the Node stream's pages of ten, then the Flow
    // stream's, one fold each, then the execution's final fold with nothing new.
    let mut ids = ExecutionIds::new(view.arn, view.flow_id);
    let mut state = ExecutionState::default();
    let mut spans = Vec::new();
    let mut problems = Vec::new();
    let pages = node.chunks(10).enumerate().map(|(i, page)| NewEvents { node: page, flow: &[], first: (10 * i, 0) });
    let pages = pages.chain(flow.chunks(10).enumerate().map(|(i, page)| NewEvents { node: &[], flow: page, first: (node.len(), 10 * i) }));
    for new in pages.chain([NewEvents { node: &[], flow: &[], first: (node.len(), flow.len()) }]) {
        let finished = view.finished && new.node.is_empty() && new.flow.is_empty();
        let out = fold_with(&mut ids, &mut state, &ExecutionView { finished, ..*view }, new, policy);
        spans.extend(out.spans);
        problems.extend(out.problems);
    }
    let actual = canonical(spans, problems);
    assert_eq!(actual.1, expected.1, "{what}: problems differ folded page by page");
    assert_eq!(actual.0, expected.0, "{what}: the spans differ folded page by page");
}

/// The emulator's generator: every flow, every outcome, every malformation, in random splits.
#[test]
fn folding_any_split_of_a_generated_history_gives_the_spans_of_one_piece() {
    use bedrock_flow_emulator::generate::{plan, Malformation, Outcome, Params};
    let mut rng = bedrock_flow_emulator::rng::Rng::new(11);
    let mut histories = 0;
    for name in ["support-triage", "doc-batch", "refine-loop", "backlog"] {
        let definition = bedrock_flow_emulator::flows::by_name(&name.replace('-', "_"), 45).unwrap();
        let types = NodeTypes::of(&definition);
        for outcome in [Outcome::Succeed, Outcome::Fail, Outcome::TimeOut, Outcome::Abort] {
            for malformation in std::iter::once(None).chain(Malformation::ALL.into_iter().map(Some)) {
                let input = bedrock_flow_emulator::world::sample_input(name, &mut rng);
                let params = Params {
                    definition: &definition,
                    start_nanos: 1_700_000_000_000_000_000,
                    input,
                    outcome,
                    nanos_per_second: 1e8,
                    timeout_nanos: 2_000_000_000,
                    malformation,
                };
                let p = plan(params, &mut rng);
                let (flow, node): (Vec<Event>, Vec<Event>) = p.events.into_iter().partition(|e| e.is_flow_level());
                let status = p.status.clone();
                for (with_types, capture) in [(true, CaptureContent::Off), (false, CaptureContent::Truncated)] {
                    let policy = ContentPolicy { mode: capture, max_bytes: 64, redact: vec![] };
                    let view = ExecutionView {
                        arn: "arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/e",
                        flow_id: "F",
                        flow_name: name,
                        alias: "A",
                        version: "1",
                        status: &status,
                        created_at: Timestamp(1_700_000_000_000_000_000),
                        ended_at: Some(Timestamp(p.ended_at)),
                        finished: true,
                        types: with_types.then_some(&types),
                        errors: &p.errors,
                    };
                    assert_split_invariant(&view, &node, &flow, &policy, &mut rng, &format!("{name} {outcome:?} {malformation:?} types={with_types}"));
                    histories += 1;
                }
            }
        }
    }
    assert_eq!(histories, 4 * 4 * 7 * 2);
}

/// A run with more events than a span keeps holds the first ones and counts the rest.
#[test]
fn a_span_keeps_its_first_events_and_counts_the_dropped_ones() {
    let definition: FlowDefinition = serde_json::from_value(serde_json::json!({"nodes": [{"name": "Gather", "type": "Collector"}]})).unwrap();
    let types = NodeTypes::of(&definition);
    let chain = serde_json::json!([{"nodeName": "Each", "type": "Iterator", "index": 0}]);
    let events: Vec<Event> = (0..300)
        .map(|i| {
            let ts = crate::timefmt::format_nanos(1_000_000 * (i + 1));
            Event::from_wire(&serde_json::json!({"nodeInputEvent": {"nodeName": "Gather", "timestamp": ts, "fields": [{"name": "item", "content": {"document": i}, "executionChain": chain}]}})).unwrap()
        })
        .collect();
    let status = ExecutionStatus::Succeeded;
    let view = ExecutionView {
        arn: "arn",
        flow_id: "F",
        flow_name: "f",
        alias: "A",
        version: "1",
        status: &status,
        created_at: Timestamp(1),
        ended_at: Some(Timestamp(1_000_000_000)),
        finished: true,
        types: Some(&types),
        errors: &[],
    };
    let mut state = ExecutionState::default();
    let half =
        fold(&mut state, &ExecutionView { finished: false, ..view }, NewEvents { node: &events[..150], flow: &[], first: (0, 0) }, &ContentPolicy::default());
    assert!(half.spans.is_empty(), "the Collector is still gathering");
    assert_eq!(state.open[0].events.len(), MAX_EVENTS_PER_SPAN, "the open run holds no more than a span keeps");
    let rest = fold(&mut state, &view, NewEvents { node: &events[150..], flow: &[], first: (150, 0) }, &ContentPolicy::default());
    let gather = rest.spans.iter().find(|s| s.name == "Collector Gather").unwrap();
    assert_eq!((gather.events.len(), gather.dropped_events), (MAX_EVENTS_PER_SPAN, 300 - MAX_EVENTS_PER_SPAN as u32));
    assert_eq!(gather.end, 300_000_000, "the end is its last input's, dropped or not");
    assert!(state.finished && state.open.is_empty() && state.recent.is_empty());
}

/// An Iterator over 1,000 items folded a few events at a time: the state holds the open runs
/// and the per-node indexes, never the closed runs, so its saved size stops growing once the
/// open runs hold as many events as a span keeps.
#[test]
fn the_state_of_a_long_iteration_stays_bounded() {
    let (flow, node, types) = doc_batch_history(1000, 5);
    assert!(node.len() > 4000, "{} node events", node.len());
    let status = ExecutionStatus::Running;
    let view = running_view("arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/long", &status, &types);
    let mut state = ExecutionState::default();
    fold(&mut state, &view, NewEvents { node: &[], flow: &flow, first: (0, 0) }, &ContentPolicy::default());
    let (mut sizes, mut spans, mut most_runs) = (Vec::new(), 0, 0);
    for (i, chunk) in node.chunks(8).enumerate() {
        spans += fold(&mut state, &view, NewEvents { node: chunk, flow: &[], first: (i * 8, flow.len()) }, &ContentPolicy::default()).spans.len();
        sizes.push(serde_json::to_string(&state).unwrap().len());
        most_runs = most_runs.max(state.open_runs());
    }
    assert!(spans >= 2000, "the closed runs came out as they closed: {spans}");
    assert!(most_runs <= 8, "at most {most_runs} runs held at once");
    let (early, late) = (sizes[sizes.len() / 3], *sizes.iter().max().unwrap());
    assert!((late as f64) < 1.2 * early as f64, "the state grew from {early} to {late} bytes");
}

/// Half of a doc-batch stream folded into a state of scheme `old`, saved as JSON (without the
/// scheme's name when `names_scheme` is false, as states before version 3 were), read back,
/// and the rest of the stream folded from the last event already folded: the state read
/// back, and the repeats found by it and by the same state read as holding prints of
/// `misread_as`.
fn repeats_across_an_upgrade(old: fingerprint::Scheme, names_scheme: bool, misread_as: fingerprint::Scheme) -> (ExecutionState, usize, usize) {
    let (flow, node, types) = doc_batch_history(20, 3);
    let status = ExecutionStatus::Running;
    let view = running_view("arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/upgrade", &status, &types);
    let policy = ContentPolicy::default();
    let mut state = ExecutionState { fingerprints: old, ..ExecutionState::default() };
    let half = node.len() / 2;
    fold(&mut state, &view, NewEvents { node: &node[..half], flow: &flow, first: (0, 0) }, &policy);
    let mut saved = serde_json::to_value(&state).unwrap();
    let name = serde_json::to_value(old).unwrap();
    if names_scheme {
        assert_eq!(saved["fingerprints"], name);
    } else {
        assert_eq!(saved.as_object_mut().unwrap().remove("fingerprints"), Some(name));
    }
    let repeats = |state: &mut ExecutionState| {
        let rest = fold(state, &view, NewEvents { node: &node[half - 1..], flow: &[], first: (half - 1, flow.len()) }, &policy);
        rest.problems.iter().filter(|p| p.reason == "duplicate_event").count()
    };
    let read: ExecutionState = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(read, state);
    let mut misread: ExecutionState = serde_json::from_value(saved).unwrap();
    misread.fingerprints = misread_as;
    let (found, misfound) = (repeats(&mut read.clone()), repeats(&mut misread));
    (read, found, misfound)
}

/// A state saved before version 3 names no fingerprint scheme: it is read as holding FNV-1a
/// over the wire text and keeps making those, so an event the API sends again across the
/// upgrade is still known. Read as holding structural prints, it would not be.
#[test]
fn a_state_saved_before_version_3_knows_repeats_by_its_own_fingerprints() {
    let (read, found, misfound) = repeats_across_an_upgrade(fingerprint::Scheme::WireText, false, fingerprint::Scheme::Structural);
    assert_eq!((found, misfound), (1, 0));
    // A new state makes the prints of version 5 (positional, an action known by its call),
    // and needs no action documents; one of version 3 (or older) needs them.
    assert_eq!(ExecutionState::default().fingerprints, fingerprint::Scheme::Positional);
    assert!(!ExecutionState::default().needs_action_documents());
    let v3: ExecutionState =
        serde_json::from_value(serde_json::to_value(ExecutionState { fingerprints: fingerprint::Scheme::Structural, ..ExecutionState::default() }).unwrap())
            .unwrap();
    assert!(v3.needs_action_documents() && read.needs_action_documents());
}

/// A state of version 4 names the `calls` scheme: read after the upgrade it keeps making
/// those prints, so an event the API sends again across the upgrade is still known; read as
/// holding positional prints, it would not be. Its reads need no action documents either.
#[test]
fn a_state_of_version_4_knows_repeats_by_its_own_fingerprints() {
    let (read, found, misfound) = repeats_across_an_upgrade(fingerprint::Scheme::Calls, true, fingerprint::Scheme::Positional);
    assert_eq!((found, misfound), (1, 0));
    assert!(!read.needs_action_documents());
}

/// A doc-batch execution over `documents` documents as the emulator generates it (seeded): its
/// Flow and Node events, and the node types of the flow.
pub(crate) fn doc_batch_history(documents: usize, seed: u64) -> (Vec<Event>, Vec<Event>, NodeTypes) {
    use bedrock_flow_emulator::generate::{plan, Outcome, Params};
    let definition = bedrock_flow_emulator::flows::doc_batch();
    let documents: Vec<String> = (0..documents).map(|i| format!("s3://inbox/doc-{i}.pdf")).collect();
    let mut rng = bedrock_flow_emulator::rng::Rng::new(seed);
    let p = plan(
        Params {
            definition: &definition,
            start_nanos: 1_000_000_000,
            input: serde_json::json!({"documents": documents, "key": "batch-1"}),
            outcome: Outcome::Succeed,
            nanos_per_second: 1e6,
            timeout_nanos: i64::MAX / 4,
            malformation: None,
        },
        &mut rng,
    );
    let (flow, node) = p.events.into_iter().partition(|e| e.is_flow_level());
    (flow, node, NodeTypes::of(&definition))
}

/// The view of a running doc-batch execution started as `doc_batch_history` starts it.
pub(crate) fn running_view<'a>(arn: &'a str, status: &'a ExecutionStatus, types: &'a NodeTypes) -> ExecutionView<'a> {
    ExecutionView {
        arn,
        flow_id: "F",
        flow_name: "doc-batch",
        alias: "A",
        version: "1",
        status,
        created_at: Timestamp(1_000_000_000),
        ended_at: None,
        finished: false,
        types: Some(types),
        errors: &[],
    }
}

/// A node's type is one of the flow definition's (a constant on every run and span, nothing
/// allocated) or, for a type this build does not know, the name as the snapshot gives it.
#[test]
fn node_types_are_constants_but_for_types_this_build_does_not_know() {
    let (flow, node, mut types) = doc_batch_history(3, 11);
    let renamed = types.0.keys().find(|name| types.0[*name].0 == "Prompt").cloned().expect("a Prompt node");
    types.0.get_mut(&renamed).unwrap().0 = "FutureNode".to_string();
    let status = ExecutionStatus::Succeeded;
    let view = ExecutionView {
        finished: true,
        ended_at: Some(Timestamp(i64::MAX / 8)),
        ..running_view("arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/t", &status, &types)
    };
    let conversion = fold(&mut ExecutionState::default(), &view, NewEvents { node: &node, flow: &flow, first: (0, 0) }, &ContentPolicy::default());
    let nodes: Vec<&SpanRecord> = conversion.spans.iter().filter(|s| s.facts.node.is_some()).collect();
    assert!(nodes.len() > 5, "{} node spans", nodes.len());
    for span in nodes {
        let name = span.facts.node.as_deref().unwrap();
        let expected = &types.0[name].0;
        assert_eq!(&*span.facts.node_type, expected.as_str(), "{name}");
        assert_eq!(span.attribute("aws.bedrock.flow.node.type"), Some(&AttrValue::Str(expected.as_str().into())), "{name}");
        match &span.facts.node_type {
            Text::Static(_) => assert_ne!(name, renamed, "an unknown type is not a constant"),
            Text::Owned(_) => assert_eq!(name, renamed, "{name}: a known type is a constant"),
            Text::Shared(_) => panic!("{name}: a node type is never shared"),
        }
    }
}
