//! Shared test parts: an in-process OTLP receiver (gRPC and HTTP/protobuf), the emulator on
//! port 0, the real binary with a generated config, and a tiny HTTP client for loopback.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bedrock_flow_emulator::{self as emulator, EmulatorHandle, Scenario};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

mod tls;
pub use tls::TestPki;

/// A span as the receiver got it, with ids in hex and attributes as strings.
#[derive(Clone, Debug)]
pub struct Received {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub start: u64,
    pub end: u64,
    pub kind: i32,
    /// 0 unset, 1 ok, 2 error
    pub status_code: i32,
    pub status_message: String,
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<(String, BTreeMap<String, String>)>,
    pub links: Vec<String>,
    pub resource: BTreeMap<String, String>,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn any_to_string(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::ArrayValue(a)) => format!("[{}]", a.values.iter().map(|v| any_to_string(&Some(v.clone()))).collect::<Vec<_>>().join(",")),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<Received>>>,
    /// While set, every export is refused (UNAVAILABLE / 503).
    pub refuse: Arc<AtomicBool>,
    /// While set, every export waits (unanswered) until it is cleared: a backend that hangs.
    pub hold: Arc<AtomicBool>,
    pub refused: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// Headers (HTTP) or metadata (gRPC) of the last export request.
    pub headers: Arc<Mutex<BTreeMap<String, String>>>,
    /// Requests carrying a span of these traces (hex ids) are refused for good
    /// (INVALID_ARGUMENT / 400), as a backend does with data it cannot take.
    pub reject_traces: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// The encoded size of every request received.
    pub request_bytes: Arc<Mutex<Vec<usize>>>,
    /// The client certificate (DER) each request came with over TLS, or None.
    pub client_certificates: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    /// While set, every request is accepted less its last span, which is dropped and said so
    /// in the response's partial success (as a backend over its limits does).
    pub drop_last_span: Arc<AtomicBool>,
    /// The spans dropped that way.
    pub dropped: Arc<AtomicUsize>,
}

/// What the receiver answers to one request.
#[derive(PartialEq)]
enum Answer {
    Accepted,
    /// Accepted less this many spans: OK / 200 with a partial success.
    Partial(i64),
    /// Retryable: UNAVAILABLE / 503.
    Refused,
    /// For good: INVALID_ARGUMENT / 400.
    Rejected,
}

impl Receiver {
    /// Waits while `hold` is set.
    async fn held(&self) {
        while self.hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn accept(&self, mut request: ExportTraceServiceRequest) -> Answer {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.request_bytes.lock().unwrap().push(request.encoded_len());
        if self.refuse.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Answer::Refused;
        }
        let rejected = self.reject_traces.lock().unwrap().clone();
        if request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).any(|s| rejected.contains(&hex(&s.trace_id))) {
            return Answer::Rejected;
        }
        let mut dropped = 0;
        if self.drop_last_span.load(Ordering::SeqCst) {
            if let Some(spans) = request.resource_spans.last_mut().and_then(|r| r.scope_spans.last_mut()).map(|s| &mut s.spans) {
                dropped = i64::from(spans.pop().is_some());
                self.dropped.fetch_add(dropped as usize, Ordering::SeqCst);
            }
        }
        let mut out = self.spans.lock().unwrap();
        for rs in request.resource_spans {
            let resource: BTreeMap<String, String> =
                rs.resource.map(|r| r.attributes.iter().map(|kv| (kv.key.clone(), any_to_string(&kv.value))).collect()).unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Received {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        start: s.start_time_unix_nano,
                        end: s.end_time_unix_nano,
                        kind: s.kind,
                        status_code: s.status.as_ref().map(|st| st.code).unwrap_or(0),
                        status_message: s.status.as_ref().map(|st| st.message.clone()).unwrap_or_default(),
                        attributes: s.attributes.iter().map(|kv| (kv.key.clone(), any_to_string(&kv.value))).collect(),
                        events: s
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), e.attributes.iter().map(|kv| (kv.key.clone(), any_to_string(&kv.value))).collect()))
                            .collect(),
                        links: s.links.iter().map(|l| hex(&l.span_id)).collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
        if dropped > 0 {
            Answer::Partial(dropped)
        } else {
            Answer::Accepted
        }
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Distinct spans by span id (a re-export after a crash may deliver one twice).
    pub fn unique(&self) -> BTreeMap<String, Received> {
        self.spans().into_iter().map(|s| (s.span_id.clone(), s)).collect()
    }

    pub fn roots(&self) -> Vec<Received> {
        self.unique().into_values().filter(|s| s.parent_span_id.is_empty() || s.parent_span_id == "0000000000000000").collect()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.headers.lock().unwrap() =
            request.metadata().clone().into_headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
        if let Some(certs) = request.peer_certs() {
            self.client_certificates.lock().unwrap().push(certs.first().map(|c| c.to_vec()));
        }
        self.held().await;
        match self.accept(request.into_inner()) {
            Answer::Accepted => Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None })),
            Answer::Partial(n) => Ok(tonic::Response::new(partial(n))),
            Answer::Refused => Err(tonic::Status::unavailable("receiver refuses for the test")),
            Answer::Rejected => Err(tonic::Status::invalid_argument("receiver rejects this trace for the test")),
        }
    }
}

/// A response saying `n` spans were dropped.
fn partial(n: i64) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: Some(opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
            rejected_spans: n,
            error_message: format!("dropped {n} span(s) for the test"),
        }),
    }
}

pub struct OtlpServer {
    pub receiver: Receiver,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

/// The OTLP/HTTP handler; `peer` is the client certificate of the connection (TLS).
fn http_handler(receiver: Receiver, peer: Option<Option<Vec<u8>>>) -> bedrock_flow_serve::Handler {
    Arc::new(move |request: hyper::Request<hyper::body::Incoming>| {
        let receiver = receiver.clone();
        let peer = peer.clone();
        Box::pin(async move {
            if request.uri().path() != "/v1/traces" {
                return bedrock_flow_serve::respond(404, "text/plain", "no");
            }
            let headers: BTreeMap<String, String> = request.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
            let gzip = headers.get("content-encoding").map(String::as_str) == Some("gzip");
            *receiver.headers.lock().unwrap() = headers;
            if let Some(peer) = peer {
                receiver.client_certificates.lock().unwrap().push(peer);
            }
            let mut body = request.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            if gzip {
                let mut plain = Vec::new();
                if flate2::read::GzDecoder::new(body.as_slice()).read_to_end(&mut plain).is_err() {
                    return bedrock_flow_serve::respond(400, "text/plain", "bad gzip");
                }
                body = plain;
            }
            receiver.held().await;
            match ExportTraceServiceRequest::decode(body.as_slice()).map(|req| receiver.accept(req)) {
                Ok(Answer::Accepted) => {
                    bedrock_flow_serve::respond(200, "application/x-protobuf", ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
                }
                Ok(Answer::Partial(n)) => bedrock_flow_serve::respond(200, "application/x-protobuf", partial(n).encode_to_vec()),
                Ok(Answer::Refused) => bedrock_flow_serve::respond(503, "text/plain", "refusing"),
                Ok(Answer::Rejected) => bedrock_flow_serve::respond(400, "text/plain", "rejected for the test"),
                Err(_) => bedrock_flow_serve::respond(400, "text/plain", "bad protobuf"),
            }
        })
    })
}

/// Serves OTLP/HTTP over TLS: each connection's handshake, then HTTP/1 on it.
async fn serve_https(
    listener: tokio::net::TcpListener,
    receiver: Receiver,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let receiver = receiver.clone();
                tokio::spawn(async move {
                    // A failed handshake (an untrusted client, no client certificate) ends here.
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let peer = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                    let handler = http_handler(receiver, Some(peer));
                    let service = hyper::service::service_fn(move |request| {
                        let handler = handler.clone();
                        async move { Ok::<_, std::convert::Infallible>(handler(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                });
            }
            _ = stop.changed() => break,
        }
    }
}

impl OtlpServer {
    pub async fn start() -> OtlpServer {
        OtlpServer::start_with(None).await
    }

    /// Both receivers over TLS with the server certificate of `pki`; with `require_client`,
    /// a client certificate signed by its CA is required (mTLS).
    pub async fn start_tls(pki: &TestPki, require_client: bool) -> OtlpServer {
        OtlpServer::start_with(Some((pki, require_client))).await
    }

    async fn start_with(tls: Option<(&TestPki, bool)>) -> OtlpServer {
        let receiver = Receiver::default();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone()).max_decoding_message_size(256 << 20).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let mut grpc_stop = stop_rx.clone();
        let mut server = tonic::transport::Server::builder();
        if let Some((pki, require_client)) = tls {
            server = server.tls_config(pki.grpc_server(require_client)).unwrap();
        }
        tokio::spawn(async move {
            let incoming = tokio_stream_listener(grpc_listener);
            let _ = server
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = grpc_stop.changed().await;
                })
                .await;
        });
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        match tls {
            Some((pki, require_client)) => {
                tokio::spawn(serve_https(http_listener, receiver.clone(), pki.http_server(require_client), stop_rx));
            }
            None => {
                tokio::spawn(bedrock_flow_serve::serve(http_listener, http_handler(receiver.clone(), None), stop_rx, Duration::from_secs(1)));
            }
        }
        OtlpServer { receiver, grpc, http, stop }
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

fn tokio_stream_listener(listener: tokio::net::TcpListener) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}

/// The demo's flows and outcomes with no live traffic: `history` finished executions per flow
/// and nothing running at start. Tests adjust from there.
pub fn history_scenario(history: usize) -> Scenario {
    let mut s = Scenario::demo();
    s.traffic.executions_per_minute = 0.0;
    s.traffic.history = history;
    s.traffic.running_at_start = 0;
    s
}

pub async fn emulator(scenario: Scenario) -> EmulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    emulator::start(listener, scenario).await.unwrap()
}

/// Requests served per operation, from the emulator's stats.
pub fn requests(stats: &serde_json::Value, operation: &str) -> u64 {
    stats["requests"][operation].as_u64().unwrap_or(0)
}

/// The exporter's binary: `$BFE_BINARY`, else the one cargo built beside the running test or
/// bench (`target/<profile>/bedrock-flow-exporter`, next to its `deps/`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BFE_BINARY") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the path of the running test");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    profile_dir.join(format!("bedrock-flow-exporter{}", std::env::consts::EXE_SUFFIX))
}

/// A config file for the binary against `emulator_url`.
pub struct TestConfig {
    pub flows: Vec<(String, String)>,
    pub emulator_url: String,
    pub otlp: String,
    pub protocol: &'static str,
    pub state: PathBuf,
    pub listen: String,
    pub interval_secs: u64,
    pub settle_secs: u64,
    pub rate: f64,
    pub concurrency: usize,
    /// Appended to the [traces] section.
    pub extra: String,
    /// Appended to the [poll] section.
    pub poll_extra: String,
    /// The shared PostgreSQL store instead of `state` (SQLite), with `lease_secs`.
    pub state_url: Option<(String, u64)>,
}

impl TestConfig {
    pub fn new(dir: &Path, emulator_url: &str, otlp: &str, flows: &[(&str, &str)]) -> TestConfig {
        TestConfig {
            flows: flows.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            emulator_url: emulator_url.into(),
            otlp: otlp.into(),
            protocol: "grpc",
            state: dir.join("state.sqlite"),
            listen: "127.0.0.1:0".into(),
            interval_secs: 1,
            settle_secs: 1,
            rate: 1000.0,
            concurrency: 8,
            extra: String::new(),
            poll_extra: String::new(),
            state_url: None,
        }
    }

    pub fn write(&self, path: &Path) {
        let mut text = format!(
            "[server]\nlisten = \"{}\"\n[state]\n{}\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nmax_requests_per_second = {}\n\
             [poll]\ninterval_secs = {}\nsettle_secs = {}\nlookback_secs = 86400\nconcurrency = {}\n{}\n\
             [traces]\nendpoint = \"{}\"\nprotocol = \"{}\"\n{}\n",
            self.listen,
            match &self.state_url {
                Some((url, lease)) => format!("url = \"{url}\"\nlease_secs = {lease}"),
                None => format!("path = \"{}\"", self.state.display()),
            },
            self.emulator_url,
            self.rate,
            self.interval_secs,
            self.settle_secs,
            self.concurrency,
            self.poll_extra,
            self.otlp,
            self.protocol,
            self.extra
        );
        for (id, name) in &self.flows {
            text.push_str(&format!("[[flows]]\nid = \"{id}\"\nname = \"{name}\"\n"));
        }
        std::fs::write(path, text).unwrap();
    }
}

/// The binary with a clean environment: test credentials, no instance metadata, no OTEL_*.
pub fn command(args: &[&str]) -> Command {
    command_with(&binary(), args)
}

/// `command` for another build of the binary (the benchmark compares builds).
pub fn command_with(binary: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(binary);
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("OTEL_") || k == "BEDROCK_FLOW_EXPORTER_CONFIG" {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", "AKIDTEST").env("AWS_SECRET_ACCESS_KEY", "secret").env("AWS_EC2_METADATA_DISABLED", "true");
    c.env("RUST_LOG", "info");
    c
}

/// Runs the binary to its end (off the async workers): its exit status and output.
pub async fn run_binary(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        command(&args).output().unwrap()
    })
    .await
    .unwrap()
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks
}

/// A child process that is killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(args: &[&str], log: &Path) -> Running {
    let file = std::fs::File::create(log).unwrap();
    let child = command(args).stdout(Stdio::null()).stderr(file).spawn().unwrap();
    Running(child)
}

/// Waits for the binary's log to name its listening address.
pub fn wait_for_listen(log: &Path, timeout: Duration) -> SocketAddr {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(pos) = text.find("listen=") {
            let rest = &text[pos + 7..];
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            if let Ok(a) = addr.trim_matches('"').parse() {
                return a;
            }
        }
        assert!(Instant::now() < deadline, "binary did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET over HTTP/1.0 on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of one sample in a Prometheus text exposition (labels in any order), or None.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        if all {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// Sum of all samples of a metric whose labels include `labels`.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Waits until `f` is true or the timeout passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// sha256 prefixes as the SPEC defines the ids.
pub fn expected_root_id(arn: &str) -> String {
    hex(&bedrock_flow_exporter::span::root_span_id(arn))
}

pub fn expected_trace_id(arn: &str) -> String {
    hex(&bedrock_flow_exporter::span::trace_id(arn))
}

/// The usual arrangement of an end-to-end test: the emulator on a scenario, an OTLP receiver,
/// a temp dir with a config for the binary pointing at both.
pub struct Harness {
    pub emulator: EmulatorHandle,
    pub otlp: OtlpServer,
    pub dir: tempfile::TempDir,
    pub config: TestConfig,
}

impl Harness {
    pub async fn start(scenario: Scenario, flows: &[(&str, &str)]) -> Harness {
        let emulator = emulator(scenario).await;
        let otlp = OtlpServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = TestConfig::new(dir.path(), &emulator.endpoint(), &format!("http://{}", otlp.grpc), flows);
        Harness { emulator, otlp, dir, config }
    }

    /// Writes the config (after the test adjusted `self.config`) and returns its path.
    pub fn config_path(&self) -> String {
        let path = self.dir.path().join("config.toml");
        self.config.write(&path);
        path.display().to_string()
    }

    /// Starts `run` as a service; returns the child and the address of its HTTP endpoint.
    pub fn serve(&self) -> (Running, SocketAddr) {
        let path = self.config_path();
        let log = self.dir.path().join("run.log");
        let child = spawn(&["run", "--config", &path], &log);
        let address = wait_for_listen(&log, Duration::from_secs(20));
        (child, address)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run.log")).unwrap_or_default()
    }

    pub async fn stop(self) {
        self.otlp.stop();
        self.emulator.stop().await;
    }
}

/// A throw-away PostgreSQL cluster on a free loopback port (Debian's `postgresql`, whose
/// binaries are in `/usr/lib/postgresql/*/bin`), run as `postgres` when the tests run as root
/// (PostgreSQL refuses root). Stopped, and its directory removed, on drop.
pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_root: bool,
}

impl PgServer {
    /// `None` when no PostgreSQL server binaries are installed.
    pub fn start() -> Option<PgServer> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok()?.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).find(|b| b.join("initdb").exists())?;
        let dir = tempfile::tempdir().ok()?;
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            let status = std::process::Command::new("chown").args(["-R", "postgres", &dir.path().display().to_string()]).status().ok()?;
            assert!(status.success(), "chown of the cluster directory");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let server = PgServer { port, dir, bin, as_root };
        let data = server.dir.path().join("data");
        server.pg("initdb", &["-D", &data.display().to_string(), "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        server.control("start");
        Some(server)
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let tool = self.bin.join(tool).display().to_string();
        let mut command = if self.as_root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &tool]);
            c
        } else {
            std::process::Command::new(&tool)
        };
        let output = command.args(args).output().expect("PostgreSQL tool");
        assert!(output.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn control(&self, action: &str) {
        let data = self.dir.path().join("data").display().to_string();
        let socket_dir = self.dir.path().display().to_string();
        let log = self.dir.path().join("log").display().to_string();
        let options = format!("-p {} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off", self.port);
        match action {
            "start" => self.pg("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "-w", "start"]),
            _ => self.pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]),
        }
    }

    /// Stops the server (the data stays): the database "lost".
    pub fn stop(&self) {
        self.control("stop");
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.control("start");
    }

    /// One query through `psql` (Debian's client): its rows, one a line, fields as asked.
    pub fn sql(&self, query: &str) -> String {
        let out = Command::new("psql").args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-tAc", query]).output().unwrap();
        assert!(out.status.success(), "{query}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        let tool = self.bin.join("pg_ctl").display().to_string();
        let mut command = if self.as_root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &tool]);
            c
        } else {
            std::process::Command::new(&tool)
        };
        let _ = command.args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
    }
}

/// An OTLP/gRPC receiver that keeps only the id of each span it takes and whether it is a
/// root: what a bench needs to check that every span arrived, at a fraction of [`Receiver`]'s
/// cost (which decodes every attribute into strings), so that the receiver working beside the
/// process measured takes as little of the machine as a backend on another host would.
#[derive(Clone, Default)]
pub struct SpanIds {
    /// Span id -> whether it is a root (no parent).
    ids: Arc<Mutex<std::collections::HashMap<u64, bool>>>,
    requests: Arc<AtomicUsize>,
}

/// The parts of an export request [`SpanIds`] decodes; every other field is skipped.
mod ids_only {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
    }
}

impl SpanIds {
    /// Distinct spans received.
    pub fn unique(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    /// Distinct root spans received.
    pub fn roots(&self) -> usize {
        self.ids.lock().unwrap().values().filter(|root| **root).count()
    }

    /// Export requests received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn take(&self, request: ids_only::Request) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut ids = self.ids.lock().unwrap();
        for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            let id = u64::from_be_bytes(span.span_id.as_slice().try_into().unwrap_or([0; 8]));
            ids.insert(id, span.parent_span_id.iter().all(|b| *b == 0));
        }
    }

    /// Serves OTLP/gRPC trace exports on a loopback port until `stop` is sent true.
    pub async fn serve(&self) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let service = SpanIdsServer(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream_listener(listener), async move {
                    let _ = stop_rx.changed().await;
                })
                .await;
        });
        (address, stop)
    }
}

/// The gRPC service of [`SpanIds`]: the route and codec `TraceServiceServer` has, with a
/// request type that decodes span ids only.
#[derive(Clone)]
struct SpanIdsServer(SpanIds);

impl tonic::server::NamedService for SpanIdsServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::UnaryService<ids_only::Request> for SpanIdsServer {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<ids_only::Request>) -> Self::Future {
        self.0.take(request.into_inner());
        std::future::ready(Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None })))
    }
}

impl<B> tonic::codegen::Service<hyper::Request<B>> for SpanIdsServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::Request<B>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
                return Ok(tonic::Status::unimplemented("only Export").into_http());
            }
            let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, ids_only::Request>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(256 << 20), None);
            Ok(grpc.unary(service, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn span(id: u64, parent: Option<u64>) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: id.to_be_bytes().to_vec(),
            parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            name: format!("span {id}"),
            attributes: vec![KeyValue { key: "k".into(), value: Some(Any { value: Some(AnyValue::StringValue("v".repeat(40))) }), ..Default::default() }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn span_ids_counts_the_distinct_spans_and_roots_of_real_export_requests() {
        let ids = SpanIds::default();
        let (address, stop) = ids.serve().await;
        let mut client = TraceServiceClient::connect(format!("http://{address}")).await.unwrap();
        let request = |spans: Vec<Span>| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }, ScopeSpans { spans: vec![span(90, Some(1))], ..Default::default() }],
                ..Default::default()
            }],
        };
        // Six distinct spans: two roots (no parent; an all-zero parent) and four children (2, 3,
        // 5, 90), 3 and 90 sent twice, each request with two scope spans.
        client.export(request(vec![span(1, None), span(2, Some(1)), span(3, Some(1))])).await.unwrap();
        client.export(request(vec![span(3, Some(1)), span(4, Some(0)), span(5, Some(4))])).await.unwrap();
        assert_eq!((ids.unique(), ids.roots(), ids.requests()), (6, 2, 2));
        let _ = stop.send(true);
    }
}
