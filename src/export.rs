//! OTLP export (the one module that knows the OpenTelemetry protocol and SDK). Spans built by
//! `convert` are encoded straight into an `ExportTraceServiceRequest` (`encode`) and sent
//! batch by batch over gRPC or HTTP/protobuf, so the caller learns whether each batch was
//! accepted and checkpoints only then.

mod encode;

#[cfg(test)]
pub use encode::put_framed;
pub use encode::{holds_framed, put_framed_measured};

use std::time::Duration;

use opentelemetry::{InstrumentationScope, KeyValue};

use crate::config::{Compression, Protocol, TracesConfig};
use crate::span::{AttrValue, SpanRecord};

/// What an endpoint that accepted a request said it dropped of it (OTLP's partial success:
/// a count and a message, not which spans). OTLP forbids retrying such a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialSuccess {
    pub rejected_spans: u64,
    pub message: String,
}

impl PartialSuccess {
    /// From the response's `partial_success`, when it says anything: spans rejected, or a
    /// warning in its message alone.
    fn of(response: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse) -> Option<PartialSuccess> {
        let p = response.partial_success.as_ref()?;
        (p.rejected_spans > 0 || !p.error_message.is_empty())
            .then(|| PartialSuccess { rejected_spans: p.rejected_spans.max(0) as u64, message: crate::convert::truncate(&p.error_message, 512) })
    }

    /// From an OTLP/HTTP response body: protobuf, or JSON when the endpoint answers in it.
    fn of_http(body: &[u8], json: bool) -> Option<PartialSuccess> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        if body.is_empty() {
            return None;
        }
        if json {
            let value: serde_json::Value = serde_json::from_slice(body).ok()?;
            let p = value.get("partialSuccess")?;
            // proto3 JSON writes int64 as a string; some write a number.
            let rejected = p.get("rejectedSpans").and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))).unwrap_or(0);
            let message = p.get("errorMessage").and_then(|v| v.as_str()).unwrap_or("");
            return (rejected > 0 || !message.is_empty()).then(|| PartialSuccess { rejected_spans: rejected, message: crate::convert::truncate(message, 512) });
        }
        PartialSuccess::of(&<ExportTraceServiceResponse as prost::Message>::decode(body).ok()?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Build { endpoint: String, message: String },
    /// The endpoint may accept later (unavailable, 429, 5xx, timeouts, network errors, auth):
    /// back off and retry everything.
    #[error("OTLP export failed: {0}")]
    Retryable(String),
    /// The endpoint refuses this batch for good (a 4xx other than 408 and 429; gRPC
    /// InvalidArgument, or a message too large): retrying it as it is cannot succeed.
    #[error("OTLP export refused: {message}")]
    Permanent { reason: &'static str, message: String },
}

/// Why a gRPC status refuses a batch for good, or `None` when it is worth retrying. The reason
/// is a bounded label value (`metrics::REFUSAL_REASONS`).
fn grpc_refusal(code: tonic::Code) -> Option<&'static str> {
    match code {
        tonic::Code::InvalidArgument => Some("invalid_argument"),
        // A message over the receiver's limit: tonic answers OutOfRange, grpc-go
        // ResourceExhausted.
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Some("too_large"),
        tonic::Code::Unimplemented => Some("unimplemented"),
        _ => None,
    }
}

/// Why an HTTP status refuses a batch for good (a 4xx other than 408, 429 and the auth ones,
/// which may pass later), or `None` when it is worth retrying.
fn http_refusal(status: u16) -> Option<&'static str> {
    match status {
        413 => Some("too_large"),
        408 | 429 | 401 | 403 => None,
        400..=499 => Some("bad_request"),
        _ => None,
    }
}

/// A failed request as the collector acts on it: refused for good, or retryable.
fn failure(refusal: Option<&'static str>, message: String) -> ExportError {
    match refusal {
        Some(reason) => ExportError::Permanent { reason, message },
        None => ExportError::Retryable(message),
    }
}

/// The length of a span's encoding in a request (`Span`, without its framing), exactly.
pub fn span_len(span: &SpanRecord) -> usize {
    encode::span_len(span)
}

/// The bytes a span takes in a request: its encoding and its framing.
pub fn encoded_len(span: &SpanRecord) -> usize {
    framed_len(encode::span_len(span))
}

/// The bytes a span of encoded length `len` (`span_len`) takes in a request.
pub fn framed_len(len: usize) -> usize {
    encode::framed_len(len)
}

/// Cuts a span down to `max_bytes` in a request: captured content first, then its events
/// from the last. Returns whether anything was cut.
pub fn cut_to_fit(span: &mut SpanRecord, max_bytes: usize) -> bool {
    let size = encoded_len(span);
    if size <= max_bytes {
        return false;
    }
    let is_content = |(k, _): &&(std::borrow::Cow<'static, str>, AttrValue)| k == "content";
    let (count, contents) =
        span.events.iter().flat_map(|e| &e.attributes).filter(is_content).fold((0, 0), |(n, bytes), (k, v)| (n + 1, bytes + encode::attribute_len(k, v)));
    // Share what is left for content among the content attributes (markers included).
    if let Some(room) = max_bytes.saturating_sub(size - contents).checked_div(count) {
        let keep = room.saturating_sub(encode::attribute_len("content", &AttrValue::Str(crate::span::Text::Static(""))) + 64);
        for (_, value) in span.events.iter_mut().flat_map(|e| e.attributes.iter_mut()).filter(|(k, _)| k == "content") {
            if let AttrValue::Str(text) = value {
                *text = crate::convert::truncate(text, keep).into();
            }
        }
    }
    // Each event taken off takes its bytes with it (the span's own framing can only shrink).
    let mut size = encoded_len(span);
    while size > max_bytes {
        let Some(event) = span.events.pop() else { break };
        size -= encode::event_framed_len(&event);
    }
    true
}

/// Splits spans (grouped by execution, in order) of encoded lengths `lens` (`span_len`) into
/// requests of at most `max_spans` spans and `max_bytes` bytes each, `overhead` being what a
/// request holds besides its spans. Returns the ranges of `lens` that form each request.
pub fn pack(lens: &[usize], max_spans: usize, max_bytes: usize, overhead: usize) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = overhead;
    for (i, len) in lens.iter().enumerate() {
        let size = encode::framed_len(*len);
        if i > start && (i - start >= max_spans.max(1) || bytes + size > max_bytes) {
            batches.push(start..i);
            start = i;
            bytes = overhead;
        }
        bytes += size;
    }
    if start < lens.len() {
        batches.push(start..lens.len());
    }
    batches
}

/// The PEM files of `traces.certificate`, `traces.client_certificate` and `traces.client_key`,
/// read once when the exporter is built.
struct Tls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    fn read(config: &TracesConfig) -> Result<Tls, ExportError> {
        let read = |key: &str, path: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, ExportError> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p)
                        .map_err(|e| ExportError::Build { endpoint: config.endpoint.clone(), message: format!("{key}: cannot read {}: {e}", p.display()) })
                })
                .transpose()
        };
        let ca = read("traces.certificate", &config.certificate)?;
        let identity = match (read("traces.client_certificate", &config.client_certificate)?, read("traces.client_key", &config.client_key)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        Ok(Tls { ca, identity })
    }
}

/// An error with its sources, outermost first: transport errors say what went wrong (an
/// unknown issuer, a refused connection) only in their sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

/// How requests reach the endpoint.
enum Transport {
    /// OTLP/gRPC: the `TraceService/Export` call through tonic, with our bytes as the message.
    Grpc { client: tonic::client::Grpc<tonic::transport::Channel>, metadata: tonic::metadata::MetadataMap },
    /// OTLP/HTTP with protobuf bodies, through our own reqwest client (so that the CA file and
    /// the client certificate apply).
    Http { client: reqwest::Client, url: String, headers: http::HeaderMap, gzip: bool },
}

/// Where spans go: an OTLP endpoint, or nowhere (traces disabled).
pub struct Exporter {
    transport: Option<Transport>,
    envelope: encode::Envelope,
    timeout: Duration,
    batch_size: usize,
    max_batch_bytes: usize,
    pub endpoint: String,
}

/// The OTLP/HTTP URL for a base endpoint: `/v1/traces` appended unless already there.
pub fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// Sent with every request, gRPC or HTTP.
const USER_AGENT: &str = concat!("bedrock-flow-exporter/", env!("CARGO_PKG_VERSION"));

const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The delay before the one quick retry of a failed request; longer outages are the
/// collector's backoff.
const RETRY_DELAY: Duration = Duration::from_millis(100);

impl Exporter {
    pub fn disabled() -> Exporter {
        Exporter {
            transport: None,
            envelope: encode::Envelope::default(),
            timeout: Duration::from_secs(10),
            batch_size: usize::MAX,
            max_batch_bytes: usize::MAX,
            endpoint: String::new(),
        }
    }

    /// Builds the exporter. Must run inside a Tokio runtime (tonic's channel needs one).
    pub fn new(config: &TracesConfig, region: Option<&str>, account: Option<&str>) -> Result<Exporter, ExportError> {
        if !config.enabled {
            return Ok(Exporter::disabled());
        }
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let tls = Tls::read(config)?;
        let gzip = matches!(config.compression, Compression::Gzip);
        let secure = config.endpoint.starts_with("https://");
        if !secure && (tls.ca.is_some() || tls.identity.is_some()) {
            tracing::warn!(endpoint = %config.endpoint, "traces.certificate / client certificate set for an endpoint that is not https://: they are not used");
        }
        let build_error = |endpoint: &str, message: String| ExportError::Build { endpoint: endpoint.to_string(), message };
        let (transport, endpoint) = match config.protocol {
            Protocol::Grpc => {
                let endpoint = config.endpoint.clone();
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &config.headers {
                    match (k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(), v.parse()) {
                        (Ok(key), Ok(value)) => {
                            metadata.insert(key, value);
                        }
                        _ => tracing::warn!(header = %k, "traces.headers: not a valid gRPC metadata entry; left out"),
                    }
                }
                let mut channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| build_error(&endpoint, error_chain(&e)))?
                    .user_agent(USER_AGENT)
                    .map_err(|e| build_error(&endpoint, error_chain(&e)))?
                    .timeout(timeout);
                if secure {
                    let mut tls_config = tonic::transport::ClientTlsConfig::new();
                    tls_config = match &tls.ca {
                        Some(pem) => tls_config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                        None => tls_config.with_native_roots(),
                    };
                    if let Some((cert, key)) = &tls.identity {
                        tls_config = tls_config.identity(tonic::transport::Identity::from_pem(cert, key));
                    }
                    channel = channel.tls_config(tls_config).map_err(|e| build_error(&endpoint, error_chain(&e)))?;
                }
                let mut client = tonic::client::Grpc::new(channel.connect_lazy());
                if gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                (Transport::Grpc { client, metadata }, endpoint)
            }
            Protocol::HttpProtobuf => {
                let url = http_traces_url(&config.endpoint);
                let mut client = reqwest::Client::builder().timeout(timeout).user_agent(USER_AGENT);
                if secure {
                    if let Some(pem) = &tls.ca {
                        let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| build_error(&url, format!("traces.certificate: {e}")))?;
                        client = client.tls_certs_only(roots);
                    }
                    if let Some((cert, key)) = &tls.identity {
                        let pem = [cert.as_slice(), b"\n", key.as_slice()].concat();
                        let identity =
                            reqwest::Identity::from_pem(&pem).map_err(|e| build_error(&url, format!("traces.client_certificate / client_key: {e}")))?;
                        client = client.identity(identity);
                    }
                }
                let client = client.build().map_err(|e| build_error(&url, error_chain(&e)))?;
                let mut headers = http::HeaderMap::new();
                for (k, v) in &config.headers {
                    match (k.parse::<http::HeaderName>(), v.parse::<http::HeaderValue>()) {
                        (Ok(key), Ok(value)) => {
                            headers.insert(key, value);
                        }
                        _ => tracing::warn!(header = %k, "traces.headers: not a valid HTTP header; left out"),
                    }
                }
                (Transport::Http { client, url: url.clone(), headers, gzip }, url)
            }
        };
        Ok(Exporter {
            transport: Some(transport),
            envelope: envelope(&resource(&config.service_name, region, account)),
            timeout,
            batch_size: config.batch_size,
            max_batch_bytes: config.max_batch_bytes,
            endpoint,
        })
    }

    pub fn enabled(&self) -> bool {
        self.transport.is_some()
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }

    /// What a request holds besides its spans (the resource, the scope, the framing), at most.
    pub fn request_overhead(&self) -> usize {
        self.envelope.overhead()
    }

    /// Exports `spans` (each one's bytes from `put_framed_measured`, of encoded length
    /// `lens`, its `span_len`) as one OTLP request; the caller keeps it within the batch
    /// bounds. The spans' bytes are copied once, into the buffer the transport sends. A
    /// failure worth retrying is retried once after `RETRY_DELAY` when the timeout leaves room.
    /// Accepted, it returns what the endpoint said it dropped of the request, if anything.
    pub async fn export(&self, spans: &[bytes::Bytes], lens: &[usize]) -> Result<Option<PartialSuccess>, ExportError> {
        let Some(transport) = &self.transport else {
            return Ok(None);
        };
        let body = encode::Parts::new(&self.envelope, spans, lens);
        let started = std::time::Instant::now();
        match send(transport, body.clone()).await {
            Err(ExportError::Retryable(_)) if started.elapsed() + RETRY_DELAY < self.timeout => {
                tokio::time::sleep(RETRY_DELAY).await;
                send(transport, body).await
            }
            result => result,
        }
    }
}

/// One request, its failure classified.
async fn send(transport: &Transport, body: encode::Parts) -> Result<Option<PartialSuccess>, ExportError> {
    match transport {
        Transport::Grpc { client, metadata } => {
            let mut client = client.clone();
            let mut request = tonic::Request::new(body);
            *request.metadata_mut() = metadata.clone();
            let result = match client.ready().await {
                Ok(()) => client.unary(request, http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH), RawCodec).await.map(tonic::Response::into_inner),
                Err(e) => Err(tonic::Status::unavailable(format!("the channel is not ready: {}", error_chain(&e)))),
            };
            result.map_err(|status| {
                let mut message = format!("OTLP/gRPC export failed with gRPC code: {:?}", status.code());
                // The receiver's own words (bounded: they go to the log and the status page).
                if !status.message().is_empty() {
                    message.push_str(": ");
                    message.push_str(&crate::convert::truncate(status.message(), 512));
                }
                if let Some(source) = std::error::Error::source(&status) {
                    message.push_str(": ");
                    message.push_str(&error_chain(source));
                }
                failure(grpc_refusal(status.code()), message)
            })
        }
        Transport::Http { client, url, headers, gzip } => {
            let mut request = client.post(url.as_str()).headers(headers.clone()).header(http::header::CONTENT_TYPE, "application/x-protobuf");
            request = if *gzip {
                use std::io::Write as _;
                let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::default());
                let compressed = body
                    .slices()
                    .try_for_each(|slice| encoder.write_all(slice))
                    .and_then(|()| encoder.finish())
                    .map_err(|e| ExportError::Retryable(format!("gzip: {e}")))?;
                request.header(http::header::CONTENT_ENCODING, "gzip").body(compressed)
            } else {
                request.body(body.to_vec())
            };
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    // Read the body (the connection is kept for the next request) for a partial
                    // success.
                    let json = response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.contains("json"));
                    Ok(response.bytes().await.ok().and_then(|body| PartialSuccess::of_http(&body, json)))
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    Err(failure(http_refusal(status), format!("OTLP/HTTP export failed with status code: {status}")))
                }
                Err(e) => Err(ExportError::Retryable(format!("OTLP/HTTP export failed: network error: {}", error_chain(&e)))),
            }
        }
    }
}

/// The gRPC codec of `TraceService/Export` for a request already encoded (in its parts, which
/// the encoder copies into tonic's buffer); the response is read for a partial success (which
/// OTLP says not to retry).
struct RawCodec;

struct RawEncoder;

struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = encode::Parts;
    type Decode = Option<PartialSuccess>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = encode::Parts;
    type Error = tonic::Status;

    fn encode(&mut self, item: encode::Parts, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.reserve(item.len());
        item.put(dst);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Option<PartialSuccess>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Option<PartialSuccess>>, tonic::Status> {
        use bytes::Buf as _;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        // Usually empty (no partial success): nothing to decode. A response that is not one
        // does not make the accepted request a failure.
        let partial = if src.has_remaining() {
            <ExportTraceServiceResponse as prost::Message>::decode(&mut *src).ok().and_then(|r| PartialSuccess::of(&r))
        } else {
            None
        };
        src.advance(src.remaining());
        Ok(Some(partial))
    }
}

/// The resource as the OpenTelemetry SDK builds it: `service.name`, `service.version`,
/// `cloud.*`, its own `telemetry.sdk.*` and `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service_name: &str, region: Option<&str>, account: Option<&str>) -> opentelemetry_sdk::Resource {
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION")), KeyValue::new("cloud.provider", "aws")];
    if let Some(region) = region {
        attributes.push(KeyValue::new("cloud.region", region.to_string()));
    }
    if let Some(account) = account {
        attributes.push(KeyValue::new("cloud.account.id", account.to_string()));
    }
    opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_string()).with_attributes(attributes).build()
}

/// The resource and the scope, encoded once (by prost, from the SDK's own conversion).
fn envelope(resource: &opentelemetry_sdk::Resource) -> encode::Envelope {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope as ProtoScope;
    use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use prost::Message as _;
    let resource = ResourceAttributesWithSchema::from(resource);
    let scope = scope();
    encode::Envelope {
        resource: ProtoResource { attributes: resource.attributes.0, dropped_attributes_count: 0, entity_refs: Vec::new() }.encode_to_vec(),
        resource_schema_url: resource.schema_url.unwrap_or_default(),
        scope: ProtoScope::from((&scope, None)).encode_to_vec(),
        scope_schema_url: scope.schema_url().unwrap_or_default().to_string(),
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("bedrock-flow-exporter").with_version(env!("CARGO_PKG_VERSION")).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{SpanEventRecord, SpanStatus};
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry::{Array, StringValue, Value};
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;
    use std::borrow::Cow;
    use std::time::{SystemTime, UNIX_EPOCH};

    // The span as the OpenTelemetry SDK carries it: the reference the encoding is checked
    // against.
    fn time(nanos: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64)
    }

    fn key_values(attributes: &[(Cow<'static, str>, AttrValue)]) -> Vec<KeyValue> {
        attributes
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    AttrValue::Str(s) => Value::String(s.to_string().into()),
                    AttrValue::Int(i) => Value::I64(*i),
                    AttrValue::Bool(b) => Value::Bool(*b),
                    AttrValue::StrArray(items) => Value::Array(Array::String(items.iter().cloned().map(StringValue::from).collect())),
                };
                KeyValue::new(k.clone(), value)
            })
            .collect()
    }

    fn to_span_data(span: &SpanRecord, scope: &InstrumentationScope) -> SpanData {
        let trace_id = TraceId::from_bytes(span.trace_id);
        let context = SpanContext::new(trace_id, SpanId::from_bytes(span.span_id), TraceFlags::SAMPLED, false, TraceState::default());
        let mut events = SpanEvents::default();
        events.events = span.events.iter().map(|e| opentelemetry::trace::Event::new(e.name.clone(), time(e.time), key_values(&e.attributes), 0)).collect();
        events.dropped_count = span.dropped_events;
        let mut links = SpanLinks::default();
        links.links = span
            .links
            .iter()
            .map(|id| {
                let linked = SpanContext::new(trace_id, SpanId::from_bytes(*id), TraceFlags::SAMPLED, false, TraceState::default());
                opentelemetry::trace::Link::new(linked, Vec::new(), 0)
            })
            .collect();
        SpanData {
            span_context: context,
            parent_span_id: span.parent_span_id.map(SpanId::from_bytes).unwrap_or(SpanId::INVALID),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(span.name.clone()),
            start_time: time(span.start),
            end_time: time(span.end),
            attributes: key_values(&span.attributes),
            dropped_attributes_count: 0,
            events,
            links,
            status: match &span.status {
                SpanStatus::Unset => Status::Unset,
                SpanStatus::Ok => Status::Ok,
                SpanStatus::Error(description) => Status::error(description.clone()),
            },
            instrumentation_scope: scope.clone(),
        }
    }

    fn span(content_bytes: usize, events: usize) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            name: "Prompt Summarize".into(),
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_001_000_000_000,
            attributes: vec![
                ("aws.bedrock.flow.node.name".into(), AttrValue::Str("Summarize".into())),
                ("aws.bedrock.flow.node.execution_chain".into(), AttrValue::StrArray(vec!["Iterate[3]".into(), "Loop[1]".into()])),
                ("gen_ai.usage.input_tokens".into(), AttrValue::Int(1234)),
                ("flag".into(), AttrValue::Bool(true)),
            ],
            events: (0..events)
                .map(|i| SpanEventRecord {
                    name: "aws.bedrock.flow.node.output".into(),
                    time: 1_700_000_000_500_000_000 + i as i64,
                    attributes: vec![
                        ("field".into(), AttrValue::Str("document".into())),
                        ("content".into(), AttrValue::Str("é".repeat(content_bytes / 2).into())),
                    ],
                })
                .collect(),
            dropped_events: 0,
            links: vec![[4; 8], [5; 8]],
            status: SpanStatus::Error("node failed".into()),
            facts: Default::default(),
        }
    }

    fn real_len(span: &SpanRecord) -> usize {
        opentelemetry_proto::tonic::trace::v1::Span::from(to_span_data(span, &scope())).encoded_len()
    }

    #[test]
    fn a_span_s_size_in_a_request_is_its_exact_encoding() {
        for (content, events) in [(0, 0), (10, 1), (1000, 3), (200_000, 2), (3 << 20, 1)] {
            let s = span(content, events);
            let real = real_len(&s);
            assert_eq!(span_len(&s), real, "{content} bytes x {events}");
            assert_eq!(encoded_len(&s), 1 + prost::length_delimiter_len(real) + real, "{content} bytes x {events}: with its key and length");
        }
        let envelope = envelope(&resource("svc", Some("us-east-1"), None));
        let request = encode::Parts::new(&envelope, &[], &[]);
        assert!(request.len() <= envelope.overhead(), "a request without spans: {} bytes, overhead {}", request.len(), envelope.overhead());
    }

    /// The request as the OpenTelemetry SDK and prost encode it.
    fn reference_request(spans: &[SpanRecord], resource: &opentelemetry_sdk::Resource) -> Vec<u8> {
        let data = spans.iter().map(|s| to_span_data(s, &scope())).collect();
        let resource_spans = opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(data, &resource.into());
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest { resource_spans }.encode_to_vec()
    }

    #[test]
    fn requests_are_encoded_byte_for_byte_as_the_sdk_encodes_them() {
        let resource = resource("svc", Some("us-east-1"), Some("123456789012"));
        let envelope = envelope(&resource);
        let mut bare = span(0, 0);
        bare.parent_span_id = None;
        bare.status = SpanStatus::Unset;
        bare.name = String::new();
        (bare.start, bare.end) = (0, -5);
        bare.links.clear();
        bare.dropped_events = 300;
        bare.attributes = vec![
            ("".into(), AttrValue::Str(String::new().into())),
            ("negative".into(), AttrValue::Int(-1)),
            ("big".into(), AttrValue::Int(i64::MAX)),
            ("off".into(), AttrValue::Bool(false)),
            ("none".into(), AttrValue::StrArray(Vec::new())),
            ("some".into(), AttrValue::StrArray(vec![String::new(), "é".repeat(100)])),
        ];
        let mut ok = span(5, 2);
        ok.status = SpanStatus::Ok;
        (ok.events[0].name, ok.events[0].time) = ("".into(), 0);
        ok.events[1].attributes.clear();
        // The spans of a real conversion: a doc-batch Iterator over 20 documents.
        let (flow, node, types) = crate::convert::tests::doc_batch_history(20, 7);
        let status = bedrock_flow_wire::model::ExecutionStatus::Succeeded;
        let view = crate::convert::tests::running_view("arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/e", &status, &types);
        let converted = crate::convert::convert(&view, &node, &flow, &crate::convert::ContentPolicy::default()).spans;
        assert!(converted.len() > 40, "{}", converted.len());
        let mut all = vec![span(0, 0), span(10, 1), span(1000, 3), span(200_000, 2), bare, ok];
        all.extend(converted);
        // Events are measured as they are written too: their lengths take one, two and three
        // bytes of varint here.
        let event_lens: Vec<usize> = all.iter().flat_map(|s| &s.events).map(encode::event_framed_len).collect();
        for (low, high) in [(0, 128 + 2), (128 + 3, (1 << 14) + 3), ((1 << 14) + 4, 1 << 21)] {
            assert!(event_lens.iter().any(|l| (low..high).contains(l)), "no event framed in {low}..{high} bytes: {event_lens:?}");
        }
        for spans in [&all[..0], &all[..1], &all[4..6], &all[..]] {
            // Encoded as a fold leaves them: end to end in one buffer, each measured as written.
            let mut bytes = Vec::new();
            let lens: Vec<usize> = spans.iter().map(|span| put_framed_measured(&mut bytes, span)).collect();
            assert_eq!(lens, spans.iter().map(span_len).collect::<Vec<_>>());
            assert_eq!(bytes.len(), spans.iter().map(encoded_len).sum::<usize>());
            // As the exporter sends them: in parts, sharing the spans' bytes, copied once.
            let shared = bytes::Bytes::from(bytes);
            let mut at = 0;
            let parts: Vec<bytes::Bytes> = lens
                .iter()
                .map(|len| {
                    at += framed_len(*len);
                    shared.slice(at - framed_len(*len)..at)
                })
                .collect();
            let request = encode::Parts::new(&envelope, &parts, &lens);
            let ours = request.to_vec();
            assert_eq!(ours.len(), request.len(), "{} spans", spans.len());
            assert_eq!(ours, reference_request(spans, &resource), "{} spans", spans.len());
            let mut sent = bytes::BytesMut::new();
            request.clone().put(&mut sent);
            assert_eq!(&sent[..], &ours[..], "{} spans, put", spans.len());
            let framed: usize = spans.iter().map(encoded_len).sum();
            assert!(ours.len() <= envelope.overhead() + framed, "{} spans: {} bytes, counted {}", spans.len(), ours.len(), envelope.overhead() + framed);
        }
        for s in &all {
            assert_eq!(encode::span_len(s), real_len(s), "{}", s.name);
        }
    }

    /// A span measured as it is written has the bytes and the length of one measured first,
    /// whatever its length's varint takes (1 to 4 bytes here) and however much room was left
    /// for it (less than it takes too), after what the buffer held.
    #[test]
    fn a_span_measured_as_it_is_written_is_framed_as_one_measured_first() {
        // Spans of lengths on either side of each varint step (128, 2^14, 2^21 bytes), by name.
        let mut bare = span(0, 0);
        (bare.attributes, bare.links, bare.parent_span_id) = (Vec::new(), Vec::new(), None);
        let sized = |target: usize| {
            let mut s = bare.clone();
            for _ in 0..3 {
                let name_len = (s.name.len() + target).saturating_sub(span_len(&s));
                s.name = "n".repeat(name_len);
            }
            s
        };
        let spans: Vec<SpanRecord> = [100, 127, 129, 200, 16_383, 16_386, (1 << 21) - 1, (1 << 21) + 3].into_iter().map(sized).collect();
        let lens: Vec<usize> = spans.iter().map(span_len).collect();
        for limit in [128, 1 << 14, 1 << 21] {
            assert!(
                lens.iter().any(|l| *l < limit && *l > limit - 10) && lens.iter().any(|l| *l >= limit && *l < limit + 10),
                "the lengths {lens:?} cross {limit}"
            );
        }
        for (s, len) in spans.iter().zip(lens) {
            let mut expected = b"before".to_vec();
            put_framed(&mut expected, s);
            for room in 0..=6 {
                let mut buf = b"before".to_vec();
                let measured = if room == encode::FRAMING_ROOM { put_framed_measured(&mut buf, s) } else { encode::put_framed_in(&mut buf, s, room) };
                assert_eq!(measured, len, "a span of {len} bytes, room {room}");
                assert!(buf == expected, "a span of {len} bytes, room {room}: the bytes differ");
            }
        }
    }

    #[test]
    fn a_span_too_large_is_cut_content_first() {
        let mut s = span(3 << 20, 2);
        assert!(cut_to_fit(&mut s, 1 << 20));
        assert!(real_len(&s) <= 1 << 20, "{}", real_len(&s));
        assert_eq!(s.events.len(), 2, "the events stay; their content is cut");
        let AttrValue::Str(content) = &s.events[0].attributes[1].1 else { panic!() };
        assert!(content.contains("…[truncated ") && content.len() > 300_000, "{}", content.len());
        let mut small = span(100, 1);
        assert!(!cut_to_fit(&mut small, 1 << 20), "a span that fits is left alone");
        // Without content to cut, events go from the last.
        let mut many = span(0, 20_000);
        assert!(cut_to_fit(&mut many, 100_000));
        assert!(real_len(&many) <= 100_000 && many.events.len() > 100);
        assert!(encoded_len(&many) > 100_000 - 200, "no more events go than needed: {}", encoded_len(&many));
    }

    #[test]
    fn batches_are_bounded_by_spans_and_bytes() {
        // A span of 100 bytes takes 102 in a request (its key and length).
        assert_eq!(pack(&[10, 10, 10, 10, 10], 2, usize::MAX, 64), vec![0..2, 2..4, 4..5]);
        let b = 1024;
        assert_eq!(pack(&[100, 100, 100], 512, b + 204, b), vec![0..2, 2..3]);
        assert_eq!(pack(&[100, 100, 100], 512, b + 203, b), vec![0..1, 1..2, 2..3]);
        // A span over the bound alone goes alone (it was cut to fit before).
        assert_eq!(pack(&[50, 10_000, 50], 512, b + 200, b), vec![0..1, 1..2, 2..3]);
        assert!(pack(&[], 512, b, b).is_empty());
    }

    #[test]
    fn refusals_for_good_are_told_from_failures_worth_retrying() {
        use tonic::Code;
        assert_eq!(grpc_refusal(Code::InvalidArgument), Some("invalid_argument"));
        assert_eq!(grpc_refusal(Code::OutOfRange), Some("too_large"));
        assert_eq!(grpc_refusal(Code::ResourceExhausted), Some("too_large"));
        assert_eq!(grpc_refusal(Code::Unimplemented), Some("unimplemented"));
        assert_eq!(grpc_refusal(Code::Unavailable), None);
        assert_eq!(grpc_refusal(Code::DeadlineExceeded), None);
        assert_eq!(http_refusal(400), Some("bad_request"));
        assert_eq!(http_refusal(413), Some("too_large"));
        for retryable in [429, 503, 408, 401, 403, 500] {
            assert_eq!(http_refusal(retryable), None, "{retryable}");
        }
        let reasons: Vec<&str> = [Code::InvalidArgument, Code::OutOfRange, Code::Unimplemented]
            .into_iter()
            .filter_map(grpc_refusal)
            .chain([400, 413].into_iter().filter_map(http_refusal))
            .collect();
        assert!(reasons.iter().all(|r| crate::metrics::REFUSAL_REASONS.contains(r)), "bounded label values: {reasons:?}");
        assert!(matches!(failure(None, "timed out".into()), ExportError::Retryable(m) if m == "timed out"));
        assert!(matches!(failure(Some("too_large"), "m".into()), ExportError::Permanent { reason: "too_large", .. }));
    }

    #[test]
    fn partial_success_is_read_from_protobuf_and_from_json() {
        use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
        use prost::Message as _;
        let response = |rejected_spans, error_message: &str| {
            ExportTraceServiceResponse { partial_success: Some(ExportTracePartialSuccess { rejected_spans, error_message: error_message.into() }) }
                .encode_to_vec()
        };
        let dropped = Some(PartialSuccess { rejected_spans: 3, message: "over the limit".into() });
        assert_eq!(PartialSuccess::of_http(&response(3, "over the limit"), false), dropped);
        // A message alone is a warning, said too; an empty partial success says nothing.
        assert_eq!(PartialSuccess::of_http(&response(0, "slow down"), false), Some(PartialSuccess { rejected_spans: 0, message: "slow down".into() }));
        assert_eq!(PartialSuccess::of_http(&response(0, ""), false), None);
        assert_eq!(PartialSuccess::of_http(&ExportTraceServiceResponse { partial_success: None }.encode_to_vec(), false), None);
        assert_eq!(PartialSuccess::of_http(b"", false), None);
        // proto3 JSON: int64 as a string, or as a number.
        assert_eq!(PartialSuccess::of_http(br#"{"partialSuccess":{"rejectedSpans":"3","errorMessage":"over the limit"}}"#, true), dropped);
        assert_eq!(PartialSuccess::of_http(br#"{"partialSuccess":{"rejectedSpans":3,"errorMessage":"over the limit"}}"#, true), dropped);
        assert_eq!(PartialSuccess::of_http(br#"{}"#, true), None);
        // Not a response at all: the request was accepted, nothing more is known.
        assert_eq!(PartialSuccess::of_http(b"\xff\xff not protobuf", false), None);
        assert_eq!(PartialSuccess::of_http(b"<html>ok</html>", true), None);
    }

    #[test]
    fn http_endpoint_gets_the_signal_path_once() {
        assert_eq!(http_traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:6006/v1/traces"), "http://h:6006/v1/traces");
    }
}
