//! Faults told truthfully: what `run --once` reports when AWS fails, what it costs while
//! executions run, and an HTTP endpoint that does not spin when it cannot accept.

use std::time::Duration;

use bedrock_flow_exporter::timefmt::now_nanos;

use bedrock_flow_test_support::{self as support, run_binary, Harness};

const ONE_FLOW: [(&str, &str); 1] = [("SUPPORTTRI", "support-triage")];

fn once_args(h: &Harness, wait_secs: u64) -> Vec<String> {
    ["run", "--once", "--wait-secs", &wait_secs.to_string(), "--config", &h.config_path()].iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_lists_a_flow_again_until_its_listing_succeeds() {
    let mut scenario = support::history_scenario(5);
    // Two listings' worth of attempts fail (the SDK makes four per call), the third succeeds.
    scenario.faults.fail_first_requests = 8;
    let h = Harness::start(scenario, &ONE_FLOW).await;
    let output = run_binary(once_args(&h, 60)).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("run --once: 5 executions exported"), "{stdout}");
    assert_eq!(h.otlp.receiver.roots().len(), 5);
    let listings = support::requests(&h.emulator.stats(), "ListFlowExecutions");
    assert!(listings > 8, "listed after the failures: {listings} attempts");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_names_a_flow_never_listed_and_exits_75() {
    let mut scenario = support::history_scenario(5);
    scenario.faults.fail_first_requests = u64::MAX;
    let h = Harness::start(scenario, &ONE_FLOW).await;
    let output = run_binary(once_args(&h, 3)).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(75), "never 0 when a flow was never listed: {stdout}\n{stderr}");
    assert!(stderr.contains("1 flow(s) could not be listed") && stderr.contains("flow SUPPORTTRI: ListFlowExecutions failed (server)"), "{stderr}");
    // Listed again with backoff within the 3 s: more than one SDK call's 4 attempts, far
    // fewer than a tight loop would make.
    let listings = support::requests(&h.emulator.stats(), "ListFlowExecutions");
    assert!((8..=16).contains(&listings), "{listings} listing attempts");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_polls_a_running_execution_once_per_interval() {
    let mut scenario = support::history_scenario(0);
    scenario.traffic.running_at_start = 1;
    scenario.traffic.running_secs = 600;
    let h = Harness::start(scenario, &ONE_FLOW).await;
    let wait_secs = 4;
    let output = run_binary(once_args(&h, wait_secs)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    let facts: Vec<_> = h.emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id == "SUPPORTTRI").collect();
    assert_eq!(facts.len(), 1);
    assert!(stderr.contains("1 execution(s) not finished") && stderr.contains(&facts[0].arn), "{stderr}");
    // Every page read once, plus one re-read of the Node stream's tail page per poll (the Flow
    // stream of a running execution is read at its first read and its final one): one poll a
    // second (interval_secs = 1) for the wait, and one at the start.
    let pages = (facts[0].node_events.len().div_ceil(10) + facts[0].flow_events.len().div_ceil(10)) as u64;
    let polls = wait_secs + 1;
    let stats = h.emulator.stats();
    let event_calls = support::requests(&stats, "ListFlowExecutionEvents");
    assert!(event_calls <= pages + polls, "{event_calls} event calls for {pages} pages and {polls} polls");
    let listings = support::requests(&stats, "ListFlowExecutions");
    assert!(listings <= polls, "one listing per poll while it runs: {listings}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_backs_off_when_it_cannot_accept_instead_of_spinning() {
    let h = Harness::start(support::history_scenario(0), &ONE_FLOW).await;
    let (child, exporter) = h.serve();
    let pid = child.0.id();
    assert!(support::eventually(Duration::from_secs(20), || support::http_get(exporter, "/-/ready", None).0 == 200).await);
    // Leave the process two descriptors to spare, then queue more connections than that.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let mut original = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    let tight = libc::rlimit { rlim_cur: open + 2, rlim_max: libc::RLIM_INFINITY };
    assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut original) }, 0);
    let tight = libc::rlimit { rlim_max: original.rlim_max, ..tight };
    assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &tight, std::ptr::null_mut()) }, 0);
    let held: Vec<std::net::TcpStream> = (0..8).map(|_| std::net::TcpStream::connect(exporter).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = support::cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = support::cpu_seconds(pid) - before;
    assert!(used < 0.4, "{used:.2} CPU-s in 2 s while accept fails: the loop spins");
    drop(held);
    assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &original, std::ptr::null_mut()) }, 0);
    assert!(
        support::eventually(Duration::from_secs(10), || support::http_get(exporter, "/-/healthy", None).0 == 200).await,
        "accepting again once descriptors are free"
    );
    assert!(h.log().contains("cannot accept a connection"), "the cause is logged");
    drop(child);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_problem_is_counted_once_while_the_export_of_its_spans_is_retried() {
    let mut scenario = support::history_scenario(6);
    scenario.faults.malformed_ratio = 1.0;
    let h = Harness::start(scenario, &[("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")]).await;
    h.otlp.receiver.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let (child, exporter) = h.serve();
    let problems = || support::sum_samples(&support::http_get(exporter, "/metrics", None).1, "bedrock_flow_exporter_invalid_events_total", &[]);
    assert!(support::eventually(Duration::from_secs(20), || problems() > 0.0).await, "bad data counted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = problems();
    // The export backs off 1 s, 2 s, 4 s: three or more retries in the next 8 s.
    let refused = h.otlp.receiver.refused.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(h.otlp.receiver.refused.load(std::sync::atomic::Ordering::SeqCst) >= refused + 2, "the export was retried");
    assert_eq!(problems(), during, "retried exports count nothing again");
    h.otlp.receiver.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(support::eventually(Duration::from_secs(30), || h.otlp.receiver.roots().len() == 18).await, "roots: {}", h.otlp.receiver.roots().len());
    assert_eq!(problems(), during, "nor does the export that succeeds");
    drop(child);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_refused_for_good_is_parked_and_the_others_go_on() {
    for protocol in ["grpc", "http/protobuf"] {
        let mut h = Harness::start(support::history_scenario(12), &ONE_FLOW).await;
        h.config.protocol = protocol;
        if protocol != "grpc" {
            h.config.otlp = format!("http://{}", h.otlp.http);
        }
        // Small requests, so that the refused execution shares them with others.
        h.config.extra = "batch_size = 40\n".into();
        let facts: Vec<_> = h.emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id == "SUPPORTTRI").collect();
        assert_eq!(facts.len(), 12);
        let refused = &facts[5].arn;
        h.otlp.receiver.reject_traces.lock().unwrap().insert(support::expected_trace_id(refused));
        let (child, exporter) = h.serve();
        assert!(
            support::eventually(Duration::from_secs(30), || h.otlp.receiver.roots().len() == 11).await,
            "{protocol}: every other execution arrives: {}",
            h.otlp.receiver.roots().len()
        );
        let metrics = || support::http_get(exporter, "/metrics", None).1;
        assert!(
            support::eventually(Duration::from_secs(10), || support::sample(&metrics(), "bedrock_flow_exporter_executions_parked", &[]) == Some(1.0)).await,
            "{protocol}: the refused execution is parked"
        );
        let text = metrics();
        let reason = if protocol == "grpc" { "invalid_argument" } else { "bad_request" };
        assert_eq!(support::sample(&text, "bedrock_flow_exporter_span_export_refused_total", &[("reason", reason)]), Some(1.0), "{protocol}");
        assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_total", &[]), 11.0, "the parked one is not counted yet");
        assert!(!h.otlp.receiver.roots().iter().any(|r| r.trace_id == support::expected_trace_id(refused)));
        let (_, page) = support::http_get(exporter, "/", None);
        assert!(page.contains("Parked executions (1)") && page.contains(refused.as_str()) && page.contains(reason), "{page}");
        // Retryable failures do not park anything.
        assert!(h.log().contains("refused this execution's spans for good"));
        drop(child);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stay_within_the_byte_bound_and_a_huge_span_is_cut_to_fit() {
    let mut scenario = support::history_scenario(6);
    // Every execution carries one kind of bad data, among them megabyte documents.
    scenario.faults.malformed_ratio = 1.0;
    let mut h = Harness::start(scenario, &[("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")]).await;
    let max_bytes = 256 * 1024;
    h.config.extra = format!("capture_content = \"full\"\nmax_content_bytes = 4000000\nmax_batch_bytes = {max_bytes}\n");
    let (child, exporter) = h.serve();
    assert!(support::eventually(Duration::from_secs(40), || h.otlp.receiver.roots().len() == 18).await, "roots: {}", h.otlp.receiver.roots().len());
    let sizes = h.otlp.receiver.request_bytes.lock().unwrap().clone();
    assert!(sizes.len() > 1 && sizes.iter().all(|s| *s <= max_bytes), "every request within {max_bytes} bytes: {sizes:?}");
    let (_, text) = support::http_get(exporter, "/metrics", None);
    let cut = support::sample(&text, "bedrock_flow_exporter_spans_cut_total", &[]).unwrap();
    assert!(cut >= 1.0, "the megabyte spans were cut: {cut}");
    let truncated = h
        .otlp
        .receiver
        .spans()
        .iter()
        .flat_map(|s| s.events.clone())
        .filter(|(_, attrs)| attrs.get("content").is_some_and(|c| c.contains("…[truncated ")))
        .count();
    assert!(truncated as f64 >= cut, "their content carries the marker");
    assert_eq!(support::sample(&text, "bedrock_flow_exporter_executions_parked", &[]), Some(0.0), "nothing refused");
    drop(child);
    h.stop().await;
}

const THREE_FLOWS: [(&str, &str); 3] = [("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")];

fn event_pages(facts: &[emulator::ExecutionFacts]) -> u64 {
    facts.iter().map(|f| (f.node_events.len().div_ceil(10) + f.flow_events.len().div_ceil(10)) as u64).sum()
}

use bedrock_flow_emulator as emulator;

/// The OTLP endpoint down during a backlog drain: the closed spans wait in the outbox (nothing
/// counted yet), reading pauses at `traces.outbox_max_bytes` and resumes by itself, and once the
/// endpoint is back every span arrives with the ids the model derives, every execution is
/// counted once, and every page of events was read exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_during_a_drain_reads_nothing_twice_and_loses_nothing() {
    let mut h = Harness::start(support::history_scenario(50), &THREE_FLOWS).await;
    h.config.extra = "outbox_max_bytes = 1048576\n".into();
    h.otlp.receiver.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let facts = h.emulator.executions(now_nanos());
    assert_eq!(facts.len(), 150);
    let (child, exporter) = h.serve();
    let metrics = || support::http_get(exporter, "/metrics", None).1;
    let outbox = || support::sample(&metrics(), "bedrock_flow_exporter_outbox_bytes", &[]).unwrap_or(0.0);
    assert!(support::eventually(Duration::from_secs(30), || outbox() >= 1048576.0).await, "the outbox fills to its bound: {}", outbox());
    let calls = || support::requests(&h.emulator.stats(), "ListFlowExecutionEvents");
    let at_bound = calls();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(calls(), at_bound, "reading pauses at the bound");
    assert!(at_bound < event_pages(&facts), "the pause came before the end of the backlog");
    assert!(h.log().contains("the outbox is full"), "the pause is said");
    let text = metrics();
    assert_eq!(support::sample(&text, "bedrock_flow_exporter_reading_paused", &[]), Some(1.0), "the pause is a gauge");
    assert_eq!(support::sample(&text, "bedrock_flow_exporter_outbox_max_bytes", &[]), Some(1048576.0), "beside the bound");
    let page = support::http_get(exporter, "/", None).1;
    assert!(page.contains("Reading is paused"), "and on the status page: {page}");
    assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_total", &[]), 0.0, "nothing is counted before it is accepted");
    assert!(h.otlp.receiver.roots().is_empty());
    h.otlp.receiver.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(support::eventually(Duration::from_secs(60), || h.otlp.receiver.roots().len() == 150).await, "roots: {}", h.otlp.receiver.roots().len());
    assert!(support::eventually(Duration::from_secs(10), || outbox() == 0.0).await, "the outbox empties");
    let text = metrics();
    assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_total", &[]), 150.0, "each execution counted once");
    assert_eq!(calls(), event_pages(&facts), "every page of events read exactly once, outage or not");
    assert!(h.log().contains("reading resumes"));
    assert_eq!(support::sample(&text, "bedrock_flow_exporter_reading_paused", &[]), Some(0.0), "the gauge says it resumed");
    assert!(!support::http_get(exporter, "/", None).1.contains("Reading is paused"));
    let (expected, got) = crate::collector::model_and_received(&facts, &h.otlp.receiver);
    assert_eq!(got, expected, "every span of the model, with its id and parent");
    drop(child);
    h.stop().await;
}

/// The endpoint down while executions are still running (their events arriving over several
/// polls): the event calls are the pages once plus each poll's tail page per stream, no re-read
/// from the start; once the endpoint is back everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_while_executions_grow_costs_only_their_polls() {
    let mut scenario = support::history_scenario(0);
    scenario.traffic.running_at_start = 2;
    scenario.traffic.running_secs = 10;
    let mut h = Harness::start(scenario, &THREE_FLOWS).await;
    h.config.settle_secs = 1;
    h.otlp.receiver.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let (child, exporter) = h.serve();
    let started = std::time::Instant::now();
    let running = || support::sum_samples(&support::http_get(exporter, "/metrics", None).1, "bedrock_flow_executions_running", &[]);
    assert!(support::eventually(Duration::from_secs(10), || running() > 0.0).await);
    assert!(support::eventually(Duration::from_secs(40), || running() == 0.0).await, "they finish");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(h.otlp.receiver.roots().is_empty(), "the endpoint was down throughout");
    h.otlp.receiver.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(support::eventually(Duration::from_secs(30), || h.otlp.receiver.roots().len() == 6).await, "roots: {}", h.otlp.receiver.roots().len());
    let facts = h.emulator.executions(now_nanos());
    let polls = started.elapsed().as_secs() + 1;
    let calls = support::requests(&h.emulator.stats(), "ListFlowExecutionEvents");
    let bound = event_pages(&facts) + 2 * 6 * polls;
    assert!(calls <= bound, "{calls} event calls: more than the pages once plus two tail pages per poll ({bound})");
    assert!(calls >= event_pages(&facts));
    let (expected, got) = crate::collector::model_and_received(&facts, &h.otlp.receiver);
    assert_eq!(got, expected, "every span of the model, with its id and parent");
    drop(child);
    h.stop().await;
}

/// A second process on the service's SQLite file (a backfill started by hand with the
/// service's config, a copy of the unit) stops at its start with exit 1, naming the file and
/// the process that holds it, before it reads or counts anything; the service goes on. Once
/// the service is killed (SIGKILL: the kernel lets its lock go) the file opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_state_file_stops_at_its_start_and_the_first_goes_on() {
    let h = Harness::start(support::history_scenario(20), &ONE_FLOW).await;
    let (service, exporter) = h.serve();
    let counted = || support::sum_samples(&support::http_get(exporter, "/metrics", None).1, "bedrock_flow_executions_total", &[]);
    assert!(support::eventually(Duration::from_secs(30), || counted() == 20.0).await, "the service counts the backlog: {}", counted());
    let second = run_binary(once_args(&h, 5)).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&second.stdout), String::from_utf8_lossy(&second.stderr));
    assert_eq!(second.status.code(), Some(1), "{stdout}\n{stderr}");
    let state = h.dir.path().join("state.sqlite").display().to_string();
    assert!(stderr.contains(&format!("state store {state} is in use by process {}", service.0.id())), "names the file and its holder: {stderr}");
    assert!(!stdout.contains("run --once:"), "it did no pass: {stdout}");
    let log = h.log();
    assert!(support::eventually(Duration::from_secs(5), || support::http_get(exporter, "/-/ready", None).0 == 200).await, "the service is still ready: {log}");
    assert_eq!(counted(), 20.0, "and counted each execution once");
    drop(service); // SIGKILL, waited for
    let third = run_binary(once_args(&h, 30)).await;
    assert_eq!(third.status.code(), Some(0), "the lock went with the killed process: {}", String::from_utf8_lossy(&third.stderr));
    assert!(String::from_utf8_lossy(&third.stdout).contains("run --once: 0 executions exported"), "{}", String::from_utf8_lossy(&third.stdout));
    h.stop().await;
}

/// The SQLite file locked for writing by another program (a backup, an operator's `sqlite3`
/// left in a transaction) for longer than the busy timeout: `run --once` exits 75 saying so,
/// having read no further than the chunk whose checkpoint was refused;
/// the service counts every failed write by what it was doing and says it on `/`, nothing is
/// counted or acknowledged meanwhile, and once the lock goes the backlog arrives whole, each
/// execution counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_store_that_refuses_writes_is_counted_and_shown_and_nothing_is_lost() {
    let h = Harness::start(support::history_scenario(100), &ONE_FLOW).await;
    let path = h.dir.path().join("state.sqlite");
    drop(bedrock_flow_exporter::state::SqliteStore::open(&path).unwrap()); // the schema, as a first start leaves it
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    // `run --once` meanwhile: 75, and the failures said beside the executions they held back.
    let once = run_binary(once_args(&h, 8)).await;
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert_eq!(once.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("100 execution(s) not finished within --wait-secs 8"), "{stderr}");
    assert!(stderr.contains("state store operation(s) failed during the run; the last: cannot") && stderr.contains("database is locked"), "{stderr}");
    // The refused checkpoint of the first chunk (16 executions at concurrency 8) ended the
    // cycle's reading: no more than those executions' pages were read, far from the backlog's.
    let facts: Vec<_> = h.emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id == "SUPPORTTRI").collect();
    assert_eq!(facts.len(), 100);
    let mut pages: Vec<u64> = facts.iter().map(|f| event_pages(std::slice::from_ref(f))).collect();
    pages.sort_unstable_by(|a, b| b.cmp(a));
    let one_chunk: u64 = pages[..16].iter().sum();
    let read = support::requests(&h.emulator.stats(), "ListFlowExecutionEvents");
    assert!(read > 0 && read <= one_chunk, "{read} event calls: more than one chunk's pages ({one_chunk}; the backlog has {})", event_pages(&facts));
    let (service, exporter) = h.serve();
    let metrics = || support::http_get(exporter, "/metrics", None).1;
    let errors = |operation: &str| support::sample(&metrics(), "bedrock_flow_exporter_state_store_errors_total", &[("operation", operation)]).unwrap_or(-1.0);
    assert_eq!(errors("prune"), 0.0, "each operation's series is there from the start");
    assert!(support::eventually(Duration::from_secs(40), || errors("checkpoint") >= 1.0).await, "the refused checkpoint is counted: {}", h.log());
    assert!(errors("listing") >= 1.0, "and the refused save of the listing");
    let text = metrics();
    assert_eq!(support::sum_samples(&text, "bedrock_flow_executions_total", &[]), 0.0, "nothing is counted before its checkpoint");
    assert_eq!(support::sample(&text, "bedrock_flow_exporter_state_store_up", &[]), Some(1.0), "one process's file is there, only locked");
    let page = support::http_get(exporter, "/", None).1;
    assert!(page.contains("The state store failed") && page.contains("database is locked"), "said on the status page: {page}");
    assert!(h.log().contains("state store: cannot write the checkpoint"), "and in the log");
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    let counted = || support::sum_samples(&metrics(), "bedrock_flow_executions_total", &[]);
    assert!(support::eventually(Duration::from_secs(40), || counted() == 100.0).await, "the backlog is counted once the lock goes: {}", counted());
    let failed = errors("checkpoint");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(errors("checkpoint"), failed, "no failure after the lock went");
    assert_eq!(counted(), 100.0, "each execution counted once");
    let (expected, got) = crate::collector::model_and_received(&facts, &h.otlp.receiver);
    assert_eq!(got, expected, "every span of the model, with its id and parent");
    drop(service);
    h.stop().await;
}
