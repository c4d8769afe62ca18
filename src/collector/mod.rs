//! The collector (SPEC §2, §9, §10): discovers executions, pages incrementally through both
//! event streams, stores what it read, converts, exports, and only then checkpoints.
//!
//! One pass is `cycle`: list the flows (with an early stop when the order is proven), pick the
//! executions that have work, and process them in chunks: fetch concurrently, persist events,
//! convert, export the chunk's new spans in batches, mark them exported, update the metrics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;

use crate::config::{Config, PollConfig};
use crate::convert::{self, ContentPolicy, ExecutionView};
use crate::export::{ExportError, Exporter};
use crate::metrics::{FlowLabels, Metrics};
use crate::model::{ExecutionStatus, FlowDefinition, Timestamp};
use crate::source::{ApiError, ErrorKind, FlowSource};
use crate::span::{hex, SpanRecord};
use crate::state::{ExportMark, History, StateStore, StreamRead};

mod board;
mod discovery;
mod fetch;
pub mod lifecycle;
mod plan;

use fetch::{fetch, Fetched};
use plan::Work;

use crate::timefmt::now_nanos;
use lifecycle::Tracked;

const SECOND: i64 = 1_000_000_000;

/// A configured flow with its AWS client.
pub struct Flow {
    pub id: String,
    pub name: String,
    pub aliases: Vec<String>,
    pub source: FlowSource,
}

pub use board::{FinishedExecution, FinishedHook, FlowStatus, ParkedExecution, StatusBoard};

pub struct Collector {
    flows: Vec<Flow>,
    store: Arc<dyn StateStore>,
    exporter: Arc<Exporter>,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    policy: ContentPolicy,
    poll: PollConfig,
    tracked: HashMap<String, Tracked>,
    snapshots: HashMap<(String, String), Option<Arc<FlowDefinition>>>,
    export_backoff: Option<(Instant, Duration)>,
    /// Executions the OTLP endpoint refused for good, with when to offer them again.
    parked: HashMap<String, Instant>,
    /// Executions with spans that may still need exporting (all active ones after a start).
    pending: HashSet<String>,
    on_finished: Option<FinishedHook>,
    /// Problems already logged, by reason (each kind is logged once).
    logged_problems: HashSet<&'static str>,
    /// Executions this process finished, by status, and spans it exported.
    finished_here: std::collections::BTreeMap<String, usize>,
    spans_here: u64,
    /// (flow, alias) pairs seen: their gauges stay (at 0) when nothing runs.
    seen_aliases: HashSet<(String, String)>,
}

/// Flow definitions kept parsed in memory; DRAFT ones (one per execution) are dropped first.
const SNAPSHOT_CACHE_ENTRIES: usize = 256;

/// How long an execution refused for good waits before its spans are offered again.
const PARK_RETRY: Duration = Duration::from_secs(15 * 60);

/// What became of one execution's spans in one export.
#[derive(Clone, Debug)]
enum Delivery {
    Accepted,
    /// Refused for good: the execution is parked.
    Refused {
        reason: &'static str,
        message: String,
    },
    /// Not sent, or not accepted yet (a retryable failure): retried after the backoff.
    NotSent,
}

/// An execution converted in this pass: its state, the span ids to mark, whether it is done,
/// its root span (when done) and how many spans it has in all.
type Mark = (Tracked, Vec<[u8; 8]>, bool, Option<SpanRecord>, usize);

impl Collector {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        flows: Vec<Flow>,
        store: Arc<dyn StateStore>,
        exporter: Arc<Exporter>,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
        config: &Config,
        on_finished: Option<FinishedHook>,
    ) -> Result<Collector, crate::state::StateError> {
        let loaded = store.load().await?;
        let policy = ContentPolicy {
            mode: config.traces.capture_content,
            max_bytes: config.traces.max_content_bytes,
            redact: config.traces.redact.iter().filter_map(|p| regex::Regex::new(p).ok()).collect(),
        };
        for flow in &flows {
            for alias in &flow.aliases {
                metrics.init_flow(&FlowLabels { flow_id: flow.id.clone(), flow_name: flow.name.clone(), alias: alias.clone() });
            }
        }
        let pending = loaded.iter().map(|t| t.arn.clone()).collect();
        let tracked: HashMap<String, Tracked> = loaded.into_iter().map(|t| (t.arn.clone(), t)).collect();
        metrics.executions_tracked.set(tracked.len() as i64);
        Ok(Collector {
            flows,
            store,
            exporter,
            metrics,
            board,
            policy,
            poll: config.poll.clone(),
            tracked,
            snapshots: HashMap::new(),
            export_backoff: None,
            parked: HashMap::new(),
            pending,
            on_finished,
            logged_problems: HashSet::new(),
            finished_here: Default::default(),
            spans_here: 0,
            seen_aliases: HashSet::new(),
        })
    }

    /// "N executions exported (Succeeded: a, ...), M spans": what this process did.
    pub fn summary(&self) -> String {
        let total: usize = self.finished_here.values().sum();
        let by_status: Vec<String> = self.finished_here.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        format!("{total} executions exported ({}), {} spans", by_status.join(", "), self.spans_here)
    }

    pub fn tracked_count(&self) -> usize {
        self.tracked.len()
    }

    fn flow_index(&self, flow_id: &str) -> Option<usize> {
        self.flows.iter().position(|f| f.id == flow_id)
    }

    fn labels(&self, t: &Tracked) -> FlowLabels {
        let name = self.flow_index(&t.flow_id).map(|i| self.flows[i].name.clone()).unwrap_or_else(|| t.flow_id.clone());
        FlowLabels { flow_id: t.flow_id.clone(), flow_name: name, alias: t.alias.clone() }
    }

    /// What each tracked execution needs now.
    fn plan(&self, now: i64) -> Vec<(String, Work)> {
        let settle = self.poll.settle_secs as i64 * SECOND;
        let mut work: Vec<(String, Work)> =
            self.tracked.values().filter_map(|t| Some((t.arn.clone(), plan::work_for(t, now, settle, self.pending.contains(&t.arn))?))).collect();
        work.sort_by(|a, b| a.0.cmp(&b.0));
        work
    }

    /// One pass: discovery (optional), then every execution that has work.
    pub async fn cycle(&mut self, discover: bool, admit: bool, stop: &watch::Receiver<bool>) {
        if discover {
            self.discover_all(false, admit).await;
        }
        // Ready once every flow has been polled (successfully or not), not after the backlog.
        self.board.set_ready();
        let now = now_nanos();
        self.update_running_gauges();
        let work = self.plan(now);
        let chunk_size = (self.poll.concurrency * 8).max(16);
        for chunk in work.chunks(chunk_size) {
            if *stop.borrow() {
                break;
            }
            self.process_chunk(chunk).await;
        }
        self.metrics.executions_tracked.set(self.tracked.len() as i64);
        self.update_running_gauges();
    }

    fn update_running_gauges(&self) {
        // (running count, oldest running creation time) per flow and alias; aliases seen
        // before keep their series (at 0) when nothing runs.
        let mut counts: HashMap<(String, String), (i64, Option<i64>)> = HashMap::new();
        for flow in &self.flows {
            for alias in &flow.aliases {
                counts.insert((flow.id.clone(), alias.clone()), (0, None));
            }
        }
        for (flow_id, alias) in &self.seen_aliases {
            counts.entry((flow_id.clone(), alias.clone())).or_insert((0, None));
        }
        for t in self.tracked.values() {
            let entry = counts.entry((t.flow_id.clone(), t.alias.clone())).or_insert((0, None));
            if t.status == "Running" {
                entry.0 += 1;
                entry.1 = Some(entry.1.map_or(t.created_at, |o| o.min(t.created_at)));
            }
        }
        let mut per_flow: HashMap<String, usize> = HashMap::new();
        for ((flow_id, alias), (n, oldest)) in counts {
            let name = self.flow_index(&flow_id).map(|i| self.flows[i].name.clone()).unwrap_or_else(|| flow_id.clone());
            let labels = FlowLabels { flow_id: flow_id.clone(), flow_name: name, alias };
            self.metrics.executions_running.get_or_create(&labels.with(&[])).set(n);
            self.metrics.oldest_running_start.get_or_create(&labels.with(&[])).set(oldest.map_or(0.0, |t| t as f64 / 1e9));
            *per_flow.entry(flow_id).or_default() += n as usize;
        }
        for (flow_id, n) in per_flow {
            self.board.update(&flow_id, |s| s.running = n);
        }
    }

    async fn definition_for(&mut self, t: &Tracked) -> Result<Option<Arc<FlowDefinition>>, ApiError> {
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
                    self.count_problem("bad_snapshot", &format!("flow {} version {}: {e}", t.flow_id, t.version));
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

    fn count_problem(&mut self, reason: &'static str, detail: &str) {
        self.metrics.invalid_events.get_or_create(&vec![("reason", reason.to_string())]).inc();
        if self.logged_problems.insert(reason) {
            tracing::warn!(reason, detail, "bad data from the API: counted and skipped (logged once per kind)");
        }
    }

    async fn process_chunk(&mut self, chunk: &[(String, Work)]) {
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
                    if let Some(t) = self.tracked.get(&arn) {
                        let flow_id = t.flow_id.clone();
                        if matches!(e.kind, ErrorKind::AccessDenied) {
                            self.board.update(&flow_id, |s| s.last_error = Some(e.to_string()));
                        }
                    }
                }
            }
        }
        // Persist what was read, in one transaction (before exporting: the events are the
        // durable backlog).
        let mut reads = Vec::with_capacity(fetched.len());
        for f in fetched {
            for event in f.new_node.iter().chain(&f.new_flow) {
                self.metrics.events_received.get_or_create(&vec![("event_type", event.kind_label().to_string())]).inc();
                if let Some(ts) = event.timestamp() {
                    self.metrics.event_lag.observe(((now - ts.0) as f64 / 1e9).max(0.0));
                }
            }
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
                Err(e) => tracing::error!(error = %e, "cannot save events to the state store; retried next cycle"),
            }
        }
        self.export_pending(chunk.iter().map(|(a, _)| a.clone()).filter(|a| definitions.contains_key(a)).collect(), &definitions).await;
    }

    /// Converts the given executions, exports their spans not exported yet, and records them.
    async fn export_pending(&mut self, arns: Vec<String>, definitions: &HashMap<String, Option<Arc<FlowDefinition>>>) {
        if let Some((until, _)) = self.export_backoff {
            if Instant::now() < until {
                return;
            }
        }
        let mut to_export: Vec<SpanRecord> = Vec::new();
        // Where each execution's spans start in `to_export` (and, last, where they end).
        let mut bounds: Vec<usize> = Vec::new();
        let mut marks: Vec<Mark> = Vec::new();
        let now = Instant::now();
        let arns: Vec<String> = arns.into_iter().filter(|a| self.pending.contains(a) && self.parked.get(a).is_none_or(|retry_at| now >= *retry_at)).collect();
        if arns.is_empty() {
            return;
        }
        // Unknown is not "nothing exported": that would send and observe every span again.
        let mut histories = match self.store.histories(&arns.iter().map(String::as_str).collect::<Vec<_>>()).await {
            Ok(histories) => histories,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stored events and exported spans; these executions wait for the next cycle");
                return;
            }
        };
        for arn in arns {
            let Some(t) = self.tracked.get(&arn).cloned() else {
                continue;
            };
            let History { node_events, flow_events, exported } = histories.remove(&arn).unwrap_or_default();
            let status = ExecutionStatus::parse(&t.status);
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
                    self.count_problem(p.reason, &p.detail);
                    counted = true;
                }
            }
            t.node_checked = node_events.len();
            t.flow_checked = flow_events.len();
            if let ExecutionStatus::Unknown(s) = &status {
                if !t.unknown_status_counted {
                    self.count_problem("unknown_status", s);
                    t.unknown_status_counted = true;
                    counted = true;
                }
            }
            if counted {
                if let Err(e) = self.store.save_all(std::slice::from_ref(&t)).await {
                    tracing::error!(error = %e, "cannot save which problems were counted");
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
            marks.push((t, ids, finished, root, total));
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
                tracing::warn!(error = %e, retry_in = ?delay, "span export failed; what was not accepted is not checkpointed and is retried later");
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
                Delivery::Refused { reason, message } => self.park(&mark.0, reason, message),
                Delivery::NotSent => {}
            }
        }
        if accepted_marks.is_empty() {
            return;
        }
        let batch: Vec<ExportMark> =
            accepted_marks.iter().map(|(t, ids, done, _, _)| ExportMark { execution: t.clone(), exported: ids.clone(), done: *done }).collect();
        if let Err(e) = self.store.mark_exported(&batch).await {
            tracing::error!(error = %e, "cannot checkpoint exported spans; they will be exported again");
            return;
        }
        self.metrics.spans_exported.inc_by(accepted_spans.len() as u64);
        self.spans_here += accepted_spans.len() as u64;
        // Node metrics, once per span: these spans were exported for the first time.
        let labels: HashMap<[u8; 16], FlowLabels> = accepted_marks.iter().map(|(t, ..)| (crate::span::trace_id(&t.arn), self.labels(t))).collect();
        for span in accepted_spans.into_iter().map(|i| &to_export[i]).filter(|s| s.parent_span_id.is_some()) {
            if let Some(labels) = labels.get(&span.trace_id) {
                self.observe_node(labels, span);
            }
        }
        for (t, _, done, root, total) in accepted_marks {
            self.unpark(&t.arn);
            if done {
                if let Some(root) = root {
                    self.observe_finished(&t, &root, total);
                }
                *self.finished_here.entry(t.status.clone()).or_default() += 1;
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

    /// Sends the spans of several executions (`spans[bounds[i]..bounds[i + 1]]` is execution
    /// i's) in requests bounded by span count and encoded bytes, cutting down any span larger
    /// than a request. A permanent refusal is narrowed down by halving the executions sent
    /// together until the one responsible is found; a retryable failure stops the sending (the
    /// rest waits for the backoff). Returns each execution's delivery and the retryable error.
    async fn send(&self, spans: &mut [SpanRecord], bounds: &[usize]) -> (Vec<Delivery>, Option<ExportError>) {
        let (max_spans, max_bytes) = (self.exporter.batch_size(), self.exporter.max_batch_bytes());
        for span in spans.iter_mut() {
            if crate::export::cut_to_fit(span, max_bytes.saturating_sub(crate::export::REQUEST_OVERHEAD)) {
                self.metrics.spans_cut.inc();
                tracing::warn!(span = %span.name, trace_id = %hex(&span.trace_id), max_bytes, "span larger than traces.max_batch_bytes; its content was cut to fit");
            }
        }
        let executions = bounds.len() - 1;
        let mut deliveries = vec![Delivery::NotSent; executions];
        let mut queue: VecDeque<std::ops::Range<usize>> = VecDeque::new();
        queue.push_back(0..executions);
        while let Some(group) = queue.pop_front() {
            let first = bounds[group.start];
            let sizes: Vec<usize> = spans[first..bounds[group.end]].iter().map(crate::export::encoded_len_estimate).collect();
            let mut failure = None;
            for batch in crate::export::pack(&sizes, max_spans, max_bytes) {
                if let Err(e) = self.exporter.export(&spans[first + batch.start..first + batch.end]).await {
                    self.metrics.span_export_errors.inc();
                    failure = Some(e);
                    break;
                }
            }
            match failure {
                None => deliveries[group].fill(Delivery::Accepted),
                Some(ExportError::Permanent { reason, message }) if group.len() == 1 => deliveries[group.start] = Delivery::Refused { reason, message },
                Some(ExportError::Permanent { .. }) => {
                    let middle = group.start + group.len() / 2;
                    queue.push_front(middle..group.end);
                    queue.push_front(group.start..middle);
                }
                Some(e) => return (deliveries, Some(e)),
            }
        }
        (deliveries, None)
    }

    /// Sets an execution the endpoint refused for good aside, counted and shown on `/`; its
    /// spans are offered again after `PARK_RETRY`, while the others go on.
    fn park(&mut self, t: &Tracked, reason: &'static str, message: String) {
        tracing::error!(arn = %t.arn, reason, error = %message, retry_in = ?PARK_RETRY, "the OTLP endpoint refused this execution's spans for good; it is set aside and retried rarely");
        if !self.parked.contains_key(&t.arn) {
            self.metrics.span_export_refused.get_or_create(&vec![("reason", reason.to_string())]).inc();
        }
        self.parked.insert(t.arn.clone(), Instant::now() + PARK_RETRY);
        self.metrics.executions_parked.set(self.parked.len() as i64);
        self.board.park(&t.flow_id, &t.arn, reason, &message);
    }

    fn unpark(&mut self, arn: &str) {
        if self.parked.remove(arn).is_some() {
            self.metrics.executions_parked.set(self.parked.len() as i64);
            self.board.unpark(arn);
        }
    }

    fn observe_node(&self, labels: &FlowLabels, span: &SpanRecord) {
        let facts = &span.facts;
        let Some(node) = facts.node.as_deref() else {
            return;
        };
        let node = self.metrics.node(node);
        let node_type = if self.metrics.node_labels { facts.node_type.as_str() } else { "" };
        if !facts.incomplete {
            let status = if facts.failure_code.is_some() { "failed" } else { "ok" };
            self.metrics
                .node_duration
                .get_or_create(&labels.with(&[("node", node), ("node_type", node_type), ("status", status)]))
                .observe((span.end - span.start) as f64 / 1e9);
        }
        if let Some(code) = &facts.failure_code {
            self.metrics.node_failures.get_or_create(&labels.with(&[("node", node), ("error_code", code)])).inc();
        }
        for condition in &facts.satisfied_conditions {
            self.metrics.condition_results.get_or_create(&labels.with(&[("node", node), ("condition", condition)])).inc();
        }
        if facts.input_tokens > 0 {
            self.metrics.node_tokens.get_or_create(&labels.with(&[("node", node), ("token_type", "input")])).inc_by(facts.input_tokens as u64);
        }
        if facts.output_tokens > 0 {
            self.metrics.node_tokens.get_or_create(&labels.with(&[("node", node), ("token_type", "output")])).inc_by(facts.output_tokens as u64);
        }
    }

    fn observe_finished(&self, t: &Tracked, root: &SpanRecord, spans: usize) {
        let labels = self.labels(t);
        let status = t.status.as_str();
        let with_status = labels.with(&[("status", status)]);
        let duration = (root.end - root.start) as f64 / 1e9;
        let trace_id = hex(&root.trace_id);
        self.metrics.executions_total.get_or_create(&with_status).inc();
        self.metrics.execution_duration.get_or_create(&with_status).observe(duration, Some(vec![("trace_id", trace_id.clone())]), None);
        // The latest end seen: a backlog is processed in ARN order, not in the order it ended.
        let last_end = self.metrics.last_execution_end.get_or_create(&with_status);
        if last_end.get() < root.end as f64 / 1e9 {
            last_end.set(root.end as f64 / 1e9);
        }
        let failure_code = match status {
            "TimedOut" => Some("ExecutionTimedOut".to_string()),
            "Failed" => Some(match root.attribute("error.type") {
                Some(crate::span::AttrValue::Str(code)) => code.clone(),
                _ => "Failed".to_string(),
            }),
            _ => None,
        };
        if let Some(code) = failure_code {
            self.metrics.flow_failures.get_or_create(&labels.with(&[("error_code", &code)])).inc();
        }
        let end = root.end;
        self.board.update(&t.flow_id, |s| {
            // A static status: the deque holds an hour of executions, without a String each.
            s.recent.push_back((end, crate::metrics::STATUSES.iter().copied().find(|known| *known == status).unwrap_or("other")));
            let hour_ago = now_nanos() - 3600 * SECOND;
            while s.recent.front().is_some_and(|(e, _)| *e < hour_ago) {
                s.recent.pop_front();
            }
        });
        tracing::info!(flow = %labels.flow_name, status, duration_secs = duration, spans, trace_id = %trace_id, arn = %t.arn, "execution exported");
        if let Some(hook) = &self.on_finished {
            hook(&FinishedExecution {
                flow_name: labels.flow_name.clone(),
                status: status.to_string(),
                duration_secs: duration,
                spans,
                trace_id,
                arn: t.arn.clone(),
            });
        }
    }

    /// Forgets finished executions older than twice the lookback window.
    pub async fn prune(&mut self) {
        let before = now_nanos() - 2 * self.poll.lookback_secs as i64 * SECOND;
        let _ = self.store.prune(before).await;
    }

    /// The service loop: a cycle every `interval_secs` until `stop`.
    pub async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        let interval = Duration::from_secs(self.poll.interval_secs);
        let mut cycles: u64 = 0;
        loop {
            let started = Instant::now();
            self.cycle(true, true, &stop).await;
            cycles += 1;
            if cycles % 100 == 0 {
                self.prune().await;
            }
            if *stop.borrow() {
                break;
            }
            let wait = interval.saturating_sub(started.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
    }

    /// `run --once`: list each flow once (again with backoff while its listing fails), then
    /// work until every execution found is finished and exported, polling running ones once
    /// per `interval_secs` as the service does. Stops when `wait` runs out.
    pub async fn run_once(&mut self, wait: Duration, stop: watch::Receiver<bool>) -> OnceOutcome {
        let started = Instant::now();
        let interval = Duration::from_secs(self.poll.interval_secs);
        let mut unlisted: Vec<usize> = (0..self.flows.len()).collect();
        let mut listed: Vec<usize> = Vec::new();
        let mut listing_backoff = ONCE_LISTING_BACKOFF;
        let mut next_listing = started;
        let mut targets: HashSet<String> = HashSet::new();
        let show_progress = std::io::stderr().is_terminal();
        loop {
            let cycle_started = Instant::now();
            // Re-list (without admitting new executions) only while some target still runs.
            let any_running = targets.iter().any(|a| self.tracked.get(a).is_some_and(|t| !ExecutionStatus::parse(&t.status).is_terminal()));
            if any_running {
                self.discover_flows(&listed, false, false).await;
            }
            if !unlisted.is_empty() && cycle_started >= next_listing {
                let failed = self.discover_flows(&unlisted, true, true).await;
                listed.extend(unlisted.iter().filter(|f| !failed.contains(f)));
                targets.extend(self.tracked.keys().cloned());
                if !failed.is_empty() {
                    next_listing = Instant::now() + listing_backoff;
                    listing_backoff = (listing_backoff * 2).min(ONCE_LISTING_BACKOFF_MAX);
                }
                unlisted = failed;
            }
            self.cycle(false, false, &stop).await;
            let left: Vec<String> = targets.iter().filter(|a| self.tracked.contains_key(*a)).cloned().collect();
            if show_progress {
                eprint!("\r{}", progress_bar(targets.len() - left.len(), targets.len(), 30));
            }
            if (left.is_empty() && unlisted.is_empty()) || *stop.borrow() || started.elapsed() >= wait {
                if show_progress {
                    eprintln!();
                }
                let mut unfinished = left;
                unfinished.sort();
                let never_listed = unlisted.iter().map(|&f| self.flows[f].id.clone()).collect();
                return OnceOutcome { unfinished, never_listed };
            }
            // The next poll is due one interval after this one started; a failed listing is
            // retried at its backoff, when that comes first.
            let mut due = cycle_started + interval;
            if !unlisted.is_empty() {
                due = due.min(next_listing);
            }
            let deadline = started + wait;
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(due.min(deadline).max(Instant::now()).into()) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// What `run --once` leaves undone: executions not finished (ARNs) and flows never listed.
#[derive(Debug, Default)]
pub struct OnceOutcome {
    pub unfinished: Vec<String>,
    pub never_listed: Vec<String>,
}

impl OnceOutcome {
    pub fn complete(&self) -> bool {
        self.unfinished.is_empty() && self.never_listed.is_empty()
    }
}

/// `run --once`: the first retry of a failed listing, doubled up to the maximum.
const ONCE_LISTING_BACKOFF: Duration = Duration::from_secs(1);
const ONCE_LISTING_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// `[#######-------]  45% 4500/10000 executions exported`, for a terminal.
fn progress_bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(width).min(width);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    format!("[{}{}] {percent:>3}% {done}/{total} executions exported", "#".repeat(filled), "-".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::progress_bar;

    #[test]
    fn progress_bar_fills_in_proportion() {
        assert_eq!(progress_bar(0, 4, 8), "[--------]   0% 0/4 executions exported");
        assert_eq!(progress_bar(1, 4, 8), "[##------]  25% 1/4 executions exported");
        assert_eq!(progress_bar(4, 4, 8), "[########] 100% 4/4 executions exported");
        assert_eq!(progress_bar(0, 0, 4), "[####] 100% 0/0 executions exported");
    }
}
