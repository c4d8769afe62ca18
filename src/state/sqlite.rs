//! The embedded store: SQLite, one process. Writes are transactions, so a crash leaves either
//! the old or the new state. Every statement runs on tokio's blocking pool, never on the async
//! workers; the connection is one, behind a mutex.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{ExportMark, FlowMarks, History, StateError, StateStore, StreamRead, SCHEMA_VERSION};
use crate::collector::lifecycle::Tracked;
use crate::model::{Event, ExecutionStatus};

pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

fn lock(c: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StateError> {
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
        Ok(SqliteStore { connection: Arc::new(Mutex::new(connection)) })
    }

    fn load_blocking(&self) -> Result<Vec<Tracked>, StateError> {
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
                    status: ExecutionStatus::parse(&r.get::<_, String>(6)?),
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
        Ok(active)
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
            t.status.as_str(),
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

    /// `save_reads` with the events as wire JSON text.
    fn save_reads_blocking(&self, reads: &[WireRead]) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO events (arn, stream, seq, body) VALUES (?1, ?2, ?3, ?4)")?;
            for read in reads {
                let t = &read.execution;
                Self::upsert(&tx, t)?;
                for (stream, events, start) in [(0i64, &read.new_node, read.first_seq.0), (1i64, &read.new_flow, read.first_seq.1)] {
                    for (i, body) in events.iter().enumerate() {
                        insert.execute(params![t.arn, stream, (start + i) as i64, body])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn save_all_blocking(&self, items: &[Tracked]) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        for t in items {
            Self::upsert(&tx, t)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn histories_blocking(&self, arns: &[String]) -> Result<HashMap<String, History>, StateError> {
        let c = lock(&self.connection);
        let mut histories = HashMap::with_capacity(arns.len());
        for arn in arns {
            let (node_events, flow_events) = Self::events_of(&c, arn)?;
            histories.insert(arn.clone(), History { node_events, flow_events, exported: Self::exported_of(&c, arn)? });
        }
        Ok(histories)
    }

    fn events_of(c: &Connection, arn: &str) -> Result<(Vec<Event>, Vec<Event>), StateError> {
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

    fn exported_of(c: &Connection, arn: &str) -> Result<HashSet<[u8; 8]>, StateError> {
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

    fn mark_exported_blocking(&self, marks: &[ExportMark]) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO exported (arn, span_id) VALUES (?1, ?2)")?;
            for ExportMark { execution: t, exported: ids, done } in marks {
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

    fn snapshot_blocking(&self, flow_id: &str, key: &str) -> Result<Option<String>, StateError> {
        let c = lock(&self.connection);
        let found = c
            .prepare_cached("SELECT definition FROM snapshots WHERE flow_id = ?1 AND version = ?2")?
            .query_row(params![flow_id, key], |r| r.get(0))
            .optional()?;
        Ok(found)
    }

    fn put_snapshot_blocking(&self, flow_id: &str, key: &str, definition: &str) -> Result<(), StateError> {
        let c = lock(&self.connection);
        c.prepare_cached("INSERT OR REPLACE INTO snapshots (flow_id, version, definition) VALUES (?1, ?2, ?3)")?.execute(params![flow_id, key, definition])?;
        Ok(())
    }

    fn flow_marks_blocking(&self, flow_id: &str) -> Result<FlowMarks, StateError> {
        let c = lock(&self.connection);
        let marks = c
            .prepare_cached("SELECT last_poll, last_full_scan FROM flows WHERE flow_id = ?1")?
            .query_row([flow_id], |r| Ok(FlowMarks { last_poll: r.get(0)?, last_full_scan: r.get(1)? }))
            .optional()?
            .unwrap_or_default();
        Ok(marks)
    }

    fn set_flow_marks_blocking(&self, flow_id: &str, last_poll: i64, last_full_scan: Option<i64>) -> Result<(), StateError> {
        let c = lock(&self.connection);
        c.prepare_cached(
            "INSERT INTO flows (flow_id, last_poll, last_full_scan) VALUES (?1, ?2, ?3)
             ON CONFLICT(flow_id) DO UPDATE SET last_poll = ?2, last_full_scan = COALESCE(?3, last_full_scan)",
        )?
        .execute(params![flow_id, last_poll, last_full_scan])?;
        Ok(())
    }

    fn prune_blocking(&self, before: i64) -> Result<usize, StateError> {
        let c = lock(&self.connection);
        Ok(c.execute("DELETE FROM executions WHERE done = 1 AND created_at < ?1", [before])?)
    }

    fn finished_among_blocking(&self, arns: &[String]) -> Result<HashSet<String>, StateError> {
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

    /// Runs `f` with this store on tokio's blocking pool (SQLite blocks; the async workers never).
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&SqliteStore) -> Result<T, StateError> + Send + 'static) -> Result<T, StateError> {
        let this = SqliteStore { connection: self.connection.clone() };
        tokio::task::spawn_blocking(move || f(&this)).await.map_err(|e| StateError::Task(e.to_string()))?
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn load(&self) -> Result<Vec<Tracked>, StateError> {
        self.blocking(|s| s.load_blocking()).await
    }

    async fn save_reads(&self, reads: &[StreamRead]) -> Result<(), StateError> {
        let reads: Vec<WireRead> = reads
            .iter()
            .map(|r| WireRead { execution: r.execution.clone(), new_node: wire_texts(&r.new_node), new_flow: wire_texts(&r.new_flow), first_seq: r.first_seq })
            .collect();
        self.blocking(move |s| s.save_reads_blocking(&reads)).await
    }

    async fn save_all(&self, executions: &[Tracked]) -> Result<(), StateError> {
        let items = executions.to_vec();
        self.blocking(move |s| s.save_all_blocking(&items)).await
    }

    async fn histories(&self, arns: &[&str]) -> Result<HashMap<String, History>, StateError> {
        let arns: Vec<String> = arns.iter().map(|a| a.to_string()).collect();
        self.blocking(move |s| s.histories_blocking(&arns)).await
    }

    async fn mark_exported(&self, marks: &[ExportMark]) -> Result<(), StateError> {
        let marks = marks.to_vec();
        self.blocking(move |s| s.mark_exported_blocking(&marks)).await
    }

    async fn snapshot(&self, flow_id: &str, key: &str) -> Result<Option<String>, StateError> {
        let (flow_id, key) = (flow_id.to_string(), key.to_string());
        self.blocking(move |s| s.snapshot_blocking(&flow_id, &key)).await
    }

    async fn put_snapshot(&self, flow_id: &str, key: &str, definition: &str) -> Result<(), StateError> {
        let (flow_id, key, definition) = (flow_id.to_string(), key.to_string(), definition.to_string());
        self.blocking(move |s| s.put_snapshot_blocking(&flow_id, &key, &definition)).await
    }

    async fn flow_marks(&self, flow_id: &str) -> Result<FlowMarks, StateError> {
        let flow_id = flow_id.to_string();
        self.blocking(move |s| s.flow_marks_blocking(&flow_id)).await
    }

    async fn set_flow_marks(&self, flow_id: &str, last_poll: i64, last_full_scan: Option<i64>) -> Result<(), StateError> {
        let flow_id = flow_id.to_string();
        self.blocking(move |s| s.set_flow_marks_blocking(&flow_id, last_poll, last_full_scan)).await
    }

    async fn finished_among(&self, arns: &[&str]) -> Result<HashSet<String>, StateError> {
        let arns: Vec<String> = arns.iter().map(|a| a.to_string()).collect();
        self.blocking(move |s| s.finished_among_blocking(&arns)).await
    }

    async fn prune(&self, before: i64) -> Result<usize, StateError> {
        self.blocking(move |s| s.prune_blocking(before)).await
    }
}

/// A `StreamRead` with its events as the wire JSON the store keeps (made on the caller's
/// thread, before the blocking task takes them).
struct WireRead {
    execution: Tracked,
    new_node: Vec<String>,
    new_flow: Vec<String>,
    first_seq: (usize, usize),
}

/// Events as the wire JSON the store keeps (made before the blocking task takes them).
fn wire_texts(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.to_wire().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::tracked;

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.sqlite");
        let event = Event::FlowInput(crate::model::FlowIoEvent { node_name: "In".into(), timestamp: Some(crate::model::Timestamp(5)), fields: vec![] });
        {
            let store = SqliteStore::open(&path).unwrap();
            store.save_reads(&[StreamRead { execution: tracked("a"), new_node: vec![], new_flow: vec![event.clone()], first_seq: (0, 0) }]).await.unwrap();
            store.mark_exported(&[ExportMark { execution: tracked("a"), exported: vec![[1; 8]], done: false }]).await.unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load().await.unwrap(), vec![tracked("a")]);
        let history = store.histories(&["a"]).await.unwrap().remove("a").unwrap();
        assert_eq!(history.flow_events, vec![event]);
        assert!(history.exported.contains(&[1; 8]));
    }

    #[tokio::test]
    async fn an_unreadable_exported_set_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.sqlite")).unwrap();
        store.mark_exported(&[ExportMark { execution: tracked("a"), exported: vec![[1; 8]], done: false }]).await.unwrap();
        assert_eq!(store.histories(&["a"]).await.unwrap()["a"].exported.len(), 1);
        for bad in ["INSERT INTO exported (arn, span_id) VALUES ('a', 'not a blob')", "INSERT INTO exported (arn, span_id) VALUES ('a', x'0102')"] {
            lock(&store.connection).execute(bad, []).unwrap();
            assert!(store.histories(&["a"]).await.is_err(), "{bad}");
            lock(&store.connection).execute("DELETE FROM exported WHERE span_id != x'0101010101010101'", []).unwrap();
        }
    }
}
