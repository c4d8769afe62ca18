//! Turns a flow definition into the events of one execution, by walking the graph as the
//! service would run it: data and conditional connections, Iterator/Collector fan-out with
//! execution chains, Loop bodies, actions and agent traces with token usage. Then applies the
//! execution's outcome (failure, time-out, abort) and any malformation a fault asks for.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{json, Value};

use super::rng::Rng;
use bedrock_flow_wire::model::*;

/// How an execution ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeed,
    Fail,
    TimeOut,
    Abort,
}

/// The kinds of bad data the emulator can serve (SPEC §8 faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformation {
    UnknownEventKind,
    UnknownStatus,
    MissingFields,
    OutputBeforeInput,
    DuplicateEvent,
    HugeDocument,
}

impl Malformation {
    pub const ALL: [Malformation; 6] = [
        Malformation::UnknownEventKind,
        Malformation::UnknownStatus,
        Malformation::MissingFields,
        Malformation::OutputBeforeInput,
        Malformation::DuplicateEvent,
        Malformation::HugeDocument,
    ];
}

/// Everything the service will ever show of one execution, with absolute timestamps.
#[derive(Clone, Debug)]
pub struct Plan {
    pub events: Vec<Event>,
    pub status: ExecutionStatus,
    pub ended_at: i64,
    pub errors: Vec<ExecutionError>,
}

pub struct Params<'a> {
    pub definition: &'a FlowDefinition,
    pub start_nanos: i64,
    pub input: Value,
    pub outcome: Outcome,
    /// Real nanoseconds per emulated second of node latency.
    pub nanos_per_second: f64,
    /// Real nanoseconds after which a TimedOut execution ends.
    pub timeout_nanos: i64,
    pub malformation: Option<Malformation>,
}

pub fn plan(params: Params<'_>, rng: &mut Rng) -> Plan {
    let mut walker = Walker { rng, t: params.start_nanos, events: Vec::new(), nanos_per_second: params.nanos_per_second };
    let input_node = params.definition.nodes.iter().find(|n| n.kind == "Input").map(|n| n.name.clone()).unwrap_or_else(|| "FlowInputNode".into());
    walker.events.push(Event::FlowInput(FlowIoEvent {
        node_name: input_node,
        timestamp: Some(Timestamp(walker.t)),
        fields: vec![FlowField { name: "document".into(), content: Some(Content { document: params.input.clone() }) }],
    }));
    walker.walk(params.definition, &[], &params.input, None);
    let success_end = walker.t + walker.gap();
    let mut events = std::mem::take(&mut walker.events);
    let (status, ended_at, errors) = apply_outcome(&mut events, params.outcome, params.start_nanos, success_end, params.timeout_nanos, walker.rng);
    if let Some(m) = params.malformation {
        malform(&mut events, m, walker.rng);
    }
    Plan { events, status, ended_at, errors }
}

fn apply_outcome(
    events: &mut Vec<Event>,
    outcome: Outcome,
    start: i64,
    success_end: i64,
    timeout_nanos: i64,
    rng: &mut Rng,
) -> (ExecutionStatus, i64, Vec<ExecutionError>) {
    // Positions of inputs to nodes that do work: where failures and time-outs happen.
    let work_inputs: Vec<usize> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::NodeInput(n) if !n.node_name.starts_with("Output") && !n.node_name.ends_with("Output") => Some(i),
            _ => None,
        })
        .collect();
    match outcome {
        Outcome::Succeed => (ExecutionStatus::Succeeded, success_end, vec![]),
        Outcome::Fail if !work_inputs.is_empty() => {
            let at = *rng.pick(&work_inputs);
            let Event::NodeInput(input) = events[at].clone() else { unreachable!() };
            events.truncate(at + 1);
            let ts = input.timestamp.map(|t| t.0).unwrap_or(start) + (rng.uniform(0.05, 0.8) * 1e9) as i64 / 10;
            let code = *rng.pick(&["VALIDATION", "DEPENDENCY_FAILED", "BAD_GATEWAY", "INTERNAL_SERVER"]);
            let message = match code {
                "VALIDATION" => format!("Input to node {} failed validation", input.node_name),
                "DEPENDENCY_FAILED" => format!("Dependency of node {} failed: ThrottlingException from bedrock-runtime", input.node_name),
                "BAD_GATEWAY" => format!("Node {} received a bad response from its dependency", input.node_name),
                _ => format!("Internal error while executing node {}", input.node_name),
            };
            events.push(Event::NodeFailure(NodeFailureEvent {
                node_name: input.node_name.clone(),
                timestamp: Some(Timestamp(ts)),
                error_code: code.into(),
                error_message: message.clone(),
            }));
            events.push(Event::FlowFailure(FlowFailureEvent {
                timestamp: Some(Timestamp(ts + 2_000_000)),
                error_code: "NODE_EXECUTION_FAILED".into(),
                error_message: format!("Node {} failed: {message}", input.node_name),
            }));
            let errors = vec![ExecutionError { error: None, message: Some(message), node_name: Some(input.node_name) }];
            (ExecutionStatus::Failed, ts + 3_000_000, errors)
        }
        Outcome::TimeOut if !work_inputs.is_empty() => {
            let at = *rng.pick(&work_inputs);
            let node = match &events[at] {
                Event::NodeInput(n) => n.node_name.clone(),
                _ => unreachable!(),
            };
            events.truncate(at + 1);
            let end = start + timeout_nanos.max(1_000_000);
            let last = events.iter().filter_map(Event::timestamp).map(|t| t.0).max().unwrap_or(start);
            let errors = vec![ExecutionError {
                error: Some("ExecutionTimedOut".into()),
                message: Some("The flow execution exceeded the maximum allowed runtime.".into()),
                node_name: Some(node),
            }];
            (ExecutionStatus::TimedOut, end.max(last + 1_000_000), errors)
        }
        Outcome::Abort => {
            let cut = rng.between(1, events.len().saturating_sub(1) as u64) as usize;
            events.truncate(cut.max(1));
            let last = events.iter().filter_map(Event::timestamp).map(|t| t.0).max().unwrap_or(start);
            (ExecutionStatus::Aborted, last + 50_000_000, vec![])
        }
        // A flow with no working node cannot fail or time out inside a node: it succeeds.
        _ => (ExecutionStatus::Succeeded, success_end, vec![]),
    }
}

fn malform(events: &mut Vec<Event>, malformation: Malformation, rng: &mut Rng) {
    let node_outputs: Vec<usize> = events.iter().enumerate().filter_map(|(i, e)| matches!(e, Event::NodeOutput(_)).then_some(i)).collect();
    match malformation {
        Malformation::UnknownEventKind => {
            let at = rng.between(1, events.len() as u64) as usize;
            events.insert(at.min(events.len()), Event::Unknown("nodeTelemetryEvent".into()));
        }
        Malformation::UnknownStatus => {} // served as the status string while Running
        Malformation::MissingFields if !node_outputs.is_empty() => {
            if let Event::NodeOutput(output) = &mut events[*rng.pick(&node_outputs)] {
                output.timestamp = None;
                output.node_name = String::new();
            }
        }
        Malformation::OutputBeforeInput => {
            // The last output whose node had an input: give it a time before that input.
            let mut inputs: HashMap<String, i64> = HashMap::new();
            let mut target = None;
            for (i, e) in events.iter().enumerate() {
                match e {
                    Event::NodeInput(n) => {
                        inputs.insert(n.node_name.clone(), n.timestamp.map(|t| t.0).unwrap_or(0));
                    }
                    Event::NodeOutput(n) if inputs.contains_key(&n.node_name) => target = Some((i, inputs[&n.node_name])),
                    _ => {}
                }
            }
            if let Some((i, input_time)) = target {
                if let Event::NodeOutput(output) = &mut events[i] {
                    output.timestamp = Some(Timestamp(input_time - 5_000_000));
                }
            }
        }
        Malformation::DuplicateEvent if !node_outputs.is_empty() => {
            let at = *rng.pick(&node_outputs);
            let copy = events[at].clone();
            events.insert(at + 1, copy);
        }
        Malformation::HugeDocument if !node_outputs.is_empty() => {
            if let Event::NodeOutput(output) = &mut events[*rng.pick(&node_outputs)] {
                if let Some(field) = output.fields.first_mut() {
                    field.content = Some(Content { document: Value::String("x".repeat(1 << 20)) });
                }
            }
        }
        _ => {}
    }
}

struct Walker<'r> {
    rng: &'r mut Rng,
    t: i64,
    events: Vec<Event>,
    nanos_per_second: f64,
}

/// The values a node's outputs carry within one walk: (node, output) → value.
type Values = HashMap<(String, String), Value>;

impl Walker<'_> {
    fn advance(&mut self, low_secs: f64, high_secs: f64) -> Timestamp {
        let secs = self.rng.uniform(low_secs, high_secs);
        self.t += (secs * self.nanos_per_second).max(1_000.0) as i64;
        Timestamp(self.t)
    }

    fn gap(&mut self) -> i64 {
        (self.rng.uniform(0.005, 0.05) * self.nanos_per_second).max(1_000.0) as i64
    }

    fn now(&mut self) -> Timestamp {
        let gap = self.gap();
        self.t += gap;
        Timestamp(self.t)
    }

    /// Walks one definition level. `entry` is the value LoopInput emits inside a loop body.
    /// Returns the value handed to a LoopController's ExitLoop input, if any.
    fn walk(&mut self, def: &FlowDefinition, chain: &[ExecutionChainItem], flow_input: &Value, entry: Option<&Value>) -> Option<Value> {
        let order = topological_order(def);
        let mut values: Values = HashMap::new();
        let mut chosen: HashMap<String, String> = HashMap::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut exit_value = None;
        for name in order {
            if done.contains(&name) {
                continue;
            }
            let node = def.nodes.iter().find(|n| n.name == name).expect("node in order");
            match node.kind.as_str() {
                "Input" => {
                    self.output(node, vec![("document", flow_input.clone())], &mut values);
                }
                "LoopInput" => {
                    let value = entry.cloned().unwrap_or(Value::Null);
                    self.output(node, vec![("loopInput", value)], &mut values);
                }
                _ => {
                    let Some(fields) = self.gather_inputs(def, node, chain, &values, &chosen) else {
                        continue;
                    };
                    if node.kind == "Iterator" {
                        let body = iterator_body(def, &node.name);
                        for n in &body.nodes {
                            done.insert(n.clone());
                        }
                        done.extend(body.collectors.iter().cloned());
                        self.iterate(def, node, &body, chain, fields, flow_input, &mut values);
                        continue;
                    }
                    if let Some(exit) = self.run_node(node, chain, fields, &mut values, &mut chosen, flow_input) {
                        exit_value = Some(exit);
                    }
                }
            }
        }
        exit_value
    }

    /// The input fields of a node from the outputs already produced, or `None` when the node
    /// does not run (no active source, or only untaken conditional branches lead to it).
    fn gather_inputs(
        &mut self,
        def: &FlowDefinition,
        node: &FlowNode,
        chain: &[ExecutionChainItem],
        values: &Values,
        chosen: &HashMap<String, String>,
    ) -> Option<Vec<NodeInputField>> {
        let incoming: Vec<&FlowConnection> = def.connections.iter().filter(|c| c.target == node.name).collect();
        let conditional: Vec<&&FlowConnection> = incoming.iter().filter(|c| c.kind == "Conditional").collect();
        if !conditional.is_empty() && !conditional.iter().any(|c| chosen.get(&c.source).map(String::as_str) == c.condition()) {
            return None;
        }
        let mut fields = Vec::new();
        for connection in incoming.iter().filter(|c| c.kind == "Data") {
            let (Some(out), Some(input)) = (connection.source_output(), connection.target_input()) else {
                continue;
            };
            let Some(value) = values.get(&(connection.source.clone(), out.to_string())) else {
                continue;
            };
            let declared = node.inputs.iter().find(|i| i.name == input);
            fields.push(NodeInputField {
                name: input.to_string(),
                content: Some(Content { document: value.clone() }),
                kind: declared.map(|d| d.kind.clone().into()),
                category: declared.and_then(|d| d.category.clone()).map(Into::into),
                source: Some(NodeInputSource {
                    node_name: connection.source.clone(),
                    output_field_name: out.to_string(),
                    expression: declared.map(|d| d.expression.clone()).unwrap_or_else(|| "$.data".into()),
                }),
                execution_chain: chain.to_vec(),
            });
        }
        if fields.is_empty() && conditional.is_empty() {
            return None;
        }
        if fields.is_empty() {
            // Reached through a condition only: the node still gets the flow's data.
            fields.push(NodeInputField {
                name: node.inputs.first().map(|i| i.name.clone()).unwrap_or_else(|| "input".into()),
                content: Some(Content { document: json!("") }),
                execution_chain: chain.to_vec(),
                ..Default::default()
            });
        }
        Some(fields)
    }

    fn input_event(&mut self, node: &FlowNode, fields: Vec<NodeInputField>) {
        let ts = self.now();
        self.events.push(Event::NodeInput(NodeInputEvent { node_name: node.name.clone(), timestamp: Some(ts), fields }));
    }

    /// A node output event. Output fields carry no execution chain on the wire.
    fn output(&mut self, node: &FlowNode, outputs: Vec<(&str, Value)>, values: &mut Values) {
        let ts = self.now();
        let fields = outputs
            .into_iter()
            .map(|(name, value)| {
                values.insert((node.name.clone(), name.to_string()), value.clone());
                NodeOutputField {
                    name: name.to_string(),
                    kind: node.outputs.iter().find(|o| o.name == name).map(|o| o.kind.clone().into()),
                    content: Some(Content { document: value }),
                    next: Vec::new(),
                }
            })
            .collect();
        self.events.push(Event::NodeOutput(NodeOutputEvent { node_name: node.name.clone(), timestamp: Some(ts), fields }));
    }

    fn action(&mut self, node: &FlowNode, service: &str, operation: &str, request: Value, response: Value) {
        let ts = self.now();
        let request_id = self.rng.uuid();
        self.events.push(Event::NodeAction(NodeActionEvent {
            node_name: node.name.clone(),
            timestamp: Some(ts),
            request_id,
            service_name: service.into(),
            operation_name: operation.into(),
            operation_request: Some(request),
            operation_response: Some(response),
        }));
    }

    fn run_node(
        &mut self,
        node: &FlowNode,
        chain: &[ExecutionChainItem],
        fields: Vec<NodeInputField>,
        values: &mut Values,
        chosen: &mut HashMap<String, String>,
        flow_input: &Value,
    ) -> Option<Value> {
        let first_value = fields.first().and_then(|f| f.content.as_ref()).map(|c| c.document.clone()).unwrap_or(Value::Null);
        let text = short_text(&first_value);
        match node.kind.as_str() {
            "Output" => {
                self.input_event(node, fields);
                let ts = self.now();
                self.events.push(Event::FlowOutput(FlowIoEvent {
                    node_name: node.name.clone(),
                    timestamp: Some(ts),
                    fields: vec![FlowField { name: "document".into(), content: Some(Content { document: first_value }) }],
                }));
            }
            "Condition" => {
                self.input_event(node, fields);
                self.advance(0.005, 0.03);
                let conditions: Vec<String> = node
                    .configuration
                    .as_ref()
                    .and_then(|c| c.pointer("/condition/conditions"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|c| c.get("name")?.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                let pick = if conditions.len() > 1 && self.rng.chance(0.4) {
                    conditions[0].clone()
                } else {
                    conditions.last().cloned().unwrap_or_else(|| "default".into())
                };
                chosen.insert(node.name.clone(), pick.clone());
                let ts = self.now();
                self.events.push(Event::ConditionResult(ConditionResultEvent {
                    node_name: node.name.clone(),
                    timestamp: Some(ts),
                    satisfied_conditions: vec![SatisfiedCondition { condition_name: pick }],
                }));
            }
            "Prompt" => {
                self.input_event(node, fields);
                self.advance(0.5, 3.5);
                let (input_tokens, output_tokens) = (self.rng.between(40, 1800), self.rng.between(20, 600));
                let model = node.model_id().unwrap_or("anthropic.claude-3-haiku-20240307-v1:0").to_string();
                let completion = format!("Answer about {text}");
                self.action(
                    node,
                    "bedrock-runtime",
                    "Converse",
                    json!({"modelId": model, "messages": [{"role": "user", "content": [{"text": text}]}]}),
                    json!({"output": {"message": {"role": "assistant", "content": [{"text": completion}]}},
                           "stopReason": "end_turn",
                           "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens, "totalTokens": input_tokens + output_tokens}}),
                );
                self.output(node, vec![("modelCompletion", json!(completion))], values);
            }
            "KnowledgeBase" => {
                self.input_event(node, fields);
                self.advance(0.2, 1.2);
                self.action(
                    node,
                    "bedrock-agent-runtime",
                    "RetrieveAndGenerate",
                    json!({"input": {"text": text}}),
                    json!({"output": {"text": format!("Knowledge about {text}")}, "citations": []}),
                );
                self.output(node, vec![("outputText", json!(format!("Knowledge about {text}")))], values);
            }
            "Agent" => {
                self.input_event(node, fields);
                self.advance(1.5, 6.0);
                let (input_tokens, output_tokens) = (self.rng.between(300, 4000), self.rng.between(50, 900));
                let ts = self.now();
                let session = self.rng.uuid();
                self.events.push(Event::NodeDependency(NodeDependencyEvent {
                    node_name: node.name.clone(),
                    timestamp: Some(ts),
                    trace_elements: TraceElements {
                        agent_traces: vec![json!({
                            "agentId": "AGENT12345", "agentAliasId": "ALIAS12345", "agentVersion": "3",
                            "sessionId": session, "eventTime": bedrock_flow_wire::timefmt::format_nanos(ts.0),
                            "trace": {"orchestrationTrace": {"modelInvocationOutput": {
                                "traceId": format!("{session}-0"),
                                "rawResponse": {"content": "Thought: look up the invoice."},
                                "metadata": {"usage": {"inputTokens": input_tokens, "outputTokens": output_tokens}}}}}
                        })],
                    },
                }));
                self.output(node, vec![("agentResponse", json!(format!("Billing answer for {text}")))], values);
            }
            "LambdaFunction" => {
                self.input_event(node, fields);
                self.advance(0.05, 0.8);
                let function = node.configuration.as_ref().and_then(|c| c.pointer("/lambdaFunction/lambdaArn")).cloned().unwrap_or(Value::Null);
                self.action(node, "lambda", "Invoke", json!({"FunctionName": function}), json!({"StatusCode": 200, "ExecutedVersion": "$LATEST"}));
                self.output(node, vec![("functionResponse", json!(format!("text of {text}")))], values);
            }
            "Storage" => {
                self.input_event(node, fields);
                self.advance(0.05, 0.3);
                let key = self.rng.uuid();
                self.output(node, vec![("s3Uri", json!(format!("s3://bucket/{key}")))], values);
            }
            "Loop" => {
                self.input_event(node, fields);
                let nested = node.loop_definition().unwrap_or_default();
                // One to three passes; a loop allowed more than 5 (a benchmark's long loop) runs them all.
                let most = nested
                    .nodes
                    .iter()
                    .find(|n| n.kind == "LoopController")
                    .and_then(|n| n.configuration.as_ref()?.pointer("/loopController/maxIterations")?.as_u64())
                    .unwrap_or(0);
                let iterations = if most > 5 { most as i32 } else { self.rng.between(1, 3) as i32 };
                let mut carried = first_value;
                for index in 0..iterations {
                    let mut inner = chain.to_vec();
                    inner.push(ExecutionChainItem { node_name: node.name.clone(), kind: "Loop".into(), index: Some(index) });
                    if let Some(exit) = self.walk(&nested, &inner, flow_input, Some(&carried)) {
                        carried = exit;
                    }
                }
                self.output(node, vec![("loopOutput", carried)], values);
            }
            "LoopController" => {
                // A loop controller only receives: its run is its input (SPEC §10).
                let exit = fields.iter().find(|f| f.category.as_deref() == Some("ExitLoop")).and_then(|f| f.content.clone()).map(|c| c.document);
                self.input_event(node, fields);
                return exit;
            }
            _ => {
                // InlineCode, Retrieval, Lex, Collector outside an iterator, and anything new.
                self.input_event(node, fields);
                self.advance(0.02, 0.3);
                let output = node.outputs.first().map(|o| o.name.clone()).unwrap_or_else(|| "response".into());
                self.output(node, vec![(&output, json!(format!("{} of {text}", node.kind)))], values);
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn iterate(
        &mut self,
        def: &FlowDefinition,
        iterator: &FlowNode,
        body: &IteratorBody,
        chain: &[ExecutionChainItem],
        fields: Vec<NodeInputField>,
        flow_input: &Value,
        values: &mut Values,
    ) {
        let array_value = fields.first().and_then(|f| f.content.as_ref()).map(|c| c.document.clone()).unwrap_or(Value::Null);
        let items: Vec<Value> = match &array_value {
            Value::Array(items) => items.clone(),
            Value::Object(o) => match o.get("documents") {
                Some(Value::Array(items)) => items.clone(),
                _ => vec![array_value.clone()],
            },
            other => vec![other.clone()],
        };
        self.input_event(iterator, fields);
        let size = items.len();
        let mut collected: HashMap<String, Vec<Value>> = HashMap::new();
        for (index, item) in items.into_iter().enumerate() {
            let mut inner = chain.to_vec();
            inner.push(ExecutionChainItem { node_name: iterator.name.clone(), kind: "Iterator".into(), index: Some(index as i32) });
            self.advance(0.001, 0.01);
            let mut item_values = values.clone();
            self.output(iterator, vec![("arrayItem", item), ("arraySize", json!(size))], &mut item_values);
            let mut chosen = HashMap::new();
            for name in &body.nodes {
                let node = def.nodes.iter().find(|n| &n.name == name).expect("body node");
                if let Some(fields) = self.gather_inputs(def, node, &inner, &item_values, &chosen) {
                    self.run_node(node, &inner, fields, &mut item_values, &mut chosen, flow_input);
                }
            }
            for collector in &body.collectors {
                let node = def.nodes.iter().find(|n| &n.name == collector).expect("collector");
                if let Some(fields) = self.gather_inputs(def, node, &inner, &item_values, &chosen) {
                    if let Some(item) = fields.iter().find(|f| f.name == "arrayItem").and_then(|f| f.content.clone()) {
                        collected.entry(collector.clone()).or_default().push(item.document);
                    }
                    self.input_event(node, fields);
                }
            }
        }
        for collector in &body.collectors {
            let node = def.nodes.iter().find(|n| &n.name == collector).expect("collector");
            self.advance(0.001, 0.01);
            let items = collected.remove(collector).unwrap_or_default();
            self.output(node, vec![("collectedArray", Value::Array(items))], values);
        }
    }
}

struct IteratorBody {
    /// Nodes run once per item, in topological order.
    nodes: Vec<String>,
    /// Collectors that close the iteration.
    collectors: Vec<String>,
}

fn iterator_body(def: &FlowDefinition, iterator: &str) -> IteratorBody {
    let kind_of = |name: &str| def.nodes.iter().find(|n| n.name == name).map(|n| n.kind.as_str()).unwrap_or("");
    let mut reached = HashSet::new();
    let mut collectors = Vec::new();
    let mut queue = VecDeque::from([iterator.to_string()]);
    while let Some(current) = queue.pop_front() {
        for c in def.connections.iter().filter(|c| c.source == current) {
            if kind_of(&c.target) == "Collector" {
                if !collectors.contains(&c.target) {
                    collectors.push(c.target.clone());
                }
            } else if reached.insert(c.target.clone()) {
                queue.push_back(c.target.clone());
            }
        }
    }
    let nodes = topological_order(def).into_iter().filter(|n| reached.contains(n)).collect();
    IteratorBody { nodes, collectors }
}

/// Kahn's order over the connections; nodes in a cycle (invalid flows) come last in
/// declaration order so that a bad definition still yields a walk.
pub fn topological_order(def: &FlowDefinition) -> Vec<String> {
    let mut indegree: HashMap<&str, usize> = def.nodes.iter().map(|n| (n.name.as_str(), 0)).collect();
    for c in &def.connections {
        if let Some(d) = indegree.get_mut(c.target.as_str()) {
            *d += 1;
        }
    }
    let mut queue: VecDeque<&str> = def.nodes.iter().map(|n| n.name.as_str()).filter(|n| indegree[n] == 0).collect();
    let mut order = Vec::new();
    while let Some(n) = queue.pop_front() {
        order.push(n.to_string());
        for c in def.connections.iter().filter(|c| c.source == n) {
            if let Some(d) = indegree.get_mut(c.target.as_str()) {
                *d -= 1;
                if *d == 0 {
                    queue.push_back(c.target.as_str());
                }
            }
        }
    }
    for n in &def.nodes {
        if !order.contains(&n.name) {
            order.push(n.name.clone());
        }
    }
    order
}

fn short_text(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows;

    fn run(def: &FlowDefinition, input: Value, outcome: Outcome, seed: u64) -> Plan {
        let mut rng = Rng::new(seed);
        plan(
            Params {
                definition: def,
                start_nanos: 1_000_000_000_000,
                input,
                outcome,
                nanos_per_second: 1e9,
                timeout_nanos: 3_600_000_000_000,
                malformation: None,
            },
            &mut rng,
        )
    }

    fn count(plan: &Plan, key: &str) -> usize {
        plan.events.iter().filter(|e| e.wire_key() == key).count()
    }

    #[test]
    fn iterator_runs_its_body_per_item_with_chains() {
        let plan = run(&flows::doc_batch(), json!({"documents": ["a", "b", "c"], "key": "k"}), Outcome::Succeed, 1);
        assert_eq!(plan.status, ExecutionStatus::Succeeded);
        let extract_inputs: Vec<&NodeInputEvent> = plan
            .events
            .iter()
            .filter_map(|e| match e {
                Event::NodeInput(n) if n.node_name == "Extract" => Some(n),
                _ => None,
            })
            .collect();
        assert_eq!(extract_inputs.len(), 3);
        assert_eq!(extract_inputs[2].fields[0].execution_chain[0].index, Some(2));
        assert_eq!(count(&plan, "flowOutputEvent"), 1);
        let times: Vec<i64> = plan.events.iter().filter_map(Event::timestamp).map(|t| t.0).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "chronological");
        assert!(plan.ended_at >= *times.last().unwrap());
    }

    #[test]
    fn loops_and_conditions_and_failures() {
        let plan = run(&flows::refine_loop(), json!("rust"), Outcome::Succeed, 2);
        assert!(count(&plan, "nodeInputEvent") >= 5);
        let triage = run(&flows::support_triage(), json!("my invoice is wrong"), Outcome::Succeed, 3);
        assert_eq!(count(&triage, "conditionResultEvent"), 1);
        let failed = run(&flows::support_triage(), json!("x"), Outcome::Fail, 4);
        assert_eq!(failed.status, ExecutionStatus::Failed);
        assert_eq!(count(&failed, "nodeFailureEvent"), 1);
        assert_eq!(count(&failed, "flowFailureEvent"), 1);
        let timed_out = run(&flows::support_triage(), json!("x"), Outcome::TimeOut, 5);
        assert_eq!(timed_out.errors[0].error.as_deref(), Some("ExecutionTimedOut"));
    }

    #[test]
    fn backlog_flow_has_about_the_asked_number_of_events() {
        let plan = run(&flows::backlog(45), json!("x"), Outcome::Succeed, 6);
        assert_eq!(plan.events.len(), 45);
        assert_eq!(plan.events.iter().filter(|e| e.is_flow_level()).count(), 5);
    }
}
#[cfg(test)]
mod condition_tests {
    use super::*;
    use crate::flows;

    #[test]
    fn both_branches_of_the_triage_condition_are_taken() {
        let mut taken = HashMap::new();
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let plan = plan(
                Params {
                    definition: &flows::support_triage(),
                    start_nanos: 1,
                    input: json!("x"),
                    outcome: Outcome::Succeed,
                    nanos_per_second: 1e9,
                    timeout_nanos: 1,
                    malformation: None,
                },
                &mut rng,
            );
            for e in &plan.events {
                if let Event::ConditionResult(c) = e {
                    *taken.entry(c.satisfied_conditions[0].condition_name.clone()).or_insert(0) += 1;
                }
            }
        }
        assert!(taken.get("isBilling").copied().unwrap_or(0) >= 8, "{taken:?}");
        assert!(taken.get("default").copied().unwrap_or(0) >= 8, "{taken:?}");
    }
}
