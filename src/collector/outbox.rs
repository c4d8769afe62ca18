//! The outbox (SPEC §2): spans the OTLP endpoint did not accept when their execution was
//! checkpointed wait in the store, and are sent again until it accepts them; then they leave
//! the store, and only then are they counted. At `traces.outbox_max_bytes` reading pauses
//! (backpressure) until the endpoint accepts again. An execution refused for good has its
//! spans parked here, offered again every `PARK_RETRY`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::delivery::{self, Delivery, Ready, PARK_RETRY};
use super::events::{add, ExecutionFinished, NodeSpansExported, OutboxChanged, ReadingPaused, SpansExported, StoreFailed};
use super::lifecycle::Tracked;
use super::Collector;
use crate::metrics::FlowLabels;
use crate::span::{SpanRecord, SpanTally};
use crate::state::ParcelInfo;
use crate::timefmt::now_nanos;

/// Parcel bodies read from the store at once while flushing.
const FLUSH_BYTES: u64 = 8 << 20;

/// What is known of the parcels in the store, kept in memory.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    entries: BTreeMap<i64, ParcelInfo>,
    bytes: u64,
    max_bytes: u64,
    paused: bool,
}

impl Outbox {
    pub(super) fn new(parcels: Vec<ParcelInfo>, max_bytes: u64) -> Outbox {
        let mut outbox = Outbox { max_bytes, ..Outbox::default() };
        for p in parcels {
            outbox.bytes += p.bytes;
            outbox.entries.insert(p.id, p);
        }
        outbox
    }

    pub(super) fn add(&mut self, id: i64, arn: &str, bytes: u64, not_before: i64) {
        self.bytes += bytes;
        self.entries.insert(id, ParcelInfo { id, arn: arn.to_string(), bytes, not_before });
    }

    fn remove(&mut self, id: i64) {
        if let Some(p) = self.entries.remove(&id) {
            self.bytes -= p.bytes;
        }
    }

    /// Forgets the entries of executions `gone` says (flows no longer held).
    pub(super) fn forget(&mut self, gone: impl Fn(&str) -> bool) {
        let ids: Vec<i64> = self.entries.values().filter(|p| gone(&p.arn)).map(|p| p.id).collect();
        for id in ids {
            self.remove(id);
        }
    }

    /// Adds entries not known yet (of flows just taken).
    pub(super) fn merge(&mut self, parcels: impl Iterator<Item = ParcelInfo>) {
        for p in parcels {
            if !self.entries.contains_key(&p.id) {
                self.bytes += p.bytes;
                self.entries.insert(p.id, p);
            }
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The executions whose spans wait here.
    pub(super) fn arns(&self) -> impl Iterator<Item = &str> {
        self.entries.values().map(|p| p.arn.as_str())
    }

    /// Parcels set aside until later (refused for good), as (ARN, when).
    pub(super) fn parked(&self, now: i64) -> impl Iterator<Item = (&str, i64)> {
        self.entries.values().filter(move |p| p.not_before > now).map(|p| (p.arn.as_str(), p.not_before))
    }

    fn due(&self, now: i64) -> Vec<ParcelInfo> {
        self.entries.values().filter(|p| p.not_before <= now).cloned().collect()
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The flow id in an execution ARN (`...:flow/FLOWID/alias/...`).
pub(super) fn flow_of(arn: &str) -> &str {
    arn.split('/').nth(1).unwrap_or("")
}

/// The first byte of a parcel of the second form: then the length of its head (4 bytes,
/// little-endian), the head (JSON), and the spans' bytes. A parcel of the first form is the
/// JSON of the spans themselves (`{`).
const PARCEL_FORM_2: u8 = 2;

/// A parcel as stored: the spans and what counting them needs once they are accepted. Written
/// in the second form: the spans as encoded where their folds made them (`delivery::Ready`),
/// their lengths and tallies; parcels of the first form (the span records, JSON; written by
/// versions before it) are still read, and made ready as they are read.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ParcelBody {
    arn: String,
    flow_id: String,
    alias: String,
    status: String,
    /// Spans of the execution in all, when `done`.
    spans_total: u64,
    done: bool,
    /// The first form's spans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spans: Vec<SpanRecord>,
    /// The second form's: each span's encoded length and tally (its bytes follow the head).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lens: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tallies: Vec<SpanTally>,
    #[serde(skip)]
    bytes: Vec<u8>,
}

impl ParcelBody {
    /// A parcel of the second form: `spans` encoded (`export::put_framed_measured`), of
    /// `lens`, with their `tallies`.
    pub(super) fn new(t: &Tracked, spans_total: u64, done: bool, spans: &[bytes::Bytes], lens: &[usize], tallies: &[&SpanTally]) -> ParcelBody {
        ParcelBody {
            arn: t.arn.clone(),
            flow_id: t.flow_id.clone(),
            alias: t.alias.clone(),
            status: t.status.as_str().to_string(),
            spans_total,
            done,
            spans: Vec::new(),
            lens: lens.to_vec(),
            tallies: tallies.iter().map(|t| (*t).clone()).collect(),
            bytes: spans.concat(),
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let head = serde_json::to_vec(self).unwrap_or_default();
        let mut body = Vec::with_capacity(5 + head.len() + self.bytes.len());
        body.push(PARCEL_FORM_2);
        body.extend_from_slice(&(head.len() as u32).to_le_bytes());
        body.extend_from_slice(&head);
        body.extend_from_slice(&self.bytes);
        body
    }

    /// A stored parcel of either form, or why it cannot be read.
    fn decode(body: &[u8]) -> Result<ParcelBody, String> {
        let Some((&PARCEL_FORM_2, rest)) = body.split_first() else {
            return serde_json::from_slice(body).map_err(|e| e.to_string());
        };
        let head_len = rest.get(..4).map(|n| u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize).ok_or("no head length")?;
        let head = rest.get(4..4 + head_len).ok_or_else(|| format!("a head of {head_len} bytes in a parcel of {}", body.len()))?;
        let mut parcel: ParcelBody = serde_json::from_slice(head).map_err(|e| e.to_string())?;
        parcel.bytes = rest[4 + head_len..].to_vec();
        if parcel.lens.len() != parcel.tallies.len() || !crate::export::holds_framed(&parcel.bytes, &parcel.lens) || !parcel.spans.is_empty() {
            return Err(format!("{} spans' lengths and {} tallies do not match its {} bytes", parcel.lens.len(), parcel.tallies.len(), parcel.bytes.len()));
        }
        Ok(parcel)
    }

    /// The parcel's spans ready to send (those of a parcel of the first form measured, cut to
    /// fit and encoded now), their lengths appended to `lens`; and what else it says.
    fn ready(self, room: delivery::Room, events: &super::events::Instruments, lens: &mut Vec<usize>) -> (Ready, Accepted) {
        let ParcelBody { arn, flow_id, alias, status, spans_total, done, spans, lens: parcel_lens, tallies, bytes } = self;
        let ready = if spans.is_empty() {
            lens.extend(parcel_lens);
            Ready { bytes: bytes.into(), tallies }
        } else {
            Ready::new(spans, room, events, lens)
        };
        (ready, Accepted { arn, flow_id, alias, status, spans_total, done, spans: 0..0 })
    }
}

/// Spans of one execution accepted by the endpoint and recorded: `spans` is their range in the
/// list sent; with `done`, the execution finished with them.
pub(super) struct Accepted {
    pub arn: String,
    pub flow_id: String,
    pub alias: String,
    pub status: String,
    pub spans_total: u64,
    pub done: bool,
    pub spans: Range<usize>,
}

/// A flow and alias's labels and its node spans accepted in one `observe_accepted`.
type FlowBatch<'a> = (FlowLabels, Vec<&'a SpanTally>);

impl Collector {
    /// Sends what waits in the outbox and is due, a group at a time, and removes what the
    /// endpoint accepted. Stops at a retryable failure (the backoff).
    pub(super) async fn flush_outbox(&mut self) {
        if self.outbox.is_empty() || self.export_backoff.is_some_and(|(until, _)| Instant::now() < until) {
            return;
        }
        let now = now_nanos();
        let due: Vec<ParcelInfo> = self.outbox.due(now).into_iter().filter(|p| self.holds(flow_of(&p.arn))).collect();
        let mut next = 0;
        while next < due.len() {
            let mut group = Vec::new();
            let mut bytes = 0;
            while next < due.len() && (group.is_empty() || bytes + due[next].bytes <= FLUSH_BYTES) {
                bytes += due[next].bytes;
                group.push(due[next].id);
                next += 1;
            }
            let bodies = match self.store.parcels(&group).await {
                Ok(bodies) => bodies,
                Err(e) => {
                    self.events.emit(StoreFailed { operation: "outbox", doing: "read the outbox", error: &e });
                    break;
                }
            };
            let room = self.room();
            let mut parts = Vec::new();
            let mut lens = Vec::new();
            let mut bounds = Vec::new();
            let mut owners = Vec::new();
            for (id, body) in bodies {
                match ParcelBody::decode(&body) {
                    Ok(parcel) => {
                        bounds.push(lens.len());
                        let (ready, owner) = parcel.ready(room, &self.events, &mut lens);
                        parts.push(ready);
                        owners.push((id, owner));
                    }
                    // Kept (never guessed at or dropped); it is offered again after the park time.
                    Err(e) => {
                        tracing::error!(parcel = id, error = %e, "an outbox parcel cannot be read; it stays in the store");
                        if let Err(e) = self.store.postpone(&[id], now + PARK_RETRY.as_nanos() as i64).await {
                            self.events.emit(StoreFailed {
                                operation: "outbox",
                                doing: "postpone an unreadable parcel (it is read again next cycle)",
                                error: &e,
                            });
                        }
                        if let Some(p) = self.outbox.entries.get_mut(&id) {
                            p.not_before = now + PARK_RETRY.as_nanos() as i64;
                        }
                    }
                }
            }
            bounds.push(lens.len());
            if owners.is_empty() {
                continue;
            }
            let (spans, tallies) = delivery::lay_out(&parts, &lens);
            let (deliveries, retry_error) = self.send(&spans, &lens, &bounds).await;
            let mut delivered = Vec::new();
            let mut accepted = Vec::new();
            for (i, ((id, mut owner), delivery)) in owners.into_iter().zip(deliveries).enumerate() {
                owner.spans = bounds[i]..bounds[i + 1];
                match delivery {
                    Delivery::Accepted => {
                        delivered.push(id);
                        accepted.push(owner);
                    }
                    Delivery::Refused { reason, message } => {
                        let at = now + PARK_RETRY.as_nanos() as i64;
                        match self.store.postpone(&[id], at).await {
                            Ok(()) => {
                                if let Some(p) = self.outbox.entries.get_mut(&id) {
                                    p.not_before = at;
                                }
                            }
                            Err(e) => self.events.emit(StoreFailed {
                                operation: "outbox",
                                doing: "postpone refused spans (they are offered again next cycle)",
                                error: &e,
                            }),
                        }
                        self.park(&owner.flow_id, &owner.arn, reason, message);
                    }
                    Delivery::NotSent => {}
                }
            }
            if !delivered.is_empty() {
                match self.store.delivered(&delivered).await {
                    Ok(()) => {
                        for id in &delivered {
                            self.outbox.remove(*id);
                        }
                        self.observe_accepted(&accepted, &tallies);
                    }
                    // Sent again later (the same ids): never counted before it leaves the store.
                    Err(e) => {
                        self.events.emit(StoreFailed { operation: "outbox", doing: "remove delivered spans from the outbox (they are sent again)", error: &e })
                    }
                }
            }
            if let Some(e) = retry_error {
                let delay = self.export_backoff.map(|(_, d)| (d * 2).min(std::time::Duration::from_secs(60))).unwrap_or(std::time::Duration::from_secs(1));
                self.export_backoff = Some((Instant::now() + delay, delay));
                self.events.emit(super::events::ExportBackedOff { error: &e, retry_in: delay });
                break;
            }
            self.export_backoff = None;
        }
        self.outbox_changed();
    }

    /// The gauges of the outbox, and the pause of reading when it is full (or its end).
    pub(super) fn outbox_changed(&mut self) {
        self.events.emit(OutboxChanged { bytes: self.outbox.bytes(), max_bytes: self.outbox.max_bytes });
        let full = self.outbox.is_full();
        if full != self.outbox.paused {
            self.outbox.paused = full;
            self.events.emit(ReadingPaused { paused: full, bytes: self.outbox.bytes(), max_bytes: self.outbox.max_bytes });
        }
    }

    /// Counts spans accepted and recorded (`spans` holds their tallies at each one's range):
    /// node metrics once per flow and alias (each series looked up once), the execution once
    /// when it finished with them.
    pub(super) fn observe_accepted(&mut self, accepted: &[Accepted], spans: &[&SpanTally]) {
        let now = now_nanos();
        // Per flow and alias: its labels and its node spans, for one metrics batch each.
        let mut flows: Vec<((&str, &str), FlowBatch)> = Vec::new();
        for a in accepted {
            let (labels, node_spans) = add(&mut flows, (a.flow_id.as_str(), a.alias.as_str()), || (self.labels_of(&a.flow_id, &a.alias), Vec::new()));
            let range = &spans[a.spans.clone()];
            node_spans.extend(range.iter().copied().filter(|s| !s.root));
            self.events.emit(SpansExported(range.len()));
            self.spans_here += range.len() as u64;
            if a.done {
                if let Some(root) = range.iter().copied().find(|s| s.root) {
                    self.events.emit(ExecutionFinished { labels, arn: &a.arn, status: &a.status, root, spans: a.spans_total as usize });
                }
                *self.finished_here.entry(a.status.clone()).or_default() += 1;
            }
            if self.outbox.parked(now).all(|(arn, _)| arn != a.arn) {
                self.unpark(&a.arn);
            }
        }
        for (_, (labels, node_spans)) in &flows {
            self.events.emit(NodeSpansExported { labels, spans: node_spans });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::collector::board::StatusBoard;
    use crate::collector::delivery::{lay_out, Room};
    use crate::collector::events::Instruments;

    /// The spans of a finished doc-batch Iterator over 20 documents, and each one's bytes as a
    /// request holds it.
    fn spans() -> (Vec<SpanRecord>, Vec<Vec<u8>>) {
        let (flow, node, types) = crate::convert::tests::doc_batch_history(20, 7);
        let status = crate::model::ExecutionStatus::Failed;
        let errors = [crate::model::ExecutionError { error: Some("ExecutionTimedOut".into()), message: None, node_name: None }];
        let mut view = crate::convert::tests::running_view("arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/p", &status, &types);
        (view.finished, view.ended_at, view.errors) = (true, Some(crate::model::Timestamp(9_000_000_000_000)), &errors);
        let spans = crate::convert::convert(&view, &node, &flow, &crate::convert::ContentPolicy::default()).spans;
        let framed = spans
            .iter()
            .map(|span| {
                let mut bytes = Vec::new();
                crate::export::put_framed(&mut bytes, span);
                bytes
            })
            .collect();
        (spans, framed)
    }

    /// Spans made ready where their folds made them go out as the bytes of the spans
    /// themselves, and are counted by the same tallies; a parcel keeps them in its second
    /// form, and a parcel of the first form (the span records, as earlier versions wrote it)
    /// is read and sent as the same bytes. A parcel that does not add up is refused.
    #[test]
    fn spans_made_ready_and_parcels_of_either_form_send_the_spans_bytes() {
        let to = Instruments::new(Arc::new(crate::metrics::Metrics::new(true)), Arc::new(StatusBoard::new(&[])), None);
        let room = Room { spans: 4 << 20, max_bytes: 4 << 20 };
        let (spans, framed) = spans();
        assert!(spans.len() > 40 && spans.iter().any(|s| s.parent_span_id.is_none()), "{} spans, the root among them", spans.len());
        let tallies: Vec<SpanTally> = spans.iter().map(|s| SpanTally::take(&mut s.clone())).collect();
        assert!(tallies.iter().filter(|t| t.root).count() == 1 && tallies.iter().any(|t| t.facts.node.is_some()));
        let root = tallies.iter().find(|t| t.root).unwrap();
        let error_type = spans.iter().find(|s| s.parent_span_id.is_none()).and_then(|s| s.attribute("error.type"));
        assert!(
            matches!(error_type, Some(crate::span::AttrValue::Str(code)) if Some(code.as_str()) == root.error_type.as_deref()),
            "the root's error.type is tallied"
        );
        // Made ready as the folds make them: in two parts, laid out as one chunk.
        let mut lens = Vec::new();
        let parts = [Ready::new(spans[..7].to_vec(), room, &to, &mut lens), Ready::new(spans[7..].to_vec(), room, &to, &mut lens)];
        assert_eq!(lens, spans.iter().map(crate::export::span_len).collect::<Vec<_>>());
        let (bytes, laid) = lay_out(&parts, &lens);
        assert_eq!(bytes.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), framed, "each span's own bytes");
        assert_eq!(laid.into_iter().cloned().collect::<Vec<_>>(), tallies);
        // Kept in a parcel (the second form), and the first form as earlier versions wrote it.
        let second = ParcelBody {
            arn: "arn:p".into(),
            flow_id: "F".into(),
            alias: "A".into(),
            status: "Succeeded".into(),
            spans_total: 99,
            done: true,
            lens: lens.clone(),
            tallies: tallies.clone(),
            bytes: bytes.concat(),
            ..ParcelBody::default()
        }
        .encode();
        assert_eq!(second[0], PARCEL_FORM_2);
        let first = serde_json::to_vec(&serde_json::json!({
            "arn": "arn:p", "flow_id": "F", "alias": "A", "status": "Succeeded", "spans_total": 99, "done": true, "spans": spans,
        }))
        .unwrap();
        for (form, stored) in [("second", &second), ("first", &first)] {
            let mut read_lens = vec![5];
            let (ready, owner) = ParcelBody::decode(stored).unwrap().ready(room, &to, &mut read_lens);
            assert_eq!(read_lens[1..], lens[..], "{form} form: lengths appended");
            assert_eq!(ready.bytes, framed.concat(), "{form} form: the same bytes go out");
            assert_eq!(ready.tallies, tallies, "{form} form: counted the same");
            assert_eq!(
                (owner.arn.as_str(), owner.flow_id.as_str(), owner.status.as_str(), owner.spans_total, owner.done),
                ("arn:p", "F", "Succeeded", 99, true)
            );
        }
        assert!(second.len() < first.len(), "the second form is the smaller: {} bytes against {}", second.len(), first.len());
        // Cut short, or lengths that do not add up: refused (the parcel stays in the store).
        assert!(ParcelBody::decode(&second[..second.len() - 1]).unwrap_err().contains("do not match"));
        assert!(ParcelBody::decode(&second[..3]).unwrap_err().contains("head length"));
        assert!(ParcelBody::decode(&second[..40]).unwrap_err().contains("a head of"));
        assert!(ParcelBody::decode(b"").is_err());
        // Lengths that add up to the bytes but are not the spans' (two swapped), or a length
        // as large as can be: refused, never sent or summed.
        let mut swapped = lens.clone();
        let (a, b) = (swapped.iter().position(|l| *l != lens[0]).unwrap(), 0);
        swapped.swap(a, b);
        for wrong in [swapped, vec![usize::MAX; lens.len()]] {
            let body = ParcelBody { lens: wrong, tallies: tallies.clone(), bytes: bytes.concat(), ..ParcelBody::default() }.encode();
            assert!(ParcelBody::decode(&body).unwrap_err().contains("do not match"));
        }
    }
}
