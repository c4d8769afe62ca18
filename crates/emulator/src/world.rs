//! The emulated service's state: flows with versions and aliases, executions with their
//! planned events, and the request statistics. Time is the wall clock: an execution's events
//! become visible as their timestamps pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};

use super::generate::{self, Malformation, Outcome, Plan};
use super::rng::Rng;
use super::scenario::{AliasSpec, ListOrder, Scenario, Traffic};
use bedrock_flow_wire::model::{Event, ExecutionError, ExecutionStatus, ExecutionSummary, FlowDefinition, Timestamp};

pub struct FlowState {
    pub id: String,
    pub name: String,
    /// version → (definition, its JSON text as the snapshot returns it)
    pub versions: HashMap<String, (Arc<FlowDefinition>, Arc<String>)>,
    pub aliases: Vec<AliasSpec>,
    pub traffic: Traffic,
    pub executions: Vec<usize>,
    next_arrival: i64,
}

/// One stream of an execution's events with the time each becomes visible (a running
/// maximum of timestamps, so that visibility is a prefix even for skewed events).
#[derive(Default)]
pub struct Stream {
    pub events: Vec<Value>,
    pub visible_at: Vec<i64>,
}

impl Stream {
    pub fn visible(&self, now: i64) -> usize {
        self.visible_at.partition_point(|t| *t <= now)
    }
}

pub struct Execution {
    pub arn: String,
    pub flow: usize,
    pub alias: String,
    pub version: String,
    pub name: String,
    pub created_at: i64,
    pub ended_at: i64,
    pub final_status: ExecutionStatus,
    pub errors: Vec<ExecutionError>,
    pub flow_stream: Stream,
    pub node_stream: Stream,
    pub aborted_at: Option<i64>,
    /// Malformed: a status string the model does not know while running.
    pub unknown_status: bool,
    /// Its event lists answer 404 (fault `vanished_ratio`).
    pub vanished: bool,
    pub order_key: u64,
}

impl Execution {
    /// (status, endedAt) as the service reports them at `now`.
    pub fn status_at(&self, now: i64) -> (ExecutionStatus, Option<i64>) {
        if let Some(t) = self.aborted_at.filter(|t| *t <= now) {
            return (ExecutionStatus::Aborted, Some(t));
        }
        if now >= self.ended_at {
            return (self.final_status.clone(), Some(self.ended_at));
        }
        if self.unknown_status {
            return (ExecutionStatus::Unknown("InProgress".into()), None);
        }
        (ExecutionStatus::Running, None)
    }

    /// The instant up to which events are visible.
    pub fn horizon(&self, now: i64) -> i64 {
        self.aborted_at.map_or(now, |t| t.min(now))
    }

    pub fn summary(&self, flow_id: &str, now: i64) -> ExecutionSummary {
        let (status, ended) = self.status_at(now);
        ExecutionSummary {
            execution_arn: self.arn.clone(),
            flow_alias_identifier: self.alias.clone(),
            flow_identifier: flow_id.to_string(),
            flow_version: self.version.clone(),
            status,
            created_at: Timestamp(self.created_at),
            ended_at: ended.map(Timestamp),
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub requests: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// "access key id/region" of the SigV4 credential scope → requests signed with it.
    pub signers: BTreeMap<String, u64>,
    /// Arrival times of the requests of the last second, and the most seen in any one second.
    pub recent: std::collections::VecDeque<std::time::Instant>,
    pub busiest_second: u64,
    /// The client ends of the connections API requests came on (one per TCP connection).
    pub connections: std::collections::HashSet<std::net::SocketAddr>,
}

pub struct World {
    pub scenario: Scenario,
    pub flows: Vec<FlowState>,
    pub executions: Vec<Execution>,
    /// (flow id, execution name) → index
    pub by_name: HashMap<(String, String), usize>,
    pub rng: Rng,
    pub stats: Stats,
    created: u64,
}

impl World {
    pub fn new(scenario: Scenario, now: i64) -> World {
        let mut flows = Vec::new();
        for spec in &scenario.flows {
            let definition = spec
                .definition
                .clone()
                .or_else(|| spec.template.as_deref().and_then(|t| super::flows::by_name(t, spec.events_per_execution)))
                .unwrap_or_default();
            let text = Arc::new(serde_json::to_string(&definition).unwrap_or_default());
            let definition = Arc::new(definition);
            let mut versions = HashMap::new();
            for v in ["1", "DRAFT"] {
                versions.insert(v.to_string(), (definition.clone(), text.clone()));
            }
            let aliases = if spec.aliases.is_empty() {
                let live: String = format!("{}LIVE", &spec.id[..6]).to_uppercase();
                vec![AliasSpec { id: live, version: "1".into() }, AliasSpec { id: "TSTALIASID".into(), version: "DRAFT".into() }]
            } else {
                spec.aliases.clone()
            };
            for a in &aliases {
                versions.entry(a.version.clone()).or_insert_with(|| (definition.clone(), text.clone()));
            }
            flows.push(FlowState {
                id: spec.id.clone(),
                name: spec.name.clone(),
                versions,
                aliases,
                traffic: spec.traffic.clone().unwrap_or_else(|| scenario.traffic.clone()),
                executions: Vec::new(),
                next_arrival: now,
            });
        }
        let rng = Rng::new(scenario.seed);
        let mut world = World { scenario, flows, executions: Vec::new(), by_name: HashMap::new(), rng, stats: Stats::default(), created: 0 };
        world.populate(now);
        world
    }

    fn populate(&mut self, now: i64) {
        for f in 0..self.flows.len() {
            let traffic = self.flows[f].traffic.clone();
            let mut rng = Rng::derive(self.scenario.seed, &format!("history/{}", self.flows[f].id));
            let mut starts: Vec<i64> = (0..traffic.history).map(|_| now - (rng.uniform(0.02, 1.0) * traffic.history_window_secs as f64 * 1e9) as i64).collect();
            starts.sort_unstable();
            for start in starts {
                self.create(f, None, start, None, None, Some(now - 1_000_000_000));
            }
            for i in 0..traffic.running_at_start {
                // Started over the last minute, a few milliseconds apart.
                let start = now - 1_000_000_000 - (i as i64 % 60_000) * 1_000_000;
                let input = (traffic.batch_documents > 0 && self.flows[f].name == "doc-batch").then(|| {
                    let documents: Vec<String> = (0..traffic.batch_documents).map(|d| format!("s3://inbox/batch-{i}/doc-{d}.pdf")).collect();
                    json!({"documents": documents, "key": format!("batch-{i}")})
                });
                let index = self.create(f, None, start, None, input, None);
                // Keep it running: everything after its first events waits `running_secs`, or
                // (spread) arrives evenly over it.
                let hold = traffic.running_secs as i64 * 1_000_000_000;
                let execution = &mut self.executions[index];
                let begin = execution.node_stream.visible_at.first().copied().unwrap_or(start);
                let last = execution.node_stream.visible_at.iter().chain(&execution.flow_stream.visible_at).copied().max().unwrap_or(begin);
                let span = (last - begin).max(1) as f64;
                for stream in [&mut execution.flow_stream, &mut execution.node_stream] {
                    for t in stream.visible_at.iter_mut().skip(1) {
                        if traffic.running_spread {
                            *t = begin + ((*t - begin).max(0) as f64 / span * hold as f64) as i64;
                        } else {
                            *t += hold;
                        }
                    }
                }
                execution.ended_at = if traffic.running_spread { execution.ended_at.max(begin + hold) } else { execution.ended_at + hold };
            }
            let rate = traffic.executions_per_minute;
            self.flows[f].next_arrival = if rate > 0.0 { now + self.interarrival(rate) } else { i64::MAX };
        }
    }

    fn interarrival(&mut self, per_minute: f64) -> i64 {
        let u = self.rng.unit().max(1e-9);
        (-u.ln() * 60.0 / per_minute * 1e9) as i64
    }

    /// Creates the executions whose arrival time has come (steady traffic).
    pub fn tick(&mut self, now: i64) {
        for f in 0..self.flows.len() {
            while self.flows[f].next_arrival <= now {
                let at = self.flows[f].next_arrival;
                self.create(f, None, at, None, None, None);
                let rate = self.flows[f].traffic.executions_per_minute;
                let gap = self.interarrival(rate);
                self.flows[f].next_arrival = at + gap;
            }
        }
    }

    /// Creates one execution of flow `f` and returns its index. `finished_before` moves the
    /// whole execution back in time so that it has ended by then (history).
    pub fn create(&mut self, f: usize, alias: Option<&str>, start: i64, name: Option<String>, input: Option<Value>, finished_before: Option<i64>) -> usize {
        self.created += 1;
        let mut rng = Rng::derive(self.scenario.seed, &format!("execution/{}/{}", self.flows[f].id, self.created));
        let alias = match alias {
            Some(a) => a.to_string(),
            None => {
                let aliases = &self.flows[f].aliases;
                if aliases.len() > 1 && rng.chance(self.flows[f].traffic.second_alias_share) {
                    aliases[1].id.clone()
                } else {
                    aliases[0].id.clone()
                }
            }
        };
        let version = self.flows[f].aliases.iter().find(|a| a.id == alias).map(|a| a.version.clone()).unwrap_or_else(|| "DRAFT".into());
        let definition = self.flows[f].versions.get(&version).map(|v| v.0.clone()).unwrap_or_default();
        let outcomes = &self.scenario.outcomes;
        let draw = rng.unit();
        let outcome = if draw < outcomes.failed {
            Outcome::Fail
        } else if draw < outcomes.failed + outcomes.timed_out {
            Outcome::TimeOut
        } else if draw < outcomes.failed + outcomes.timed_out + outcomes.aborted {
            Outcome::Abort
        } else {
            Outcome::Succeed
        };
        let malformation = rng.chance(self.scenario.faults.malformed_ratio).then(|| *rng.pick(&Malformation::ALL));
        let vanished = rng.chance(self.scenario.faults.vanished_ratio);
        let input = input.unwrap_or_else(|| sample_input(&self.flows[f].name, &mut rng));
        let nanos_per_second = 1e9 / self.scenario.time_scale;
        let timeout_nanos = (outcomes.timeout_secs * nanos_per_second) as i64;
        let mut plan = generate::plan(
            generate::Params { definition: &definition, start_nanos: start, input, outcome, nanos_per_second, timeout_nanos, malformation },
            &mut rng,
        );
        let mut created_at = start;
        if let Some(limit) = finished_before {
            if plan.ended_at > limit {
                let shift = plan.ended_at - limit;
                created_at -= shift;
                shift_plan(&mut plan, -shift);
            }
        }
        let name = name.unwrap_or_else(|| rng.uuid());
        let flow = &self.flows[f];
        let arn = format!("arn:aws:bedrock:{}:{}:flow/{}/alias/{}/execution/{}", self.scenario.region, self.scenario.account, flow.id, alias, name);
        let (flow_stream, node_stream) = split_streams(&plan.events, created_at);
        let execution = Execution {
            arn,
            flow: f,
            alias,
            version,
            name: name.clone(),
            created_at,
            ended_at: plan.ended_at,
            final_status: plan.status.clone(),
            errors: plan.errors.clone(),
            flow_stream,
            node_stream,
            aborted_at: None,
            unknown_status: malformation == Some(Malformation::UnknownStatus),
            vanished,
            order_key: rng.next_u64(),
        };
        let index = self.executions.len();
        self.executions.push(execution);
        self.by_name.insert((self.flows[f].id.clone(), name), index);
        self.flows[f].executions.push(index);
        index
    }

    /// Executions of a flow (optionally one alias) that exist at `now`, in the scenario's order.
    pub fn listing(&self, f: usize, alias: Option<&str>, now: i64) -> Vec<usize> {
        let mut items: Vec<usize> = self.flows[f]
            .executions
            .iter()
            .copied()
            .filter(|i| self.executions[*i].created_at <= now && alias.is_none_or(|a| self.executions[*i].alias == a))
            .collect();
        match self.scenario.list_order {
            ListOrder::OldestFirst => items.sort_by_key(|i| (self.executions[*i].created_at, *i)),
            ListOrder::NewestFirst => items.sort_by_key(|i| std::cmp::Reverse((self.executions[*i].created_at, *i))),
            ListOrder::Shuffled => items.sort_by_key(|i| self.executions[*i].order_key),
        }
        items
    }

    pub fn count_request(&mut self, operation: &str) {
        *self.stats.requests.entry(operation.to_string()).or_default() += 1;
        let now = std::time::Instant::now();
        let recent = &mut self.stats.recent;
        while recent.front().is_some_and(|t| now.duration_since(*t) >= std::time::Duration::from_secs(1)) {
            recent.pop_front();
        }
        recent.push_back(now);
        self.stats.busiest_second = self.stats.busiest_second.max(recent.len() as u64);
    }

    pub fn count_error(&mut self, code: &str) {
        *self.stats.errors.entry(code.to_string()).or_default() += 1;
    }

    /// The flows served, with their aliases and the version each routes to: what a user
    /// needs to write a config for the emulator.
    pub fn flows_json(&self) -> Value {
        Value::Array(
            self.flows
                .iter()
                .map(
                    |f| json!({"id": f.id, "name": f.name, "aliases": f.aliases.iter().map(|a| json!({"id": a.id, "version": a.version})).collect::<Vec<_>>()}),
                )
                .collect(),
        )
    }

    pub fn stats_json(&self) -> Value {
        json!({
            "requests": self.stats.requests,
            "errors": self.stats.errors,
            "signers": self.stats.signers,
            "total_requests": self.stats.requests.values().sum::<u64>(),
            "busiest_second": self.stats.busiest_second,
            "connections": self.stats.connections.len(),
            "flows": self.flows_json(),
            "executions": self.executions.len(),
        })
    }
}

fn shift_plan(plan: &mut Plan, by: i64) {
    plan.ended_at += by;
    for event in &mut plan.events {
        let ts = match event {
            Event::FlowInput(e) | Event::FlowOutput(e) => &mut e.timestamp,
            Event::FlowFailure(e) => &mut e.timestamp,
            Event::NodeInput(e) => &mut e.timestamp,
            Event::NodeOutput(e) => &mut e.timestamp,
            Event::NodeFailure(e) => &mut e.timestamp,
            Event::ConditionResult(e) => &mut e.timestamp,
            Event::NodeAction(e) => &mut e.timestamp,
            Event::NodeDependency(e) => &mut e.timestamp,
            Event::Unknown(_) => continue,
        };
        if let Some(t) = ts {
            t.0 += by;
        }
    }
}

fn split_streams(events: &[Event], created_at: i64) -> (Stream, Stream) {
    let mut flow = Stream::default();
    let mut node = Stream::default();
    let mut horizon = created_at;
    for event in events {
        if let Some(t) = event.timestamp() {
            horizon = horizon.max(t.0);
        }
        let stream = if event.is_flow_level() { &mut flow } else { &mut node };
        stream.events.push(event.to_wire());
        stream.visible_at.push(horizon);
    }
    (flow, node)
}

pub fn sample_input(flow_name: &str, rng: &mut Rng) -> Value {
    match flow_name {
        "doc-batch" => {
            let n = rng.between(2, 4);
            json!({"documents": (0..n).map(|i| format!("s3://inbox/report-{}-{i}.pdf", rng.between(100, 999))).collect::<Vec<_>>(),
                   "key": format!("batch-{}", rng.between(1000, 9999))})
        }
        "refine-loop" => json!(rng.pick(&["release notes for 2.3", "a haiku about tracing", "the on-call handbook"]).to_string()),
        _ => json!(rng.pick(&["My invoice is wrong", "The API returns 500", "How do I reset my password?", "Refund for order 1234"]).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_takes_both_condition_branches() {
        let mut scenario = Scenario::demo();
        scenario.traffic.history = 30;
        scenario.traffic.running_at_start = 0;
        let world = World::new(scenario, 10_000_000_000_000);
        let mut taken: HashMap<String, usize> = HashMap::new();
        for e in world.executions.iter().filter(|e| e.flow == 0) {
            for v in &e.node_stream.events {
                if let Some(name) = v.pointer("/conditionResultEvent/satisfiedConditions/0/conditionName").and_then(Value::as_str) {
                    *taken.entry(name.to_string()).or_default() += 1;
                }
            }
        }
        assert!(taken.get("isBilling").copied().unwrap_or(0) >= 5, "{taken:?}");
        assert!(taken.get("default").copied().unwrap_or(0) >= 5, "{taken:?}");
    }
}
