//! What the landing page, readiness and the demo's console show: the collector writes it, the
//! HTTP endpoint and the demo read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::timefmt::now_nanos;

/// What the landing page and readiness show, updated by the collector.
#[derive(Default)]
pub struct StatusBoard {
    inner: Mutex<BoardInner>,
}

#[derive(Default)]
struct BoardInner {
    ready: bool,
    shutting_down: bool,
    /// The shared state store cannot be reached: no work, not ready.
    store_down: bool,
    /// The last failed state store operation (what it was doing, the error, when) and how
    /// many failed since the start.
    store_failure: Option<StoreFailure>,
    /// Spans the endpoint dropped of accepted requests (OTLP partial success).
    dropped_spans: Option<DroppedSpans>,
    /// Reading paused: the outbox is full (its bytes, its bound).
    reading_paused: Option<(u64, u64)>,
    /// Replicas: which member holds each flow (lease key -> member), and who this one is.
    holders: Vec<(String, String)>,
    member: String,
    flows: Vec<FlowStatus>,
    parked: Vec<ParkedExecution>,
}

/// The last state store operation that failed, and the count of failures since the start.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreFailure {
    pub doing: String,
    pub error: String,
    pub at: i64,
    pub count: u64,
}

/// Spans the OTLP endpoint dropped of requests it accepted: the total since the start, its
/// last message and when it came.
#[derive(Clone, Debug, PartialEq)]
pub struct DroppedSpans {
    pub total: u64,
    pub message: String,
    pub at: i64,
}

/// An execution whose spans the OTLP endpoint refused for good.
#[derive(Clone, Debug)]
pub struct ParkedExecution {
    pub flow_id: String,
    pub arn: String,
    pub reason: String,
    pub message: String,
    pub since: i64,
}

#[derive(Clone, Debug, Default)]
pub struct FlowStatus {
    pub flow_id: String,
    pub flow_name: String,
    pub last_successful_poll: Option<i64>,
    pub last_error: Option<String>,
    pub running: usize,
    /// (end time, status) of executions finished in the last hour.
    pub recent: VecDeque<(i64, &'static str)>,
}

impl StatusBoard {
    pub fn new(flows: &[(String, String)]) -> StatusBoard {
        let board = StatusBoard::default();
        board.lock().flows = flows.iter().map(|(id, name)| FlowStatus { flow_id: id.clone(), flow_name: name.clone(), ..Default::default() }).collect();
        board
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BoardInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn ready(&self) -> bool {
        let b = self.lock();
        b.ready && !b.shutting_down && !b.store_down
    }
    pub fn set_ready(&self) {
        self.lock().ready = true;
    }
    pub fn set_store_down(&self, down: bool) {
        self.lock().store_down = down;
    }

    pub fn store_down(&self) -> bool {
        self.lock().store_down
    }

    pub fn set_store_failure(&self, doing: &str, error: &str) {
        let mut b = self.lock();
        let count = b.store_failure.as_ref().map_or(0, |f| f.count) + 1;
        b.store_failure = Some(StoreFailure { doing: doing.into(), error: error.into(), at: now_nanos(), count });
    }

    /// The last failed state store operation, if any.
    pub fn store_failure(&self) -> Option<StoreFailure> {
        self.lock().store_failure.clone()
    }

    pub fn add_dropped_spans(&self, dropped: u64, message: &str) {
        let mut b = self.lock();
        let total = b.dropped_spans.as_ref().map_or(0, |d| d.total) + dropped;
        b.dropped_spans = Some(DroppedSpans { total, message: message.to_string(), at: now_nanos() });
    }

    /// Spans the endpoint dropped of accepted requests, if any.
    pub fn dropped_spans(&self) -> Option<DroppedSpans> {
        self.lock().dropped_spans.clone()
    }

    /// Reading paused because the outbox is full (its bytes and bound), or `None`.
    pub fn set_reading_paused(&self, paused: Option<(u64, u64)>) {
        self.lock().reading_paused = paused;
    }

    pub fn reading_paused(&self) -> Option<(u64, u64)> {
        self.lock().reading_paused
    }

    pub fn set_holders(&self, member: &str, mut holders: Vec<(String, String)>) {
        holders.sort();
        let mut b = self.lock();
        b.member = member.to_string();
        b.holders = holders;
    }

    /// (this member, [(flow lease key, holder)]) when running as a replica.
    pub fn holders(&self) -> (String, Vec<(String, String)>) {
        let b = self.lock();
        (b.member.clone(), b.holders.clone())
    }

    pub fn set_shutting_down(&self) {
        self.lock().shutting_down = true;
    }
    pub fn flows(&self) -> Vec<FlowStatus> {
        self.lock().flows.clone()
    }
    pub fn parked(&self) -> Vec<ParkedExecution> {
        self.lock().parked.clone()
    }
    pub(super) fn park(&self, flow_id: &str, arn: &str, reason: &str, message: &str) {
        let mut b = self.lock();
        b.parked.retain(|p| p.arn != arn);
        b.parked.push(ParkedExecution { flow_id: flow_id.into(), arn: arn.into(), reason: reason.into(), message: message.into(), since: now_nanos() });
    }
    pub(super) fn unpark(&self, arn: &str) {
        self.lock().parked.retain(|p| p.arn != arn);
    }
    pub(super) fn update(&self, flow_id: &str, f: impl FnOnce(&mut FlowStatus)) {
        if let Some(s) = self.lock().flows.iter_mut().find(|s| s.flow_id == flow_id) {
            f(s);
        }
    }
}

/// One line per finished execution, for the demo's console.
#[derive(Clone, Debug)]
pub struct FinishedExecution {
    pub flow_name: String,
    pub status: String,
    pub duration_secs: f64,
    pub spans: usize,
    pub trace_id: String,
    pub arn: String,
}

pub type FinishedHook = Arc<dyn Fn(&FinishedExecution) + Send + Sync>;
