//! The state stores (the one module that knows SQL and the on-disk format), behind the one small
//! interface of SPEC §2. Per execution: its lifecycle state with the cursors of both event
//! streams, the events read so far (until it is finished), which spans were exported, whether it
//! is done; snapshots per (flow, version); per flow, when it was last listed.
//!
//! Events are stored before their spans are exported; the exported-span set advances only after
//! the OTLP endpoint accepted them. A replay re-derives the same spans from the stored events.
//! `SqliteStore` is the embedded default; `MemoryStore` serves tests and keeps the same contract
//! (`tests::contract`, which every implementation passes).

mod memory;
mod sqlite;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::collector::lifecycle::Tracked;
use crate::model::Event;

const SCHEMA_VERSION: i64 = 1;

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
    #[error("cannot create the directory of {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("state store: the blocking task failed: {0}")]
    Task(String),
}

/// Spans of one execution accepted by the OTLP endpoint; with `done`, the execution is finished:
/// its events and span ids are dropped and only its row stays, so it is never collected again.
#[derive(Clone, Debug)]
pub struct ExportMark {
    pub execution: Tracked,
    pub exported: Vec<[u8; 8]>,
    pub done: bool,
}

/// What one read brought: the execution's advanced state and the new events of each stream,
/// which start at the stream totals before the read (`first_seq`: node, flow).
#[derive(Clone, Debug)]
pub struct StreamRead {
    pub execution: Tracked,
    pub new_node: Vec<Event>,
    pub new_flow: Vec<Event>,
    pub first_seq: (usize, usize),
}

/// What conversion and export need of an execution: its stored events, in order, and the span
/// ids accepted so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub node_events: Vec<Event>,
    pub flow_events: Vec<Event>,
    pub exported: HashSet<[u8; 8]>,
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
    async fn load(&self) -> Result<Vec<Tracked>, StateError>;
    /// Saves the reads of many executions (their states and new events), in one transaction.
    /// An event at a position already stored replaces it, never doubles it.
    async fn save_reads(&self, reads: &[StreamRead]) -> Result<(), StateError>;
    /// Saves the states of many executions in one transaction (status changes from a listing).
    async fn save_all(&self, executions: &[Tracked]) -> Result<(), StateError>;
    /// The histories of these executions (an empty one for an execution the store does not
    /// know). A row that cannot be read is an error, never a span "not exported".
    async fn histories(&self, arns: &[&str]) -> Result<HashMap<String, History>, StateError>;
    /// Records accepted spans (and finished executions), with each execution's state, in one
    /// transaction.
    async fn mark_exported(&self, marks: &[ExportMark]) -> Result<(), StateError>;
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::collector::lifecycle::Cursor;
    use crate::model::{FlowIoEvent, Timestamp};

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
            node_checked: 0,
            flow_checked: 0,
            final_read: false,
            unknown_status_counted: false,
        }
    }

    fn event(node: &str, at: i64) -> Event {
        Event::FlowInput(FlowIoEvent { node_name: node.into(), timestamp: Some(Timestamp(at)), fields: vec![] })
    }

    /// What every store must do, on a fresh store.
    pub(crate) async fn contract(store: &dyn StateStore) {
        assert!(store.load().await.unwrap().is_empty());
        // Reads append events at their sequence numbers; states are saved with them.
        let a = tracked("a");
        let read = |new_node: Vec<Event>, new_flow: Vec<Event>, first_seq| StreamRead { execution: a.clone(), new_node, new_flow, first_seq };
        store.save_reads(&[read(vec![event("n0", 1)], vec![event("f0", 2)], (0, 0))]).await.unwrap();
        store.save_reads(&[read(vec![event("n1", 3), event("n2", 4)], vec![], (1, 1))]).await.unwrap();
        // A re-read of the same positions replaces, never duplicates.
        store.save_reads(&[read(vec![event("n2", 4)], vec![], (2, 1))]).await.unwrap();
        let history = |arn: &'static str| async move { store.histories(&[arn]).await.unwrap().remove(arn).unwrap() };
        let h = history("a").await;
        assert_eq!(h.node_events, vec![event("n0", 1), event("n1", 3), event("n2", 4)]);
        assert_eq!(h.flow_events, vec![event("f0", 2)]);
        let mut b = tracked("b");
        b.status = crate::model::ExecutionStatus::Succeeded;
        b.ended_at = Some(9);
        store.save_all(&[b.clone()]).await.unwrap();
        let mut loaded = store.load().await.unwrap();
        loaded.sort_by(|x, y| x.arn.cmp(&y.arn));
        assert_eq!(loaded, vec![a.clone(), b.clone()], "the whole state survives, cursors included");
        // Exported spans accumulate until the execution is done.
        store.mark_exported(&[ExportMark { execution: a.clone(), exported: vec![[1; 8], [2; 8]], done: false }]).await.unwrap();
        store.mark_exported(&[ExportMark { execution: a.clone(), exported: vec![[2; 8], [3; 8]], done: false }]).await.unwrap();
        assert_eq!(history("a").await.exported, HashSet::from([[1; 8], [2; 8], [3; 8]]));
        assert_eq!(history("b").await, History::default());
        assert_eq!(store.histories(&["a", "b", "unknown"]).await.unwrap().len(), 3, "one history per ARN asked");
        let mut finished_a = a.clone();
        finished_a.status = crate::model::ExecutionStatus::Failed;
        store.mark_exported(&[ExportMark { execution: finished_a, exported: vec![], done: true }]).await.unwrap();
        assert_eq!(store.load().await.unwrap(), vec![b.clone()], "a finished execution is not loaded");
        assert_eq!(history("a").await, History::default(), "its events and span ids are dropped");
        assert_eq!(store.finished_among(&["a", "b", "c"]).await.unwrap(), HashSet::from(["a".to_string()]));
        // Snapshots, with the DRAFT one of a finished execution dropped.
        store.put_snapshot("ABCDEFGHIJ", "1", "{\"v\":1}").await.unwrap();
        store.put_snapshot("ABCDEFGHIJ", "1", "{\"v\":2}").await.unwrap();
        assert_eq!(store.snapshot("ABCDEFGHIJ", "1").await.unwrap().as_deref(), Some("{\"v\":2}"));
        assert_eq!(store.snapshot("ABCDEFGHIJ", "2").await.unwrap(), None);
        let mut draft = tracked("d");
        draft.version = "DRAFT".into();
        store.put_snapshot("ABCDEFGHIJ", "DRAFT:d", "{}").await.unwrap();
        store.mark_exported(&[ExportMark { execution: draft, exported: vec![], done: true }]).await.unwrap();
        assert_eq!(store.snapshot("ABCDEFGHIJ", "DRAFT:d").await.unwrap(), None);
        // Flow marks: a listing without a full scan keeps the last full scan.
        assert_eq!(store.flow_marks("F").await.unwrap(), FlowMarks::default());
        store.set_flow_marks("F", 10, Some(10)).await.unwrap();
        store.set_flow_marks("F", 20, None).await.unwrap();
        assert_eq!(store.flow_marks("F").await.unwrap(), FlowMarks { last_poll: Some(20), last_full_scan: Some(10) });
        // Pruning forgets finished executions created before the bound, and only those.
        assert_eq!(store.prune(2).await.unwrap(), 2, "a and d (created at 1)");
        assert!(store.finished_among(&["a", "d"]).await.unwrap().is_empty());
        assert_eq!(store.load().await.unwrap(), vec![b], "an unfinished execution is never pruned");
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        contract(&MemoryStore::default()).await;
    }

    #[tokio::test]
    async fn the_sqlite_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract(&SqliteStore::open(&dir.path().join("state.sqlite")).unwrap()).await;
    }
}
