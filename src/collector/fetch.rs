//! Reading an execution's events: both streams from their cursors (the tail page again, then
//! what follows), the full re-read when a token is rejected, and GetFlowExecution at the end.
//! It touches no shared state: it takes an execution's state and returns it advanced.

use super::lifecycle::{Cursor, Tracked};
use super::plan::Work;
use crate::model::{Event, ExecutionStatus};
use crate::source::{ActionDocuments, ApiError, ErrorKind, EventStream, FlowSource};
use crate::timefmt::now_nanos;

/// What one read brought: the advanced state and the new events of each stream, which start at
/// the stream totals before the read (`first_seq`: node, flow).
pub struct Fetched {
    pub arn: String,
    pub tracked: Tracked,
    pub new_node: Vec<Event>,
    pub new_flow: Vec<Event>,
    pub first_seq: (usize, usize),
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

/// Reads one execution's new events (and errors at the end) without touching shared state;
/// the Flow stream only when `flow_stream` (see `reads_flow_stream`); action events with the
/// `documents` given.
pub async fn fetch(source: FlowSource, mut t: Tracked, work: Work, flow_stream: bool, documents: ActionDocuments) -> Result<Fetched, (String, ApiError)> {
    let arn = t.arn.clone();
    let first_seq = (t.node_cursor.total, t.flow_cursor.total);
    let mut new_node = Vec::new();
    let mut new_flow = Vec::new();
    if !(work == Work::Final && t.final_read) {
        let mut vanished = false;
        let streams: &[EventStream] = if flow_stream { &[EventStream::Node, EventStream::Flow] } else { &[EventStream::Node] };
        for &stream in streams {
            let cursor = match stream {
                EventStream::Node => t.node_cursor.clone(),
                EventStream::Flow => t.flow_cursor.clone(),
            };
            match read_stream(&source, &t, stream, cursor, documents).await {
                Ok((events, cursor)) => match stream {
                    EventStream::Node => (new_node, t.node_cursor) = (events, cursor),
                    EventStream::Flow => (new_flow, t.flow_cursor) = (events, cursor),
                },
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
    Ok(Fetched { arn, tracked: t, new_node, new_flow, first_seq })
}

/// Pages one stream from its cursor: re-requests the tail page and keeps only what is new;
/// falls back to a full re-read (skipping what was read) when the token is rejected.
async fn read_stream(
    source: &FlowSource,
    t: &Tracked,
    stream: EventStream,
    mut cursor: Cursor,
    documents: ActionDocuments,
) -> Result<(Vec<Event>, Cursor), ApiError> {
    let mut new = Vec::new();
    let mut token = cursor.token.clone();
    let mut skip = cursor.consumed;
    loop {
        match source.list_events(&t.flow_id, &t.alias, &t.arn, stream, token.clone(), skip, documents).await {
            Ok((page_len, items, next)) => {
                if page_len < skip {
                    // The page shrank: the token no longer means what it did.
                    return reread_all(source, t, stream, cursor.total, documents).await;
                }
                new.extend(items);
                match next {
                    Some(n) => {
                        token = Some(n);
                        skip = 0;
                    }
                    None => {
                        cursor.token = token;
                        cursor.consumed = page_len;
                        cursor.total += new.len();
                        return Ok((new, cursor));
                    }
                }
            }
            Err(e) if e.kind == ErrorKind::Validation && token.is_some() => {
                tracing::debug!(arn = %t.arn, "page token rejected; re-reading the stream from the start");
                let (mut all_new, cursor) = reread_all(source, t, stream, cursor.total, documents).await?;
                // Events read on earlier pages of this pass are part of the re-read too.
                all_new.drain(..new.len().min(all_new.len()));
                new.extend(all_new);
                return Ok((new, cursor));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the whole stream again; the first `already` events (read before) are dropped as the
/// SDK gave them.
async fn reread_all(
    source: &FlowSource,
    t: &Tracked,
    stream: EventStream,
    already: usize,
    documents: ActionDocuments,
) -> Result<(Vec<Event>, Cursor), ApiError> {
    let mut new = Vec::new();
    let (mut token, mut total): (Option<String>, usize) = (None, 0);
    loop {
        let skip = already.saturating_sub(total);
        let (page_len, items, next) = source.list_events(&t.flow_id, &t.alias, &t.arn, stream, token.clone(), skip, documents).await?;
        total += page_len;
        new.extend(items);
        match next {
            Some(n) => token = Some(n),
            None => return Ok((new, Cursor { token, consumed: page_len, total: total.max(already) })),
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
        let read = fetch(source, crate::state::tests::tracked("arn:x"), Work::Final, true, ActionDocuments::Keep);
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
        let first = fetch(source.clone(), t, Work::Fetch, true, ActionDocuments::Keep).await.map_err(|(_, e)| e).unwrap();
        assert_eq!((first.new_node.len(), first.new_flow.len()), (facts.node_events.len(), facts.flow_events.len()));
        assert_eq!(first.first_seq, (0, 0));
        let (node_pages, flow_pages) = (facts.node_events.len().div_ceil(10) as u64, facts.flow_events.len().div_ceil(10) as u64);
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages, "every page once");
        assert_eq!(first.tracked.node_cursor.total, facts.node_events.len());

        // A poll of a running execution: the Node stream's tail page only (with its definition
        // known; without it, the Flow stream names the Input and Output nodes, so both).
        assert!(!reads_flow_stream(&first.tracked, Work::Fetch, true));
        assert!(reads_flow_stream(&first.tracked, Work::Fetch, false) && reads_flow_stream(&first.tracked, Work::Final, true));
        let poll = fetch(source.clone(), first.tracked, Work::Fetch, false, ActionDocuments::Keep).await.map_err(|(_, e)| e).unwrap();
        assert!(poll.new_node.is_empty() && poll.new_flow.is_empty());
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages + 1, "one call: the Node stream's tail page");

        let again = fetch(source.clone(), poll.tracked, Work::Final, true, ActionDocuments::Keep).await.map_err(|(_, e)| e).unwrap();
        assert!(again.new_node.is_empty() && again.new_flow.is_empty(), "nothing is read twice");
        assert_eq!(again.first_seq, (facts.node_events.len(), facts.flow_events.len()));
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages + 3, "the final read: one tail page per stream");
        assert_eq!(calls()["GetFlowExecution"], 1, "the errors of a Failed execution, at its final read");
        assert!(again.tracked.final_read && again.tracked.errors.is_some());

        let done = fetch(source, again.tracked, Work::Final, true, ActionDocuments::Keep).await.map_err(|(_, e)| e).unwrap();
        assert_eq!(calls()["ListFlowExecutionEvents"], node_pages + flow_pages + 3, "a final read is made once");
        assert!(done.new_node.is_empty());
        emulator.stop().await;
    }
}
