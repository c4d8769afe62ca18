//! Delivery of spans to the OTLP endpoint: requests bounded by span count and encoded bytes,
//! spans too large cut to fit, a permanent refusal narrowed down to the execution responsible
//! (whose spans are parked in the outbox), a retryable failure that stops the sending until the
//! backoff (what was not sent waits in the outbox).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::events::{ExecutionParked, ExecutionUnparked, ExportBackedOff, ExportRequestFailed, Instruments, SpanCut, SpansRejected};
use super::Collector;
use crate::export::ExportError;
use crate::span::{SpanRecord, SpanTally};

/// How long an execution refused for good waits before its spans are offered again.
pub(super) const PARK_RETRY: Duration = Duration::from_secs(15 * 60);

/// What a request holds at most besides its spans, and its bound in bytes: a span is measured
/// against them (`Ready::new`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Room {
    /// The bytes a span may take in a request (the bound less the request's overhead).
    pub spans: usize,
    /// `traces.max_batch_bytes`.
    pub max_bytes: usize,
}

thread_local! {
    /// Where `Ready::new` writes a fold's spans before they are copied into bytes of their size.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The scratch buffer a thread keeps between folds, at most (a larger one, grown by a fold
/// of large spans, is let go).
const SCRATCH_KEPT: usize = 1 << 20;

/// Spans made ready to send where a fold made them, while they are in the cache: each
/// encoded as its request will hold it (`export::put_framed_measured`, measured as it is
/// written) into the thread's scratch buffer, cut down first (and counted) when it is larger
/// than a request, and its tally taken; then the span is dropped, and the fold's spans are
/// copied from the scratch buffer into bytes of their size. What waits for the chunk's delivery is
/// these bytes, copied once into the buffer a request is sent from, and the tallies, counted
/// once accepted: nothing walks or frees the spans again out of the cache.
#[derive(Debug, Default)]
pub(super) struct Ready {
    /// The spans, framed, end to end.
    pub bytes: bytes::Bytes,
    pub tallies: Vec<SpanTally>,
}

impl Ready {
    /// Makes `spans` ready, appending each one's encoded length (`span_len`) to `lens`.
    pub fn new(spans: Vec<SpanRecord>, room: Room, events: &Instruments, lens: &mut Vec<usize>) -> Ready {
        // Written into this thread's scratch buffer (its size unknown until written; growing
        // a buffer of its own would copy it as often as it doubles), then copied once, hot,
        // into bytes of their size.
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            let tallies = spans
                .into_iter()
                .map(|mut span| {
                    let start = scratch.len();
                    let mut len = crate::export::put_framed_measured(scratch, &span);
                    if crate::export::framed_len(len) > room.spans && crate::export::cut_to_fit(&mut span, room.spans) {
                        events.emit(SpanCut { span: &span, max_bytes: room.max_bytes });
                        scratch.truncate(start);
                        len = crate::export::put_framed_measured(scratch, &span);
                    }
                    lens.push(len);
                    SpanTally::take(&mut span)
                })
                .collect();
            let bytes = bytes::Bytes::copy_from_slice(scratch);
            if scratch.capacity() > SCRATCH_KEPT {
                *scratch = Vec::new();
            }
            Ready { bytes, tallies }
        })
    }
}

/// The spans of `parts` (in order, of lengths `lens`) as a chunk's delivery sends them and
/// counts them: each one's bytes (shared with its part, not copied), each one's tally.
pub(super) fn lay_out<'a>(parts: &'a [Ready], lens: &[usize]) -> (Vec<bytes::Bytes>, Vec<&'a SpanTally>) {
    let mut bytes = Vec::with_capacity(lens.len());
    let mut lens = lens.iter();
    for part in parts {
        let mut at = 0;
        for _ in 0..part.tallies.len() {
            let end = (at + lens.next().map_or(0, |len| crate::export::framed_len(*len))).min(part.bytes.len());
            bytes.push(part.bytes.slice(at..end));
            at = end;
        }
        debug_assert_eq!(at, part.bytes.len(), "a part's bytes are its spans'");
    }
    (bytes, parts.iter().flat_map(|part| &part.tallies).collect())
}

/// What became of one execution's spans in one export.
#[derive(Clone, Debug)]
pub(super) enum Delivery {
    Accepted,
    /// Refused for good: the execution is parked.
    Refused {
        reason: &'static str,
        message: String,
    },
    /// Not sent, or not accepted yet (a retryable failure): retried after the backoff.
    NotSent,
}

impl Collector {
    /// `send`, unless the export is backing off (then nothing is sent); a retryable failure
    /// starts or doubles the backoff. An execution without spans counts as accepted.
    pub(super) async fn send_now(&mut self, spans: &[bytes::Bytes], lens: &[usize], bounds: &[usize]) -> Vec<Delivery> {
        let backing_off = self.export_backoff.is_some_and(|(until, _)| Instant::now() < until);
        let mut deliveries = if backing_off || spans.is_empty() {
            vec![Delivery::NotSent; bounds.len() - 1]
        } else {
            let (deliveries, retry_error) = self.send(spans, lens, bounds).await;
            match retry_error {
                Some(e) => {
                    let delay = self.export_backoff.map(|(_, d)| (d * 2).min(Duration::from_secs(60))).unwrap_or(Duration::from_secs(1));
                    self.export_backoff = Some((Instant::now() + delay, delay));
                    self.events.emit(ExportBackedOff { error: &e, retry_in: delay });
                }
                None => self.export_backoff = None,
            }
            deliveries
        };
        for (i, w) in bounds.windows(2).enumerate() {
            if w[0] == w[1] {
                deliveries[i] = Delivery::Accepted;
            }
        }
        deliveries
    }

    /// The room a span has in a request.
    pub(super) fn room(&self) -> Room {
        let (max_bytes, overhead) = (self.exporter.max_batch_bytes(), self.exporter.request_overhead());
        Room { spans: max_bytes.saturating_sub(overhead), max_bytes }
    }

    /// Sends the spans of several executions (`spans[bounds[i]..bounds[i + 1]]` is execution
    /// i's; `lens` their lengths from `Ready::new`, so none is larger than a request) in
    /// requests bounded by span count and encoded bytes. A permanent refusal is narrowed down by halving the
    /// executions sent together until the one responsible is found; a retryable failure stops
    /// the sending (the rest waits for the backoff). Returns each execution's delivery and the
    /// retryable error.
    pub(super) async fn send(&self, spans: &[bytes::Bytes], lens: &[usize], bounds: &[usize]) -> (Vec<Delivery>, Option<ExportError>) {
        debug_assert_eq!(spans.len(), lens.len());
        let (max_spans, max_bytes, overhead) = (self.exporter.batch_size(), self.exporter.max_batch_bytes(), self.exporter.request_overhead());
        let executions = bounds.len() - 1;
        let mut deliveries = vec![Delivery::NotSent; executions];
        let mut queue: VecDeque<std::ops::Range<usize>> = VecDeque::new();
        queue.push_back(0..executions);
        while let Some(group) = queue.pop_front() {
            let first = bounds[group.start];
            let lens = &lens[first..bounds[group.end]];
            let mut failure = None;
            for batch in crate::export::pack(lens, max_spans, max_bytes, overhead) {
                match self.exporter.export(&spans[first + batch.start..first + batch.end], &lens[batch.clone()]).await {
                    Ok(None) => {}
                    // Accepted, less what the endpoint says it dropped: not sent again (OTLP
                    // forbids it), counted and said.
                    Ok(Some(partial)) => self.events.emit(SpansRejected { partial: &partial, sent: batch.len() }),
                    Err(e) => {
                        self.events.emit(ExportRequestFailed);
                        self.export_failures_here.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        failure = Some(e);
                        break;
                    }
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
    pub(super) fn park(&mut self, flow_id: &str, arn: &str, reason: &'static str, message: String) {
        let again = self.parked.insert(arn.to_string(), Instant::now() + PARK_RETRY).is_some();
        self.events.emit(ExecutionParked { flow_id, arn, reason, message: &message, retry_in: PARK_RETRY, again, parked_now: self.parked.len() });
    }

    pub(super) fn unpark(&mut self, arn: &str) {
        if self.parked.remove(arn).is_some() {
            self.events.emit(ExecutionUnparked { arn, parked_now: self.parked.len() });
        }
    }
}
