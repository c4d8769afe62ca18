//! Spans as plain data: what `convert` produces and `export` sends. No OpenTelemetry SDK type
//! appears here, so the trace model can be tested without one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    StrArray(Vec<String>),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
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
    pub name: String,
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
    pub node_type: String,
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
    let digest = Sha256::digest(key.as_bytes());
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

pub fn root_span_id(execution_arn: &str) -> [u8; 8] {
    span_id(&format!("{execution_arn}|root"))
}

pub fn node_span_id(execution_arn: &str, node: &str, k: usize) -> [u8; 8] {
    span_id(&format!("{execution_arn}|node|{node}|{k}"))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sha256_prefixes() {
        // The derivation itself; tests/python/test_phoenix.py checks the same ids with hashlib.
        let arn = "arn:aws:bedrock:us-east-1:123456789012:flow/ABCDEFGHIJ/alias/KLMNOPQRST/execution/e1";
        assert_eq!(hex(&trace_id(arn)).len(), 32);
        assert_eq!(&Sha256::digest(arn.as_bytes())[..16], &trace_id(arn));
        assert_eq!(&Sha256::digest(format!("{arn}|root").as_bytes())[..8], &root_span_id(arn));
        assert_ne!(node_span_id(arn, "A", 0), node_span_id(arn, "A", 1));
    }
}
