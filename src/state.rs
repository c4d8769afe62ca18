//! The state store (the one module that knows SQL and the on-disk format). Per execution: its
//! status, the cursors of both event streams, the events read so far (until it is finished),
//! which spans were exported, whether it was counted; snapshots per (flow, version).
//!
//! Writes are transactions, so a crash leaves either the old or the new state. Events are
//! stored before their spans are exported; the exported-span set advances only after the OTLP
//! endpoint accepted them. A replay re-derives the same spans from the stored events.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::model::{Event, ExecutionError};

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
}

/// Where paging of one event stream stands: the token that fetched the tail page (`None`: the
/// first page) and how many of that page's items were consumed; `total` items read in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub token: Option<String>,
    pub consumed: usize,
    pub total: usize,
}

/// An execution being collected. Kept in memory while not finished; saved on each change.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracked {
    pub arn: String,
    pub flow_id: String,
    pub alias: String,
    pub version: String,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    pub status: String,
    /// Seen Running (or ended within `settle_secs` when found): gets a settle re-read.
    pub needs_settle: bool,
    /// When the terminal status was first seen.
    pub terminal_seen_at: Option<i64>,
    pub errors: Option<Vec<ExecutionError>>,
    pub node_cursor: Cursor,
    pub flow_cursor: Cursor,
    /// Events whose problems were already counted, per stream.
    pub node_checked: usize,
    pub flow_checked: usize,
    pub final_read: bool,
    pub unknown_status_counted: bool,
}

pub struct StateStore {
    connection: Mutex<Connection>,
}

/// What a startup finds in the store.
pub struct Loaded {
    pub active: Vec<Tracked>,
}

fn lock(c: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let display = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Directory { path: display.clone(), source })?;
        }
        let connection = Connection::open(path).map_err(|source| StateError::Open { path: display.clone(), source })?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::FutureSchema { path: display, found: version });
        }
        if version < 1 {
            connection.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS executions (
                   arn TEXT PRIMARY KEY, flow_id TEXT NOT NULL, alias TEXT NOT NULL, version TEXT NOT NULL,
                   created_at INTEGER NOT NULL, ended_at INTEGER, status TEXT NOT NULL,
                   needs_settle INTEGER NOT NULL, terminal_seen_at INTEGER, errors TEXT,
                   node_cursor TEXT NOT NULL, flow_cursor TEXT NOT NULL,
                   node_checked INTEGER NOT NULL, flow_checked INTEGER NOT NULL,
                   final_read INTEGER NOT NULL, unknown_status_counted INTEGER NOT NULL,
                   done INTEGER NOT NULL DEFAULT 0);
                 CREATE INDEX IF NOT EXISTS executions_done ON executions(done, ended_at);
                 CREATE TABLE IF NOT EXISTS events (
                   arn TEXT NOT NULL, stream INTEGER NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
                   PRIMARY KEY (arn, stream, seq)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS exported (
                   arn TEXT NOT NULL, span_id BLOB NOT NULL, PRIMARY KEY (arn, span_id)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS snapshots (
                   flow_id TEXT NOT NULL, version TEXT NOT NULL, definition TEXT NOT NULL,
                   PRIMARY KEY (flow_id, version)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS flows (
                   flow_id TEXT PRIMARY KEY, last_poll INTEGER, last_full_scan INTEGER);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        Ok(StateStore { connection: Mutex::new(connection) })
    }

    pub fn load(&self) -> Result<Loaded, StateError> {
        let c = lock(&self.connection);
        let mut statement = c.prepare(
            "SELECT arn, flow_id, alias, version, created_at, ended_at, status, needs_settle, terminal_seen_at, errors,
                    node_cursor, flow_cursor, node_checked, flow_checked, final_read, unknown_status_counted
             FROM executions WHERE done = 0",
        )?;
        let active = statement
            .query_map([], |r| {
                let errors: Option<String> = r.get(9)?;
                let node_cursor: String = r.get(10)?;
                let flow_cursor: String = r.get(11)?;
                Ok(Tracked {
                    arn: r.get(0)?,
                    flow_id: r.get(1)?,
                    alias: r.get(2)?,
                    version: r.get(3)?,
                    created_at: r.get(4)?,
                    ended_at: r.get(5)?,
                    status: r.get(6)?,
                    needs_settle: r.get(7)?,
                    terminal_seen_at: r.get(8)?,
                    errors: errors.and_then(|e| serde_json::from_str(&e).ok()),
                    node_cursor: serde_json::from_str(&node_cursor).unwrap_or_default(),
                    flow_cursor: serde_json::from_str(&flow_cursor).unwrap_or_default(),
                    node_checked: r.get::<_, i64>(12)? as usize,
                    flow_checked: r.get::<_, i64>(13)? as usize,
                    final_read: r.get(14)?,
                    unknown_status_counted: r.get(15)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Loaded { active })
    }

    fn upsert(c: &Connection, t: &Tracked) -> Result<(), rusqlite::Error> {
        c.prepare_cached(
            "INSERT INTO executions (arn, flow_id, alias, version, created_at, ended_at, status, needs_settle, terminal_seen_at, errors,
                                     node_cursor, flow_cursor, node_checked, flow_checked, final_read, unknown_status_counted, done)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, 0)
             ON CONFLICT(arn) DO UPDATE SET version = ?4, ended_at = ?6, status = ?7, needs_settle = ?8, terminal_seen_at = ?9,
               errors = ?10, node_cursor = ?11, flow_cursor = ?12, node_checked = ?13, flow_checked = ?14, final_read = ?15,
               unknown_status_counted = ?16",
        )?
        .execute(params![
            t.arn,
            t.flow_id,
            t.alias,
            t.version,
            t.created_at,
            t.ended_at,
            t.status,
            t.needs_settle,
            t.terminal_seen_at,
            t.errors.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()),
            serde_json::to_string(&t.node_cursor).unwrap_or_default(),
            serde_json::to_string(&t.flow_cursor).unwrap_or_default(),
            t.node_checked as i64,
            t.flow_checked as i64,
            t.final_read,
            t.unknown_status_counted,
        ])?;
        Ok(())
    }

    /// Saves the execution's state and appends newly read events, in one transaction.
    /// `first_seq` are the stream totals before the new events.
    pub fn save(&self, t: &Tracked, new_node: &[Event], new_flow: &[Event], first_seq: (usize, usize)) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        Self::upsert(&tx, t)?;
        {
            let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO events (arn, stream, seq, body) VALUES (?1, ?2, ?3, ?4)")?;
            for (stream, events, start) in [(0i64, new_node, first_seq.0), (1i64, new_flow, first_seq.1)] {
                for (i, event) in events.iter().enumerate() {
                    insert.execute(params![t.arn, stream, (start + i) as i64, event.to_wire().to_string()])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Saves many executions' states in one transaction (status changes from a listing).
    pub fn save_all(&self, items: &[&Tracked]) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        for t in items {
            Self::upsert(&tx, t)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored events of an execution: (node stream, flow stream), in order.
    pub fn events(&self, arn: &str) -> Result<(Vec<Event>, Vec<Event>), StateError> {
        let c = lock(&self.connection);
        let mut statement = c.prepare_cached("SELECT stream, body FROM events WHERE arn = ?1 ORDER BY stream, seq")?;
        let mut node = Vec::new();
        let mut flow = Vec::new();
        let rows = statement.query_map([arn], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (stream, body) = row?;
            let event = serde_json::from_str(&body).ok().and_then(|v| Event::from_wire(&v).ok()).unwrap_or_else(|| Event::Unknown("unreadable".into()));
            if stream == 0 {
                node.push(event)
            } else {
                flow.push(event)
            }
        }
        Ok((node, flow))
    }

    pub fn exported(&self, arn: &str) -> Result<HashSet<[u8; 8]>, StateError> {
        let c = lock(&self.connection);
        let mut statement = c.prepare_cached("SELECT span_id FROM exported WHERE arn = ?1")?;
        // A row that cannot be read is an error, never a span "not exported": that would send
        // and observe it again.
        let mut ids = HashSet::new();
        for row in statement.query_map([arn], |r| r.get::<_, Vec<u8>>(0))? {
            let bytes = row?;
            let id = <[u8; 8]>::try_from(bytes.as_slice()).map_err(|_| StateError::Corrupt(format!("exported span id of {arn} has {} bytes", bytes.len())))?;
            ids.insert(id);
        }
        Ok(ids)
    }

    /// Records spans as accepted by the exporter. With `done`, the execution is finished: its
    /// events and span ids are dropped and only its row stays, so it is never collected again.
    pub fn mark_exported(&self, batch: &[(&Tracked, Vec<[u8; 8]>, bool)]) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO exported (arn, span_id) VALUES (?1, ?2)")?;
            for (t, ids, done) in batch {
                Self::upsert(&tx, t)?;
                if *done {
                    tx.prepare_cached("UPDATE executions SET done = 1 WHERE arn = ?1")?.execute([&t.arn])?;
                    tx.prepare_cached("DELETE FROM events WHERE arn = ?1")?.execute([&t.arn])?;
                    tx.prepare_cached("DELETE FROM exported WHERE arn = ?1")?.execute([&t.arn])?;
                    if t.version == "DRAFT" {
                        tx.prepare_cached("DELETE FROM snapshots WHERE flow_id = ?1 AND version = ?2")?
                            .execute(params![t.flow_id, format!("DRAFT:{}", t.arn)])?;
                    }
                } else {
                    for id in ids {
                        insert.execute(params![t.arn, id.to_vec()])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn snapshot(&self, flow_id: &str, key: &str) -> Result<Option<String>, StateError> {
        let c = lock(&self.connection);
        let found = c
            .prepare_cached("SELECT definition FROM snapshots WHERE flow_id = ?1 AND version = ?2")?
            .query_row(params![flow_id, key], |r| r.get(0))
            .optional()?;
        Ok(found)
    }

    pub fn put_snapshot(&self, flow_id: &str, key: &str, definition: &str) -> Result<(), StateError> {
        let c = lock(&self.connection);
        c.prepare_cached("INSERT OR REPLACE INTO snapshots (flow_id, version, definition) VALUES (?1, ?2, ?3)")?.execute(params![flow_id, key, definition])?;
        Ok(())
    }

    /// (last successful poll, last full scan) of a flow.
    pub fn flow_marks(&self, flow_id: &str) -> Result<(Option<i64>, Option<i64>), StateError> {
        let c = lock(&self.connection);
        let marks = c
            .prepare_cached("SELECT last_poll, last_full_scan FROM flows WHERE flow_id = ?1")?
            .query_row([flow_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((None, None));
        Ok(marks)
    }

    pub fn set_flow_marks(&self, flow_id: &str, last_poll: i64, last_full_scan: Option<i64>) -> Result<(), StateError> {
        let c = lock(&self.connection);
        c.prepare_cached(
            "INSERT INTO flows (flow_id, last_poll, last_full_scan) VALUES (?1, ?2, ?3)
             ON CONFLICT(flow_id) DO UPDATE SET last_poll = ?2, last_full_scan = COALESCE(?3, last_full_scan)",
        )?
        .execute(params![flow_id, last_poll, last_full_scan])?;
        Ok(())
    }

    /// Forgets finished executions created before `before` (they are outside every lookback
    /// window, so they cannot be listed as new again). Returns how many were removed.
    pub fn prune(&self, before: i64) -> Result<usize, StateError> {
        let c = lock(&self.connection);
        Ok(c.execute("DELETE FROM executions WHERE done = 1 AND created_at < ?1", [before])?)
    }

    /// Which of `arns` are finished (never collected again).
    pub fn finished_among(&self, arns: &[&str]) -> Result<HashSet<String>, StateError> {
        let c = lock(&self.connection);
        let mut statement = c.prepare_cached("SELECT 1 FROM executions WHERE arn = ?1 AND done = 1")?;
        let mut finished = HashSet::new();
        for arn in arns {
            if statement.exists([arn])? {
                finished.insert(arn.to_string());
            }
        }
        Ok(finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FlowIoEvent, Timestamp};

    fn tracked(arn: &str) -> Tracked {
        Tracked {
            arn: arn.into(),
            flow_id: "ABCDEFGHIJ".into(),
            alias: "A".into(),
            version: "1".into(),
            created_at: 1,
            ended_at: None,
            status: "Running".into(),
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

    #[test]
    fn survives_reopen_and_forgets_finished_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.sqlite");
        let event = Event::FlowInput(FlowIoEvent { node_name: "In".into(), timestamp: Some(Timestamp(5)), fields: vec![] });
        {
            let store = StateStore::open(&path).unwrap();
            store.save(&tracked("a"), &[], std::slice::from_ref(&event), (0, 0)).unwrap();
            store.save(&tracked("b"), &[], &[], (0, 0)).unwrap();
            store.mark_exported(&[(&tracked("a"), vec![[1; 8]], false)]).unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.active.len(), 2);
        let a = loaded.active.iter().find(|t| t.arn == "a").unwrap();
        assert_eq!(a, &tracked("a"));
        assert_eq!(store.events("a").unwrap().1, vec![event]);
        assert!(store.exported("a").unwrap().contains(&[1; 8]));
        store.mark_exported(&[(&tracked("a"), vec![], true)]).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.active.len(), 1);
        assert_eq!(store.finished_among(&["a", "b", "c"]).unwrap(), HashSet::from(["a".to_string()]));
        assert!(store.events("a").unwrap().1.is_empty());
        assert_eq!(store.prune(2).unwrap(), 1);
    }

    #[test]
    fn an_unreadable_exported_set_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state.sqlite")).unwrap();
        store.mark_exported(&[(&tracked("a"), vec![[1; 8]], false)]).unwrap();
        assert_eq!(store.exported("a").unwrap().len(), 1);
        for bad in ["INSERT INTO exported (arn, span_id) VALUES ('a', 'not a blob')", "INSERT INTO exported (arn, span_id) VALUES ('a', x'0102')"] {
            lock(&store.connection).execute(bad, []).unwrap();
            assert!(store.exported("a").is_err(), "{bad}");
            lock(&store.connection).execute("DELETE FROM exported WHERE span_id != x'0101010101010101'", []).unwrap();
        }
    }
}
