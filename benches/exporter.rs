//! `cargo bench --bench exporter`: the figures of SPEC §9 on this machine, written to
//! `target/bench-report.md` (and printed). Runs the optimized binary as a child process against
//! the in-process emulator, spans into an in-process OTLP receiver; the child's CPU time and
//! peak RSS come from wait4(2). Sizes: BENCH_EXECUTIONS (10000), BENCH_STEADY (1000),
//! BENCH_STEADY_SECS (60), BENCH_STARTUP_ROWS (100000).

use bedrock_flow_exporter::state::StateStore as _;
use bedrock_flow_test_support as support;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bedrock_flow_emulator::scenario::Scenario;
use bedrock_flow_exporter::timefmt::now_nanos;

struct Usage {
    wall: Duration,
    cpu_secs: f64,
    max_rss_kib: i64,
    code: i32,
}

/// The binary cargo built for this bench (optimized, the `bench` profile), or BENCH_BINARY:
/// another build to compare with in the same run of the harness.
fn release_binary() -> std::path::PathBuf {
    std::env::var_os("BENCH_BINARY").map(std::path::PathBuf::from).unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_bedrock-flow-exporter")))
}

/// Whether a section runs: all by default, else those named in BENCH_SECTIONS
/// (`drain,steady,startup,memory`).
fn section(name: &str) -> bool {
    std::env::var("BENCH_SECTIONS").map(|v| v.split(',').any(|s| s.trim() == name)).unwrap_or(true)
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs the binary to its end (or until `stop_after`, then SIGTERM) and measures it. The child
/// is reaped with wait4(2) for its resource usage.
#[allow(clippy::zombie_processes)]
fn measure(binary: &Path, args: &[&str], stop_after: Option<Duration>, log: &Path) -> Usage {
    let started = Instant::now();
    let child = Command::new(binary)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn,bedrock_flow_exporter::app=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Peak RSS from /proc (VmHWM of the exec'd image); wait4's ru_maxrss would include the
    // pages the child shared with this large process before exec.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let sampler_peak = peak.clone();
    let sampler = std::thread::spawn(move || {
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
                break;
            }
            if let Some(kib) = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok()) {
                sampler_peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    if let Some(after) = stop_after {
        std::thread::sleep(after);
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = sampler.join();
    let cpu = usage.ru_utime.tv_sec as f64 + usage.ru_utime.tv_usec as f64 / 1e6 + usage.ru_stime.tv_sec as f64 + usage.ru_stime.tv_usec as f64 / 1e6;
    Usage { wall: started.elapsed(), cpu_secs: cpu, max_rss_kib: peak.load(std::sync::atomic::Ordering::Relaxed), code: libc::WEXITSTATUS(status) }
}

fn config(dir: &Path, emulator: &str, otlp: &str, flows: &[(&str, &str)], interval: u64, extra: &str) -> String {
    let mut c = support::TestConfig::new(dir, emulator, otlp, flows);
    c.rate = 100_000.0;
    c.concurrency = 32;
    c.interval_secs = interval;
    c.settle_secs = 0;
    c.extra = extra.into();
    let path = dir.join("config.toml");
    c.write(&path);
    path.display().to_string()
}

/// Requests per second the emulator serves to `clients` keep-alive connections for `secs`.
async fn emulator_throughput(address: std::net::SocketAddr, path: String, clients: usize, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let path = path.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream.set_nodelay(true).unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
            let mut count = 0u64;
            let mut buffer = vec![0u8; 1 << 16];
            while Instant::now() < deadline {
                stream.write_all(request.as_bytes()).unwrap();
                // Read one response: headers, then content-length bytes.
                let mut got = Vec::new();
                let body_start;
                loop {
                    let n = stream.read(&mut buffer).unwrap();
                    got.extend_from_slice(&buffer[..n]);
                    if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        body_start = p + 4;
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&got[..body_start]).to_lowercase();
                let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())).unwrap();
                while got.len() < body_start + length {
                    let n = stream.read(&mut buffer).unwrap();
                    got.extend_from_slice(&buffer[..n]);
                }
                count += 1;
            }
            count
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let binary = release_binary();
    let executions = env_or("BENCH_EXECUTIONS", 10_000);
    let steady = env_or("BENCH_STEADY", 1_000);
    let steady_secs = env_or("BENCH_STEADY_SECS", 60) as u64;
    let startup_rows = env_or("BENCH_STARTUP_ROWS", 100_000);
    let mut report = String::new();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    writeln!(
        report,
        "# Benchmark report\n\nMachine: {} cores, {machine}. Date: {}.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        bedrock_flow_exporter::timefmt::format_nanos(now_nanos())
    )
    .unwrap();

    if section("drain") {
        // 1. Backlog drain with run --once.
        let emulator = support::emulator(Scenario::backlog(executions, 45)).await;
        let otlp = support::OtlpServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), &[("BACKLOG001", "backlog")], 15, "");
        let binary_for_drain = binary.clone();
        let log = dir.path().join("drain.log");
        let log_for_drain = log.clone();
        let drain = tokio::task::spawn_blocking(move || measure(&binary_for_drain, &["run", "--once", "--config", &path], None, &log_for_drain)).await.unwrap();
        assert_eq!(drain.code, 0, "{}", std::fs::read_to_string(&log).unwrap_or_default());
        let facts = emulator.executions(now_nanos());
        let events: usize = facts.iter().map(|f| f.node_events.len() + f.flow_events.len()).sum();
        let minimum: u64 = facts.iter().map(|f| (f.node_events.len().div_ceil(10) + f.flow_events.len().div_ceil(10)) as u64).sum::<u64>()
            + (facts.len() as u64).div_ceil(10)
            + 1;
        let stats = emulator.stats();
        let calls = stats["total_requests"].as_u64().unwrap();
        let spans = otlp.receiver.unique().len();
        writeln!(
            report,
            "## Backlog drain (`run --once`)\n\n{} finished executions, {events} events ({:.1} per execution), {spans} spans received over OTLP/gRPC.\n",
            facts.len(),
            events as f64 / facts.len() as f64
        )
        .unwrap();
        writeln!(report, "| figure | value |\n|---|---|").unwrap();
        writeln!(report, "| wall time | {:.2} s |", drain.wall.as_secs_f64()).unwrap();
        writeln!(report, "| events/s | {:.0} |", events as f64 / drain.wall.as_secs_f64()).unwrap();
        writeln!(report, "| CPU seconds per 1,000 events (collector) | {:.4} |", drain.cpu_secs / (events as f64 / 1000.0)).unwrap();
        writeln!(report, "| peak RSS (collector) | {:.1} MiB |", drain.max_rss_kib as f64 / 1024.0).unwrap();
        for (op, n) in stats["requests"].as_object().unwrap() {
            writeln!(report, "| API calls: {op} | {n} |").unwrap();
        }
        writeln!(report, "| API calls / minimum of SPEC §9 | {calls} / {minimum} = {:.4} |", calls as f64 / minimum as f64).unwrap();
        writeln!(report, "| emulator requests served per second during the drain | {:.0} |\n", calls as f64 / drain.wall.as_secs_f64()).unwrap();
        let address = emulator.addr;
        let arn = facts[0].arn.clone();
        let events_path = format!("/flows/BACKLOG001/aliases/BACKLOGLIV/executions/{}/events?eventType=Node&maxResults=10", arn.rsplit('/').next().unwrap());
        let throughput = emulator_throughput(address, events_path, 8, 5).await;
        writeln!(report, "Emulator capacity, `backlog` scenario, 8 keep-alive clients on ListFlowExecutionEvents for 5 s: **{throughput:.0} requests/s**.\n")
            .unwrap();
        otlp.stop();
        emulator.stop().await;
    }

    if section("steady") {
        // 2. Steady state: running executions without new events.
        let empty = support::emulator(Scenario::steady(0, 600)).await;
        let otlp = support::OtlpServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), &empty.endpoint(), &format!("http://{}", otlp.grpc), &[("STEADY0001", "steady")], 5, "");
        let b = binary.clone();
        let log = dir.path().join("empty.log");
        let baseline = tokio::task::spawn_blocking(move || measure(&b, &["run", "--config", &path], Some(Duration::from_secs(12)), &log)).await.unwrap();
        empty.stop().await;
        let emulator = support::emulator(Scenario::steady(steady, 600)).await;
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), &[("STEADY0001", "steady")], 5, "");
        let b = binary.clone();
        let log = dir.path().join("steady.log");
        let before = emulator.stats();
        let run = tokio::task::spawn_blocking(move || measure(&b, &["run", "--config", &path], Some(Duration::from_secs(steady_secs)), &log)).await.unwrap();
        let after = emulator.stats();
        let polls = (steady_secs / 5) as f64;
        let events_calls = support::requests(&after, "ListFlowExecutionEvents") - support::requests(&before, "ListFlowExecutionEvents");
        let list_calls = support::requests(&after, "ListFlowExecutions") - support::requests(&before, "ListFlowExecutions");
        writeln!(report, "## Steady state\n\n{steady} Running executions without new events, polled every 5 s for {steady_secs} s (about {polls:.0} polls).\n")
            .unwrap();
        writeln!(report, "| figure | value |\n|---|---|").unwrap();
        writeln!(
            report,
            "| ListFlowExecutionEvents calls per poll | {:.0} (SPEC: one per stream per execution = {}) |",
            events_calls as f64 / polls,
            2 * steady
        )
        .unwrap();
        writeln!(report, "| ListFlowExecutions calls per poll | {:.1} |", list_calls as f64 / polls).unwrap();
        writeln!(report, "| CPU seconds per poll (collector) | {:.3} |", run.cpu_secs / polls).unwrap();
        writeln!(report, "| peak RSS with {steady} tracked | {:.1} MiB |", run.max_rss_kib as f64 / 1024.0).unwrap();
        writeln!(report, "| peak RSS with none tracked | {:.1} MiB |", baseline.max_rss_kib as f64 / 1024.0).unwrap();
        writeln!(report, "| memory per tracked execution | {:.1} KiB |\n", (run.max_rss_kib - baseline.max_rss_kib) as f64 / steady as f64).unwrap();
        otlp.stop();
        emulator.stop().await;
    }

    if section("startup") {
        // 3. Startup with many executions in the state store.
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.sqlite");
        {
            let store = bedrock_flow_exporter::state::SqliteStore::open(&state_path).unwrap();
            let rows: Vec<bedrock_flow_exporter::collector::lifecycle::Tracked> = (0..startup_rows)
                .map(|i| bedrock_flow_exporter::collector::lifecycle::Tracked {
                    arn: format!("arn:aws:bedrock:us-east-1:123456789012:flow/STARTUP001/alias/LIVE/execution/{i:036}"),
                    flow_id: "STARTUP001".into(),
                    alias: "LIVE".into(),
                    version: "1".into(),
                    created_at: now_nanos(),
                    ended_at: Some(now_nanos()),
                    status: bedrock_flow_exporter::model::ExecutionStatus::Succeeded,
                    needs_settle: false,
                    terminal_seen_at: None,
                    errors: None,
                    node_cursor: Default::default(),
                    flow_cursor: Default::default(),
                    final_read: true,
                    unknown_status_counted: false,
                })
                .collect();
            store.save_all(&rows).await.unwrap();
            let done: Vec<bedrock_flow_exporter::state::Checkpoint> =
                rows.into_iter().map(|t| bedrock_flow_exporter::state::Checkpoint { execution: t, state: String::new(), done: true }).collect();
            store.checkpoint(&done, &[]).await.unwrap();
        }
        let emulator = support::emulator(Scenario::steady(0, 1)).await;
        let mut c = support::TestConfig::new(dir.path(), &emulator.endpoint(), "http://127.0.0.1:9", &[("STARTUP001", "startup")]);
        c.state = state_path;
        c.extra = "enabled = false\n".into();
        let path = dir.path().join("config.toml");
        c.write(&path);
        let b = binary.clone();
        let log = dir.path().join("startup.log");
        let log2 = log.clone();
        let p = path.display().to_string();
        tokio::task::spawn_blocking(move || measure(&b, &["run", "--config", &p], Some(Duration::from_secs(4)), &log2)).await.unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let startup_ms: u64 = text.split("startup_ms=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("startup line");
        writeln!(report, "## Startup\n\nWith {startup_rows} finished executions in the state store: **{startup_ms} ms** from process start to serving (state loaded, clients built, port bound).\n").unwrap();
        emulator.stop().await;
    }

    if section("memory") {
        // 4. Memory with the number of finished executions: steady arrivals that finish within a
        // second, a third through the DRAFT alias (one snapshot per execution).
        let memory_executions = env_or("BENCH_MEMORY_EXECUTIONS", 20_000);
        let mut scenario = Scenario::backlog(0, 6);
        scenario.flows[0].aliases.push(bedrock_flow_emulator::scenario::AliasSpec { id: "TSTALIASID".into(), version: "DRAFT".into() });
        scenario.traffic.executions_per_minute = 6_000.0;
        scenario.traffic.second_alias_share = 1.0 / 3.0;
        let emulator = support::emulator(scenario).await;
        let otlp = support::OtlpServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), &[("BACKLOG001", "backlog")], 1, "");
        let log = dir.path().join("memory.log");
        let child = support::Running(
            support::command_with(&binary, &["run", "--config", &path]).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap(),
        );
        let address = support::wait_for_listen(&log, Duration::from_secs(20));
        let deadline = Instant::now() + Duration::from_secs(memory_executions as u64 / 50 + 120);
        let mut marks = Vec::new();
        for target in [memory_executions / 10, memory_executions] {
            loop {
                let (_, text) = support::http_get(address, "/metrics", None);
                let finished = support::sum_samples(&text, "bedrock_flow_executions_total", &[]) as usize;
                if finished >= target {
                    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", child.0.id()))
                        .ok()
                        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
                        .unwrap_or(0.0);
                    let tracked = support::sample(&text, "bedrock_flow_exporter_executions_tracked", &[]).unwrap_or(0.0);
                    marks.push((finished, rss_kib / 1024.0, tracked));
                    break;
                }
                assert!(Instant::now() < deadline, "{finished} of {target} executions finished in time: {}", std::fs::read_to_string(&log).unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        drop(child);
        let drafts = emulator.executions(now_nanos()).iter().filter(|f| f.version == "DRAFT").count();
        let created = emulator.stats()["executions"].as_u64().unwrap_or(0);
        writeln!(
            report,
            "## Memory with the number of finished executions\n\nThe service (`run`, interval 1 s) on 100 new executions a second of ~6 events that finish within a second; {drafts} of the {created} created ran on DRAFT (one snapshot each).\n"
        )
        .unwrap();
        writeln!(report, "| finished executions | RSS | tracked at that moment |\n|---|---|---|").unwrap();
        for (finished, rss, tracked) in &marks {
            writeln!(report, "| {finished} | {rss:.1} MiB | {tracked} |").unwrap();
        }
        writeln!(report, "\nRSS after {} / RSS after {}: **{:.3}**.\n", marks[1].0, marks[0].0, marks[1].1 / marks[0].1).unwrap();
        otlp.stop();
        emulator.stop().await;
    }

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-report.md");
    std::fs::write(&out, &report).unwrap();
    println!("{report}\n(written to {})", out.display());
}
