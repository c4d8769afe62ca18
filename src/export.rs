//! OTLP export (the one module that knows the OpenTelemetry SDK). Spans built by `convert` are
//! turned into `SpanData` with their own ids and times and handed to the OTLP exporter batch by
//! batch, so the caller learns whether each batch was accepted and checkpoints only then.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use crate::config::{Protocol, TracesConfig};
use crate::span::{AttrValue, SpanRecord, SpanStatus};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Build { endpoint: String, message: String },
    #[error("OTLP export failed: {0}")]
    Rejected(String),
}

/// Where spans go: a real OTLP exporter, or nowhere (traces disabled).
pub struct Exporter {
    inner: Option<tokio::sync::Mutex<opentelemetry_otlp::SpanExporter>>,
    scope: InstrumentationScope,
    batch_size: usize,
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

impl Exporter {
    pub fn disabled() -> Exporter {
        Exporter { inner: None, scope: scope(), batch_size: usize::MAX, endpoint: String::new() }
    }

    /// Builds the exporter. Must run inside a Tokio runtime (tonic's channel needs one).
    pub fn new(config: &TracesConfig, region: Option<&str>, account: Option<&str>) -> Result<Exporter, ExportError> {
        if !config.enabled {
            return Ok(Exporter::disabled());
        }
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        // One quick retry inside the exporter; longer outages are the collector's backoff.
        let retry = opentelemetry_otlp::RetryPolicy::default().with_max_retries(1).with_initial_delay(Duration::from_millis(100));
        let headers: HashMap<String, String> = config.headers.clone().into_iter().collect();
        let (built, endpoint) = match config.protocol {
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &headers {
                    if let (Ok(key), Ok(value)) = (k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(), v.parse()) {
                        metadata.insert(key, value);
                    }
                }
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.endpoint.clone())
                    .with_timeout(timeout)
                    .with_metadata(metadata)
                    .with_retry_policy(retry);
                if config.endpoint.starts_with("https://") {
                    builder = builder.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
                }
                (builder.build(), config.endpoint.clone())
            }
            Protocol::HttpProtobuf => {
                let url = http_traces_url(&config.endpoint);
                let built = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(url.clone())
                    .with_timeout(timeout)
                    .with_headers(headers)
                    .with_retry_policy(retry)
                    .build();
                (built, url)
            }
        };
        let mut exporter = built.map_err(|e| ExportError::Build { endpoint: endpoint.clone(), message: e.to_string() })?;
        let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION")), KeyValue::new("cloud.provider", "aws")];
        if let Some(region) = region {
            attributes.push(KeyValue::new("cloud.region", region.to_string()));
        }
        if let Some(account) = account {
            attributes.push(KeyValue::new("cloud.account.id", account.to_string()));
        }
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).with_attributes(attributes).build();
        exporter.set_resource(&resource);
        Ok(Exporter { inner: Some(tokio::sync::Mutex::new(exporter)), scope: scope(), batch_size: config.batch_size, endpoint })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Exports all `spans`, in batches; `Ok` only when every batch was accepted.
    pub async fn export(&self, spans: &[SpanRecord]) -> Result<(), ExportError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        for chunk in spans.chunks(self.batch_size.max(1)) {
            let batch: Vec<SpanData> = chunk.iter().map(|s| to_span_data(s, &self.scope)).collect();
            let exporter = inner.lock().await;
            exporter.export(batch).await.map_err(|e| ExportError::Rejected(e.to_string()))?;
        }
        Ok(())
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("bedrock-flow-exporter").with_version(env!("CARGO_PKG_VERSION")).build()
}

fn time(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64)
}

fn key_values(attributes: &[(String, AttrValue)]) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(k, v)| {
            let value = match v {
                AttrValue::Str(s) => Value::String(s.clone().into()),
                AttrValue::Int(i) => Value::I64(*i),
                AttrValue::Bool(b) => Value::Bool(*b),
                AttrValue::StrArray(items) => Value::Array(Array::String(items.iter().cloned().map(StringValue::from).collect())),
            };
            KeyValue::new(k.clone(), value)
        })
        .collect()
}

pub fn to_span_data(span: &SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let trace_id = TraceId::from_bytes(span.trace_id);
    let context = SpanContext::new(trace_id, SpanId::from_bytes(span.span_id), TraceFlags::SAMPLED, false, TraceState::default());
    let mut events = SpanEvents::default();
    events.events = span.events.iter().map(|e| opentelemetry::trace::Event::new(e.name.clone(), time(e.time), key_values(&e.attributes), 0)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoint_gets_the_signal_path_once() {
        assert_eq!(http_traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:6006/v1/traces"), "http://h:6006/v1/traces");
    }
}
