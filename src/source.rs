//! The AWS side (the one module that knows the AWS SDK): clients per account and region with
//! a shared request budget, the four read operations, and the mapping of SDK types to the wire
//! model and of SDK errors to the `error_kind` label.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_bedrockagentruntime as bar;
use aws_sdk_bedrockagentruntime::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector};
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::Document;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::model::*;

/// At most `limit` HTTP attempts started in any window of `window` (SPEC §10: the budget is
/// per account and region, SDK retries included).
/// Replicas share the budget by lease: each spends its share (the flows of the target it holds
/// over those configured), so that the shares never add up to more than the budget.
#[derive(Debug)]
pub struct RequestBudget {
    rate: f64,
    /// This process's share of `rate`, in millionths.
    share_ppm: std::sync::atomic::AtomicU64,
    starts: Mutex<VecDeque<Instant>>,
}

impl RequestBudget {
    pub fn per_second(rate: f64) -> RequestBudget {
        RequestBudget { rate, share_ppm: std::sync::atomic::AtomicU64::new(1_000_000), starts: Mutex::new(VecDeque::new()) }
    }

    /// Spend `share` (0..=1) of the rate from now on.
    pub fn set_share(&self, share: f64) {
        self.share_ppm.store((share.clamp(0.0, 1.0) * 1e6) as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// (attempts, window): at most `limit` attempts start in any `window`.
    fn limits(&self) -> (usize, Duration) {
        let rate = (self.rate * self.share_ppm.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6).max(1e-3);
        let limit = (rate.floor() as usize).max(1);
        (limit, Duration::from_secs_f64((limit as f64 / rate).max(1.0)))
    }

    pub async fn acquire(&self) {
        loop {
            let wait = {
                let (limit, window) = self.limits();
                let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                while starts.front().is_some_and(|t| now.duration_since(*t) >= window) {
                    starts.pop_front();
                }
                if starts.len() < limit {
                    starts.push_back(now);
                    return;
                }
                window.saturating_sub(now.duration_since(starts[0]))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Wraps the SDK's HTTP client so that every attempt, retries included, waits for the budget.
#[derive(Debug)]
struct BudgetedClient {
    inner: SharedHttpClient,
    budget: Arc<RequestBudget>,
}

#[derive(Debug)]
struct BudgetedConnector {
    inner: SharedHttpConnector,
    budget: Arc<RequestBudget>,
}

impl HttpClient for BudgetedClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(BudgetedConnector { inner: self.inner.http_connector(settings, components), budget: self.budget.clone() })
    }
}

impl HttpConnector for BudgetedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        let budget = self.budget.clone();
        HttpConnectorFuture::new(async move {
            budget.acquire().await;
            inner.call(request).await
        })
    }
}

/// What a read keeps of an action event's documents (its operation's request and response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionDocuments {
    /// Both, as the API sent them: content is captured, or the fingerprints of an execution's
    /// older state count them.
    Keep,
    /// Only what the trace model reads of them when content is not captured: the response's
    /// `usage`. The rest is dropped as the SDK gave it, never converted.
    UsageOnly,
}

/// One of an execution's two event streams (`eventType` of ListFlowExecutionEvents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStream {
    Node,
    Flow,
}

/// Where and as whom to call AWS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AwsTarget {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    pub endpoint_url: Option<String>,
}

impl AwsTarget {
    /// Flows sharing this key share one request budget: same credentials source, same region.
    pub fn budget_key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.region.as_deref().unwrap_or(""),
            self.profile.as_deref().unwrap_or(""),
            self.role_arn.as_deref().unwrap_or(""),
            self.endpoint_url.as_deref().unwrap_or("")
        )
    }
}

/// Static credentials, for the demo against the embedded emulator (no AWS account needed).
#[derive(Clone, Debug)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Throttled,
    AccessDenied,
    NotFound,
    Validation,
    Server,
    Timeout,
    Other,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Validation => "validation",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{operation} failed ({}): {message}", kind.label())]
pub struct ApiError {
    pub operation: &'static str,
    pub kind: ErrorKind,
    pub message: String,
}

/// The kind of a modeled AWS error code (`x-amzn-errortype`, or the body's `__type`).
fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "ThrottlingException" | "TooManyRequestsException" | "ThrottledException" => ErrorKind::Throttled,
        "AccessDeniedException" | "UnrecognizedClientException" | "ExpiredTokenException" => ErrorKind::AccessDenied,
        "ResourceNotFoundException" => ErrorKind::NotFound,
        "ValidationException" => ErrorKind::Validation,
        "InternalServerException" | "ServiceUnavailableException" => ErrorKind::Server,
        _ => ErrorKind::Other,
    }
}

/// The kind of a failed HTTP attempt from its status and error-type header; `None` for a
/// success. A bare status without a modeled type is classified by the status alone.
pub fn attempt_error_kind(status: u16, error_type: Option<&str>) -> Option<ErrorKind> {
    if (200..300).contains(&status) {
        return None;
    }
    // `x-amzn-errortype` may carry a namespace prefix and a `:url` suffix.
    let code = error_type.map(|t| t.split(':').next().unwrap_or(t)).map(|t| t.rsplit('#').next().unwrap_or(t)).filter(|t| !t.is_empty());
    Some(match (code.map(kind_of_code), status) {
        (Some(kind), _) if kind != ErrorKind::Other => kind,
        (_, 429) => ErrorKind::Throttled,
        (_, 403) => ErrorKind::AccessDenied,
        (_, 404) => ErrorKind::NotFound,
        (_, 400) => ErrorKind::Validation,
        (_, 408) => ErrorKind::Timeout,
        (_, s) if s >= 500 => ErrorKind::Server,
        _ => ErrorKind::Other,
    })
}

/// Counts every HTTP attempt the SDK makes (its retries included: what AWS throttles and
/// bills) and every failed attempt by kind, so throttling that the retries absorb still shows.
struct AttemptCounter {
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AttemptCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttemptCounter")
    }
}

impl Intercept for AttemptCounter {
    fn name(&self) -> &'static str {
        "AttemptCounter"
    }

    fn read_after_attempt(&self, context: &FinalizerInterceptorContextRef<'_>, _: &RuntimeComponents, cfg: &mut ConfigBag) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let failure = match context.response() {
            Some(response) => attempt_error_kind(response.status().as_u16(), response.headers().get("x-amzn-errortype")),
            None => match context.output_or_error() {
                Some(Err(e)) if e.is_timeout_error() || e.as_connector_error().is_some_and(|c| c.is_timeout()) => Some(ErrorKind::Timeout),
                Some(Err(_)) => Some(ErrorKind::Other),
                _ => None,
            },
        };
        self.metrics.api_request(operation);
        if let Some(kind) = failure {
            self.metrics.api_request_errors.get_or_create(&vec![("operation", operation.to_string()), ("error_kind", kind.label().to_string())]).inc();
        }
        Ok(())
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(operation: &'static str, error: SdkError<E, R>) -> ApiError {
    let (kind, message) = match &error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let kind = e.code().map_or(ErrorKind::Other, kind_of_code);
            (kind, format!("{}: {}", e.code().unwrap_or("unknown error"), e.message().unwrap_or("")))
        }
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, "request timed out".to_string()),
        SdkError::DispatchFailure(d) if d.is_timeout() => (ErrorKind::Timeout, format!("{d:?}")),
        other => (ErrorKind::Other, aws_smithy_types::error::display::DisplayErrorContext(other).to_string()),
    };
    ApiError { operation, kind, message }
}

/// One client per target; calls are counted and timed in the metrics.
#[derive(Clone)]
pub struct FlowSource {
    client: bar::Client,
    metrics: Arc<Metrics>,
}

/// Budgets shared by every client of the same account and region.
#[derive(Default)]
pub struct Budgets(Mutex<HashMap<String, Arc<RequestBudget>>>);

impl Budgets {
    pub fn get(&self, key: &str, rate: f64) -> Arc<RequestBudget> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string()).or_insert_with(|| Arc::new(RequestBudget::per_second(rate))).clone()
    }
}

impl FlowSource {
    pub async fn new(target: &AwsTarget, budget: Arc<RequestBudget>, credentials: Option<&StaticCredentials>, metrics: Arc<Metrics>) -> FlowSource {
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(BudgetedClient { inner: https, budget })
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(4)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_attempt_timeout(Duration::from_secs(20)).build());
        if let Some(region) = &target.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &target.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &target.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(&c.access_key_id, &c.secret_access_key, None, None, "static"));
        }
        let mut sdk_config = loader.load().await;
        if let Some(role) = &target.role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role).session_name("bedrock-flow-exporter").configure(&sdk_config).build().await;
            sdk_config = sdk_config.into_builder().credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(provider)).build();
        }
        let client_config = bar::config::Builder::from(&sdk_config).interceptor(AttemptCounter { metrics: metrics.clone() }).build();
        FlowSource { client: bar::Client::from_conf(client_config), metrics }
    }

    /// The SDK client itself, as configured here (for the benchmark's bare loop: the SDK floor).
    #[doc(hidden)]
    pub fn sdk_client(&self) -> &bar::Client {
        &self.client
    }

    /// Awaits one SDK call (its retries included) and records its duration; the attempts and
    /// their errors are counted by `AttemptCounter`. The SDK's future is put on the heap before
    /// anything awaits it: it is kilobytes large, and inline it would make every future that
    /// awaits a call as large, copied whenever one is moved (an execution's read, three times
    /// as it joins the reads in flight).
    fn call<'a, T, E, R>(
        &'a self,
        operation: &'static str,
        request: impl std::future::Future<Output = Result<T, SdkError<E, R>>> + 'a,
    ) -> impl std::future::Future<Output = Result<T, ApiError>> + 'a
    where
        T: 'a,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'a,
    {
        let request = Box::pin(request);
        async move {
            let started = Instant::now();
            let result = request.await.map_err(|e| classify(operation, e));
            self.metrics.api_duration(operation, started.elapsed().as_secs_f64());
            result
        }
    }

    /// One page of ListFlowExecutions.
    pub async fn list_executions(
        &self,
        flow_id: &str,
        alias: Option<&str>,
        token: Option<String>,
    ) -> Result<(Vec<ExecutionSummary>, Option<String>), ApiError> {
        let request = self
            .client
            .list_flow_executions()
            .flow_identifier(flow_id)
            .set_flow_alias_identifier(alias.map(str::to_string))
            .max_results(10)
            .set_next_token(token);
        let out = self.call("ListFlowExecutions", request.send()).await?;
        let items = out
            .flow_execution_summaries()
            .iter()
            .map(|s| ExecutionSummary {
                execution_arn: s.execution_arn().to_string(),
                flow_alias_identifier: s.flow_alias_identifier().to_string(),
                flow_identifier: s.flow_identifier().to_string(),
                flow_version: s.flow_version().to_string(),
                status: ExecutionStatus::parse(s.status().as_str()),
                created_at: Timestamp(nanos(s.created_at()).unwrap_or(0)),
                ended_at: s.ended_at().and_then(nanos).map(Timestamp),
            })
            .collect();
        Ok((items, out.next_token().filter(|t| !t.is_empty()).map(str::to_string)))
    }

    /// One page of ListFlowExecutionEvents for one stream (`Flow` or `Node`): the page's
    /// length, its events after the first `skip` (those already read, which are dropped as
    /// the SDK gave them, never converted), and the next token.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_events(
        &self,
        flow_id: &str,
        alias: &str,
        execution_arn: &str,
        stream: EventStream,
        token: Option<String>,
        skip: usize,
        documents: ActionDocuments,
    ) -> Result<(usize, Vec<Event>, Option<String>), ApiError> {
        let event_type = match stream {
            EventStream::Flow => bar::types::FlowExecutionEventType::Flow,
            EventStream::Node => bar::types::FlowExecutionEventType::Node,
        };
        let request = self
            .client
            .list_flow_execution_events()
            .flow_identifier(flow_id)
            .flow_alias_identifier(alias)
            .execution_identifier(execution_arn)
            .event_type(event_type)
            .max_results(10)
            .set_next_token(token);
        let out = self.call("ListFlowExecutionEvents", request.send()).await?;
        let next = out.next_token.filter(|t| !t.is_empty());
        let len = out.flow_execution_events.len();
        let events = mapped(out.flow_execution_events.into_iter().skip(skip), |e| event_from_sdk(e, documents));
        Ok((len, events, next))
    }

    /// GetFlowExecution: the final status and the errors of an execution.
    pub async fn get_execution(
        &self,
        flow_id: &str,
        alias: &str,
        execution_arn: &str,
    ) -> Result<(ExecutionStatus, Option<Timestamp>, Vec<ExecutionError>), ApiError> {
        let request = self.client.get_flow_execution().flow_identifier(flow_id).flow_alias_identifier(alias).execution_identifier(execution_arn);
        let out = self.call("GetFlowExecution", request.send()).await?;
        let errors = out
            .errors()
            .iter()
            .map(|e| ExecutionError {
                error: e.error().map(|x| x.as_str().to_string()),
                message: e.message().map(str::to_string),
                node_name: e.node_name().map(str::to_string),
            })
            .collect();
        Ok((ExecutionStatus::parse(out.status().as_str()), out.ended_at().and_then(nanos).map(Timestamp), errors))
    }

    /// GetExecutionFlowSnapshot: (flow version, definition JSON text).
    pub async fn get_snapshot(&self, flow_id: &str, alias: &str, execution_arn: &str) -> Result<(String, String), ApiError> {
        let request = self.client.get_execution_flow_snapshot().flow_identifier(flow_id).flow_alias_identifier(alias).execution_identifier(execution_arn);
        let out = self.call("GetExecutionFlowSnapshot", request.send()).await?;
        Ok((out.flow_version().to_string(), out.definition().to_string()))
    }
}

/// The SDK fills missing required timestamps with the epoch: treat that as absent.
fn nanos(t: &aws_smithy_types::DateTime) -> Option<i64> {
    let n = t.secs().checked_mul(1_000_000_000)?.checked_add(t.subsec_nanos() as i64)?;
    (n != 0).then_some(n)
}

fn ts(t: &aws_smithy_types::DateTime) -> Option<Timestamp> {
    nanos(t).map(Timestamp)
}

/// A document as JSON, its strings moved, not copied.
pub fn document_to_json(d: Document) -> Value {
    match d {
        Document::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, document_to_json(v))).collect()),
        Document::Array(items) => Value::Array(items.into_iter().map(document_to_json).collect()),
        Document::Number(aws_smithy_types::Number::PosInt(u)) => json!(u),
        Document::Number(aws_smithy_types::Number::NegInt(i)) => json!(i),
        Document::Number(aws_smithy_types::Number::Float(f)) => json!(f),
        Document::String(s) => Value::String(s),
        Document::Bool(b) => Value::Bool(b),
        Document::Null => Value::Null,
    }
}

fn content_of(d: Option<Document>) -> Option<Content> {
    d.map(|d| Content { document: document_to_json(d) })
}

fn node_content(c: Option<bar::types::NodeExecutionContent>) -> Option<Content> {
    content_of(c.and_then(|c| match c {
        bar::types::NodeExecutionContent::Document(d) => Some(d),
        _ => None,
    }))
}

/// A field of a flow input or output event (two SDK types of one shape).
fn flow_field(name: String, content: Option<bar::types::FlowExecutionContent>) -> FlowField {
    let document = content.and_then(|c| match c {
        bar::types::FlowExecutionContent::Document(d) => Some(d),
        _ => None,
    });
    FlowField { name, content: content_of(document) }
}

fn agent_trace_json(part: &bar::types::TracePart) -> Value {
    use bar::types::{OrchestrationTrace, PostProcessingTrace, PreProcessingTrace, Trace};
    let usage = |m: Option<&bar::types::Metadata>| {
        m.and_then(|m| m.usage()).map(|u| json!({"metadata": {"usage": {"inputTokens": u.input_tokens(), "outputTokens": u.output_tokens()}}}))
    };
    let trace = match part.trace() {
        Some(Trace::OrchestrationTrace(OrchestrationTrace::ModelInvocationOutput(o))) => {
            usage(o.metadata()).map(|u| json!({"orchestrationTrace": {"modelInvocationOutput": u}}))
        }
        Some(Trace::PreProcessingTrace(PreProcessingTrace::ModelInvocationOutput(o))) => {
            usage(o.metadata()).map(|u| json!({"preProcessingTrace": {"modelInvocationOutput": u}}))
        }
        Some(Trace::PostProcessingTrace(PostProcessingTrace::ModelInvocationOutput(o))) => {
            usage(o.metadata()).map(|u| json!({"postProcessingTrace": {"modelInvocationOutput": u}}))
        }
        _ => None,
    };
    let mut out = json!({});
    if let Some(id) = part.agent_id() {
        out["agentId"] = json!(id);
    }
    if let Some(id) = part.agent_alias_id() {
        out["agentAliasId"] = json!(id);
    }
    if let Some(id) = part.session_id() {
        out["sessionId"] = json!(id);
    }
    if let Some(t) = trace {
        out["trace"] = t;
    }
    out
}

/// What an action's response keeps under `ActionDocuments::UsageOnly`: its `usage`, alone.
fn response_usage(d: Document) -> Option<Value> {
    match d {
        Document::Object(mut fields) => {
            fields.remove("usage").map(|usage| Value::Object([("usage".to_string(), document_to_json(usage))].into_iter().collect()))
        }
        _ => None,
    }
}

/// One of the model's enum values as a `Name`: borrowed from `known`, the values the SDK
/// knows (its enum's `values()`), not allocated; a value it does not know is kept as sent.
fn name(value: &str, known: &'static [&'static str]) -> Name {
    match known.iter().find(|k| **k == value) {
        Some(k) => Name::Borrowed(k),
        None => Name::Owned(value.to_string()),
    }
}

/// `items` mapped into a vector of their number. Collecting them instead would map them in
/// the SDK's allocation and then shrink it to the smaller wire type with a reallocation, a
/// copy, for most lists of an event (`FlowExecutionEvent` 224 bytes, `Event` 176; fields
/// 80/128/224 bytes, 56/104/200).
fn mapped<T, U>(items: impl IntoIterator<Item = T, IntoIter: ExactSizeIterator>, f: impl FnMut(T) -> U) -> Vec<U> {
    let items = items.into_iter();
    let mut out = Vec::with_capacity(items.len());
    out.extend(items.map(f));
    out
}

/// An SDK event as the wire model, its strings and documents moved out of the SDK's answer
/// (an action's documents as `documents` says). Unknown union members keep their kind for
/// the report.
pub fn event_from_sdk(event: bar::types::FlowExecutionEvent, documents: ActionDocuments) -> Event {
    use bar::types::FlowExecutionEvent as E;
    match event {
        E::FlowInputEvent(e) => {
            Event::FlowInput(FlowIoEvent { timestamp: ts(&e.timestamp), node_name: e.node_name, fields: mapped(e.fields, |f| flow_field(f.name, f.content)) })
        }
        E::FlowOutputEvent(e) => {
            Event::FlowOutput(FlowIoEvent { timestamp: ts(&e.timestamp), node_name: e.node_name, fields: mapped(e.fields, |f| flow_field(f.name, f.content)) })
        }
        E::FlowFailureEvent(e) => {
            Event::FlowFailure(FlowFailureEvent { timestamp: ts(&e.timestamp), error_code: e.error_code.as_str().to_string(), error_message: e.error_message })
        }
        E::NodeInputEvent(e) => Event::NodeInput(NodeInputEvent {
            timestamp: ts(&e.timestamp),
            node_name: e.node_name,
            fields: mapped(e.fields, |f| NodeInputField {
                kind: f.r#type.map(|t| name(t.as_str(), bar::types::FlowNodeIoDataType::values())),
                category: f.category.map(|c| name(c.as_str(), bar::types::FlowNodeInputCategory::values())),
                name: f.name,
                content: node_content(f.content),
                source: f.source.map(|s| NodeInputSource { node_name: s.node_name, output_field_name: s.output_field_name, expression: s.expression }),
                execution_chain: f
                    .execution_chain
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| ExecutionChainItem {
                        kind: name(c.r#type.as_str(), bar::types::FlowControlNodeType::values()),
                        node_name: c.node_name,
                        index: c.index,
                    })
                    .collect(),
            }),
        }),
        E::NodeOutputEvent(e) => Event::NodeOutput(NodeOutputEvent {
            timestamp: ts(&e.timestamp),
            node_name: e.node_name,
            fields: mapped(e.fields, |f| NodeOutputField {
                kind: f.r#type.map(|t| name(t.as_str(), bar::types::FlowNodeIoDataType::values())),
                name: f.name,
                content: node_content(f.content),
                next: f.next.unwrap_or_default().into_iter().map(|n| NodeOutputNext { node_name: n.node_name, input_field_name: n.input_field_name }).collect(),
            }),
        }),
        E::NodeFailureEvent(e) => Event::NodeFailure(NodeFailureEvent {
            timestamp: ts(&e.timestamp),
            node_name: e.node_name,
            error_code: e.error_code.as_str().to_string(),
            error_message: e.error_message,
        }),
        E::ConditionResultEvent(e) => Event::ConditionResult(ConditionResultEvent {
            timestamp: ts(&e.timestamp),
            node_name: e.node_name,
            satisfied_conditions: e.satisfied_conditions.into_iter().map(|c| SatisfiedCondition { condition_name: c.condition_name }).collect(),
        }),
        E::NodeActionEvent(e) => Event::NodeAction(NodeActionEvent {
            timestamp: ts(&e.timestamp),
            node_name: e.node_name,
            request_id: e.request_id,
            service_name: e.service_name,
            operation_name: e.operation_name,
            operation_request: e.operation_request.filter(|_| documents == ActionDocuments::Keep).map(document_to_json),
            operation_response: match documents {
                ActionDocuments::Keep => e.operation_response.map(document_to_json),
                ActionDocuments::UsageOnly => e.operation_response.and_then(response_usage),
            },
        }),
        E::NodeDependencyEvent(e) => Event::NodeDependency(NodeDependencyEvent {
            timestamp: ts(&e.timestamp),
            trace_elements: TraceElements {
                agent_traces: e
                    .trace_elements
                    .as_ref()
                    .and_then(|t| t.as_agent_traces().ok())
                    .map(|parts| parts.iter().map(agent_trace_json).collect())
                    .unwrap_or_default(),
            },
            node_name: e.node_name,
        }),
        _ => Event::Unknown("unknown".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(value: Value) -> Document {
        match value {
            Value::Object(m) => Document::Object(m.into_iter().map(|(k, v)| (k, document(v))).collect()),
            Value::Array(a) => Document::Array(a.into_iter().map(document).collect()),
            Value::String(s) => Document::String(s),
            Value::Bool(b) => Document::Bool(b),
            Value::Null => Document::Null,
            Value::Number(n) => Document::Number(match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => aws_smithy_types::Number::PosInt(u),
                (None, Some(i)) => aws_smithy_types::Number::NegInt(i),
                _ => aws_smithy_types::Number::Float(n.as_f64().unwrap_or_default()),
            }),
        }
    }

    /// Without content capture an action's documents are left out but for the response's
    /// usage: its span is the one the whole documents give (tokens included), and the
    /// fingerprints of version 4 know it as the same event.
    #[test]
    fn an_action_read_with_its_usage_only_folds_as_with_its_documents() {
        let request = json!({"modelId": "m", "messages": [{"role": "user", "content": [{"text": "hello"}]}]});
        let response = json!({"output": {"message": {"content": [{"text": "hi"}]}}, "usage": {"inputTokens": 11, "outputTokens": 7}, "stopReason": "end_turn"});
        let sdk = || {
            bar::types::FlowExecutionEvent::NodeActionEvent(
                bar::types::NodeActionEvent::builder()
                    .node_name("Ask")
                    .timestamp(aws_smithy_types::DateTime::from_secs_and_nanos(1_767_323_045, 5))
                    .request_id("req-1")
                    .service_name("bedrock-runtime")
                    .operation_name("Converse")
                    .operation_request(document(request.clone()))
                    .operation_response(document(response.clone()))
                    .build()
                    .unwrap(),
            )
        };
        let (kept, usage_only) = (event_from_sdk(sdk(), ActionDocuments::Keep), event_from_sdk(sdk(), ActionDocuments::UsageOnly));
        let (Event::NodeAction(k), Event::NodeAction(u)) = (&kept, &usage_only) else { panic!("{kept:?}") };
        assert_eq!((k.operation_request.as_ref(), k.operation_response.as_ref()), (Some(&request), Some(&response)));
        assert_eq!((u.operation_request.as_ref(), u.operation_response.as_ref()), (None, Some(&json!({"usage": {"inputTokens": 11, "outputTokens": 7}}))));
        assert_eq!((&u.node_name, u.timestamp, &u.request_id), (&k.node_name, k.timestamp, &k.request_id));

        let policy = crate::convert::ContentPolicy::default();
        let types = crate::convert::NodeTypes::default();
        let status = ExecutionStatus::Succeeded;
        let arn = "arn:aws:bedrock:us-east-1:123456789012:flow/F/alias/A/execution/act";
        let mut view = crate::convert::tests::running_view(arn, &status, &types);
        view.finished = true;
        // The action inside its node's run: input, action, output.
        let io = |key: &str, nanos: u32| {
            Event::from_wire(&json!({ key: {"nodeName": "Ask", "timestamp": format!("2026-01-02T03:04:05.{nanos:09}Z"), "fields": [{"name": "x", "content": {"document": "q"}}]} })).unwrap()
        };
        let history = |action: &Event| vec![io("nodeInputEvent", 1), action.clone(), io("nodeOutputEvent", 9)];
        let (a, b) = (crate::convert::convert(&view, &history(&kept), &[], &policy), crate::convert::convert(&view, &history(&usage_only), &[], &policy));
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(a.spans, b.spans);
        let action = a.spans.iter().find(|s| s.name.ends_with(" Ask")).expect("the action's node span");
        let tokens: Vec<_> = action.attributes.iter().filter(|(k, _)| k.starts_with("gen_ai.usage")).map(|(k, v)| (k.to_string(), format!("{v:?}"))).collect();
        assert_eq!(tokens.len(), 2, "{:?}", action.attributes);
        assert!(tokens.iter().any(|(k, v)| k == "gen_ai.usage.input_tokens" && v.contains("11")), "{tokens:?}");
        // Both folded into one state: the second is known as a repeat.
        let mut state = crate::convert::ExecutionState::default();
        let once = crate::convert::fold(
            &mut state,
            &view,
            crate::convert::NewEvents { node: &[io("nodeInputEvent", 1), kept, usage_only], flow: &[], first: (0, 0) },
            &policy,
        );
        assert_eq!(once.problems.iter().filter(|p| p.reason == "duplicate_event").count(), 1);
    }

    /// Every value of the model's enums the SDK knows is named without an allocation, and a
    /// value the SDK does not know is kept as the service sent it.
    #[test]
    fn enum_values_the_sdk_knows_are_not_allocated() {
        use bar::types::{FlowControlNodeType, FlowNodeInputCategory, FlowNodeIoDataType};
        for known in [FlowNodeIoDataType::values(), FlowNodeInputCategory::values(), FlowControlNodeType::values()] {
            assert!(!known.is_empty());
            for v in known {
                let named = name(v, known);
                assert_eq!(named, *v);
                assert!(matches!(named, Name::Borrowed(_)), "{v} is allocated");
            }
        }
        let unknown = FlowNodeIoDataType::from("Tensor");
        let named = name(unknown.as_str(), FlowNodeIoDataType::values());
        assert!(matches!(&named, Name::Owned(s) if s == "Tensor"), "{named:?}");
        assert_eq!(name("Iterator", FlowControlNodeType::values()), "Iterator");
    }

    #[test]
    fn failed_attempts_are_classified_by_error_type_then_status() {
        let cases: [(u16, Option<&str>, Option<ErrorKind>); 10] = [
            (200, None, None),
            (429, Some("ThrottlingException"), Some(ErrorKind::Throttled)),
            (400, Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"), Some(ErrorKind::Throttled)),
            (400, Some("com.amazon.coral#ValidationException"), Some(ErrorKind::Validation)),
            (429, None, Some(ErrorKind::Throttled)),
            (500, Some("InternalServerException"), Some(ErrorKind::Server)),
            (503, None, Some(ErrorKind::Server)),
            (403, Some("AccessDeniedException"), Some(ErrorKind::AccessDenied)),
            (404, None, Some(ErrorKind::NotFound)),
            (418, Some("TeapotException"), Some(ErrorKind::Other)),
        ];
        for (status, error_type, expected) in cases {
            assert_eq!(attempt_error_kind(status, error_type), expected, "{status} {error_type:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_never_starts_more_than_the_limit_in_a_second() {
        let budget = RequestBudget::per_second(5.0);
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..12 {
            budget.acquire().await;
            times.push(start.elapsed());
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times.iter().filter(|u| **u >= *t && **u < *t + Duration::from_secs(1)).count();
            assert!(in_window <= 5, "window at {i}: {in_window}");
        }
        assert!(times[11] >= Duration::from_secs(2));
    }
}
