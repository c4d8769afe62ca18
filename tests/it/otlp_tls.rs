//! OTLP as hosted backends speak it (issue 14): `https://` with a private CA named by the
//! standard `OTEL_EXPORTER_OTLP_*` variables or the matching `traces.*` keys, mTLS, gzip. The
//! receivers are real TLS servers (tonic for gRPC, rustls + hyper for HTTP) with certificates
//! made in the test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bedrock_flow_exporter::timefmt::now_nanos;
use bedrock_flow_test_support::{self as support, OtlpServer, TestConfig, TestPki};

use crate::collector::model_and_received;

const ONE_FLOW: [(&str, &str); 1] = [("SUPPORTTRI", "support-triage")];

/// The receiver's address for `protocol`, as an https:// endpoint.
fn endpoint(otlp: &OtlpServer, protocol: &str) -> String {
    match protocol {
        "grpc" => format!("https://{}", otlp.grpc),
        _ => format!("https://{}", otlp.http),
    }
}

/// `run --once` with extra `[traces]` keys and environment: exit code and stderr.
async fn run_once(dir: &Path, config: &TestConfig, env: &[(&str, &Path)], wait_secs: u64) -> (Option<i32>, String, String) {
    let path = dir.join("config.toml");
    config.write(&path);
    let mut command = support::command(&["run", "--once", "--wait-secs", &wait_secs.to_string(), "--config", path.to_str().unwrap()]);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn scenario() -> bedrock_flow_emulator::Scenario {
    let mut s = support::history_scenario(4);
    s.outcomes.failed = 0.0;
    s.outcomes.timed_out = 0.0;
    s.outcomes.aborted = 0.0;
    s
}

/// The emulator, a temp dir with the certificates, TLS receivers (requiring a client
/// certificate with `mtls`) and a config for `protocol` pointing at them.
async fn arrange(protocol: &'static str, mtls: bool) -> (bedrock_flow_emulator::EmulatorHandle, tempfile::TempDir, TestPki, OtlpServer, TestConfig) {
    let emulator = support::emulator(scenario()).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(dir.path());
    let otlp = OtlpServer::start_tls(&pki, mtls).await;
    let mut config = TestConfig::new(dir.path(), &emulator.endpoint(), &endpoint(&otlp, protocol), &ONE_FLOW);
    config.protocol = protocol;
    (emulator, dir, pki, otlp, config)
}

/// Trusting the system's roots or another CA (`traces.certificate`), the export fails with the
/// reason in the log, nothing arrives and `run --once` exits 75 (the spans wait in the outbox);
/// the next run, trusting the receiver's CA through `OTEL_EXPORTER_OTLP_CERTIFICATE`, delivers
/// every span the model derives, once, uncompressed, with no client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_from_the_standard_variable_is_trusted_over_grpc_and_http() {
    for protocol in ["grpc", "http/protobuf"] {
        let (emulator, dir, pki, otlp, mut config) = arrange(protocol, false).await;

        // Without the CA (the system's roots), then with another CA from the config key:
        // nothing gets through, and the log says why.
        for certificate in [None, Some(&pki.other_ca)] {
            config.extra = certificate.map(|ca| format!("certificate = \"{}\"\n", ca.display())).unwrap_or_default();
            let (code, stdout, stderr) = run_once(dir.path(), &config, &[], 3).await;
            assert_eq!(code, Some(75), "{protocol} {certificate:?}: {stderr}");
            // Counted: the summary carries the failed requests (span_export_errors_total).
            assert!(stdout.contains("run --once: 0 executions exported") && stdout.contains("OTLP export request(s) failed"), "{protocol}: {stdout}");
            assert!(
                stderr.contains("span export failed") && stderr.contains("invalid peer certificate: UnknownIssuer"),
                "{protocol} {certificate:?}: {stderr}"
            );
            assert!(otlp.receiver.spans().is_empty(), "{protocol}: nothing accepted");
            assert!(stderr.contains("4 execution(s) whose spans the OTLP endpoint did not accept"), "{protocol}: {stderr}");
        }

        // The right CA from the standard variable wins over the key; the outbox and the
        // executions not counted are sent and counted now.
        let (code, stdout, stderr) = run_once(dir.path(), &config, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca)], 30).await;
        assert_eq!(code, Some(0), "{protocol}: {stderr}");
        assert!(stdout.contains("run --once: 4 executions exported") && !stdout.contains("failed"), "{protocol}: {stdout}");
        let facts: Vec<_> = emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id == "SUPPORTTRI").collect();
        assert_eq!(facts.len(), 4);
        let (expected, got) = model_and_received(&facts, &otlp.receiver);
        assert_eq!(got, expected, "{protocol}: every span of the model, over TLS");
        assert_eq!(otlp.receiver.spans().len(), expected.len(), "{protocol}: each once");
        let headers = otlp.receiver.headers.lock().unwrap().clone();
        assert!(!headers.contains_key("grpc-encoding") && !headers.contains_key("content-encoding"), "{protocol}: uncompressed: {headers:?}");
        assert!(otlp.receiver.client_certificates.lock().unwrap().iter().all(Option::is_none), "{protocol}: no client certificate asked for");
        otlp.stop();
        emulator.stop().await;
    }
}

/// The service with `env` added to the test environment; its log in `dir/<name>.log`.
fn serve(dir: &Path, config: &TestConfig, env: &[(&str, &Path)], name: &str) -> (support::Running, std::net::SocketAddr) {
    let path = dir.join("config.toml");
    config.write(&path);
    let log = dir.join(format!("{name}.log"));
    let mut command = support::command(&["run", "--config", path.to_str().unwrap()]);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let running = support::Running(child);
    (running, support::wait_for_listen(&log, Duration::from_secs(20)))
}

fn metric(address: std::net::SocketAddr, name: &str) -> f64 {
    support::sample(&support::http_get(address, "/metrics", None).1, name, &[]).unwrap_or(0.0)
}

/// A receiver that requires a client certificate: without one the export fails, is counted,
/// and nothing is counted as exported (the spans wait in the outbox); with the certificate and
/// key from `OTEL_EXPORTER_OTLP_TRACES_CLIENT_*` and `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`, the
/// receiver sees that certificate on every request, gzip on the wire, and every span of the
/// model once, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_presents_the_client_certificate_and_gzip_compresses() {
    for protocol in ["grpc", "http/protobuf"] {
        let (emulator, dir, pki, otlp, mut config) = arrange(protocol, true).await;
        config.extra = format!("certificate = \"{}\"\n", pki.ca.display());

        let (child, address) = serve(dir.path(), &config, &[], "without-client-certificate");
        let failed = support::eventually(Duration::from_secs(20), || metric(address, "bedrock_flow_exporter_span_export_errors_total") >= 2.0).await;
        assert!(failed, "{protocol}: export errors counted: {}", std::fs::read_to_string(dir.path().join("without-client-certificate.log")).unwrap());
        assert_eq!(metric(address, "bedrock_flow_exporter_spans_exported_total"), 0.0, "{protocol}");
        assert!(metric(address, "bedrock_flow_exporter_outbox_bytes") > 0.0, "{protocol}: the spans wait in the outbox");
        assert!(otlp.receiver.spans().is_empty(), "{protocol}: the receiver took nothing without a client certificate");
        drop(child);

        let env: [(&str, &Path); 3] = [
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &pki.client_certificate),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &pki.client_key),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", Path::new("gzip")),
        ];
        let (child, address) = serve(dir.path(), &config, &env, "with-client-certificate");
        let facts: Vec<_> = emulator.executions(now_nanos()).into_iter().filter(|f| f.flow_id == "SUPPORTTRI").collect();
        assert_eq!(facts.len(), 4);
        let expected = model_and_received(&facts, &otlp.receiver).0;
        let exported =
            support::eventually(Duration::from_secs(30), || metric(address, "bedrock_flow_exporter_spans_exported_total") >= expected.len() as f64).await;
        assert!(exported, "{protocol}: {}", std::fs::read_to_string(dir.path().join("with-client-certificate.log")).unwrap());
        let (expected, got) = model_and_received(&facts, &otlp.receiver);
        assert_eq!(got, expected, "{protocol}: every span of the model");
        assert_eq!(otlp.receiver.spans().len(), expected.len(), "{protocol}: each once");
        assert_eq!(metric(address, "bedrock_flow_exporter_spans_exported_total"), expected.len() as f64, "{protocol}: counted once");
        let certificates = otlp.receiver.client_certificates.lock().unwrap().clone();
        assert!(
            !certificates.is_empty() && certificates.iter().all(|c| c.as_deref() == Some(pki.client_der.as_slice())),
            "{protocol}: the client certificate on every request"
        );
        let headers: BTreeMap<String, String> = otlp.receiver.headers.lock().unwrap().clone();
        let encoding = if protocol == "grpc" { "grpc-encoding" } else { "content-encoding" };
        assert_eq!(headers.get(encoding).map(String::as_str), Some("gzip"), "{protocol}: {headers:?}");
        drop(child);
        otlp.stop();
        emulator.stop().await;
    }
}
