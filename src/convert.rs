//! Events → spans (SPEC §2, §5 and §10), as a fold: `(execution state, new events) ->
//! (execution state', closed spans, problems)`. Pure: no I/O, no clock, no panics. The same
//! input always gives the same spans with the same ids, so a replay after a crash re-exports
//! identical data. A run's span comes out once, when it closes; the state keeps only what later
//! events need (open runs, counters, the latest runs per node), never the events.

use std::collections::{BTreeMap, VecDeque};

use regex::Regex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::*;
use crate::span::*;

mod fingerprint;

/// How documents may leave the process (`traces.capture_content`, `redact`, `max_content_bytes`).
#[derive(Clone, Debug)]
pub struct ContentPolicy {
    pub mode: crate::config::CaptureContent,
    pub max_bytes: usize,
    pub redact: Vec<Regex>,
}

impl Default for ContentPolicy {
    fn default() -> Self {
        ContentPolicy { mode: crate::config::CaptureContent::Off, max_bytes: 8192, redact: Vec::new() }
    }
}

impl ContentPolicy {
    /// Whether documents leave the process at all (`capture_content` is not `off`).
    pub fn captures(&self) -> bool {
        self.mode != crate::config::CaptureContent::Off
    }

    /// The exported form of a document, or `None` when capture is off.
    pub fn render(&self, document: &Value) -> Option<String> {
        self.redacted(document).map(|text| self.limit(text))
    }

    /// The document as text with every `redact` match replaced; `None` when capture is off.
    fn redacted(&self, document: &Value) -> Option<String> {
        if !self.captures() {
            return None;
        }
        let mut text = match document {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for pattern in &self.redact {
            if pattern.is_match(&text) {
                text = pattern.replace_all(&text, "[REDACTED]").into_owned();
            }
        }
        Some(text)
    }

    /// Applies `max_content_bytes` in `truncated` mode.
    fn limit(&self, text: String) -> String {
        if self.mode == crate::config::CaptureContent::Truncated {
            truncate(&text, self.max_bytes)
        } else {
            text
        }
    }
}

/// Keeps at most `max_bytes` bytes (cut on a UTF-8 boundary) and appends a marker saying how
/// many bytes were cut.
pub fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[truncated {} bytes]", &text[..cut], text.len() - cut)
}

/// Span events kept per span (OpenTelemetry's default `OTEL_SPAN_EVENT_COUNT_LIMIT`); more are
/// counted as dropped. An Iterator over 10,000 items keeps its first 128 outputs as events (each
/// item has its own node spans), and the state of an open run stays bounded.
pub const MAX_EVENTS_PER_SPAN: usize = 128;

/// Latest runs remembered per node for parents and links.
const RECENT_RUNS: usize = 16;

/// Recent events remembered per stream (as fingerprints) to recognise a repeated event.
const DEDUP_WINDOW: usize = 64;

/// The most attributes a node span carries (`Converter::span_of`).
const SPAN_ATTRIBUTES_MAX: usize = 14;

/// The most nodes a new execution state's per-node maps (and a read's span ids) are made
/// for before the first run.
const PRESIZED_NODES: usize = 32;

/// Closed runs of a node of unknown type held back (until the Flow stream names its type, or
/// the execution finishes), so that every split of the history gives the same spans.
const MAX_HELD: usize = 64;

/// The node types of a flow definition: name -> (type, model id). Built once per definition.
#[derive(Clone, Debug, Default)]
pub struct NodeTypes(FxHashMap<String, (String, Option<String>)>);

impl NodeTypes {
    pub fn of(definition: &FlowDefinition) -> NodeTypes {
        NodeTypes(definition.all_nodes().into_iter().map(|n| (n.name.clone(), (n.kind.clone(), n.model_id().map(str::to_string)))).collect())
    }
}

/// The execution as the collector knows it (without its events).
pub struct ExecutionView<'a> {
    pub arn: &'a str,
    pub flow_id: &'a str,
    pub flow_name: &'a str,
    pub alias: &'a str,
    pub version: &'a str,
    pub status: &'a ExecutionStatus,
    pub created_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    /// Terminal and settled: open runs close and the root span is produced.
    pub finished: bool,
    /// Node types from the flow's snapshot, when it could be read.
    pub types: Option<&'a NodeTypes>,
    pub errors: &'a [ExecutionError],
}

/// Events read since the last fold: each stream's new events in service order, which start at
/// positions `first` (node, flow) of their streams.
#[derive(Clone, Copy)]
pub struct NewEvents<'a> {
    pub node: &'a [Event],
    pub flow: &'a [Event],
    pub first: (usize, usize),
}

/// Something wrong with the input, counted by reason (`invalid_events_total{reason}`).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub detail: String,
    /// Which event caused it: (stream is Flow, position in that stream); `None` for the execution.
    pub event: Option<(bool, usize)>,
}

/// What one fold produced: the runs it closed as spans (in the order the runs began), then the
/// root span when the execution finished; and the problems of the new events.
#[derive(Debug, Default)]
pub struct Conversion {
    pub spans: Vec<SpanRecord>,
    pub problems: Vec<Problem>,
}

/// A run by identity: its node and its ordinal among the node's runs (its span id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RunRef {
    node: String,
    k: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Run {
    /// Creation order within the execution.
    seq: u64,
    node: String,
    k: usize,
    /// The node's type: one of `NODE_TYPES` (not allocated) or a name the API gave.
    kind: Text,
    chain: Vec<ExecutionChainItem>,
    start: i64,
    last: i64,
    end: Option<i64>,
    parent: Option<RunRef>,
    sources: Vec<String>,
    /// Decided once the candidates are known (`waiting_on` empty).
    links: Vec<[u8; 8]>,
    /// Per source node, the runs that may be the link (newest first), while one of them is
    /// still open and may yet end before this run started.
    #[serde(default)]
    waiting_on: Vec<(String, Vec<Candidate>)>,
    events: Vec<SpanEventRecord>,
    dropped_events: u32,
    failure: Option<(String, String)>,
    skew: bool,
    incomplete: bool,
    conditions: Vec<String>,
    input_tokens: i64,
    output_tokens: i64,
    /// Iterator: outputs expected (arraySize) and seen.
    expected_outputs: Option<usize>,
    outputs_seen: usize,
    /// Created by an output or a failure without an input.
    one_sided: bool,
}

impl Run {
    fn push(&mut self, record: SpanEventRecord) {
        if self.events.len() < MAX_EVENTS_PER_SPAN {
            self.events.push(record);
        } else {
            self.dropped_events += 1;
        }
    }
}

/// A run that may be linked to: its end once it is known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Candidate {
    seq: u64,
    k: usize,
    end: Option<i64>,
}

/// One of the latest runs of a node: enough to find a parent or a link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Recent {
    seq: u64,
    k: usize,
    start: i64,
    end: Option<i64>,
}

/// An event of the root span, ordered by (time, stream, position): the same order in every split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RootEvent {
    key: (i64, bool, usize),
    record: SpanEventRecord,
}

/// The first flow failure: from the Flow stream before the Node stream, then by position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FlowFailureSeen {
    from_node_stream: bool,
    position: usize,
    code: String,
    message: String,
}

/// What later events of an execution need (SPEC §2): open runs with what they gathered, run
/// counters per node, the latest runs per node, what the root span needs, node types named by
/// the Flow stream, recent event fingerprints. Never the events. Saved with the cursors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionState {
    // Node-keyed maps are hashed (FxHash: node names are short), not ordered: a look-up is one
    // hash and one comparison, not a comparison per level of a tree. No span depends on their
    // order; saved as JSON objects, they read back the same in whatever order they were written.
    learned: FxHashMap<String, String>,
    runs_per_node: FxHashMap<String, usize>,
    next_seq: u64,
    open: Vec<Run>,
    held: Vec<Run>,
    /// Closed runs whose links wait for a source run still open.
    #[serde(default)]
    waiting: Vec<Run>,
    recent: FxHashMap<String, VecDeque<Recent>>,
    root_events: Vec<RootEvent>,
    last_node_failure: Option<String>,
    flow_failure: Option<FlowFailureSeen>,
    seen_node: VecDeque<u64>,
    seen_flow: VecDeque<u64>,
    /// How the fingerprints in `seen_node` and `seen_flow` are made; states saved before
    /// version 3 name none and hold FNV-1a over the wire text, those of version 3 name
    /// `structural`.
    #[serde(default = "fingerprint::Scheme::legacy")]
    fingerprints: fingerprint::Scheme,
    /// Spans produced so far.
    pub spans: u64,
    /// The root span was produced: nothing more comes of this execution.
    pub finished: bool,
}

impl ExecutionState {
    /// Whether the reads of this execution must keep its action events' documents: its
    /// fingerprints are of a scheme that counts them (a state saved before version 4).
    pub fn needs_action_documents(&self) -> bool {
        self.fingerprints.needs_action_documents()
    }

    /// Lets go of the room the per-node maps were made with (`fold_with`) beyond the nodes
    /// that ran: the state of a running execution stays in memory between its reads, and it
    /// may run a few of its flow's nodes.
    pub fn shrink(&mut self) {
        self.runs_per_node.shrink_to_fit();
        self.recent.shrink_to_fit();
    }

    /// Runs open now (for the memory report).
    pub fn open_runs(&self) -> usize {
        self.open.len() + self.held.len() + self.waiting.len()
    }

    fn runs_held(&self) -> impl Iterator<Item = &Run> {
        self.open.iter().chain(&self.held).chain(&self.waiting)
    }

    /// The span events gathered by each run the state still holds, by the run's creation
    /// order (unique in the execution). They only grow while a run is held, so a checkpoint
    /// can save what was added since the last one and leave the rest where it is.
    pub fn span_events(&self) -> impl Iterator<Item = (u64, &[SpanEventRecord])> {
        self.runs_held().map(|r| (r.seq, r.events.as_slice()))
    }

    fn runs_held_mut(&mut self) -> impl Iterator<Item = &mut Run> {
        self.open.iter_mut().chain(&mut self.held).chain(&mut self.waiting)
    }

    /// Takes the held runs' span events out (to save the rest of the state without them);
    /// `restore_span_events` puts them back.
    pub fn take_span_events(&mut self) -> Vec<(u64, Vec<SpanEventRecord>)> {
        self.runs_held_mut().map(|r| (r.seq, std::mem::take(&mut r.events))).collect()
    }

    /// Puts span events back on the held runs they belong to (by run); others are ignored.
    pub fn restore_span_events(&mut self, events: impl IntoIterator<Item = (u64, Vec<SpanEventRecord>)>) {
        let mut by_run: BTreeMap<u64, Vec<SpanEventRecord>> = events.into_iter().collect();
        for run in self.runs_held_mut() {
            if let Some(events) = by_run.remove(&run.seq) {
                if run.events.is_empty() {
                    run.events = events;
                }
            }
        }
    }
}

/// The node types of the flow definition (`FlowNodeType`), and the fold's own "unknown".
const NODE_TYPES: [&str; 17] = [
    "Input",
    "Output",
    "KnowledgeBase",
    "Condition",
    "Lex",
    "Prompt",
    "LambdaFunction",
    "Storage",
    "Agent",
    "Retrieval",
    "Iterator",
    "Collector",
    "InlineCode",
    "Loop",
    "LoopInput",
    "LoopController",
    "unknown",
];

/// A node type as a span carries it: a constant for the known ones (every run and span has
/// one; none is allocated), else the name as given.
fn node_type_text(kind: &str) -> Text {
    match NODE_TYPES.iter().find(|known| **known == kind) {
        Some(known) => Text::Static(known),
        None => Text::Owned(kind.to_string()),
    }
}

pub fn operation_for(node_type: &str) -> (Option<&'static str>, &'static str) {
    match node_type {
        "Prompt" => (Some("chat"), "LLM"),
        "Agent" => (Some("invoke_agent"), "AGENT"),
        "KnowledgeBase" | "Retrieval" => (Some("retrieval"), "RETRIEVER"),
        "LambdaFunction" | "InlineCode" | "Lex" | "Storage" => (Some("execute_tool"), "TOOL"),
        _ => (None, "CHAIN"),
    }
}

/// Folds an execution's new events into its state: the runs they close come out as spans,
/// and when the execution is finished the open runs close and the root span comes out. Folding
/// a history in any split into chunks gives the spans of folding it in one piece.
pub fn fold(state: &mut ExecutionState, view: &ExecutionView<'_>, new: NewEvents<'_>, policy: &ContentPolicy) -> Conversion {
    fold_with(&mut ExecutionIds::new(view.arn, view.flow_id), state, view, new, policy)
}

/// What the folds of an execution derive from its ARN (the trace id, the root's span id, the
/// node span ids' hashed prefix, the span ids of runs already needed) and the ARN and flow id
/// as the spans share them. Made once for the folds of one read, page after page, so that a
/// fold of one page does not hash them again.
pub struct ExecutionIds {
    trace_id: [u8; 16],
    root_id: [u8; 8],
    /// The node span ids of the execution (SHA-256 has taken their common prefix).
    nodes: NodeSpanIds,
    /// The span ids of runs needed, by run `seq`: a run's id is wanted for its own span and
    /// again by each run that links to it, and each costs two SHA-256 blocks.
    runs: FxHashMap<u64, [u8; 8]>,
    arn: Text,
    flow_id: Text,
}

impl ExecutionIds {
    pub fn new(arn: &str, flow_id: &str) -> ExecutionIds {
        ExecutionIds {
            trace_id: trace_id(arn),
            root_id: root_span_id(arn),
            nodes: NodeSpanIds::new(arn),
            runs: FxHashMap::default(),
            arn: Text::shared(arn),
            flow_id: Text::shared(flow_id),
        }
    }
}

/// `fold` with the execution's ids made before (`ExecutionIds::new` of the view's ARN and
/// flow id), as the folds of one read share them.
pub fn fold_with(ids: &mut ExecutionIds, state: &mut ExecutionState, view: &ExecutionView<'_>, new: NewEvents<'_>, policy: &ContentPolicy) -> Conversion {
    debug_assert!(&*ids.arn == view.arn && &*ids.flow_id == view.flow_id, "the ids of another execution");
    if state.finished {
        return Conversion::default();
    }
    // A new state's per-node maps, and the span ids of a read's runs, are made for the
    // flow's nodes (up to `PRESIZED_NODES`) at once, not grown and rehashed run after run
    // (`ExecutionState::shrink` lets go of the room not used).
    if let Some(types) = view.types {
        let nodes = types.0.len().min(PRESIZED_NODES);
        if state.recent.capacity() == 0 {
            state.runs_per_node.reserve(nodes);
            state.recent.reserve(nodes);
        }
        if ids.runs.capacity() == 0 {
            ids.runs.reserve(nodes);
        }
    }
    let mut c = Converter { state, view, policy, problems: Vec::new(), closed: Vec::new(), ids };
    // Without a snapshot, the Flow stream still names the Input and Output nodes.
    for event in new.flow.iter().chain(new.node) {
        let (name, kind) = match event {
            Event::FlowInput(e) => (&e.node_name, "Input"),
            Event::FlowOutput(e) => (&e.node_name, "Output"),
            _ => continue,
        };
        if !name.is_empty() {
            c.learn(name, kind);
        }
    }
    for (is_flow_stream, events, first) in [(false, new.node, new.first.0), (true, new.flow, new.first.1)] {
        for (i, event) in events.iter().enumerate() {
            let at = Some((is_flow_stream, first + i));
            if !matches!(event, Event::Unknown(_)) && c.repeated(is_flow_stream, event) {
                c.problem("duplicate_event", format!("{} repeated", event.wire_key()), at);
                continue;
            }
            c.event(event, at);
        }
    }
    c.finish()
}

/// The history in one piece: `fold` from an empty state.
pub fn convert(view: &ExecutionView<'_>, node_events: &[Event], flow_events: &[Event], policy: &ContentPolicy) -> Conversion {
    fold(&mut ExecutionState::default(), view, NewEvents { node: node_events, flow: flow_events, first: (0, 0) }, policy)
}

struct Converter<'a> {
    state: &'a mut ExecutionState,
    view: &'a ExecutionView<'a>,
    policy: &'a ContentPolicy,
    problems: Vec<Problem>,
    /// Runs closed by this fold, to come out as spans.
    closed: Vec<Run>,
    ids: &'a mut ExecutionIds,
}

impl Converter<'_> {
    fn problem(&mut self, reason: &'static str, detail: String, event: Option<(bool, usize)>) {
        self.problems.push(Problem { reason, detail, event });
    }

    fn repeated(&mut self, is_flow_stream: bool, event: &Event) -> bool {
        let print = self.state.fingerprints.of(event);
        let seen = if is_flow_stream { &mut self.state.seen_flow } else { &mut self.state.seen_node };
        if seen.contains(&print) {
            return true;
        }
        if seen.len() == DEDUP_WINDOW {
            seen.pop_front();
        }
        seen.push_back(print);
        false
    }

    /// A type named by the Flow stream. An open run of an Output node named only now closes as
    /// it would have at its input.
    fn learn(&mut self, node: &str, kind: &str) {
        if self.known(node) {
            return;
        }
        self.state.learned.insert(node.to_string(), kind.to_string());
        if kind == "Output" {
            while let Some(i) = self.state.open.iter().position(|r| r.node == node) {
                let start = self.state.open[i].start;
                self.close_at(i, start);
            }
        }
    }

    fn known(&self, node: &str) -> bool {
        self.view.types.is_some_and(|t| t.0.contains_key(node)) || self.state.learned.contains_key(node)
    }

    fn node_type(&self, node: &str) -> &str {
        if let Some((kind, _)) = self.view.types.and_then(|t| t.0.get(node)) {
            return kind;
        }
        self.state.learned.get(node).map_or("unknown", String::as_str)
    }

    /// The node's type where the fold treats it apart, as a constant ("other" for the rest):
    /// what is matched on is not allocated.
    fn node_class(&self, node: &str) -> &'static str {
        match self.node_type(node) {
            "Collector" => "Collector",
            "LoopController" => "LoopController",
            "LoopInput" => "LoopInput",
            "Iterator" => "Iterator",
            "Input" => "Input",
            "Output" => "Output",
            "unknown" => "unknown",
            _ => "other",
        }
    }

    fn content_event<'e>(
        &self,
        name: &'static str,
        time: i64,
        fields: impl ExactSizeIterator<Item = (&'e str, Option<&'e Content>)> + Clone,
    ) -> SpanEventRecord {
        let names: Vec<String> = fields.clone().map(|(n, _)| n.to_string()).collect();
        let mut attributes: Attributes = vec![("aws.bedrock.flow.fields".into(), AttrValue::StrArray(names))];
        let single = fields.len() == 1;
        let rendered: Vec<String> = fields
            .filter_map(|(n, c)| c.and_then(|c| self.policy.redacted(&c.document)).map(|text| if single { text } else { format!("{n}: {text}") }))
            .collect();
        if !rendered.is_empty() {
            attributes.push(("content".into(), self.policy.limit(rendered.join("\n")).into()));
        }
        SpanEventRecord { name: name.into(), time, attributes }
    }

    fn root_event(&mut self, record: SpanEventRecord, at: Option<(bool, usize)>) {
        let (is_flow, position) = at.unwrap_or((true, usize::MAX));
        self.state.root_events.push(RootEvent { key: (record.time, is_flow, position), record });
    }

    fn event(&mut self, event: &Event, at: Option<(bool, usize)>) {
        if let Event::Unknown(key) = event {
            self.problem("unknown_event_kind", key.clone(), at);
            return;
        }
        let Some(Timestamp(ts)) = event.timestamp().filter(|t| t.0 > 0) else {
            self.problem("missing_timestamp", format!("{} without a timestamp", event.wire_key()), at);
            return;
        };
        match event {
            Event::FlowInput(e) | Event::FlowOutput(e) => {
                let name = if matches!(event, Event::FlowInput(_)) { "gen_ai.workflow.input" } else { "gen_ai.workflow.output" };
                let mut record = self.content_event(name, ts, e.fields.iter().map(|f| (f.name.as_str(), f.content.as_ref())));
                if !e.node_name.is_empty() {
                    record.attributes.push(("aws.bedrock.flow.node.name".into(), e.node_name.clone().into()));
                }
                self.root_event(record, at);
            }
            Event::FlowFailure(e) => {
                let record = SpanEventRecord {
                    name: "exception".into(),
                    time: ts,
                    attributes: vec![("exception.type".into(), e.error_code.clone().into()), ("exception.message".into(), e.error_message.clone().into())],
                };
                self.root_event(record, at);
                let (is_flow, position) = at.unwrap_or((true, 0));
                let seen = FlowFailureSeen { from_node_stream: !is_flow, position, code: e.error_code.clone(), message: e.error_message.clone() };
                if self.state.flow_failure.as_ref().is_none_or(|f| (seen.from_node_stream, seen.position) < (f.from_node_stream, f.position)) {
                    self.state.flow_failure = Some(seen);
                }
            }
            Event::NodeInput(e) => self.node_input(e, ts, at),
            Event::NodeOutput(e) => self.node_output(e, ts, at),
            Event::NodeFailure(e) => {
                if e.node_name.is_empty() {
                    return self.problem("missing_field", "nodeFailureEvent without nodeName".into(), at);
                }
                self.state.last_node_failure = Some(e.error_code.clone());
                let run = match self.first_open(&e.node_name) {
                    Some(r) => r,
                    None => {
                        self.problem("failure_without_input", e.node_name.clone(), at);
                        self.open_one_sided(&e.node_name, ts)
                    }
                };
                let r = &mut self.state.open[run];
                r.push(SpanEventRecord {
                    name: "exception".into(),
                    time: ts,
                    attributes: vec![("exception.type".into(), e.error_code.clone().into()), ("exception.message".into(), e.error_message.clone().into())],
                });
                r.failure = Some((e.error_code.clone(), e.error_message.clone()));
                self.close_at(run, ts);
            }
            Event::ConditionResult(e) => {
                if e.node_name.is_empty() {
                    return self.problem("missing_field", "conditionResultEvent without nodeName".into(), at);
                }
                let run = match self.first_open(&e.node_name) {
                    Some(r) => r,
                    None => self.open_run(&e.node_name, Vec::new(), ts, Vec::new()),
                };
                let satisfied: Vec<String> = e.satisfied_conditions.iter().map(|c| c.condition_name.clone()).collect();
                let r = &mut self.state.open[run];
                r.push(SpanEventRecord {
                    name: "aws.bedrock.flow.condition_result".into(),
                    time: ts,
                    attributes: vec![("aws.bedrock.flow.condition.satisfied".into(), AttrValue::StrArray(satisfied.clone()))],
                });
                r.conditions.extend(satisfied);
                self.close_at(run, ts);
            }
            Event::NodeAction(e) => {
                let mut attributes: Attributes = vec![
                    ("rpc.system".into(), "aws-api".into()),
                    ("rpc.service".into(), e.service_name.clone().into()),
                    ("rpc.method".into(), e.operation_name.clone().into()),
                    ("aws.request_id".into(), e.request_id.clone().into()),
                ];
                if let Some(text) = e.operation_request.as_ref().and_then(|d| self.policy.render(d)) {
                    attributes.push(("content".into(), text.into()));
                }
                if let Some(text) = e.operation_response.as_ref().and_then(|d| self.policy.render(d)) {
                    attributes.push(("aws.bedrock.flow.action.response".into(), text.into()));
                }
                let usage = e.operation_response.as_ref().and_then(|r| r.get("usage"));
                let tokens = usage.map(|u| (token(u, "inputTokens"), token(u, "outputTokens"))).unwrap_or((0, 0));
                self.attach(&e.node_name, ts, SpanEventRecord { name: "aws.bedrock.flow.node_action".into(), time: ts, attributes }, tokens, at);
            }
            Event::NodeDependency(e) => {
                let mut tokens = (0, 0);
                let mut attributes: Attributes = Vec::new();
                for part in &e.trace_elements.agent_traces {
                    for usage in find_usages(part) {
                        tokens.0 += token(usage, "inputTokens");
                        tokens.1 += token(usage, "outputTokens");
                    }
                    if let Some(agent) = part.get("agentId").and_then(Value::as_str) {
                        attributes.push(("gen_ai.agent.id".into(), agent.to_string().into()));
                    }
                }
                if let Some(text) = self.policy.render(&Value::Array(e.trace_elements.agent_traces.clone())) {
                    attributes.push(("content".into(), text.into()));
                }
                attributes.dedup();
                self.attach(&e.node_name, ts, SpanEventRecord { name: "aws.bedrock.flow.node_dependency".into(), time: ts, attributes }, tokens, at);
            }
            Event::Unknown(_) => {}
        }
    }

    /// Adds an action or dependency event to the node's latest open run (else the root) and
    /// sums its token usage.
    fn attach(&mut self, node: &str, ts: i64, record: SpanEventRecord, tokens: (i64, i64), at: Option<(bool, usize)>) {
        match self.state.open.iter().rposition(|r| r.node == node) {
            Some(run) => {
                let r = &mut self.state.open[run];
                r.push(record);
                r.input_tokens += tokens.0;
                r.output_tokens += tokens.1;
                r.last = r.last.max(ts);
            }
            None => {
                self.problem("event_outside_run", format!("{} for {node:?} with no open run", record.name), at);
                let mut record = record;
                record.attributes.push(("aws.bedrock.flow.node.name".into(), node.to_string().into()));
                self.root_event(record, at);
            }
        }
    }

    /// The node's first open run (position in `open`).
    fn first_open(&self, node: &str) -> Option<usize> {
        self.state.open.iter().position(|r| r.node == node)
    }

    fn open_one_sided(&mut self, node: &str, ts: i64) -> usize {
        let run = self.open_run(node, Vec::new(), ts, Vec::new());
        self.state.open[run].one_sided = true;
        run
    }

    /// Opens a run; returns its position in `open`.
    fn open_run(&mut self, node: &str, chain: Vec<ExecutionChainItem>, ts: i64, sources: Vec<String>) -> usize {
        let kind = node_type_text(self.node_type(node));
        // Keys are allocated only for a node's first run: the maps are looked up by `&str`.
        let k = match self.state.runs_per_node.get_mut(node) {
            Some(counter) => std::mem::replace(counter, *counter + 1),
            None => {
                self.state.runs_per_node.insert(node.to_string(), 1);
                0
            }
        };
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        // The parent: the enclosing Iterator or Loop's latest run that started before this input.
        let parent = chain.last().and_then(|item| {
            let recent = self.state.recent.get(&item.node_name)?;
            recent.iter().rev().find(|r| r.start <= ts).map(|r| RunRef { node: item.node_name.clone(), k: r.k })
        });
        let latest = Recent { seq, k, start: ts, end: None };
        match self.state.recent.get_mut(node) {
            Some(recent) => {
                if recent.len() == RECENT_RUNS {
                    recent.pop_front();
                }
                recent.push_back(latest);
            }
            None => {
                self.state.recent.insert(node.to_string(), VecDeque::from([latest]));
            }
        }
        self.state.open.push(Run {
            seq,
            node: node.to_string(),
            k,
            kind,
            chain,
            start: ts,
            last: ts,
            end: None,
            parent,
            sources,
            links: Vec::new(),
            waiting_on: Vec::new(),
            events: Vec::new(),
            dropped_events: 0,
            failure: None,
            skew: false,
            incomplete: false,
            conditions: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            expected_outputs: None,
            outputs_seen: 0,
            one_sided: false,
        });
        self.state.open.len() - 1
    }

    /// Closes the open run at position `run` at time `ts` (its start when `ts` is earlier: clock
    /// skew); closing a Loop closes the per-entry runs of its LoopInput and LoopController.
    fn close_at(&mut self, run: usize, ts: i64) {
        let mut r = self.state.open.remove(run);
        let end = if ts < r.start {
            r.skew = true;
            r.start
        } else {
            ts
        };
        self.end(r, end);
    }

    /// Records a run's end, decides its links (or lets it wait for them) and sets it aside to
    /// come out as a span.
    fn end(&mut self, mut r: Run, end: i64) {
        r.end = Some(end);
        // For links a run ends at its end or its latest event, whichever is later (they differ
        // only with clock skew): never earlier than its latest event, so a link to a run still
        // open is decided as soon as that run has an event after the linking run started.
        let link_end = self.record_end(&r, end);
        for w in &mut self.state.waiting {
            for c in w.waiting_on.iter_mut().flat_map(|(_, c)| c.iter_mut()).filter(|c| c.seq == r.seq) {
                c.end = Some(link_end);
            }
        }
        // Links: the latest run of each source node begun before this run and ended before it
        // started; the candidates are the source's latest runs begun before this one.
        r.waiting_on = r
            .sources
            .iter()
            .map(|source| {
                let candidates = self
                    .state
                    .recent
                    .get(source)
                    .map(|q| q.iter().rev().filter(|x| x.seq < r.seq).map(|x| Candidate { seq: x.seq, k: x.k, end: x.end }).collect())
                    .unwrap_or_default();
                (source.clone(), candidates)
            })
            .collect();
        let me = (&*r.kind == "Loop").then(|| RunRef { node: r.node.clone(), k: r.k });
        self.settle_links(r, false);
        if let Some(me) = me {
            while let Some(i) = self.state.open.iter().position(|c| c.parent.as_ref() == Some(&me) && matches!(c.kind.as_str(), "LoopInput" | "LoopController"))
            {
                let last = self.state.open[i].last;
                self.close_at(i, last);
            }
        }
    }

    /// Records a run's end for links in the node's index: its end or its latest event, whichever
    /// is later. Returns that end.
    fn record_end(&mut self, r: &Run, end: i64) -> i64 {
        let link_end = end.max(r.last);
        if let Some(recent) = self.state.recent.get_mut(&r.node).and_then(|q| q.iter_mut().rev().find(|x| x.seq == r.seq)) {
            recent.end = Some(link_end);
        }
        link_end
    }

    /// The run's links when they can be decided (with `force`, an open candidate counts as
    /// ending too late), then the run is set aside; else it waits.
    fn settle_links(&mut self, mut r: Run, force: bool) {
        match self.links_of(&r, force) {
            Some(links) => {
                r.links = links;
                r.waiting_on.clear();
                if !self.known(&r.node) && self.state.held.len() < MAX_HELD {
                    self.state.held.push(r);
                } else {
                    self.closed.push(r);
                }
            }
            None => self.state.waiting.push(r),
        }
    }

    fn links_of(&mut self, r: &Run, force: bool) -> Option<Vec<[u8; 8]>> {
        let mut links = Vec::new();
        for (source, candidates) in &r.waiting_on {
            let mut found = None;
            for c in candidates {
                let end = match c.end {
                    Some(end) => end,
                    None => match self.state.open.iter().find(|o| o.seq == c.seq) {
                        // It will end at its latest event or later: after this run started.
                        Some(open) if open.last > r.start => continue,
                        _ if force => continue,
                        _ => return None,
                    },
                };
                if end <= r.start {
                    found = Some((c.seq, c.k));
                    break;
                }
            }
            if let Some((seq, k)) = found {
                let link = self.run_id(seq, source, k);
                if !links.contains(&link) {
                    links.push(link);
                }
            }
        }
        Some(links)
    }

    /// Decides the links that can be decided now.
    fn settle_waiting(&mut self, force: bool) {
        for r in std::mem::take(&mut self.state.waiting) {
            self.settle_links(r, force);
        }
    }

    /// Open run of a node that aggregates several events (Collector, LoopInput, LoopController)
    /// within the same enclosing run.
    fn aggregating_run(&self, node: &str, parent_chain: &[ExecutionChainItem]) -> Option<usize> {
        self.state.open.iter().position(|r| r.node == node && r.chain == parent_chain)
    }

    fn node_input(&mut self, e: &NodeInputEvent, ts: i64, at: Option<(bool, usize)>) {
        if e.node_name.is_empty() {
            return self.problem("missing_field", "nodeInputEvent without nodeName".into(), at);
        }
        let chain: Vec<ExecutionChainItem> = e.fields.iter().find(|f| !f.execution_chain.is_empty()).map(|f| f.execution_chain.clone()).unwrap_or_default();
        let sources: Vec<String> = e.fields.iter().filter_map(|f| f.source.as_ref()).map(|s| s.node_name.clone()).filter(|s| !s.is_empty()).collect();
        let kind = self.node_class(&e.node_name);
        let record = self.content_event("aws.bedrock.flow.node.input", ts, e.fields.iter().map(|f| (f.name.as_str(), f.content.as_ref())));
        match kind {
            "Collector" | "LoopController" => {
                // One run per pass through the enclosing Iterator/Loop: its element of the chain
                // is dropped, so every iteration's input lands on the same run.
                let mut outer = chain.clone();
                if outer.last().is_some_and(|c| (kind == "Collector" && c.kind == "Iterator") || (kind == "LoopController" && c.kind == "Loop")) {
                    outer.pop();
                }
                let mut run_chain = outer.clone();
                if kind == "LoopController" {
                    // Keep the Loop as parent, without the iteration index.
                    if let Some(item) = chain.last().filter(|c| c.kind == "Loop") {
                        run_chain.push(ExecutionChainItem { node_name: item.node_name.clone(), kind: item.kind.clone(), index: None });
                    }
                }
                let run = match self.aggregating_run(&e.node_name, &run_chain) {
                    Some(r) => r,
                    None => self.open_run(&e.node_name, run_chain, ts, sources.clone()),
                };
                let r = &mut self.state.open[run];
                r.push(record);
                r.last = r.last.max(ts);
                for s in sources {
                    if !r.sources.contains(&s) {
                        r.sources.push(s);
                    }
                }
            }
            "Output" => {
                let run = self.open_run(&e.node_name, chain, ts, sources);
                self.state.open[run].push(record);
                self.close_at(run, ts);
            }
            _ => {
                let run = self.open_run(&e.node_name, chain, ts, sources);
                self.state.open[run].push(record);
            }
        }
    }

    fn node_output(&mut self, e: &NodeOutputEvent, ts: i64, at: Option<(bool, usize)>) {
        if e.node_name.is_empty() {
            return self.problem("missing_field", "nodeOutputEvent without nodeName".into(), at);
        }
        let kind = self.node_class(&e.node_name);
        let record = self.content_event("aws.bedrock.flow.node.output", ts, e.fields.iter().map(|f| (f.name.as_str(), f.content.as_ref())));
        match kind {
            "Iterator" => {
                let Some(run) = self.first_open(&e.node_name) else {
                    self.problem("output_without_input", e.node_name.clone(), at);
                    let run = self.open_one_sided(&e.node_name, ts);
                    self.state.open[run].push(record);
                    return self.close_at(run, ts);
                };
                let size = e.fields.iter().find(|f| f.name == "arraySize").and_then(|f| f.content.as_ref()).and_then(|c| c.document.as_u64());
                let r = &mut self.state.open[run];
                r.push(record);
                r.outputs_seen += 1;
                r.last = r.last.max(ts);
                if let Some(size) = size {
                    r.expected_outputs = Some(size as usize);
                }
                if r.expected_outputs.is_some_and(|n| r.outputs_seen >= n) {
                    self.close_at(run, ts);
                }
            }
            "LoopInput" => {
                // One run per entry into the loop; each iteration's output is an event of it.
                let parent_chain: Vec<ExecutionChainItem> = self
                    .state
                    .open
                    .iter()
                    .rev()
                    .find(|r| &*r.kind == "Loop")
                    .map(|r| vec![ExecutionChainItem { node_name: r.node.clone(), kind: "Loop".into(), index: None }])
                    .unwrap_or_default();
                let run = match self.aggregating_run(&e.node_name, &parent_chain) {
                    Some(r) => r,
                    None => self.open_run(&e.node_name, parent_chain, ts, Vec::new()),
                };
                let r = &mut self.state.open[run];
                r.push(record);
                r.last = r.last.max(ts);
            }
            _ => match self.first_open(&e.node_name) {
                Some(run) => {
                    self.state.open[run].push(record);
                    self.close_at(run, ts);
                }
                None => {
                    // One-sided nodes (the flow's Input node) give a zero-length run at the event.
                    if kind != "Input" && kind != "unknown" {
                        self.problem("output_without_input", e.node_name.clone(), at);
                    }
                    let run = self.open_one_sided(&e.node_name, ts);
                    self.state.open[run].push(record);
                    self.close_at(run, ts);
                }
            },
        }
    }

    fn finish(mut self) -> Conversion {
        let view = self.view;
        self.settle_waiting(false);
        // Held runs whose node has a type now come out.
        let held = std::mem::take(&mut self.state.held);
        for r in held {
            if view.finished || self.known(&r.node) {
                self.closed.push(r);
            } else {
                self.state.held.push(r);
            }
        }
        if view.finished {
            let end_of_execution = view.ended_at.map(|t| t.0);
            let still_open = std::mem::take(&mut self.state.open);
            // Every end first, then the links (a run may link to one that closes only now).
            let mut ending = Vec::with_capacity(still_open.len());
            for mut r in still_open {
                let end = if matches!(&*r.kind, "Iterator" | "Collector" | "LoopInput" | "LoopController")
                    && r.events.len() + r.dropped_events as usize > 1
                    && view.status == &ExecutionStatus::Succeeded
                {
                    r.last
                } else {
                    r.incomplete = true;
                    end_of_execution.unwrap_or(r.last).max(r.start)
                };
                r.end = Some(end);
                self.record_end(&r, end);
                ending.push(r);
            }
            for r in ending {
                let end = r.end.unwrap_or(r.start);
                self.end(r, end);
            }
            self.settle_waiting(true);
            self.closed.append(&mut self.state.held);
        }
        let mut closed = std::mem::take(&mut self.closed);
        closed.sort_by_key(|r| r.seq);
        let mut spans: Vec<SpanRecord> = closed.into_iter().map(|r| self.span_of(r)).collect();
        if view.finished {
            spans.push(self.root_span());
            self.state.finished = true;
            self.state.recent.clear();
            self.state.seen_node.clear();
            self.state.seen_flow.clear();
        }
        self.state.spans += spans.len() as u64;
        Conversion { spans, problems: self.problems }
    }

    /// The span id of run `seq` (run `k` of `node`), hashed once for the folds sharing `ExecutionIds`.
    fn run_id(&mut self, seq: u64, node: &str, k: usize) -> [u8; 8] {
        let ids = &mut *self.ids;
        *ids.runs.entry(seq).or_insert_with(|| ids.nodes.id(node, k))
    }

    fn span_of(&mut self, r: Run) -> SpanRecord {
        let id = self.run_id(r.seq, &r.node, r.k);
        let view = self.view;
        let kind = if &*r.kind == "unknown" { node_type_text(self.node_type(&r.node)) } else { r.kind };
        let end = r.end.unwrap_or(r.start);
        let parent = r.parent.as_ref().map(|p| self.ids.nodes.id(&p.node, p.k)).unwrap_or(self.ids.root_id);
        let (operation, span_kind) = operation_for(&kind);
        // Sized for the most a span carries: growing it would copy it once more.
        let mut attributes: Attributes = Vec::with_capacity(SPAN_ATTRIBUTES_MAX);
        attributes.extend([
            ("aws.bedrock.flow.node.name".into(), r.node.clone().into()),
            ("aws.bedrock.flow.node.type".into(), kind.clone().into()),
            ("aws.bedrock.flow.execution.arn".into(), self.ids.arn.clone().into()),
            ("aws.bedrock.flow.id".into(), self.ids.flow_id.clone().into()),
            ("openinference.span.kind".into(), Text::Static(span_kind).into()),
        ]);
        if let Some(op) = operation {
            attributes.push(("gen_ai.operation.name".into(), Text::Static(op).into()));
        }
        if !r.chain.is_empty() {
            let chain: Vec<String> = r
                .chain
                .iter()
                .map(|c| match c.index {
                    Some(i) => {
                        let mut index = itoa::Buffer::new();
                        let index = index.format(i);
                        let mut item = String::with_capacity(c.node_name.len() + index.len() + 2);
                        item.push_str(&c.node_name);
                        item.push('[');
                        item.push_str(index);
                        item.push(']');
                        item
                    }
                    None => c.node_name.clone(),
                })
                .collect();
            attributes.push(("aws.bedrock.flow.node.execution_chain".into(), AttrValue::StrArray(chain)));
        }
        if let Some(model) = view.types.and_then(|t| t.0.get(&r.node)).and_then(|t| t.1.clone()) {
            attributes.push(("gen_ai.request.model".into(), model.into()));
        }
        if r.input_tokens > 0 || r.output_tokens > 0 {
            attributes.push(("gen_ai.usage.input_tokens".into(), r.input_tokens.into()));
            attributes.push(("gen_ai.usage.output_tokens".into(), r.output_tokens.into()));
        }
        if !r.conditions.is_empty() {
            attributes.push(("aws.bedrock.flow.condition.satisfied".into(), AttrValue::StrArray(r.conditions.clone())));
        }
        if r.skew {
            attributes.push(("aws.bedrock.flow.clock_skew".into(), true.into()));
        }
        if r.incomplete {
            attributes.push(("aws.bedrock.flow.node.incomplete".into(), true.into()));
        }
        let status = if let Some((code, message)) = &r.failure {
            attributes.push(("error.type".into(), code.clone().into()));
            SpanStatus::Error(message.clone())
        } else if r.incomplete && matches!(view.status, ExecutionStatus::Failed | ExecutionStatus::TimedOut) {
            attributes.push(("error.type".into(), Text::Static(if view.status == &ExecutionStatus::TimedOut { "timeout" } else { "incomplete" }).into()));
            SpanStatus::Error(format!("{} did not finish before the execution ended {}", r.node, view.status.as_str()))
        } else {
            SpanStatus::Unset
        };
        debug_assert!(attributes.len() <= SPAN_ATTRIBUTES_MAX, "SPAN_ATTRIBUTES_MAX is {SPAN_ATTRIBUTES_MAX}: {attributes:?}");
        SpanRecord {
            trace_id: self.ids.trace_id,
            span_id: id,
            parent_span_id: Some(parent),
            name: [kind.as_str(), " ", r.node.as_str()].concat(),
            start: r.start,
            end,
            attributes,
            dropped_events: r.dropped_events,
            links: r.links,
            status,
            facts: SpanFacts {
                node: Some(r.node),
                node_type: kind,
                failure_code: r.failure.map(|f| f.0),
                incomplete: r.incomplete,
                satisfied_conditions: r.conditions,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
            },
            events: r.events,
        }
    }

    fn root_span(&mut self) -> SpanRecord {
        let view = self.view;
        let (region, account) = arn_region_account(view.arn);
        let execution_name = view.arn.rsplit('/').next().unwrap_or("").to_string();
        let mut attributes: Attributes = vec![
            ("gen_ai.operation.name".into(), "invoke_workflow".into()),
            ("gen_ai.provider.name".into(), "aws.bedrock".into()),
            ("gen_ai.workflow.name".into(), view.flow_name.into()),
            ("aws.bedrock.flow.id".into(), view.flow_id.into()),
            ("aws.bedrock.flow.alias.id".into(), view.alias.into()),
            ("aws.bedrock.flow.version".into(), view.version.into()),
            ("aws.bedrock.flow.execution.arn".into(), view.arn.into()),
            ("aws.bedrock.flow.execution.name".into(), execution_name.into()),
            ("aws.bedrock.flow.execution.status".into(), view.status.as_str().into()),
            ("openinference.span.kind".into(), "CHAIN".into()),
            ("cloud.provider".into(), "aws".into()),
            ("cloud.region".into(), region.into()),
            ("cloud.account.id".into(), account.into()),
        ];
        let flow_failure = self.state.flow_failure.clone();
        let status = match view.status {
            ExecutionStatus::Succeeded => SpanStatus::Ok,
            ExecutionStatus::Failed => {
                let (code, message) = match &flow_failure {
                    Some(f) => (f.code.clone(), f.message.clone()),
                    None => {
                        let code = self.state.last_node_failure.clone().unwrap_or_else(|| "Failed".into());
                        let message = view.errors.iter().find_map(|e| e.message.clone()).unwrap_or_else(|| "execution failed".into());
                        (code, message)
                    }
                };
                attributes.push(("error.type".into(), code.into()));
                SpanStatus::Error(message)
            }
            ExecutionStatus::TimedOut => {
                attributes.push(("error.type".into(), "timeout".into()));
                SpanStatus::Error(view.errors.iter().find_map(|e| e.message.clone()).unwrap_or_else(|| "execution timed out".into()))
            }
            _ => SpanStatus::Unset,
        };
        let start = view.created_at.0;
        let end = view.ended_at.map(|t| t.0).unwrap_or(start).max(start);
        let mut events = std::mem::take(&mut self.state.root_events);
        events.sort_by_key(|e| e.key);
        let mut events: Vec<SpanEventRecord> = events.into_iter().map(|e| e.record).collect();
        let dropped = events.len().saturating_sub(MAX_EVENTS_PER_SPAN);
        events.truncate(MAX_EVENTS_PER_SPAN);
        SpanRecord {
            trace_id: self.ids.trace_id,
            span_id: self.ids.root_id,
            parent_span_id: None,
            name: format!("invoke_workflow {}", view.flow_name),
            start,
            end,
            attributes,
            events,
            dropped_events: dropped as u32,
            links: Vec::new(),
            status,
            facts: SpanFacts { node: None, node_type: Text::Static(""), failure_code: flow_failure.map(|f| f.code), ..Default::default() },
        }
    }
}

fn token(usage: &Value, key: &str) -> i64 {
    usage.get(key).and_then(Value::as_i64).filter(|n| *n >= 0).unwrap_or(0)
}

/// Every `metadata.usage` of a model invocation inside an agent trace part.
fn find_usages(part: &Value) -> Vec<&Value> {
    let mut found = Vec::new();
    if let Some(trace) = part.get("trace").and_then(Value::as_object) {
        for kind in trace.values() {
            if let Some(usage) = kind.pointer("/modelInvocationOutput/metadata/usage") {
                found.push(usage);
            }
        }
    }
    found
}

/// (region, account) from `arn:aws:bedrock:REGION:ACCOUNT:...`.
pub fn arn_region_account(arn: &str) -> (String, String) {
    let parts: Vec<&str> = arn.split(':').collect();
    (parts.get(3).unwrap_or(&"").to_string(), parts.get(4).unwrap_or(&"").to_string())
}

#[cfg(test)]
pub(crate) mod tests;
