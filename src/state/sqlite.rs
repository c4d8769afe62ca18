//! The embedded store: SQLite, one process. Writes are transactions, so a crash leaves either
//! the old or the new state. Every statement runs on tokio's blocking pool, never on the async
//! workers; the connection is one, behind a mutex. One process per file: the store holds an
//! exclusive `flock` on `<path>.lock` while it lives (the kernel lets it go when the process
//! ends, SIGKILL included), so a second process on the same file stops at its start instead of
//! reading, exporting and counting the same executions beside the first.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{Checkpoint, FlowMarks, Parcel, ParcelInfo, Saved, StateError, StateStore, SCHEMA_VERSION};
use crate::collector::lifecycle::Tracked;
use crate::model::ExecutionStatus;

pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    /// The open lock file whose `flock` makes this process the file's only user; declared
    /// after the connection, so that the connection closes before the lock goes.
    owner: Arc<File>,
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
        let owner = take_ownership(path)?;
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
        if version < 2 {
            // Version 2 folds events into a state saved with the cursors, and keeps an outbox of
            // spans instead of the events. Executions of version 1 have no fold state: the
            // collector re-reads them from the start (and says so).
            connection.execute_batch(
                "BEGIN;
                 ALTER TABLE executions ADD COLUMN state TEXT;
                 DROP TABLE IF EXISTS events;
                 DROP TABLE IF EXISTS exported;
                 CREATE TABLE IF NOT EXISTS outbox (
                   id INTEGER PRIMARY KEY AUTOINCREMENT, arn TEXT NOT NULL, bytes INTEGER NOT NULL,
                   not_before INTEGER NOT NULL, body BLOB NOT NULL);
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            // Version 3 keeps the span events of held runs in rows of their own, appended as
            // runs gather them, instead of inside the rewritten fold state. A fold state of
            // version 2 still holds them inline and is read as it is.
            connection.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS run_events (
                   arn TEXT NOT NULL, run INTEGER NOT NULL, idx INTEGER NOT NULL, body TEXT NOT NULL,
                   PRIMARY KEY (arn, run, idx)) WITHOUT ROWID;
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        Ok(SqliteStore { connection: Arc::new(Mutex::new(connection)), owner: Arc::new(owner) })
    }

    fn load_blocking(&self) -> Result<Vec<Saved>, StateError> {
        let c = lock(&self.connection);
        let mut statement = c.prepare(
            "SELECT arn, flow_id, alias, version, created_at, ended_at, status, needs_settle, terminal_seen_at, errors,
                    node_cursor, flow_cursor, final_read, unknown_status_counted, state
             FROM executions WHERE done = 0",
        )?;
        let active = statement
            .query_map([], |r| {
                let errors: Option<String> = r.get(9)?;
                let node_cursor: String = r.get(10)?;
                let flow_cursor: String = r.get(11)?;
                let execution = Tracked {
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
                    final_read: r.get(12)?,
                    unknown_status_counted: r.get(13)?,
                };
                Ok(Saved { execution, state: r.get(14)?, events: Vec::new() })
            })?
            .collect::<Result<Vec<Saved>, _>>()?;
        let mut rows = c.prepare("SELECT arn, run, idx, body FROM run_events ORDER BY arn, run, idx")?;
        let rows = rows.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))?.collect::<Result<Vec<_>, _>>()?;
        Ok(super::attach_run_events(active, rows))
    }

    /// Saves an execution's row. `checkpoint` is `None` for discovery (the saved fold state and
    /// the done flag are left as they are) and `Some(state)` for a checkpoint, whose fold state
    /// is written in the same statement (`None` once the execution is done, which marks it
    /// done): one statement an execution, not an upsert and an update of the row just written.
    fn upsert(c: &Connection, t: &Tracked, checkpoint: Option<Option<&str>>) -> Result<(), rusqlite::Error> {
        let sql = match checkpoint {
            None => {
                "INSERT INTO executions (arn, flow_id, alias, version, created_at, ended_at, status, needs_settle, terminal_seen_at, errors,
                                         node_cursor, flow_cursor, node_checked, flow_checked, final_read, unknown_status_counted, done)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, 0, ?13, ?14, 0)
                 ON CONFLICT(arn) DO UPDATE SET version = ?4, ended_at = ?6, status = ?7, needs_settle = ?8, terminal_seen_at = ?9,
                   errors = ?10, node_cursor = ?11, flow_cursor = ?12, final_read = ?13, unknown_status_counted = ?14"
            }
            Some(_) => {
                "INSERT INTO executions (arn, flow_id, alias, version, created_at, ended_at, status, needs_settle, terminal_seen_at, errors,
                                         node_cursor, flow_cursor, node_checked, flow_checked, final_read, unknown_status_counted, done, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, 0, ?13, ?14, ?15, ?16)
                 ON CONFLICT(arn) DO UPDATE SET version = ?4, ended_at = ?6, status = ?7, needs_settle = ?8, terminal_seen_at = ?9,
                   errors = ?10, node_cursor = ?11, flow_cursor = ?12, final_read = ?13, unknown_status_counted = ?14, done = ?15, state = ?16"
            }
        };
        let mut statement = c.prepare_cached(sql)?;
        let errors = t.errors.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default());
        let (node_cursor, flow_cursor) = (serde_json::to_string(&t.node_cursor).unwrap_or_default(), serde_json::to_string(&t.flow_cursor).unwrap_or_default());
        let row = params![
            t.arn,
            t.flow_id,
            t.alias,
            t.version,
            t.created_at,
            t.ended_at,
            t.status.as_str(),
            t.needs_settle,
            t.terminal_seen_at,
            errors,
            node_cursor,
            flow_cursor,
            t.final_read,
            t.unknown_status_counted,
        ];
        match checkpoint {
            None => statement.execute(row)?,
            Some(state) => {
                let done = state.is_none();
                statement.execute(rusqlite::params_from_iter(row.iter().copied().chain([&done as &dyn rusqlite::ToSql, &state])))?
            }
        };
        Ok(())
    }

    fn checkpoint_blocking(&self, checkpoints: &[Checkpoint], parcels: &[Parcel]) -> Result<Vec<i64>, StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        for Checkpoint { execution: t, state, done, events } in checkpoints {
            Self::upsert(&tx, t, Some((!*done).then_some(state.as_str())))?;
            if *done {
                tx.prepare_cached("DELETE FROM run_events WHERE arn = ?1")?.execute([&t.arn])?;
            } else {
                for run in &events.closed {
                    tx.prepare_cached("DELETE FROM run_events WHERE arn = ?1 AND run = ?2")?.execute(params![t.arn, run])?;
                }
                let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO run_events (arn, run, idx, body) VALUES (?1, ?2, ?3, ?4)")?;
                for (run, i, body) in &events.added {
                    insert.execute(params![t.arn, run, i, body])?;
                }
            }
            if *done && t.version == "DRAFT" {
                tx.prepare_cached("DELETE FROM snapshots WHERE flow_id = ?1 AND version = ?2")?.execute(params![t.flow_id, format!("DRAFT:{}", t.arn)])?;
            }
        }
        let mut ids = Vec::with_capacity(parcels.len());
        {
            let mut insert = tx.prepare_cached("INSERT INTO outbox (arn, bytes, not_before, body) VALUES (?1, ?2, ?3, ?4)")?;
            for p in parcels {
                insert.execute(params![p.arn, p.body.len() as i64, p.not_before, p.body])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    fn outbox_blocking(&self) -> Result<Vec<ParcelInfo>, StateError> {
        let c = lock(&self.connection);
        let mut statement = c.prepare_cached("SELECT id, arn, bytes, not_before FROM outbox ORDER BY id")?;
        let rows = statement.query_map([], |r| Ok(ParcelInfo { id: r.get(0)?, arn: r.get(1)?, bytes: r.get::<_, i64>(2)? as u64, not_before: r.get(3)? }))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn parcels_blocking(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, StateError> {
        let c = lock(&self.connection);
        let mut statement = c.prepare_cached("SELECT body FROM outbox WHERE id = ?1")?;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(body) = statement.query_row([id], |r| r.get::<_, Vec<u8>>(0)).optional()? {
                found.push((*id, body));
            }
        }
        Ok(found)
    }

    fn outbox_update_blocking(&self, ids: &[i64], postpone_to: Option<i64>) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        for id in ids {
            match postpone_to {
                Some(at) => tx.prepare_cached("UPDATE outbox SET not_before = ?2 WHERE id = ?1")?.execute(params![id, at])?,
                None => tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?.execute([id])?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    fn save_all_blocking(&self, items: &[Tracked]) -> Result<(), StateError> {
        let mut c = lock(&self.connection);
        let tx = c.transaction()?;
        for t in items {
            Self::upsert(&tx, t, None)?;
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
        // One read transaction for the page's look-ups: each look-up on its own would take and
        // release SQLite's locks (file-lock system calls) for itself.
        let tx = c.unchecked_transaction()?;
        let mut finished = HashSet::new();
        {
            let mut statement = tx.prepare_cached("SELECT 1 FROM executions WHERE arn = ?1 AND done = 1")?;
            for arn in arns {
                if statement.exists([arn])? {
                    finished.insert(arn.to_string());
                }
            }
        }
        tx.commit()?;
        Ok(finished)
    }

    /// Runs `f` with this store on tokio's blocking pool (SQLite blocks; the async workers never).
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&SqliteStore) -> Result<T, StateError> + Send + 'static) -> Result<T, StateError> {
        let this = SqliteStore { connection: self.connection.clone(), owner: self.owner.clone() };
        tokio::task::spawn_blocking(move || f(&this)).await.map_err(|e| StateError::Task(e.to_string()))?
    }
}

/// Takes the exclusive `flock` of `<path>.lock` (created if missing) without waiting, and
/// writes this process's id into the file for the message a second process gives. A lock file
/// beside the database, not the database itself: SQLite's own locks on it are `fcntl` locks,
/// which some file systems (NFS) implement together with `flock`.
fn take_ownership(path: &Path) -> Result<File, StateError> {
    let display = path.display().to_string();
    let lock_path = lock_path(path);
    let io = |source| StateError::Lock { path: lock_path.display().to_string(), source };
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(io)?;
    // SAFETY: flock takes a descriptor this function owns (open for the call) and a flag.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io(error));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
        return Err(StateError::InUse { path: display, holder });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

/// The lock file of a store at `path`: `state.sqlite` -> `state.sqlite.lock`.
pub fn lock_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn load(&self) -> Result<Vec<Saved>, StateError> {
        self.blocking(|s| s.load_blocking()).await
    }

    async fn checkpoint(&self, checkpoints: &[Checkpoint], parcels: &[Parcel]) -> Result<Vec<i64>, StateError> {
        let (checkpoints, parcels) = (checkpoints.to_vec(), parcels.to_vec());
        self.blocking(move |s| s.checkpoint_blocking(&checkpoints, &parcels)).await
    }

    async fn save_all(&self, executions: Vec<Tracked>) -> Result<(), StateError> {
        self.blocking(move |s| s.save_all_blocking(&executions)).await
    }

    async fn outbox(&self) -> Result<Vec<ParcelInfo>, StateError> {
        self.blocking(|s| s.outbox_blocking()).await
    }

    async fn parcels(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, StateError> {
        let ids = ids.to_vec();
        self.blocking(move |s| s.parcels_blocking(&ids)).await
    }

    async fn delivered(&self, ids: &[i64]) -> Result<(), StateError> {
        let ids = ids.to_vec();
        self.blocking(move |s| s.outbox_update_blocking(&ids, None)).await
    }

    async fn postpone(&self, ids: &[i64], not_before: i64) -> Result<(), StateError> {
        let ids = ids.to_vec();
        self.blocking(move |s| s.outbox_update_blocking(&ids, Some(not_before))).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::tracked;

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.sqlite");
        {
            let store = SqliteStore::open(&path).unwrap();
            let parcel = Parcel { arn: "a".into(), body: b"spans".to_vec(), not_before: 0 };
            store.checkpoint(&[Checkpoint { execution: tracked("a"), state: "{}".into(), done: false, events: Default::default() }], &[parcel]).await.unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load().await.unwrap(), vec![Saved { execution: tracked("a"), state: Some("{}".into()), events: Vec::new() }]);
        let outbox = store.outbox().await.unwrap();
        assert_eq!(store.parcels(&[outbox[0].id]).await.unwrap(), vec![(outbox[0].id, b"spans".to_vec())]);
    }

    /// One process per file: a second open is refused, naming the file and the holder, and
    /// touches nothing; once the first store is gone the file opens again.
    #[tokio::test]
    async fn a_second_user_of_one_file_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let first = SqliteStore::open(&path).unwrap();
        first.checkpoint(&[Checkpoint { execution: tracked("a"), state: "{}".into(), done: false, events: Default::default() }], &[]).await.unwrap();
        let refused = SqliteStore::open(&path).err().expect("the file is the first store's");
        let holder = format!("process {}", std::process::id());
        assert!(matches!(&refused, StateError::InUse { path: p, holder: h } if p == &path.display().to_string() && h == &holder), "{refused:?}");
        let message = refused.to_string();
        assert!(message.contains("state.sqlite is in use by process") && message.contains("`state.url`"), "{message}");
        assert_eq!(std::fs::read_to_string(lock_path(&path)).unwrap(), format!("{}\n", std::process::id()));
        assert_eq!(first.load().await.unwrap().len(), 1, "the refused open changed nothing");
        drop(first);
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.load().await.unwrap().len(), 1);
    }

    /// A store written by version 1 (events stored, no fold state) opens: its unfinished
    /// executions load without a fold state (so they are re-read from the start), the events go.
    #[tokio::test]
    async fn a_version_1_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE executions (
                   arn TEXT PRIMARY KEY, flow_id TEXT NOT NULL, alias TEXT NOT NULL, version TEXT NOT NULL,
                   created_at INTEGER NOT NULL, ended_at INTEGER, status TEXT NOT NULL,
                   needs_settle INTEGER NOT NULL, terminal_seen_at INTEGER, errors TEXT,
                   node_cursor TEXT NOT NULL, flow_cursor TEXT NOT NULL,
                   node_checked INTEGER NOT NULL, flow_checked INTEGER NOT NULL,
                   final_read INTEGER NOT NULL, unknown_status_counted INTEGER NOT NULL,
                   done INTEGER NOT NULL DEFAULT 0);
                 CREATE INDEX executions_done ON executions(done, ended_at);
                 CREATE TABLE events (arn TEXT NOT NULL, stream INTEGER NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (arn, stream, seq)) WITHOUT ROWID;
                 CREATE TABLE exported (arn TEXT NOT NULL, span_id BLOB NOT NULL, PRIMARY KEY (arn, span_id)) WITHOUT ROWID;
                 CREATE TABLE snapshots (flow_id TEXT NOT NULL, version TEXT NOT NULL, definition TEXT NOT NULL, PRIMARY KEY (flow_id, version)) WITHOUT ROWID;
                 CREATE TABLE flows (flow_id TEXT PRIMARY KEY, last_poll INTEGER, last_full_scan INTEGER);
                 INSERT INTO executions VALUES ('a', 'ABCDEFGHIJ', 'A', '1', 1, NULL, 'Running', 1, NULL, NULL,
                   '{\"token\":null,\"consumed\":0,\"total\":0}', '{\"token\":\"t\",\"consumed\":3,\"total\":13}', 4, 13, 0, 0, 0);
                 INSERT INTO events VALUES ('a', 1, 0, '{}');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load().await.unwrap(), vec![Saved { execution: tracked("a"), state: None, events: Vec::new() }]);
        let tables: i64 =
            lock(&store.connection).query_row("SELECT count(*) FROM sqlite_master WHERE name IN ('events', 'exported')", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 0, "the stored events are gone");
    }
}
