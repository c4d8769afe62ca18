//! `demo`: the emulator with the `demo` scenario and the collector on it, with no AWS account.
//! Finished executions print one readable line each unless traces go to an OTLP endpoint.

use std::sync::Arc;

use bedrock_flow_emulator::{self as emulator, Scenario};
use bedrock_flow_exporter::app::{self, AppError, RunOptions};
use bedrock_flow_exporter::collector::FinishedExecution;
use bedrock_flow_exporter::config::{CaptureContent, Config, FlowConfig};
use bedrock_flow_exporter::source::StaticCredentials;

pub async fn run(listen: String) -> Result<u8, AppError> {
    let scenario = Scenario::demo();
    let emulator_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| AppError::Runtime(format!("cannot start the emulator: {e}")))?;
    let flows: Vec<FlowConfig> = scenario.flows.iter().map(|f| FlowConfig { id: f.id.clone(), name: Some(f.name.clone()), ..Default::default() }).collect();
    let handle = emulator::start(emulator_listener, scenario).await.map_err(|e| AppError::Runtime(e.to_string()))?;
    let state_dir = std::env::temp_dir().join(format!("bedrock-flow-exporter-demo-{}", std::process::id()));
    let mut config = Config { flows, ..Config::default() };
    let listener = bind_or_fall_back(&listen).await?;
    config.server.listen = listen;
    config.state.path = Some(state_dir.join("state.sqlite"));
    config.aws.endpoint_url = Some(handle.endpoint());
    config.aws.region = Some("us-east-1".into());
    config.aws.max_requests_per_second = 50.0;
    config.poll.interval_secs = 2;
    config.poll.settle_secs = 2;
    config.poll.lookback_secs = 3600;
    config.traces.capture_content = CaptureContent::Truncated;
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|v| !v.is_empty());
    config.apply_env(|key| if key.starts_with("OTEL_") { std::env::var(key).ok() } else { None }).map_err(|e| AppError::Usage(e.to_string()))?;
    config.traces.enabled = otlp.is_some();
    config.validate().map_err(|e| AppError::Usage(e.to_string()))?;
    println!("bedrock-flow-exporter demo: three sample flows on the embedded emulator, no AWS account needed");
    println!("  emulator (AWS API):   {}   (stats: {}/_emulator/stats)", handle.endpoint(), handle.endpoint());
    match &otlp {
        Some(endpoint) => println!("  traces (OTLP):        {endpoint} ({:?})", config.traces.protocol),
        None => println!("  traces:               printed below (set OTEL_EXPORTER_OTLP_ENDPOINT to send them to a backend)"),
    }
    let print_lines = otlp.is_none();
    let on_finished: Arc<dyn Fn(&FinishedExecution) + Send + Sync> = Arc::new(move |f: &FinishedExecution| {
        if print_lines {
            println!("{:<15} {:<9} {:>7.1}s {:>3} spans  trace {}", f.flow_name, f.status, f.duration_secs, f.spans, f.trace_id);
        }
    });
    let options = RunOptions {
        on_finished: Some(on_finished),
        listener: Some(listener),
        static_credentials: Some(StaticCredentials { access_key_id: "AKIDDEMO".into(), secret_access_key: "demo".into() }),
        on_listening: Some(Box::new(|address| {
            let host = if address.ip().is_unspecified() { "127.0.0.1".to_string() } else { address.ip().to_string() };
            println!("  status page:          http://{host}:{}/", address.port());
            println!("  metrics:              http://{host}:{}/metrics", address.port());
            println!("Press Ctrl-C to stop.\n");
            println!("{:<15} {:<9} {:>8} {:>9}  trace id", "flow", "status", "duration", "spans");
        })),
        ..RunOptions::default()
    };
    let result = app::run(config, options).await;
    handle.stop().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

/// Binds `listen`; when its port is taken, a free port on the same address instead (printed
/// with the URLs), so that a second demo or another exporter on 9464 does not stop the demo.
async fn bind_or_fall_back(listen: &str) -> Result<tokio::net::TcpListener, AppError> {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let address: std::net::SocketAddr = listen.parse().map_err(|_| AppError::Runtime(format!("cannot listen on {listen}: {e}")))?;
            println!("  note: {listen} is in use; the status page takes a free port instead (choose one with --listen)");
            tokio::net::TcpListener::bind((address.ip(), 0)).await.map_err(|e| AppError::Runtime(format!("cannot listen on {}:0: {e}", address.ip())))
        }
        Err(e) => Err(AppError::Runtime(format!("cannot listen on {listen} (--listen): {e}"))),
    }
}
