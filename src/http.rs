//! The exporter's one port (SPEC §7): `/`, `/metrics`, `/-/healthy`, `/-/ready`. A plain match
//! on the path; nothing here calls AWS.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::collector::StatusBoard;
use crate::metrics::Metrics;
use crate::timefmt::{format_nanos, now_nanos};
use bedrock_flow_serve::{self as httpserve, HttpResponse};

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, board: Arc<StatusBoard>, stop: watch::Receiver<bool>) {
    let handler: httpserve::Handler = Arc::new(move |request| {
        let metrics = metrics.clone();
        let board = board.clone();
        Box::pin(async move { handle(&metrics, &board, request) })
    });
    httpserve::serve(listener, handler, stop, Duration::from_secs(5)).await;
}

fn wants_openmetrics(request: &Request<Incoming>) -> bool {
    request.headers().get("accept").and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

fn handle(metrics: &Metrics, board: &StatusBoard, request: Request<Incoming>) -> HttpResponse {
    match request.uri().path() {
        "/metrics" => {
            let (content_type, body) = metrics.render(wants_openmetrics(&request));
            httpserve::respond(200, content_type, body)
        }
        "/-/healthy" => httpserve::respond(200, "text/plain; charset=utf-8", "OK\n"),
        "/-/ready" => {
            if board.ready() {
                httpserve::respond(200, "text/plain; charset=utf-8", "OK\n")
            } else {
                httpserve::respond(
                    503,
                    "text/plain; charset=utf-8",
                    "not ready: the state is loading, a first poll is pending, or the process is shutting down\n",
                )
            }
        }
        "/" => httpserve::respond(200, "text/html; charset=utf-8", landing_page(board)),
        _ => httpserve::respond(404, "text/plain; charset=utf-8", "not found\n"),
    }
}

const HOUR_NANOS: i64 = 3_600_000_000_000;

/// Whole seconds since `at`, if that was within the last hour (what `/` still mentions).
fn secs_within_the_hour(now: i64, at: i64) -> Option<i64> {
    (now - at < HOUR_NANOS).then_some((now - at) / 1_000_000_000)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn landing_page(board: &StatusBoard) -> String {
    let now = now_nanos();
    let mut rows = String::new();
    for flow in board.flows() {
        let mut by_status: std::collections::BTreeMap<&str, usize> = Default::default();
        for (end, status) in &flow.recent {
            if *end >= now - HOUR_NANOS {
                *by_status.entry(status).or_default() += 1;
            }
        }
        let recent = if by_status.is_empty() { "none".to_string() } else { by_status.iter().map(|(s, n)| format!("{s}: {n}")).collect::<Vec<_>>().join(", ") };
        let last_poll =
            flow.last_successful_poll.map(|t| format!("{} ({}s ago)", format_nanos(t), (now - t) / 1_000_000_000)).unwrap_or_else(|| "never".into());
        rows.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&flow.flow_name),
            escape(&flow.flow_id),
            escape(&last_poll),
            flow.running,
            escape(&recent),
            escape(flow.last_error.as_deref().unwrap_or("")),
        ));
    }
    let parked = board.parked();
    let parked_section = if parked.is_empty() {
        String::new()
    } else {
        let mut rows = String::new();
        for p in &parked {
            rows.push_str(&format!(
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&p.flow_id),
                escape(&p.arn),
                escape(&p.reason),
                escape(&p.message),
                escape(&format_nanos(p.since)),
            ));
        }
        format!(
            "<h2>Parked executions ({})</h2>\n<p>The OTLP endpoint refused their spans for good; they are offered again every 15 minutes while the others go on.</p>\n\
<table><tr><th>Flow</th><th>Execution</th><th>Reason</th><th>Error</th><th>Since</th></tr>\n{rows}</table>\n",
            parked.len()
        )
    };
    let (member, holders) = board.holders();
    let leases_section = if holders.is_empty() && member.is_empty() {
        String::new()
    } else {
        let rows: String = holders
            .iter()
            .map(|(flow, holder)| {
                format!(
                    "<tr><td><code>{}</code></td><td><code>{}</code>{}</td></tr>\n",
                    escape(flow),
                    escape(holder),
                    if holder == &member { " (this replica)" } else { "" }
                )
            })
            .collect();
        format!(
            "<h2>Leases</h2>\n<p>This replica: <code>{}</code>{}.</p>\n<table><tr><th>Flow (region/account/id)</th><th>Held by</th></tr>\n{rows}</table>\n",
            escape(&member),
            if board.store_down() { "; the shared state store cannot be reached: no work until it returns" } else { "" }
        )
    };
    // Reading paused stops everything else on the page from moving: said first.
    let paused_section = board
        .reading_paused()
        .map(|(bytes, max)| {
            format!(
                "<p><strong>Reading is paused:</strong> the outbox is full ({bytes} bytes of spans, bound {max}): the OTLP endpoint does not take spans. \
Nothing is lost; reading resumes by itself once it does.</p>\n"
            )
        })
        .unwrap_or_default();
    // A failed store operation in the last hour: the work it holds back waits for a later cycle.
    let store_section = board
        .store_failure()
        .and_then(|f| Some((secs_within_the_hour(now, f.at)?, f)))
        .map(|(ago, f)| {
            format!(
                "<p><strong>The state store failed</strong> {}s ago: cannot {}: <code>{}</code>. The work it holds back is tried again each cycle \
(<code>bedrock_flow_exporter_state_store_errors_total</code> counts every failure).</p>\n",
                ago,
                escape(&f.doing),
                escape(&f.error)
            )
        })
        .unwrap_or_default();
    let dropped_section = board
        .dropped_spans()
        .and_then(|d| Some((secs_within_the_hour(now, d.at)?, d)))
        .map(|(ago, d)| {
            format!(
                "<p><strong>The OTLP endpoint dropped spans</strong> it accepted: {} since the start, the last {}s ago: <code>{}</code> \
(OTLP partial success; not sent again, counted in <code>bedrock_flow_exporter_spans_rejected_total</code>).</p>\n",
                d.total,
                ago,
                escape(&d.message)
            )
        })
        .unwrap_or_default();
    let paused_section = paused_section + &store_section + &dropped_section;
    let parked_section = parked_section + &leases_section;
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>bedrock-flow-exporter</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>\n\
<body><h1>bedrock-flow-exporter {}</h1>\n<p><a href=\"/metrics\">Metrics</a> · <a href=\"/-/healthy\">Health</a> · <a href=\"/-/ready\">Readiness</a> ({})</p>\n\
{}<table><tr><th>Flow</th><th>Id</th><th>Last successful poll</th><th>Running now</th><th>Finished in the last hour</th><th>Last error</th></tr>\n{}</table>\n{}</body></html>\n",
        env!("CARGO_PKG_VERSION"),
        if board.ready() { "ready" } else { "not ready" },
        paused_section,
        rows,
        parked_section
    )
}
