//! Replicas (SPEC §11): which flows this replica works on. Each cycle it heartbeats and renews
//! its leases through the store (`StateStore::coordinate`), which also spreads the flows over
//! the live members; a flow it takes is loaded from the shared checkpoints, a flow it loses is
//! dropped at once (its executions leave the registry, its lease series goes). Every checkpoint
//! is fenced by the leases of its executions' flows. A store of one process holds every flow.

use std::collections::HashSet;

use super::events::{AliasSeen, CheckpointRejected, FlowsForgotten, LeasesChanged, LeftReplicas, StoreReachable, TrackedCounted};
use super::Collector;
use crate::state::{Fence, StateError};

/// This replica's member id: host name, process id and start time (unique per process).
pub fn member_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}-{:x}", std::process::id(), crate::timefmt::now_nanos() & 0xffff_ffff)
}

impl Collector {
    /// Renews, gives back and takes leases; false when the store cannot be reached (then no
    /// work is done this cycle).
    pub(super) async fn coordinate(&mut self) -> bool {
        self.last_coordinated = std::time::Instant::now();
        let keys: Vec<String> = self.flows.iter().map(|f| f.lease_key.clone()).collect();
        let leases = match self.store.coordinate(&keys, self.lease_ms, self.share).await {
            Ok(leases) => leases,
            Err(e) => {
                self.events.emit(StoreReachable { up: false, error: Some(&e) });
                // Without the store nothing is held: no guessing.
                let lost: Vec<String> = self.working.iter().cloned().collect();
                self.drop_flows(&lost);
                return false;
            }
        };
        self.events.emit(StoreReachable { up: true, error: None });
        self.held = leases.held.clone();
        let mut now_working: HashSet<String> = self.flows.iter().filter(|f| self.held.contains_key(&f.lease_key)).map(|f| f.id.clone()).collect();
        let mut taken: Vec<String> = now_working.difference(&self.working).cloned().collect();
        let lost: Vec<String> = self.working.difference(&now_working).cloned().collect();
        self.drop_flows(&lost);
        if self.loaded_once {
            if !taken.is_empty() && !self.load_flows(&taken).await {
                // Half a load is no state to work from: what came of it goes, and the flows
                // stay out of the work (their leases held) until a cycle loads them whole.
                self.drop_flows(&taken);
                now_working.retain(|f| !taken.contains(f));
                taken.clear();
            }
        } else {
            // At start everything was loaded: keep only the flows held.
            let others: Vec<String> = self.flows.iter().map(|f| f.id.clone()).filter(|id| !now_working.contains(id)).collect();
            self.drop_flows(&others);
            self.loaded_once = true;
        }
        self.working = now_working;
        self.share_budgets();
        // A flow taken starts its known series at 0, as at start.
        for f in self.flows.iter().filter(|f| taken.contains(&f.id)) {
            for alias in &f.aliases {
                self.events.emit(AliasSeen(&crate::metrics::FlowLabels { flow_id: f.id.clone(), flow_name: f.name.clone(), alias: alias.clone() }));
            }
        }
        self.holders = leases.holders.clone();
        let holders = leases.holders.into_iter().collect();
        let shared = self.store.shared();
        self.events.emit(LeasesChanged {
            member: &self.member,
            shared,
            taken: &taken,
            lost: &lost,
            members: Some(leases.members),
            holders: shared.then_some(holders),
        });
        true
    }

    /// Each target's budget is spent in proportion to the flows of it held (SPEC §11), so the
    /// replicas together never exceed it. A store of one process holds every flow: share 1.
    fn share_budgets(&self) {
        let mut targets: Vec<(&std::sync::Arc<crate::source::RequestBudget>, usize, usize)> = Vec::new();
        for f in &self.flows {
            let held = usize::from(self.working.contains(&f.id));
            match targets.iter_mut().find(|(b, _, _)| std::sync::Arc::ptr_eq(b, &f.budget)) {
                Some(t) => (t.1, t.2) = (t.1 + held, t.2 + 1),
                None => targets.push((&f.budget, held, 1)),
            }
        }
        for (budget, held, all) in targets {
            budget.set_share(held as f64 / all as f64);
        }
    }

    /// `coordinate` when a third of the lease passed since the last one (always true on a store
    /// of one process, which has no leases to lose).
    pub(super) async fn renew_if_due(&mut self) -> bool {
        if !self.store.shared() || self.last_coordinated.elapsed() < std::time::Duration::from_millis(self.lease_ms as u64 / 3) {
            return true;
        }
        self.coordinate().await
    }

    /// Forgets the executions (and outbox entries) of flows this replica no longer holds.
    fn drop_flows(&mut self, flow_ids: &[String]) {
        if flow_ids.is_empty() {
            return;
        }
        let gone: Vec<String> = self.tracked.values().filter(|t| flow_ids.contains(&t.flow_id)).map(|t| t.arn.clone()).collect();
        for arn in gone {
            self.tracked.remove(&arn);
            self.folds.remove(&arn);
            self.saved_events.remove(&arn);
        }
        self.outbox.forget(|arn| flow_ids.iter().any(|f| super::outbox::flow_of(arn) == f));
        for f in flow_ids {
            self.working.remove(f);
        }
        self.seen_aliases.retain(|(f, _)| !flow_ids.contains(f));
        self.events.emit(FlowsForgotten(flow_ids));
        self.events.emit(TrackedCounted(self.tracked.len()));
    }

    /// Loads the shared checkpoints (and outbox) of flows just taken; false when the store
    /// failed at either (counted as a failed `coordinate`).
    async fn load_flows(&mut self, flow_ids: &[String]) -> bool {
        let loaded = match self.store.load_flows(flow_ids).await {
            Ok(saved) => {
                for s in saved {
                    self.adopt(s);
                }
                true
            }
            Err(e) => {
                self.events.emit(StoreReachable { up: false, error: Some(&e) });
                false
            }
        };
        let merged = loaded
            && match self.store.outbox().await {
                Ok(parcels) => {
                    self.outbox.merge(parcels.into_iter().filter(|p| flow_ids.iter().any(|f| super::outbox::flow_of(&p.arn) == f)));
                    true
                }
                Err(e) => {
                    self.events.emit(StoreReachable { up: false, error: Some(&e) });
                    false
                }
            };
        self.events.emit(TrackedCounted(self.tracked.len()));
        merged
    }

    /// Gives back every lease and leaves the members (shutdown, the end of `run --once`), so
    /// the other replicas take these flows at their next cycle, not after the lease.
    pub async fn leave(&mut self) {
        if !self.store.shared() {
            return;
        }
        let result = self.store.leave().await;
        self.events.emit(LeftReplicas { member: &self.member, flows: self.working.len(), error: result.as_ref().err() });
        let all: Vec<String> = self.working.iter().cloned().collect();
        self.drop_flows(&all);
    }

    /// Whether this replica works on the flow now.
    pub(super) fn holds(&self, flow_id: &str) -> bool {
        !self.store.shared() || self.working.contains(flow_id)
    }

    /// The fences of a write touching these flows.
    pub(super) fn fences<'a>(&self, flow_ids: impl Iterator<Item = &'a str>) -> Vec<Fence> {
        let mut seen = HashSet::new();
        let mut fences = Vec::new();
        for id in flow_ids {
            if !seen.insert(id.to_string()) {
                continue;
            }
            if let Some(flow) = self.flows.iter().find(|f| f.id == id) {
                if let Some(counter) = self.held.get(&flow.lease_key) {
                    fences.push(Fence { flow_key: flow.lease_key.clone(), counter: *counter });
                }
            }
        }
        fences
    }

    /// A write was refused for a lost lease: drop that flow at once.
    pub(super) fn fenced_off(&mut self, error: &StateError) {
        if let StateError::LeaseLost(key) = error {
            self.events.emit(CheckpointRejected { flow_key: key });
            self.held.remove(key);
            let lost: Vec<String> = self.flows.iter().filter(|f| &f.lease_key == key).map(|f| f.id.clone()).collect();
            self.drop_flows(&lost);
            self.events.emit(LeasesChanged { member: &self.member, shared: true, taken: &[], lost: &lost, members: None, holders: None });
        }
    }
}
