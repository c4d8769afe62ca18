use std::path::PathBuf;
use std::process::ExitCode;

mod demo;

use bedrock_flow_emulator::{self as emulator, Scenario};
use bedrock_flow_exporter::app::{self, AppError, RunOptions, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};
use bedrock_flow_exporter::config::{self, Config};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "bedrock-flow-exporter", version, about = "OpenTelemetry traces and Prometheus metrics for Amazon Bedrock Flows asynchronous executions")]
struct Cli {
    /// Log format on stderr (the level comes from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The service: discover, page, export spans, serve metrics.
    Run {
        /// Default: $BEDROCK_FLOW_EXPORTER_CONFIG, else config/bedrock-flow-exporter.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// One pass over the lookback window; exits when every execution found is exported.
        #[arg(long)]
        once: bool,
        /// With --once: give up after this long, exit 75 and name what is unfinished.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
    /// The emulator with sample flows and the collector on it; no AWS account needed.
    Demo {
        /// Address of the status page and /metrics.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
    },
    /// The emulator of the flow-execution APIs alone.
    Emulate {
        #[arg(long, default_value = "127.0.0.1:4566")]
        listen: String,
        /// demo, backlog, steady, or the path of a scenario file (TOML).
        #[arg(long, default_value = "demo")]
        scenario: String,
        #[arg(long)]
        seed: Option<u64>,
        /// For the backlog and steady scenarios: how many executions.
        #[arg(long, default_value_t = 10_000)]
        executions: usize,
        /// For the backlog scenario: events per execution.
        #[arg(long, default_value_t = 45)]
        events: usize,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, AppError> {
    let path = path.unwrap_or_else(config::default_path);
    Config::load(&path).map_err(|e| AppError::Usage(e.to_string()))
}

fn exit(result: Result<u8, AppError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The runtime of a command. The collector (`run`, `demo`) runs on one thread: its work waits on
/// the API, whose quotas allow a small fraction of what one thread folds and exports (a drain on
/// the bench does ~40,000 events/s), and a single thread saves the wake-ups of handing every
/// response between workers: measured (BENCHMARKS.md) a third less CPU per event in the drain,
/// a quarter less for growing executions and 42% less a poll in the steady state, with a
/// shorter drain. Store calls that block run on the blocking pool. The emulator, a server for
/// many clients, gets a worker per core.
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Command::Emulate { .. } => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
}

/// jemalloc, not glibc's malloc: the collector makes tens of small allocations per event (the
/// SDK's, the wire model's, the spans'), and glibc's malloc and free, with its fastbin merging,
/// were the largest part of its CPU above the SDK floor. With jemalloc the drain costs about a
/// fifth less CPU at the same memory per tracked execution (BENCHMARKS.md). The bench's SDK
/// floor runs on the same allocator, so its comparison stays like for like.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match runtime(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match cli.command {
        Command::CheckConfig { config } => exit(load_config(config).map(|c| {
            print!("{}", c.to_toml());
            EXIT_OK
        })),
        Command::Run { config, once, wait_secs } => {
            let config = match load_config(config) {
                Ok(c) => c,
                Err(e) => return exit(Err(e)),
            };
            init_logging(cli.log_format, "info");
            exit(runtime.block_on(app::run(config, RunOptions { once, wait_secs, ..RunOptions::default() })))
        }
        Command::Demo { listen } => {
            init_logging(cli.log_format, "warn");
            exit(runtime.block_on(demo::run(listen)))
        }
        Command::Emulate { listen, scenario, seed, executions, events } => {
            init_logging(cli.log_format, "info");
            exit(runtime.block_on(async move {
                let mut scenario = Scenario::load(&scenario, executions, events).map_err(AppError::Usage)?;
                if let Some(seed) = seed {
                    scenario.seed = seed;
                }
                let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| AppError::Runtime(format!("cannot listen on {listen}: {e}")))?;
                let handle = emulator::start(listener, scenario).await.map_err(|e| AppError::Runtime(e.to_string()))?;
                // Installed before the address is printed: whoever reads it may interrupt at once.
                let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                    .map_err(|e| AppError::Runtime(format!("cannot handle SIGINT: {e}")))?;
                println!("emulator listening on {}", handle.endpoint());
                for flow in handle.flows().as_array().into_iter().flatten() {
                    let aliases: Vec<String> = flow["aliases"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| format!("{} (version {})", a["id"].as_str().unwrap_or(""), a["version"].as_str().unwrap_or("")))
                        .collect();
                    println!("  flow {}  name {}  aliases {}", flow["id"].as_str().unwrap_or(""), flow["name"].as_str().unwrap_or(""), aliases.join(", "));
                }
                println!("stats: {}/_emulator/stats", handle.endpoint());
                interrupt.recv().await;
                handle.stop().await;
                Ok(EXIT_OK)
            }))
        }
    }
}
