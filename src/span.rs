//! Spans as plain data: what `convert` produces and `export` sends. No OpenTelemetry SDK type
//! appears here, so the trace model can be tested without one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    Str(Text),
    Int(i64),
    Bool(bool),
    StrArray(Vec<String>),
}

/// A string attribute value: a constant, shared by the spans of an execution (its ARN, its
/// flow), or owned. Most spans carry several of the first two, and a string that is not
/// allocated is not freed either. Saved and compared as the plain string.
#[derive(Clone, Debug)]
pub enum Text {
    Static(&'static str),
    Shared(std::sync::Arc<str>),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }

    /// One allocation for all the spans that clone it.
    pub fn shared(s: &str) -> Text {
        Text::Shared(s.into())
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::Static("")
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::Owned(s.to_string())
    }
}
impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Text::Owned)
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.into())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s.into())
    }
}
impl From<Text> for AttrValue {
    fn from(s: Text) -> Self {
        AttrValue::Str(s)
    }
}
impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}
impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}
impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        AttrValue::StrArray(v)
    }
}

/// Attribute keys are static but for those read back from a saved state or the outbox.
pub type Attributes = Vec<(std::borrow::Cow<'static, str>, AttrValue)>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanEventRecord {
    /// A constant but for names read back from a saved state or the outbox.
    pub name: std::borrow::Cow<'static, str>,
    pub time: i64,
    pub attributes: Attributes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error(String),
}

/// What the metrics need to know of a span beyond OpenTelemetry's fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanFacts {
    /// `None` for the root span.
    pub node: Option<String>,
    /// A constant for the node types of the flow definition (`Text::Static`).
    pub node_type: Text,
    /// The node's error code, when the run failed.
    pub failure_code: Option<String>,
    pub incomplete: bool,
    pub satisfied_conditions: Vec<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    /// Nanoseconds since the epoch.
    pub start: i64,
    pub end: i64,
    pub attributes: Attributes,
    pub events: Vec<SpanEventRecord>,
    /// Events left out beyond `convert::MAX_EVENTS_PER_SPAN` (OTLP `dropped_events_count`).
    #[serde(default)]
    pub dropped_events: u32,
    /// Span ids (same trace) this span links to.
    pub links: Vec<[u8; 8]>,
    pub status: SpanStatus,
    pub facts: SpanFacts,
}

impl SpanRecord {
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// What counting a span needs once the endpoint has accepted it (the node and execution
/// metrics), taken from the span where it is made, encoded and dropped: delivery and the
/// outbox keep this beside the span's bytes, not the span.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanTally {
    pub trace_id: [u8; 16],
    /// The execution's root span (no parent).
    pub root: bool,
    pub start: i64,
    pub end: i64,
    /// The root's `error.type` (a string), the failure code of a failed execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    pub facts: SpanFacts,
}

impl SpanTally {
    /// The tally of `span`, its facts moved out (the span is about to go).
    pub fn take(span: &mut SpanRecord) -> SpanTally {
        let root = span.parent_span_id.is_none();
        let error_type = match span.attribute("error.type") {
            Some(AttrValue::Str(code)) if root => Some(code.to_string()),
            _ => None,
        };
        SpanTally { trace_id: span.trace_id, root, start: span.start, end: span.end, error_type, facts: std::mem::take(&mut span.facts) }
    }
}

/// `trace_id` = the first 16 bytes of SHA-256(execution ARN) (SPEC §5).
pub fn trace_id(execution_arn: &str) -> [u8; 16] {
    let digest = Sha256::digest(execution_arn.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    if id == [0u8; 16] {
        id[15] = 1;
    }
    id
}

/// `span_id` = the first 8 bytes of SHA-256(key), never zero.
pub fn span_id(key: &str) -> [u8; 8] {
    span_id_of(&[key.as_bytes()])
}

/// `span_id` of the key made of `parts` end to end, hashed without building it.
fn span_id_of(parts: &[&[u8]]) -> [u8; 8] {
    finish(Sha256::new(), parts)
}

/// The span id of a key whose first bytes `hasher` has taken, `parts` being the rest.
fn finish(mut hasher: Sha256, parts: &[&[u8]]) -> [u8; 8] {
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0u8; 8] {
        id.copy_from_slice(&digest[8..16]);
    }
    if id == [0u8; 8] {
        id[7] = 1;
    }
    id
}

/// The span id of key `{execution_arn}|root`.
pub fn root_span_id(execution_arn: &str) -> [u8; 8] {
    span_id_of(&[execution_arn.as_bytes(), b"|root"])
}

/// The span id of key `{execution_arn}|node|{node}|{k}`.
pub fn node_span_id(execution_arn: &str, node: &str, k: usize) -> [u8; 8] {
    NodeSpanIds::new(execution_arn).id(node, k)
}

/// The node span ids of one execution. Their keys share the prefix `{execution_arn}|node|`
/// (an ARN is 100 bytes or more): SHA-256 takes it once, and each id starts from a copy of that
/// state instead of compressing the ARN's blocks again. The ids are those of `node_span_id`.
#[derive(Clone)]
pub struct NodeSpanIds {
    prefix: Sha256,
}

impl NodeSpanIds {
    pub fn new(execution_arn: &str) -> NodeSpanIds {
        let mut prefix = Sha256::new();
        prefix.update(execution_arn.as_bytes());
        prefix.update(b"|node|");
        NodeSpanIds { prefix }
    }

    /// The span id of run `k` of `node`.
    pub fn id(&self, node: &str, k: usize) -> [u8; 8] {
        let mut k_text = itoa::Buffer::new();
        finish(self.prefix.clone(), &[node.as_bytes(), b"|", k_text.format(k).as_bytes()])
    }
}

/// Lower-case hex, two digits a byte (an exemplar's trace id, once per execution).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sha256_prefixes() {
        // The derivation itself; tests/python/test_phoenix.py checks the same ids with hashlib.
        let arn = "arn:aws:bedrock:us-east-1:123456789012:flow/ABCDEFGHIJ/alias/KLMNOPQRST/execution/e1";
        assert_eq!(hex(&trace_id(arn)).len(), 32);
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        assert_eq!(&Sha256::digest(arn.as_bytes())[..16], &trace_id(arn));
        assert_eq!(&Sha256::digest(format!("{arn}|root").as_bytes())[..8], &root_span_id(arn));
        assert_ne!(node_span_id(arn, "A", 0), node_span_id(arn, "A", 1));
        // The key is hashed in parts, never built: the id is still that of the whole key.
        for k in [0, 1, 9, 10, 99, 100, 12_345, usize::MAX] {
            assert_eq!(&Sha256::digest(format!("{arn}|node|Summarize|{k}").as_bytes())[..8], &node_span_id(arn, "Summarize", k), "k = {k}");
        }
        // One prefix state serves every id of the execution, whatever the ARN's length is
        // against SHA-256's 64-byte blocks, and copies of it do not disturb each other.
        for extra in 0..140 {
            let arn = format!("{arn}{}", "x".repeat(extra));
            let ids = NodeSpanIds::new(&arn);
            for (node, k) in [("A", 0), ("Summarize", 12), ("A", 1), ("a-long-node-name-of-sixty-four-bytes-or-so-to-cross-a-block-end", 7)] {
                assert_eq!(&Sha256::digest(format!("{arn}|node|{node}|{k}").as_bytes())[..8], &ids.id(node, k), "{extra} {node} {k}");
            }
        }
    }
}
