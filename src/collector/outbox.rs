//! The outbox (SPEC §2): spans the OTLP endpoint did not accept when their execution was
//! checkpointed wait in the store, and are sent again until it accepts them; then they leave
//! the store, and only then are they counted. At `traces.outbox_max_bytes` reading pauses
//! (backpressure) until the endpoint accepts again. An execution refused for good has its
//! spans parked here, offered again every `PARK_RETRY`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::delivery::{Delivery, PARK_RETRY};
use super::events::{add, ExecutionFinished, NodeSpansExported, OutboxChanged, ReadingPaused, SpansExported, StoreFailed};
use super::lifecycle::Tracked;
use super::Collector;
use crate::metrics::FlowLabels;
use crate::span::SpanRecord;
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

/// A parcel as stored: the spans and what counting them needs once they are accepted.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ParcelBody {
    arn: String,
    flow_id: String,
    alias: String,
    status: String,
    /// Spans of the execution in all, when `done`.
    spans_total: u64,
    done: bool,
    spans: Vec<SpanRecord>,
}

impl ParcelBody {
    pub(super) fn new(t: &Tracked, spans_total: u64, done: bool, spans: Vec<SpanRecord>) -> ParcelBody {
        ParcelBody { arn: t.arn.clone(), flow_id: t.flow_id.clone(), alias: t.alias.clone(), status: t.status.as_str().to_string(), spans_total, done, spans }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<ParcelBody, serde_json::Error> {
        serde_json::from_slice(bytes)
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
type FlowBatch<'a> = (FlowLabels, Vec<&'a SpanRecord>);

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
                    self.events.emit(StoreFailed { doing: "read the outbox", error: &e });
                    break;
                }
            };
            let mut spans = Vec::new();
            let mut bounds = Vec::new();
            let mut owners = Vec::new();
            for (id, body) in bodies {
                match ParcelBody::decode(&body) {
                    Ok(ParcelBody { arn, flow_id, alias, status, spans_total, done, spans: parcel_spans }) => {
                        bounds.push(spans.len());
                        spans.extend(parcel_spans);
                        owners.push((id, Accepted { arn, flow_id, alias, status, spans_total, done, spans: 0..0 }));
                    }
                    // Kept (never guessed at or dropped); it is offered again after the park time.
                    Err(e) => {
                        tracing::error!(parcel = id, error = %e, "an outbox parcel cannot be read; it stays in the store");
                        let _ = self.store.postpone(&[id], now + PARK_RETRY.as_nanos() as i64).await;
                        if let Some(p) = self.outbox.entries.get_mut(&id) {
                            p.not_before = now + PARK_RETRY.as_nanos() as i64;
                        }
                    }
                }
            }
            bounds.push(spans.len());
            if owners.is_empty() {
                continue;
            }
            let room = self.room();
            let lens: Vec<usize> = spans.iter_mut().map(|span| super::delivery::measure(span, room, &self.events)).collect();
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
                        if self.store.postpone(&[id], at).await.is_ok() {
                            if let Some(p) = self.outbox.entries.get_mut(&id) {
                                p.not_before = at;
                            }
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
                        self.observe_accepted(&accepted, &spans);
                    }
                    // Sent again later (the same ids): never counted before it leaves the store.
                    Err(e) => self.events.emit(StoreFailed { doing: "remove delivered spans from the outbox (they are sent again)", error: &e }),
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
        self.events.emit(OutboxChanged { bytes: self.outbox.bytes() });
        let full = self.outbox.is_full();
        if full != self.outbox.paused {
            self.outbox.paused = full;
            self.events.emit(ReadingPaused { paused: full, bytes: self.outbox.bytes(), max_bytes: self.outbox.max_bytes });
        }
    }

    /// Counts spans accepted and recorded (`spans` holds them at each one's range): node
    /// metrics once per flow and alias (each series looked up once), the execution once when
    /// it finished with them.
    pub(super) fn observe_accepted<S: std::borrow::Borrow<SpanRecord>>(&mut self, accepted: &[Accepted], spans: &[S]) {
        let now = now_nanos();
        // Per flow and alias: its labels and its node spans, for one metrics batch each.
        let mut flows: Vec<((&str, &str), FlowBatch)> = Vec::new();
        for a in accepted {
            let (labels, node_spans) = add(&mut flows, (a.flow_id.as_str(), a.alias.as_str()), || (self.labels_of(&a.flow_id, &a.alias), Vec::new()));
            let range = &spans[a.spans.clone()];
            node_spans.extend(range.iter().map(|s| s.borrow()).filter(|s| s.parent_span_id.is_some()));
            self.events.emit(SpansExported(range.len()));
            self.spans_here += range.len() as u64;
            if a.done {
                if let Some(root) = range.iter().map(|s| s.borrow()).find(|s| s.parent_span_id.is_none()) {
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
