//! Reading an execution's events: both streams from their cursors (the tail page again, then
//! what follows), the full re-read when a token is rejected, and GetFlowExecution at the end.
//! It touches no shared state: it takes an execution's state and returns it advanced, and
//! hands each page's new events to a `Pages` as it arrives (the pipeline folds them at once,
//! while they are in the cache, so a read holds one page of events, never the history).

use super::lifecycle::{Cursor, Tracked};
use super::plan::Work;
use crate::model::{Event, ExecutionStatus};
use crate::source::{ActionDocuments, ApiError, ErrorKind, EventStream, FlowSource};
use crate::timefmt::now_nanos;

/// Where a read's new events go, a page at a time as the pages arrive.
pub trait Pages {
    /// The new events of one page of `stream` (never empty), the first of them being the
    /// stream's event `first` (its position in the whole stream); `t` is the execution being
    /// read (its status and errors as before the read, the cursors of the streams read before
    /// this one advanced).
    fn page(&mut self, t: &Tracked, stream: EventStream, first: usize, events: Vec<Event>);
}

/// The pages of a read kept as they came (tests): each stream's new events in order, and each
/// page as (stream, position of its first event, events).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Gathered {
    pub node: Vec<Event>,
    pub flow: Vec<Event>,
    pub pages: Vec<(EventStream, usize, usize)>,
}

#[cfg(test)]
impl Pages for Gathered {
    fn page(&mut self, _: &Tracked, stream: EventStream, first: usize, events: Vec<Event>) {
        self.pages.push((stream, first, events.len()));
        match stream {
            EventStream::Node => self.node.extend(events),
            EventStream::Flow => self.flow.extend(events),
        }
    }
}

/// What one read brought: the advanced state and the pages given to `pages`.
pub struct Fetched<P> {
    pub arn: String,
    pub tracked: Tracked,
    pub pages: P,
    /// New events given to `pages` (both streams).
    pub new_events: usize,
}

/// Whether this read takes the Flow stream too. While an execution runs, its Flow stream
/// holds the flow's input and the outputs, which only the root span carries, and the root span
/// goes out when the execution ends: so a running execution reads its Node stream each poll and
/// its Flow stream on the first read and on the final one (one call a poll, not two). Without
/// the flow's definition the Flow stream names the Input and Output nodes, so it is read each
/// poll then. The fold gives the same spans for any split of either stream (property tests).
pub fn reads_flow_stream(t: &Tracked, work: Work, has_definition: bool) -> bool {
    work == Work::Final || !has_definition || t.flow_cursor.total == 0
}

/// Reads one execution's new events (and errors at the end) without touching shared state,
/// giving them to `pages` page by page; the Flow stream only when `flow_stream` (see
/// `reads_flow_stream`); action events with the `documents` given.
pub async fn fetch<P: Pages>(
    source: FlowSource,
    mut t: Tracked,
    work: Work,
    flow_stream: bool,
    documents: ActionDocuments,
    mut pages: P,
) -> Result<Fetched<P>, (String, ApiError)> {
    let arn = t.arn.clone();
    let mut new_events = 0;
    if !(work == Work::Final && t.final_read) {
        let mut vanished = false;
        let streams: &[EventStream] = if flow_stream { &[EventStream::Node, EventStream::Flow] } else { &[EventStream::Node] };
        for &stream in streams {
            let cursor = match stream {
                EventStream::Node => t.node_cursor.clone(),
                EventStream::Flow => t.flow_cursor.clone(),
            };
            let start = cursor.total;
            let mut sink = Counted { pages: &mut pages, t: &t, stream, next: start };
            match read_stream(&source, &t, stream, cursor, documents, &mut sink).await {
                Ok(cursor) => {
                    new_events += sink.next - start;
                    match stream {
                        EventStream::Node => t.node_cursor = cursor,
                        EventStream::Flow => t.flow_cursor = cursor,
                    }
                }
                Err(e) if e.kind == ErrorKind::NotFound => vanished = true,
                Err(e) => return Err((arn, e)),
            }
        }
        let status = t.status.clone();
        if vanished {
            // An execution whose events answer 404 is finished with what was read.
            if !status.is_terminal() {
                t.status = ExecutionStatus::Aborted;
                t.ended_at = t.ended_at.or(Some(now_nanos()));
            }
            t.final_read = true;
        } else if work == Work::Final {
            if matches!(status, ExecutionStatus::Failed | ExecutionStatus::TimedOut) && t.errors.is_none() {
                match source.get_execution(&t.flow_id, &t.alias, &t.arn).await {
                    Ok((_, ended, errors)) => {
                        t.errors = Some(errors);
                        t.ended_at = t.ended_at.or(ended.map(|e| e.0));
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => t.errors = Some(Vec::new()),
                    Err(e) => return Err((arn, e)),
                }
            }
            t.final_read = true;
        }
    }
    Ok(Fetched { arn, tracked: t, pages, new_events })
}

/// A stream's pages on their way to `Pages`, numbered: `next` is the position in the stream
/// of the next new event.
struct Counted<'a, P> {
    pages: &'a mut P,
    t: &'a Tracked,
    stream: EventStream,
    next: usize,
}

impl<P: Pages> Counted<'_, P> {
    fn give(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let first = self.next;
        self.next += events.len();
        self.pages.page(self.t, self.stream, first, events);
    }
}

/// Pages one stream from its cursor, giving each page's new events to `sink`: re-requests the
/// tail page and gives only what is new; falls back to a full re-read (skipping what was read,
/// in this pass too) when the token is rejected. Returns the advanced cursor.
async fn read_stream<P: Pages>(
    source: &FlowSource,
    t: &Tracked,
    stream: EventStream,
    mut cursor: Cursor,
    documents: ActionDocuments,
    sink: &mut Counted<'_, P>,
) -> Result<Cursor, ApiError> {
    let mut token = cursor.token.clone();
    let mut skip = cursor.consumed;
    loop {
        match source.list_events(&t.flow_id, &t.alias, &t.arn, stream, token.clone(), skip, documents).await {
            Ok((page_len, items, next)) => {
                if page_len < skip {
                    // The page shrank: the token no longer means what it did.
                    return reread_all(source, t, stream, sink.next, documents, sink).await;
                }
                sink.give(items);
                match next {
                    Some(n) => {
                        token = Some(n);
                        skip = 0;
                    }
                    None => {
                        cursor.token = token;
                        cursor.consumed = page_len;
                        cursor.total = sink.next;
                        return Ok(cursor);
                    }
                }
            }
            Err(e) if e.kind == ErrorKind::Validation && token.is_some() => {
                tracing::debug!(arn = %t.arn, "page token rejected; re-reading the stream from the start");
                // Events given on earlier pages of this pass are skipped in the re-read too.
                return reread_all(source, t, stream, sink.next, documents, sink).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the whole stream again, giving `sink` the events after the first `already` (read
/// before) as the SDK gives them.
async fn reread_all<P: Pages>(
    source: &FlowSource,
    t: &Tracked,
    stream: EventStream,
    already: usize,
    documents: ActionDocuments,
    sink: &mut Counted<'_, P>,
) -> Result<Cursor, ApiError> {
    let (mut token, mut total): (Option<String>, usize) = (None, 0);
    loop {
        let skip = already.saturating_sub(total);
        let (page_len, items, next) = source.list_events(&t.flow_id, &t.alias, &t.arn, stream, token.clone(), skip, documents).await?;
        total += page_len;
        sink.give(items);
        match next {
            Some(n) => token = Some(n),
            None => {
                sink.next = sink.next.max(already);
                return Ok(Cursor { token, consumed: page_len, total: total.max(already) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::source::{AwsTarget, RequestBudget, StaticCredentials};

    /// An execution's read is a small future: the SDK's futures, kilobytes each, wait on the
    /// heap (`FlowSource::call`), so the reads in flight are not copied kilobytes at a time as
    /// they are pushed and moved.
    #[tokio::test]
    async fn a_read_in_flight_is_small() {
        let target = AwsTarget { region: Some("us-east-1".into()), endpoint_url: Some("http://127.0.0.1:9".into()), ..AwsTarget::default() };
        let credentials = StaticCredentials { access_key_id: "AKIDTEST".into(), secret_access_key: "secret".into() };
        let source = FlowSource::new(&target, Arc::new(RequestBudget::per_second(1000.0)), Some(&credentials), Arc::new(Metrics::new(true))).await;
        let read = fetch(source, crate::state::tests::tracked("arn:x"), Work::Final, true, ActionDocuments::Keep, Gathered::default());
        assert!(std::mem::size_of_val(&read) <= 2048, "{} bytes", std::mem::size_of_val(&read));
    }

    /// `fetch` alone, with the real SDK against the emulator: the first read takes every page
    /// once, a poll that finds nothing new re-requests only the Node stream's tail page, the
    /// final read each stream's tail page, and for a Failed execution GetFlowExecution.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_every_page_once_then_only_the_tail_page() {
        let mut scenario = bedrock_flow_emulator::Scenario::backlog(3, 45);
        scenario.outcomes.failed = 1.0;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator = bedrock_flow_emulator::start(listener, scenario).await.unwrap();
        let target = AwsTarget { region: Some("us-east-1".into()), endpoint_url: Some(emulator.endpoint()), ..AwsTarget::default() };
        let credentials = StaticCredentials { access_key_id: "AKIDTEST".into(), secret_access_key: "secret".into() };
        let source = FlowSource::new(&target, Arc::new(RequestBudget::per_second(1000.0)), Some(&credentials), Arc::new(Metrics::new(true))).await;
        let facts = emulator.executions(now_nanos()).remove(0);
        let calls = || emulator.stats()["requests"].clone();
        let mut t = crate::state::tests::tracked(&facts.arn);
        (t.flow_id, t.alias, t.status) = (facts.flow_id.clone(), facts.alias.clone(), ExecutionStatus::Failed);
        (t.node_cursor, t.flow_cursor) = (Cursor::default(), Cursor::default());

        assert!(reads_flow_stream(&t, Work::Fetch, true), "the first read takes both streams");
        let first = fetch(source.clone(), t, Work::Fetch, true, ActionDocuments::Keep, Gathered::default()).await.map_err(|(_, e)| e).unwrap();
        assert_eq!((first.pages.node.len(), first.pages.flow.len()), (facts.node_events.len(), facts.flow_events.len()));
        assert_eq!(first.new_events, facts.node_events.len() + facts.flow_events.len());
        // A page at a time, as they came: each stream's pages in order from its first event.
        let pages_of = |stream| first.pages.pages.iter().filter(|p| p.0 == stream).map(|p| (p.1, p.2)).collect::<Vec<_>>();
        let in_tens = |n: usize| (0..n).step_by(10).map(|at| (at, (n - at).min(10))).collect::<Vec<_>>();
        assert_eq!(pages_of(EventStream::Node), in_tens(facts.node_events.len()));
        assert_eq!(pages_of(EventStream::Flow), in_tens(facts.flow_events.len()));
        let (node_pages, flow_pages) = (facts.node_events.len().div_ceil(10) as u64, facts.flow_events.len().div_ceil(10) as u64);
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages, "every page once");
        assert_eq!(first.tracked.node_cursor.total, facts.node_events.len());

        // A poll of a running execution: the Node stream's tail page only (with its definition
        // known; without it, the Flow stream names the Input and Output nodes, so both).
        assert!(!reads_flow_stream(&first.tracked, Work::Fetch, true));
        assert!(reads_flow_stream(&first.tracked, Work::Fetch, false) && reads_flow_stream(&first.tracked, Work::Final, true));
        let poll = fetch(source.clone(), first.tracked, Work::Fetch, false, ActionDocuments::Keep, Gathered::default()).await.map_err(|(_, e)| e).unwrap();
        assert!(poll.pages.node.is_empty() && poll.pages.flow.is_empty() && poll.new_events == 0);
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages + 1, "one call: the Node stream's tail page");

        let again = fetch(source.clone(), poll.tracked, Work::Final, true, ActionDocuments::Keep, Gathered::default()).await.map_err(|(_, e)| e).unwrap();
        assert!(again.pages.node.is_empty() && again.pages.flow.is_empty() && again.new_events == 0, "nothing is read twice");
        assert_eq!((again.tracked.node_cursor.total, again.tracked.flow_cursor.total), (facts.node_events.len(), facts.flow_events.len()));
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages + 3, "the final read: one tail page per stream");
        assert_eq!(calls()["GetFlowExecution"], 1, "the errors of a Failed execution, at its final read");
        assert!(again.tracked.final_read && again.tracked.errors.is_some());

        let done = fetch(source, again.tracked, Work::Final, true, ActionDocuments::Keep, Gathered::default()).await.map_err(|(_, e)| e).unwrap();
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages + 3, "a final read is made once");
        assert!(done.pages.node.is_empty() && done.new_events == 0);
        emulator.stop().await;
    }
}
