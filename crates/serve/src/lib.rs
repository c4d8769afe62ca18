//! The one HTTP/1 serving loop (hyper 1) used by the exporter's endpoint and the emulator:
//! accept until told to stop, then let open connections finish (graceful shutdown).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type HttpResponse = Response<Full<Bytes>>;

/// The client's address of the connection a request came on, in the request's extensions
/// (the emulator counts its clients' connections by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer(pub std::net::SocketAddr);
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = HttpResponse> + Send>> + Send + Sync>;

/// Serves `handler` on `listener` until `stop` turns true, then waits up to `grace` for open
/// connections to finish.
pub async fn serve(listener: TcpListener, handler: Handler, mut stop: watch::Receiver<bool>, grace: Duration) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // A connection that failed before it was accepted concerns that client
                        // only; anything else (EMFILE, ENFILE, ENOMEM) does not go away by
                        // retrying at once, so back off instead of spinning (as axum does).
                        if !is_connection_error(&e) {
                            tracing::error!(error = %e, "cannot accept a connection; retrying in 1s");
                            tokio::select! {
                                _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                                _ = stop.changed() => break,
                            }
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset)
}

/// A response with a body and a content type.
pub fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
