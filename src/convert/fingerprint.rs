//! Fingerprints of events, to recognise one the API sends again. They are saved in the
//! execution state, so a scheme never changes once written: a state says which it holds.
//!
//! `Structural` (states of version 3) feeds the event's serde structure, as a format that
//! is not human-readable sees it (timestamps as nanoseconds), to a word-at-a-time multiplicative
//! hash: every scalar with a tag, strings and struct field names with their length, sequences
//! and maps with an end mark; no text is written. Each step is a bijection of the hash for a
//! fixed input word, so two events that differ in one word never collide. `WireText` (versions
//! 1 and 2) is FNV-1a over the event's compact wire JSON, kept to read the windows those
//! states saved. `Calls` (states from version 4 on) is `Structural`, except that an action
//! event is known by its call (node, time, request id, service, operation) and not by its
//! documents: the source leaves those out when content is not captured (see
//! `source::ActionDocuments`), so a repeat is known whatever the capture mode.

use serde::ser::{self, Serialize};

use crate::model::{Event, NodeActionEvent};

/// How the fingerprints of a state's windows were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scheme {
    /// FNV-1a over the wire text: what states before version 3 hold (they name no scheme).
    #[serde(rename = "wire-text")]
    WireText,
    /// What states of version 3 hold.
    #[serde(rename = "structural")]
    Structural,
    #[default]
    #[serde(rename = "calls")]
    Calls,
}

impl Scheme {
    /// The scheme of a saved state that names none.
    pub fn legacy() -> Scheme {
        Scheme::WireText
    }

    pub fn of(self, event: &Event) -> u64 {
        match (self, event) {
            (Scheme::WireText, _) => wire_text(event),
            (Scheme::Calls, Event::NodeAction(e)) => action_call(e),
            (Scheme::Structural | Scheme::Calls, _) => structural(event),
        }
    }

    /// Whether this scheme's prints of action events need the events' documents (the
    /// schemes before `Calls`): the reads of a state that holds them must keep them.
    pub fn needs_action_documents(self) -> bool {
        self != Scheme::Calls
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
    }

    fn action(response: serde_json::Value) -> Event {
        Event::from_wire(&json!({ "nodeActionEvent": {"nodeName": "Lookup", "timestamp": "2026-01-02T03:04:05.123456789Z",
            "requestId": "r-1", "serviceName": "lambda", "operationName": "Invoke",
            "operationRequest": {"FunctionName": "f"}, "operationResponse": response} }))
        .unwrap()
    }

    /// Under `Calls` an action event is its call: its documents, which the source leaves out
    /// when content is not captured, do not count, and every part of the call does.
    #[test]
    fn calls_know_an_action_by_its_call_not_its_documents() {
        let full = action(json!({"usage": {"inputTokens": 3}, "StatusCode": 200}));
        let Event::NodeAction(mut bare) = full.clone() else { unreachable!() };
        (bare.operation_request, bare.operation_response) = (None, None);
        assert_eq!(Scheme::Calls.of(&full), Scheme::Calls.of(&Event::NodeAction(bare.clone())));
        assert_ne!(Scheme::Structural.of(&full), Scheme::Structural.of(&Event::NodeAction(bare.clone())), "the older scheme counts the documents");
        let mut prints = vec![Scheme::Calls.of(&full)];
        for change in 0..5 {
            let mut e = bare.clone();
            match change {
                0 => e.node_name.push('x'),
                1 => e.timestamp = e.timestamp.map(|t| crate::model::Timestamp(t.0 + 1)),
                2 => e.request_id.push('x'),
                3 => e.service_name.push('x'),
                _ => e.operation_name.push('x'),
            }
            prints.push(Scheme::Calls.of(&Event::NodeAction(e)));
        }
        for (i, a) in prints.iter().enumerate() {
            for (j, b) in prints.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "changes {i} and {j} share a fingerprint");
            }
        }
        assert!(!Scheme::Calls.needs_action_documents() && Scheme::Structural.needs_action_documents() && Scheme::WireText.needs_action_documents());
    }

    /// Every difference an event can have changes the structural fingerprint, including ones
    /// whose text would be ambiguous without tags and lengths.
    #[test]
    fn structural_fingerprints_tell_every_field_apart() {
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
        let prints: Vec<u64> = variants.iter().map(|v| Scheme::Structural.of(&event(v.clone()))).collect();
        for (i, a) in prints.iter().enumerate() {
            for (j, b) in prints.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "variants {i} and {j} share a fingerprint");
            }
        }
        // The same event read twice has the same print, and the event kind counts.
        assert_eq!(prints[0], Scheme::Structural.of(&event(base())));
        let input = Event::from_wire(&json!({ "nodeInputEvent": base() })).unwrap();
        assert_ne!(prints[0], Scheme::Structural.of(&input));
    }
}
