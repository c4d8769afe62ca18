//! Scenarios: which flows the emulator serves, how much traffic it makes, how executions end,
//! and which faults it injects. Built in (`demo`, `backlog`, `steady`) or read from a TOML file;
//! the format is documented in README.md ("Emulator scenarios").

use serde::{Deserialize, Serialize};

use bedrock_flow_wire::model::FlowDefinition;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Seed of every random choice: the same seed gives the same executions.
    pub seed: u64,
    /// Emulated seconds per real second: node latencies are divided by it.
    pub time_scale: f64,
    /// Order of ListFlowExecutions results: `newest_first`, `oldest_first` or `shuffled`.
    pub list_order: ListOrder,
    pub region: String,
    pub account: String,
    pub traffic: Traffic,
    pub outcomes: Outcomes,
    pub faults: Faults,
    pub flows: Vec<FlowSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    NewestFirst,
    OldestFirst,
    Shuffled,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// New executions per flow per minute while serving (Poisson arrivals); 0 for none.
    pub executions_per_minute: f64,
    /// Finished executions per flow that exist at start.
    pub history: usize,
    /// The history was created within this many seconds before start.
    pub history_window_secs: u64,
    /// Executions per flow that are Running at start.
    pub running_at_start: usize,
    /// For `running_at_start`: how long (real seconds) they keep running.
    pub running_secs: u64,
    /// Share of new executions started through the flow's second alias (by default
    /// `TSTALIASID`, on DRAFT), when it has one.
    pub second_alias_share: f64,
    /// For `running_at_start`: their events arrive evenly over `running_secs` (growing
    /// executions) instead of all at the end.
    pub running_spread: bool,
    /// For `running_at_start` of a doc-batch flow: documents in the input (0: a sample of 2-4).
    pub batch_documents: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outcomes {
    pub failed: f64,
    pub timed_out: f64,
    pub aborted: f64,
    /// Emulated seconds after which an execution times out.
    pub timeout_secs: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of API requests answered with ThrottlingException (429).
    pub throttle_ratio: f64,
    /// Share answered with InternalServerException (500).
    pub server_error_ratio: f64,
    /// Added to every API answer.
    pub latency_ms: u64,
    /// Page tokens older than this are rejected with ValidationException; 0: never.
    pub token_ttl_secs: u64,
    /// Share of executions carrying one kind of malformed data.
    pub malformed_ratio: f64,
    /// Flows whose every request is answered with AccessDeniedException (403).
    pub access_denied_flows: Vec<String>,
    /// Share of executions whose event lists answer ResourceNotFoundException (404), as if
    /// their history had been deleted while they are still listed.
    pub vanished_ratio: f64,
    /// The first this many API requests are answered with InternalServerException (500), as
    /// if the service were unavailable for a moment (past the SDK's retries).
    pub fail_first_requests: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// 10 characters, `[0-9a-zA-Z]`.
    pub id: String,
    pub name: String,
    /// A built-in definition: `support_triage`, `doc_batch`, `refine_loop`, `backlog`.
    #[serde(default)]
    pub template: Option<String>,
    /// Or a definition of the FlowDefinition shape.
    #[serde(default)]
    pub definition: Option<FlowDefinition>,
    /// For the `backlog` template: events per execution.
    #[serde(default = "default_backlog_events")]
    pub events_per_execution: usize,
    /// Aliases and the version each routes to; default: one alias to version 1 and
    /// `TSTALIASID` to DRAFT.
    #[serde(default)]
    pub aliases: Vec<AliasSpec>,
    /// Overrides the scenario's traffic for this flow.
    #[serde(default)]
    pub traffic: Option<Traffic>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasSpec {
    pub id: String,
    pub version: String,
}

const fn default_backlog_events() -> usize {
    45
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 1,
            time_scale: 1.0,
            list_order: ListOrder::NewestFirst,
            region: "us-east-1".into(),
            account: "123456789012".into(),
            traffic: Traffic::default(),
            outcomes: Outcomes::default(),
            faults: Faults::default(),
            flows: Vec::new(),
        }
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            executions_per_minute: 0.0,
            history: 0,
            history_window_secs: 3600,
            running_at_start: 0,
            running_secs: 60,
            second_alias_share: 0.2,
            running_spread: false,
            batch_documents: 0,
        }
    }
}

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes { failed: 0.0, timed_out: 0.0, aborted: 0.0, timeout_secs: 86_400.0 }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            throttle_ratio: 0.0,
            server_error_ratio: 0.0,
            latency_ms: 0,
            token_ttl_secs: 0,
            malformed_ratio: 0.0,
            access_denied_flows: Vec::new(),
            vanished_ratio: 0.0,
            fail_first_requests: 0,
        }
    }
}

fn flow(id: &str, name: &str, template: &str) -> FlowSpec {
    FlowSpec {
        id: id.into(),
        name: name.into(),
        template: Some(template.into()),
        definition: None,
        events_per_execution: default_backlog_events(),
        aliases: Vec::new(),
        traffic: None,
    }
}

impl Scenario {
    /// `demo`: three realistic flows, steady traffic, a few percent failures, executions that
    /// finish within seconds to a minute.
    pub fn demo() -> Scenario {
        Scenario {
            seed: 7,
            time_scale: 1.0,
            traffic: Traffic {
                executions_per_minute: 6.0,
                history: 12,
                history_window_secs: 1800,
                running_at_start: 1,
                running_secs: 20,
                second_alias_share: 0.2,
                running_spread: false,
                batch_documents: 0,
            },
            outcomes: Outcomes { failed: 0.06, timed_out: 0.01, aborted: 0.01, timeout_secs: 45.0 },
            flows: vec![
                flow("SUPPORTTRI", "support-triage", "support_triage"),
                flow("DOCBATCH01", "doc-batch", "doc_batch"),
                flow("REFINELOOP", "refine-loop", "refine_loop"),
            ],
            ..Scenario::default()
        }
    }

    /// `growing`: executions whose events arrive evenly over `secs`: two doc-batch runs
    /// over `items` documents each, and one loop of about `chain_events` events (thousands of
    /// runs of the same few nodes), for benchmarks of long executions.
    pub fn growing(items: usize, chain_events: usize, secs: u64) -> Scenario {
        let mut scenario = Scenario::backlog(0, 45);
        scenario.traffic.running_at_start = 2;
        scenario.traffic.running_secs = secs;
        scenario.traffic.running_spread = true;
        scenario.traffic.batch_documents = items;
        let mut chain = flow("LONGLOOP01", "long-loop", "long_loop");
        chain.events_per_execution = chain_events;
        chain.aliases = vec![AliasSpec { id: "CHAINLIVE1".into(), version: "1".into() }];
        chain.traffic = Some(Traffic { running_at_start: 1, ..scenario.traffic.clone() });
        let mut batch = flow("DOCBATCH01", "doc-batch", "doc_batch");
        batch.aliases = vec![AliasSpec { id: "BATCHLIVE1".into(), version: "1".into() }];
        scenario.flows = vec![batch, chain];
        scenario
    }

    /// `backlog`: `executions` finished executions of about `events` events each, created
    /// within the last 12 hours, for benchmarks.
    pub fn backlog(executions: usize, events: usize) -> Scenario {
        let mut backlog = flow("BACKLOG001", "backlog", "backlog");
        backlog.events_per_execution = events;
        // One alias on a numbered version: one snapshot serves every execution.
        backlog.aliases = vec![AliasSpec { id: "BACKLOGLIV".into(), version: "1".into() }];
        Scenario {
            seed: 11,
            time_scale: 50.0,
            traffic: Traffic {
                executions_per_minute: 0.0,
                history: executions,
                history_window_secs: 43_200,
                running_at_start: 0,
                running_secs: 0,
                second_alias_share: 0.2,
                running_spread: false,
                batch_documents: 0,
            },
            flows: vec![backlog],
            ..Scenario::default()
        }
    }

    /// `steady`: `executions` Running executions that stay running for `running_secs`, for
    /// measuring the cost of polling executions without new events.
    pub fn steady(executions: usize, running_secs: u64) -> Scenario {
        Scenario {
            seed: 13,
            traffic: Traffic {
                executions_per_minute: 0.0,
                history: 0,
                history_window_secs: 60,
                running_at_start: executions,
                running_secs,
                second_alias_share: 0.2,
                running_spread: false,
                batch_documents: 0,
            },
            flows: vec![flow("STEADY0001", "steady", "support_triage")],
            ..Scenario::default()
        }
    }

    pub fn builtin(name: &str, executions: usize, events: usize) -> Option<Scenario> {
        match name {
            "demo" => Some(Scenario::demo()),
            "backlog" => Some(Scenario::backlog(executions, events)),
            "steady" => Some(Scenario::steady(executions, 600)),
            _ => None,
        }
    }

    /// A built-in name or the path of a TOML scenario file.
    pub fn load(name_or_path: &str, executions: usize, events: usize) -> Result<Scenario, String> {
        if let Some(s) = Scenario::builtin(name_or_path, executions, events) {
            return Ok(s);
        }
        let text = std::fs::read_to_string(name_or_path)
            .map_err(|e| format!("scenario {name_or_path:?} is neither demo, backlog, steady nor a readable file: {e}"))?;
        let scenario: Scenario = toml::from_str(&text).map_err(|e| format!("scenario {name_or_path}: {e}"))?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.flows.is_empty() {
            return Err("scenario: flows must name at least one flow".into());
        }
        for f in &self.flows {
            if f.id.len() != 10 || !f.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("scenario: flows.id {:?} must be 10 characters [0-9a-zA-Z]", f.id));
            }
            if f.definition.is_none() && f.template.as_deref().and_then(|t| super::flows::by_name(t, 45)).is_none() {
                return Err(format!("scenario: flow {} needs a definition or a known template", f.id));
            }
        }
        if self.time_scale <= 0.0 || !self.time_scale.is_finite() {
            return Err("scenario: time_scale must be positive".into());
        }
        Ok(())
    }
}
