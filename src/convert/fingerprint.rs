//! Fingerprints of events, to recognise one the API sends again. They are saved in the
//! execution state, so a scheme never changes once written: a state says which it holds.
//!
//! `Positional` (states from version 5 on) walks the wire model by hand: each part of an
//! event in the order the model declares it, every scalar fed as one word with its tag
//! (a string as its tag and length with its first eight bytes, then the rest eight at a time,
//! the last word padded), an absent part as a tag of its own, lists and maps with their
//! length first. Field names are not fed: a part is known by its place. An action event is
//! known by its call (node, time, request id, service, operation) and not by its documents:
//! the source leaves those out when content is not captured (see `source::ActionDocuments`),
//! so a repeat is known whatever the capture mode. Each step is a bijection of the hash for
//! a fixed tag and word, so two events that differ in one word, and only there, never
//! collide.
//!
//! The schemes before it stay, to read the windows older states saved: `Calls` (version 4)
//! is `Structural` but for action events, which it knows by their call as `Positional` does;
//! `Structural` (version 3) feeds the event's serde structure, as a format that is not
//! human-readable sees it (timestamps as nanoseconds), to a word-at-a-time multiplicative
//! hash: every scalar with a tag, strings and struct field names with their length, sequences
//! and maps with an end mark; `WireText` (versions 1 and 2) is FNV-1a over the event's compact
//! wire JSON. `Positional` tells apart what `Calls` tells apart in about half its time
//! (BENCHMARKS.md): it feeds no field names and no serializer stands between it and the event.

use serde::ser::{self, Serialize};

use serde_json::Value;

use crate::model::{Content, Event, NodeActionEvent, Timestamp};

/// How the fingerprints of a state's windows were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scheme {
    /// FNV-1a over the wire text: what states before version 3 hold (they name no scheme).
    #[serde(rename = "wire-text")]
    WireText,
    /// What states of version 3 hold.
    #[serde(rename = "structural")]
    Structural,
    /// What states of version 4 hold.
    #[serde(rename = "calls")]
    Calls,
    /// What states from version 5 on hold.
    #[default]
    #[serde(rename = "positional")]
    Positional,
}

impl Scheme {
    /// The scheme of a saved state that names none.
    pub fn legacy() -> Scheme {
        Scheme::WireText
    }

    pub fn of(self, event: &Event) -> u64 {
        match (self, event) {
            (Scheme::Positional, _) => positional(event),
            (Scheme::WireText, _) => wire_text(event),
            (Scheme::Calls, Event::NodeAction(e)) => action_call(e),
            (Scheme::Structural | Scheme::Calls, _) => structural(event),
        }
    }

    /// Whether this scheme's prints of action events need the events' documents (the
    /// schemes before `Calls`): the reads of a state that holds them must keep them.
    pub fn needs_action_documents(self) -> bool {
        matches!(self, Scheme::WireText | Scheme::Structural)
    }
}

/// An action event known by its call. The leading word is no variant index of `Event`, so
/// no other event feeds the same words.
fn action_call(e: &NodeActionEvent) -> u64 {
    let mut feed = Feed(0x243f_6a88_85a3_08d3);
    feed.variant(u32::MAX);
    let _ = (&e.node_name, e.timestamp, &e.request_id, &e.service_name, &e.operation_name).serialize(&mut feed);
    feed.finish()
}

/// The positional hash of the event (see the module's text). The model's structs are taken
/// apart whole, so a part added to the wire model does not build until it is fed here.
fn positional(event: &Event) -> u64 {
    use crate::model::*;
    let mut w = Walk(Feed(0x243f_6a88_85a3_08d3));
    // Every kind but the flow failure names its node: the failure feeds an empty name.
    let (index, node_name, timestamp): (u64, &str, _) = match event {
        Event::FlowInput(e) => (0, &e.node_name, e.timestamp),
        Event::FlowOutput(e) => (1, &e.node_name, e.timestamp),
        Event::FlowFailure(e) => (2, "", e.timestamp),
        Event::NodeInput(e) => (3, &e.node_name, e.timestamp),
        Event::NodeOutput(e) => (4, &e.node_name, e.timestamp),
        Event::NodeFailure(e) => (5, &e.node_name, e.timestamp),
        Event::ConditionResult(e) => (6, &e.node_name, e.timestamp),
        Event::NodeAction(e) => (7, &e.node_name, e.timestamp),
        Event::NodeDependency(e) => (8, &e.node_name, e.timestamp),
        Event::Unknown(key) => {
            w.step(tag::VARIANT, u32::MAX as u64 - 1);
            w.str(key);
            return w.finish();
        }
    };
    w.step(tag::VARIANT, index);
    w.str(node_name);
    w.timestamp(timestamp);
    match event {
        Event::FlowInput(FlowIoEvent { node_name: _, timestamp: _, fields }) | Event::FlowOutput(FlowIoEvent { node_name: _, timestamp: _, fields }) => {
            w.len(fields.len());
            for FlowField { name, content } in fields {
                w.str(name);
                w.content(content);
            }
        }
        Event::FlowFailure(FlowFailureEvent { timestamp: _, error_code, error_message })
        | Event::NodeFailure(NodeFailureEvent { node_name: _, timestamp: _, error_code, error_message }) => {
            w.str(error_code);
            w.str(error_message);
        }
        Event::NodeInput(NodeInputEvent { node_name: _, timestamp: _, fields }) => {
            w.len(fields.len());
            for NodeInputField { name, content, kind, category, source, execution_chain } in fields {
                w.str(name);
                w.content(content);
                w.optional_str(kind.as_deref());
                w.optional_str(category.as_deref());
                match source {
                    Some(NodeInputSource { node_name, output_field_name, expression }) => {
                        w.step(tag::SOME, 0);
                        w.str(node_name);
                        w.str(output_field_name);
                        w.str(expression);
                    }
                    None => w.none(),
                }
                w.len(execution_chain.len());
                for ExecutionChainItem { node_name, kind, index } in execution_chain {
                    w.str(node_name);
                    w.str(kind);
                    match index {
                        Some(i) => w.step(tag::INT, *i as i64 as u64),
                        None => w.none(),
                    }
                }
            }
        }
        Event::NodeOutput(NodeOutputEvent { node_name: _, timestamp: _, fields }) => {
            w.len(fields.len());
            for NodeOutputField { name, content, kind, next } in fields {
                w.str(name);
                w.content(content);
                w.optional_str(kind.as_deref());
                w.len(next.len());
                for NodeOutputNext { node_name, input_field_name } in next {
                    w.str(node_name);
                    w.str(input_field_name);
                }
            }
        }
        Event::ConditionResult(ConditionResultEvent { node_name: _, timestamp: _, satisfied_conditions }) => {
            w.len(satisfied_conditions.len());
            for SatisfiedCondition { condition_name } in satisfied_conditions {
                w.str(condition_name);
            }
        }
        // Known by its call; its documents are left out (see the module's text).
        Event::NodeAction(NodeActionEvent {
            node_name: _,
            timestamp: _,
            request_id,
            service_name,
            operation_name,
            operation_request: _,
            operation_response: _,
        }) => {
            w.str(request_id);
            w.str(service_name);
            w.str(operation_name);
        }
        Event::NodeDependency(NodeDependencyEvent { node_name: _, timestamp: _, trace_elements: TraceElements { agent_traces } }) => {
            w.len(agent_traces.len());
            for trace in agent_traces {
                w.value(trace);
            }
        }
        Event::Unknown(_) => {}
    }
    w.finish()
}

/// `bytes` eight at a time as little-endian words, the last one padded with zeros.
#[inline(always)]
fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let chunks = bytes.chunks_exact(8);
    let rest = chunks.remainder();
    let last = (!rest.is_empty()).then(|| {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        u64::from_le_bytes(word)
    });
    chunks.map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or_default())).chain(last)
}

/// The positional walk's hash: `Feed`'s step, with the tag folded in after it.
struct Walk(Feed);

impl Walk {
    /// One step: a bijection of the hash for a fixed tag and word, and of the word for a fixed
    /// hash and tag; two tags give two hashes for one word.
    #[inline(always)]
    fn step(&mut self, t: impl Into<u64>, word: u64) {
        self.0.word(word);
        self.0 .0 ^= t.into();
    }

    /// The first step carries the tag and the length with the first eight bytes (an empty
    /// string: with a zero word).
    #[inline(always)]
    fn text(&mut self, t: u8, bytes: &[u8]) {
        let mut words = words(bytes);
        self.step(((bytes.len() as u64) << 8) | t as u64, words.next().unwrap_or(0));
        for word in words {
            self.step(0u8, word);
        }
    }

    fn str(&mut self, s: &str) {
        self.text(tag::STR, s.as_bytes());
    }

    fn none(&mut self) {
        self.step(tag::NONE, 0);
    }

    fn len(&mut self, n: usize) {
        self.step(tag::SEQ, n as u64);
    }

    fn timestamp(&mut self, t: Option<Timestamp>) {
        match t {
            Some(t) => self.step(tag::INT, t.0 as u64),
            None => self.none(),
        }
    }

    fn optional_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.none(),
        }
    }

    fn content(&mut self, c: &Option<Content>) {
        match c {
            Some(Content { document }) => {
                self.step(tag::SOME, 0);
                self.value(document);
            }
            None => self.none(),
        }
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.step(tag::UNIT, 0),
            Value::Bool(b) => self.step(if *b { tag::TRUE } else { tag::FALSE }, 0),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => self.step(tag::UINT, u),
                (None, Some(i)) => self.step(tag::INT, i as u64),
                (None, None) => self.step(tag::FLOAT, n.as_f64().unwrap_or(f64::NAN).to_bits()),
            },
            Value::String(s) => self.str(s),
            Value::Array(items) => {
                self.len(items.len());
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(fields) => {
                self.step(tag::MAP, fields.len() as u64);
                for (key, value) in fields {
                    self.str(key);
                    self.value(value);
                }
            }
        }
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// FNV-1a over the event's wire text, written straight into the hash.
fn wire_text(event: &Event) -> u64 {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            for b in bytes {
                self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    let _ = event.write_wire(&mut hash);
    hash.0
}

/// The structural hash of the event (see the module's text).
fn structural(event: &Event) -> u64 {
    let mut feed = Feed(0x243f_6a88_85a3_08d3);
    // Feeding never fails: every method returns Ok.
    let _ = event.serialize(&mut feed);
    feed.finish()
}

/// The tags that keep two different structures from feeding the same bytes.
mod tag {
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    pub const INT: u8 = 3;
    pub const UINT: u8 = 4;
    pub const FLOAT: u8 = 5;
    pub const STR: u8 = 6;
    pub const BYTES: u8 = 7;
    pub const NONE: u8 = 8;
    pub const SOME: u8 = 9;
    pub const UNIT: u8 = 10;
    pub const VARIANT: u8 = 11;
    pub const SEQ: u8 = 12;
    pub const MAP: u8 = 13;
    pub const STRUCT: u8 = 14;
    pub const END: u8 = 15;
    pub const CHAR: u8 = 16;
}

/// A serde serializer that writes nothing but feeds the hash.
struct Feed(u64);

impl Feed {
    /// One step: a bijection of the hash for a fixed word, and of the word for a fixed hash.
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(23) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn tagged(&mut self, t: u8, w: u64) {
        self.word(t as u64);
        self.word(w);
    }

    /// Tag and length in one word, then the bytes eight at a time, the last word padded.
    fn text(&mut self, t: u8, bytes: &[u8]) {
        self.word(((bytes.len() as u64) << 8) | t as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.word(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last));
        }
    }

    fn mark(&mut self, t: u8) {
        self.word(t as u64);
    }

    fn variant(&mut self, index: u32) {
        self.tagged(tag::VARIANT, index.into());
    }

    /// The murmur3 finalizer, so that every bit of the last steps reaches every bit.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fingerprint")
    }
}
impl std::error::Error for Never {}
impl ser::Error for Never {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Never
    }
}

impl ser::Serializer for &mut Feed {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    /// Timestamps come as nanoseconds, not formatted.
    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), Never> {
        self.mark(if v { tag::TRUE } else { tag::FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Never> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Never> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Never> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Never> {
        self.tagged(tag::INT, v as u64);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Never> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Never> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Never> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Never> {
        self.tagged(tag::UINT, v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Never> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Never> {
        self.tagged(tag::FLOAT, v.to_bits());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Never> {
        self.tagged(tag::CHAR, u32::from(v).into());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Never> {
        self.text(tag::STR, v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Never> {
        self.text(tag::BYTES, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Never> {
        self.mark(tag::NONE);
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Never> {
        self.mark(tag::SOME);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Never> {
        self.mark(tag::UNIT);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Never> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _name: &'static str, index: u32, _variant: &'static str) -> Result<(), Never> {
        self.variant(index);
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _name: &'static str, value: &T) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(self, _name: &'static str, index: u32, _variant: &'static str, value: &T) -> Result<(), Never> {
        self.variant(index);
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, Never> {
        self.mark(tag::SEQ);
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, Never> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Self, Never> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(self, _name: &'static str, index: u32, _variant: &'static str, len: usize) -> Result<Self, Never> {
        self.variant(index);
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, Never> {
        self.mark(tag::MAP);
        Ok(self)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Never> {
        self.mark(tag::STRUCT);
        Ok(self)
    }
    fn serialize_struct_variant(self, _name: &'static str, index: u32, _variant: &'static str, _len: usize) -> Result<Self, Never> {
        self.variant(index);
        self.mark(tag::STRUCT);
        Ok(self)
    }
}

/// The compounds whose elements come one after another, closed by an end mark.
macro_rules! elements {
    ($($compound:ident :: $element:ident),*) => {$(
        impl ser::$compound for &mut Feed {
            type Ok = ();
            type Error = Never;
            fn $element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), Never> {
                self.mark(tag::END);
                Ok(())
            }
        }
    )*};
}

elements!(SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field, SerializeTupleVariant::serialize_field);

impl ser::SerializeMap for &mut Feed {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Never> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Never> {
        self.mark(tag::END);
        Ok(())
    }
}

/// The compounds whose fields come with their names (a skipped field feeds nothing).
macro_rules! fields {
    ($($compound:ident),*) => {$(
        impl ser::$compound for &mut Feed {
            type Ok = ();
            type Error = Never;
            fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result<(), Never> {
                self.text(tag::STR, key.as_bytes());
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), Never> {
                self.mark(tag::END);
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(body: serde_json::Value) -> Event {
        Event::from_wire(&json!({ "nodeOutputEvent": body })).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
               "fields": [{"name": "document", "content": {"document": {"a": [1, "x", null, true, 2.5]}}}]})
    }

    /// Saved windows are compared with new fingerprints: the values of every scheme are fixed
    /// for good. These pin them (a change here makes old checkpoints miss repeats).
    #[test]
    fn the_values_of_every_scheme_never_change() {
        let e = event(base());
        assert_eq!(Scheme::WireText.of(&e), 0x0342_4a2e_d8bf_ea8f, "wire-text {:#x}", Scheme::WireText.of(&e));
        assert_eq!(Scheme::Structural.of(&e), 0xb681_e746_45ca_7483, "structural {:#x}", Scheme::Structural.of(&e));
        assert_eq!(Scheme::Calls.of(&e), Scheme::Structural.of(&e), "calls is structural but for action events");
        let a = action(json!({"usage": {"inputTokens": 3}}));
        assert_eq!(Scheme::Calls.of(&a), 0xb9e2_b8cc_44bb_fde8, "calls {:#x}", Scheme::Calls.of(&a));
        assert_eq!(Scheme::Positional.of(&e), 0xc5da_4e22_6f35_1f12, "positional {:#x}", Scheme::Positional.of(&e));
        assert_eq!(Scheme::Positional.of(&a), 0x04c8_de3a_8b0c_4af9, "positional {:#x}", Scheme::Positional.of(&a));
    }

    fn action(response: serde_json::Value) -> Event {
        Event::from_wire(&json!({ "nodeActionEvent": {"nodeName": "Lookup", "timestamp": "2026-01-02T03:04:05.123456789Z",
            "requestId": "r-1", "serviceName": "lambda", "operationName": "Invoke",
            "operationRequest": {"FunctionName": "f"}, "operationResponse": response} }))
        .unwrap()
    }

    /// Under `Calls` and `Positional` an action event is its call: its documents, which the
    /// source leaves out when content is not captured, do not count, and every part of the
    /// call does.
    #[test]
    fn calls_know_an_action_by_its_call_not_its_documents() {
        for scheme in [Scheme::Calls, Scheme::Positional] {
            let full = action(json!({"usage": {"inputTokens": 3}, "StatusCode": 200}));
            let Event::NodeAction(mut bare) = full.clone() else { unreachable!() };
            (bare.operation_request, bare.operation_response) = (None, None);
            assert_eq!(scheme.of(&full), scheme.of(&Event::NodeAction(bare.clone())), "{scheme:?}");
            assert_ne!(Scheme::Structural.of(&full), Scheme::Structural.of(&Event::NodeAction(bare.clone())), "the older scheme counts the documents");
            let mut prints = vec![scheme.of(&full)];
            for change in 0..5 {
                let mut e = bare.clone();
                match change {
                    0 => e.node_name.push('x'),
                    1 => e.timestamp = e.timestamp.map(|t| crate::model::Timestamp(t.0 + 1)),
                    2 => e.request_id.push('x'),
                    3 => e.service_name.push('x'),
                    _ => e.operation_name.push('x'),
                }
                prints.push(scheme.of(&Event::NodeAction(e)));
            }
            for (i, a) in prints.iter().enumerate() {
                for (j, b) in prints.iter().enumerate().skip(i + 1) {
                    assert_ne!(a, b, "{scheme:?}: changes {i} and {j} share a fingerprint");
                }
            }
        }
        assert!(!Scheme::Calls.needs_action_documents() && !Scheme::Positional.needs_action_documents());
        assert!(Scheme::Structural.needs_action_documents() && Scheme::WireText.needs_action_documents());
    }

    /// Every difference an event can have changes the structural and the positional
    /// fingerprints, including ones whose text would be ambiguous without tags and lengths.
    #[test]
    fn fingerprints_tell_every_field_apart() {
        let variants = [
            base(),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456788Z",
                   "fields": [{"name": "document", "content": {"document": {"a": [1, "x", null, true, 2.5]}}}]}),
            json!({"nodeName": "Summarizf", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "content": {"document": {"a": [1, "x", null, true, 2.5]}}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "content": {"document": {"a": [1, "x", null, true, 2.6]}}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "content": {"document": {"a": ["1", "x", null, true, 2.5]}}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "content": {"document": {"a": [1, "x", null, false, 2.5]}}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "content": {"document": {"a": [[1, "x"], null, true, 2.5]}}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "content": {"document": {"b": [1, "x", null, true, 2.5]}}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "content": {"document": "{\"a\":[1,\"x\",null,true,2.5]}"}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document", "type": "String", "content": {"document": {"a": [1, "x", null, true, 2.5]}}}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z",
                   "fields": [{"name": "document"}]}),
            json!({"nodeName": "Summarize", "timestamp": "2026-01-02T03:04:05.123456789Z", "fields": []}),
            json!({"nodeName": "Summarize", "fields": []}),
            json!({"nodeName": "ab", "fields": [{"name": "c"}]}),
            json!({"nodeName": "a", "fields": [{"name": "bc"}]}),
        ];
        for scheme in [Scheme::Structural, Scheme::Positional] {
            let prints: Vec<u64> = variants.iter().map(|v| scheme.of(&event(v.clone()))).collect();
            for (i, a) in prints.iter().enumerate() {
                for (j, b) in prints.iter().enumerate().skip(i + 1) {
                    assert_ne!(a, b, "{scheme:?}: variants {i} and {j} share a fingerprint");
                }
            }
            // The same event read twice has the same print, and the event kind counts.
            assert_eq!(prints[0], scheme.of(&event(base())));
            let input = Event::from_wire(&json!({ "nodeInputEvent": base() })).unwrap();
            assert_ne!(prints[0], scheme.of(&input), "{scheme:?}");
        }
    }

    /// Without field names, a part is known by its place: two optional parts of one field,
    /// each given alone with the same value, differ; so do the parts of every other event
    /// kind, changed one at a time.
    #[test]
    fn positional_fingerprints_know_a_part_by_its_place() {
        let input = |field: serde_json::Value| {
            Event::from_wire(&json!({ "nodeInputEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "fields": [field]} })).unwrap()
        };
        let variants = [
            input(json!({"name": "x", "type": "String"})),
            input(json!({"name": "x", "category": "String"})),
            input(json!({"name": "x", "type": "String", "category": "String"})),
            input(json!({"name": "x", "source": {"nodeName": "a", "outputFieldName": "b", "expression": "c"}})),
            input(json!({"name": "x", "source": {"nodeName": "a", "outputFieldName": "bc", "expression": ""}})),
            input(json!({"name": "x", "executionChain": [{"nodeName": "It", "type": "Iterator", "index": 0}]})),
            input(json!({"name": "x", "executionChain": [{"nodeName": "It", "type": "Iterator"}]})),
            input(json!({"name": "x", "executionChain": [{"nodeName": "It", "type": "Iterator", "index": 1}]})),
            input(json!({"name": "x", "content": {"document": null}})),
            input(json!({"name": "x", "content": {"document": ""}})),
            input(json!({"name": "x", "content": {"document": {}}})),
            input(json!({"name": "x", "content": {"document": []}})),
            input(json!({"name": "x", "content": {"document": 0}})),
            input(json!({"name": "x", "content": {"document": -1}})),
            input(json!({"name": "x", "content": {"document": 0.5}})),
            input(json!({"name": "x", "content": {"document": false}})),
            input(json!({"name": "x", "content": {"document": {"a": "b"}}})),
            input(json!({"name": "x", "content": {"document": {"ab": ""}}})),
            input(json!({"name": "x", "content": {"document": ["a", "b"]}})),
            input(json!({"name": "x", "content": {"document": [["a"], "b"]}})),
            input(json!({"name": "exactly8", "content": {"document": "bytes..."}})),
            input(json!({"name": "exactly8bytes...", "content": {"document": ""}})),
            Event::from_wire(&json!({ "nodeOutputEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "fields": [{"name": "x", "type": "String"}]} })).unwrap(),
            Event::from_wire(&json!({ "nodeOutputEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "fields": [{"name": "x", "next": [{"nodeName": "a", "inputFieldName": "b"}]}]} })).unwrap(),
            Event::from_wire(&json!({ "nodeOutputEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "fields": [{"name": "x", "next": [{"nodeName": "ab", "inputFieldName": ""}]}]} })).unwrap(),
            Event::from_wire(&json!({ "nodeFailureEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "errorCode": "a", "errorMessage": "b"} })).unwrap(),
            Event::from_wire(&json!({ "nodeFailureEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "errorCode": "b", "errorMessage": "a"} })).unwrap(),
            Event::from_wire(&json!({ "flowFailureEvent": {"timestamp": "2026-01-02T03:04:05Z", "errorCode": "a", "errorMessage": "b"} })).unwrap(),
            Event::from_wire(&json!({ "flowInputEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "fields": [{"name": "x"}]} })).unwrap(),
            Event::from_wire(&json!({ "flowOutputEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "fields": [{"name": "x"}]} })).unwrap(),
            Event::from_wire(&json!({ "flowOutputEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "fields": [{"name": "x", "content": {"document": "y"}}]} })).unwrap(),
            Event::from_wire(&json!({ "conditionResultEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "satisfiedConditions": [{"conditionName": "a"}]} })).unwrap(),
            Event::from_wire(&json!({ "conditionResultEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "satisfiedConditions": [{"conditionName": "b"}]} })).unwrap(),
            Event::from_wire(&json!({ "nodeDependencyEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "traceElements": {"agentTraces": [{"agentId": "a"}]}} })).unwrap(),
            Event::from_wire(&json!({ "nodeDependencyEvent": {"nodeName": "N", "timestamp": "2026-01-02T03:04:05Z", "traceElements": {"agentTraces": [{"agentId": "b"}]}} })).unwrap(),
            Event::Unknown("futureEvent".into()),
            Event::Unknown("otherEvent".into()),
        ];
        let prints: Vec<u64> = variants.iter().map(|e| Scheme::Positional.of(e)).collect();
        for (i, a) in prints.iter().enumerate() {
            for (j, b) in prints.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "variants {i} and {j} share a fingerprint: {:?} / {:?}", variants[i], variants[j]);
            }
        }
    }
}
