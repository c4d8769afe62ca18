//! Configuration (SPEC §4): a TOML file, unknown keys rejected, standard `AWS_*` and `OTEL_*`
//! environment variables applied on top, then validated. Every error names its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub state: StateConfig,
    pub aws: AwsConfig,
    pub poll: PollConfig,
    pub traces: TracesConfig,
    pub metrics: MetricsConfig,
    pub flows: Vec<FlowConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP endpoint (`/`, `/metrics`, `/-/healthy`, `/-/ready`).
    pub listen: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The embedded SQLite state store; created on first start (default `data/state.sqlite`
    /// when no `url` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The shared PostgreSQL store of replicas (SPEC §11): `postgresql://user:password@host/db`;
    /// what it leaves out comes from the usual `PG*` variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Replicas: how long a flow's lease lasts without renewal.
    pub lease_secs: u64,
}

impl StateConfig {
    /// The SQLite file, when the store is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match (&self.path, &self.url) {
            (_, Some(_)) => None,
            (Some(p), None) => Some(p.clone()),
            (None, None) => Some(PathBuf::from("data/state.sqlite")),
        }
    }

    /// The URL with its password replaced by `***` (for logs and `check-config`).
    pub fn url_redacted(&self) -> Option<String> {
        self.url.as_deref().map(redact_url_password)
    }
}

/// `postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    pub endpoint_url: Option<String>,
    /// Client-side budget of HTTP attempts per second, per account and region (retries included).
    pub max_requests_per_second: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    pub interval_secs: u64,
    /// On an empty state: executions created within this window are collected.
    pub lookback_secs: u64,
    /// After an execution ends, its events are read once more after this delay.
    pub settle_secs: u64,
    /// How often the execution listing is read to the last page even when the pages seen
    /// prove a newest-first order (the safety net of the early stop).
    pub full_scan_secs: u64,
    /// Executions worked on at the same time.
    pub concurrency: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureContent {
    Off,
    Truncated,
    Full,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    pub enabled: bool,
    /// Base URL of the OTLP receiver; for HTTP, `/v1/traces` is appended unless present.
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    pub capture_content: CaptureContent,
    pub max_content_bytes: usize,
    /// Regexes whose matches are replaced by `[REDACTED]` before export.
    pub redact: Vec<String>,
    /// Extra headers (gRPC metadata) sent with every export, e.g. an API key.
    pub headers: BTreeMap<String, String>,
    /// Spans per OTLP request.
    pub batch_size: usize,
    /// Encoded bytes per OTLP request (4 MiB: what a gRPC receiver accepts by default); a
    /// span larger than this is cut down, captured content first.
    pub max_batch_bytes: usize,
    /// Bytes of spans the durable outbox holds while the endpoint does not accept them; at the
    /// bound reading pauses until it accepts again.
    pub outbox_max_bytes: u64,
    /// Seconds one export request may take (`OTEL_EXPORTER_OTLP_TIMEOUT` is in milliseconds and
    /// is rounded up to whole seconds).
    pub timeout_secs: u64,
    /// PEM file of the CA certificates that verify the receiver (`https://` endpoints); when
    /// set, only these are trusted, as OpenTelemetry SDKs do. Unset: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    /// PEM file of the client certificate (chain) presented to a receiver that requires mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, RSA or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    pub compression: Compression,
}

/// Compression of OTLP export requests (`grpc-encoding` / `content-encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Per-node series; turn off for very large flows.
    pub node_labels: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Flow id or ARN.
    pub id: String,
    /// Default: every alias.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Display name: span names and the `flow_name` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: "0.0.0.0:9464".into() }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { path: None, url: None, lease_secs: 30 }
    }
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig { region: None, profile: None, role_arn: None, endpoint_url: None, max_requests_per_second: 5.0 }
    }
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig { interval_secs: 15, lookback_secs: 86_400, settle_secs: 60, full_scan_secs: 300, concurrency: 8 }
    }
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            enabled: true,
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: Protocol::Grpc,
            service_name: "bedrock-flows".into(),
            capture_content: CaptureContent::Off,
            max_content_bytes: 8192,
            redact: Vec::new(),
            headers: BTreeMap::new(),
            batch_size: 512,
            max_batch_bytes: 4 << 20,
            outbox_max_bytes: 256 << 20,
            timeout_secs: 10,
            certificate: None,
            client_certificate: None,
            client_key: None,
            compression: Compression::None,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { node_labels: true }
    }
}

/// The path used when none is given: `$BEDROCK_FLOW_EXPORTER_CONFIG`, else the default file.
pub fn default_path() -> PathBuf {
    std::env::var_os("BEDROCK_FLOW_EXPORTER_CONFIG").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("config/bedrock-flow-exporter.toml"))
}

impl Config {
    /// Reads, applies the environment, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        config.apply_env(|key| std::env::var(key).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Standard environment variables win over the file where one exists (SPEC §4). For the
    /// OTLP ones the `OTEL_EXPORTER_OTLP_TRACES_*` form wins over `OTEL_EXPORTER_OTLP_*`; a
    /// value that cannot be used is an error naming the variable, never ignored.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let non_empty = |key: &str| var(key).filter(|v| !v.is_empty());
        // (variable, value) of the first of the traces-specific and the general variable set.
        let otlp = |suffix: &str| {
            [format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"), format!("OTEL_EXPORTER_OTLP_{suffix}")]
                .into_iter()
                .find_map(|name| non_empty(&name).map(|value| (name, value)))
        };
        let from_env = |key: &str, name: &str, problem: String| invalid(format!("{key} (from {name})"), problem);
        if let Some(v) = non_empty("AWS_REGION").or_else(|| non_empty("AWS_DEFAULT_REGION")) {
            self.aws.region = Some(v);
        }
        if let Some(v) = non_empty("AWS_PROFILE") {
            self.aws.profile = Some(v);
        }
        if let Some(v) = non_empty("AWS_ENDPOINT_URL") {
            self.aws.endpoint_url = Some(v);
        }
        if let Some(v) = non_empty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| non_empty("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            self.traces.endpoint = v;
        }
        if let Some((name, value)) = otlp("PROTOCOL") {
            self.traces.protocol = match value.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => return Err(from_env("traces.protocol", &name, format!("{value:?} is not one of grpc, http/protobuf"))),
            };
        }
        if let Some((name, value)) = otlp("COMPRESSION") {
            self.traces.compression = match value.as_str() {
                "gzip" => Compression::Gzip,
                "none" => Compression::None,
                _ => return Err(from_env("traces.compression", &name, format!("{value:?} is not one of none, gzip"))),
            };
        }
        if let Some((name, value)) = otlp("TIMEOUT") {
            let millis: u64 = value.trim().parse().map_err(|_| from_env("traces.timeout_secs", &name, format!("{value:?} is not a number of milliseconds")))?;
            self.traces.timeout_secs = millis.div_ceil(1000);
        }
        if let Some((_, value)) = otlp("CERTIFICATE") {
            self.traces.certificate = Some(PathBuf::from(value));
        }
        if let Some((_, value)) = otlp("CLIENT_CERTIFICATE") {
            self.traces.client_certificate = Some(PathBuf::from(value));
        }
        if let Some((_, value)) = otlp("CLIENT_KEY") {
            self.traces.client_key = Some(PathBuf::from(value));
        }
        if let Some(v) = non_empty("OTEL_SERVICE_NAME") {
            self.traces.service_name = v;
        }
        if let Some(v) = non_empty("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| non_empty("OTEL_EXPORTER_OTLP_HEADERS")) {
            for pair in v.split(',') {
                if let Some((k, val)) = pair.split_once('=') {
                    let decode = |s: &str| percent_encoding::percent_decode_str(s.trim()).decode_utf8_lossy().into_owned();
                    self.traces.headers.insert(decode(k), decode(val));
                }
            }
        }
        if non_empty("OTEL_TRACES_EXPORTER").as_deref() == Some("none") {
            self.traces.enabled = false;
        }
        if let Some(v) = non_empty("BEDROCK_FLOW_EXPORTER_STATE_URL") {
            self.state.url = Some(v);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("server.listen", format!("{:?} is not an address like 0.0.0.0:9464 ({e})", self.server.listen)))?;
        if self.state.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid("state.path", "must not be empty"));
        }
        if let Some(url) = &self.state.url {
            if self.state.path.is_some() {
                return Err(invalid("state.url", "set either state.path (SQLite, one process) or state.url (PostgreSQL, replicas), not both"));
            }
            if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
                return Err(invalid("state.url", format!("{:?} is not a postgresql:// URL", redact_url_password(url))));
            }
            if let Err(e) = url.parse::<tokio_postgres::Config>() {
                return Err(invalid("state.url", format!("{:?}: {e}", redact_url_password(url))));
            }
        }
        if self.state.lease_secs < 3 {
            return Err(invalid("state.lease_secs", "must be at least 3"));
        }
        if self.state.url.is_some() && self.poll.interval_secs >= self.state.lease_secs {
            return Err(invalid(
                "state.lease_secs",
                format!("must be longer than poll.interval_secs ({}): leases are renewed once a cycle", self.poll.interval_secs),
            ));
        }
        if !(self.aws.max_requests_per_second > 0.0 && self.aws.max_requests_per_second.is_finite()) {
            return Err(invalid("aws.max_requests_per_second", "must be a positive number"));
        }
        check_url("aws.endpoint_url", self.aws.endpoint_url.as_deref())?;
        check_role("aws.role_arn", self.aws.role_arn.as_deref())?;
        if self.poll.interval_secs < 1 {
            return Err(invalid("poll.interval_secs", "must be at least 1"));
        }
        if self.poll.lookback_secs < 1 {
            return Err(invalid("poll.lookback_secs", "must be at least 1"));
        }
        if self.poll.concurrency < 1 || self.poll.concurrency > 256 {
            return Err(invalid("poll.concurrency", "must be between 1 and 256"));
        }
        if self.traces.enabled {
            check_url("traces.endpoint", Some(&self.traces.endpoint))?;
        }
        if self.traces.max_content_bytes < 128 {
            return Err(invalid("traces.max_content_bytes", "must be at least 128"));
        }
        if self.traces.max_batch_bytes < 64 << 10 {
            return Err(invalid("traces.max_batch_bytes", "must be at least 65536"));
        }
        if self.traces.outbox_max_bytes < 1 << 20 {
            return Err(invalid("traces.outbox_max_bytes", "must be at least 1048576"));
        }
        if self.traces.timeout_secs < 1 {
            return Err(invalid("traces.timeout_secs", "must be at least 1"));
        }
        if self.traces.enabled {
            self.check_tls()?;
        }
        if self.traces.batch_size < 1 {
            return Err(invalid("traces.batch_size", "must be at least 1"));
        }
        for (i, pattern) in self.traces.redact.iter().enumerate() {
            regex::Regex::new(pattern).map_err(|e| invalid(format!("traces.redact[{i}]"), format!("not a valid regex: {e}")))?;
        }
        if self.flows.is_empty() {
            return Err(invalid("flows", "name at least one flow ([[flows]] with id = \"...\")"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, flow) in self.flows.iter().enumerate() {
            let key = |k: &str| format!("flows[{i}].{k}");
            let id = bare_flow_id(&flow.id).ok_or_else(|| invalid(key("id"), format!("{:?} is neither a 10-character flow id nor a flow ARN", flow.id)))?;
            if !seen.insert(id.clone()) {
                return Err(invalid(key("id"), format!("flow {id} is configured twice")));
            }
            for (j, alias) in flow.aliases.iter().enumerate() {
                if alias.is_empty() || !alias.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(invalid(format!("flows[{i}].aliases[{j}]"), format!("{alias:?} is not an alias id")));
                }
            }
            check_url(&key("endpoint_url"), flow.endpoint_url.as_deref())?;
            check_role(&key("role_arn"), flow.role_arn.as_deref())?;
        }
        Ok(())
    }

    /// The TLS files must be readable PEM of the right kind, the client certificate and key
    /// set together: a typo is found by `check-config`, not by the first export.
    fn check_tls(&self) -> Result<(), ConfigError> {
        let traces = &self.traces;
        let pem = |key: &str, path: &Option<PathBuf>, label: &str| -> Result<(), ConfigError> {
            let Some(path) = path else { return Ok(()) };
            let text = std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
            let text = String::from_utf8_lossy(&text);
            if !text.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----"))) {
                return Err(invalid(key, format!("{} holds no PEM block ending in {label:?}", path.display())));
            }
            Ok(())
        };
        pem("traces.certificate", &traces.certificate, "CERTIFICATE")?;
        pem("traces.client_certificate", &traces.client_certificate, "CERTIFICATE")?;
        pem("traces.client_key", &traces.client_key, "PRIVATE KEY")?;
        match (&traces.client_certificate, &traces.client_key) {
            (Some(_), None) => Err(invalid("traces.client_key", "must be set with traces.client_certificate (mTLS needs both)")),
            (None, Some(_)) => Err(invalid("traces.client_certificate", "must be set with traces.client_key (mTLS needs both)")),
            _ => Ok(()),
        }
    }

    /// The effective configuration as TOML (what `check-config` prints), never a password.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.state.url = self.state.url_redacted();
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

fn check_url(key: &str, url: Option<&str>) -> Result<(), ConfigError> {
    match url {
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 => {
            Err(invalid(key, format!("{u:?} is not an http:// or https:// URL")))
        }
        _ => Ok(()),
    }
}

fn check_role(key: &str, role: Option<&str>) -> Result<(), ConfigError> {
    match role {
        Some(r) if !(r.starts_with("arn:aws") && r.contains(":role/")) => Err(invalid(key, format!("{r:?} is not an IAM role ARN"))),
        _ => Ok(()),
    }
}

impl Config {
    /// The AWS account every configured flow and role ARN names, when there is exactly one
    /// (the `cloud.account.id` of the trace resource; each root span carries its own).
    pub fn single_account(&self) -> Option<String> {
        let account_of = |arn: &str| arn.starts_with("arn:").then(|| arn.split(':').nth(4).map(str::to_string)).flatten().filter(|a| !a.is_empty());
        let mut accounts: Vec<String> = self
            .flows
            .iter()
            .flat_map(|f| [Some(f.id.as_str()), f.role_arn.as_deref()])
            .chain([self.aws.role_arn.as_deref()])
            .flatten()
            .filter_map(account_of)
            .collect();
        accounts.sort();
        accounts.dedup();
        (accounts.len() == 1).then(|| accounts.remove(0))
    }
}

/// The bare 10-character id of a flow given by id or ARN.
pub fn bare_flow_id(identifier: &str) -> Option<String> {
    let id = match identifier.strip_prefix("arn:aws") {
        Some(rest) => rest.split_once(":flow/")?.1,
        None => identifier,
    };
    (id.len() == 10 && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, String> {
        let config = Config::parse(text)?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn minimal_config_gets_the_spec_defaults() {
        let c = check("[[flows]]\nid = \"ABCDEFGHIJ\"\n").unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9464");
        assert_eq!(c.poll.interval_secs, 15);
        assert_eq!(c.poll.settle_secs, 60);
        assert_eq!(c.aws.max_requests_per_second, 5.0);
        assert_eq!(c.traces.protocol, Protocol::Grpc);
        assert_eq!(c.traces.capture_content, CaptureContent::Off);
        assert_eq!(c.traces.max_content_bytes, 8192);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[poll]\nintervall_secs = 3\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "intervall_secs"),
            ("[poll]\ninterval_secs = 0\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "poll.interval_secs"),
            ("[[flows]]\nid = \"short\"\n", "flows[0].id"),
            ("[traces]\nprotocol = \"udp\"\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "protocol"),
            ("[traces]\nredact = [\"(\"]\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "traces.redact[0]"),
            ("[server]\nlisten = \"nowhere\"\n[[flows]]\nid = \"ABCDEFGHIJ\"\n", "server.listen"),
            ("", "flows"),
        ];
        for (text, key) in cases {
            let error = check(text).unwrap_err();
            assert!(error.contains(key), "{key} not named in: {error}");
        }
    }

    #[test]
    fn environment_wins() {
        let mut c = Config::parse("[traces]\nendpoint = \"http://a:4317\"\n[[flows]]\nid = \"ABCDEFGHIJ\"\n").unwrap();
        c.apply_env(|k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://b:4318".into()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
            "OTEL_SERVICE_NAME" => Some("svc".into()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=abc%3D,x=y".into()),
            "AWS_REGION" => Some("eu-west-1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.traces.endpoint, "http://b:4318");
        assert_eq!(c.traces.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.traces.service_name, "svc");
        assert_eq!(c.traces.headers["api-key"], "abc=");
        assert_eq!(c.aws.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn otlp_tls_compression_and_timeout_come_from_the_standard_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let ca = file("ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let key = file("key.pem", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n");
        let text = "[traces]\nendpoint = \"https://otel.example:4317\"\ncertificate = \"/nowhere/ca.pem\"\ntimeout_secs = 30\n[[flows]]\nid = \"ABCDEFGHIJ\"\n";
        let env = |pairs: Vec<(&'static str, String)>| move |k: &str| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| v.clone());
        let mut c = Config::parse(text).unwrap();
        c.apply_env(env(vec![
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/general/ca.pem".into()),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca.clone()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", ca.clone()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.clone()),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500".into()),
        ]))
        .unwrap();
        assert_eq!(c.traces.certificate.as_deref(), Some(Path::new(&ca)), "the TRACES_ variable wins over the general one and the file");
        assert_eq!(c.traces.client_certificate.as_deref(), Some(Path::new(&ca)));
        assert_eq!(c.traces.client_key.as_deref(), Some(Path::new(&key)));
        assert_eq!(c.traces.compression, Compression::Gzip);
        assert_eq!(c.traces.timeout_secs, 3, "milliseconds, rounded up to seconds");
        c.validate().unwrap();
        assert!(c.to_toml().contains("compression = \"gzip\""), "{}", c.to_toml());

        // Values that cannot be used name the key and the variable.
        for (name, value, key) in [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "traces.compression (from OTEL_EXPORTER_OTLP_COMPRESSION)"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "10s", "traces.timeout_secs (from OTEL_EXPORTER_OTLP_TRACES_TIMEOUT)"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "traces.protocol (from OTEL_EXPORTER_OTLP_PROTOCOL)"),
        ] {
            let error = Config::parse(text).unwrap().apply_env(env(vec![(name, value.into())])).unwrap_err().to_string();
            assert!(error.contains(key) && error.contains(value), "{error}");
        }
        // Files that are missing, of the wrong kind, or half of a pair.
        let wrong_kind = key.clone();
        for (traces, key_named) in [
            ("certificate = \"/nowhere/ca.pem\"".to_string(), "traces.certificate"),
            (format!("certificate = \"{wrong_kind}\""), "traces.certificate"),
            (format!("certificate = \"{ca}\"\nclient_certificate = \"{ca}\""), "traces.client_key"),
            (format!("certificate = \"{ca}\"\nclient_key = \"{key}\""), "traces.client_certificate"),
            (format!("certificate = \"{ca}\"\nclient_certificate = \"{ca}\"\nclient_key = \"{ca}\""), "traces.client_key"),
            (format!("certificate = \"{ca}\"\ncompression = \"brotli\""), "compression"),
        ] {
            let text = format!("[traces]\nendpoint = \"https://otel.example:4317\"\n{traces}\n[[flows]]\nid = \"ABCDEFGHIJ\"\n");
            let error = check(&text).unwrap_err();
            assert!(error.contains(key_named), "{key_named} not named in: {error}");
        }
    }

    #[test]
    fn single_account_from_arns() {
        let one = Config::parse("[[flows]]\nid = \"arn:aws:bedrock:us-east-1:111111111111:flow/ABCDEFGHIJ\"\n[[flows]]\nid = \"KLMNOPQRST\"\n").unwrap();
        assert_eq!(one.single_account().as_deref(), Some("111111111111"));
        let two = Config::parse(
            "[aws]\nrole_arn = \"arn:aws:iam::222222222222:role/r\"\n[[flows]]\nid = \"arn:aws:bedrock:us-east-1:111111111111:flow/ABCDEFGHIJ\"\n",
        )
        .unwrap();
        assert_eq!(two.single_account(), None);
        let none = Config::parse("[[flows]]\nid = \"ABCDEFGHIJ\"\n").unwrap();
        assert_eq!(none.single_account(), None);
    }

    #[test]
    fn flow_ids_from_arns() {
        assert_eq!(bare_flow_id("arn:aws:bedrock:us-east-1:123456789012:flow/ABCDEFGHIJ").as_deref(), Some("ABCDEFGHIJ"));
        assert_eq!(bare_flow_id("ABCDEFGHIJ").as_deref(), Some("ABCDEFGHIJ"));
        assert_eq!(bare_flow_id("arn:aws:bedrock:us-east-1:1:flow/x"), None);
    }
}
