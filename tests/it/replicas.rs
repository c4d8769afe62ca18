//! Replicas on a shared PostgreSQL store (SPEC §11), against a real PostgreSQL server started by
//! the test on a free loopback port: the flows split over the replicas, a killed replica's
//! flows taken over from the shared checkpoints, nothing lost, nothing counted twice; a replica
//! paused past its lease is fenced.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bedrock_flow_exporter::timefmt::now_nanos;
use bedrock_flow_test_support::{self as support, Harness, PgServer, Running, TestConfig};

const FLOWS: [(&str, &str); 3] = [("SUPPORTTRI", "support-triage"), ("DOCBATCH01", "doc-batch"), ("REFINELOOP", "refine-loop")];

struct Replica {
    child: Running,
    address: std::net::SocketAddr,
    log: std::path::PathBuf,
}

fn start_replica(h: &Harness, name: &str) -> Replica {
    start_replica_with(h, &h.config, name)
}

fn start_replica_with(h: &Harness, config: &TestConfig, name: &str) -> Replica {
    let path = h.dir.path().join(format!("{name}.toml"));
    config.write(&path);
    let log = h.dir.path().join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut command = support::command(&["run", "--config", &path.display().to_string()]);
    command.env("RUST_LOG", "info,bedrock_flow_exporter::counted=debug").stdout(std::process::Stdio::null()).stderr(file);
    let child = Running(command.spawn().unwrap());
    let address = support::wait_for_listen(&log, Duration::from_secs(30));
    Replica { child, address, log }
}

/// The executions a replica counted (from its log, which survives SIGKILL).
fn counted(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("execution counted"))
        .filter_map(|l| l.split("arn=").nth(1).map(|r| r.split_whitespace().next().unwrap_or("").trim_matches('"').to_string()))
        .collect()
}

fn leases(r: &Replica) -> Vec<String> {
    let text = support::http_get(r.address, "/metrics", None).1;
    text.lines().filter(|l| l.starts_with("bedrock_flow_exporter_lease_held{") && l.ends_with(" 1")).map(|l| l.to_string()).collect()
}

/// The member id a replica coordinates as (it logs it with each lease it takes).
fn member_of(r: &Replica) -> String {
    let log = std::fs::read_to_string(&r.log).unwrap_or_default();
    log.lines().find_map(|l| l.split("member=").nth(1)).map(|m| m.split_whitespace().next().unwrap_or("").trim_matches('"').to_string()).expect("a lease taken")
}

fn kill(r: &Replica, signal: i32) {
    assert_eq!(unsafe { libc::kill(r.child.0.id() as i32, signal) }, 0);
}

/// Three replicas on a backlog over three flows with executions still running: each takes one
/// flow; SIGKILL one mid-drain, then another; a new one joins. Every span of the model arrives
/// (ids and parents as derived), the executions counted over all replicas are each execution
/// exactly once, and the request budget of the account and region held for all together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_the_flows_and_take_over_without_loss_or_double_counts() {
    let pg = PgServer::start().expect("PostgreSQL server binaries (Debian package postgresql)");
    let mut scenario = support::history_scenario(60);
    scenario.traffic.running_at_start = 2;
    scenario.traffic.running_secs = 12;
    scenario.faults.latency_ms = 15;
    let mut h = Harness::start(scenario, &FLOWS).await;
    h.config.state_url = Some((pg.url(), 4));
    h.config.concurrency = 2;
    // A budget that binds: each replica alone could spend it (2 at once, 15 ms a call).
    h.config.rate = 60.0;
    let facts = h.emulator.executions(now_nanos());
    let replicas: Vec<Replica> = ["r1", "r2", "r3"].iter().map(|n| start_replica(&h, n)).collect();
    assert!(
        support::eventually(Duration::from_secs(30), || replicas.iter().all(|r| leases(r).len() == 1)).await,
        "each replica holds one flow: {:?}",
        replicas.iter().map(leases).collect::<Vec<_>>()
    );
    let page = support::http_get(replicas[0].address, "/", None).1;
    assert!(page.contains("Leases"), "the status page shows who holds which flow: {page}");
    // Mid-drain: some executions counted, not all.
    assert!(support::eventually(Duration::from_secs(60), || replicas.iter().map(|r| counted(&r.log).len()).sum::<usize>() >= 20).await);
    assert!(replicas.iter().map(|r| counted(&r.log).len()).sum::<usize>() < facts.len(), "killed mid-drain");
    kill(&replicas[0], libc::SIGKILL);
    let started = std::time::Instant::now();
    assert!(
        support::eventually(Duration::from_secs(20), || replicas[1..].iter().map(|r| leases(r).len()).sum::<usize>() == 3).await,
        "the dead replica's flow is taken over"
    );
    assert!(started.elapsed() < Duration::from_secs(4 + 1 + 3), "within lease_secs plus a poll (and a scrape): {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill(&replicas[1], libc::SIGKILL);
    let joined = start_replica(&h, "r4");
    assert!(
        support::eventually(Duration::from_secs(90), || h.otlp.receiver.roots().len() == facts.len()).await,
        "roots: {} of {}",
        h.otlp.receiver.roots().len(),
        facts.len()
    );
    assert!(
        support::eventually(Duration::from_secs(20), || leases(&replicas[2]).len() + leases(&joined).len() == 3 && !leases(&joined).is_empty()).await,
        "the new replica takes its share"
    );
    // A replica keeps no series of a flow it gave away (only the configured-flows gauge).
    let given: Vec<String> = leases(&joined).iter().filter_map(|l| l.split("flow_id=\"").nth(1)?.split('"').next().map(str::to_string)).collect();
    assert!(!given.is_empty());
    let survivor = support::http_get(replicas[2].address, "/metrics", None).1;
    for flow_id in &given {
        let kept: Vec<&str> =
            survivor.lines().filter(|l| l.contains(&format!("flow_id=\"{flow_id}\"")) && !l.starts_with("bedrock_flow_exporter_flow_configured")).collect();
        assert!(kept.is_empty(), "series of {flow_id}, now held by the new replica, left on the one that gave it: {kept:?}");
    }
    assert!(survivor.contains("bedrock_flow_executions_total{"), "it keeps the series of the flows it holds");
    // Every span of the model (of the executions as they ended), with its id and parent.
    let facts = h.emulator.executions(now_nanos());
    let (expected, got) = crate::collector::model_and_received(&facts, &h.otlp.receiver);
    let missing: Vec<_> = expected.iter().filter(|(k, _)| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|(k, _)| !expected.contains_key(*k)).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty() && got == expected, "every span arrives with its id and parent; missing {missing:?}, extra {extra:?}");
    // Each execution counted exactly once over all replicas (killed ones included).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all: Vec<String> = replicas.iter().chain(std::iter::once(&joined)).flat_map(|r| counted(&r.log)).collect();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no execution counted twice");
    assert_eq!(unique, facts.iter().map(|f| &f.arn).collect::<BTreeSet<_>>(), "every execution counted");
    // The request budget held for the replicas together, not for each.
    let busiest = h.emulator.stats()["busiest_second"].as_u64().unwrap();
    assert!(busiest <= 66, "{busiest} requests in the busiest second: the budget of 60/s is shared by lease, not spent by each replica");
    assert!(busiest >= 20, "{busiest}: the budget was used");
    // The new replica (which never lost a flow) shows what its log counted; the one that gave a
    // flow away dropped that flow's series, so it shows no more than it counted.
    let shown = |r: &Replica| support::sum_samples(&support::http_get(r.address, "/metrics", None).1, "bedrock_flow_executions_total", &[]) as usize;
    assert_eq!(shown(&joined), counted(&joined.log).len());
    assert!(shown(&replicas[2]) <= counted(&replicas[2].log).len());
    drop(replicas);
    drop(joined);
    h.stop().await;
    drop(pg);
}

/// A replica paused (SIGSTOP) past its lease loses its flows to the other, and once resumed it
/// writes no checkpoint: its writes are refused (counted, logged) and it drops the flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_is_fenced() {
    let pg = PgServer::start().expect("PostgreSQL server binaries (Debian package postgresql)");
    let mut scenario = support::history_scenario(0);
    scenario.traffic.running_at_start = 3;
    scenario.traffic.running_secs = 30;
    scenario.traffic.running_spread = true;
    let mut h = Harness::start(scenario, &FLOWS[..2]).await;
    h.config.state_url = Some((pg.url(), 3));
    let a = start_replica(&h, "a");
    assert!(support::eventually(Duration::from_secs(20), || leases(&a).len() == 2).await, "alone, it takes both flows");
    let b = start_replica(&h, "b");
    assert!(support::eventually(Duration::from_secs(20), || leases(&a).len() == 1 && leases(&b).len() == 1).await, "they split");
    // The lease a holds, and its counter, before the pause.
    let sql = |q: &str| pg.sql(q);
    let b_member = sql("SELECT owner FROM leases WHERE owner IS NOT NULL ORDER BY owner");
    let owners: Vec<String> = b_member.lines().map(str::to_string).collect();
    assert_eq!(owners.len(), 2);
    let a_row = sql("SELECT flow_key || ' ' || counter || ' ' || owner FROM leases WHERE owner IS NOT NULL ORDER BY flow_key");
    kill(&a, libc::SIGSTOP);
    assert!(support::eventually(Duration::from_secs(20), || leases(&b).len() == 2).await, "b takes over the paused one's flow");
    let owner_now = sql("SELECT owner FROM leases WHERE owner IS NOT NULL GROUP BY owner");
    assert_eq!(owner_now.lines().count(), 1, "one owner of both now");
    let (taken_key, old_counter) = a_row
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f[2] != owner_now)
        .map(|f| (f[0].clone(), f[1].parse::<i64>().unwrap()))
        .expect("the lease a held");
    let flow_id = taken_key.rsplit('/').next().unwrap().to_string();
    let takeover_at: i64 = sql("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint").parse().unwrap();
    kill(&a, libc::SIGCONT);
    assert!(
        support::eventually(Duration::from_secs(20), || {
            let text = support::http_get(a.address, "/metrics", None).1;
            support::sample(&text, "bedrock_flow_exporter_lease_held", &[]).is_none() && !text.contains("bedrock_flow_exporter_lease_held{")
                || std::fs::read_to_string(&a.log).unwrap_or_default().contains("checkpoint was refused")
        })
        .await,
        "the resumed replica holds nothing, or its write was refused"
    );
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    let text = support::http_get(a.address, "/metrics", None).1;
    let rejected = support::sample(&text, "bedrock_flow_exporter_checkpoint_rejected_total", &[]).unwrap_or(0.0);
    assert!(rejected >= 1.0 || log.contains("no longer holds the flow's lease"), "fenced or dropped: {rejected}\n{log}");
    // The audit trail: after the takeover, no row of that flow was written with a's old lease,
    // while b's writes with its new one are there.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stale = sql(&format!("SELECT count(*) FROM executions WHERE flow_id = '{flow_id}' AND written_at > {takeover_at} AND lease_counter <= {old_counter}"));
    assert_eq!(stale, "0", "a checkpoint written with the lost lease");
    let fresh: i64 =
        sql(&format!("SELECT count(*) FROM executions WHERE flow_id = '{flow_id}' AND written_at > {takeover_at} AND lease_counter > {old_counter}"))
            .parse()
            .unwrap();
    assert!(fresh >= 1, "the new holder's checkpoints are visible to the check");
    assert!(support::eventually(Duration::from_secs(60), || h.otlp.receiver.roots().len() == 6).await, "everything arrives: {}", h.otlp.receiver.roots().len());
    drop(a);
    drop(b);
    h.stop().await;
    drop(pg);
}

/// A replica whose export hangs past its lease (a backend that stops answering) does not renew;
/// the other replica takes its flow with a new counter, and when the hung export gives up, the
/// stale replica's checkpoint is refused by the fence as a whole: counted in
/// `checkpoint_rejected_total`, nothing of it in the database, and everything still arrives
/// through the new holder. Unlike SIGSTOP, this puts the stale write attempt at a known moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stuck_in_an_export_past_its_lease_has_its_checkpoint_refused() {
    let pg = PgServer::start().expect("PostgreSQL server binaries (Debian package postgresql)");
    let mut scenario = support::history_scenario(0);
    scenario.traffic.running_at_start = 3;
    scenario.traffic.running_secs = 25;
    scenario.traffic.running_spread = true;
    let mut h = Harness::start(scenario, &FLOWS[..2]).await;
    h.config.state_url = Some((pg.url(), 3));
    // An export gives up after 4 s (twice: the exporter retries once): past the 3 s lease.
    h.config.extra = "timeout_secs = 4\n".into();
    let a = start_replica(&h, "a");
    assert!(support::eventually(Duration::from_secs(20), || leases(&a).len() == 2).await, "alone, it takes both flows");
    // b sends to a receiver of its own, which keeps answering.
    let other = support::OtlpServer::start().await;
    let mut b_config = TestConfig::new(h.dir.path(), &h.emulator.endpoint(), &format!("http://{}", other.grpc), &FLOWS[..2]);
    b_config.state_url = h.config.state_url.clone();
    b_config.extra = h.config.extra.clone();
    let b = start_replica_with(&h, &b_config, "b");
    assert!(support::eventually(Duration::from_secs(20), || leases(&a).len() == 1 && leases(&b).len() == 1).await, "they split");
    let a_lease = pg.sql(&format!("SELECT flow_key || ' ' || counter FROM leases WHERE owner IS NOT NULL AND owner <> '{}'", member_of(&b)));
    let (taken_key, old_counter) = a_lease.split_once(' ').map(|(k, c)| (k.to_string(), c.parse::<i64>().unwrap())).expect("a's lease");
    let flow_id = taken_key.rsplit('/').next().unwrap().to_string();

    h.otlp.receiver.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(support::eventually(Duration::from_secs(20), || leases(&b).len() == 2).await, "b takes the flow of the replica stuck in its export");
    let takeover_at: i64 = pg.sql("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint").parse().unwrap();
    let rejected = || support::sample(&support::http_get(a.address, "/metrics", None).1, "bedrock_flow_exporter_checkpoint_rejected_total", &[]).unwrap_or(0.0);
    assert!(
        support::eventually(Duration::from_secs(30), || rejected() >= 1.0).await,
        "the stale checkpoint is refused: {}",
        std::fs::read_to_string(&a.log).unwrap()
    );
    assert!(std::fs::read_to_string(&a.log).unwrap().contains("a checkpoint was refused"));
    h.otlp.receiver.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let stale =
        pg.sql(&format!("SELECT count(*) FROM executions WHERE flow_id = '{flow_id}' AND written_at > {takeover_at} AND lease_counter <= {old_counter}"));
    assert_eq!(stale, "0", "nothing written with the lost lease after the takeover");
    // Every execution arrives, at one receiver or the other.
    let roots = || h.otlp.receiver.roots().into_iter().chain(other.receiver.roots()).map(|s| s.span_id).collect::<BTreeSet<_>>().len();
    assert!(support::eventually(Duration::from_secs(90), || roots() == 6).await, "everything arrives: {}", roots());
    drop(a);
    drop(b);
    other.stop();
    h.stop().await;
}

/// The database lost for a while: work stops (no guessing), `/-/ready` turns 503, the metric and
/// `/` say why; when it returns work resumes by itself, and every execution arrives and is
/// counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_stops_work_and_it_resumes_by_itself() {
    let pg = PgServer::start().expect("PostgreSQL server binaries (Debian package postgresql)");
    let mut scenario = support::history_scenario(0);
    scenario.traffic.running_at_start = 2;
    scenario.traffic.running_secs = 20;
    scenario.traffic.running_spread = true;
    let mut h = Harness::start(scenario, &FLOWS[..2]).await;
    h.config.state_url = Some((pg.url(), 4));
    let r = start_replica(&h, "only");
    assert!(support::eventually(Duration::from_secs(20), || support::http_get(r.address, "/-/ready", None).0 == 200).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.stop();
    let up = || support::sample(&support::http_get(r.address, "/metrics", None).1, "bedrock_flow_exporter_state_store_up", &[]);
    assert!(support::eventually(Duration::from_secs(20), || up() == Some(0.0)).await, "the metric says the store is down");
    assert_eq!(support::http_get(r.address, "/-/ready", None).0, 503, "not ready without the store");
    let failed =
        support::sample(&support::http_get(r.address, "/metrics", None).1, "bedrock_flow_exporter_state_store_errors_total", &[("operation", "coordinate")]);
    assert!(failed.is_some_and(|n| n >= 1.0), "each failed coordination is counted: {failed:?}");
    assert!(support::http_get(r.address, "/", None).1.contains("cannot be reached"), "the status page says why");
    let roots_while_down = h.otlp.receiver.roots().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.restart();
    assert!(support::eventually(Duration::from_secs(30), || up() == Some(1.0)).await, "work resumes by itself");
    assert!(support::eventually(Duration::from_secs(20), || support::http_get(r.address, "/-/ready", None).0 == 200).await);
    assert!(
        support::eventually(Duration::from_secs(60), || h.otlp.receiver.roots().len() == 4).await,
        "every execution arrives: {} ({roots_while_down} while down)",
        h.otlp.receiver.roots().len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = counted(&r.log);
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (4, 4), "each counted once: {all:?}");
    assert!(std::fs::read_to_string(&r.log).unwrap().contains("the state store cannot be reached"));
    drop(r);
    h.stop().await;
    drop(pg);
}

/// Leaving on purpose hands the flows over at once: `run --once` on the shared store takes every
/// free flow, exports everything, and gives the leases back, so a replica started after it
/// holds both flows within seconds (not the 20 s lease) and counts nothing again; with that
/// replica holding both, a second `run --once` gets the flow the replica gives back to its fair
/// share and names the other as held by that replica (exit 75); a replica stopped with SIGTERM
/// hands its flow to the other replica within seconds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_hands_the_flows_over_at_once_and_run_once_joins_as_a_member() {
    let pg = PgServer::start().expect("PostgreSQL server binaries (Debian package postgresql)");
    let lease_secs = 20;
    let mut h = Harness::start(support::history_scenario(3), &FLOWS[..2]).await;
    h.config.state_url = Some((pg.url(), lease_secs));
    let facts: Vec<_> = h.emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id != "REFINELOOP").collect();
    assert_eq!(facts.len(), 6);
    let once = |name: &str, wait: u64| {
        let path = h.dir.path().join(format!("{name}.toml"));
        h.config.write(&path);
        let mut command = support::command(&["run", "--once", "--wait-secs", &wait.to_string(), "--config", &path.display().to_string()]);
        command.env("RUST_LOG", "info,bedrock_flow_exporter::counted=debug");
        command
    };

    // Alone, the job takes both flows, does all the work and gives the leases back.
    let first = tokio::task::spawn_blocking({
        let mut command = once("once-1", 60);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&first.stderr));
    assert_eq!(first.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("run --once: 6 executions exported"), "{stdout}");
    let counted_by_once = stderr.lines().filter(|l| l.contains("execution counted")).count();
    assert_eq!(counted_by_once, 6);
    assert_eq!(pg.sql("SELECT count(*) FROM leases WHERE owner IS NOT NULL"), "0", "every lease given back");
    assert_eq!(pg.sql("SELECT count(*) FROM members"), "0", "the job left the members");

    // A replica started now takes both flows at its first cycle and has nothing to count.
    let started = std::time::Instant::now();
    let a = start_replica(&h, "a");
    assert!(support::eventually(Duration::from_secs(10), || leases(&a).len() == 2).await, "a takes both given-back flows");
    assert!(started.elapsed() < Duration::from_secs(lease_secs / 2), "not after the lease: {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(counted(&a.log).is_empty(), "nothing counted twice: {:?}", counted(&a.log));

    // A second job while a holds both: a gives one back to its fair share, the job takes it;
    // the other stays a's, and the job says so.
    let a_member = pg.sql("SELECT id FROM members");
    let second = tokio::task::spawn_blocking({
        let mut command = once("once-2", 6);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "not done while a flow is another replica's: {stderr}");
    assert!(stderr.contains("1 flow(s) were held by other replicas") && stderr.contains(&format!("held by {a_member}")), "{stderr}");
    assert_eq!(stderr.matches("this replica took the flow's lease").count(), 1, "the job got the flow a gave back: {stderr}");
    assert!(String::from_utf8_lossy(&second.stdout).contains("run --once: 0 executions exported"), "everything was done before");
    assert!(support::eventually(Duration::from_secs(10), || leases(&a).len() == 2).await, "a takes back what the job gave back");

    // SIGTERM: b, started beside a, gets a's flows within seconds of a's exit.
    let b = start_replica(&h, "b");
    assert!(support::eventually(Duration::from_secs(20), || leases(&a).len() == 1 && leases(&b).len() == 1).await, "they split");
    let mut a = a;
    kill(&a, libc::SIGTERM);
    let stopped = std::time::Instant::now();
    assert_eq!(a.child.0.wait().unwrap().code(), Some(0), "a stops cleanly");
    assert!(support::eventually(Duration::from_secs(10), || leases(&b).len() == 2).await, "b takes a's flow");
    assert!(stopped.elapsed() < Duration::from_secs(lease_secs / 2), "handed over, not expired: {:?}", stopped.elapsed());
    assert!(std::fs::read_to_string(&a.log).unwrap().contains("left the replicas: the leases are given back"));
    let all: BTreeSet<String> = [&a.log, &b.log].iter().flat_map(|l| counted(l)).collect();
    assert!(all.is_empty(), "the replicas counted nothing the job had counted: {all:?}");
    h.stop().await;
}
