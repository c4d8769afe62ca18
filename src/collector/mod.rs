//! The collector (SPEC §2, §9, §10): discovers executions, pages incrementally through both
//! event streams, folds the new events into each execution's state, exports the spans they
//! closed, and checkpoints (cursors and fold state) once those spans are safe.
//!
//! One pass is `cycle`: `discovery` lists the flows, the `outbox` sends what waits in it, `plan`
//! picks the work of each tracked execution, and `pipeline` processes the work in chunks
//! (`fetch` reads concurrently, `convert::fold` folds, `delivery` sends the closed spans, one
//! transaction checkpoints every execution of the chunk and puts what was not accepted in the
//! outbox). What happens is emitted as `events`, which the metrics, the status `board` and the
//! demo's console consume; `observe` counts the running executions. The execution's state
//! between cycles is `lifecycle::Tracked` with its fold state, kept in two registries
//! (`tracked`, `folds`) that change only when a checkpoint is written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::watch;

use crate::config::{Config, PollConfig};
use crate::convert::{ContentPolicy, ExecutionState, NodeTypes};
use crate::export::Exporter;
use crate::metrics::{FlowLabels, Metrics};
use crate::source::FlowSource;
use crate::state::{Share, StateStore};

mod board;
mod delivery;
mod discovery;
mod events;
mod fetch;
mod leases;
pub mod lifecycle;
mod observe;
mod outbox;
mod pipeline;
mod plan;

use discovery::{Admission, Scan};
use events::{AliasSeen, FirstPollDone, Instruments, TrackedCounted};
use lifecycle::{Cursor, Tracked};
use outbox::Outbox;
use plan::Work;

use crate::timefmt::now_nanos;

const SECOND: i64 = 1_000_000_000;

/// A configured flow with its AWS client.
pub struct Flow {
    pub id: String,
    pub name: String,
    pub aliases: Vec<String>,
    pub source: FlowSource,
    /// The unit of a lease between replicas: the flow with its account and region.
    pub lease_key: String,
    /// The request budget of the flow's account and region (shared by the flows of that target).
    pub budget: Arc<crate::source::RequestBudget>,
}

pub use board::{FinishedExecution, FinishedHook, FlowStatus, ParkedExecution, StatusBoard};
pub use leases::member_id;

pub struct Collector {
    flows: Vec<Flow>,
    store: Arc<dyn StateStore>,
    exporter: Arc<Exporter>,
    /// Where what happens shows: metrics, the status board, the demo's console.
    events: Instruments,
    policy: ContentPolicy,
    poll: PollConfig,
    /// The executions worked on, by ARN. The maps keyed by ARN hash with FxHash: the keys
    /// come from the API, not from whoever could choose colliding ones, and SipHash over a
    /// 100-byte ARN cost more than the look-up it served.
    tracked: FxHashMap<String, Tracked>,
    /// The fold state of each tracked execution (as checkpointed).
    folds: FxHashMap<String, ExecutionState>,
    /// How many span events of each held run (by run) the store has, per execution: a
    /// checkpoint appends only the rest.
    saved_events: FxHashMap<String, BTreeMap<u64, usize>>,
    snapshots: HashMap<(String, String), Option<Arc<NodeTypes>>>,
    export_backoff: Option<(Instant, Duration)>,
    /// Executions the OTLP endpoint refused for good, with when to offer them again.
    parked: HashMap<String, Instant>,
    /// Spans waiting for the endpoint.
    outbox: Outbox,
    /// Executions this process finished, by status, and spans it exported.
    finished_here: std::collections::BTreeMap<String, usize>,
    spans_here: u64,
    /// OTLP export requests that failed in this process (for `summary`).
    export_failures_here: std::sync::atomic::AtomicU64,
    /// (flow, alias) pairs seen: their gauges stay (at 0) when nothing runs.
    seen_aliases: HashSet<(String, String)>,
    /// Replicas: this member, the lease duration, how many flows it wants, the leases held
    /// (key -> counter) and who holds each flow (key -> member), the flows worked on (ids), and
    /// whether the first coordination happened.
    member: String,
    lease_ms: i64,
    share: Share,
    held: HashMap<String, i64>,
    holders: HashMap<String, String>,
    working: HashSet<String>,
    loaded_once: bool,
    last_coordinated: Instant,
}

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
            metrics.flow_configured.get_or_create(&vec![("flow_id", flow.id.clone())]).set(1);
        }
        let events = Instruments::new(metrics, board, on_finished);
        for flow in &flows {
            for alias in &flow.aliases {
                events.emit(AliasSeen(&FlowLabels { flow_id: flow.id.clone(), flow_name: flow.name.clone(), alias: alias.clone() }));
            }
        }
        let outbox = Outbox::new(store.outbox().await?, config.traces.outbox_max_bytes);
        let member = store.member().unwrap_or_else(leases::member_id);
        let mut collector = Collector {
            flows,
            store,
            exporter,
            events,
            policy,
            poll: config.poll.clone(),
            tracked: FxHashMap::with_capacity_and_hasher(loaded.len(), Default::default()),
            folds: FxHashMap::with_capacity_and_hasher(loaded.len(), Default::default()),
            saved_events: FxHashMap::default(),
            snapshots: HashMap::new(),
            export_backoff: None,
            parked: HashMap::new(),
            outbox,
            finished_here: Default::default(),
            spans_here: 0,
            export_failures_here: Default::default(),
            seen_aliases: HashSet::new(),
            member,
            lease_ms: config.state.lease_secs as i64 * 1000,
            share: Share::Fair,
            held: HashMap::new(),
            holders: HashMap::new(),
            working: HashSet::new(),
            loaded_once: false,
            last_coordinated: Instant::now(),
        };
        for saved in loaded {
            collector.adopt(saved);
        }
        collector.events.emit(TrackedCounted(collector.tracked.len()));
        collector.restore_parked();
        Ok(collector)
    }

    /// "N executions exported (Succeeded: a, ...), M spans": what this process did.
    pub fn summary(&self) -> String {
        let total: usize = self.finished_here.values().sum();
        let by_status: Vec<String> = self.finished_here.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        let failed = self.export_failures_here.load(std::sync::atomic::Ordering::Relaxed);
        let failed = if failed > 0 { format!(", {failed} OTLP export request(s) failed") } else { String::new() };
        format!("{total} executions exported ({}), {} spans{failed}", by_status.join(", "), self.spans_here)
    }

    pub fn tracked_count(&self) -> usize {
        self.tracked.len()
    }

    fn flow_index(&self, flow_id: &str) -> Option<usize> {
        self.flows.iter().position(|f| f.id == flow_id)
    }

    /// Takes a saved execution into the registry with its fold state (or, when that cannot be
    /// used, to be read again from the start).
    fn adopt(&mut self, saved: crate::state::Saved) {
        let crate::state::Saved { execution: mut t, state, events } = saved;
        let fold = match state.as_deref().map(pipeline::decode_state) {
            Some(Ok(mut fold)) => match pipeline::restore_run_events(&mut fold, &events) {
                Ok(counts) => {
                    self.saved_events.insert(t.arn.clone(), counts);
                    fold
                }
                Err(why) => {
                    tracing::warn!(arn = %t.arn, "the saved span events of this execution cannot be used ({why}); it is read again from the start");
                    (t.node_cursor, t.flow_cursor, t.final_read) = (Cursor::default(), Cursor::default(), false);
                    ExecutionState::default()
                }
            },
            None if t.node_cursor == Cursor::default() && t.flow_cursor == Cursor::default() => ExecutionState::default(),
            other => {
                let why = match other {
                    Some(Err(why)) => why,
                    _ => "none saved: a store of an older version".to_string(),
                };
                tracing::warn!(arn = %t.arn, "the saved fold state of this execution cannot be used ({why}); it is read again from the start");
                (t.node_cursor, t.flow_cursor, t.final_read) = (Cursor::default(), Cursor::default(), false);
                ExecutionState::default()
            }
        };
        self.folds.insert(t.arn.clone(), fold);
        self.tracked.insert(t.arn.clone(), t);
    }

    fn labels_of(&self, flow_id: &str, alias: &str) -> FlowLabels {
        FlowLabels { flow_id: flow_id.to_string(), flow_name: self.flow_name(flow_id), alias: alias.to_string() }
    }

    /// The flow's name as configured, or its id.
    fn flow_name(&self, flow_id: &str) -> String {
        self.flow_index(flow_id).map(|i| self.flows[i].name.clone()).unwrap_or_else(|| flow_id.to_string())
    }

    /// After a start: what waits in the outbox refused for good shows as parked again.
    fn restore_parked(&mut self) {
        let now = now_nanos();
        let parked: Vec<(String, i64)> = self.outbox.parked(now).map(|(arn, at)| (arn.to_string(), at)).collect();
        for (arn, at) in parked {
            let flow_id = outbox::flow_of(&arn).to_string();
            self.parked.insert(arn.clone(), Instant::now() + Duration::from_nanos((at - now).max(0) as u64));
            self.events.emit(events::ExecutionParked {
                flow_id: &flow_id,
                arn: &arn,
                reason: "refused",
                message: "refused for good before the last restart",
                retry_in: Duration::from_nanos((at - now).max(0) as u64),
                again: true,
                parked_now: self.parked.len(),
            });
        }
        self.outbox_changed();
    }

    /// What each tracked execution needs now, oldest first (then by ARN). The store writes an
    /// execution's row when it is listed, and listings come in creation order, so a chunk of
    /// executions created one after another has its rows side by side: its checkpoint rewrites
    /// a few pages of the store, not a page or more for each execution as in ARN order
    /// (random ids; BENCHMARKS.md).
    fn plan(&self, now: i64) -> Vec<(String, Work)> {
        let settle = self.poll.settle_secs as i64 * SECOND;
        let mut work: Vec<(i64, String, Work)> =
            self.tracked.values().filter_map(|t| Some((t.created_at, t.arn.clone(), plan::work_for(t, now, settle)?))).collect();
        work.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        work.into_iter().map(|(_, arn, w)| (arn, w)).collect()
    }

    /// One pass: the leases, a listing of every flow (unless `listing` is `None`), then every
    /// execution that has work.
    pub async fn cycle(&mut self, listing: Option<Admission>, stop: &watch::Receiver<bool>) {
        if self.coordinate().await {
            self.work(listing, stop).await;
        }
    }

    /// A pass after the leases were coordinated: the listing (unless `None`), then the work.
    async fn work(&mut self, listing: Option<Admission>, stop: &watch::Receiver<bool>) {
        if let Some(admission) = listing {
            self.discover_all(Scan::Incremental, admission).await;
        }
        // Ready once every flow has been polled (successfully or not), not after the backlog.
        self.events.emit(FirstPollDone);
        self.flush_outbox().await;
        let now = now_nanos();
        self.update_running_gauges();
        let work = self.plan(now);
        // Two rounds of reads a chunk: a chunk's spans wait in memory for its delivery, and
        // a smaller chunk keeps them (and the folds' states) in the cache; eight rounds cost
        // the same instructions with more cache misses and memory (BENCHMARKS.md).
        let chunk_size = (self.poll.concurrency * 2).max(16);
        for chunk in work.chunks(chunk_size) {
            if *stop.borrow() {
                break;
            }
            // A long cycle renews its leases on the way (a third of the lease at most apart).
            if !self.renew_if_due().await {
                break;
            }
            let held: Vec<(String, Work)> = chunk.iter().filter(|(arn, _)| self.tracked.contains_key(arn)).cloned().collect();
            // A store that refused a checkpoint would refuse the next: reading on would cost
            // API calls (and sends) that are made again next cycle anyway.
            if !self.process_chunk(&held).await {
                break;
            }
        }
        self.events.emit(TrackedCounted(self.tracked.len()));
        self.update_running_gauges();
    }

    /// Forgets finished executions older than twice the lookback window.
    pub async fn prune(&mut self) {
        let before = now_nanos() - 2 * self.poll.lookback_secs as i64 * SECOND;
        if let Err(e) = self.store.prune(before).await {
            self.events.emit(events::StoreFailed { operation: "prune", doing: "forget finished executions older than twice the lookback", error: &e });
        }
    }

    /// The service loop: a cycle every `interval_secs` until `stop`.
    pub async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        let interval = Duration::from_secs(self.poll.interval_secs);
        let mut cycles: u64 = 0;
        loop {
            let started = Instant::now();
            self.cycle(Some(Admission::New), &stop).await;
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
    ///
    /// On a shared store the job is a member that wants every flow: it takes what is free (a
    /// replica gives back above its fair share as the job joins), works on what it holds, and
    /// keeps asking for the rest; a flow another replica still holds at the end is named, not
    /// called done. The caller `leave`s afterwards, so the replicas take the flows back at once.
    pub async fn run_once(&mut self, wait: Duration, stop: watch::Receiver<bool>) -> OnceOutcome {
        self.share = Share::All;
        let started = Instant::now();
        let interval = Duration::from_secs(self.poll.interval_secs);
        let mut unlisted: Vec<usize> = (0..self.flows.len()).collect();
        let mut listed: Vec<usize> = Vec::new();
        let mut listing_backoff = ONCE_LISTING_BACKOFF;
        let mut next_listing = started;
        // Spans a run before left in the outbox are part of the job too.
        let mut targets: HashSet<String> = self.outbox.arns().map(str::to_string).collect();
        let show_progress = std::io::stderr().is_terminal();
        loop {
            let cycle_started = Instant::now();
            // Leases first (on a shared store only a flow held here is listed here; a flow lost,
            // the store unreachable or a write fenced, is listed again once it is held again).
            let coordinated = self.coordinate().await;
            let lost: Vec<usize> = listed.iter().copied().filter(|&f| !self.holds(&self.flows[f].id)).collect();
            listed.retain(|f| !lost.contains(f));
            unlisted.extend(lost);
            // Re-list (without admitting new executions) only while some target still runs.
            let any_running = targets.iter().any(|a| self.tracked.get(a).is_some_and(|t| !t.status.is_terminal()));
            if any_running {
                self.discover_flows(&listed, Scan::Incremental, Admission::KnownOnly).await;
            }
            if !unlisted.is_empty() && cycle_started >= next_listing {
                let failed = self.discover_flows(&unlisted, Scan::Full, Admission::New).await;
                let (done, rest): (Vec<usize>, Vec<usize>) = unlisted.iter().partition(|&&f| !failed.contains(&f) && self.holds(&self.flows[f].id));
                listed.extend(done);
                targets.extend(self.tracked.keys().cloned());
                if !failed.is_empty() {
                    next_listing = Instant::now() + listing_backoff;
                    listing_backoff = (listing_backoff * 2).min(ONCE_LISTING_BACKOFF_MAX);
                }
                unlisted = rest;
            }
            if coordinated {
                self.work(None, &stop).await;
            }
            // What is left of the flows held here; the others are still `unlisted`.
            // (The outbox's executions as a set: one look-up per target, not a scan of it.)
            let waiting: HashSet<&str> = self.outbox.arns().collect();
            let left: Vec<String> =
                targets.iter().filter(|a| (self.tracked.contains_key(*a) || waiting.contains(a.as_str())) && self.holds(outbox::flow_of(a))).cloned().collect();
            if show_progress {
                eprint!("\r{}", progress_bar(targets.len() - left.len(), targets.len(), 30));
            }
            if (left.is_empty() && unlisted.is_empty()) || *stop.borrow() || started.elapsed() >= wait {
                if show_progress {
                    eprintln!();
                }
                let (mut unfinished, mut undelivered): (Vec<String>, Vec<String>) = left.into_iter().partition(|a| self.tracked.contains_key(a));
                unfinished.sort();
                undelivered.sort();
                let (elsewhere, never): (Vec<usize>, Vec<usize>) = unlisted.iter().partition(|&&f| !self.holds(&self.flows[f].id));
                let never_listed = never.iter().map(|&f| self.flows[f].id.clone()).collect();
                let held_elsewhere = elsewhere.iter().map(|&f| (self.flows[f].id.clone(), self.holders.get(&self.flows[f].lease_key).cloned())).collect();
                return OnceOutcome { unfinished, undelivered, never_listed, held_elsewhere };
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

/// What `run --once` leaves undone: executions not finished (ARNs), executions read to their
/// end whose spans the endpoint has not accepted yet (they wait in the outbox), flows never
/// listed, and (on a shared store) flows this job never held, with the replica that holds each.
#[derive(Debug, Default)]
pub struct OnceOutcome {
    pub unfinished: Vec<String>,
    pub undelivered: Vec<String>,
    pub never_listed: Vec<String>,
    pub held_elsewhere: Vec<(String, Option<String>)>,
}

impl OnceOutcome {
    pub fn complete(&self) -> bool {
        self.unfinished.is_empty() && self.undelivered.is_empty() && self.never_listed.is_empty() && self.held_elsewhere.is_empty()
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
