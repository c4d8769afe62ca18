//! Events → spans (SPEC §5 and §10). Pure: no I/O, no clock, no panics. The same input always
//! gives the same spans with the same ids, so a replay after a crash re-exports identical data.
//!
//! The whole event history of an execution is converted on every pass; the collector exports
//! the closed spans it has not exported yet. A run's span is final once it closes.

use std::collections::{HashMap, HashSet, VecDeque};

use regex::Regex;
use serde_json::Value;

use crate::model::*;
use crate::span::*;

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
    /// The exported form of a document, or `None` when capture is off.
    pub fn render(&self, document: &Value) -> Option<String> {
        self.redacted(document).map(|text| self.limit(text))
    }

    /// The document as text with every `redact` match replaced; `None` when capture is off.
    fn redacted(&self, document: &Value) -> Option<String> {
        if self.mode == crate::config::CaptureContent::Off {
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

/// The execution as the collector knows it.
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
    pub definition: Option<&'a FlowDefinition>,
    pub errors: &'a [ExecutionError],
    /// The `Node` stream, then the `Flow` stream, each in service order.
    pub node_events: &'a [Event],
    pub flow_events: &'a [Event],
}

/// Something wrong with the input, counted by reason (`invalid_events_total{reason}`).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub detail: String,
    /// Which event caused it: (stream is Flow, index in that stream); `None` for the execution.
    pub event: Option<(bool, usize)>,
}

#[derive(Debug, Default)]
pub struct Conversion {
    /// Closed node spans, then the root span when the execution is finished.
    pub spans: Vec<SpanRecord>,
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
struct Run {
    node: String,
    k: usize,
    kind: String,
    chain: Vec<ExecutionChainItem>,
    start: i64,
    last: i64,
    end: Option<i64>,
    parent: Option<usize>,
    sources: Vec<String>,
    events: Vec<SpanEventRecord>,
    failure: Option<(String, String)>,
    skew: bool,
    incomplete: bool,
    conditions: Vec<String>,
    input_tokens: i64,
    output_tokens: i64,
    /// Iterator: outputs expected (arraySize) and seen.
    expected_outputs: Option<usize>,
    outputs_seen: usize,
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

struct Converter<'a> {
    view: &'a ExecutionView<'a>,
    policy: &'a ContentPolicy,
    types: HashMap<String, (String, Option<String>)>,
    runs: Vec<Run>,
    open: HashMap<String, VecDeque<usize>>,
    runs_per_node: HashMap<String, usize>,
    root_events: Vec<SpanEventRecord>,
    problems: Vec<Problem>,
    last_node_failure: Option<String>,
    trace_id: [u8; 16],
}

pub fn convert(view: &ExecutionView<'_>, policy: &ContentPolicy) -> Conversion {
    let mut types = HashMap::new();
    if let Some(def) = view.definition {
        for node in def.all_nodes() {
            let model = node.model_id().map(str::to_string);
            types.insert(node.name.clone(), (node.kind.clone(), model));
        }
    }
    // Without a snapshot, the Flow stream still names the Input and Output nodes.
    for event in view.flow_events.iter().chain(view.node_events) {
        let (name, kind) = match event {
            Event::FlowInput(e) => (&e.node_name, "Input"),
            Event::FlowOutput(e) => (&e.node_name, "Output"),
            _ => continue,
        };
        if !name.is_empty() {
            types.entry(name.clone()).or_insert_with(|| (kind.to_string(), None));
        }
    }
    let mut c = Converter {
        view,
        policy,
        types,
        runs: Vec::new(),
        open: HashMap::new(),
        runs_per_node: HashMap::new(),
        root_events: Vec::new(),
        problems: Vec::new(),
        last_node_failure: None,
        trace_id: trace_id(view.arn),
    };
    let mut seen: HashSet<String> = HashSet::new();
    let streams = [(false, view.node_events), (true, view.flow_events)];
    for (is_flow_stream, events) in streams {
        for (index, event) in events.iter().enumerate() {
            let at = Some((is_flow_stream, index));
            let fingerprint = event.to_wire().to_string();
            if !matches!(event, Event::Unknown(_)) && !seen.insert(fingerprint) {
                c.problem("duplicate_event", format!("{} repeated", event.wire_key()), at);
                continue;
            }
            c.event(event, at);
        }
    }
    c.finish()
}

impl Converter<'_> {
    fn problem(&mut self, reason: &'static str, detail: String, event: Option<(bool, usize)>) {
        self.problems.push(Problem { reason, detail, event });
    }

    fn node_type(&self, node: &str) -> String {
        self.types.get(node).map(|t| t.0.clone()).unwrap_or_else(|| "unknown".into())
    }

    fn content_event(&self, name: &str, time: i64, fields: Vec<(&str, Option<&Content>)>) -> SpanEventRecord {
        let names: Vec<String> = fields.iter().map(|(n, _)| n.to_string()).collect();
        let mut attributes: Attributes = vec![("aws.bedrock.flow.fields".into(), AttrValue::StrArray(names))];
        let rendered: Vec<String> = fields
            .iter()
            .filter_map(|(n, c)| c.and_then(|c| self.policy.redacted(&c.document)).map(|text| if fields.len() == 1 { text } else { format!("{n}: {text}") }))
            .collect();
        if !rendered.is_empty() {
            attributes.push(("content".into(), AttrValue::Str(self.policy.limit(rendered.join("\n")))));
        }
        SpanEventRecord { name: name.into(), time, attributes }
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
                let fields = e.fields.iter().map(|f| (f.name.as_str(), f.content.as_ref())).collect();
                let mut record = self.content_event(name, ts, fields);
                if !e.node_name.is_empty() {
                    record.attributes.push(("aws.bedrock.flow.node.name".into(), e.node_name.clone().into()));
                }
                self.root_events.push(record);
            }
            Event::FlowFailure(e) => {
                self.root_events.push(SpanEventRecord {
                    name: "exception".into(),
                    time: ts,
                    attributes: vec![("exception.type".into(), e.error_code.clone().into()), ("exception.message".into(), e.error_message.clone().into())],
                });
            }
            Event::NodeInput(e) => self.node_input(e, ts, at),
            Event::NodeOutput(e) => self.node_output(e, ts, at),
            Event::NodeFailure(e) => {
                if e.node_name.is_empty() {
                    return self.problem("missing_field", "nodeFailureEvent without nodeName".into(), at);
                }
                self.last_node_failure = Some(e.error_code.clone());
                let run = match self.first_open(&e.node_name) {
                    Some(r) => r,
                    None => {
                        self.problem("failure_without_input", e.node_name.clone(), at);
                        self.open_run(&e.node_name, Vec::new(), ts, Vec::new())
                    }
                };
                self.runs[run].events.push(SpanEventRecord {
                    name: "exception".into(),
                    time: ts,
                    attributes: vec![("exception.type".into(), e.error_code.clone().into()), ("exception.message".into(), e.error_message.clone().into())],
                });
                self.runs[run].failure = Some((e.error_code.clone(), e.error_message.clone()));
                self.close(run, ts);
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
                self.runs[run].events.push(SpanEventRecord {
                    name: "aws.bedrock.flow.condition_result".into(),
                    time: ts,
                    attributes: vec![("aws.bedrock.flow.condition.satisfied".into(), AttrValue::StrArray(satisfied.clone()))],
                });
                self.runs[run].conditions.extend(satisfied);
                self.close(run, ts);
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

    /// Adds an action or dependency event to the node's open run (else its latest run, else
    /// the root) and sums its token usage.
    fn attach(&mut self, node: &str, ts: i64, record: SpanEventRecord, tokens: (i64, i64), at: Option<(bool, usize)>) {
        let target = self.open.get(node).and_then(|q| q.back().copied());
        match target {
            Some(run) => {
                let r = &mut self.runs[run];
                r.events.push(record);
                r.input_tokens += tokens.0;
                r.output_tokens += tokens.1;
                r.last = r.last.max(ts);
            }
            None => {
                self.problem("event_outside_run", format!("{} for {node:?} with no open run", record.name), at);
                let mut record = record;
                record.attributes.push(("aws.bedrock.flow.node.name".into(), node.to_string().into()));
                self.root_events.push(record);
            }
        }
    }

    fn first_open(&self, node: &str) -> Option<usize> {
        self.open.get(node).and_then(|q| q.front().copied())
    }

    fn open_run(&mut self, node: &str, chain: Vec<ExecutionChainItem>, ts: i64, sources: Vec<String>) -> usize {
        let kind = self.node_type(node);
        let counter = self.runs_per_node.entry(node.to_string()).or_insert(0);
        let k = *counter;
        *counter += 1;
        let index = self.runs.len();
        // The parent: the enclosing Iterator or Loop's latest run that started before this input.
        let parent = chain.last().and_then(|item| self.runs.iter().enumerate().rev().find(|(_, r)| r.node == item.node_name && r.start <= ts).map(|(i, _)| i));
        self.runs.push(Run {
            node: node.to_string(),
            k,
            kind,
            chain,
            start: ts,
            last: ts,
            end: None,
            parent,
            sources,
            events: Vec::new(),
            failure: None,
            skew: false,
            incomplete: false,
            conditions: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            expected_outputs: None,
            outputs_seen: 0,
        });
        self.open.entry(node.to_string()).or_default().push_back(index);
        index
    }

    fn close(&mut self, run: usize, ts: i64) {
        let r = &mut self.runs[run];
        if ts < r.start {
            r.skew = true;
            r.end = Some(r.start);
        } else {
            r.end = Some(ts);
        }
        let node = r.node.clone();
        if let Some(q) = self.open.get_mut(&node) {
            q.retain(|i| *i != run);
        }
        // Closing a Loop closes the per-entry runs of its LoopInput and LoopController.
        if self.runs[run].kind == "Loop" {
            let children: Vec<usize> = self
                .open
                .values()
                .flatten()
                .copied()
                .filter(|i| self.runs[*i].parent == Some(run) && matches!(self.runs[*i].kind.as_str(), "LoopInput" | "LoopController"))
                .collect();
            for child in children {
                let last = self.runs[child].last;
                self.close(child, last);
            }
        }
    }

    /// Open run of a node that aggregates several events (Collector, LoopInput, LoopController)
    /// within the same enclosing run.
    fn aggregating_run(&self, node: &str, parent_chain: &[ExecutionChainItem]) -> Option<usize> {
        self.open.get(node)?.iter().copied().find(|i| self.runs[*i].chain == parent_chain)
    }

    fn node_input(&mut self, e: &NodeInputEvent, ts: i64, at: Option<(bool, usize)>) {
        if e.node_name.is_empty() {
            return self.problem("missing_field", "nodeInputEvent without nodeName".into(), at);
        }
        let chain: Vec<ExecutionChainItem> = e.fields.iter().find(|f| !f.execution_chain.is_empty()).map(|f| f.execution_chain.clone()).unwrap_or_default();
        let sources: Vec<String> = e.fields.iter().filter_map(|f| f.source.as_ref()).map(|s| s.node_name.clone()).filter(|s| !s.is_empty()).collect();
        let kind = self.node_type(&e.node_name);
        let record = self.content_event("aws.bedrock.flow.node.input", ts, e.fields.iter().map(|f| (f.name.as_str(), f.content.as_ref())).collect());
        match kind.as_str() {
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
                let r = &mut self.runs[run];
                r.events.push(record);
                r.last = r.last.max(ts);
                for s in sources {
                    if !r.sources.contains(&s) {
                        r.sources.push(s);
                    }
                }
            }
            "Output" => {
                let run = self.open_run(&e.node_name, chain, ts, sources);
                self.runs[run].events.push(record);
                self.close(run, ts);
            }
            _ => {
                let run = self.open_run(&e.node_name, chain, ts, sources);
                self.runs[run].events.push(record);
            }
        }
    }

    fn node_output(&mut self, e: &NodeOutputEvent, ts: i64, at: Option<(bool, usize)>) {
        if e.node_name.is_empty() {
            return self.problem("missing_field", "nodeOutputEvent without nodeName".into(), at);
        }
        let kind = self.node_type(&e.node_name);
        let record = self.content_event("aws.bedrock.flow.node.output", ts, e.fields.iter().map(|f| (f.name.as_str(), f.content.as_ref())).collect());
        match kind.as_str() {
            "Iterator" => {
                let Some(run) = self.first_open(&e.node_name) else {
                    self.problem("output_without_input", e.node_name.clone(), at);
                    let run = self.open_run(&e.node_name, Vec::new(), ts, Vec::new());
                    self.runs[run].events.push(record);
                    return self.close(run, ts);
                };
                let size = e.fields.iter().find(|f| f.name == "arraySize").and_then(|f| f.content.as_ref()).and_then(|c| c.document.as_u64());
                let r = &mut self.runs[run];
                r.events.push(record);
                r.outputs_seen += 1;
                r.last = r.last.max(ts);
                if let Some(size) = size {
                    r.expected_outputs = Some(size as usize);
                }
                if r.expected_outputs.is_some_and(|n| r.outputs_seen >= n) {
                    self.close(run, ts);
                }
            }
            "LoopInput" => {
                // One run per entry into the loop; each iteration's output is an event of it.
                let parent_chain: Vec<ExecutionChainItem> = self
                    .runs
                    .iter()
                    .rev()
                    .find(|r| r.kind == "Loop" && r.end.is_none())
                    .map(|r| vec![ExecutionChainItem { node_name: r.node.clone(), kind: "Loop".into(), index: None }])
                    .unwrap_or_default();
                let run = match self.aggregating_run(&e.node_name, &parent_chain) {
                    Some(r) => r,
                    None => self.open_run(&e.node_name, parent_chain, ts, Vec::new()),
                };
                let r = &mut self.runs[run];
                r.events.push(record);
                r.last = r.last.max(ts);
            }
            _ => match self.first_open(&e.node_name) {
                Some(run) => {
                    self.runs[run].events.push(record);
                    self.close(run, ts);
                }
                None => {
                    // One-sided nodes (the flow's Input node) give a zero-length run at the event.
                    if kind != "Input" && kind != "unknown" {
                        self.problem("output_without_input", e.node_name.clone(), at);
                    }
                    let run = self.open_run(&e.node_name, Vec::new(), ts, Vec::new());
                    self.runs[run].events.push(record);
                    self.close(run, ts);
                }
            },
        }
    }

    fn finish(mut self) -> Conversion {
        let view = self.view;
        let end_of_execution = view.ended_at.map(|t| t.0);
        if view.finished {
            let still_open: Vec<usize> = (0..self.runs.len()).filter(|i| self.runs[*i].end.is_none()).collect();
            for run in still_open {
                let r = &mut self.runs[run];
                if matches!(r.kind.as_str(), "Iterator" | "Collector" | "LoopInput" | "LoopController")
                    && r.events.len() > 1
                    && view.status == &ExecutionStatus::Succeeded
                {
                    r.end = Some(r.last);
                } else {
                    r.incomplete = true;
                    r.end = Some(end_of_execution.unwrap_or(r.last).max(r.start));
                }
            }
        }
        let mut spans = Vec::new();
        let root_id = root_span_id(view.arn);
        for index in 0..self.runs.len() {
            let r = &self.runs[index];
            let Some(end) = r.end else { continue };
            let id = node_span_id(view.arn, &r.node, r.k);
            let parent = r.parent.map(|p| node_span_id(view.arn, &self.runs[p].node, self.runs[p].k)).unwrap_or(root_id);
            // Links: the latest run of each source node that ended before this run started.
            let mut links = Vec::new();
            for source in &r.sources {
                if let Some(s) = self.runs[..index].iter().rev().find(|s| &s.node == source && s.end.is_some_and(|e| e <= r.start)) {
                    let link = node_span_id(view.arn, &s.node, s.k);
                    if !links.contains(&link) {
                        links.push(link);
                    }
                }
            }
            let (operation, span_kind) = operation_for(&r.kind);
            let mut attributes: Attributes = vec![
                ("aws.bedrock.flow.node.name".into(), r.node.clone().into()),
                ("aws.bedrock.flow.node.type".into(), r.kind.clone().into()),
                ("aws.bedrock.flow.execution.arn".into(), view.arn.into()),
                ("aws.bedrock.flow.id".into(), view.flow_id.into()),
                ("openinference.span.kind".into(), span_kind.into()),
            ];
            if let Some(op) = operation {
                attributes.push(("gen_ai.operation.name".into(), op.into()));
            }
            if !r.chain.is_empty() {
                let chain: Vec<String> = r
                    .chain
                    .iter()
                    .map(|c| match c.index {
                        Some(i) => format!("{}[{i}]", c.node_name),
                        None => c.node_name.clone(),
                    })
                    .collect();
                attributes.push(("aws.bedrock.flow.node.execution_chain".into(), AttrValue::StrArray(chain)));
            }
            if let Some(model) = self.types.get(&r.node).and_then(|t| t.1.clone()) {
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
                attributes.push(("error.type".into(), if view.status == &ExecutionStatus::TimedOut { "timeout".into() } else { "incomplete".into() }));
                SpanStatus::Error(format!("{} did not finish before the execution ended {}", r.node, view.status.as_str()))
            } else {
                SpanStatus::Unset
            };
            spans.push(SpanRecord {
                trace_id: self.trace_id,
                span_id: id,
                parent_span_id: Some(parent),
                name: format!("{} {}", r.kind, r.node),
                start: r.start,
                end,
                attributes,
                events: r.events.clone(),
                links,
                status,
                facts: SpanFacts {
                    node: Some(r.node.clone()),
                    node_type: r.kind.clone(),
                    failure_code: r.failure.as_ref().map(|f| f.0.clone()),
                    incomplete: r.incomplete,
                    satisfied_conditions: r.conditions.clone(),
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                },
            });
        }
        if view.finished {
            spans.push(self.root_span());
        }
        Conversion { spans, problems: self.problems }
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
        let flow_failure = self.view.flow_events.iter().chain(self.view.node_events).find_map(|e| match e {
            Event::FlowFailure(f) => Some(f.clone()),
            _ => None,
        });
        let status = match view.status {
            ExecutionStatus::Succeeded => SpanStatus::Ok,
            ExecutionStatus::Failed => {
                let (code, message) = match &flow_failure {
                    Some(f) => (f.error_code.clone(), f.error_message.clone()),
                    None => {
                        let code = self.last_node_failure.clone().unwrap_or_else(|| "Failed".into());
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
        let mut events = std::mem::take(&mut self.root_events);
        events.sort_by_key(|e| e.time);
        SpanRecord {
            trace_id: self.trace_id,
            span_id: root_span_id(view.arn),
            parent_span_id: None,
            name: format!("invoke_workflow {}", view.flow_name),
            start,
            end,
            attributes,
            events,
            links: Vec::new(),
            status,
            facts: SpanFacts { node: None, node_type: String::new(), failure_code: flow_failure.map(|f| f.error_code), ..Default::default() },
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
mod tests;
