//! What can happen in the collector, one type each (in the manner of vector's internal events).
//! `emit` writes at most one log line and bumps its counters with bounded labels; the status
//! board and the demo's console are consumers of the same events. The parts of the collector
//! say what happened; only this module says how it shows.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::board::{FinishedExecution, FinishedHook, StatusBoard};
use super::SECOND;
use crate::metrics::{FlowLabels, Metrics, STATUSES};
use crate::model::Event;
use crate::span::{hex, SpanRecord, SpanTally};
use crate::timefmt::now_nanos;

/// Where events go: the metrics registry, the status board, the demo's console.
pub struct Instruments {
    pub metrics: Arc<Metrics>,
    pub board: Arc<StatusBoard>,
    on_finished: Option<FinishedHook>,
    /// Problems already logged, by reason (each kind is logged once).
    logged_problems: Mutex<HashSet<&'static str>>,
    /// When a partial success was last logged, and the spans dropped since.
    rejections_logged: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Instruments {
    pub fn new(metrics: Arc<Metrics>, board: Arc<StatusBoard>, on_finished: Option<FinishedHook>) -> Instruments {
        Instruments { metrics, board, on_finished, logged_problems: Mutex::new(HashSet::new()), rejections_logged: Mutex::new((None, 0)) }
    }

    pub fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }
}

pub trait InternalEvent {
    fn emit(self, to: &Instruments);
}

/// Flows this process no longer works on: their series go.
pub struct FlowsForgotten<'a>(pub &'a [String]);

impl InternalEvent for FlowsForgotten<'_> {
    fn emit(self, to: &Instruments) {
        for flow_id in self.0 {
            to.metrics.forget_flow(flow_id);
        }
    }
}

/// A flow and alias became known: its series known in advance start at 0.
pub struct AliasSeen<'a>(pub &'a FlowLabels);

impl InternalEvent for AliasSeen<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics.init_flow(self.0);
    }
}

pub struct ListingSucceeded<'a> {
    pub flow_id: &'a str,
    pub at: i64,
}

impl InternalEvent for ListingSucceeded<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics.last_successful_poll.get_or_create(&vec![("flow_id", self.flow_id.to_string())]).set(self.at as f64 / 1e9);
        to.board.update(self.flow_id, |s| {
            s.last_successful_poll = Some(self.at);
            s.last_error = None;
        });
    }
}

pub struct ListingFailed<'a> {
    pub flow_id: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ListingFailed<'_> {
    fn emit(self, to: &Instruments) {
        tracing::warn!(flow_id = %self.flow_id, error = %self.error, "listing executions failed; other flows go on");
        to.board.update(self.flow_id, |s| s.last_error = Some(self.error.to_string()));
    }
}

/// Reading an execution was denied: shown as the flow's last error (retried next cycle).
pub struct ReadDenied<'a> {
    pub flow_id: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ReadDenied<'_> {
    fn emit(self, to: &Instruments) {
        to.board.update(self.flow_id, |s| s.last_error = Some(self.error.to_string()));
    }
}

/// Every flow was polled once (successfully or not): the process is ready.
pub struct FirstPollDone;

impl InternalEvent for FirstPollDone {
    fn emit(self, to: &Instruments) {
        to.board.set_ready();
    }
}

pub struct EventsReceived<'a> {
    pub events: &'a [Event],
    pub now: i64,
}

impl InternalEvent for EventsReceived<'_> {
    fn emit(self, to: &Instruments) {
        // Counted by kind first: one series look-up per kind a read, not one per event.
        let mut by_kind: Vec<(&'static str, u64)> = Vec::new();
        for event in self.events {
            let kind = event.kind_label();
            match by_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => by_kind.push((kind, 1)),
            }
        }
        // The read's lags under one lock.
        let now = self.now;
        to.metrics.event_lag.observe_many(self.events.iter().filter_map(Event::timestamp).map(|ts| ((now - ts.0) as f64 / 1e9).max(0.0)));
        for (kind, n) in by_kind {
            to.metrics.events_received(kind, n);
        }
    }
}

/// Bad data from the API (or an unreadable snapshot): counted, logged once per kind.
pub struct ProblemFound<'a> {
    pub reason: &'static str,
    pub detail: &'a str,
}

impl InternalEvent for ProblemFound<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics.invalid_events.get_or_create(&vec![("reason", self.reason.to_string())]).inc();
        if to.logged_problems.lock().unwrap_or_else(|p| p.into_inner()).insert(self.reason) {
            tracing::warn!(reason = self.reason, detail = self.detail, "bad data from the API: counted and skipped (logged once per kind)");
        }
    }
}

pub struct TrackedCounted(pub usize);

impl InternalEvent for TrackedCounted {
    fn emit(self, to: &Instruments) {
        to.metrics.executions_tracked.set(self.0 as i64);
    }
}

/// The executions running now in one flow and alias, and the creation time of the oldest.
pub struct RunningCounted<'a> {
    pub labels: &'a FlowLabels,
    pub running: i64,
    pub oldest_created: Option<i64>,
}

impl InternalEvent for RunningCounted<'_> {
    fn emit(self, to: &Instruments) {
        let labels = to.metrics.flow_series(self.labels.with(&[]));
        to.metrics.executions_running.get_or_create(&labels).set(self.running);
        to.metrics.oldest_running_start.get_or_create(&labels).set(self.oldest_created.map_or(0.0, |t| t as f64 / 1e9));
    }
}

/// The executions running now in one flow, over its aliases (for `/`).
pub struct FlowRunningCounted<'a> {
    pub flow_id: &'a str,
    pub running: usize,
}

impl InternalEvent for FlowRunningCounted<'_> {
    fn emit(self, to: &Instruments) {
        to.board.update(self.flow_id, |s| s.running = self.running);
    }
}

/// A span over the request bound was cut down to fit.
pub struct SpanCut<'a> {
    pub span: &'a SpanRecord,
    pub max_bytes: usize,
}

impl InternalEvent for SpanCut<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics.spans_cut.inc();
        tracing::warn!(span = %self.span.name, trace_id = %hex(&self.span.trace_id), max_bytes = self.max_bytes, "span larger than traces.max_batch_bytes; its content was cut to fit");
    }
}

/// The endpoint accepted a request but said it dropped some of its spans (OTLP partial
/// success), or warned. Counted in `spans_rejected_total`;
/// logged at most once a minute, with the spans dropped since, and shown on `/`.
pub struct SpansRejected<'a> {
    pub partial: &'a crate::export::PartialSuccess,
    /// The spans of the request.
    pub sent: usize,
}

impl InternalEvent for SpansRejected<'_> {
    fn emit(self, to: &Instruments) {
        let rejected = self.partial.rejected_spans;
        to.metrics.spans_rejected.inc_by(rejected);
        to.board.add_dropped_spans(rejected, &self.partial.message);
        let mut last = to.rejections_logged.lock().unwrap_or_else(|p| p.into_inner());
        last.1 += rejected;
        if last.0.is_none_or(|at: std::time::Instant| at.elapsed() >= std::time::Duration::from_secs(60)) {
            tracing::warn!(
                rejected_spans = last.1,
                spans_in_request = self.sent,
                message = %self.partial.message,
                "the OTLP endpoint accepted spans but dropped some (partial success; not sent again, as OTLP requires); logged at most once a minute"
            );
            *last = (Some(std::time::Instant::now()), 0);
        }
    }
}

/// One OTLP request failed (retryable or not).
pub struct ExportRequestFailed;

impl InternalEvent for ExportRequestFailed {
    fn emit(self, to: &Instruments) {
        to.metrics.span_export_errors.inc();
    }
}

/// A retryable export failure: the sending waits for the backoff.
pub struct ExportBackedOff<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub retry_in: Duration,
}

impl InternalEvent for ExportBackedOff<'_> {
    fn emit(self, _: &Instruments) {
        tracing::warn!(error = %self.error, retry_in = ?self.retry_in, "span export failed; what was not accepted waits in the outbox and is sent again after the backoff");
    }
}

/// The endpoint refused an execution's spans for good; it is set aside.
pub struct ExecutionParked<'a> {
    pub flow_id: &'a str,
    pub arn: &'a str,
    pub reason: &'static str,
    pub message: &'a str,
    pub retry_in: Duration,
    /// Parked before (a rare retry that was refused again): not counted again.
    pub again: bool,
    pub parked_now: usize,
}

impl InternalEvent for ExecutionParked<'_> {
    fn emit(self, to: &Instruments) {
        tracing::error!(arn = %self.arn, reason = self.reason, error = %self.message, retry_in = ?self.retry_in, "the OTLP endpoint refused this execution's spans for good; it is set aside and retried rarely");
        if !self.again {
            to.metrics.span_export_refused.get_or_create(&vec![("reason", self.reason.to_string())]).inc();
        }
        to.metrics.executions_parked.set(self.parked_now as i64);
        to.board.park(self.flow_id, self.arn, self.reason, self.message);
    }
}

/// The outbox changed: what waits in it now, and its bound.
pub struct OutboxChanged {
    pub bytes: u64,
    pub max_bytes: u64,
}

impl InternalEvent for OutboxChanged {
    fn emit(self, to: &Instruments) {
        to.metrics.outbox_bytes.set(self.bytes as i64);
        to.metrics.outbox_max_bytes.set(self.max_bytes as i64);
    }
}

/// A checkpoint transaction was written: bytes of fold state and outbox parcels.
pub struct CheckpointWritten(pub u64);

impl InternalEvent for CheckpointWritten {
    fn emit(self, to: &Instruments) {
        to.metrics.checkpoint_bytes.inc_by(self.0);
    }
}

/// Replicas: the leases held now (flow ids), the live members, who holds what.
pub struct LeasesChanged<'a> {
    pub member: &'a str,
    /// A shared store (replicas): leases are news worth a log line.
    pub shared: bool,
    pub taken: &'a [String],
    pub lost: &'a [String],
    pub members: Option<usize>,
    pub holders: Option<Vec<(String, String)>>,
}

impl InternalEvent for LeasesChanged<'_> {
    fn emit(self, to: &Instruments) {
        for flow_id in self.taken {
            if self.shared {
                tracing::info!(flow_id = %flow_id, member = self.member, "this replica took the flow's lease");
            }
            to.metrics.lease_held.get_or_create(&vec![("flow_id", flow_id.clone())]).set(1);
        }
        for flow_id in self.lost {
            if self.shared {
                tracing::warn!(flow_id = %flow_id, member = self.member, "this replica no longer holds the flow's lease; it stops working on it");
            }
            // The flow's series live only on the replica that holds it.
            to.metrics.forget_flow(flow_id);
        }
        if let Some(members) = self.members {
            to.metrics.replicas.set(members as i64);
        }
        if let Some(holders) = self.holders {
            to.board.set_holders(self.member, holders);
        }
    }
}

/// This process left the replicas on purpose (shutdown, the end of `run --once`).
pub struct LeftReplicas<'a> {
    pub member: &'a str,
    pub flows: usize,
    pub error: Option<&'a crate::state::StateError>,
}

impl InternalEvent for LeftReplicas<'_> {
    fn emit(self, _: &Instruments) {
        match self.error {
            None => tracing::info!(member = self.member, flows = self.flows, "left the replicas: the leases are given back"),
            Some(e) => tracing::warn!(member = self.member, error = %e, "could not give the leases back; the other replicas take them when they expire"),
        }
    }
}

/// The state store can (or cannot) be reached. Down, it counts as a failed `coordinate`.
pub struct StoreReachable<'a> {
    pub up: bool,
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl InternalEvent for StoreReachable<'_> {
    fn emit(self, to: &Instruments) {
        let was_down = to.board.store_down();
        if !self.up {
            to.metrics.state_store_errors.get_or_create(&vec![("operation", "coordinate".to_string())]).inc();
        }
        if !self.up && !was_down {
            tracing::error!(error = %self.error.map(|e| e.to_string()).unwrap_or_default(), "the state store cannot be reached: work stops until it returns");
        }
        if self.up && was_down {
            tracing::info!("the state store is reachable again: work resumes");
        }
        to.metrics.state_store_up.set(i64::from(self.up));
        to.board.set_store_down(!self.up);
    }
}

/// A checkpoint refused: this replica's lease of a flow was lost.
pub struct CheckpointRejected<'a> {
    pub flow_key: &'a str,
}

impl InternalEvent for CheckpointRejected<'_> {
    fn emit(self, to: &Instruments) {
        tracing::warn!(flow = self.flow_key, "a checkpoint was refused: this replica's lease of the flow is gone (fenced); it drops the flow");
        to.metrics.checkpoint_rejected.inc();
    }
}

/// Reading paused (the outbox is full) or resumed.
pub struct ReadingPaused {
    pub paused: bool,
    pub bytes: u64,
    pub max_bytes: u64,
}

impl InternalEvent for ReadingPaused {
    fn emit(self, to: &Instruments) {
        to.metrics.reading_paused.set(i64::from(self.paused));
        to.board.set_reading_paused(self.paused.then_some((self.bytes, self.max_bytes)));
        if self.paused {
            tracing::warn!(
                outbox_bytes = self.bytes,
                max_bytes = self.max_bytes,
                "the outbox is full: reading pauses until the OTLP endpoint accepts spans again"
            );
        } else {
            tracing::info!(outbox_bytes = self.bytes, "the outbox has room again: reading resumes");
        }
    }
}

pub struct ExecutionUnparked<'a> {
    pub arn: &'a str,
    pub parked_now: usize,
}

impl InternalEvent for ExecutionUnparked<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics.executions_parked.set(self.parked_now as i64);
        to.board.unpark(self.arn);
    }
}

/// Spans accepted by the endpoint and checkpointed.
pub struct SpansExported(pub usize);

impl InternalEvent for SpansExported {
    fn emit(self, to: &Instruments) {
        to.metrics.spans_exported.inc_by(self.0 as u64);
    }
}

/// Node spans of one flow and alias exported for the first time: the node metrics of their
/// runs. Each series is looked up once for the batch, not once per span: a look-up builds,
/// hashes and compares the whole label set.
pub struct NodeSpansExported<'a> {
    pub labels: &'a FlowLabels,
    pub spans: &'a [&'a SpanTally],
}

impl InternalEvent for NodeSpansExported<'_> {
    fn emit(self, to: &Instruments) {
        let (labels, metrics) = (self.labels, &to.metrics);
        // (node, node_type, status) -> durations; (family, node, label value) -> sum. Hashed:
        // a batch holds a chunk's spans over every node of its flows, and a linear search
        // compared each span's node with most of the others (17 string comparisons a span).
        let mut durations: FxHashMap<DurationSeries, Vec<f64>> = FxHashMap::default();
        let mut counts: FxHashMap<(Count, &str, &str), u64> = FxHashMap::default();
        for span in self.spans {
            let facts = &span.facts;
            let Some(node) = facts.node.as_deref() else {
                continue;
            };
            let node = metrics.node(node);
            let node_type = if metrics.node_labels { facts.node_type.as_str() } else { "" };
            if !facts.incomplete {
                let status = if facts.failure_code.is_some() { "failed" } else { "ok" };
                durations.entry((node, node_type, status)).or_default().push((span.end - span.start) as f64 / 1e9);
            }
            if let Some(code) = &facts.failure_code {
                *counts.entry((Count::Failure, node, code.as_str())).or_default() += 1;
            }
            for condition in &facts.satisfied_conditions {
                *counts.entry((Count::Condition, node, condition.as_str())).or_default() += 1;
            }
            if facts.input_tokens > 0 {
                *counts.entry((Count::Tokens, node, "input")).or_default() += facts.input_tokens as u64;
            }
            if facts.output_tokens > 0 {
                *counts.entry((Count::Tokens, node, "output")).or_default() += facts.output_tokens as u64;
            }
        }
        for ((node, node_type, status), values) in durations {
            metrics
                .node_duration
                .get_or_create(&metrics.flow_series(labels.with(&[("node", node), ("node_type", node_type), ("status", status)])))
                .observe_many(values);
        }
        for ((family, node, value), n) in counts {
            let (family, label) = match family {
                Count::Failure => (&metrics.node_failures, "error_code"),
                Count::Condition => (&metrics.condition_results, "condition"),
                Count::Tokens => (&metrics.node_tokens, "token_type"),
            };
            family.get_or_create(&metrics.flow_series(labels.with(&[("node", node), (label, value)]))).inc_by(n);
        }
    }
}

/// A node duration series of `NodeSpansExported`: node, node type, status.
type DurationSeries<'a> = (&'a str, &'a str, &'a str);

/// The value of `key` in a short list of pairs, added by `new` when missing (a linear search:
/// the lists of a batch hold a few keys).
pub(super) fn add<K: PartialEq, V>(list: &mut Vec<(K, V)>, key: K, new: impl FnOnce() -> V) -> &mut V {
    let i = list.iter().position(|(k, _)| *k == key).unwrap_or_else(|| {
        list.push((key, new()));
        list.len() - 1
    });
    &mut list[i].1
}

/// The counters of `NodeSpansExported`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Count {
    Failure,
    Condition,
    Tokens,
}

/// An execution finished: its root span was accepted and it is checkpointed as done.
pub struct ExecutionFinished<'a> {
    pub labels: &'a FlowLabels,
    pub arn: &'a str,
    pub status: &'a str,
    pub root: &'a SpanTally,
    pub spans: usize,
}

impl InternalEvent for ExecutionFinished<'_> {
    fn emit(self, to: &Instruments) {
        let (labels, status, root, metrics) = (self.labels, self.status, self.root, &to.metrics);
        let series = metrics.finished_series(labels.with(&[("status", status)]));
        let duration = (root.end - root.start) as f64 / 1e9;
        let trace_id = hex(&root.trace_id);
        series.executions.inc();
        tracing::debug!(target: "bedrock_flow_exporter::counted", arn = %self.arn, "execution counted");
        series.duration.observe(duration, Some(vec![("trace_id", trace_id.clone())]), None);
        // The latest end seen: a backlog is processed in ARN order, not in the order it ended.
        if series.last_end.get() < root.end as f64 / 1e9 {
            series.last_end.set(root.end as f64 / 1e9);
        }
        let failure_code = match status {
            "TimedOut" => Some("ExecutionTimedOut".to_string()),
            "Failed" => Some(root.error_type.clone().unwrap_or_else(|| "Failed".to_string())),
            _ => None,
        };
        if let Some(code) = failure_code {
            metrics.flow_failures.get_or_create(&metrics.flow_series(labels.with(&[("error_code", &code)]))).inc();
        }
        let end = root.end;
        to.board.update(&labels.flow_id, |s| {
            // A static status: the deque holds an hour of executions, without a String each.
            s.recent.push_back((end, STATUSES.iter().copied().find(|known| *known == status).unwrap_or("other")));
            let hour_ago = now_nanos() - 3600 * SECOND;
            while s.recent.front().is_some_and(|(e, _)| *e < hour_ago) {
                s.recent.pop_front();
            }
        });
        tracing::info!(flow = %labels.flow_name, status, duration_secs = duration, spans = self.spans, trace_id = %trace_id, arn = %self.arn, "execution exported");
        if let Some(hook) = &to.on_finished {
            hook(&FinishedExecution {
                flow_name: labels.flow_name.clone(),
                status: status.to_string(),
                duration_secs: duration,
                spans: self.spans,
                trace_id,
                arn: self.arn.to_string(),
            });
        }
    }
}

/// The state store failed at something; the work waits for a later cycle. Counted by
/// `operation` (one of `metrics::STORE_OPERATIONS`) and shown on `/` with what it was doing.
pub struct StoreFailed<'a> {
    pub operation: &'static str,
    pub doing: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for StoreFailed<'_> {
    fn emit(self, to: &Instruments) {
        let error = self.error.to_string();
        tracing::error!(error = %error, "state store: cannot {}; retried on a later cycle", self.doing);
        to.metrics.state_store_errors.get_or_create(&vec![("operation", self.operation.to_string())]).inc();
        to.board.set_store_failure(self.doing, &error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{AttrValue, SpanStatus};

    fn instruments(hook: Option<FinishedHook>) -> Instruments {
        let board = Arc::new(StatusBoard::new(&[("ABCDEFGHIJ".into(), "flow".into())]));
        Instruments::new(Arc::new(Metrics::new(true)), board, hook)
    }

    fn sample(to: &Instruments, series: &str) -> Option<f64> {
        let (_, text) = to.metrics.render(false);
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    #[test]
    fn each_event_bumps_its_counters_and_reaches_the_board_and_the_console() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let console = seen.clone();
        let to = instruments(Some(Arc::new(move |f: &FinishedExecution| console.lock().unwrap().push((f.status.clone(), f.spans)))));
        for _ in 0..2 {
            to.emit(ProblemFound { reason: "duplicate_event", detail: "nodeOutputEvent repeated" });
        }
        assert_eq!(sample(&to, "bedrock_flow_exporter_invalid_events_total{reason=\"duplicate_event\"}"), Some(2.0));
        to.emit(ListingFailed { flow_id: "ABCDEFGHIJ", error: &"AccessDenied" });
        assert_eq!(to.board.flows()[0].last_error.as_deref(), Some("AccessDenied"));
        to.emit(ListingSucceeded { flow_id: "ABCDEFGHIJ", at: 5_000_000_000 });
        assert_eq!((to.board.flows()[0].last_error.clone(), to.board.flows()[0].last_successful_poll), (None, Some(5_000_000_000)));
        assert_eq!(sample(&to, "bedrock_flow_exporter_last_successful_poll_timestamp_seconds{flow_id=\"ABCDEFGHIJ\"}"), Some(5.0));
        let park = |again| ExecutionParked {
            flow_id: "ABCDEFGHIJ",
            arn: "arn:x",
            reason: "too_large",
            message: "413",
            retry_in: Duration::ZERO,
            again,
            parked_now: 1,
        };
        to.emit(park(false));
        to.emit(park(true));
        assert_eq!(sample(&to, "bedrock_flow_exporter_span_export_refused_total{reason=\"too_large\"}"), Some(1.0), "a refusal again is not counted again");
        assert_eq!(to.board.parked().len(), 1);
        to.emit(ExecutionUnparked { arn: "arn:x", parked_now: 0 });
        assert!(to.board.parked().is_empty());
        assert_eq!(sample(&to, "bedrock_flow_exporter_executions_parked"), Some(0.0));
        let labels = FlowLabels { flow_id: "ABCDEFGHIJ".into(), flow_name: "flow".into(), alias: "A".into() };
        let mut root = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "invoke_workflow flow".into(),
            start: now_nanos() - 3 * SECOND,
            end: now_nanos(),
            attributes: vec![("error.type".into(), AttrValue::Str("NODE_EXECUTION_FAILED".into()))],
            events: vec![],
            dropped_events: 0,
            links: vec![],
            status: SpanStatus::Error("failed".into()),
            facts: Default::default(),
        };
        let root = SpanTally::take(&mut root);
        assert_eq!(root.error_type.as_deref(), Some("NODE_EXECUTION_FAILED"), "the root's failure code goes with its tally");
        to.emit(ExecutionFinished { labels: &labels, arn: "arn:y", status: "Failed", root: &root, spans: 7 });
        let series = "{flow_id=\"ABCDEFGHIJ\",flow_name=\"flow\",alias=\"A\"";
        assert_eq!(sample(&to, &format!("bedrock_flow_executions_total{series},status=\"Failed\"}}")), Some(1.0));
        assert_eq!(sample(&to, &format!("bedrock_flow_failures_total{series},error_code=\"NODE_EXECUTION_FAILED\"}}")), Some(1.0));
        assert_eq!(to.board.flows()[0].recent.iter().map(|(_, s)| *s).collect::<Vec<_>>(), vec!["Failed"], "the board's last hour");
        assert_eq!(*seen.lock().unwrap(), vec![("Failed".to_string(), 7)], "the demo's console");
        // The series' handles are kept for the next execution, and go with the flow's series
        // (SPEC §11: a flow taken back counts from 0 again).
        to.emit(ExecutionFinished { labels: &labels, arn: "arn:z", status: "Failed", root: &root, spans: 7 });
        assert_eq!(sample(&to, &format!("bedrock_flow_executions_total{series},status=\"Failed\"}}")), Some(2.0));
        assert_eq!(sample(&to, &format!("bedrock_flow_execution_duration_seconds_count{series},status=\"Failed\"}}")), Some(2.0));
        to.emit(FlowsForgotten(&["ABCDEFGHIJ".to_string()]));
        assert_eq!(sample(&to, &format!("bedrock_flow_executions_total{series},status=\"Failed\"}}")), None, "forgotten");
        to.emit(ExecutionFinished { labels: &labels, arn: "arn:w", status: "Failed", root: &root, spans: 7 });
        assert_eq!(sample(&to, &format!("bedrock_flow_executions_total{series},status=\"Failed\"}}")), Some(1.0), "counted from 0 again");
        assert_eq!(sample(&to, &format!("bedrock_flow_execution_duration_seconds_count{series},status=\"Failed\"}}")), Some(1.0));
        let last_end = sample(&to, &format!("bedrock_flow_last_execution_end_timestamp_seconds{series},status=\"Failed\"}}"));
        assert_eq!(last_end, Some(root.end as f64 / 1e9), "the latest end of the flow taken back");
    }
}
