//! The running executions per flow and alias, counted from the registry after each pass.

use std::collections::HashMap;

use super::events::{FlowRunningCounted, RunningCounted};
use super::Collector;
use crate::metrics::FlowLabels;
use crate::model::ExecutionStatus;

impl Collector {
    pub(super) fn update_running_gauges(&self) {
        // (running count, oldest running creation time) per flow and alias; aliases seen
        // before keep their series (at 0) when nothing runs.
        let mut counts: HashMap<(String, String), (i64, Option<i64>)> = HashMap::new();
        for flow in &self.flows {
            for alias in &flow.aliases {
                counts.insert((flow.id.clone(), alias.clone()), (0, None));
            }
        }
        for (flow_id, alias) in &self.seen_aliases {
            counts.entry((flow_id.clone(), alias.clone())).or_insert((0, None));
        }
        for t in self.tracked.values() {
            let entry = counts.entry((t.flow_id.clone(), t.alias.clone())).or_insert((0, None));
            if t.status == ExecutionStatus::Running {
                entry.0 += 1;
                entry.1 = Some(entry.1.map_or(t.created_at, |o| o.min(t.created_at)));
            }
        }
        let mut per_flow: HashMap<String, usize> = HashMap::new();
        for ((flow_id, alias), (n, oldest)) in counts {
            let name = self.flow_index(&flow_id).map(|i| self.flows[i].name.clone()).unwrap_or_else(|| flow_id.clone());
            let labels = FlowLabels { flow_id: flow_id.clone(), flow_name: name, alias };
            self.events.emit(RunningCounted { labels: &labels, running: n, oldest_created: oldest });
            *per_flow.entry(flow_id).or_default() += n as usize;
        }
        for (flow_id, n) in per_flow {
            self.events.emit(FlowRunningCounted { flow_id: &flow_id, running: n });
        }
    }
}
