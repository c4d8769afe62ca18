//! The pipeline of a chunk of executions: their snapshots, their reads (concurrently), the
//! reads saved in one transaction, then conversion of the stored histories, delivery of the
//! spans not exported yet, and the checkpoint of what was accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use super::delivery::Delivery;
use super::events::{EventsReceived, ExecutionFinished, ExportBackedOff, NodeSpanExported, ProblemFound, ReadDenied, SpansExported, StoreFailed};
use super::fetch::{fetch, Fetched};
use super::lifecycle::Tracked;
use super::plan::Work;
use super::Collector;
use crate::convert::{self, ExecutionView};
use crate::metrics::FlowLabels;
use crate::model::{ExecutionStatus, FlowDefinition, Timestamp};
use crate::source::{ApiError, ErrorKind, FlowSource};
use crate::span::SpanRecord;
use crate::state::{ExportMark, History, StreamRead};
use crate::timefmt::now_nanos;

/// Flow definitions kept parsed in memory; DRAFT ones (one per execution) are dropped first.
const SNAPSHOT_CACHE_ENTRIES: usize = 256;

/// Executions whose stored histories are read (and held) at once.
const HISTORY_GROUP: usize = 16;

/// An execution converted in this pass: its checkpoint (its state, the span ids it sends now,
/// whether it is done), its root span (when done) and how many spans it has in all.
struct Converted {
    checkpoint: ExportMark,
    root: Option<SpanRecord>,
    spans: usize,
}

impl Collector {
    pub(super) async fn definition_for(&mut self, t: &Tracked) -> Result<Option<Arc<FlowDefinition>>, ApiError> {
        let key = if t.version == "DRAFT" { format!("DRAFT:{}", t.arn) } else { t.version.clone() };
        let cache_key = (t.flow_id.clone(), key.clone());
        if let Some(d) = self.snapshots.get(&cache_key) {
            return Ok(d.clone());
        }
        let stored = self.store.snapshot(&t.flow_id, &key).await.ok().flatten();
        let text = match stored {
            Some(text) => text,
            None => {
                let Some(f) = self.flow_index(&t.flow_id) else {
                    return Ok(None);
                };
                match self.flows[f].source.get_snapshot(&t.flow_id, &t.alias, &t.arn).await {
                    Ok((_, definition)) => {
                        let _ = self.store.put_snapshot(&t.flow_id, &key, &definition).await;
                        definition
                    }
                    // Without access to the definition, spans still go out with type "unknown".
                    Err(e) if matches!(e.kind, ErrorKind::AccessDenied | ErrorKind::NotFound | ErrorKind::Validation) => {
                        tracing::warn!(flow_id = %t.flow_id, error = %e, "flow snapshot unavailable; node types will be \"unknown\"");
                        String::new()
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let definition = if text.is_empty() {
            None
        } else {
            match serde_json::from_str::<FlowDefinition>(&text) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    self.events.emit(ProblemFound { reason: "bad_snapshot", detail: &format!("flow {} version {}: {e}", t.flow_id, t.version) });
                    None
                }
            }
        };
        // A DRAFT snapshot is one per execution: bound the cache (the store keeps them all).
        if self.snapshots.len() >= SNAPSHOT_CACHE_ENTRIES {
            self.snapshots.retain(|(_, key), _| !key.starts_with("DRAFT:"));
        }
        self.snapshots.insert(cache_key, definition.clone());
        Ok(definition)
    }

    pub(super) async fn process_chunk(&mut self, chunk: &[(String, Work)]) {
        let now = now_nanos();
        // Snapshots first, one call per (flow, version), before the concurrent reads.
        let mut definitions: HashMap<String, Option<Arc<FlowDefinition>>> = HashMap::new();
        for (arn, _) in chunk {
            let Some(t) = self.tracked.get(arn).cloned() else {
                continue;
            };
            match self.definition_for(&t).await {
                Ok(d) => {
                    definitions.insert(arn.clone(), d);
                }
                Err(e) => tracing::debug!(arn = %arn, error = %e, "snapshot not read this cycle"),
            }
        }
        // Concurrent reads of the executions whose snapshot is known.
        let jobs: Vec<(Tracked, Work, FlowSource)> = chunk
            .iter()
            .filter(|(arn, _)| definitions.contains_key(arn))
            .filter_map(|(arn, w)| {
                let t = self.tracked.get(arn)?.clone();
                let f = self.flow_index(&t.flow_id)?;
                Some((t, *w, self.flows[f].source.clone()))
            })
            .collect();
        let results: Vec<Result<Fetched, (String, ApiError)>> =
            stream::iter(jobs).map(|(t, w, source)| async move { fetch(source, t, w).await }).buffer_unordered(self.poll.concurrency).collect().await;
        let mut fetched = Vec::new();
        for result in results {
            match result {
                Ok(f) => fetched.push(f),
                Err((arn, e)) => {
                    tracing::debug!(arn = %arn, error = %e, "reading events failed; retried next cycle");
                    if let Some(t) = self.tracked.get(&arn).filter(|_| e.kind == ErrorKind::AccessDenied) {
                        self.events.emit(ReadDenied { flow_id: &t.flow_id, error: &e });
                    }
                }
            }
        }
        // Persist what was read, in one transaction (before exporting: the events are the
        // durable backlog).
        let mut reads = Vec::with_capacity(fetched.len());
        for f in fetched {
            self.events.emit(EventsReceived { events: &f.new_node, now });
            self.events.emit(EventsReceived { events: &f.new_flow, now });
            // A read that brought nothing (a running execution without new events) changes
            // neither the stored state nor the spans: no write, no conversion.
            if self.tracked.get(&f.arn) == Some(&f.tracked) && f.new_node.is_empty() && f.new_flow.is_empty() {
                continue;
            }
            reads.push(StreamRead { execution: f.tracked, new_node: f.new_node, new_flow: f.new_flow, first_seq: f.first_seq });
        }
        if !reads.is_empty() {
            match self.store.save_reads(&reads).await {
                Ok(()) => {
                    for read in reads {
                        self.pending.insert(read.execution.arn.clone());
                        self.tracked.insert(read.execution.arn.clone(), read.execution);
                    }
                }
                Err(e) => self.events.emit(StoreFailed { doing: "save the events read", error: &e }),
            }
        }
        self.export_pending(chunk.iter().map(|(a, _)| a.clone()).filter(|a| definitions.contains_key(a)).collect(), &definitions).await;
    }

    /// Converts the given executions, exports their spans not exported yet, and records them.
    pub(super) async fn export_pending(&mut self, arns: Vec<String>, definitions: &HashMap<String, Option<Arc<FlowDefinition>>>) {
        if let Some((until, _)) = self.export_backoff {
            if Instant::now() < until {
                return;
            }
        }
        let mut to_export: Vec<SpanRecord> = Vec::new();
        // Where each execution's spans start in `to_export` (and, last, where they end).
        let mut bounds: Vec<usize> = Vec::new();
        let mut marks: Vec<Converted> = Vec::new();
        let now = Instant::now();
        let arns: Vec<String> = arns.into_iter().filter(|a| self.pending.contains(a) && self.parked.get(a).is_none_or(|retry_at| now >= *retry_at)).collect();
        if arns.is_empty() {
            return;
        }
        let mut histories = HashMap::new();
        for (i, arn) in arns.iter().enumerate() {
            // Histories are read a group at a time: one store call per group, and only a group's
            // events in memory at once (the spans they give are smaller).
            if i % HISTORY_GROUP == 0 {
                let group: Vec<&str> = arns[i..(i + HISTORY_GROUP).min(arns.len())].iter().map(String::as_str).collect();
                histories = match self.store.histories(&group).await {
                    Ok(histories) => histories,
                    // Unknown is not "nothing exported": that would send and observe every span
                    // again. What was converted so far still goes out.
                    Err(e) => {
                        self.events.emit(StoreFailed { doing: "read the stored events and exported spans", error: &e });
                        break;
                    }
                };
            }
            let Some(t) = self.tracked.get(arn).cloned() else {
                continue;
            };
            let arn = arn.clone();
            let History { node_events, flow_events, exported } = histories.remove(&arn).unwrap_or_default();
            let status = t.status.clone();
            let finished = status.is_terminal() && t.final_read;
            let labels = self.labels(&t);
            let definition = definitions.get(&arn).cloned().flatten();
            let view = ExecutionView {
                arn: &t.arn,
                flow_id: &t.flow_id,
                flow_name: &labels.flow_name,
                alias: &t.alias,
                version: &t.version,
                status: &status,
                created_at: Timestamp(t.created_at),
                ended_at: t.ended_at.map(Timestamp),
                finished,
                definition: definition.as_deref(),
                errors: t.errors.as_deref().unwrap_or(&[]),
                node_events: &node_events,
                flow_events: &flow_events,
            };
            let conversion = convert::convert(&view, &self.policy);
            // Count the problems of events not checked before, once: the marks are kept (and
            // saved when something was counted) before the export, so that an export retried
            // during an outage does not count them again.
            let mut t = t;
            let mut counted = false;
            for p in &conversion.problems {
                let new = match p.event {
                    Some((false, i)) => i >= t.node_checked,
                    Some((true, i)) => i >= t.flow_checked,
                    None => true,
                };
                if new {
                    self.events.emit(ProblemFound { reason: p.reason, detail: &p.detail });
                    counted = true;
                }
            }
            t.node_checked = node_events.len();
            t.flow_checked = flow_events.len();
            if let ExecutionStatus::Unknown(s) = &status {
                if !t.unknown_status_counted {
                    self.events.emit(ProblemFound { reason: "unknown_status", detail: s });
                    t.unknown_status_counted = true;
                    counted = true;
                }
            }
            if counted {
                if let Err(e) = self.store.save_all(std::slice::from_ref(&t)).await {
                    self.events.emit(StoreFailed { doing: "save which problems were counted", error: &e });
                }
            }
            self.tracked.insert(arn.clone(), t.clone());
            let total = conversion.spans.len();
            let mut ids = Vec::new();
            let mut root = None;
            bounds.push(to_export.len());
            for span in conversion.spans {
                if span.parent_span_id.is_none() {
                    root = Some(span.clone());
                }
                if !exported.contains(&span.span_id) {
                    ids.push(span.span_id);
                    to_export.push(span);
                }
            }
            marks.push(Converted { checkpoint: ExportMark { execution: t, exported: ids, done: finished }, root, spans: total });
        }
        if marks.is_empty() {
            return;
        }
        bounds.push(to_export.len());
        let (deliveries, retry_error) = self.send(&mut to_export, &bounds).await;
        match retry_error {
            Some(e) => {
                let delay = self.export_backoff.map(|(_, d)| (d * 2).min(Duration::from_secs(60))).unwrap_or(Duration::from_secs(1));
                self.export_backoff = Some((Instant::now() + delay, delay));
                self.events.emit(ExportBackedOff { error: &e, retry_in: delay });
            }
            None => self.export_backoff = None,
        }
        // Executions refused for good wait aside; the others go on.
        let mut accepted_marks = Vec::new();
        let mut accepted_spans = Vec::new();
        for ((mark, delivery), range) in marks.into_iter().zip(deliveries).zip(bounds.windows(2).map(|w| w[0]..w[1])) {
            match delivery {
                Delivery::Accepted => {
                    accepted_spans.extend(range);
                    accepted_marks.push(mark);
                }
                Delivery::Refused { reason, message } => self.park(&mark.checkpoint.execution, reason, message),
                Delivery::NotSent => {}
            }
        }
        if accepted_marks.is_empty() {
            return;
        }
        let batch: Vec<ExportMark> = accepted_marks.iter().map(|c| c.checkpoint.clone()).collect();
        if let Err(e) = self.store.mark_exported(&batch).await {
            self.events.emit(StoreFailed { doing: "checkpoint exported spans (they are exported again)", error: &e });
            return;
        }
        self.events.emit(SpansExported(accepted_spans.len()));
        self.spans_here += accepted_spans.len() as u64;
        // Node metrics, once per span: these spans were exported for the first time.
        let labels: HashMap<[u8; 16], FlowLabels> =
            accepted_marks.iter().map(|c| (crate::span::trace_id(&c.checkpoint.execution.arn), self.labels(&c.checkpoint.execution))).collect();
        for span in accepted_spans.into_iter().map(|i| &to_export[i]).filter(|s| s.parent_span_id.is_some()) {
            if let Some(labels) = labels.get(&span.trace_id) {
                self.events.emit(NodeSpanExported { labels, span });
            }
        }
        for Converted { checkpoint: ExportMark { execution: t, done, .. }, root, spans: total } in accepted_marks {
            self.unpark(&t.arn);
            if done {
                if let Some(root) = root {
                    self.events.emit(ExecutionFinished { labels: &self.labels(&t), arn: &t.arn, status: t.status.as_str(), root: &root, spans: total });
                }
                *self.finished_here.entry(t.status.as_str().to_string()).or_default() += 1;
                self.tracked.remove(&t.arn);
                self.pending.remove(&t.arn);
                if t.version == "DRAFT" {
                    self.snapshots.remove(&(t.flow_id.clone(), format!("DRAFT:{}", t.arn)));
                }
            } else {
                self.pending.remove(&t.arn);
                self.tracked.insert(t.arn.clone(), t);
            }
        }
    }
}
