//! The flow-execution data as the wire carries it (WIRE-NOTES §2), independent of any SDK.
//!
//! The emulator serializes these types, the AWS source module builds them from the SDK's types,
//! and `convert` reads them. JSON field names are exactly the lowerCamel member names of the
//! service model; timestamps are RFC 3339 strings held as nanoseconds since the epoch.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::timefmt;

/// A point in time, nanoseconds since the Unix epoch. On the wire an RFC 3339 string; to a
/// format that is not human-readable (such as the fingerprint's), the nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&timefmt::format_nanos(self.0))
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return i64::deserialize(d).map(Timestamp);
        }
        let text = String::deserialize(d)?;
        timefmt::parse_nanos(&text).map(Timestamp).ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {text:?}")))
    }
}

/// Lenient timestamp for event payloads: an unparsable or missing value is `None`
/// (counted by `convert` as a bad timestamp), never a failure of the whole page.
fn lenient_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(value.as_ref().and_then(Value::as_str).and_then(timefmt::parse_nanos).map(Timestamp))
}

/// A value of one of the model's enums (a field's data type or input category, a control
/// node's type): the values the model names are static strings, not allocated; any other
/// value the service sends is kept as it came.
pub type Name = std::borrow::Cow<'static, str>;

/// `FlowExecutionContent` / `FlowInputContent`: a union with the single member `document`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub document: Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowField {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInputSource {
    pub node_name: String,
    pub output_field_name: String,
    pub expression: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionChainItem {
    pub node_name: String,
    #[serde(rename = "type")]
    pub kind: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInputField {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<NodeInputSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub execution_chain: Vec<ExecutionChainItem>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeOutputNext {
    pub node_name: String,
    pub input_field_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeOutputField {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Name>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<NodeOutputNext>,
}

/// flowInputEvent and flowOutputEvent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowIoEvent {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub fields: Vec<FlowField>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInputEvent {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub fields: Vec<NodeInputField>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeOutputEvent {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub fields: Vec<NodeOutputField>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SatisfiedCondition {
    pub condition_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionResultEvent {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub satisfied_conditions: Vec<SatisfiedCondition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFailureEvent {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub error_message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowFailureEvent {
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub error_message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeActionEvent {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub operation_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_request: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_response: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceElements {
    /// Bedrock Agents `TracePart` objects, kept as JSON.
    #[serde(default)]
    pub agent_traces: Vec<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDependencyEvent {
    #[serde(default)]
    pub node_name: String,
    #[serde(default, deserialize_with = "lenient_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub trace_elements: TraceElements,
}

/// One element of `flowExecutionEvents`: a union with exactly one key on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    FlowInput(FlowIoEvent),
    FlowOutput(FlowIoEvent),
    FlowFailure(FlowFailureEvent),
    NodeInput(NodeInputEvent),
    NodeOutput(NodeOutputEvent),
    NodeFailure(NodeFailureEvent),
    ConditionResult(ConditionResultEvent),
    NodeAction(NodeActionEvent),
    NodeDependency(NodeDependencyEvent),
    /// A union key this version does not know; the key is kept for the problem report.
    Unknown(String),
}

impl Event {
    pub fn wire_key(&self) -> &str {
        match self {
            Event::FlowInput(_) => "flowInputEvent",
            Event::FlowOutput(_) => "flowOutputEvent",
            Event::FlowFailure(_) => "flowFailureEvent",
            Event::NodeInput(_) => "nodeInputEvent",
            Event::NodeOutput(_) => "nodeOutputEvent",
            Event::NodeFailure(_) => "nodeFailureEvent",
            Event::ConditionResult(_) => "conditionResultEvent",
            Event::NodeAction(_) => "nodeActionEvent",
            Event::NodeDependency(_) => "nodeDependencyEvent",
            Event::Unknown(key) => key,
        }
    }

    /// The `event_type` label of `bedrock_flow_exporter_events_received_total`.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Event::FlowInput(_) => "flow_input",
            Event::FlowOutput(_) => "flow_output",
            Event::FlowFailure(_) => "flow_failure",
            Event::NodeInput(_) => "node_input",
            Event::NodeOutput(_) => "node_output",
            Event::NodeFailure(_) => "node_failure",
            Event::ConditionResult(_) => "condition_result",
            Event::NodeAction(_) => "node_action",
            Event::NodeDependency(_) => "node_dependency",
            Event::Unknown(_) => "unknown",
        }
    }

    pub fn timestamp(&self) -> Option<Timestamp> {
        match self {
            Event::FlowInput(e) | Event::FlowOutput(e) => e.timestamp,
            Event::FlowFailure(e) => e.timestamp,
            Event::NodeInput(e) => e.timestamp,
            Event::NodeOutput(e) => e.timestamp,
            Event::NodeFailure(e) => e.timestamp,
            Event::ConditionResult(e) => e.timestamp,
            Event::NodeAction(e) => e.timestamp,
            Event::NodeDependency(e) => e.timestamp,
            Event::Unknown(_) => None,
        }
    }

    /// Whether the event belongs to the `Flow` stream (WIRE-NOTES §9.4).
    pub fn is_flow_level(&self) -> bool {
        matches!(self, Event::FlowInput(_) | Event::FlowOutput(_) | Event::FlowFailure(_))
    }

    /// Reads one wire element. Unknown keys give `Unknown`; a known key whose body does not
    /// fit the shape is an error (the caller counts it and skips the element).
    pub fn from_wire(value: &Value) -> Result<Event, String> {
        let object = value.as_object().ok_or("event is not an object")?;
        let mut present = object.iter().filter(|(k, v)| !v.is_null() && k.as_str() != "__type");
        let (key, body) = present.next().ok_or("event object has no member")?;
        if present.next().is_some() {
            return Err("event object has more than one member".into());
        }
        fn body_of<T: for<'de> Deserialize<'de>>(body: &Value) -> Result<T, String> {
            T::deserialize(body).map_err(|e| e.to_string())
        }
        Ok(match key.as_str() {
            "flowInputEvent" => Event::FlowInput(body_of(body)?),
            "flowOutputEvent" => Event::FlowOutput(body_of(body)?),
            "flowFailureEvent" => Event::FlowFailure(body_of(body)?),
            "nodeInputEvent" => Event::NodeInput(body_of(body)?),
            "nodeOutputEvent" => Event::NodeOutput(body_of(body)?),
            "nodeFailureEvent" => Event::NodeFailure(body_of(body)?),
            "conditionResultEvent" => Event::ConditionResult(body_of(body)?),
            "nodeActionEvent" => Event::NodeAction(body_of(body)?),
            "nodeDependencyEvent" => Event::NodeDependency(body_of(body)?),
            other => Event::Unknown(other.to_string()),
        })
    }

    /// The wire JSON written straight to `w`, without building a `Value`.
    pub fn write_wire<W: std::io::Write>(&self, w: W) -> std::io::Result<()> {
        serde_json::to_writer(w, self).map_err(std::io::Error::other)
    }

    /// The wire form as a `Value`.
    pub fn to_wire(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The wire form: `{"<key>": {...}}`, one member; `Unknown` is written with an empty body.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        let key = self.wire_key();
        match self {
            Event::FlowInput(e) | Event::FlowOutput(e) => map.serialize_entry(key, e),
            Event::FlowFailure(e) => map.serialize_entry(key, e),
            Event::NodeInput(e) => map.serialize_entry(key, e),
            Event::NodeOutput(e) => map.serialize_entry(key, e),
            Event::NodeFailure(e) => map.serialize_entry(key, e),
            Event::ConditionResult(e) => map.serialize_entry(key, e),
            Event::NodeAction(e) => map.serialize_entry(key, e),
            Event::NodeDependency(e) => map.serialize_entry(key, e),
            Event::Unknown(_) => map.serialize_entry(key, &serde_json::Map::new()),
        }?;
        map.end()
    }
}

/// `FlowExecutionStatus`, with room for values this version does not know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
    Unknown(String),
}

impl ExecutionStatus {
    pub fn parse(text: &str) -> ExecutionStatus {
        match text {
            "Running" => ExecutionStatus::Running,
            "Succeeded" => ExecutionStatus::Succeeded,
            "Failed" => ExecutionStatus::Failed,
            "TimedOut" => ExecutionStatus::TimedOut,
            "Aborted" => ExecutionStatus::Aborted,
            other => ExecutionStatus::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ExecutionStatus::Running => "Running",
            ExecutionStatus::Succeeded => "Succeeded",
            ExecutionStatus::Failed => "Failed",
            ExecutionStatus::TimedOut => "TimedOut",
            ExecutionStatus::Aborted => "Aborted",
            ExecutionStatus::Unknown(s) => s,
        }
    }

    /// Terminal states are the four known end states; an unknown string is not terminal
    /// (SPEC §10): the execution stays tracked.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ExecutionStatus::Succeeded | ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Aborted)
    }
}

impl Serialize for ExecutionStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExecutionStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ExecutionStatus::parse(&String::deserialize(d)?))
    }
}

/// `FlowExecutionSummary` as ListFlowExecutions returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummary {
    pub execution_arn: String,
    pub flow_alias_identifier: String,
    pub flow_identifier: String,
    pub flow_version: String,
    pub status: ExecutionStatus,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

/// `FlowExecutionError`. The model names the code `error`; a user-guide sample says `errorType`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionError {
    #[serde(default, alias = "errorType", skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// The flow definition (`GetExecutionFlowSnapshot.definition`, a JSON string on the wire).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowDefinition {
    #[serde(default)]
    pub nodes: Vec<FlowNode>,
    #[serde(default)]
    pub connections: Vec<FlowConnection>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowNode {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<FlowNodeInput>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<FlowNodeOutput>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowNodeInput {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowNodeOutput {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowConnection {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub source: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Value>,
}

impl FlowConnection {
    pub fn source_output(&self) -> Option<&str> {
        self.configuration.as_ref()?.pointer("/data/sourceOutput")?.as_str()
    }
    pub fn target_input(&self) -> Option<&str> {
        self.configuration.as_ref()?.pointer("/data/targetInput")?.as_str()
    }
    pub fn condition(&self) -> Option<&str> {
        self.configuration.as_ref()?.pointer("/conditional/condition")?.as_str()
    }
}

impl FlowNode {
    /// The model a Prompt or KnowledgeBase node names in its configuration, if any.
    pub fn model_id(&self) -> Option<&str> {
        let configuration = self.configuration.as_ref()?;
        configuration.pointer("/prompt/sourceConfiguration/inline/modelId").or_else(|| configuration.pointer("/knowledgeBase/modelId")).and_then(Value::as_str)
    }

    /// The nested definition of a Loop node.
    pub fn loop_definition(&self) -> Option<FlowDefinition> {
        let nested = self.configuration.as_ref()?.pointer("/loop/definition")?;
        FlowDefinition::deserialize(nested).ok()
    }
}

impl FlowDefinition {
    /// Every node, including those inside Loop definitions, as (name, node).
    pub fn all_nodes(&self) -> Vec<FlowNode> {
        let mut out = Vec::new();
        for node in &self.nodes {
            out.push(node.clone());
            if let Some(nested) = node.loop_definition() {
                out.extend(nested.all_nodes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_wire_text_written_directly_reads_back_as_the_same_event() {
        let page = json!([
            {"nodeOutputEvent":{"fields":[{"content":{"document":{"b":1,"a":[2]}},"name":"document"}],"nodeName":"FlowInputNode","timestamp":"2025-05-05T18:38:56.637867516Z"}},
            {"flowFailureEvent":{"errorCode":"X","errorMessage":"m","timestamp":"2025-05-05T18:38:57.000000000Z"}},
            {"somethingNew":{"x":1}}
        ]);
        for value in page.as_array().unwrap() {
            let event = Event::from_wire(value).unwrap();
            let mut text = Vec::new();
            event.write_wire(&mut text).unwrap();
            let back: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(Event::from_wire(&back).unwrap(), event, "{}", String::from_utf8_lossy(&text));
            assert_eq!(back, event.to_wire());
            if !matches!(event, Event::Unknown(_)) {
                // Known events come back as they came in (timestamps with nine digits, as the
                // service writes them).
                assert_eq!(&back, value, "{}", String::from_utf8_lossy(&text));
            }
        }
        assert_eq!(Event::Unknown("somethingNew".into()).to_wire(), json!({"somethingNew": {}}), "an unknown event keeps only its key");
    }

    #[test]
    fn reads_the_user_guide_sample() {
        let page = json!([
            {"nodeOutputEvent":{"fields":[{"content":{"document":"History book"},"name":"document"}],"nodeName":"FlowInputNode","timestamp":"2025-05-05T18:38:56.637867516Z"}},
            {"nodeInputEvent":{"fields":[{"content":{"document":"History book"},"name":"book"}],"nodeName":"Prompt_1","timestamp":"2025-05-05T18:38:57.434600163Z"}}
        ]);
        let events: Vec<Event> = page.as_array().unwrap().iter().map(|v| Event::from_wire(v).unwrap()).collect();
        match &events[1] {
            Event::NodeInput(e) => {
                assert_eq!(e.node_name, "Prompt_1");
                assert_eq!(e.timestamp, Some(Timestamp(1_746_470_337_434_600_163)));
                assert_eq!(e.fields[0].content.as_ref().unwrap().document, json!("History book"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Event::from_wire(&events[0].to_wire()).unwrap(), events[0]);
    }

    #[test]
    fn unknown_and_malformed_union_members() {
        assert_eq!(Event::from_wire(&json!({"nodeTeleportEvent": {}})).unwrap(), Event::Unknown("nodeTeleportEvent".into()));
        assert!(Event::from_wire(&json!({})).is_err());
        assert!(Event::from_wire(&json!({"nodeInputEvent": {}, "nodeOutputEvent": {}})).is_err());
        assert!(Event::from_wire(&json!("x")).is_err());
        let bad_time = Event::from_wire(&json!({"nodeInputEvent": {"nodeName": "A", "timestamp": "soon", "fields": []}})).unwrap();
        assert_eq!(bad_time.timestamp(), None);
    }

    #[test]
    fn statuses() {
        assert!(ExecutionStatus::parse("Aborted").is_terminal());
        assert!(!ExecutionStatus::parse("InProgress").is_terminal());
        assert_eq!(ExecutionStatus::parse("InProgress").as_str(), "InProgress");
    }
}
