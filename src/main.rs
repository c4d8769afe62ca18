use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bedrock-flow-exporter", version, about = "OpenTelemetry traces and Prometheus metrics for Amazon Bedrock Flows executions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The emulator alone.
    Emulate {
        #[arg(long, default_value = "127.0.0.1:4566")]
        listen: String,
        #[arg(long, default_value = "demo")]
        scenario: String,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 10_000)]
        backlog_executions: usize,
        #[arg(long, default_value_t = 45)]
        backlog_events: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Command::Emulate { listen, scenario, seed, backlog_executions, backlog_events } => runtime.block_on(async move {
            let mut scenario = match bedrock_flow_exporter::emulator::Scenario::load(&scenario, backlog_executions, backlog_events) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(64);
                }
            };
            if let Some(seed) = seed {
                scenario.seed = seed;
            }
            let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
            let handle = bedrock_flow_exporter::emulator::start(listener, scenario).await.expect("start");
            println!("emulator listening on {}", handle.endpoint());
            let _ = tokio::signal::ctrl_c().await;
            handle.stop().await;
            ExitCode::SUCCESS
        }),
    }
}
