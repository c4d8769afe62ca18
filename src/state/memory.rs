//! A store in memory, for tests: the contract of `StateStore` without a disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{ExportMark, FlowMarks, History, StateError, StateStore, StreamRead};
use crate::collector::lifecycle::Tracked;
use crate::model::Event;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// State and whether it is done, by ARN.
    executions: HashMap<String, (Tracked, bool)>,
    /// Events by (ARN, flow stream) and sequence number.
    events: HashMap<(String, bool), BTreeMap<usize, Event>>,
    exported: HashMap<String, HashSet<[u8; 8]>>,
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
        let done = self.executions.get(&t.arn).is_some_and(|(_, done)| *done);
        self.executions.insert(t.arn.clone(), (t.clone(), done));
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self) -> Result<Vec<Tracked>, StateError> {
        Ok(self.lock().executions.values().filter(|(_, done)| !done).map(|(t, _)| t.clone()).collect())
    }

    async fn save_reads(&self, reads: &[StreamRead]) -> Result<(), StateError> {
        let mut m = self.lock();
        for read in reads {
            m.upsert(&read.execution);
            for (flow_stream, events, start) in [(false, &read.new_node, read.first_seq.0), (true, &read.new_flow, read.first_seq.1)] {
                let stored = m.events.entry((read.execution.arn.clone(), flow_stream)).or_default();
                for (i, event) in events.iter().enumerate() {
                    stored.insert(start + i, event.clone());
                }
            }
        }
        Ok(())
    }

    async fn save_all(&self, executions: &[Tracked]) -> Result<(), StateError> {
        let mut m = self.lock();
        for t in executions {
            m.upsert(t);
        }
        Ok(())
    }

    async fn histories(&self, arns: &[&str]) -> Result<HashMap<String, History>, StateError> {
        let m = self.lock();
        let stream = |arn: &str, flow_stream| m.events.get(&(arn.to_string(), flow_stream)).map(|e| e.values().cloned().collect()).unwrap_or_default();
        Ok(arns
            .iter()
            .map(|arn| {
                let history =
                    History { node_events: stream(arn, false), flow_events: stream(arn, true), exported: m.exported.get(*arn).cloned().unwrap_or_default() };
                (arn.to_string(), history)
            })
            .collect())
    }

    async fn mark_exported(&self, marks: &[ExportMark]) -> Result<(), StateError> {
        let mut m = self.lock();
        for mark in marks {
            let t = &mark.execution;
            m.upsert(t);
            if mark.done {
                m.executions.insert(t.arn.clone(), (t.clone(), true));
                m.events.remove(&(t.arn.clone(), false));
                m.events.remove(&(t.arn.clone(), true));
                m.exported.remove(&t.arn);
                if t.version == "DRAFT" {
                    m.snapshots.remove(&(t.flow_id.clone(), format!("DRAFT:{}", t.arn)));
                }
            } else {
                m.exported.entry(t.arn.clone()).or_default().extend(mark.exported.iter().copied());
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
        Ok(arns.iter().filter(|a| m.executions.get(**a).is_some_and(|(_, done)| *done)).map(|a| a.to_string()).collect())
    }

    async fn prune(&self, before: i64) -> Result<usize, StateError> {
        let mut m = self.lock();
        let old: Vec<String> = m.executions.iter().filter(|(_, (t, done))| *done && t.created_at < before).map(|(arn, _)| arn.clone()).collect();
        for arn in &old {
            m.executions.remove(arn);
        }
        Ok(old.len())
    }
}
