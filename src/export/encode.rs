//! The OTLP `ExportTraceServiceRequest` encoded straight from our spans, borrowing them: no
//! `SpanData`, no protobuf structs, no copy of a string. The bytes are those prost writes for
//! the same request built through the OpenTelemetry SDK (fields in tag order, proto3 defaults
//! left out, the oneof values always written): the tests below compare the two byte for byte.
//! The resource and the instrumentation scope are encoded once, by prost, when the exporter is
//! built.

use crate::span::{AttrValue, SpanEventRecord, SpanRecord, SpanStatus};

/// `SpanKind::Internal`.
const SPAN_KIND_INTERNAL: u64 = 1;
/// The W3C `sampled` trace flag and OTLP's "has is_remote" bit (the parent is never remote).
const SPAN_FLAGS: u32 = 0x01 | 0x100;

/// What every request carries around its spans: the resource and the scope, encoded.
#[derive(Clone, Debug, Default)]
pub struct Envelope {
    pub resource: Vec<u8>,
    pub resource_schema_url: String,
    pub scope: Vec<u8>,
    pub scope_schema_url: String,
}

impl Envelope {
    /// What a request holds besides its spans, at most: the resource and the scope with their
    /// framing, the schema URLs, and the three enclosing messages' keys and lengths.
    pub fn overhead(&self) -> usize {
        3 * (1 + 10)
            + delimited_len(self.resource.len())
            + delimited_len(self.scope.len())
            + bytes_len(self.resource_schema_url.as_bytes())
            + bytes_len(self.scope_schema_url.as_bytes())
    }
}

fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// The bytes of a length-delimited field (tags under 16: one byte of key) holding `len`.
fn delimited_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// The bytes of a message of `len` bytes in a repeated field (a span in its request).
pub fn framed_len(len: usize) -> usize {
    delimited_len(len)
}

fn put_delimited(buf: &mut Vec<u8>, key: u8, len: usize) {
    buf.push(key);
    put_varint(buf, len as u64);
}

/// A string or bytes field, left out when empty (proto3).
fn put_bytes(buf: &mut Vec<u8>, key: u8, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_delimited(buf, key, bytes.len());
        buf.extend_from_slice(bytes);
    }
}

fn bytes_len(bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(bytes.len())
    }
}

fn put_fixed64(buf: &mut Vec<u8>, key: u8, value: u64) {
    if value != 0 {
        buf.push(key);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed64_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        9
    }
}

fn nanos(time: i64) -> u64 {
    time.max(0) as u64
}

/// `AnyValue` (a oneof: written even when empty or false).
fn any_value_len(value: &AttrValue) -> usize {
    match value {
        AttrValue::Str(s) => delimited_len(s.len()),
        AttrValue::Bool(_) => 2,
        AttrValue::Int(i) => 1 + varint_len(*i as u64),
        AttrValue::StrArray(items) => delimited_len(array_len(items)),
    }
}

/// `ArrayValue` of string `AnyValue`s.
fn array_len(items: &[String]) -> usize {
    items.iter().map(|item| delimited_len(delimited_len(item.len()))).sum()
}

fn put_any_value(buf: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Str(s) => {
            put_delimited(buf, 0x0a, s.len());
            buf.extend_from_slice(s.as_bytes());
        }
        AttrValue::Bool(b) => buf.extend_from_slice(&[0x10, *b as u8]),
        AttrValue::Int(i) => {
            buf.push(0x18);
            put_varint(buf, *i as u64);
        }
        AttrValue::StrArray(items) => put_str_array(buf, items, array_len(items)),
    }
}

/// `AnyValue.array_value` of strings, whose `ArrayValue` takes `array_len` bytes.
fn put_str_array(buf: &mut Vec<u8>, items: &[String], array_len: usize) {
    put_delimited(buf, 0x2a, array_len);
    for item in items {
        put_delimited(buf, 0x0a, delimited_len(item.len()));
        put_delimited(buf, 0x0a, item.len());
        buf.extend_from_slice(item.as_bytes());
    }
}

/// `KeyValue`: the key, then the value (always present).
fn key_value_len(key: &str, value: &AttrValue) -> usize {
    bytes_len(key.as_bytes()) + delimited_len(any_value_len(value))
}

/// Each `KeyValue` in its field `key`; the value's length (and an array's) is measured once
/// for every framing.
fn put_attributes(buf: &mut Vec<u8>, key: u8, attributes: &[(std::borrow::Cow<'static, str>, AttrValue)]) {
    for (k, v) in attributes {
        let (value_len, array) = match v {
            AttrValue::StrArray(items) => {
                let array = array_len(items);
                (delimited_len(array), array)
            }
            _ => (any_value_len(v), 0),
        };
        put_delimited(buf, key, bytes_len(k.as_bytes()) + delimited_len(value_len));
        put_bytes(buf, 0x0a, k.as_bytes());
        put_delimited(buf, 0x12, value_len);
        match v {
            AttrValue::StrArray(items) => put_str_array(buf, items, array),
            _ => put_any_value(buf, v),
        }
    }
}

/// The bytes an attribute takes in its span or event, framing included.
pub fn attribute_len(key: &str, value: &AttrValue) -> usize {
    delimited_len(key_value_len(key, value))
}

fn attributes_len(attributes: &[(std::borrow::Cow<'static, str>, AttrValue)]) -> usize {
    attributes.iter().map(|(k, v)| attribute_len(k, v)).sum()
}

/// `Span.Event`: time (1), name (2), attributes (3).
fn event_len(event: &SpanEventRecord) -> usize {
    fixed64_len(nanos(event.time)) + bytes_len(event.name.as_bytes()) + attributes_len(&event.attributes)
}

/// The bytes an event takes in its span, framing included.
pub fn event_framed_len(event: &SpanEventRecord) -> usize {
    delimited_len(event_len(event))
}

fn put_event(buf: &mut Vec<u8>, event: &SpanEventRecord) {
    put_fixed64(buf, 0x09, nanos(event.time));
    put_bytes(buf, 0x12, event.name.as_bytes());
    put_attributes(buf, 0x1a, &event.attributes);
}

/// `Span.Link` within the span's trace: trace id (1), span id (2), flags (6, fixed32).
const LINK_LEN: usize = 18 + 10 + 5;

fn put_link(buf: &mut Vec<u8>, trace_id: &[u8; 16], span_id: &[u8; 8]) {
    put_bytes(buf, 0x0a, trace_id);
    put_bytes(buf, 0x12, span_id);
    buf.push(0x35);
    buf.extend_from_slice(&SPAN_FLAGS.to_le_bytes());
}

/// `Status`: message (2), code (3).
fn status_parts(status: &SpanStatus) -> (&str, u64) {
    match status {
        SpanStatus::Unset => ("", 0),
        SpanStatus::Ok => ("", 1),
        SpanStatus::Error(description) => (description, 2),
    }
}

fn status_len(status: &SpanStatus) -> usize {
    let (message, code) = status_parts(status);
    bytes_len(message.as_bytes()) + if code == 0 { 0 } else { 2 }
}

/// The encoded length of one `Span`.
pub fn span_len(span: &SpanRecord) -> usize {
    let parent = span.parent_span_id.map_or(0, |_| 10);
    let dropped = if span.dropped_events == 0 { 0 } else { 1 + varint_len(span.dropped_events as u64) };
    18 + 10
        + parent
        + bytes_len(span.name.as_bytes())
        + 2
        + fixed64_len(nanos(span.start))
        + fixed64_len(nanos(span.end))
        + attributes_len(&span.attributes)
        + span.events.iter().map(event_framed_len).sum::<usize>()
        + dropped
        + span.links.len() * delimited_len(LINK_LEN)
        + delimited_len(status_len(&span.status))
        + 6
}

/// One `Span`, fields in tag order: trace id (1), span id (2), parent (4), name (5), kind (6),
/// start (7), end (8), attributes (9), events (11), dropped events (12), links (13), status
/// (15), flags (16).
fn put_span(buf: &mut Vec<u8>, span: &SpanRecord) {
    put_bytes(buf, 0x0a, &span.trace_id);
    put_bytes(buf, 0x12, &span.span_id);
    if let Some(parent) = &span.parent_span_id {
        put_bytes(buf, 0x22, parent);
    }
    put_bytes(buf, 0x2a, span.name.as_bytes());
    buf.push(0x30);
    put_varint(buf, SPAN_KIND_INTERNAL);
    put_fixed64(buf, 0x39, nanos(span.start));
    put_fixed64(buf, 0x41, nanos(span.end));
    put_attributes(buf, 0x4a, &span.attributes);
    for event in &span.events {
        put_measured(buf, 0x5a, EVENT_ROOM, |buf| put_event(buf, event));
    }
    if span.dropped_events != 0 {
        buf.push(0x60);
        put_varint(buf, span.dropped_events as u64);
    }
    for link in &span.links {
        put_delimited(buf, 0x6a, LINK_LEN);
        put_link(buf, &span.trace_id, link);
    }
    put_delimited(buf, 0x7a, status_len(&span.status));
    let (message, code) = status_parts(&span.status);
    put_bytes(buf, 0x12, message.as_bytes());
    if code != 0 {
        buf.extend_from_slice(&[0x18, code as u8]);
    }
    // Tag 16, fixed32: a two-byte key.
    buf.extend_from_slice(&[0x85, 0x01]);
    buf.extend_from_slice(&SPAN_FLAGS.to_le_bytes());
}

/// Writes `span` as its request's `ScopeSpans` holds it (key, length, `Span`), measured in a
/// pass before (`span_len`): what `put_framed_measured` must write, for the tests.
#[cfg(test)]
pub fn put_framed(buf: &mut Vec<u8>, span: &SpanRecord) {
    let len = span_len(span);
    put_delimited(buf, 0x12, len);
    let before = buf.len();
    put_span(buf, span);
    assert_eq!(buf.len() - before, len, "span length");
}

/// The room a span event is written after (`put_measured`): its key and a length under 128
/// bytes. A node's input and output events (their field names, without content) take less; an
/// action's more, and is moved forward by a byte.
const EVENT_ROOM: usize = 2;

/// The room `put_framed_measured` leaves for a span's key and length: the key and a length of
/// 128 to 16,383 bytes (two bytes of varint), what nearly every span takes. A shorter span is
/// moved back by one byte; a longer one forward.
pub(super) const FRAMING_ROOM: usize = 3;

/// Writes `span` as its request's `ScopeSpans` holds it (key, length, `Span`), measured as it
/// is written rather than in a pass before: the span goes after room for its key and length,
/// which are written once its length is known. When they take less room or more, the span,
/// just written, is moved by the difference. Returns the span's encoded length (its
/// `span_len`).
pub fn put_framed_measured(buf: &mut Vec<u8>, span: &SpanRecord) -> usize {
    put_framed_in(buf, span, FRAMING_ROOM)
}

/// `put_framed_measured` with `room` bytes left for the key and length (`put_measured`).
pub(super) fn put_framed_in(buf: &mut Vec<u8>, span: &SpanRecord, room: usize) -> usize {
    put_measured(buf, SCOPE_SPANS_SPAN, room, |buf| put_span(buf, span))
}

/// `ScopeSpans.spans` (field 2, length-delimited): the key a span is framed with.
const SCOPE_SPANS_SPAN: u8 = 0x12;

/// Writes a length-delimited field `key` whose message `write` writes, measured as it is
/// written: the message goes after `room` bytes for the key and length, which are written
/// once its length is known; the message is moved by the difference when they take less room
/// or more. Returns the message's length.
fn put_measured(buf: &mut Vec<u8>, key: u8, room: usize, write: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = buf.len();
    buf.resize(start + room, 0);
    write(buf);
    let end = buf.len();
    let len = end - start - room;
    let (head, n) = framing(key, len);
    if n < room {
        buf.copy_within(start + room..end, start + n);
        buf.truncate(end - (room - n));
    } else if n > room {
        buf.resize(end + (n - room), 0);
        buf.copy_within(start + room..end, start + n);
    }
    buf[start..start + n].copy_from_slice(&head[..n]);
    len
}

/// A field's key and length as `put_delimited` writes them, in a buffer of the most they
/// take, and how many bytes they take.
fn framing(key: u8, len: usize) -> ([u8; 11], usize) {
    let (mut head, mut n, mut value) = ([key; 11], 1, len as u64);
    while value >= 0x80 {
        head[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    head[n] = value as u8;
    (head, n + 1)
}

/// Whether `bytes` are spans of encoded lengths `lens` end to end, each framed as
/// `put_framed_measured` writes it: what bytes read back from the store must be before a
/// request copies them.
pub fn holds_framed(mut bytes: &[u8], lens: &[usize]) -> bool {
    for len in lens {
        let (head, n) = framing(SCOPE_SPANS_SPAN, *len);
        match bytes.strip_prefix(&head[..n]) {
            Some(rest) if rest.len() >= *len => bytes = &rest[*len..],
            _ => return false,
        }
    }
    bytes.is_empty()
}

/// What a request holds before its spans (the keys and lengths of `ResourceSpans` and
/// `ScopeSpans`, the resource, the scope) and after them (the schema URLs), for spans of
/// encoded lengths `span_lens`.
fn frame(envelope: &Envelope, span_lens: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let spans_len: usize = span_lens.iter().map(|len| delimited_len(*len)).sum();
    let scope_spans_len =
        if span_lens.is_empty() { 0 } else { delimited_len(envelope.scope.len()) + spans_len + bytes_len(envelope.scope_schema_url.as_bytes()) };
    let scope_spans_field = if span_lens.is_empty() { 0 } else { delimited_len(scope_spans_len) };
    let resource_spans_len = delimited_len(envelope.resource.len()) + scope_spans_field + bytes_len(envelope.resource_schema_url.as_bytes());
    // Four keys and lengths (at most 11 bytes each), the resource and the scope.
    let mut head = Vec::with_capacity(44 + envelope.resource.len() + envelope.scope.len());
    put_delimited(&mut head, 0x0a, resource_spans_len);
    put_delimited(&mut head, 0x0a, envelope.resource.len());
    head.extend_from_slice(&envelope.resource);
    let mut tail = Vec::new();
    if !span_lens.is_empty() {
        put_delimited(&mut head, 0x12, scope_spans_len);
        put_delimited(&mut head, 0x0a, envelope.scope.len());
        head.extend_from_slice(&envelope.scope);
        put_bytes(&mut tail, 0x1a, envelope.scope_schema_url.as_bytes());
    }
    put_bytes(&mut tail, 0x1a, envelope.resource_schema_url.as_bytes());
    debug_assert_eq!(head.len() + spans_len + tail.len(), delimited_len(resource_spans_len), "request length");
    (head, tail)
}

/// `ExportTraceServiceRequest { resource_spans: [ResourceSpans { resource, scope_spans:
/// [ScopeSpans { scope, spans }] }] }`, kept in its parts: the spans' bytes where their folds
/// encoded them (shared, not copied) between the framing before and after them. It is
/// copied once, into the buffer the transport sends from (`put`); cloning it (to retry) copies
/// no span.
#[derive(Clone, Debug)]
pub struct Parts {
    head: bytes::Bytes,
    spans: std::sync::Arc<[bytes::Bytes]>,
    tail: bytes::Bytes,
}

impl Parts {
    /// `spans` are framed spans (`put_framed_measured`) of encoded lengths `span_lens`.
    pub fn new(envelope: &Envelope, spans: &[bytes::Bytes], span_lens: &[usize]) -> Parts {
        debug_assert_eq!(spans.len(), span_lens.len());
        debug_assert!(spans.iter().zip(span_lens).all(|(span, len)| span.len() == framed_len(*len)), "framed span lengths");
        let (head, tail) = frame(envelope, span_lens);
        Parts { head: head.into(), spans: spans.into(), tail: tail.into() }
    }

    /// The request's encoded length.
    pub fn len(&self) -> usize {
        self.head.len() + self.spans.iter().map(bytes::Bytes::len).sum::<usize>() + self.tail.len()
    }

    /// The request's bytes, part by part.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(&self.head[..]).chain(self.spans.iter().map(|span| &span[..])).chain(std::iter::once(&self.tail[..]))
    }

    /// Writes the request, end to end.
    pub fn put(&self, buf: &mut impl bytes::BufMut) {
        for slice in self.slices() {
            buf.put_slice(slice);
        }
    }

    /// The request in one buffer of its size.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.len());
        self.put(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_measured_as_written() {
        for value in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX, -1i64 as u64] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
            let (mut delimited, (head, n)) = (Vec::new(), framing(SCOPE_SPANS_SPAN, value as usize));
            put_delimited(&mut delimited, 0x12, value as usize);
            assert_eq!(&head[..n], &delimited[..], "{value}: a span's key and length");
        }
    }
}
