//! The shared store of replicas (SPEC §11): PostgreSQL through a connection pool
//! (`deadpool-postgres` over `tokio-postgres`: async, no blocking pool, well kept, the pool
//! recycles connections and never holds session state the store relies on). Leases are rows
//! with an owner, an expiry and a counter (the Kinesis Client Library's lease table); every
//! checkpoint checks, in its own transaction, that the leases of its executions' flows are
//! still this replica's with the same counter. Times of leases and members are the database's
//! clock, so replicas' clocks do not matter.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{Checkpoint, Fence, FlowMarks, Leases, Parcel, ParcelInfo, Saved, Share, StateError, StateStore};
use crate::collector::lifecycle::Tracked;
use crate::model::ExecutionStatus;

/// The schema version this build writes.
const PG_SCHEMA_VERSION: i32 = 1;

/// Any number, the same in every replica: the advisory lock around migrations.
const MIGRATION_LOCK: i64 = 0x6266_6578_706f_7274;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bfe_schema (version INT NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
  arn TEXT PRIMARY KEY, flow_id TEXT NOT NULL, alias TEXT NOT NULL, version TEXT NOT NULL,
  created_at BIGINT NOT NULL, ended_at BIGINT, status TEXT NOT NULL, needs_settle BOOLEAN NOT NULL,
  terminal_seen_at BIGINT, errors TEXT, node_cursor TEXT NOT NULL, flow_cursor TEXT NOT NULL,
  final_read BOOLEAN NOT NULL, unknown_status_counted BOOLEAN NOT NULL, state TEXT,
  done BOOLEAN NOT NULL DEFAULT FALSE);
CREATE INDEX IF NOT EXISTS executions_active ON executions(flow_id) WHERE NOT done;
CREATE TABLE IF NOT EXISTS outbox (
  id BIGSERIAL PRIMARY KEY, arn TEXT NOT NULL, bytes BIGINT NOT NULL, not_before BIGINT NOT NULL, body BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
  flow_id TEXT NOT NULL, version TEXT NOT NULL, definition TEXT NOT NULL, PRIMARY KEY (flow_id, version));
CREATE TABLE IF NOT EXISTS flows (flow_id TEXT PRIMARY KEY, last_poll BIGINT, last_full_scan BIGINT);
CREATE TABLE IF NOT EXISTS leases (
  flow_key TEXT PRIMARY KEY, owner TEXT, expires_at BIGINT NOT NULL DEFAULT 0, counter BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS members (id TEXT PRIMARY KEY, seen_at BIGINT NOT NULL);
ALTER TABLE executions ADD COLUMN IF NOT EXISTS lease_counter BIGINT;
ALTER TABLE executions ADD COLUMN IF NOT EXISTS written_at BIGINT;
CREATE TABLE IF NOT EXISTS run_events (
  arn TEXT NOT NULL, run BIGINT NOT NULL, idx BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (arn, run, idx));
";

/// The columns of a saved execution, in the order `saved_of` reads them.
const SELECT_SAVED: &str = "SELECT arn, flow_id, alias, version, created_at, ended_at, status, needs_settle, terminal_seen_at, errors,
        node_cursor, flow_cursor, final_read, unknown_status_counted, state FROM executions";

fn saved_of(r: &tokio_postgres::Row) -> Saved {
    let errors: Option<String> = r.get(9);
    let (node, flow): (String, String) = (r.get(10), r.get(11));
    let execution = Tracked {
        arn: r.get(0),
        flow_id: r.get(1),
        alias: r.get(2),
        version: r.get(3),
        created_at: r.get(4),
        ended_at: r.get(5),
        status: ExecutionStatus::parse(r.get::<_, &str>(6)),
        needs_settle: r.get(7),
        terminal_seen_at: r.get(8),
        errors: errors.and_then(|e| serde_json::from_str(&e).ok()),
        node_cursor: serde_json::from_str(&node).unwrap_or_default(),
        flow_cursor: serde_json::from_str(&flow).unwrap_or_default(),
        final_read: r.get(12),
        unknown_status_counted: r.get(13),
    };
    Saved { execution, state: r.get(14), events: Vec::new() }
}

/// The rows (arn, run, idx, body) of `run_events` attached to their executions.
fn with_run_events(saved: Vec<Saved>, rows: &[tokio_postgres::Row]) -> Vec<Saved> {
    super::attach_run_events(saved, rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3)))))
}

/// Milliseconds since the epoch on the database's clock.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub struct PostgresStore {
    pool: Pool,
    /// This replica's member id (owner of its leases).
    member: String,
}

fn sql(e: impl std::fmt::Display) -> StateError {
    StateError::Remote(e.to_string())
}

impl PostgresStore {
    /// Connects (the URL, with the usual `PG*` variables for what it leaves out), creates or
    /// migrates the schema under a transaction-scoped advisory lock (safe when several replicas
    /// start at once), and joins as `member`.
    pub async fn open(url: &str, member: &str) -> Result<PostgresStore, StateError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StateError::Remote(format!("state.url: {e}")))?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if config.get_hosts().is_empty() {
            config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
        }
        if config.get_ports().is_empty() {
            if let Some(port) = env("PGPORT").and_then(|p| p.parse().ok()) {
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            config.user(env("PGUSER").as_deref().unwrap_or("postgres"));
        }
        if config.get_password().is_none() {
            if let Some(p) = env("PGPASSWORD") {
                config.password(p);
            }
        }
        if config.get_dbname().is_none() {
            if let Some(d) = env("PGDATABASE") {
                config.dbname(d);
            }
        }
        config.connect_timeout(std::time::Duration::from_secs(5));
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(8).build().map_err(sql)?;
        let store = PostgresStore { pool, member: member.to_string() };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StateError> {
        self.pool.get().await.map_err(sql)
    }

    async fn migrate(&self) -> Result<(), StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(sql)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(sql)?;
        tx.batch_execute(SCHEMA).await.map_err(sql)?;
        let found: Option<i32> = tx.query_opt("SELECT max(version) FROM bfe_schema", &[]).await.map_err(sql)?.and_then(|r| r.get(0));
        match found {
            Some(v) if v > PG_SCHEMA_VERSION => return Err(StateError::Remote(format!("schema version {v}; this build knows up to {PG_SCHEMA_VERSION}"))),
            Some(_) => {}
            None => {
                tx.execute("INSERT INTO bfe_schema (version) VALUES ($1)", &[&PG_SCHEMA_VERSION]).await.map_err(sql)?;
            }
        }
        tx.commit().await.map_err(sql)
    }

    async fn upsert(tx: &deadpool_postgres::Transaction<'_>, t: &Tracked) -> Result<(), StateError> {
        let errors = t.errors.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default());
        let (node, flow) = (serde_json::to_string(&t.node_cursor).unwrap_or_default(), serde_json::to_string(&t.flow_cursor).unwrap_or_default());
        tx.execute(
            "INSERT INTO executions (arn, flow_id, alias, version, created_at, ended_at, status, needs_settle, terminal_seen_at, errors,
                                     node_cursor, flow_cursor, final_read, unknown_status_counted)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (arn) DO UPDATE SET version = $4, ended_at = $6, status = $7, needs_settle = $8, terminal_seen_at = $9,
               errors = $10, node_cursor = $11, flow_cursor = $12, final_read = $13, unknown_status_counted = $14",
            &[
                &t.arn,
                &t.flow_id,
                &t.alias,
                &t.version,
                &t.created_at,
                &t.ended_at,
                &t.status.as_str(),
                &t.needs_settle,
                &t.terminal_seen_at,
                &errors,
                &node,
                &flow,
                &t.final_read,
                &t.unknown_status_counted,
            ],
        )
        .await
        .map_err(sql)?;
        Ok(())
    }

    /// Every fence still holds: the lease is this member's, with that counter, not expired.
    async fn check_fences(&self, tx: &deadpool_postgres::Transaction<'_>, fences: &[Fence]) -> Result<(), StateError> {
        for f in fences {
            let held = tx
                .query_opt(
                    &format!("SELECT 1 FROM leases WHERE flow_key = $1 AND owner = $2 AND counter = $3 AND expires_at > {NOW_MS} FOR SHARE"),
                    &[&f.flow_key, &self.member, &f.counter],
                )
                .await
                .map_err(sql)?;
            if held.is_none() {
                return Err(StateError::LeaseLost(f.flow_key.clone()));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn load(&self) -> Result<Vec<Saved>, StateError> {
        let c = self.client().await?;
        let rows = c.query(&format!("{SELECT_SAVED} WHERE NOT done"), &[]).await.map_err(sql)?;
        let events = c.query("SELECT arn, run, idx, body FROM run_events ORDER BY arn, run, idx", &[]).await.map_err(sql)?;
        Ok(with_run_events(rows.iter().map(saved_of).collect(), &events))
    }

    async fn load_flows(&self, flow_ids: &[String]) -> Result<Vec<Saved>, StateError> {
        let c = self.client().await?;
        let rows = c.query(&format!("{SELECT_SAVED} WHERE NOT done AND flow_id = ANY($1)"), &[&flow_ids]).await.map_err(sql)?;
        let events = c
            .query(
                "SELECT e.arn, e.run, e.idx, e.body FROM run_events e JOIN executions x ON x.arn = e.arn
                 WHERE NOT x.done AND x.flow_id = ANY($1) ORDER BY e.arn, e.run, e.idx",
                &[&flow_ids],
            )
            .await
            .map_err(sql)?;
        Ok(with_run_events(rows.iter().map(saved_of).collect(), &events))
    }

    fn shared(&self) -> bool {
        true
    }

    fn member(&self) -> Option<String> {
        Some(self.member.clone())
    }

    async fn checkpoint(&self, checkpoints: &[Checkpoint], parcels: &[Parcel]) -> Result<Vec<i64>, StateError> {
        self.checkpoint_fenced(checkpoints, parcels, &[]).await
    }

    async fn checkpoint_fenced(&self, checkpoints: &[Checkpoint], parcels: &[Parcel], fences: &[Fence]) -> Result<Vec<i64>, StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(sql)?;
        self.check_fences(&tx, fences).await?;
        for Checkpoint { execution: t, state, done, events } in checkpoints {
            Self::upsert(&tx, t).await?;
            if *done {
                tx.execute("DELETE FROM run_events WHERE arn = $1", &[&t.arn]).await.map_err(sql)?;
            } else {
                if !events.closed.is_empty() {
                    tx.execute("DELETE FROM run_events WHERE arn = $1 AND run = ANY($2)", &[&t.arn, &events.closed]).await.map_err(sql)?;
                }
                if !events.added.is_empty() {
                    let (runs, (indexes, bodies)): (Vec<i64>, (Vec<i64>, Vec<&str>)) = events.added.iter().map(|(r, i, b)| (*r, (*i, b.as_str()))).unzip();
                    tx.execute(
                        "INSERT INTO run_events (arn, run, idx, body) SELECT $1::TEXT, * FROM unnest($2::BIGINT[], $3::BIGINT[], $4::TEXT[])
                         ON CONFLICT (arn, run, idx) DO UPDATE SET body = EXCLUDED.body",
                        &[&t.arn, &runs, &indexes, &bodies],
                    )
                    .await
                    .map_err(sql)?;
                }
            }
            // The fold state (none once done), and which lease wrote the row when (database
            // clock): the audit trail of fencing.
            let counter = fences.iter().find(|f| f.flow_key.ends_with(&format!("/{}", t.flow_id))).map(|f| f.counter);
            let state = (!*done).then_some(state);
            tx.execute(
                &format!("UPDATE executions SET done = $2, state = $3, lease_counter = $4, written_at = {NOW_MS} WHERE arn = $1"),
                &[&t.arn, done, &state, &counter],
            )
            .await
            .map_err(sql)?;
            if *done && t.version == "DRAFT" {
                tx.execute("DELETE FROM snapshots WHERE flow_id = $1 AND version = $2", &[&t.flow_id, &format!("DRAFT:{}", t.arn)]).await.map_err(sql)?;
            }
        }
        let mut ids = Vec::with_capacity(parcels.len());
        for p in parcels {
            let row = tx
                .query_one(
                    "INSERT INTO outbox (arn, bytes, not_before, body) VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&p.arn, &(p.body.len() as i64), &p.not_before, &p.body],
                )
                .await
                .map_err(sql)?;
            ids.push(row.get(0));
        }
        tx.commit().await.map_err(sql)?;
        Ok(ids)
    }

    async fn save_all(&self, executions: Vec<Tracked>) -> Result<(), StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(sql)?;
        for t in &executions {
            Self::upsert(&tx, t).await?;
        }
        tx.commit().await.map_err(sql)
    }

    async fn outbox(&self) -> Result<Vec<ParcelInfo>, StateError> {
        let c = self.client().await?;
        let rows = c.query("SELECT id, arn, bytes, not_before FROM outbox ORDER BY id", &[]).await.map_err(sql)?;
        Ok(rows.iter().map(|r| ParcelInfo { id: r.get(0), arn: r.get(1), bytes: r.get::<_, i64>(2) as u64, not_before: r.get(3) }).collect())
    }

    async fn parcels(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, StateError> {
        let c = self.client().await?;
        let rows = c.query("SELECT id, body FROM outbox WHERE id = ANY($1) ORDER BY id", &[&ids]).await.map_err(sql)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn delivered(&self, ids: &[i64]) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids]).await.map_err(sql)?;
        Ok(())
    }

    async fn postpone(&self, ids: &[i64], not_before: i64) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute("UPDATE outbox SET not_before = $2 WHERE id = ANY($1)", &[&ids, &not_before]).await.map_err(sql)?;
        Ok(())
    }

    async fn snapshot(&self, flow_id: &str, key: &str) -> Result<Option<String>, StateError> {
        let c = self.client().await?;
        Ok(c.query_opt("SELECT definition FROM snapshots WHERE flow_id = $1 AND version = $2", &[&flow_id, &key]).await.map_err(sql)?.map(|r| r.get(0)))
    }

    async fn put_snapshot(&self, flow_id: &str, key: &str, definition: &str) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO snapshots (flow_id, version, definition) VALUES ($1, $2, $3) ON CONFLICT (flow_id, version) DO UPDATE SET definition = $3",
            &[&flow_id, &key, &definition],
        )
        .await
        .map_err(sql)?;
        Ok(())
    }

    async fn flow_marks(&self, flow_id: &str) -> Result<FlowMarks, StateError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT last_poll, last_full_scan FROM flows WHERE flow_id = $1", &[&flow_id]).await.map_err(sql)?;
        Ok(row.map(|r| FlowMarks { last_poll: r.get(0), last_full_scan: r.get(1) }).unwrap_or_default())
    }

    async fn set_flow_marks(&self, flow_id: &str, last_poll: i64, last_full_scan: Option<i64>) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO flows (flow_id, last_poll, last_full_scan) VALUES ($1, $2, $3)
             ON CONFLICT (flow_id) DO UPDATE SET last_poll = $2, last_full_scan = COALESCE($3, flows.last_full_scan)",
            &[&flow_id, &last_poll, &last_full_scan],
        )
        .await
        .map_err(sql)?;
        Ok(())
    }

    async fn finished_among(&self, arns: &[&str]) -> Result<HashSet<String>, StateError> {
        let c = self.client().await?;
        let arns: Vec<String> = arns.iter().map(|a| a.to_string()).collect();
        let rows = c.query("SELECT arn FROM executions WHERE arn = ANY($1) AND done", &[&arns]).await.map_err(sql)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn prune(&self, before: i64) -> Result<usize, StateError> {
        let c = self.client().await?;
        Ok(c.execute("DELETE FROM executions WHERE done AND created_at < $1", &[&before]).await.map_err(sql)? as usize)
    }

    async fn coordinate(&self, flows: &[String], lease_ms: i64, share: Share) -> Result<Leases, StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(sql)?;
        let me = &self.member;
        tx.execute(&format!("INSERT INTO members (id, seen_at) VALUES ($1, {NOW_MS}) ON CONFLICT (id) DO UPDATE SET seen_at = {NOW_MS}"), &[me])
            .await
            .map_err(sql)?;
        for f in flows {
            tx.execute("INSERT INTO leases (flow_key) VALUES ($1) ON CONFLICT (flow_key) DO NOTHING", &[f]).await.map_err(sql)?;
        }
        let live: i64 = tx.query_one(&format!("SELECT count(*) FROM members WHERE seen_at > {NOW_MS} - $1"), &[&lease_ms]).await.map_err(sql)?.get(0);
        let share = match share {
            Share::Fair => (flows.len() as i64 + live.max(1) - 1) / live.max(1),
            Share::All => flows.len() as i64,
        };
        // Renew what this member holds.
        let renewed = tx
            .query(&format!("UPDATE leases SET expires_at = {NOW_MS} + $2 WHERE owner = $1 AND expires_at > {NOW_MS} AND flow_key = ANY($3) RETURNING flow_key, counter"), &[me, &lease_ms, &flows])
            .await
            .map_err(sql)?;
        let mut held: HashMap<String, i64> = renewed.iter().map(|r| (r.get(0), r.get(1))).collect();
        // More than a fair share: give the extras back (the last ones, by key).
        if held.len() as i64 > share {
            let mut keys: Vec<String> = held.keys().cloned().collect();
            keys.sort();
            for key in keys.split_off(share as usize) {
                tx.execute("UPDATE leases SET owner = NULL, expires_at = 0 WHERE flow_key = $1 AND owner = $2", &[&key, me]).await.map_err(sql)?;
                held.remove(&key);
            }
        }
        // Fewer: take free or expired ones, each with a new counter (fencing the old owner).
        if (held.len() as i64) < share {
            let want = share - held.len() as i64;
            let taken = tx
                .query(
                    &format!(
                        "UPDATE leases SET owner = $1, counter = counter + 1, expires_at = {NOW_MS} + $2
                         WHERE flow_key IN (SELECT flow_key FROM leases WHERE flow_key = ANY($3) AND (owner IS NULL OR expires_at <= {NOW_MS})
                                            ORDER BY flow_key LIMIT $4 FOR UPDATE SKIP LOCKED)
                         RETURNING flow_key, counter"
                    ),
                    &[me, &lease_ms, &flows, &want],
                )
                .await
                .map_err(sql)?;
            held.extend(taken.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))));
        }
        let holders = tx
            .query(&format!("SELECT flow_key, owner FROM leases WHERE flow_key = ANY($1) AND owner IS NOT NULL AND expires_at > {NOW_MS}"), &[&flows])
            .await
            .map_err(sql)?;
        tx.commit().await.map_err(sql)?;
        Ok(Leases { held, members: live as usize, holders: holders.iter().map(|r| (r.get(0), r.get(1))).collect() })
    }

    async fn leave(&self) -> Result<(), StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(sql)?;
        // The counter stays: the next taker moves it on, fencing anything still in flight here.
        tx.execute("UPDATE leases SET owner = NULL, expires_at = 0 WHERE owner = $1", &[&self.member]).await.map_err(sql)?;
        tx.execute("DELETE FROM members WHERE id = $1", &[&self.member]).await.map_err(sql)?;
        tx.commit().await.map_err(sql)
    }
}
