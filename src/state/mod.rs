//! The state stores (the one module that knows SQL and the on-disk format), behind the one small
//! interface of SPEC §2. Per execution: its lifecycle state with the cursors of both event
//! streams and its fold state (saved together: the checkpoint), whether it is done; the outbox
//! of spans waiting for the endpoint; snapshots per (flow, version); per flow, when it was last
//! listed.
//!
//! A checkpoint is written once the spans it closed are safe: accepted by the endpoint, or put
//! in the outbox in the same transaction. Events are not stored: the backlog is the API.
//! `SqliteStore` is the embedded default; `MemoryStore` serves tests and keeps the same contract
//! (`tests::contract`, which every implementation passes).

mod memory;
mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::collector::lifecycle::Tracked;

const SCHEMA_VERSION: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("state store {path} has schema version {found}; this build knows up to {SCHEMA_VERSION}")]
    FutureSchema { path: String, found: i64 },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state store: {0}")]
    Corrupt(String),
    #[error(
        "state store {path} is in use by {holder}: one process per SQLite file. Stop that process, give this one another `state.path`, or run replicas on a shared PostgreSQL store (`state.url`)"
    )]
    InUse { path: String, holder: String },
    #[error("state store lock file {path}: {source}")]
    Lock { path: String, source: std::io::Error },
    #[error("cannot create the directory of {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("state store: the blocking task failed: {0}")]
    Task(String),
    #[error("shared state store: {0}")]
    Remote(String),
    #[error("the lease of flow {0} is no longer this replica's: the write is refused")]
    LeaseLost(String),
}

/// A lease a write depends on: the flow's lease key and the counter it had when taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub flow_key: String,
    pub counter: i64,
}

/// The leases this replica holds after `coordinate` (flow key -> counter), the live members it
/// sees, and who holds each flow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leases {
    pub held: HashMap<String, i64>,
    pub members: usize,
    pub holders: HashMap<String, String>,
}

/// How many flows a member wants: a fair share of the live members' (a replica), or every
/// one it can get (`run --once`, a job that means to do all the work and then leaves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    Fair,
    All,
}

/// The checkpoint of one execution: its state with both cursors and its fold state (opaque text
/// the collector versions). With `done`, the execution is finished: its fold state is dropped
/// and only its row stays, so it is never collected again.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub execution: Tracked,
    pub state: String,
    pub done: bool,
    /// The span events its held runs gathered since the last checkpoint, and the runs no
    /// longer held (with `done`, every row of the execution goes).
    pub events: RunEvents,
}

/// One saved span event of a held run: (run, index in the run, the event as the collector
/// encodes it). Rows only grow while their run is held, so a checkpoint appends what is new
/// instead of rewriting them with the fold state.
pub type RunEventRow = (i64, i64, String);

/// Gives each saved execution its run-event rows: `rows` are (ARN, row) in (run, index) order
/// within an execution, as the stores select them.
fn attach_run_events(mut saved: Vec<Saved>, rows: impl IntoIterator<Item = (String, RunEventRow)>) -> Vec<Saved> {
    let mut by_arn: std::collections::HashMap<String, Vec<RunEventRow>> = std::collections::HashMap::new();
    for (arn, row) in rows {
        by_arn.entry(arn).or_default().push(row);
    }
    for s in &mut saved {
        s.events = by_arn.remove(&s.execution.arn).unwrap_or_default();
    }
    saved
}

/// What a checkpoint changes of an execution's run events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunEvents {
    pub added: Vec<RunEventRow>,
    pub closed: Vec<i64>,
}

/// An execution as saved: its state and its fold state (`None`: never folded, or saved by an
/// older version), and its held runs' span events (by run, then index).
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    pub execution: Tracked,
    pub state: Option<String>,
    pub events: Vec<RunEventRow>,
}

/// Spans waiting in the outbox (opaque bytes the collector encodes), for one execution; not
/// offered before `not_before` (nanoseconds since the epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct Parcel {
    pub arn: String,
    pub body: Vec<u8>,
    pub not_before: i64,
}

/// What is known of a parcel without reading its body.
#[derive(Clone, Debug, PartialEq)]
pub struct ParcelInfo {
    pub id: i64,
    pub arn: String,
    pub bytes: u64,
    pub not_before: i64,
}

/// When a flow was last listed successfully, and last read to its last page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMarks {
    pub last_poll: Option<i64>,
    pub last_full_scan: Option<i64>,
}

/// What the collector keeps between cycles and across restarts. Every write is atomic.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The executions not finished yet (at start).
    async fn load(&self) -> Result<Vec<Saved>, StateError>;
    /// The executions of these flows not finished yet (a replica taking flows over).
    async fn load_flows(&self, flow_ids: &[String]) -> Result<Vec<Saved>, StateError> {
        Ok(self.load().await?.into_iter().filter(|s| flow_ids.contains(&s.execution.flow_id)).collect())
    }
    /// Writes checkpoints and puts parcels in the outbox, in one transaction; returns the ids of
    /// the parcels in order.
    async fn checkpoint(&self, checkpoints: &[Checkpoint], parcels: &[Parcel]) -> Result<Vec<i64>, StateError>;
    /// Saves the states of many executions in one transaction (status changes from a listing);
    /// their fold states stay as they are. Taken by value: a store that writes on another
    /// thread moves them there instead of copying a listing of thousands again.
    async fn save_all(&self, executions: Vec<Tracked>) -> Result<(), StateError>;
    /// The parcels in the outbox, oldest first, without their bodies.
    async fn outbox(&self) -> Result<Vec<ParcelInfo>, StateError>;
    /// The bodies of these parcels (those still in the outbox), by id.
    async fn parcels(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, StateError>;
    /// Removes parcels the endpoint accepted.
    async fn delivered(&self, ids: &[i64]) -> Result<(), StateError>;
    /// Offers these parcels again only after `not_before`.
    async fn postpone(&self, ids: &[i64], not_before: i64) -> Result<(), StateError>;
    async fn snapshot(&self, flow_id: &str, key: &str) -> Result<Option<String>, StateError>;
    async fn put_snapshot(&self, flow_id: &str, key: &str, definition: &str) -> Result<(), StateError>;
    async fn flow_marks(&self, flow_id: &str) -> Result<FlowMarks, StateError>;
    /// Records a successful listing; `last_full_scan` only when it read every page.
    async fn set_flow_marks(&self, flow_id: &str, last_poll: i64, last_full_scan: Option<i64>) -> Result<(), StateError>;
    /// Which of `arns` are finished (never collected again).
    async fn finished_among(&self, arns: &[&str]) -> Result<HashSet<String>, StateError>;
    /// Forgets finished executions created before `before` (outside every lookback window, so
    /// they cannot be listed as new again). Returns how many were removed.
    async fn prune(&self, before: i64) -> Result<usize, StateError>;
    /// Whether several processes share this store (replicas).
    fn shared(&self) -> bool {
        false
    }
    /// The member id this store coordinates as (replicas).
    fn member(&self) -> Option<String> {
        None
    }
    /// `checkpoint`, refused as a whole (`LeaseLost`) unless every fence still holds, checked in
    /// the same transaction. A store of one process has no leases to check.
    async fn checkpoint_fenced(&self, checkpoints: &[Checkpoint], parcels: &[Parcel], fences: &[Fence]) -> Result<Vec<i64>, StateError> {
        let _ = fences;
        self.checkpoint(checkpoints, parcels).await
    }
    /// Replicas (SPEC §11): heartbeats this member, renews its leases, gives back what is above
    /// a fair share and takes free or expired ones up to it. A store of one process holds every
    /// flow, always.
    async fn coordinate(&self, flows: &[String], lease_ms: i64, share: Share) -> Result<Leases, StateError> {
        let _ = (lease_ms, share);
        Ok(Leases { held: flows.iter().map(|f| (f.clone(), 0)).collect(), members: 1, holders: HashMap::new() })
    }
    /// Replicas: gives back every lease this member holds and ends its membership, so that the
    /// others take its flows at their next cycle instead of after the lease runs out (a
    /// shutdown, the end of `run --once`). A store of one process has nothing to give back.
    async fn leave(&self) -> Result<(), StateError> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::collector::lifecycle::Cursor;

    pub(crate) fn tracked(arn: &str) -> Tracked {
        Tracked {
            arn: arn.into(),
            flow_id: "ABCDEFGHIJ".into(),
            alias: "A".into(),
            version: "1".into(),
            created_at: 1,
            ended_at: None,
            status: crate::model::ExecutionStatus::Running,
            needs_settle: true,
            terminal_seen_at: None,
            errors: None,
            node_cursor: Cursor::default(),
            flow_cursor: Cursor { token: Some("t".into()), consumed: 3, total: 13 },
            final_read: false,
            unknown_status_counted: false,
        }
    }

    fn saved(t: &Tracked, state: Option<&str>) -> Saved {
        Saved { execution: t.clone(), state: state.map(str::to_string), events: Vec::new() }
    }

    fn by_arn(mut v: Vec<Saved>) -> Vec<Saved> {
        v.sort_by(|x, y| x.execution.arn.cmp(&y.execution.arn));
        v
    }

    /// What every store must do, on a fresh store.
    pub(crate) async fn contract(store: &dyn StateStore) {
        assert!(store.load().await.unwrap().is_empty());
        assert!(store.outbox().await.unwrap().is_empty());
        // A checkpoint keeps the execution's state and its fold state together.
        let mut a = tracked("a");
        store.checkpoint(&[Checkpoint { execution: a.clone(), state: "s1".into(), done: false, events: Default::default() }], &[]).await.unwrap();
        a.node_cursor.total = 7;
        store.checkpoint(&[Checkpoint { execution: a.clone(), state: "s2".into(), done: false, events: Default::default() }], &[]).await.unwrap();
        // A status change from a listing keeps the fold state; a new execution has none.
        let mut b = tracked("b");
        b.status = crate::model::ExecutionStatus::Succeeded;
        b.ended_at = Some(9);
        a.status = crate::model::ExecutionStatus::Failed;
        store.save_all(vec![a.clone(), b.clone()]).await.unwrap();
        assert_eq!(by_arn(store.load().await.unwrap()), vec![saved(&a, Some("s2")), saved(&b, None)], "the whole state survives, cursors included");
        // Loading by flow (a replica taking flows over) gives those flows' executions only.
        let mut other = tracked("other-flow");
        other.flow_id = "KLMNOPQRST".into();
        other.created_at = 1 << 60; // never pruned below
        store.save_all(vec![other.clone()]).await.unwrap();
        assert_eq!(by_arn(store.load_flows(&["ABCDEFGHIJ".into()]).await.unwrap()), vec![saved(&a, Some("s2")), saved(&b, None)]);
        assert_eq!(store.load_flows(&["KLMNOPQRST".into()]).await.unwrap(), vec![saved(&other, None)]);
        assert!(store.load_flows(&[]).await.unwrap().is_empty());
        store.checkpoint(&[Checkpoint { execution: other, state: String::new(), done: true, events: Default::default() }], &[]).await.unwrap();
        // Held runs' span events are appended with checkpoints, come back with the execution
        // (by run, then index), go with their run, and all go when the execution is done.
        let mut r = tracked("runs");
        r.created_at = 1 << 60; // never pruned below
        let with = |added: &[(i64, i64, &str)], closed: &[i64]| RunEvents {
            added: added.iter().map(|(run, i, b)| (*run, *i, b.to_string())).collect(),
            closed: closed.to_vec(),
        };
        let rows = |store_rows: Vec<Saved>| store_rows.into_iter().find(|s| s.execution.arn == "runs").map(|s| s.events).unwrap_or_default();
        let row = |run: i64, i: i64, b: &str| (run, i, b.to_string());
        store
            .checkpoint(
                &[Checkpoint { execution: r.clone(), state: "r1".into(), done: false, events: with(&[(2, 0, "a"), (5, 0, "x"), (2, 1, "b")], &[]) }],
                &[],
            )
            .await
            .unwrap();
        store.checkpoint(&[Checkpoint { execution: r.clone(), state: "r2".into(), done: false, events: with(&[(2, 2, "c")], &[5]) }], &[]).await.unwrap();
        assert_eq!(rows(store.load().await.unwrap()), vec![row(2, 0, "a"), row(2, 1, "b"), row(2, 2, "c")], "appended; run 5 closed");
        assert_eq!(rows(store.load_flows(&["ABCDEFGHIJ".into()]).await.unwrap()), vec![row(2, 0, "a"), row(2, 1, "b"), row(2, 2, "c")]);
        // A run closed and re-added in one checkpoint (rows of unknown content): deleted first.
        store.checkpoint(&[Checkpoint { execution: r.clone(), state: "r3".into(), done: false, events: with(&[(2, 0, "z")], &[2]) }], &[]).await.unwrap();
        assert_eq!(rows(store.load().await.unwrap()), vec![row(2, 0, "z")]);
        store.checkpoint(&[Checkpoint { execution: r.clone(), state: String::new(), done: true, events: with(&[], &[]) }], &[]).await.unwrap();
        store.checkpoint(&[Checkpoint { execution: r.clone(), state: "again".into(), done: false, events: with(&[], &[]) }], &[]).await.unwrap();
        assert!(rows(store.load().await.unwrap()).is_empty(), "a done execution's rows are gone");
        store.checkpoint(&[Checkpoint { execution: r, state: String::new(), done: true, events: with(&[], &[]) }], &[]).await.unwrap();
        // Parcels go in with a checkpoint, oldest first, and leave once delivered.
        let parcel = |arn: &str, body: &[u8], not_before| Parcel { arn: arn.into(), body: body.to_vec(), not_before };
        let ids = store
            .checkpoint(
                &[Checkpoint { execution: b.clone(), state: "sb".into(), done: false, events: Default::default() }],
                &[parcel("b", b"one", 0), parcel("a", b"second", 5)],
            )
            .await
            .unwrap();
        assert_eq!(ids.len(), 2);
        let infos = store.outbox().await.unwrap();
        assert_eq!(
            infos,
            vec![ParcelInfo { id: ids[0], arn: "b".into(), bytes: 3, not_before: 0 }, ParcelInfo { id: ids[1], arn: "a".into(), bytes: 6, not_before: 5 }]
        );
        assert_eq!(
            store.parcels(&[ids[1], ids[0], 999]).await.unwrap().into_iter().collect::<std::collections::HashMap<_, _>>(),
            [(ids[0], b"one".to_vec()), (ids[1], b"second".to_vec())].into()
        );
        store.postpone(&[ids[0]], 50).await.unwrap();
        assert_eq!(store.outbox().await.unwrap()[0].not_before, 50);
        store.delivered(&[ids[0]]).await.unwrap();
        assert_eq!(store.outbox().await.unwrap().iter().map(|p| p.id).collect::<Vec<_>>(), vec![ids[1]]);
        // Done: not loaded again, finished for good.
        store.checkpoint(&[Checkpoint { execution: a.clone(), state: String::new(), done: true, events: Default::default() }], &[]).await.unwrap();
        assert_eq!(store.load().await.unwrap(), vec![saved(&b, Some("sb"))], "a finished execution is not loaded");
        assert_eq!(store.finished_among(&["a", "b", "c"]).await.unwrap(), HashSet::from(["a".to_string()]));
        store.save_all(vec![a.clone()]).await.unwrap();
        assert_eq!(store.finished_among(&["a"]).await.unwrap().len(), 1, "a listing does not revive a finished execution");
        // Snapshots, with the DRAFT one of a finished execution dropped.
        store.put_snapshot("ABCDEFGHIJ", "1", "{\"v\":1}").await.unwrap();
        store.put_snapshot("ABCDEFGHIJ", "1", "{\"v\":2}").await.unwrap();
        assert_eq!(store.snapshot("ABCDEFGHIJ", "1").await.unwrap().as_deref(), Some("{\"v\":2}"));
        assert_eq!(store.snapshot("ABCDEFGHIJ", "2").await.unwrap(), None);
        let mut draft = tracked("d");
        draft.version = "DRAFT".into();
        store.put_snapshot("ABCDEFGHIJ", "DRAFT:d", "{}").await.unwrap();
        store.checkpoint(&[Checkpoint { execution: draft, state: String::new(), done: true, events: Default::default() }], &[]).await.unwrap();
        assert_eq!(store.snapshot("ABCDEFGHIJ", "DRAFT:d").await.unwrap(), None);
        // Flow marks: a listing without a full scan keeps the last full scan.
        assert_eq!(store.flow_marks("F").await.unwrap(), FlowMarks::default());
        store.set_flow_marks("F", 10, Some(10)).await.unwrap();
        store.set_flow_marks("F", 20, None).await.unwrap();
        assert_eq!(store.flow_marks("F").await.unwrap(), FlowMarks { last_poll: Some(20), last_full_scan: Some(10) });
        // Pruning forgets finished executions created before the bound, and only those.
        assert_eq!(store.prune(2).await.unwrap(), 2, "a and d (created at 1)");
        assert!(store.finished_among(&["a", "d"]).await.unwrap().is_empty());
        assert_eq!(store.load().await.unwrap(), vec![saved(&b, Some("sb"))], "an unfinished execution is never pruned");
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        contract(&MemoryStore::default()).await;
    }

    /// The shared store on a real PostgreSQL server: the same contract, then leases: two
    /// members split two flows, a member that stops renewing loses its flow to the other
    /// after the lease time, and its fenced checkpoint is refused as a whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_store_keeps_the_contract_and_fences_a_lost_lease() {
        let Some(pg) = bedrock_flow_test_support::PgServer::start() else {
            panic!("PostgreSQL server binaries not found (Debian package postgresql; .ci/run installs it)");
        };
        // Two replicas migrating at the same moment.
        let url = pg.url();
        let (a, b) = tokio::join!(PostgresStore::open(&url, "a"), PostgresStore::open(&url, "b"));
        let (a, b) = (a.unwrap(), b.unwrap());
        contract(&a).await;
        let flows = vec!["us-east-1//F1".to_string(), "us-east-1//F2".to_string()];
        let lease_ms = 1500;
        let first = a.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert_eq!(first.held.len(), 2, "alone, a takes every flow: {first:?}");
        let joined = b.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert!(joined.held.is_empty(), "both leases are a's and fresh");
        let a_again = a.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert_eq!((a_again.members, a_again.held.len()), (2, 1), "a sees b and gives one back");
        let b_share = b.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert_eq!(b_share.held.len(), 1, "b takes the one given back");
        let (a_key, a_counter) = a_again.held.iter().next().map(|(k, c)| (k.clone(), *c)).unwrap();
        assert!(!b_share.held.contains_key(&a_key));
        // a stops renewing (paused); after the lease time b takes its flow, with a new counter.
        tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
        let b_all = b.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert_eq!(b_all.held.len(), 2, "b takes over the expired lease: {b_all:?}");
        assert!(b_all.held[&a_key] > a_counter, "the counter moved on");
        // a wakes up and writes with its old lease: refused, nothing written.
        let mut t = tracked("fenced");
        t.flow_id = "F1".into();
        let fence = [Fence { flow_key: a_key.clone(), counter: a_counter }];
        let refused =
            a.checkpoint_fenced(&[Checkpoint { execution: t.clone(), state: "x".into(), done: false, events: Default::default() }], &[], &fence).await;
        assert!(matches!(refused, Err(StateError::LeaseLost(ref k)) if k == &a_key), "{refused:?}");
        assert!(!a.load().await.unwrap().iter().any(|s| s.execution.arn == "fenced"), "the refused transaction wrote nothing");
        let fence = [Fence { flow_key: a_key.clone(), counter: b_all.held[&a_key] }];
        b.checkpoint_fenced(&[Checkpoint { execution: t, state: "x".into(), done: false, events: Default::default() }], &[], &fence).await.unwrap();
        // A job that wants every flow (run --once) takes what is free, not a fair share, and
        // leaving gives everything back at once, not after the lease.
        let c = PostgresStore::open(&url, "c").await.unwrap();
        let b_gives = b.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert_eq!(b_gives.held.len(), 2, "a is gone: b's fair share is both");
        let c_wants_all = c.coordinate(&flows, lease_ms, Share::All).await.unwrap();
        assert!(c_wants_all.held.is_empty(), "both leases are b's and fresh: {c_wants_all:?}");
        let b_shares = b.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert_eq!((b_shares.members, b_shares.held.len()), (2, 1), "b sees c and gives one back");
        let c_takes = c.coordinate(&flows, lease_ms, Share::All).await.unwrap();
        assert_eq!(c_takes.held.len(), 1, "c takes the one given back");
        b.leave().await.unwrap();
        let c_all = c.coordinate(&flows, lease_ms, Share::All).await.unwrap();
        assert_eq!((c_all.members, c_all.held.len()), (1, 2), "b left: its flow is free at once and c takes it: {c_all:?}");
        c.leave().await.unwrap();
        let b_back = b.coordinate(&flows, lease_ms, Share::Fair).await.unwrap();
        assert_eq!((b_back.members, b_back.held.len()), (1, 2), "c left: b takes both back at once");
        drop(pg);
    }

    #[tokio::test]
    async fn the_sqlite_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract(&SqliteStore::open(&dir.path().join("state.sqlite")).unwrap()).await;
    }
}
