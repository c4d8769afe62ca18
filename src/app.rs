//! Wiring: config → state store, exporter, AWS clients, HTTP endpoint, collector; signals and
//! exit codes. The only place that knows every part.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::collector::{Collector, FinishedHook, Flow, StatusBoard};
use crate::config::{bare_flow_id, Config};
use crate::export::Exporter;
use crate::metrics::Metrics;
use crate::source::{AwsTarget, Budgets, FlowSource, StaticCredentials};
use crate::state::{PostgresStore, SqliteStore, StateStore};

/// Exit codes (SPEC §3).
pub const EXIT_OK: u8 = 0;
pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_TEMPFAIL: u8 = 75;

#[derive(Default)]
pub struct RunOptions {
    pub once: bool,
    pub wait_secs: u64,
    /// For the demo against the embedded emulator.
    pub static_credentials: Option<StaticCredentials>,
    pub on_finished: Option<FinishedHook>,
    /// Reports the bound address of the HTTP endpoint (the demo prints it).
    pub on_listening: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
    /// A listener bound already (the demo's, which falls back to a free port); else
    /// `server.listen` is bound.
    pub listener: Option<tokio::net::TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

impl AppError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Usage(_) => EXIT_USAGE,
            AppError::Runtime(_) => EXIT_RUNTIME,
        }
    }
}

/// SIGTERM and SIGINT, installed at once (before the process reports its address), so that
/// a signal sent right after that report is never lost to the default action.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> Result<ShutdownSignals, AppError> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind| signal(kind).map_err(|e| AppError::Runtime(format!("cannot handle signals: {e}")));
        Ok(ShutdownSignals { term: install(SignalKind::terminate())?, interrupt: install(SignalKind::interrupt())? })
    }

    /// Resolves once SIGTERM or SIGINT arrives.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The grace period after SIGTERM: the chunk of executions in progress finishes and is
/// checkpointed within it (the state store stays consistent if it does not).
const GRACE: Duration = Duration::from_secs(25);

pub async fn run(config: Config, options: RunOptions) -> Result<u8, AppError> {
    let metrics = Arc::new(Metrics::new(config.metrics.node_labels));
    let started = std::time::Instant::now();
    let store: Arc<dyn StateStore> = match &config.state.url {
        Some(url) => {
            let store = PostgresStore::open(url, &crate::collector::member_id())
                .await
                .map_err(|e| AppError::Runtime(format!("{e} ({})", config.state.url_redacted().unwrap_or_default())))?;
            Arc::new(store)
        }
        None => Arc::new(SqliteStore::open(&config.state.sqlite_path().unwrap_or_default()).map_err(|e| AppError::Runtime(e.to_string()))?),
    };
    let exporter = Arc::new(
        Exporter::new(&config.traces, config.aws.region.as_deref(), config.single_account().as_deref())
            .map_err(|e| AppError::Usage(format!("config key `traces.endpoint`: {e}")))?,
    );
    let budgets = Budgets::default();
    // One SDK client per target, shared by its flows: one connection pool, one credentials
    // cache (one STS session for a role), one load of the config chain and the CA roots.
    let mut sources: std::collections::HashMap<AwsTarget, FlowSource> = std::collections::HashMap::new();
    let mut flows = Vec::new();
    for flow in &config.flows {
        let target = AwsTarget {
            region: flow.region.clone().or_else(|| config.aws.region.clone()),
            profile: flow.profile.clone().or_else(|| config.aws.profile.clone()),
            role_arn: flow.role_arn.clone().or_else(|| config.aws.role_arn.clone()),
            endpoint_url: flow.endpoint_url.clone().or_else(|| config.aws.endpoint_url.clone()),
        };
        let budget = budgets.get(&target.budget_key(), config.aws.max_requests_per_second);
        let source = match sources.get(&target) {
            Some(source) => source.clone(),
            None => {
                let source = FlowSource::new(&target, budget.clone(), options.static_credentials.as_ref(), metrics.clone()).await;
                sources.insert(target.clone(), source.clone());
                source
            }
        };
        let id = bare_flow_id(&flow.id).unwrap_or_else(|| flow.id.clone());
        let account = flow.id.split(':').nth(4).or_else(|| target.role_arn.as_deref().and_then(|r| r.split(':').nth(4))).unwrap_or("").to_string();
        let lease_key = format!("{}/{account}/{id}", target.region.as_deref().unwrap_or(""));
        flows.push(Flow { name: flow.name.clone().unwrap_or_else(|| id.clone()), id, aliases: flow.aliases.clone(), source, lease_key, budget });
    }
    let board = Arc::new(StatusBoard::new(&flows.iter().map(|f| (f.id.clone(), f.name.clone())).collect::<Vec<_>>()));
    let listener = match options.listener {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(&config.server.listen)
            .await
            .map_err(|e| AppError::Runtime(format!("cannot listen on {} (server.listen): {e}", config.server.listen)))?,
    };
    let address = listener.local_addr().map_err(|e| AppError::Runtime(e.to_string()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // The endpoint outlives the collector's last cycle, so that /-/ready answers 503 (and
    // /metrics stays scrapable) while the process drains after SIGTERM.
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let server = tokio::spawn(crate::http::serve(listener, metrics.clone(), board.clone(), http_stop_rx));
    let mut collector = Collector::new(flows, store, exporter.clone(), metrics.clone(), board.clone(), &config, options.on_finished)
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    tracing::info!(listen = %address, tracked = collector.tracked_count(), startup_ms = started.elapsed().as_millis() as u64, traces = %exporter.endpoint, "bedrock-flow-exporter started");
    let mut shutdown = ShutdownSignals::install()?;
    if let Some(report) = options.on_listening {
        report(address);
    }
    let signal_board = board.clone();
    let signals = tokio::spawn(async move {
        shutdown.next().await;
        tracing::info!("shutting down: finishing the current cycle");
        signal_board.set_shutting_down();
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = tokio::time::sleep(GRACE) => tracing::warn!("grace period over; exiting (the state store is consistent)"),
            _ = shutdown.next() => tracing::warn!("second signal; exiting now"),
        }
        std::process::exit(EXIT_RUNTIME as i32);
    });
    let code = if options.once {
        let outcome = collector.run_once(Duration::from_secs(options.wait_secs), stop_rx.clone()).await;
        println!("run --once: {}", collector.summary());
        let wait = options.wait_secs;
        let errors: std::collections::HashMap<String, Option<String>> = board.flows().into_iter().map(|f| (f.flow_id, f.last_error)).collect();
        let reports: [(usize, String, Vec<String>); 4] = [
            (
                outcome.never_listed.len(),
                format!("flow(s) could not be listed within --wait-secs {wait}; their executions were not read:"),
                outcome.never_listed.iter().map(|f| format!("flow {f}: {}", errors.get(f).cloned().flatten().unwrap_or_default())).collect(),
            ),
            (
                outcome.unfinished.len(),
                format!("execution(s) not finished within --wait-secs {wait}; the next run resumes from the checkpoints:"),
                outcome.unfinished.clone(),
            ),
            (
                outcome.held_elsewhere.len(),
                format!("flow(s) were held by other replicas of the shared store within --wait-secs {wait}; their executions are those replicas' work:"),
                outcome
                    .held_elsewhere
                    .iter()
                    .map(|(f, holder)| match holder {
                        Some(member) => format!("flow {f}: held by {member}"),
                        None => format!("flow {f}: not held by this run (the shared store could not be reached, or its lease was taken)"),
                    })
                    .collect(),
            ),
            (
                outcome.undelivered.len(),
                format!("execution(s) whose spans the OTLP endpoint did not accept within --wait-secs {wait}; they wait in the outbox for the next run:"),
                outcome.undelivered.clone(),
            ),
        ];
        for (count, title, lines) in reports.iter().filter(|(count, _, _)| *count > 0) {
            eprintln!("{count} {title}");
            for line in lines {
                eprintln!("  {line}");
            }
        }
        // Failed checkpoints hold executions back without the store saying so elsewhere.
        if let Some(f) = board.store_failure() {
            eprintln!("{} state store operation(s) failed during the run; the last: cannot {}: {}", f.count, f.doing, f.error);
        }
        if outcome.complete() {
            EXIT_OK
        } else {
            EXIT_TEMPFAIL
        }
    } else {
        collector.run(stop_rx.clone()).await;
        EXIT_OK
    };
    // Replicas: the others take these flows at their next cycle, not after the lease.
    collector.leave().await;
    board.set_shutting_down();
    signals.abort();
    let _ = signals.await;
    let _ = http_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(6), server).await;
    Ok(code)
}
