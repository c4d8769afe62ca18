//! A store in memory, for tests: the contract of `StateStore` without a disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Checkpoint, FlowMarks, Parcel, ParcelInfo, Saved, StateError, StateStore};
use crate::collector::lifecycle::Tracked;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// State, fold state and whether it is done, by ARN.
    executions: HashMap<String, (Tracked, Option<String>, bool)>,
    outbox: BTreeMap<i64, Parcel>,
    next_parcel: i64,
    /// Held runs' span events: (ARN, run, index) -> event.
    run_events: BTreeMap<(String, i64, i64), String>,
    snapshots: HashMap<(String, String), String>,
    flows: HashMap<String, FlowMarks>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Memory {
    fn upsert(&mut self, t: &Tracked) {
        let (state, done) = self.executions.get(&t.arn).map(|(_, s, d)| (s.clone(), *d)).unwrap_or((None, false));
        self.executions.insert(t.arn.clone(), (t.clone(), state, done));
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self) -> Result<Vec<Saved>, StateError> {
        let m = self.lock();
        Ok(m.executions
            .values()
            .filter(|(_, _, done)| !done)
            .map(|(t, state, _)| {
                let events = m
                    .run_events
                    .range((t.arn.clone(), i64::MIN, i64::MIN)..=(t.arn.clone(), i64::MAX, i64::MAX))
                    .map(|((_, run, i), body)| (*run, *i, body.clone()))
                    .collect();
                Saved { execution: t.clone(), state: state.clone(), events }
            })
            .collect())
    }

    async fn checkpoint(&self, checkpoints: &[Checkpoint], parcels: &[Parcel]) -> Result<Vec<i64>, StateError> {
        let mut m = self.lock();
        for c in checkpoints {
            let t = &c.execution;
            let arn = t.arn.clone();
            m.run_events.retain(|(a, run, _), _| a != &arn || !(c.done || c.events.closed.contains(run)));
            if !c.done {
                for (run, i, body) in &c.events.added {
                    m.run_events.insert((arn.clone(), *run, *i), body.clone());
                }
            }
            if c.done {
                m.executions.insert(t.arn.clone(), (t.clone(), None, true));
                if t.version == "DRAFT" {
                    m.snapshots.remove(&(t.flow_id.clone(), format!("DRAFT:{}", t.arn)));
                }
            } else {
                m.executions.insert(t.arn.clone(), (t.clone(), Some(c.state.clone()), false));
            }
        }
        let mut ids = Vec::with_capacity(parcels.len());
        for p in parcels {
            m.next_parcel += 1;
            let id = m.next_parcel;
            m.outbox.insert(id, p.clone());
            ids.push(id);
        }
        Ok(ids)
    }

    async fn save_all(&self, executions: Vec<Tracked>) -> Result<(), StateError> {
        let mut m = self.lock();
        for t in &executions {
            m.upsert(t);
        }
        Ok(())
    }

    async fn outbox(&self) -> Result<Vec<ParcelInfo>, StateError> {
        let m = self.lock();
        Ok(m.outbox.iter().map(|(id, p)| ParcelInfo { id: *id, arn: p.arn.clone(), bytes: p.body.len() as u64, not_before: p.not_before }).collect())
    }

    async fn parcels(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, StateError> {
        let m = self.lock();
        Ok(ids.iter().filter_map(|id| m.outbox.get(id).map(|p| (*id, p.body.clone()))).collect())
    }

    async fn delivered(&self, ids: &[i64]) -> Result<(), StateError> {
        let mut m = self.lock();
        for id in ids {
            m.outbox.remove(id);
        }
        Ok(())
    }

    async fn postpone(&self, ids: &[i64], not_before: i64) -> Result<(), StateError> {
        let mut m = self.lock();
        for id in ids {
            if let Some(p) = m.outbox.get_mut(id) {
                p.not_before = not_before;
            }
        }
        Ok(())
    }

    async fn snapshot(&self, flow_id: &str, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.lock().snapshots.get(&(flow_id.to_string(), key.to_string())).cloned())
    }

    async fn put_snapshot(&self, flow_id: &str, key: &str, definition: &str) -> Result<(), StateError> {
        self.lock().snapshots.insert((flow_id.to_string(), key.to_string()), definition.to_string());
        Ok(())
    }

    async fn flow_marks(&self, flow_id: &str) -> Result<FlowMarks, StateError> {
        Ok(self.lock().flows.get(flow_id).copied().unwrap_or_default())
    }

    async fn set_flow_marks(&self, flow_id: &str, last_poll: i64, last_full_scan: Option<i64>) -> Result<(), StateError> {
        let mut m = self.lock();
        let marks = m.flows.entry(flow_id.to_string()).or_default();
        marks.last_poll = Some(last_poll);
        marks.last_full_scan = last_full_scan.or(marks.last_full_scan);
        Ok(())
    }

    async fn finished_among(&self, arns: &[&str]) -> Result<HashSet<String>, StateError> {
        let m = self.lock();
        Ok(arns.iter().filter(|a| m.executions.get(**a).is_some_and(|(_, _, done)| *done)).map(|a| a.to_string()).collect())
    }

    async fn prune(&self, before: i64) -> Result<usize, StateError> {
        let mut m = self.lock();
        let old: Vec<String> = m.executions.iter().filter(|(_, (t, _, done))| *done && t.created_at < before).map(|(arn, _)| arn.clone()).collect();
        for arn in &old {
            m.executions.remove(arn);
        }
        Ok(old.len())
    }
}
