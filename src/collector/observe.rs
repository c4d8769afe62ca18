//! What the collector's work shows: the flow and node metrics of exported spans and finished
//! executions, the running gauges, and the status board.

use std::collections::HashMap;

use super::board::FinishedExecution;
use super::lifecycle::Tracked;
use super::{Collector, SECOND};
use crate::metrics::FlowLabels;
use crate::model::ExecutionStatus;
use crate::span::{hex, SpanRecord};
use crate::timefmt::now_nanos;

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
            self.metrics.executions_running.get_or_create(&labels.with(&[])).set(n);
            self.metrics.oldest_running_start.get_or_create(&labels.with(&[])).set(oldest.map_or(0.0, |t| t as f64 / 1e9));
            *per_flow.entry(flow_id).or_default() += n as usize;
        }
        for (flow_id, n) in per_flow {
            self.board.update(&flow_id, |s| s.running = n);
        }
    }

    pub(super) fn observe_node(&self, labels: &FlowLabels, span: &SpanRecord) {
        let facts = &span.facts;
        let Some(node) = facts.node.as_deref() else {
            return;
        };
        let node = self.metrics.node(node);
        let node_type = if self.metrics.node_labels { facts.node_type.as_str() } else { "" };
        if !facts.incomplete {
            let status = if facts.failure_code.is_some() { "failed" } else { "ok" };
            self.metrics
                .node_duration
                .get_or_create(&labels.with(&[("node", node), ("node_type", node_type), ("status", status)]))
                .observe((span.end - span.start) as f64 / 1e9);
        }
        if let Some(code) = &facts.failure_code {
            self.metrics.node_failures.get_or_create(&labels.with(&[("node", node), ("error_code", code)])).inc();
        }
        for condition in &facts.satisfied_conditions {
            self.metrics.condition_results.get_or_create(&labels.with(&[("node", node), ("condition", condition)])).inc();
        }
        if facts.input_tokens > 0 {
            self.metrics.node_tokens.get_or_create(&labels.with(&[("node", node), ("token_type", "input")])).inc_by(facts.input_tokens as u64);
        }
        if facts.output_tokens > 0 {
            self.metrics.node_tokens.get_or_create(&labels.with(&[("node", node), ("token_type", "output")])).inc_by(facts.output_tokens as u64);
        }
    }

    pub(super) fn observe_finished(&self, t: &Tracked, root: &SpanRecord, spans: usize) {
        let labels = self.labels(t);
        let status = t.status.as_str();
        let with_status = labels.with(&[("status", status)]);
        let duration = (root.end - root.start) as f64 / 1e9;
        let trace_id = hex(&root.trace_id);
        self.metrics.executions_total.get_or_create(&with_status).inc();
        self.metrics.execution_duration.get_or_create(&with_status).observe(duration, Some(vec![("trace_id", trace_id.clone())]), None);
        // The latest end seen: a backlog is processed in ARN order, not in the order it ended.
        let last_end = self.metrics.last_execution_end.get_or_create(&with_status);
        if last_end.get() < root.end as f64 / 1e9 {
            last_end.set(root.end as f64 / 1e9);
        }
        let failure_code = match status {
            "TimedOut" => Some("ExecutionTimedOut".to_string()),
            "Failed" => Some(match root.attribute("error.type") {
                Some(crate::span::AttrValue::Str(code)) => code.clone(),
                _ => "Failed".to_string(),
            }),
            _ => None,
        };
        if let Some(code) = failure_code {
            self.metrics.flow_failures.get_or_create(&labels.with(&[("error_code", &code)])).inc();
        }
        let end = root.end;
        self.board.update(&t.flow_id, |s| {
            // A static status: the deque holds an hour of executions, without a String each.
            s.recent.push_back((end, crate::metrics::STATUSES.iter().copied().find(|known| *known == status).unwrap_or("other")));
            let hour_ago = now_nanos() - 3600 * SECOND;
            while s.recent.front().is_some_and(|(e, _)| *e < hour_ago) {
                s.recent.pop_front();
            }
        });
        tracing::info!(flow = %labels.flow_name, status, duration_secs = duration, spans, trace_id = %trace_id, arn = %t.arn, "execution exported");
        if let Some(hook) = &self.on_finished {
            hook(&FinishedExecution {
                flow_name: labels.flow_name.clone(),
                status: status.to_string(),
                duration_secs: duration,
                spans,
                trace_id,
                arn: t.arn.clone(),
            });
        }
    }
}
