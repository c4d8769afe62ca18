//! `cargo bench --bench exporter`: the figures of SPEC §9 on this machine, written to
//! `target/bench-report.md` (and printed). Runs the optimized binary as a child process against
//! the in-process emulator, spans into an in-process OTLP receiver; the child's CPU time and
//! peak RSS come from wait4(2). Sizes: BENCH_EXECUTIONS (10000), BENCH_STEADY (1000),
//! BENCH_STEADY_SECS (60), BENCH_STARTUP_ROWS (100000), BENCH_GROWING_SECS (180),
//! BENCH_GROWING_ITEMS (1000), BENCH_CHAIN_EVENTS (6000); BENCH_DRAIN_ROUNDS (3) alternating
//! drains and floors; BENCH_GROWING_INTERVALS (1,15) the poll intervals of the growing runs.
//! The drain's and the growing runs' receiver keeps span ids only (BENCH_RECEIVER=full: the
//! tests' receiver, which decodes every span); the drain's table gives this harness's own CPU
//! beside each run (the emulator serving it, the receiver taking its spans).
//!
//! The SDK floor: this harness runs itself as a child (BENCH_FLOOR_ENDPOINT set) that makes the
//! drain's API calls through the product's SDK client (`FlowSource`: same connector, request
//! budget, retry and timeout config) and does nothing with the answers; under
//! BENCH_FLOOR_WRAPPER (a profiler's script) when that is set; with BENCH_FLOOR_SDK
//! (`no-stalled-stream-protection`, `no-identity-cache`) the client with that SDK setting
//! changed, to measure what the setting costs.
//!
//! The `instructions` section runs a drain of BENCH_INSTR_EXECUTIONS (1000) by the collector
//! and by the floor under `valgrind --tool=callgrind` (when valgrind is installed): counts
//! that do not move with the machine's load, to compare builds or the two processes.
//! BENCH_KEEP_PROFILES=DIR keeps both profiles there (for `callgrind_annotate --inclusive=yes`);
//! BENCH_CALLGRIND_OPTIONS adds callgrind options to both (`--cache-sim=yes` for a cache model,
//! `--branch-sim=yes` for a branch model).

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
    max_rss_kib: i64,
    code: i32,
    /// User and system CPU seconds apart, minor page faults, voluntary context switches.
    user_secs: f64,
    system_secs: f64,
    minor_faults: i64,
    switches: i64,
    /// CPU seconds of this harness (the emulator serving the child, the receiver taking its
    /// spans) while the child ran: work beside the child on the same two cores.
    beside_secs: f64,
}

impl Usage {
    /// CPU seconds, user and system.
    fn cpu_secs(&self) -> f64 {
        self.user_secs + self.system_secs
    }
}

/// The binary cargo built for this bench (optimized, the `bench` profile), or BENCH_BINARY:
/// another build to compare with in the same run of the harness.
fn release_binary() -> std::path::PathBuf {
    std::env::var_os("BENCH_BINARY").map(std::path::PathBuf::from).unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_bedrock-flow-exporter")))
}

/// Whether a section runs: all by default, else those named in BENCH_SECTIONS
/// (`drain,instructions,steady,growing,postgres,startup,memory`).
fn section(name: &str) -> bool {
    std::env::var("BENCH_SECTIONS").map(|v| v.split(',').any(|s| s.trim() == name)).unwrap_or(true)
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs the binary to its end (or until `stop_after`, then SIGTERM) and measures it. The child
/// is reaped with wait4(2) for its resource usage.
fn measure(binary: &Path, args: &[&str], stop_after: Option<Duration>, log: &Path) -> Usage {
    measure_with(binary, args, &[], stop_after, log)
}

#[allow(clippy::zombie_processes)]
fn measure_with(binary: &Path, args: &[&str], envs: &[(&str, String)], stop_after: Option<Duration>, log: &Path) -> Usage {
    let started = Instant::now();
    let beside_before = own_cpu_secs();
    let child = Command::new(binary)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
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
    let user = usage.ru_utime.tv_sec as f64 + usage.ru_utime.tv_usec as f64 / 1e6;
    let system = usage.ru_stime.tv_sec as f64 + usage.ru_stime.tv_usec as f64 / 1e6;
    Usage {
        wall: started.elapsed(),
        max_rss_kib: peak.load(std::sync::atomic::Ordering::Relaxed),
        code: libc::WEXITSTATUS(status),
        user_secs: user,
        system_secs: system,
        minor_faults: usage.ru_minflt as i64,
        switches: usage.ru_nvcsw as i64,
        beside_secs: own_cpu_secs() - beside_before,
    }
}

/// This process's CPU seconds so far, user and system, all its threads (the product's own
/// reading, `getrusage`).
fn own_cpu_secs() -> f64 {
    bedrock_flow_exporter::metrics::cpu_seconds_used().unwrap_or(0.0)
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

/// The product's SDK client (its `FlowSource`: connector, request budget, retry and timeout
/// config) for a floor's bare loop.
async fn floor_client(endpoint: String) -> aws_sdk_bedrockagentruntime::Client {
    use bedrock_flow_exporter::source::{AwsTarget, FlowSource, RequestBudget, StaticCredentials};
    let target = AwsTarget { region: Some("us-east-1".into()), endpoint_url: Some(endpoint), ..AwsTarget::default() };
    let credentials = StaticCredentials { access_key_id: "AKIDBENCH".into(), secret_access_key: "secret".into() };
    let metrics = std::sync::Arc::new(bedrock_flow_exporter::metrics::Metrics::new(true));
    let source = FlowSource::new(&target, std::sync::Arc::new(RequestBudget::per_second(100_000.0)), Some(&credentials), metrics).await;
    let client = source.sdk_client().clone();
    // BENCH_FLOOR_SDK: the same client with one SDK setting changed, to measure what it costs.
    use aws_sdk_bedrockagentruntime::config;
    let changed = match std::env::var("BENCH_FLOOR_SDK").as_deref() {
        Ok("no-stalled-stream-protection") => client.config().to_builder().stalled_stream_protection(config::StalledStreamProtectionConfig::disabled()),
        Ok("no-identity-cache") => client.config().to_builder().identity_cache(config::IdentityCache::no_cache()),
        Ok(other) => panic!("BENCH_FLOOR_SDK={other}: not one of no-stalled-stream-protection, no-identity-cache"),
        Err(_) => return client,
    };
    aws_sdk_bedrockagentruntime::Client::from_conf(changed.build())
}

/// The flows of the growing executions (id, name): the collector's config and its floor's.
const GROWING_FLOWS: [(&str, &str); 2] = [("DOCBATCH01", "doc-batch"), ("LONGLOOP01", "long-loop")];

/// The bare loop of the SDK floor (run as a child): list the flow's executions, read the
/// snapshot once, page both event streams of every execution (32 at once, as the drain),
/// through the product's SDK client; the answers are dropped.
async fn floor_child(endpoint: String) {
    use futures_util::stream::{self, StreamExt};
    let client = floor_client(endpoint).await;
    let mut executions = Vec::new();
    let mut token = None;
    loop {
        let out = client.list_flow_executions().flow_identifier("BACKLOG001").max_results(10).set_next_token(token).send().await.unwrap();
        executions.extend(out.flow_execution_summaries().iter().map(|s| (s.execution_arn().to_string(), s.flow_alias_identifier().to_string())));
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    let (arn, alias) = executions[0].clone();
    client.get_execution_flow_snapshot().flow_identifier("BACKLOG001").flow_alias_identifier(alias).execution_identifier(arn).send().await.unwrap();
    stream::iter(executions)
        .map(|(arn, alias)| {
            let client = client.clone();
            async move {
                for kind in [aws_sdk_bedrockagentruntime::types::FlowExecutionEventType::Node, aws_sdk_bedrockagentruntime::types::FlowExecutionEventType::Flow]
                {
                    let mut token = None;
                    loop {
                        let out = client
                            .list_flow_execution_events()
                            .flow_identifier("BACKLOG001")
                            .flow_alias_identifier(&alias)
                            .execution_identifier(&arn)
                            .event_type(kind.clone())
                            .max_results(10)
                            .set_next_token(token)
                            .send()
                            .await
                            .unwrap();
                        match out.next_token() {
                            Some(t) if !t.is_empty() => token = Some(t.to_string()),
                            _ => break,
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// The bare loop of the growing executions' floor (run as a child beside the collector, on
/// the same emulator): every BENCH_FLOOR_INTERVAL seconds (1 unless set; the collector's
/// interval), list both flows, read the snapshot once per flow, and page
/// each unfinished execution's Node stream from its tail page as the collector does (the Flow
/// stream at the first and the final read), through the product's SDK client, dropping the
/// answers. After each poll it writes "calls events" to `out`.
async fn growing_floor_child(endpoint: String, out: String) {
    use aws_sdk_bedrockagentruntime::types::FlowExecutionEventType as Stream;
    let client = floor_client(endpoint).await;
    // Per execution: flow, alias, the tail-page token and length of each stream, whether the
    // Flow stream was read, whether it is done.
    struct Reader {
        flow: &'static str,
        alias: String,
        tails: [(Option<String>, usize); 2],
        flow_read: bool,
        done: bool,
    }
    // Pages one stream from its tail: returns (calls, new events, the new tail).
    async fn page(
        client: &aws_sdk_bedrockagentruntime::Client,
        flow: &str,
        alias: &str,
        arn: &str,
        stream: Stream,
        tail: (Option<String>, usize),
    ) -> (u64, usize, (Option<String>, usize)) {
        let (mut token, mut skip, mut calls, mut new) = (tail.0, tail.1, 0, 0);
        loop {
            let page = client
                .list_flow_execution_events()
                .flow_identifier(flow)
                .flow_alias_identifier(alias)
                .execution_identifier(arn)
                .event_type(stream.clone())
                .max_results(10)
                .set_next_token(token.clone())
                .send()
                .await
                .unwrap();
            calls += 1;
            let len = page.flow_execution_events().len();
            new += len.saturating_sub(skip);
            match page.next_token() {
                Some(t) if !t.is_empty() => (token, skip) = (Some(t.to_string()), 0),
                _ => return (calls, new, (token, len)),
            }
        }
    }
    let mut readers: std::collections::HashMap<String, Reader> = Default::default();
    let mut snapshots = std::collections::HashSet::new();
    let (mut calls, mut events) = (0u64, 0usize);
    let every = std::env::var("BENCH_FLOOR_INTERVAL").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tick.tick().await;
        let mut terminal = std::collections::HashSet::new();
        for (flow, _) in GROWING_FLOWS {
            let mut token = None;
            loop {
                let page = client.list_flow_executions().flow_identifier(flow).max_results(10).set_next_token(token.take()).send().await.unwrap();
                calls += 1;
                for s in page.flow_execution_summaries() {
                    let arn = s.execution_arn().to_string();
                    if s.status().as_str() != "Running" {
                        terminal.insert(arn.clone());
                    }
                    readers.entry(arn.clone()).or_insert_with(|| Reader {
                        flow,
                        alias: s.flow_alias_identifier().to_string(),
                        tails: [(None, 0), (None, 0)],
                        flow_read: false,
                        done: false,
                    });
                    if snapshots.insert(flow) {
                        client
                            .get_execution_flow_snapshot()
                            .flow_identifier(flow)
                            .flow_alias_identifier(s.flow_alias_identifier())
                            .execution_identifier(&arn)
                            .send()
                            .await
                            .unwrap();
                        calls += 1;
                    }
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        let reads = readers.iter_mut().filter(|(_, r)| !r.done).map(|(arn, r)| {
            let (client, last) = (client.clone(), terminal.contains(arn));
            async move {
                let (mut calls, mut new) = (0, 0);
                let streams: &[(usize, Stream)] = if last || !r.flow_read { &[(0, Stream::Node), (1, Stream::Flow)] } else { &[(0, Stream::Node)] };
                for (i, stream) in streams {
                    let (c, n, tail) = page(&client, r.flow, &r.alias, arn, stream.clone(), r.tails[*i].clone()).await;
                    (calls, new, r.tails[*i]) = (calls + c, new + n, tail);
                }
                (r.flow_read, r.done) = (true, last);
                (calls, new)
            }
        });
        for (c, n) in futures_util::future::join_all(reads).await {
            (calls, events) = (calls + c, events + n);
        }
        // With its CPU after the poll, to the microsecond (see the collector's).
        let _ = std::fs::write(&out, format!("{calls} {events} {}", own_cpu_secs()));
    }
}

/// The growing executions polled every `interval` seconds, beside their floor (section 3):
/// CPU, events and checkpoint bytes by quarter of the run, against the drain's CPU per 1,000
/// events and its floor's (`drain`) when the drain ran.
async fn growing(report: &mut String, binary: &Path, interval: u64, drain: Option<(f64, f64)>) {
    let secs = env_or("BENCH_GROWING_SECS", 180) as u64;
    let items = env_or("BENCH_GROWING_ITEMS", 1000);
    let chain_events = env_or("BENCH_CHAIN_EVENTS", 6000);
    let emulator = support::emulator(Scenario::growing(items, chain_events, secs)).await;
    let otlp = BenchReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut c = support::TestConfig::new(dir.path(), &emulator.endpoint(), &otlp.endpoint(), &GROWING_FLOWS);
    (c.rate, c.concurrency, c.interval_secs, c.settle_secs, c.listen) = (100_000.0, 32, interval, 0, format!("127.0.0.1:{port}"));
    let state_path = c.state.clone();
    let path = dir.path().join("config.toml");
    c.write(&path);
    let log = dir.path().join("growing.log");
    let child = start_service(binary, &path, &log);
    let pid = child.id();
    // The growing floor: the bare loop of the same polls beside it (same emulator, same run).
    let floor_out = dir.path().join("floor-growing.txt");
    let floor = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_FLOOR_ENDPOINT", emulator.endpoint())
        .env("BENCH_FLOOR_GROWING", &floor_out)
        .env("BENCH_FLOOR_INTERVAL", interval.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("floor-growing.log")).unwrap())
        .spawn()
        .unwrap();
    let floor_pid = floor.id();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Events, checkpoint bytes, and the process's CPU as it reports it: `getrusage`, to the
    // microsecond (/proc's clock ticks are 10 ms, ~4% of a 180 s run's CPU at 15 s).
    let scrape = move || {
        let text = support::http_get(address, "/metrics", None).1;
        let cpu = support::sample(&text, "process_cpu_seconds_total", &[]).unwrap_or_else(|| support::cpu_seconds(pid));
        (
            cpu,
            (
                support::sum_samples(&text, "bedrock_flow_exporter_events_received_total", &[]),
                support::sample(&text, "bedrock_flow_exporter_checkpoint_bytes_total", &[]).unwrap_or(0.0),
            ),
        )
    };
    // Quarters of the run: CPU, events, checkpoint bytes, polls.
    let quarter = Duration::from_secs(secs / 4);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak_rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let mark = || {
        let (cpu, counts) = scrape();
        (cpu, counts, Instant::now(), saved_states(&state_path))
    };
    let mut marks = vec![mark()];
    for _ in 0..4 {
        tokio::time::sleep(quarter).await;
        marks.push(mark());
    }
    // Then until every execution is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while otlp.roots() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let end = scrape();
    let final_metrics = support::http_get(address, "/metrics", None).1;
    let rss_kib = peak_rss();
    // Once more for the floor: its last poll reads what the collector's did.
    tokio::time::sleep(Duration::from_millis(interval * 1000 + 500)).await;
    let floor_counts: Vec<f64> = std::fs::read_to_string(&floor_out).unwrap_or_default().split_whitespace().filter_map(|n| n.parse().ok()).collect();
    unsafe { libc::kill(floor_pid as i32, libc::SIGKILL) };
    let _ = support::Running(floor);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    drop(child);
    let events: f64 = end.1 .0;
    writeln!(
        report,
        "## Growing executions, polled every {interval} s\n\nTwo doc-batch executions over {items} documents each and one refine loop of {} passes (about {chain_events} events, thousands of runs of the same few nodes), their events arriving evenly over {secs} s, polled every {interval} s{}. {events:.0} events in all, {} spans received.\n",
        chain_events / 8,
        match interval {
            1 => " (the issue's own case)",
            15 => " (the product's default, `poll.interval_secs = 15`)",
            _ => "",
        },
        otlp.unique()
    )
    .unwrap();
    writeln!(report, "| quarter | events | CPU-s | CPU-s per 1,000 events | CPU-s per poll | checkpoint bytes | bytes per event | fold states saved (largest, total) |\n|---|---|---|---|---|---|---|---|").unwrap();
    for (i, w) in marks.windows(2).enumerate() {
        let (cpu, (ev, bytes)) = (w[1].0 - w[0].0, (w[1].1 .0 - w[0].1 .0, w[1].1 .1 - w[0].1 .1));
        let polls = (w[1].2 - w[0].2).as_secs_f64() / interval as f64;
        writeln!(
            report,
            "| {} | {ev:.0} | {cpu:.2} | {:.4} | {:.4} | {bytes:.0} | {:.0} | {} ({} B, {} B) |",
            i + 1,
            cpu / (ev / 1000.0).max(0.001),
            cpu / polls,
            bytes / ev.max(1.0),
            w[1].3 .0,
            w[1].3 .1,
            w[1].3 .2
        )
        .unwrap();
    }
    // Where the per-event cost comes from: API calls per event, by operation.
    // (The emulator served the floor's calls too: the collector's are those it counted.)
    let text = final_metrics;
    let per_k = |n: f64| n / (events / 1000.0);
    let calls: Vec<String> = ["ListFlowExecutions", "ListFlowExecutionEvents", "GetExecutionFlowSnapshot", "GetFlowExecution"]
        .iter()
        .map(|op| format!("{op} {:.0}", per_k(support::sum_samples(&text, "bedrock_flow_exporter_api_requests_total", &[("operation", op)]))))
        .collect();
    let collector_calls = support::sum_samples(&text, "bedrock_flow_exporter_api_requests_total", &[]);
    writeln!(report, "\nAPI calls per 1,000 events: {:.0} ({}).", per_k(collector_calls), calls.join(", ")).unwrap();
    let growing_per_k = end.0 / (events / 1000.0);
    let versus = drain.map(|(d, _)| format!(": {:.2}x the backlog drain's {d:.4}", growing_per_k / d)).unwrap_or_default();
    writeln!(report, "\nWhole run: **{growing_per_k:.4} CPU-s per 1,000 events**{versus} (SPEC §9: within 1.5x). Peak RSS {:.1} MiB.\n", rss_kib / 1024.0)
        .unwrap();
    // The same over the four quarters alone: the process's startup and its first poll (before
    // the first mark) and the wait for the last roots left out, to show what startup weighs in
    // a run this short (a service pays it once).
    let (first, last) = (&marks[0], &marks[marks.len() - 1]);
    let polls_per_k = (last.0 - first.0) / ((last.1 .0 - first.1 .0) / 1000.0).max(0.001);
    let versus = drain.map(|(d, _)| format!(", {:.2}x the drain's", polls_per_k / d)).unwrap_or_default();
    writeln!(report, "Over the four quarters alone (startup, the first poll and the last wait left out): {polls_per_k:.4} CPU-s per 1,000 events{versus}.\n")
        .unwrap();
    let [floor_calls, floor_events, floor_cpu] = floor_counts[..] else {
        panic!("the growing floor wrote no counts: {}", std::fs::read_to_string(dir.path().join("floor-growing.log")).unwrap_or_default());
    };
    let floor_per_k = floor_cpu / (floor_events / 1000.0);
    let versus = drain.map(|(_, d)| format!(", {:.2}x the drain's floor {d:.4}", floor_per_k / d)).unwrap_or_default();
    writeln!(
        report,
        "Growing floor (a bare loop making the same polls through the product's SDK client beside the collector, answers dropped): {floor_events:.0} events, {floor_calls:.0} API calls ({:.0} per 1,000 events), **{floor_per_k:.4} CPU-s per 1,000 events**{versus}; the collector costs **{:.2}x** that floor.\n",
        floor_calls / (floor_events / 1000.0),
        growing_per_k / floor_per_k
    )
    .unwrap();
    otlp.stop();
    emulator.stop().await;
}

/// The service (`run`) with this config, logging warnings to `log`; the caller reaps it.
#[allow(clippy::zombie_processes)]
fn start_service(binary: &Path, config: &Path, log: &Path) -> std::process::Child {
    Command::new(binary)
        .args(["run", "--config", &config.display().to_string()])
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Fold states saved now: (executions with one, largest, total bytes).
/// The saved fold states of running executions, each with its held runs' span events (rows of
/// their own since schema 3): how many, the largest and the total bytes.
fn saved_states(path: &Path) -> (i64, i64, i64) {
    let Ok(c) = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else { return (0, 0, 0) };
    let with_rows = "SELECT count(state), coalesce(max(n), 0), coalesce(sum(n), 0) FROM (
                       SELECT state, length(state) + coalesce((SELECT sum(length(body)) FROM run_events r WHERE r.arn = e.arn), 0) AS n
                       FROM executions e WHERE done = 0)";
    let without = "SELECT count(state), coalesce(max(length(state)), 0), coalesce(sum(length(state)), 0) FROM executions WHERE done = 0";
    c.query_row(with_rows, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .or_else(|_| c.query_row(without, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .unwrap_or((0, 0, 0))
}

/// The product's allocator (src/main.rs), so that the SDK floor (this harness as a child) and
/// the collector allocate alike.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // The floor runs on the collector's runtime (one thread, see main.rs), or with
    // BENCH_FLOOR_WORKERS on a runtime of that many workers.
    if let Ok(endpoint) = std::env::var("BENCH_FLOOR_ENDPOINT") {
        let runtime = match std::env::var("BENCH_FLOOR_WORKERS").ok().and_then(|n| n.parse().ok()) {
            Some(workers) => tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build(),
            None => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        };
        match std::env::var("BENCH_FLOOR_GROWING") {
            Ok(out) => runtime.unwrap().block_on(growing_floor_child(endpoint, out)),
            Err(_) => runtime.unwrap().block_on(floor_child(endpoint)),
        }
        return;
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(bench());
}

/// `program args` run under `wrapper` (a command and its arguments, say valgrind's), or
/// directly when it is empty.
fn under(wrapper: &[String], program: &Path, args: &[&str]) -> (std::path::PathBuf, Vec<String>) {
    let args = args.iter().map(|a| a.to_string());
    match wrapper.split_first() {
        Some((command, options)) => (command.into(), options.iter().cloned().chain(std::iter::once(program.display().to_string())).chain(args).collect()),
        None => (program.to_path_buf(), args.collect()),
    }
}

/// One backlog drain (`run --once`) by the collector with a fresh store in `dir`, under
/// `wrapper` (none when empty); it must exit 0.
async fn drain_once(binary: &Path, dir: &Path, emulator: &str, otlp: &str, wrapper: &[String]) -> Usage {
    let path = config(dir, emulator, otlp, &[("BACKLOG001", "backlog")], 15, "");
    let log = dir.join("drain.log");
    let (program, args) = under(wrapper, binary, &["run", "--once", "--config", &path]);
    let usage = tokio::task::spawn_blocking({
        let log = log.clone();
        move || measure(&program, &args.iter().map(String::as_str).collect::<Vec<_>>(), None, &log)
    })
    .await
    .unwrap();
    assert_eq!(usage.code, 0, "the drain failed: {}", std::fs::read_to_string(&log).unwrap_or_default());
    usage
}

/// A callgrind profile: the self cost (instructions) of each function, the total, and the
/// total of every event it counted (the cache model's misses too, under `--cache-sim=yes`).
struct Profile {
    total: u64,
    costs: std::collections::HashMap<String, u64>,
    events: std::collections::HashMap<String, u64>,
}

impl Profile {
    /// The sum of the named events' totals (0 for events not counted).
    fn sum(&self, names: &[&str]) -> u64 {
        names.iter().map(|n| self.events.get(*n).copied().unwrap_or(0)).sum()
    }
}

/// Reads a callgrind profile. Callgrind's format: `fn=(id) name` (or `fn=(id)` once named)
/// starts a function's lines; `calls=` makes the next cost line a call's inclusive cost, not
/// the function's own.
fn callgrind_profile(path: &Path) -> Profile {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut names, mut costs) = (std::collections::HashMap::<String, String>::new(), std::collections::HashMap::<String, u64>::new());
    let (mut current, mut after_call, mut total, mut totals) = (String::new(), false, 0u64, None::<u64>);
    let (mut event_names, mut events) = (Vec::<String>::new(), std::collections::HashMap::<String, u64>::new());
    let mut name_of = |spec: &str| -> String {
        let spec = spec.trim();
        match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, rest)) if !rest.trim().is_empty() => {
                names.insert(id.to_string(), rest.trim().to_string());
                rest.trim().to_string()
            }
            Some((id, _)) => names.get(id).cloned().unwrap_or_default(),
            None => spec.to_string(),
        }
    };
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("fn=") {
            current = name_of(spec);
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            name_of(spec);
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if let Some(names) = line.strip_prefix("events:") {
            event_names = names.split_whitespace().map(str::to_string).collect();
        } else if let Some(t) = line.strip_prefix("totals:") {
            // With `--cache-sim=yes` the summary can exceed the totals by an instruction or
            // two; the totals are the sum of the cost lines.
            totals = t.split_whitespace().next().and_then(|n| n.parse().ok());
            events = event_names.iter().cloned().zip(t.split_whitespace().map(|n| n.parse().unwrap_or(0))).collect();
        } else if let Some(t) = line.strip_prefix("summary:") {
            total = t.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*') {
            let ir = line.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            if !std::mem::take(&mut after_call) {
                *costs.entry(current.clone()).or_default() += ir;
            }
        }
    }
    let total = totals.unwrap_or(total);
    // Every instruction is some function's own: the parse missed or doubled none.
    assert_eq!(costs.values().sum::<u64>(), total, "self costs of {} do not add up to its total", path.display());
    Profile { total, costs, events }
}

/// The drain of `BENCH_INSTR_EXECUTIONS` (1000) executions by the collector and by its
/// one-thread floor, each under `valgrind --tool=callgrind`: instructions per event, their
/// ratio, and the functions whose own instructions differ most. Skipped without valgrind.
async fn instructions(binary: &Path, report: &mut String) {
    writeln!(report, "## Instructions of the drain (callgrind)\n").unwrap();
    if !Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success()) {
        writeln!(report, "Skipped: valgrind is not installed.\n").unwrap();
        return;
    }
    let n = env_or("BENCH_INSTR_EXECUTIONS", 1000);
    let emulator = support::emulator(Scenario::backlog(n, 45)).await;
    let otlp = support::OtlpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let events: usize = emulator.executions(now_nanos()).iter().map(|f| f.node_events.len() + f.flow_events.len()).sum();
    let (collector_out, floor_out) = (dir.path().join("collector.callgrind"), dir.path().join("floor.callgrind"));
    // BENCH_CALLGRIND_OPTIONS adds options (say, `--cache-sim=yes` for a cache model).
    let extra: Vec<String> = std::env::var("BENCH_CALLGRIND_OPTIONS").unwrap_or_default().split_whitespace().map(str::to_string).collect();
    let callgrind = |out: &Path| {
        let mut command = vec!["valgrind".to_string(), "--tool=callgrind".to_string(), format!("--callgrind-out-file={}", out.display())];
        command.extend(extra.iter().cloned());
        command
    };
    drain_once(binary, dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), &callgrind(&collector_out)).await;
    floor_once(emulator.endpoint(), None, dir.path().join("floor.log"), &callgrind(&floor_out)).await;
    // BENCH_KEEP_PROFILES=DIR keeps both profiles there, for callgrind_annotate.
    if let Some(keep) = std::env::var_os("BENCH_KEEP_PROFILES") {
        let _ = std::fs::create_dir_all(&keep);
        for out in [&collector_out, &floor_out] {
            let _ = std::fs::copy(out, Path::new(&keep).join(out.file_name().unwrap()));
        }
    }
    let (collector, floor) = (callgrind_profile(&collector_out), callgrind_profile(&floor_out));
    let (c_total, c_costs, f_total, f_costs) = (collector.total, &collector.costs, floor.total, &floor.costs);
    // Valgrind's CPU has no SHA extensions, so sha2 runs its portable code here; on this
    // machine it uses SHA-NI. The span ids' SHA-256 is shown apart for that reason.
    let sha = |costs: &std::collections::HashMap<String, u64>| costs.iter().filter(|(k, _)| k.starts_with("sha2::")).map(|(_, v)| *v).sum::<u64>();
    let (c_sha, f_sha) = (sha(c_costs), sha(f_costs));
    let per_event = |n: u64| n as f64 / events as f64;
    let model = match (collector.events.contains_key("DLmr"), collector.events.contains_key("Bcm")) {
        (true, true) => "cache misses and mispredicted branches in models of the caches and the branch predictors",
        (true, false) => "cache misses in a model of the caches, no branch effects",
        (false, true) => "mispredicted branches in a model of the branch predictors, no cache effects",
        (false, false) => "no cache or branch effects",
    };
    writeln!(report, "{n} finished executions, {events} events, `run --once` and the one-thread floor each under `valgrind --tool=callgrind` (user-space instructions of all threads; no kernel time, {model}).\n").unwrap();
    writeln!(report, "| figure | collector | floor | collector / floor |\n|---|---|---|---|").unwrap();
    writeln!(report, "| instructions per event | {:.0} | {:.0} | **{:.3}x** |", per_event(c_total), per_event(f_total), c_total as f64 / f_total as f64)
        .unwrap();
    writeln!(report, "| of which SHA-256 (portable code under valgrind) | {:.0} | {:.0} | |", per_event(c_sha), per_event(f_sha)).unwrap();
    writeln!(
        report,
        "| instructions per event without SHA-256 | {:.0} | {:.0} | **{:.3}x** |\n",
        per_event(c_total - c_sha),
        per_event(f_total - f_sha),
        (c_total - c_sha) as f64 / (f_total - f_sha) as f64
    )
    .unwrap();
    // Under `--cache-sim=yes` and `--branch-sim=yes` (BENCH_CALLGRIND_OPTIONS), the models'
    // counts, each a sum of callgrind's events.
    let mut rows: Vec<(&str, u64, u64)> = Vec::new();
    if collector.events.contains_key("DLmr") {
        let (first, last) = (["I1mr", "D1mr", "D1mw"], ["ILmr", "DLmr", "DLmw"]);
        let sums = |what, names: &[&str]| (what, collector.sum(names), floor.sum(names));
        // Callgrind's own estimate of cycles: an instruction 1, a first-level miss 10, a
        // last-level miss 100.
        let cycles = |p: &Profile| p.total + 10 * p.sum(&first) + 100 * p.sum(&last);
        rows.extend([
            sums("first-level misses (I1mr + D1mr + D1mw)", &first),
            sums("last-level misses (ILmr + DLmr + DLmw)", &last),
            sums("last-level misses, instructions (ILmr)", &last[..1]),
            ("cycles, estimated (instructions + 10 x first-level + 100 x last-level misses)", cycles(&collector), cycles(&floor)),
        ]);
    }
    if collector.events.contains_key("Bcm") {
        let branches = [
            ("conditional branches (Bc)", "Bc"),
            ("conditional branches, mispredicted (Bcm)", "Bcm"),
            ("indirect branches (Bi)", "Bi"),
            ("indirect branches, mispredicted (Bim)", "Bim"),
        ];
        rows.extend(branches.map(|(what, name)| (what, collector.sum(&[name]), floor.sum(&[name]))));
    }
    if !rows.is_empty() {
        writeln!(report, "Models (`{}`), per event:\n", extra.join(" ")).unwrap();
        writeln!(report, "| per event | collector | floor | collector / floor |\n|---|---|---|---|").unwrap();
        for (what, c, f) in rows {
            writeln!(report, "| {what} | {:.1} | {:.1} | **{:.3}x** |", per_event(c), per_event(f), c as f64 / f.max(1) as f64).unwrap();
        }
        writeln!(report).unwrap();
    }
    let mut diff: Vec<(i64, &String)> = c_costs.iter().map(|(k, v)| (*v as i64 - *f_costs.get(k).unwrap_or(&0) as i64, k)).collect();
    diff.sort_by_key(|(d, _)| -d);
    writeln!(report, "The functions whose own instructions grew most over the floor's, per event (in units of the floor's total):\n\n| function | collector - floor |\n|---|---|").unwrap();
    for (d, name) in diff.iter().take(15) {
        let short: String = name.chars().take(110).collect();
        writeln!(report, "| `{}` | {:.0} ({:.3}) |", short.replace('|', "\\|"), *d as f64 / events as f64, *d as f64 / f_total as f64).unwrap();
    }
    writeln!(report).unwrap();
    otlp.stop();
    emulator.stop().await;
}

/// One run of the drain's bare SDK loop (this harness as a child), on one thread or on
/// `workers`, under `wrapper`, else under BENCH_FLOOR_WRAPPER (a profiler's wrapper script,
/// say) when that is set; it must exit 0.
async fn floor_once(emulator: String, workers: Option<usize>, log: std::path::PathBuf, wrapper: &[String]) -> Usage {
    let mut envs = vec![("BENCH_FLOOR_ENDPOINT", emulator)];
    envs.extend(workers.map(|n| ("BENCH_FLOOR_WORKERS", n.to_string())));
    let from_env: Vec<String> = std::env::var("BENCH_FLOOR_WRAPPER").into_iter().collect();
    let (program, args) = under(if wrapper.is_empty() { &from_env } else { wrapper }, &std::env::current_exe().unwrap(), &[]);
    let usage = tokio::task::spawn_blocking({
        let log = log.clone();
        move || measure_with(&program, &args.iter().map(String::as_str).collect::<Vec<_>>(), &envs, None, &log)
    })
    .await
    .unwrap();
    assert_eq!(usage.code, 0, "the bare loop ({workers:?} workers) failed: {}", std::fs::read_to_string(&log).unwrap_or_default());
    usage
}

/// The OTLP receiver of the drain and the growing runs: by default one that keeps only span
/// ids (`SpanIds`), so that what it does beside the collector is little, as a backend on
/// another host; with BENCH_RECEIVER=full the tests' receiver, which decodes every span into
/// strings and keeps them (until 2026-12-03 12:00 UTC the only one).
enum BenchReceiver {
    Ids(support::SpanIds, std::net::SocketAddr, tokio::sync::watch::Sender<bool>),
    Full(support::OtlpServer),
}

impl BenchReceiver {
    async fn start() -> BenchReceiver {
        match std::env::var("BENCH_RECEIVER").as_deref() {
            Ok("full") => return BenchReceiver::Full(support::OtlpServer::start().await),
            Ok("ids") | Err(_) => {}
            Ok(other) => panic!("BENCH_RECEIVER={other}: not one of ids, full"),
        }
        let ids = support::SpanIds::default();
        let (address, stop) = ids.serve().await;
        BenchReceiver::Ids(ids, address, stop)
    }

    fn endpoint(&self) -> String {
        match self {
            BenchReceiver::Ids(_, address, _) => format!("http://{address}"),
            BenchReceiver::Full(otlp) => format!("http://{}", otlp.grpc),
        }
    }

    fn unique(&self) -> usize {
        match self {
            BenchReceiver::Ids(ids, _, _) => ids.unique(),
            BenchReceiver::Full(otlp) => otlp.receiver.unique().len(),
        }
    }

    fn roots(&self) -> usize {
        match self {
            BenchReceiver::Ids(ids, _, _) => ids.roots(),
            BenchReceiver::Full(otlp) => otlp.receiver.roots().len(),
        }
    }

    fn stop(&self) {
        match self {
            BenchReceiver::Ids(_, _, stop) => {
                let _ = stop.send(true);
            }
            BenchReceiver::Full(otlp) => otlp.stop(),
        }
    }
}

/// The CPU as /proc/cpuinfo and sysfs name it: its model name (which a VM may shorten to the
/// vendor's brand), family, model and stepping, and the sizes of its caches. Two machines of one
/// name can differ by a generation, and the drain's ratio with them (BENCHMARKS.md).
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find(|l| l.split(':').next().is_some_and(|k| k.trim() == name)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
    };
    let mut caches = Vec::new();
    for index in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let read = |file: &str| std::fs::read_to_string(format!("{dir}/{file}")).ok().map(|v| v.trim().to_string());
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
            break;
        };
        let kind = match kind.as_str() {
            "Data" => "d",
            "Instruction" => "i",
            _ => "",
        };
        caches.push(format!("L{level}{kind} {size}"));
    }
    format!(
        "{} (family {}, model {}, stepping {}; caches of cpu0: {})",
        field("model name").unwrap_or_default(),
        field("cpu family").unwrap_or_default(),
        field("model").unwrap_or_default(),
        field("stepping").unwrap_or_default(),
        caches.join(", ")
    )
}

async fn bench() {
    let binary = release_binary();
    let executions = env_or("BENCH_EXECUTIONS", 10_000);
    let steady = env_or("BENCH_STEADY", 1_000);
    let steady_secs = env_or("BENCH_STEADY_SECS", 60) as u64;
    let startup_rows = env_or("BENCH_STARTUP_ROWS", 100_000);
    let mut report = String::new();
    let machine = machine();
    writeln!(
        report,
        "# Benchmark report\n\nMachine: {} cores, {machine}. Date: {}.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        bedrock_flow_exporter::timefmt::format_nanos(now_nanos())
    )
    .unwrap();

    // The drain's CPU per 1,000 events and its floor's, for the growing executions' ratios.
    let mut drain_cpu: Option<(f64, f64)> = None;
    if section("drain") {
        // 1. Backlog drain with run --once.
        let emulator = support::emulator(Scenario::backlog(executions, 45)).await;
        let otlp = BenchReceiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let otlp_endpoint = otlp.endpoint();
        let drain = drain_once(&binary, dir.path(), &emulator.endpoint(), &otlp_endpoint, &[]).await;
        let facts = emulator.executions(now_nanos());
        let events: usize = facts.iter().map(|f| f.node_events.len() + f.flow_events.len()).sum();
        let minimum: u64 = facts.iter().map(|f| (f.node_events.len().div_ceil(10) + f.flow_events.len().div_ceil(10)) as u64).sum::<u64>()
            + (facts.len() as u64).div_ceil(10)
            + 1;
        let stats = emulator.stats();
        let calls = stats["total_requests"].as_u64().unwrap();
        let spans = otlp.unique();
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
        writeln!(report, "| CPU seconds per 1,000 events (collector) | {:.4} |", drain.cpu_secs() / (events as f64 / 1000.0)).unwrap();
        writeln!(report, "| peak RSS (collector) | {:.1} MiB |", drain.max_rss_kib as f64 / 1024.0).unwrap();
        for (op, n) in stats["requests"].as_object().unwrap() {
            writeln!(report, "| API calls: {op} | {n} |").unwrap();
        }
        writeln!(report, "| API calls / minimum of SPEC §9 | {calls} / {minimum} = {:.4} |", calls as f64 / minimum as f64).unwrap();
        writeln!(report, "| API calls per 1,000 events | {:.0} |", calls as f64 / (events as f64 / 1000.0)).unwrap();
        writeln!(report, "| emulator requests served per second during the drain | {:.0} |\n", calls as f64 / drain.wall.as_secs_f64()).unwrap();
        // The SDK floor: the same calls by a bare loop through the same client, same run.
        let before_floor = emulator.stats()["total_requests"].as_u64().unwrap();
        let floor = floor_once(emulator.endpoint(), None, dir.path().join("floor.log"), &[]).await;
        let floor_calls = emulator.stats()["total_requests"].as_u64().unwrap() - before_floor;
        // The same loop on a runtime of two workers (the collector's runtime before it had one
        // thread): what the floor was measured on until then.
        let floor_2 = floor_once(emulator.endpoint(), Some(2), dir.path().join("floor-2.log"), &[]).await;
        // More rounds of both (a fresh store each, the same emulator), alternating, so that the
        // ratio does not rest on one pair of runs on a noisy machine.
        let rounds = env_or("BENCH_DRAIN_ROUNDS", 3).max(1);
        let (mut drain_runs, mut floor_runs) = (vec![drain], vec![floor]);
        for _ in 1..rounds {
            let dir = tempfile::tempdir().unwrap();
            drain_runs.push(drain_once(&binary, dir.path(), &emulator.endpoint(), &otlp_endpoint, &[]).await);
            floor_runs.push(floor_once(emulator.endpoint(), None, dir.path().join("floor.log"), &[]).await);
        }
        let drains: Vec<f64> = drain_runs.iter().map(|u| u.cpu_secs()).collect();
        let floors: Vec<f64> = floor_runs.iter().map(|u| u.cpu_secs()).collect();
        let per_k = |cpu: f64| cpu / (events as f64 / 1000.0);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (collector_cpu, floor_cpu) = (mean(&drains), mean(&floors));
        let mut ratios: Vec<f64> = drains.iter().zip(&floors).map(|(c, f)| c / f).collect();
        ratios.sort_by(f64::total_cmp);
        let list = |v: &[f64], f: &dyn Fn(f64) -> String| v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ");
        drain_cpu = Some((per_k(collector_cpu), per_k(floor_cpu)));
        writeln!(report, "SDK floor (the same calls, {floor_calls} of them, by a bare loop through the product's SDK client, answers dropped), {rounds} rounds alternating with the collector's:\n").unwrap();
        writeln!(report, "| figure | value |\n|---|---|").unwrap();
        writeln!(
            report,
            "| CPU seconds per 1,000 events, bare SDK loop (one thread, the collector's runtime), by round | {} |",
            list(&floors, &|c| format!("{:.4}", per_k(c)))
        )
        .unwrap();
        writeln!(report, "| CPU seconds per 1,000 events, bare SDK loop on two workers | {:.4} |", per_k(floor_2.cpu_secs())).unwrap();
        writeln!(report, "| CPU seconds per 1,000 events, collector, by round | {} |", list(&drains, &|c| format!("{:.4}", per_k(c)))).unwrap();
        writeln!(report, "| collector / floor, by round (sorted) | {} |", list(&ratios, &|r| format!("{r:.2}x"))).unwrap();
        writeln!(report, "| collector / floor, median of the rounds | {:.2}x |", ratios[ratios.len() / 2]).unwrap();
        writeln!(report, "| collector / floor, all rounds | **{:.2}x** (SPEC §9: at most 1.3x) |", collector_cpu / floor_cpu).unwrap();
        // Where the CPU goes, of both, summed over the rounds: user and kernel time, and two
        // counts of the kernel's work (minor page faults, voluntary context switches).
        let sum = |runs: &[Usage], f: &dyn Fn(&Usage) -> f64| runs.iter().map(f).sum::<f64>();
        for (what, decimals, f) in [
            ("user CPU seconds", 2, &(|u: &Usage| u.user_secs) as &dyn Fn(&Usage) -> f64),
            ("system CPU seconds", 2, &|u: &Usage| u.system_secs),
            ("minor page faults", 0, &|u: &Usage| u.minor_faults as f64),
            ("voluntary context switches", 0, &|u: &Usage| u.switches as f64),
            ("harness CPU seconds beside the run (emulator, receiver)", 2, &|u: &Usage| u.beside_secs),
        ] {
            let (c, fl) = (sum(&drain_runs, f), sum(&floor_runs, f));
            writeln!(report, "| {what}, all rounds: collector, floor, ratio | {c:.decimals$}, {fl:.decimals$}, {:.2}x |", c / fl.max(f64::MIN_POSITIVE))
                .unwrap();
        }
        writeln!(report, "| peak RSS, bare SDK loop | {:.1} MiB |\n", floor_runs[0].max_rss_kib as f64 / 1024.0).unwrap();
        let address = emulator.addr;
        let arn = facts[0].arn.clone();
        let events_path = format!("/flows/BACKLOG001/aliases/BACKLOGLIV/executions/{}/events?eventType=Node&maxResults=10", arn.rsplit('/').next().unwrap());
        let throughput = emulator_throughput(address, events_path, 8, 5).await;
        writeln!(report, "Emulator capacity, `backlog` scenario, 8 keep-alive clients on ListFlowExecutionEvents for 5 s: **{throughput:.0} requests/s**.\n")
            .unwrap();
        otlp.stop();
        emulator.stop().await;
    }

    if section("instructions") {
        // 1b. The drain's instructions under callgrind: a count that does not move with the
        // machine's load, of the collector and of its one-thread floor, and where they differ.
        instructions(&binary, &mut report).await;
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
            "| ListFlowExecutionEvents calls per poll | {:.0} (SPEC §9: at most one per stream per execution = {}; the first poll reads both streams, later ones the Node stream's tail page: {steady}) |",
            events_calls as f64 / polls,
            2 * steady
        )
        .unwrap();
        writeln!(report, "| ListFlowExecutions calls per poll | {:.1} |", list_calls as f64 / polls).unwrap();
        writeln!(report, "| CPU seconds per poll (collector) | {:.3} |", run.cpu_secs() / polls).unwrap();
        writeln!(report, "| peak RSS with {steady} tracked | {:.1} MiB |", run.max_rss_kib as f64 / 1024.0).unwrap();
        writeln!(report, "| peak RSS with none tracked | {:.1} MiB |", baseline.max_rss_kib as f64 / 1024.0).unwrap();
        writeln!(report, "| memory per tracked execution | {:.1} KiB |\n", (run.max_rss_kib - baseline.max_rss_kib) as f64 / steady as f64).unwrap();
        otlp.stop();
        emulator.stop().await;
    }

    if section("growing") {
        // 3. Long executions: events arriving over many polls, polled every second (the
        // issue's own case) and at the product's default interval (15 s).
        let intervals: Vec<u64> =
            std::env::var("BENCH_GROWING_INTERVALS").unwrap_or_else(|_| "1,15".into()).split(',').filter_map(|v| v.trim().parse().ok()).collect();
        for interval in intervals {
            growing(&mut report, &binary, interval, drain_cpu).await;
        }
    }

    if section("postgres") {
        // 4. The shared store: the drain on PostgreSQL next to SQLite, and 1 vs 3 replicas.
        let n = env_or("BENCH_PG_EXECUTIONS", 3000);
        let pg = support::PgServer::start().expect("PostgreSQL server binaries (Debian package postgresql)");
        let backlog = || {
            let mut s = Scenario::backlog(n / 3, 45);
            let first = s.flows[0].clone();
            s.flows = (1..=3)
                .map(|i| {
                    let mut f = first.clone();
                    f.id = format!("BACKLOG00{i}");
                    f
                })
                .collect();
            s
        };
        let flows = [("BACKLOG001", "backlog-1"), ("BACKLOG002", "backlog-2"), ("BACKLOG003", "backlog-3")];
        writeln!(report, "## The shared store (PostgreSQL)\n\n{n} finished executions of ~45 events over three flows; PostgreSQL 15 on loopback (fsync off), one database per run.\n").unwrap();
        writeln!(report, "| run | wall time | CPU-s per 1,000 events (all processes) |\n|---|---|---|").unwrap();
        for (label, replicas, database) in
            [("SQLite, 1 process", 1usize, None), ("PostgreSQL, 1 replica", 1, Some("one")), ("PostgreSQL, 3 replicas", 3, Some("three"))]
        {
            let emulator = support::emulator(backlog()).await;
            let otlp = support::OtlpServer::start().await;
            let dir = tempfile::tempdir().unwrap();
            let mut c = support::TestConfig::new(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), &flows);
            (c.rate, c.concurrency, c.interval_secs, c.settle_secs) = (100_000.0, 32, 2, 0);
            if let Some(db) = database {
                let admin = std::process::Command::new("psql")
                    .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "-c", &format!("create database {db}")])
                    .output();
                assert!(admin.is_ok_and(|o| o.status.success()), "create database {db}");
                c.state_url = Some((format!("postgresql://postgres@127.0.0.1:{}/{db}", pg.port), 10));
            }
            let path = dir.path().join("config.toml");
            c.write(&path);
            let facts = emulator.executions(now_nanos());
            let events: usize = facts.iter().map(|f| f.node_events.len() + f.flow_events.len()).sum();
            let started = Instant::now();
            let children: Vec<std::process::Child> = (0..replicas).map(|i| start_service(&binary, &path, &dir.path().join(format!("r{i}.log")))).collect();
            let mut children = children;
            let deadline = Instant::now() + Duration::from_secs(600);
            while otlp.receiver.roots().len() < facts.len() && Instant::now() < deadline {
                let exited = children.iter_mut().any(|c| c.try_wait().ok().flatten().is_some());
                assert!(!exited, "{label}: a replica exited: {}", std::fs::read_to_string(dir.path().join("r0.log")).unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let wall = started.elapsed();
            let mut cpu = 0.0;
            for child in children {
                let pid = child.id() as i32;
                cpu += support::cpu_seconds(child.id());
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                drop(child);
            }
            assert_eq!(otlp.receiver.roots().len(), facts.len(), "{label}: every execution arrived");
            writeln!(report, "| {label} | {:.2} s | {:.4} |", wall.as_secs_f64(), cpu / (events as f64 / 1000.0)).unwrap();
            otlp.stop();
            emulator.stop().await;
        }
        writeln!(report, "\n(Service mode, `interval_secs = 2`: the wall time includes the first poll of each replica and the lease hand-over as replicas join; CPU is read from /proc just before SIGTERM.)\n").unwrap();
        drop(pg);
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
            store.save_all(rows.clone()).await.unwrap();
            let done: Vec<bedrock_flow_exporter::state::Checkpoint> = rows
                .into_iter()
                .map(|t| bedrock_flow_exporter::state::Checkpoint { execution: t, state: String::new(), done: true, events: Default::default() })
                .collect();
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
