//! Metric names, HELP texts and label sets (SPEC §6) in one place, on a registry owned by the
//! caller, so that every test has its own. Encodes OpenMetrics (with exemplars) for scrapers
//! that ask for it and the Prometheus 0.0.4 text format otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// A classic histogram that takes a batch of observations under one lock
/// (`observe_many`), each one's bucket found by binary search, and is exposed exactly as
/// prometheus-client's own `Histogram` with the same buckets. Per event and per span, one lock
/// and a linear search each (the lags of a backlog all fall in the last bucket, which a linear
/// search reaches last) were most of what counting cost.
#[derive(Clone, Debug)]
pub struct BatchHistogram {
    inner: std::sync::Arc<std::sync::Mutex<BatchInner>>,
}

#[derive(Debug)]
struct BatchInner {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone), the last one `+Inf`, as
    /// prometheus-client keeps them (its encoder makes them cumulative).
    buckets: Vec<(f64, u64)>,
}

impl BatchHistogram {
    /// `bounds` ascending, as prometheus-client's `Histogram::new` takes them.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> BatchHistogram {
        let buckets = bounds.into_iter().filter(|upper| upper.is_finite()).chain(std::iter::once(f64::INFINITY)).map(|upper| (upper, 0)).collect();
        BatchHistogram { inner: std::sync::Arc::new(std::sync::Mutex::new(BatchInner { sum: 0.0, count: 0, buckets })) }
    }

    /// Observes every value of `values`, under one lock.
    pub fn observe_many(&self, values: impl IntoIterator<Item = f64>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let BatchInner { sum, count, buckets } = &mut *inner;
        let last = buckets.len() - 1;
        for value in values {
            *sum += value;
            *count += 1;
            // The first bucket whose bound is at least the value (NaN: the last, as
            // prometheus-client places it).
            let i = if value.is_nan() { last } else { buckets.partition_point(|(upper, _)| *upper < value).min(last) };
            buckets[i].1 += 1;
        }
    }
}

impl prometheus_client::metrics::TypedMetric for BatchHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for BatchHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = {
            let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            (inner.sum, inner.count, inner.buckets.clone())
        };
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The exemplar of the execution duration histogram: the trace that produced the observation.
pub type TraceExemplar = Vec<(&'static str, String)>;

pub const STATUSES: [&str; 4] = ["Succeeded", "Failed", "TimedOut", "Aborted"];
pub const READ_OPERATIONS: [&str; 4] = ["ListFlowExecutions", "ListFlowExecutionEvents", "GetFlowExecution", "GetExecutionFlowSnapshot"];
pub const ERROR_KINDS: [&str; 7] = ["throttled", "access_denied", "not_found", "validation", "server", "timeout", "other"];
pub const EVENT_TYPES: [&str; 10] =
    ["flow_input", "flow_output", "flow_failure", "node_input", "node_output", "node_failure", "condition_result", "node_action", "node_dependency", "unknown"];
/// What a failed state store operation was doing (`state_store_errors_total{operation}`).
pub const STORE_OPERATIONS: [&str; 6] = ["checkpoint", "outbox", "listing", "snapshot", "prune", "coordinate"];
pub const INVALID_REASONS: [&str; 10] = [
    "unknown_event_kind",
    "unknown_status",
    "missing_timestamp",
    "missing_field",
    "duplicate_event",
    "output_without_input",
    "failure_without_input",
    "event_outside_run",
    "malformed_event",
    "bad_snapshot",
];

/// Why the OTLP endpoint refused spans for good (`export::grpc_refusal`, `export::http_refusal`).
pub const REFUSAL_REASONS: [&str; 4] = ["invalid_argument", "too_large", "bad_request", "unimplemented"];

const EXECUTION_BUCKETS: [f64; 16] = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0];
const NODE_BUCKETS: [f64; 14] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const API_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
const LAG_BUCKETS: [f64; 12] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0];

pub struct Metrics {
    registry: Registry,
    pub executions_total: Family<Labels, Counter>,
    pub executions_running: Family<Labels, Gauge>,
    pub execution_duration: Family<Labels, HistogramWithExemplars<TraceExemplar>>,
    pub node_duration: Family<Labels, BatchHistogram>,
    pub node_failures: Family<Labels, Counter>,
    pub flow_failures: Family<Labels, Counter>,
    pub condition_results: Family<Labels, Counter>,
    pub node_tokens: Family<Labels, Counter>,
    pub last_execution_end: Family<Labels, FloatGauge>,
    pub oldest_running_start: Family<Labels, FloatGauge>,
    pub build_info: Family<Labels, Gauge>,
    pub api_requests: Family<Labels, Counter>,
    pub api_request_errors: Family<Labels, Counter>,
    pub api_request_duration: Family<Labels, Histogram>,
    pub last_successful_poll: Family<Labels, FloatGauge>,
    pub executions_tracked: Gauge,
    pub events_received: Family<Labels, Counter>,
    pub invalid_events: Family<Labels, Counter>,
    pub spans_exported: Counter,
    pub span_export_errors: Counter,
    pub span_export_refused: Family<Labels, Counter>,
    pub executions_parked: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_max_bytes: Gauge,
    pub reading_paused: Gauge,
    pub lease_held: Family<Labels, Gauge>,
    pub flow_configured: Family<Labels, Gauge>,
    pub replicas: Gauge,
    pub state_store_up: Gauge,
    pub state_store_errors: Family<Labels, Counter>,
    pub checkpoint_rejected: Counter,
    pub checkpoint_bytes: Counter,
    pub spans_cut: Counter,
    pub spans_rejected: Counter,
    pub event_lag: BatchHistogram,
    pub node_labels: bool,
    /// The label sets of the per-flow series, by flow id: what a replica removes when it loses
    /// the flow (SPEC §11).
    flow_series: std::sync::Mutex<HashMap<String, HashSet<Labels>>>,
    /// Handles of the series whose label sets are fixed and made at the start, in the order of
    /// `EVENT_TYPES` and `READ_OPERATIONS`: a handle is the family's series itself, where a
    /// look-up builds the label set, hashes it and takes the family's lock (per read and per
    /// SDK call otherwise). These families are never cleared (`forget_flow` leaves them), so a
    /// handle never outlives its series.
    events_received_by_type: Vec<Counter>,
    api_requests_by_operation: Vec<Counter>,
    /// Made at the first observation, as the family would: a series without observations
    /// would show an operation never called.
    api_duration_by_operation: Vec<std::sync::OnceLock<Histogram>>,
    /// The series a finished execution counts in, by their label set (flow, alias, status),
    /// as handles of the families' own series: each look-up in a family hashes the label set
    /// with SipHash and takes its lock, three a finished execution, and `flow_series` a fourth.
    /// `forget_flow` drops a flow's handles with its series.
    finished: std::sync::Mutex<rustc_hash::FxHashMap<Labels, FinishedSeries>>,
}

/// The series of `Metrics::finished_series`.
#[derive(Clone)]
pub struct FinishedSeries {
    pub executions: Counter,
    pub duration: HistogramWithExemplars<TraceExemplar>,
    pub last_end: FloatGauge,
}

/// The labels that identify a flow and alias on every flow metric.
#[derive(Clone, Debug)]
pub struct FlowLabels {
    pub flow_id: String,
    pub flow_name: String,
    pub alias: String,
}

impl FlowLabels {
    pub fn with(&self, extra: &[(&'static str, &str)]) -> Labels {
        let mut labels = vec![("flow_id", self.flow_id.clone()), ("flow_name", self.flow_name.clone()), ("alias", self.alias.clone())];
        labels.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        labels
    }
}

impl Metrics {
    /// Records a per-flow label set (so `forget_flow` can remove it) and returns it.
    pub fn flow_series(&self, labels: Labels) -> Labels {
        let flow_id = labels.iter().find(|(k, _)| *k == "flow_id").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut series = self.flow_series.lock().unwrap_or_else(|p| p.into_inner());
        let set = series.entry(flow_id).or_default();
        if !set.contains(&labels) {
            set.insert(labels.clone());
        }
        labels
    }

    /// The series a finished execution of this label set (flow, alias, status) counts in:
    /// `executions_total`, `execution_duration`, `last_execution_end`.
    pub fn finished_series(&self, labels: Labels) -> FinishedSeries {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(series) = finished.get(&labels) {
            return series.clone();
        }
        let labels = self.flow_series(labels);
        let series = FinishedSeries {
            executions: self.executions_total.get_or_create(&labels).clone(),
            duration: self.execution_duration.get_or_create(&labels).clone(),
            last_end: self.last_execution_end.get_or_create(&labels).clone(),
        };
        finished.insert(labels, series.clone());
        series
    }

    /// Removes every series of this flow (a replica lost its lease; SPEC §11: its counters start
    /// again from 0 if it takes the flow back).
    pub fn forget_flow(&self, flow_id: &str) {
        self.finished.lock().unwrap_or_else(|p| p.into_inner()).retain(|labels, _| !labels.iter().any(|(k, v)| *k == "flow_id" && v == flow_id));
        let sets = self.flow_series.lock().unwrap_or_else(|p| p.into_inner()).remove(flow_id).unwrap_or_default();
        for labels in &sets {
            self.executions_total.remove(labels);
            self.executions_running.remove(labels);
            self.oldest_running_start.remove(labels);
            self.execution_duration.remove(labels);
            self.node_duration.remove(labels);
            self.node_failures.remove(labels);
            self.flow_failures.remove(labels);
            self.condition_results.remove(labels);
            self.node_tokens.remove(labels);
            self.last_execution_end.remove(labels);
        }
        let id = vec![("flow_id", flow_id.to_string())];
        self.last_successful_poll.remove(&id);
        self.lease_held.remove(&id);
    }

    pub fn new(node_labels: bool) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            executions_total: Family::default(),
            executions_running: Family::default(),
            execution_duration: Family::new_with_constructor(|| HistogramWithExemplars::new(EXECUTION_BUCKETS.into_iter())),
            node_duration: Family::new_with_constructor(|| BatchHistogram::new(NODE_BUCKETS)),
            node_failures: Family::default(),
            flow_failures: Family::default(),
            condition_results: Family::default(),
            node_tokens: Family::default(),
            last_execution_end: Family::default(),
            oldest_running_start: Family::default(),
            build_info: Family::default(),
            api_requests: Family::default(),
            api_request_errors: Family::default(),
            api_request_duration: Family::new_with_constructor(|| Histogram::new(API_BUCKETS)),
            last_successful_poll: Family::default(),
            executions_tracked: Gauge::default(),
            events_received: Family::default(),
            invalid_events: Family::default(),
            spans_exported: Counter::default(),
            span_export_errors: Counter::default(),
            span_export_refused: Family::default(),
            executions_parked: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_max_bytes: Gauge::default(),
            reading_paused: Gauge::default(),
            lease_held: Family::default(),
            flow_configured: Family::default(),
            replicas: Gauge::default(),
            state_store_up: Gauge::default(),
            state_store_errors: Family::default(),
            checkpoint_rejected: Counter::default(),
            checkpoint_bytes: Counter::default(),
            spans_cut: Counter::default(),
            spans_rejected: Counter::default(),
            event_lag: BatchHistogram::new(LAG_BUCKETS),
            node_labels,
            flow_series: Default::default(),
            events_received_by_type: Vec::new(),
            api_requests_by_operation: Vec::new(),
            api_duration_by_operation: Vec::new(),
            finished: Default::default(),
            registry: Registry::default(),
        };
        registry.register("bedrock_flow_executions", "Terminal flow executions, each counted once, by final status.", m.executions_total.clone());
        registry.register("bedrock_flow_executions_running", "Flow executions currently running.", m.executions_running.clone());
        registry.register(
            "bedrock_flow_execution_duration_seconds",
            "Duration of terminal flow executions, from createdAt to endedAt; exemplars carry the trace id.",
            m.execution_duration.clone(),
        );
        registry.register("bedrock_flow_node_duration_seconds", "Duration of completed node runs (input to output or failure).", m.node_duration.clone());
        registry.register("bedrock_flow_node_failures", "Node failures by error code.", m.node_failures.clone());
        registry.register("bedrock_flow_failures", "Flow-level failures and time-outs by error code.", m.flow_failures.clone());
        registry.register("bedrock_flow_condition_results", "Condition node results by satisfied condition.", m.condition_results.clone());
        registry.register("bedrock_flow_node_tokens", "Model tokens used by nodes, where the usage is known.", m.node_tokens.clone());
        registry.register(
            "bedrock_flow_last_execution_end_timestamp_seconds",
            "Latest endedAt seen among terminal executions, by status; executions processed out of order never move it back.",
            m.last_execution_end.clone(),
        );
        registry.register(
            "bedrock_flow_oldest_running_execution_start_timestamp_seconds",
            "Creation time of the oldest execution still running (0 when none runs); executions time out after 24 hours.",
            m.oldest_running_start.clone(),
        );
        registry.register("bedrock_flow_exporter_build_info", "Build of the exporter; the value is 1.", m.build_info.clone());
        registry.register(
            "bedrock_flow_exporter_api_requests",
            "AWS API HTTP attempts made, SDK retries included (what AWS throttles and bills), by operation.",
            m.api_requests.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_api_request_errors",
            "AWS API HTTP attempts that failed, SDK retries included, by operation and kind of error.",
            m.api_request_errors.clone(),
        );
        registry.register("bedrock_flow_exporter_api_request_duration_seconds", "Duration of AWS API calls, retries included.", m.api_request_duration.clone());
        registry.register(
            "bedrock_flow_exporter_last_successful_poll_timestamp_seconds",
            "Time of the last poll of a flow whose listing succeeded.",
            m.last_successful_poll.clone(),
        );
        registry.register("bedrock_flow_exporter_executions_tracked", "Executions in the state store that are not finished yet.", m.executions_tracked.clone());
        registry.register("bedrock_flow_exporter_events_received", "Flow execution events read from the API, by kind.", m.events_received.clone());
        registry.register("bedrock_flow_exporter_invalid_events", "Bad data from the API, counted and skipped, by reason.", m.invalid_events.clone());
        registry.register("bedrock_flow_exporter_spans_exported", "Spans accepted by the OTLP endpoint.", m.spans_exported.clone());
        registry.register("bedrock_flow_exporter_span_export_errors", "OTLP export requests that failed, retryable or not.", m.span_export_errors.clone());
        registry.register(
            "bedrock_flow_exporter_span_export_refused",
            "Executions whose spans the OTLP endpoint refused for good (a 4xx other than 408/429, gRPC InvalidArgument, a message too large), by reason; each is set aside and retried every 15 minutes.",
            m.span_export_refused.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_executions_parked",
            "Executions set aside because the OTLP endpoint refused their spans for good.",
            m.executions_parked.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_outbox_bytes",
            "Bytes of spans waiting in the durable outbox for the OTLP endpoint; reading pauses at traces.outbox_max_bytes.",
            m.outbox_bytes.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_outbox_max_bytes",
            "The outbox's bound (traces.outbox_max_bytes): reading pauses when outbox_bytes reaches it.",
            m.outbox_max_bytes.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_reading_paused",
            "1 while reading events is paused because the outbox is full (the OTLP endpoint does not take spans), else 0.",
            m.reading_paused.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_lease_held",
            "Replicas: 1 for each flow whose lease this replica holds (the series goes when the lease does).",
            m.lease_held.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_flow_configured",
            "1 for each flow in this replica's config (what an alert compares lease_held with).",
            m.flow_configured.clone(),
        );
        registry.register("bedrock_flow_exporter_replicas", "Replicas: live members this replica sees in the shared store.", m.replicas.clone());
        registry.register(
            "bedrock_flow_exporter_state_store_up",
            "1 while the state store can be reached, 0 while it cannot (then no work is done).",
            m.state_store_up.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_state_store_errors",
            "State store operations that failed, by what they were doing (checkpoint, outbox, listing, snapshot, prune, coordinate); the work waits for a later cycle.",
            m.state_store_errors.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_checkpoint_rejected",
            "Replicas: checkpoints refused because this replica's lease of the flow was lost or taken over.",
            m.checkpoint_rejected.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_checkpoint_bytes",
            "Bytes written to the state store by checkpoints: fold states, the span events their runs gathered since the last checkpoint, outbox parcels.",
            m.checkpoint_bytes.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_spans_cut",
            "Spans larger than traces.max_batch_bytes, cut down to fit (captured content first).",
            m.spans_cut.clone(),
        );
        registry.register(
            "bedrock_flow_exporter_spans_rejected",
            "Spans the OTLP endpoint said it dropped of requests it accepted (OTLP partial success); not sent again.",
            m.spans_rejected.clone(),
        );
        registry.register("bedrock_flow_exporter_event_lag_seconds", "Processing time minus event time.", m.event_lag.clone());
        registry.register_collector(Box::new(ProcessCollector));
        m.build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("revision", option_env!("BFE_GIT_REVISION").unwrap_or("unknown").to_string()),
            ])
            .set(1);
        let mut api_requests_by_operation = Vec::with_capacity(READ_OPERATIONS.len());
        let mut api_duration_by_operation = Vec::with_capacity(READ_OPERATIONS.len());
        for op in READ_OPERATIONS {
            api_requests_by_operation.push(m.api_requests.get_or_create(&vec![("operation", op.to_string())]).clone());
            api_duration_by_operation.push(std::sync::OnceLock::new());
            for kind in ERROR_KINDS {
                let _ = m.api_request_errors.get_or_create(&vec![("operation", op.to_string()), ("error_kind", kind.to_string())]);
            }
        }
        let events_received_by_type = EVENT_TYPES.iter().map(|t| m.events_received.get_or_create(&vec![("event_type", t.to_string())]).clone()).collect();
        for reason in REFUSAL_REASONS {
            let _ = m.span_export_refused.get_or_create(&vec![("reason", reason.to_string())]);
        }
        for operation in STORE_OPERATIONS {
            let _ = m.state_store_errors.get_or_create(&vec![("operation", operation.to_string())]);
        }
        for r in INVALID_REASONS {
            let _ = m.invalid_events.get_or_create(&vec![("reason", r.to_string())]);
        }
        Metrics { registry, events_received_by_type, api_requests_by_operation, api_duration_by_operation, ..m }
    }

    /// Counts `n` events of a type in `events_received`.
    pub fn events_received(&self, event_type: &str, n: u64) {
        match EVENT_TYPES.iter().position(|t| *t == event_type) {
            Some(i) => self.events_received_by_type[i].inc_by(n),
            None => self.events_received.get_or_create(&vec![("event_type", event_type.to_string())]).inc_by(n),
        };
    }

    /// Counts an attempt at an SDK operation in `api_requests`.
    pub fn api_request(&self, operation: &str) {
        match READ_OPERATIONS.iter().position(|o| *o == operation) {
            Some(i) => self.api_requests_by_operation[i].inc(),
            None => self.api_requests.get_or_create(&vec![("operation", operation.to_string())]).inc(),
        };
    }

    /// Records an SDK call's duration in `api_request_duration`.
    pub fn api_duration(&self, operation: &str, seconds: f64) {
        let series = || self.api_request_duration.get_or_create(&vec![("operation", operation.to_string())]).clone();
        match READ_OPERATIONS.iter().position(|o| *o == operation) {
            Some(i) => self.api_duration_by_operation[i].get_or_init(series).observe(seconds),
            None => series().observe(seconds),
        }
    }

    /// Creates the series of a flow and alias that are known in advance, at 0.
    pub fn init_flow(&self, flow: &FlowLabels) {
        for status in STATUSES {
            let _ = self.executions_total.get_or_create(&self.flow_series(flow.with(&[("status", status)])));
        }
        let _ = self.executions_running.get_or_create(&self.flow_series(flow.with(&[])));
    }

    /// The node label values, or empty ones when per-node series are off.
    pub fn node<'a>(&self, node: &'a str) -> &'a str {
        if self.node_labels {
            node
        } else {
            ""
        }
    }

    /// The exposition: OpenMetrics (with exemplars) or Prometheus text 0.0.4.
    pub fn render(&self, openmetrics: bool) -> (&'static str, String) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        if openmetrics {
            ("application/openmetrics-text; version=1.0.0; charset=utf-8", text)
        } else {
            ("text/plain; version=0.0.4; charset=utf-8", openmetrics_to_prometheus(&text))
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics text as the Prometheus 0.0.4 text format:
/// counter families named with `_total`, no exemplars, no `# UNIT`, no `# EOF`.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, "counter")) = rest.split_once(' ') {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            let directive = &line[..7];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
            out.push_str(&format!("{directive}{name} {tail}\n"));
            continue;
        }
        let sample = line.split(" # {").next().unwrap_or(line);
        if sample.split(['{', ' ']).next().is_some_and(|n| n.ends_with("_created")) {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// The standard `process_*` metrics, read from /proc on each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = process_stats() else {
            return Ok(());
        };
        let gauges: [(&str, &str, f64); 5] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", stats.rss_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", stats.vsize_bytes),
            ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", stats.start_time),
            ("process_open_fds", "Number of open file descriptors.", stats.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", stats.max_fds),
        ];
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by(stats.cpu_seconds);
        let metric = encoder.encode_descriptor("process_cpu_seconds", "Total user and system CPU time spent in seconds.", None, MetricType::Counter)?;
        cpu.encode(metric)?;
        for (name, help, value) in gauges {
            let gauge = FloatGauge::default();
            gauge.set(value);
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub vsize_bytes: f64,
    pub start_time: f64,
    pub open_fds: f64,
    pub max_fds: f64,
}

/// A positive `sysconf` value (clock ticks per second, page size) as the system reports it.
fn system_value(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    (value > 0).then_some(value as f64)
}

/// User and system CPU time of this process (every thread, ended ones included) in seconds, to
/// the microsecond: /proc counts it in clock ticks (10 ms), too coarse for a short run's cost.
pub fn cpu_seconds_used() -> Option<f64> {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// This process's CPU time (`getrusage`), memory and descriptors from /proc (Linux); `None`
/// elsewhere.
pub fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command name start at field 3 (state): utime is 14, so index 11.
    let ticks = system_value(libc::_SC_CLK_TCK)?;
    let page_size = system_value(libc::_SC_PAGESIZE)?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let starttime: f64 = fields.get(19)?.parse().ok()?;
    let vsize: f64 = fields.get(20)?.parse().ok()?;
    let rss_pages: f64 = fields.get(21)?.parse().ok()?;
    let boot =
        std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| l.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)?.parse().ok()))
        .unwrap_or(0.0);
    Some(ProcessStats {
        cpu_seconds: cpu_seconds_used().unwrap_or((utime + stime) / ticks),
        rss_bytes: rss_pages * page_size,
        vsize_bytes: vsize,
        start_time: boot + starttime / ticks,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds of histogram, registered alone and exposed as OpenMetrics text.
    fn exposed(metric: impl prometheus_client::registry::Metric) -> String {
        let mut registry = Registry::default();
        registry.register("lag_seconds", "Lag.", metric);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_batch_histogram_is_exposed_as_prometheus_clients_own() {
        // Below the first bound, on bounds, between them, above the last, infinite, NaN; one
        // by one and in batches.
        let values = [0.0, 0.05, 0.1, 0.3, 0.5, 1.0, 7.0, 15.0, 899.0, 900.0, 900.5, 86_400.0 * 3.0, f64::INFINITY];
        let theirs = Histogram::new(LAG_BUCKETS);
        let ours = BatchHistogram::new(LAG_BUCKETS);
        for v in values {
            theirs.observe(v);
        }
        ours.observe_many([values[0]]);
        ours.observe_many(values[1..6].iter().copied());
        ours.observe_many(values[6..].iter().copied());
        ours.observe_many(std::iter::empty());
        let text = exposed(ours.clone());
        assert_eq!(text, exposed(theirs.clone()));
        assert!(text.contains("lag_seconds_bucket{le=\"0.1\"} 3\n"), "{text}");
        assert!(text.contains("lag_seconds_bucket{le=\"900.0\"} 10\n"), "{text}");
        assert!(text.contains("lag_seconds_bucket{le=\"+Inf\"} 13\n"), "{text}");
        assert!(text.contains("lag_seconds_count 13\n"), "{text}");
        // NaN goes to the last bucket alone, and makes the sum NaN, as theirs.
        theirs.observe(f64::NAN);
        ours.observe_many([f64::NAN]);
        let text = exposed(ours);
        assert_eq!(text, exposed(theirs));
        assert!(text.contains("lag_seconds_bucket{le=\"900.0\"} 10\n") && text.contains("lag_seconds_bucket{le=\"+Inf\"} 14\n"), "{text}");
    }

    #[test]
    fn process_stats_agree_with_the_kernel_accounting() {
        // Burn CPU (not wall time: the machine may be busy) so that the comparison is not
        // between two zeros.
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while cpu_seconds_used().unwrap() < 0.3 && started.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            }
        }
        std::hint::black_box(x);
        let stats = process_stats().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_rss_kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
        let rss = vm_rss_kib * 1024.0;
        // The stat counters lag VmRSS a little; a wrong page size is off by a factor of 4 or 16.
        assert!(stats.rss_bytes > rss * 0.5 && stats.rss_bytes < rss * 2.0, "rss {} vs VmRSS {rss}", stats.rss_bytes);
        // getrusage against the kernel's other account of it, /proc's clock ticks: a wrong unit
        // (microseconds read as milliseconds) is off by a factor.
        let ticks_cpu = bedrock_flow_test_support::cpu_seconds(std::process::id());
        assert!(stats.cpu_seconds >= 0.2 && (stats.cpu_seconds - ticks_cpu).abs() < 0.1, "cpu {} vs /proc's {ticks_cpu}", stats.cpu_seconds);
        let boot_relative = stats.start_time - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(boot_relative <= 0.0 && boot_relative > -3600.0, "started within the hour: {boot_relative}");
    }

    #[test]
    fn prometheus_text_has_total_names_and_no_exemplars() {
        let m = Metrics::new(true);
        let flow = FlowLabels { flow_id: "ABCDEFGHIJ".into(), flow_name: "f".into(), alias: "A".into() };
        m.init_flow(&flow);
        m.executions_total.get_or_create(&flow.with(&[("status", "Succeeded")])).inc();
        m.execution_duration.get_or_create(&flow.with(&[("status", "Succeeded")])).observe(
            12.5,
            Some(vec![("trace_id", "0af7651916cd43dd8448eb211c80319c".to_string())]),
            None,
        );
        let (_, om) = m.render(true);
        assert!(om.contains("# {trace_id=\"0af7651916cd43dd8448eb211c80319c\"} 12.5"), "{om}");
        let (content_type, text) = m.render(false);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(text.contains("# TYPE bedrock_flow_executions_total counter"));
        assert!(text.contains("bedrock_flow_executions_total{flow_id=\"ABCDEFGHIJ\",flow_name=\"f\",alias=\"A\",status=\"Succeeded\"} 1"));
        assert!(text.contains("bedrock_flow_executions_total{flow_id=\"ABCDEFGHIJ\",flow_name=\"f\",alias=\"A\",status=\"Aborted\"} 0"));
        assert!(!text.contains("# EOF") && !text.contains("trace_id"));
        assert!(text.contains("bedrock_flow_exporter_build_info{version="));
        assert!(text.contains("process_resident_memory_bytes "));
    }

    /// The handles kept for the series of fixed label sets are the families' series: what
    /// they count shows in the exposition under the same labels, and an operation's duration
    /// series appears at its first observation, not before.
    #[test]
    fn kept_handles_count_in_the_families_series() {
        let m = Metrics::new(true);
        let (_, before) = m.render(false);
        assert!(!before.contains("duration_seconds_count{operation=\"GetFlowExecution\"}"), "no duration series before a call: {before}");
        m.events_received("node_output", 3);
        m.events_received("node_output", 1);
        m.events_received("a_future_kind", 1);
        m.api_request("ListFlowExecutionEvents");
        m.api_request("unknown");
        m.api_duration("GetFlowExecution", 0.2);
        m.api_duration("GetFlowExecution", 0.3);
        let (_, text) = m.render(false);
        for line in [
            "bedrock_flow_exporter_events_received_total{event_type=\"node_output\"} 4",
            "bedrock_flow_exporter_events_received_total{event_type=\"node_input\"} 0",
            "bedrock_flow_exporter_events_received_total{event_type=\"a_future_kind\"} 1",
            "bedrock_flow_exporter_api_requests_total{operation=\"ListFlowExecutionEvents\"} 1",
            "bedrock_flow_exporter_api_requests_total{operation=\"unknown\"} 1",
            "bedrock_flow_exporter_api_request_duration_seconds_count{operation=\"GetFlowExecution\"} 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("duration_seconds_count{operation=\"ListFlowExecutions\"}"), "{text}");
    }
}
