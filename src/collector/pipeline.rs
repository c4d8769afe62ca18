//! The pipeline of a chunk of executions: their snapshots, their reads (concurrently), the fold
//! of each page of new events into the execution's state as it arrives, delivery of the spans
//! the folds closed, then one checkpoint transaction: cursors and fold states, with the spans
//! not accepted put in the outbox in the same transaction. Only then is anything counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::delivery::{self, Delivery, Ready, Room, PARK_RETRY};
use super::events::Instruments;
use super::events::{CheckpointWritten, EventsReceived, ProblemFound, ReadDenied, StoreFailed};
use super::fetch::{self, fetch, Fetched, Pages};
use super::lifecycle::Tracked;
use super::outbox::{Accepted, ParcelBody};
use super::plan::Work;
use super::Collector;
use crate::convert::{self, ContentPolicy, ExecutionIds, ExecutionState, ExecutionView, NewEvents, NodeTypes, Problem};
use crate::model::{Event, ExecutionStatus, FlowDefinition, Timestamp};
use crate::source::{ActionDocuments, ApiError, ErrorKind, EventStream, FlowSource};
use crate::span::SpanEventRecord;
use crate::state::{Checkpoint, Parcel, RunEventRow, RunEvents};
use crate::timefmt::now_nanos;

/// Flow definitions kept parsed in memory; DRAFT ones (one per execution) are dropped first.
const SNAPSHOT_CACHE_ENTRIES: usize = 256;

/// The version of the saved fold state (`convert::ExecutionState`). A saved state of another
/// version is not guessed at: that execution is read again from the start.
pub(super) const STATE_VERSION: u32 = 5;

/// Saved fold states this build reads: version 1 kept the held runs' span events inline; from
/// version 2 they are rows of their own (`state::RunEvents`), and the state holds none; from
/// version 3 the state names how its event fingerprints are made (before, FNV-1a over the
/// wire text, which a state read from version 1 or 2 goes on making); from version 4 they know
/// an action event by its call, not its documents (`fingerprint::Scheme::Calls`); from
/// version 5 they are made by walking the event's parts in place
/// (`fingerprint::Scheme::Positional`). A state of an older scheme goes on with it, and its
/// reads keep the action documents it counts.
const STATE_VERSIONS_READ: [u32; 5] = [1, 2, 3, 4, 5];

#[derive(serde::Serialize)]
struct SavedStateRef<'a> {
    version: u32,
    state: &'a ExecutionState,
}

#[derive(serde::Deserialize)]
struct SavedState {
    version: u32,
    state: serde_json::Value,
}

/// The saved form of a fold state.
pub(super) fn encode_state(state: &ExecutionState) -> String {
    serde_json::to_string(&SavedStateRef { version: STATE_VERSION, state }).unwrap_or_default()
}

/// A saved fold state, or why it cannot be used.
pub(super) fn decode_state(text: &str) -> Result<ExecutionState, String> {
    let saved: SavedState = serde_json::from_str(text).map_err(|e| format!("unreadable ({e})"))?;
    if !STATE_VERSIONS_READ.contains(&saved.version) {
        return Err(format!("version {} (this build reads versions {STATE_VERSIONS_READ:?})", saved.version));
    }
    serde_json::from_value(saved.state).map_err(|e| format!("unreadable ({e})"))
}

/// The saved form of a fold state without its held runs' span events (they are saved as
/// rows of their own, see `run_events_delta`).
fn encode_state_without_run_events(state: &mut ExecutionState) -> String {
    let events = state.take_span_events();
    let text = encode_state(state);
    state.restore_span_events(events);
    text
}

/// What a checkpoint writes of the held runs' span events: the rows added since `saved` (how
/// many of each run the store has), and the runs whose rows go (no longer held; or of unknown
/// content, count 0, which the store deletes before it adds). Also the counts once written.
pub(super) fn run_events_delta(state: &ExecutionState, saved: Option<&BTreeMap<u64, usize>>) -> (RunEvents, BTreeMap<u64, usize>) {
    let empty = BTreeMap::new();
    let saved = saved.unwrap_or(&empty);
    let mut delta = RunEvents::default();
    let mut counts = BTreeMap::new();
    for (run, events) in state.span_events() {
        let from = saved.get(&run).copied().unwrap_or(0).min(events.len());
        for (i, event) in events.iter().enumerate().skip(from) {
            delta.added.push((run as i64, i as i64, serde_json::to_string(event).unwrap_or_default()));
        }
        if !events.is_empty() {
            counts.insert(run, events.len());
        }
    }
    delta.closed = saved.iter().filter(|(run, n)| **n == 0 || !counts.contains_key(run)).map(|(run, _)| *run as i64).collect();
    (delta, counts)
}

/// Puts saved span events back on their runs; the counts saved per run, or why the rows
/// cannot be used.
pub(super) fn restore_run_events(state: &mut ExecutionState, rows: &[RunEventRow]) -> Result<BTreeMap<u64, usize>, String> {
    let mut by_run: BTreeMap<u64, Vec<SpanEventRecord>> = BTreeMap::new();
    for (run, i, body) in rows {
        let events = by_run.entry(*run as u64).or_default();
        if *i != events.len() as i64 {
            return Err(format!("run {run} has event {i} after {} events", events.len()));
        }
        events.push(serde_json::from_str(body).map_err(|e| format!("run {run} event {i}: {e}"))?);
    }
    let counts = by_run.iter().map(|(run, events)| (*run, events.len())).collect();
    state.restore_span_events(by_run);
    Ok(counts)
}

/// One execution after its fold: the state to checkpoint and the spans it closed, made ready
/// to send (those of each fold apart, see `FoldPages::spans`).
struct Folded {
    execution: Tracked,
    state: ExecutionState,
    spans: Vec<Ready>,
    /// The spans' encoded lengths (from `delivery::Ready::new`), in order.
    lens: Vec<usize>,
    problems: Vec<Problem>,
    unknown_status: Option<String>,
    done: bool,
}

/// An execution's read folded page by page as the pages arrive (`fetch::Pages`): each page's
/// events are counted and folded into (a copy of) the execution's state while they are in the
/// cache, then freed; the spans they closed wait for the chunk's delivery. The registry
/// changes only once the checkpoint is written.
struct FoldPages<'a> {
    /// The execution's state as checkpointed; copied (with the ids made) only at the first
    /// page: a read that brings nothing, each poll of a quiet execution, costs neither.
    saved: Option<&'a ExecutionState>,
    state: Option<ExecutionState>,
    ids: Option<ExecutionIds>,
    types: Option<Arc<NodeTypes>>,
    /// Borrowed from the configured flows (a flow not configured goes by its id).
    flow_name: std::borrow::Cow<'a, str>,
    policy: &'a ContentPolicy,
    events: &'a Instruments,
    /// When the chunk began (the events' lag is measured to it).
    now: i64,
    /// The spans of each fold, made ready to send (measured, cut to fit a request, encoded,
    /// their tallies taken) as the fold made them, while they are in the cache: appending
    /// them to one vector would copy the earlier ones, cold by then. The chunk's delivery
    /// borrows them where they are.
    spans: Vec<Ready>,
    /// Each span's encoded length, in order.
    lens: Vec<usize>,
    room: Room,
    problems: Vec<Problem>,
}

impl FoldPages<'_> {
    fn fold(&mut self, t: &Tracked, finished: bool, new: NewEvents<'_>) {
        let view = ExecutionView {
            arn: &t.arn,
            flow_id: &t.flow_id,
            flow_name: &self.flow_name,
            alias: &t.alias,
            version: &t.version,
            status: &t.status,
            created_at: Timestamp(t.created_at),
            ended_at: t.ended_at.map(Timestamp),
            finished,
            types: self.types.as_deref(),
            errors: t.errors.as_deref().unwrap_or(&[]),
        };
        let state = self.state.get_or_insert_with(|| self.saved.cloned().unwrap_or_default());
        let ids = self.ids.get_or_insert_with(|| ExecutionIds::new(&t.arn, &t.flow_id));
        let conversion = convert::fold_with(ids, state, &view, new, self.policy);
        if !conversion.spans.is_empty() {
            self.spans.push(Ready::new(conversion.spans, self.room, self.events, &mut self.lens));
        }
        self.problems.extend(conversion.problems);
    }
}

impl Pages for FoldPages<'_> {
    fn page(&mut self, t: &Tracked, stream: EventStream, first: usize, events: Vec<Event>) {
        self.events.emit(EventsReceived { events: &events, now: self.now });
        // Until the read ends the execution is not finished: only its final fold closes it.
        let new = match stream {
            EventStream::Node => NewEvents { node: &events, flow: &[], first: (first, t.flow_cursor.total) },
            EventStream::Flow => NewEvents { node: &[], flow: &events, first: (t.node_cursor.total, first) },
        };
        self.fold(t, false, new);
    }
}

impl Collector {
    pub(super) async fn definition_for(&mut self, t: &Tracked) -> Result<Option<Arc<NodeTypes>>, ApiError> {
        let key = if t.version == "DRAFT" { format!("DRAFT:{}", t.arn) } else { t.version.clone() };
        let cache_key = (t.flow_id.clone(), key.clone());
        if let Some(d) = self.snapshots.get(&cache_key) {
            return Ok(d.clone());
        }
        let stored = match self.store.snapshot(&t.flow_id, &key).await {
            Ok(stored) => stored,
            Err(e) => {
                self.events.emit(StoreFailed { operation: "snapshot", doing: "read the saved flow definition (it is read from the API)", error: &e });
                None
            }
        };
        let text = match stored {
            Some(text) => text,
            None => {
                let Some(f) = self.flow_index(&t.flow_id) else {
                    return Ok(None);
                };
                match self.flows[f].source.get_snapshot(&t.flow_id, &t.alias, &t.arn).await {
                    Ok((_, definition)) => {
                        if let Err(e) = self.store.put_snapshot(&t.flow_id, &key, &definition).await {
                            self.events.emit(StoreFailed {
                                operation: "snapshot",
                                doing: "save the flow definition (it is read from the API again after a restart)",
                                error: &e,
                            });
                        }
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
        let types = if text.is_empty() {
            None
        } else {
            match serde_json::from_str::<FlowDefinition>(&text) {
                Ok(d) => Some(Arc::new(NodeTypes::of(&d))),
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
        self.snapshots.insert(cache_key, types.clone());
        Ok(types)
    }

    /// Reads, folds and checkpoints one chunk of executions. False when the store refused
    /// the checkpoint: the cycle reads no further (what it read would be read again anyway).
    pub(super) async fn process_chunk(&mut self, chunk: &[(String, Work)]) -> bool {
        if self.outbox.is_full() {
            return true;
        }
        let now = now_nanos();
        // Snapshots first, one call per (flow, version), before the concurrent reads.
        let mut definitions: HashMap<String, Option<Arc<NodeTypes>>> = HashMap::new();
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
        // Concurrent reads of the executions whose snapshot is known. An action's documents
        // are kept only where content is captured or an older state's fingerprints count them.
        let capture = self.policy.captures();
        let jobs: Vec<(Tracked, Work, FlowSource, bool, ActionDocuments)> = chunk
            .iter()
            .filter(|(arn, _)| definitions.contains_key(arn))
            .filter_map(|(arn, w)| {
                let t = self.tracked.get(arn)?.clone();
                let f = self.flow_index(&t.flow_id)?;
                let flow_stream = fetch::reads_flow_stream(&t, *w, definitions.get(arn).is_some_and(Option::is_some));
                let keep = capture || self.folds.get(arn).is_some_and(ExecutionState::needs_action_documents);
                let documents = if keep { ActionDocuments::Keep } else { ActionDocuments::UsageOnly };
                Some((t, *w, self.flows[f].source.clone(), flow_stream, documents))
            })
            .collect();
        // Each page of a read is folded as it arrives, while its events are still in the cache,
        // and the events go; the spans wait for the chunk's delivery.
        let this = &*self;
        let room = this.room();
        let mut reads = stream::iter(jobs)
            .map(|(t, w, source, flow_stream, documents)| {
                let pages = FoldPages {
                    saved: this.folds.get(&t.arn),
                    state: None,
                    ids: None,
                    types: definitions.get(&t.arn).cloned().flatten(),
                    flow_name: match this.flow_index(&t.flow_id) {
                        Some(i) => this.flows[i].name.as_str().into(),
                        None => t.flow_id.clone().into(),
                    },
                    policy: &this.policy,
                    events: &this.events,
                    now,
                    spans: Vec::new(),
                    lens: Vec::new(),
                    room,
                    problems: Vec::new(),
                };
                fetch(source, t, w, flow_stream, documents, pages)
            })
            .buffer_unordered(this.poll.concurrency);
        let mut folded = Vec::with_capacity(chunk.len());
        while let Some(result) = reads.next().await {
            let f = match result {
                Ok(f) => f,
                Err((arn, e)) => {
                    tracing::debug!(arn = %arn, error = %e, "reading events failed; retried next cycle");
                    if let Some(t) = this.tracked.get(&arn).filter(|_| e.kind == ErrorKind::AccessDenied) {
                        this.events.emit(ReadDenied { flow_id: &t.flow_id, error: &e });
                    }
                    continue;
                }
            };
            // A read that brought nothing (a running execution without new events) changes
            // neither the state nor the spans: no fold, no write.
            if this.tracked.get(&f.arn) == Some(&f.tracked) && f.new_events == 0 {
                continue;
            }
            folded.push(Self::finish_read(f));
        }
        drop(reads);
        folded.is_empty() || self.checkpoint(folded).await
    }

    /// The end of a read folded page by page: an execution finished with it has its final
    /// fold (the open runs close, the root span comes out).
    fn finish_read(f: Fetched<FoldPages<'_>>) -> Folded {
        let (mut t, mut pages) = (f.tracked, f.pages);
        let done = t.status.is_terminal() && t.final_read;
        if done {
            pages.fold(&t, true, NewEvents { node: &[], flow: &[], first: (t.node_cursor.total, t.flow_cursor.total) });
        }
        let mut unknown_status = None;
        if let ExecutionStatus::Unknown(s) = &t.status {
            if !t.unknown_status_counted {
                unknown_status = Some(s.clone());
                t.unknown_status_counted = true;
            }
        }
        let state = pages.state.unwrap_or_else(|| pages.saved.cloned().unwrap_or_default());
        Folded { execution: t, state, spans: pages.spans, lens: pages.lens, problems: pages.problems, unknown_status, done }
    }

    /// Delivers the spans of the folded executions, then writes every checkpoint in one
    /// transaction, with what the endpoint did not accept put in the outbox. Then counts.
    /// False when the store failed to write it (a lease lost is not the store's failure).
    async fn checkpoint(&mut self, folded: Vec<Folded>) -> bool {
        // The spans' bytes and tallies stay where their folds made them (out of the cache by
        // now: copying them into one list would cost a pass); the chunk's lists borrow them,
        // in order. `lens` holds one length a span: execution i's spans are
        // `bounds[i]..bounds[i + 1]`.
        let mut parts: Vec<Ready> = Vec::with_capacity(folded.iter().map(|f| f.spans.len()).sum());
        let mut lens: Vec<usize> = Vec::with_capacity(folded.iter().map(|f| f.lens.len()).sum());
        let mut bounds: Vec<usize> = Vec::with_capacity(folded.len() + 1);
        let mut rest = Vec::with_capacity(folded.len());
        for f in folded {
            bounds.push(lens.len());
            let Folded { execution, state, spans: closed, lens: measured, problems, unknown_status, done } = f;
            parts.extend(closed);
            lens.extend(measured);
            rest.push((execution, state, problems, unknown_status, done));
        }
        bounds.push(lens.len());
        let (spans, tallies) = delivery::lay_out(&parts, &lens);
        let deliveries = self.send_now(&spans, &lens, &bounds).await;
        // Checkpoints for all; parcels for the spans not accepted.
        let now = now_nanos();
        let mut checkpoints = Vec::with_capacity(rest.len());
        let mut parcels = Vec::new();
        let mut parcel_of: Vec<Option<usize>> = Vec::with_capacity(rest.len());
        let mut counts_after = Vec::with_capacity(rest.len());
        for (i, (t, state, _, _, done)) in rest.iter_mut().enumerate() {
            let (events, counts) = if *done { (RunEvents::default(), BTreeMap::new()) } else { run_events_delta(state, self.saved_events.get(&t.arn)) };
            counts_after.push(counts);
            let text = if *done { String::new() } else { encode_state_without_run_events(state) };
            checkpoints.push(Checkpoint { execution: t.clone(), state: text, done: *done, events });
            let range = bounds[i]..bounds[i + 1];
            let not_before = match &deliveries[i] {
                Delivery::Accepted => {
                    parcel_of.push(None);
                    continue;
                }
                Delivery::NotSent => 0,
                Delivery::Refused { .. } => now + PARK_RETRY.as_nanos() as i64,
            };
            let body = ParcelBody::new(t, state.spans, *done, &spans[range.clone()], &lens[range.clone()], &tallies[range]);
            parcel_of.push(Some(parcels.len()));
            parcels.push(Parcel { arn: t.arn.clone(), body: body.encode(), not_before });
        }
        let bytes = checkpoints.iter().map(|c| (c.state.len() + c.events.added.iter().map(|(_, _, b)| b.len()).sum::<usize>()) as u64).sum::<u64>()
            + parcels.iter().map(|p| p.body.len() as u64).sum::<u64>();
        let fences = self.fences(checkpoints.iter().map(|c| c.execution.flow_id.as_str()));
        let ids = match self.store.checkpoint_fenced(&checkpoints, &parcels, &fences).await {
            Ok(ids) => {
                self.events.emit(CheckpointWritten(bytes));
                ids
            }
            Err(e @ crate::state::StateError::LeaseLost(_)) => {
                self.fenced_off(&e);
                return true;
            }
            Err(e) => {
                // Nothing advanced: the same events are read and folded again next cycle (and
                // the spans already accepted are sent again, with the same ids).
                self.events.emit(StoreFailed {
                    operation: "checkpoint",
                    doing: "write the checkpoint (its events are read again next cycle, and this cycle reads no further)",
                    error: &e,
                });
                return false;
            }
        };
        let mut accepted = Vec::new();
        for (i, ((t, mut state, problems, unknown_status, done), counts)) in rest.into_iter().zip(counts_after).enumerate() {
            for p in &problems {
                self.events.emit(ProblemFound { reason: p.reason, detail: &p.detail });
            }
            if let Some(s) = unknown_status {
                self.events.emit(ProblemFound { reason: "unknown_status", detail: &s });
            }
            match parcel_of[i] {
                None => accepted.push(Accepted {
                    arn: t.arn.clone(),
                    flow_id: t.flow_id.clone(),
                    alias: t.alias.clone(),
                    status: t.status.as_str().to_string(),
                    spans_total: state.spans,
                    done,
                    spans: bounds[i]..bounds[i + 1],
                }),
                Some(p) => {
                    let parcel = &parcels[p];
                    self.outbox.add(ids[p], &t.arn, parcel.body.len() as u64, parcel.not_before);
                    if let Delivery::Refused { reason, message } = &deliveries[i] {
                        self.park(&t.flow_id, &t.arn, reason, message.clone());
                    }
                }
            }
            if done {
                self.tracked.remove(&t.arn);
                self.folds.remove(&t.arn);
                self.saved_events.remove(&t.arn);
                if t.version == "DRAFT" {
                    self.snapshots.remove(&(t.flow_id.clone(), format!("DRAFT:{}", t.arn)));
                }
            } else {
                self.saved_events.insert(t.arn.clone(), counts);
                state.shrink();
                self.folds.insert(t.arn.clone(), state);
                self.tracked.insert(t.arn.clone(), t);
            }
        }
        self.outbox_changed();
        self.observe_accepted(&accepted, &tallies);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_of_another_version_is_refused_not_guessed_at() {
        let mut state = ExecutionState::default();
        state.spans = 7;
        let text = encode_state(&state);
        assert_eq!(decode_state(&text).unwrap(), state);
        let future = text.replacen(&format!("\"version\":{STATE_VERSION}"), "\"version\":99", 1);
        assert!(decode_state(&future).unwrap_err().contains("version 99"), "{}", decode_state(&future).unwrap_err());
        assert!(decode_state("{\"version\":1,\"state\":{\"open\":7}}").unwrap_err().contains("unreadable"));
        assert!(decode_state("not json").is_err());
        // Version 1 (span events inline, no rows) is still read as it is.
        let v1 = text.replacen(&format!("\"version\":{STATE_VERSION}"), "\"version\":1", 1);
        assert_eq!(decode_state(&v1).unwrap(), state);
    }

    /// A doc-batch Iterator folded a few events at a time, each fold checkpointed as the
    /// pipeline does into a model of the store's rows: each checkpoint adds exactly the span
    /// events the held runs gathered since the last one (never one twice), drops the rows of
    /// runs that closed, and the saved state read back with its rows is the state in memory.
    #[test]
    fn checkpoints_append_the_new_span_events_and_read_back_the_whole_state() {
        let (flow, node, types) = crate::convert::tests::doc_batch_history(200, 7);
        let status = ExecutionStatus::Running;
        let view = crate::convert::tests::running_view("arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/rows", &status, &types);
        let policy = crate::convert::ContentPolicy::default();
        let mut state = ExecutionState::default();
        convert::fold(&mut state, &view, NewEvents { node: &[], flow: &flow, first: (0, 0) }, &policy);
        let mut store: BTreeMap<(i64, i64), String> = BTreeMap::new();
        let mut saved: Option<BTreeMap<u64, usize>> = None;
        let (mut added_total, mut light_max, mut full_max) = (0, 0, 0);
        for (i, chunk) in node.chunks(7).enumerate() {
            let before: BTreeMap<u64, usize> = state.span_events().map(|(run, e)| (run, e.len())).collect();
            convert::fold(&mut state, &view, NewEvents { node: chunk, flow: &[], first: (i * 7, flow.len()) }, &policy);
            let (delta, counts) = run_events_delta(&state, saved.as_ref());
            let gathered: usize = state.span_events().map(|(run, e)| e.len() - if saved.is_some() { before.get(&run).copied().unwrap_or(0) } else { 0 }).sum();
            assert_eq!(delta.added.len(), gathered, "chunk {i}: the rows added are the span events gathered since the last checkpoint");
            added_total += delta.added.len();
            store.retain(|(run, _), _| !delta.closed.contains(run));
            for (run, index, body) in &delta.added {
                assert!(store.insert((*run, *index), body.clone()).is_none(), "chunk {i}: row ({run}, {index}) written twice");
            }
            saved = Some(counts);
            let light = encode_state_without_run_events(&mut state);
            (light_max, full_max) = (light_max.max(light.len()), full_max.max(encode_state(&state).len()));
            let rows: Vec<RunEventRow> = store.iter().map(|((run, index), body)| (*run, *index, body.clone())).collect();
            let mut back = decode_state(&light).unwrap();
            restore_run_events(&mut back, &rows).unwrap();
            assert_eq!(back, state, "chunk {i}: the state read back with its rows");
        }
        let held: usize = state.span_events().map(|(_, e)| e.len()).sum();
        assert_eq!(store.len(), held, "only the held runs' events stay");
        assert!(added_total > 500, "{added_total} rows over the run");
        assert!(full_max > 2 * light_max, "the rewritten state without the events: {light_max} bytes at most, with them {full_max}");
        // Rows that do not follow on from each other are refused (the execution is read again).
        assert!(restore_run_events(&mut ExecutionState::default(), &[(1, 1, "{}".into())]).unwrap_err().contains("run 1"));
    }
}
