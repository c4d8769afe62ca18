//! The emulator's HTTP front: routing on method and raw path (labels percent-decoded after the
//! split), validation, pages with opaque expiring tokens, modeled errors, injected faults and
//! the `/_emulator/stats` admin endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::rng::Rng;
use super::scenario::Scenario;
use super::world::World;
use bedrock_flow_serve::{self as httpserve, HttpResponse};
use bedrock_flow_wire::model::ExecutionStatus;
use bedrock_flow_wire::timefmt::now_nanos;

const PAGE_CAP: usize = 10;

/// What the emulator has served of one execution (see `EmulatorHandle::executions`).
#[derive(Clone, Debug)]
pub struct ExecutionFacts {
    pub arn: String,
    pub flow_id: String,
    pub alias: String,
    pub version: String,
    pub status: String,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    pub node_events: Vec<Value>,
    pub flow_events: Vec<Value>,
}

/// A running emulator. Dropping the handle does not stop it: call `stop`.
pub struct EmulatorHandle {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    world: Arc<Mutex<World>>,
}

impl EmulatorHandle {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The stats document `/_emulator/stats` serves.
    pub fn stats(&self) -> Value {
        lock(&self.world).stats_json()
    }

    /// The flows served: id, name, and aliases with their versions.
    pub fn flows(&self) -> Value {
        lock(&self.world).flows_json()
    }

    /// Every execution with its final status, as (ARN, status, node events, flow events) at
    /// `now`: what a client can read of it. For tests and benchmarks.
    pub fn executions(&self, now: i64) -> Vec<ExecutionFacts> {
        let w = lock(&self.world);
        w.executions
            .iter()
            .filter(|e| e.created_at <= now)
            .map(|e| {
                let horizon = e.horizon(now);
                let (status, ended_at) = e.status_at(now);
                ExecutionFacts {
                    arn: e.arn.clone(),
                    flow_id: w.flows[e.flow].id.clone(),
                    status: status.as_str().to_string(),
                    created_at: e.created_at,
                    ended_at,
                    node_events: e.node_stream.events[..e.node_stream.visible(horizon)].to_vec(),
                    flow_events: e.flow_stream.events[..e.flow_stream.visible(horizon)].to_vec(),
                    version: e.version.clone(),
                    alias: e.alias.clone(),
                }
            })
            .collect()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn lock(world: &Mutex<World>) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts serving `scenario` on `listener`.
pub async fn start(listener: TcpListener, scenario: Scenario) -> std::io::Result<EmulatorHandle> {
    let addr = listener.local_addr()?;
    let world = Arc::new(Mutex::new(World::new(scenario, now_nanos())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let faults_rng = Arc::new(Mutex::new(Rng::derive(lock(&world).scenario.seed, "faults")));
    let handler_world = world.clone();
    let handler: httpserve::Handler = Arc::new(move |request| {
        let world = handler_world.clone();
        let rng = faults_rng.clone();
        Box::pin(async move { handle(world, rng, request).await })
    });
    let server = tokio::spawn(httpserve::serve(listener, handler, stop_rx.clone(), Duration::from_secs(2)));
    let ticker_world = world.clone();
    let mut ticker_stop = stop_rx;
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = interval.tick() => lock(&ticker_world).tick(now_nanos()),
                _ = ticker_stop.changed() => break,
            }
        }
    });
    Ok(EmulatorHandle { addr, stop: stop_tx, tasks: vec![server, ticker], world })
}

struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
}

fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { status, code, message: message.into() }
}

fn validation(message: impl Into<String>) -> ApiError {
    api_error(400, "ValidationException", message)
}

fn not_found(message: impl Into<String>) -> ApiError {
    api_error(404, "ResourceNotFoundException", message)
}

fn error_response(world: &Mutex<World>, error: ApiError, request_id: &str) -> HttpResponse {
    lock(world).count_error(error.code);
    let body = json!({"message": error.message, "__type": error.code});
    hyper::Response::builder()
        .status(error.status)
        .header("content-type", "application/json")
        .header("x-amzn-errortype", error.code)
        .header("x-amzn-requestid", request_id)
        .body(http_body_util::Full::new(body.to_string().into()))
        .unwrap_or_else(|_| httpserve::respond(500, "text/plain", "response build failed"))
}

/// Credentials issued by the emulated STS; requests signed with them can be told apart.
pub const ASSUMED_ACCESS_KEY_ID: &str = "ASIAEMULATEDROLE0001";

fn assume_role(world: &Mutex<World>, form: &str, request_id: &str) -> HttpResponse {
    let params = query_params(Some(form));
    lock(world).count_request("AssumeRole");
    let (Some("AssumeRole"), Some(role)) = (param(&params, "Action"), param(&params, "RoleArn")) else {
        return error_response(world, validation("only STS AssumeRole is emulated"), request_id);
    };
    let session = param(&params, "RoleSessionName").unwrap_or("session");
    let account = role.split(':').nth(4).unwrap_or("123456789012");
    let role_name = role.rsplit('/').next().unwrap_or("role");
    let expiration = bedrock_flow_wire::timefmt::format_nanos(now_nanos() + 3_600_000_000_000);
    let expiration = format!("{}Z", &expiration[..19]);
    let body = format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult><Credentials>\
<AccessKeyId>{ASSUMED_ACCESS_KEY_ID}</AccessKeyId><SecretAccessKey>emulated-secret</SecretAccessKey><SessionToken>emulated-session-token</SessionToken>\
<Expiration>{expiration}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROAEMULATED:{session}</AssumedRoleId>\
<Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn></AssumedRoleUser></AssumeRoleResult>\
<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></AssumeRoleResponse>"
    );
    httpserve::respond(200, "text/xml", body)
}

enum Route {
    List { flow: String },
    Start { flow: String, alias: String },
    Get { flow: String, alias: String, execution: String },
    Events { flow: String, alias: String, execution: String },
    Snapshot { flow: String, alias: String, execution: String },
    Stop { flow: String, alias: String, execution: String },
}

impl Route {
    fn operation(&self) -> &'static str {
        match self {
            Route::List { .. } => "ListFlowExecutions",
            Route::Start { .. } => "StartFlowExecution",
            Route::Get { .. } => "GetFlowExecution",
            Route::Events { .. } => "ListFlowExecutionEvents",
            Route::Snapshot { .. } => "GetExecutionFlowSnapshot",
            Route::Stop { .. } => "StopFlowExecution",
        }
    }
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let segments: Vec<String> = path.trim_start_matches('/').split('/').map(decode).collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let owned = |i: usize| s[i].to_string();
    Some(match (method.as_str(), s.as_slice()) {
        ("GET", ["flows", _, "executions"]) => Route::List { flow: owned(1) },
        ("POST", ["flows", _, "aliases", _, "executions"]) => Route::Start { flow: owned(1), alias: owned(3) },
        ("GET", ["flows", _, "aliases", _, "executions", _]) => Route::Get { flow: owned(1), alias: owned(3), execution: owned(5) },
        ("GET", ["flows", _, "aliases", _, "executions", _, "events"]) => Route::Events { flow: owned(1), alias: owned(3), execution: owned(5) },
        ("GET", ["flows", _, "aliases", _, "executions", _, "flowsnapshot"]) => Route::Snapshot { flow: owned(1), alias: owned(3), execution: owned(5) },
        ("POST", ["flows", _, "aliases", _, "executions", _, "stop"]) => Route::Stop { flow: owned(1), alias: owned(3), execution: owned(5) },
        _ => return None,
    })
}

fn is_id(text: &str, len: Option<usize>) -> bool {
    !text.is_empty() && len.is_none_or(|l| text.len() == l) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A flow identifier (ARN or bare id) → the bare id.
fn flow_id(identifier: &str) -> Result<String, ApiError> {
    let id = match identifier.strip_prefix("arn:aws:bedrock:") {
        Some(rest) => rest.split_once(":flow/").map(|(_, id)| id).unwrap_or(""),
        None => identifier,
    };
    if is_id(id, Some(10)) {
        Ok(id.to_string())
    } else {
        Err(validation(format!("1 validation error detected: Value '{identifier}' at 'flowIdentifier' failed to satisfy constraint: Member must satisfy regular expression pattern")))
    }
}

fn alias_id(identifier: &str) -> Result<String, ApiError> {
    let id = match identifier.split_once("/alias/") {
        Some((_, id)) if identifier.starts_with("arn:") => id,
        _ => identifier,
    };
    if is_id(id, None) {
        Ok(id.to_string())
    } else {
        Err(validation(format!("1 validation error detected: Value '{identifier}' at 'flowAliasIdentifier' failed to satisfy constraint: Member must satisfy regular expression pattern")))
    }
}

fn execution_name(identifier: &str) -> Result<String, ApiError> {
    let name = match identifier.split_once("/execution/") {
        Some((_, name)) if identifier.starts_with("arn:") => name,
        _ => identifier,
    };
    if !name.is_empty() && name.len() <= 36 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(name.to_string())
    } else {
        Err(validation(format!("1 validation error detected: Value '{identifier}' at 'executionIdentifier' failed to satisfy constraint: Member must satisfy regular expression pattern")))
    }
}

fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn max_results(params: &[(String, String)]) -> Result<usize, ApiError> {
    match param(params, "maxResults") {
        None => Ok(PAGE_CAP),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => Ok((n as usize).min(PAGE_CAP)),
            _ => Err(validation(format!(
                "1 validation error detected: Value '{text}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 1000"
            ))),
        },
    }
}

/// A page token: which list, from which offset, issued when. Opaque to clients.
fn make_token(list: u64, offset: usize, now: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1|{list:x}|{offset}|{}", now / 1_000_000))
}

fn read_token(token: &str, list: u64, ttl_secs: u64, now: i64) -> Result<usize, ApiError> {
    let invalid = || validation("The provided nextToken is invalid or expired.");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let parts: Vec<&str> = text.split('|').collect();
    let [version, list_hex, offset, issued_ms] = parts.as_slice() else {
        return Err(invalid());
    };
    if *version != "v1" || u64::from_str_radix(list_hex, 16).ok() != Some(list) {
        return Err(invalid());
    }
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let issued_ms: i64 = issued_ms.parse().map_err(|_| invalid())?;
    if ttl_secs > 0 && now / 1_000_000 - issued_ms > ttl_secs as i64 * 1000 {
        return Err(invalid());
    }
    Ok(offset)
}

fn list_key(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h = (h ^ b as u64).wrapping_mul(0x1000_0000_01b3);
        }
    }
    h
}

/// One page of `total` items starting at the token's offset: (range, next token).
fn page(params: &[(String, String)], list: u64, total: usize, ttl_secs: u64, now: i64) -> Result<(std::ops::Range<usize>, Option<String>), ApiError> {
    let size = max_results(params)?;
    let offset = match param(params, "nextToken") {
        Some(token) => read_token(token, list, ttl_secs, now)?,
        None => 0,
    };
    if offset > total {
        return Err(validation("The provided nextToken is invalid or expired."));
    }
    let end = (offset + size).min(total);
    let next = (end < total).then(|| make_token(list, end, now));
    Ok((offset..end, next))
}

async fn handle(world: Arc<Mutex<World>>, rng: Arc<Mutex<Rng>>, request: Request<Incoming>) -> HttpResponse {
    let request_id = {
        let mut r = rng.lock().unwrap_or_else(|p| p.into_inner());
        r.uuid()
    };
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    if path == "/_emulator/stats" {
        let stats = lock(&world).stats_json();
        return httpserve::respond(200, "application/json", stats.to_string());
    }
    if path == "/_emulator/healthy" {
        return httpserve::respond(200, "text/plain", "ok\n");
    }
    // Which connection the request came on, and who signed it: the access key id and region
    // of the SigV4 credential scope. One look at the world for both.
    let peer = request.extensions().get::<httpserve::Peer>().map(|p| p.0);
    let signer = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .map(|c| c.split([',', ' ']).next().unwrap_or("").split('/').collect::<Vec<_>>())
        .filter(|scope| scope.len() >= 3)
        .map(|scope| format!("{}/{}", scope[0], scope[2]));
    if peer.is_some() || signer.is_some() {
        let mut w = lock(&world);
        if let Some(peer) = peer {
            w.stats.connections.insert(peer);
        }
        if let Some(signer) = signer {
            *w.stats.signers.entry(signer).or_default() += 1;
        }
    }
    if method == Method::POST && path == "/" {
        // STS AssumeRole (query protocol), so that `role_arn` works against the emulator.
        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return assume_role(&world, &String::from_utf8_lossy(&body), &request_id);
    }
    let Some(route) = route(&method, &path) else {
        return error_response(&world, api_error(404, "UnknownOperationException", format!("no operation at {method} {path}")), &request_id);
    };
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return error_response(&world, validation(format!("could not read the body: {e}")), &request_id),
    };
    let (latency, fault) = {
        let mut w = lock(&world);
        w.count_request(route.operation());
        let faults = w.scenario.faults.clone();
        let mut r = rng.lock().unwrap_or_else(|p| p.into_inner());
        let served = w.stats.requests.values().sum::<u64>();
        let fault = if served <= faults.fail_first_requests {
            Some(api_error(500, "InternalServerException", "The service is unavailable for a moment."))
        } else if r.chance(faults.throttle_ratio) {
            Some(api_error(429, "ThrottlingException", "Rate exceeded"))
        } else if r.chance(faults.server_error_ratio) {
            Some(api_error(500, "InternalServerException", "An internal error occurred. Try again."))
        } else {
            None
        };
        (faults.latency_ms, fault)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(fault) = fault {
        return error_response(&world, fault, &request_id);
    }
    let params = query_params(query.as_deref());
    let result = answer(&world, route, &params, &body, now_nanos());
    match result {
        Ok(value) => hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-amzn-requestid", &request_id)
            .body(http_body_util::Full::new(value.to_string().into()))
            .unwrap_or_else(|_| httpserve::respond(500, "text/plain", "response build failed")),
        Err(error) => error_response(&world, error, &request_id),
    }
}

fn answer(world: &Mutex<World>, route: Route, params: &[(String, String)], body: &[u8], now: i64) -> Result<Value, ApiError> {
    let mut w = lock(world);
    let ttl = w.scenario.faults.token_ttl_secs;
    let find_flow = |w: &World, identifier: &str| -> Result<usize, ApiError> {
        let id = flow_id(identifier)?;
        if w.scenario.faults.access_denied_flows.contains(&id) {
            return Err(api_error(403, "AccessDeniedException", format!("User is not authorized to access flow {id}")));
        }
        w.flows.iter().position(|f| f.id == id).ok_or_else(|| not_found(format!("Flow {id} was not found.")))
    };
    let find_execution = |w: &World, flow: &str, alias: &str, execution: &str| -> Result<usize, ApiError> {
        let f = find_flow(w, flow)?;
        let alias = alias_id(alias)?;
        let name = execution_name(execution)?;
        let index = *w.by_name.get(&(w.flows[f].id.clone(), name.clone())).ok_or_else(|| not_found(format!("Flow execution {name} was not found.")))?;
        let e = &w.executions[index];
        if e.alias != alias || e.created_at > now {
            return Err(not_found(format!("Flow execution {name} was not found.")));
        }
        Ok(index)
    };
    match route {
        Route::List { flow } => {
            let f = find_flow(&w, &flow)?;
            let alias = match param(params, "flowAliasIdentifier") {
                Some(a) => Some(alias_id(a)?),
                None => None,
            };
            let items = w.listing(f, alias.as_deref(), now);
            let list = list_key(&["list", &w.flows[f].id, alias.as_deref().unwrap_or("*")]);
            let (range, next) = page(params, list, items.len(), ttl, now)?;
            let flow_id = w.flows[f].id.clone();
            let summaries: Vec<Value> =
                items[range].iter().map(|i| serde_json::to_value(w.executions[*i].summary(&flow_id, now)).unwrap_or(Value::Null)).collect();
            let mut out = json!({"flowExecutionSummaries": summaries});
            if let Some(token) = next {
                out["nextToken"] = json!(token);
            }
            Ok(out)
        }
        Route::Events { flow, alias, execution } => {
            let event_type = match param(params, "eventType") {
                Some(t @ ("Node" | "Flow")) => t.to_string(),
                Some(other) => return Err(validation(format!("1 validation error detected: Value '{other}' at 'eventType' failed to satisfy constraint: Member must satisfy enum value set: [Node, Flow]"))),
                None => return Err(validation("1 validation error detected: Value null at 'eventType' failed to satisfy constraint: Member must not be null")),
            };
            let index = find_execution(&w, &flow, &alias, &execution)?;
            let e = &w.executions[index];
            if e.vanished {
                return Err(not_found(format!("Events of flow execution {} were not found.", e.name)));
            }
            let stream = if event_type == "Flow" { &e.flow_stream } else { &e.node_stream };
            let visible = stream.visible(e.horizon(now));
            let list = list_key(&["events", &e.arn, &event_type]);
            let (range, next) = page(params, list, visible, ttl, now)?;
            let mut out = json!({"flowExecutionEvents": stream.events[range].to_vec()});
            if let Some(token) = next {
                out["nextToken"] = json!(token);
            }
            Ok(out)
        }
        Route::Get { flow, alias, execution } => {
            let index = find_execution(&w, &flow, &alias, &execution)?;
            let e = &w.executions[index];
            let (status, ended) = e.status_at(now);
            let mut out = json!({
                "executionArn": e.arn, "flowAliasIdentifier": e.alias, "flowIdentifier": w.flows[e.flow].id,
                "flowVersion": e.version, "startedAt": bedrock_flow_wire::timefmt::format_nanos(e.created_at), "status": status.as_str(),
            });
            if let Some(t) = ended {
                out["endedAt"] = json!(bedrock_flow_wire::timefmt::format_nanos(t));
                if matches!(status, ExecutionStatus::Failed | ExecutionStatus::TimedOut) && !e.errors.is_empty() {
                    out["errors"] = serde_json::to_value(&e.errors).unwrap_or(Value::Null);
                }
            }
            Ok(out)
        }
        Route::Snapshot { flow, alias, execution } => {
            let index = find_execution(&w, &flow, &alias, &execution)?;
            let e = &w.executions[index];
            let f = &w.flows[e.flow];
            let definition = f.versions.get(&e.version).map(|v| v.1.as_str().to_string()).unwrap_or_else(|| "{}".into());
            Ok(json!({
                "definition": definition,
                "executionRoleArn": format!("arn:aws:iam::{}:role/service-role/AmazonBedrockExecutionRoleForFlows_{}", w.scenario.account, f.id),
                "flowAliasIdentifier": e.alias, "flowIdentifier": f.id, "flowVersion": e.version,
            }))
        }
        Route::Start { flow, alias } => {
            let f = find_flow(&w, &flow)?;
            let alias = alias_id(&alias)?;
            if !w.flows[f].aliases.iter().any(|a| a.id == alias) {
                return Err(not_found(format!("Flow alias {alias} was not found.")));
            }
            let request: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(body).map_err(|e| validation(format!("Could not parse the request body: {e}")))?
            };
            let inputs = request.get("inputs").and_then(Value::as_array).cloned().unwrap_or_default();
            if inputs.len() != 1 {
                return Err(validation("1 validation error detected: Value at 'inputs' failed to satisfy constraint: Member must have length equal to 1"));
            }
            let document = inputs[0].pointer("/content/document").cloned().ok_or_else(|| validation("inputs[0].content.document is required"))?;
            let name = match request.get("flowExecutionName").and_then(Value::as_str) {
                Some(n) => {
                    let n = execution_name(n)?;
                    if w.by_name.contains_key(&(w.flows[f].id.clone(), n.clone())) {
                        return Err(api_error(409, "ConflictException", format!("A flow execution named {n} already exists.")));
                    }
                    Some(n)
                }
                None => None,
            };
            let index = w.create(f, Some(&alias), now, name, Some(document), None);
            Ok(json!({"executionArn": w.executions[index].arn}))
        }
        Route::Stop { flow, alias, execution } => {
            let index = find_execution(&w, &flow, &alias, &execution)?;
            let e = &mut w.executions[index];
            let (status, _) = e.status_at(now);
            if status.is_terminal() {
                return Err(api_error(409, "ConflictException", format!("Flow execution {} is not running (status {}).", e.name, status.as_str())));
            }
            e.aborted_at = Some(now);
            Ok(json!({"executionArn": e.arn, "status": "Aborted"}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_before_decoding() {
        let arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aflow%2FABCDEFGHIJ%2Falias%2FKLMNOPQRST%2Fexecution%2Fx-1";
        match route(&Method::GET, &format!("/flows/ABCDEFGHIJ/aliases/KLMNOPQRST/executions/{arn}/events")) {
            Some(Route::Events { execution, .. }) => {
                assert_eq!(execution_name(&execution).ok().as_deref(), Some("x-1"))
            }
            _ => panic!("not routed"),
        }
        assert!(route(&Method::DELETE, "/flows/ABCDEFGHIJ/executions").is_none());
    }

    #[test]
    fn tokens_are_bound_to_their_list_and_expire() {
        let token = make_token(7, 20, 1_000_000_000_000);
        assert_eq!(read_token(&token, 7, 0, 5_000_000_000_000).ok(), Some(20));
        assert!(read_token(&token, 8, 0, 1_000_000_000_000).is_err());
        assert!(read_token(&token, 7, 10, 1_011_000_000_000).is_err());
        assert!(read_token("!!", 7, 0, 0).is_err());
    }
}
