//! The accept loop: axum's router over hyper's HTTP/1.1 connections, with the bounds a public
//! endpoint needs and `axum::serve` does not expose.
//!
//! - A connection that has not sent a whole request head within `header_read_timeout` is
//!   closed, idle keep-alive connections included: slow clients cannot hold sockets (and file
//!   descriptors) that Gemini's deliveries need.
//! - At most `max_connections` are open at once; past that, new connections wait in the
//!   kernel's backlog rather than exhausting the process's descriptors.
//! - Request heads are bounded (`max_header_bytes`, answered 431 by hyper).
//! - On shutdown the listener closes; for a short linger every answer carries
//!   `Connection: close` and idle keep-alive connections stay open, then the idle ones are
//!   closed and every request in flight is answered before its connection ends. Closing idle
//!   connections at once would drop a request a client had just written on one (HTTP/1.1's
//!   keep-alive race): during the linger such a request is still read and answered, and the
//!   client is told to reconnect, which finds the listener closed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// The request line and headers together, in bytes.
    pub max_header_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// How long idle keep-alive connections may still bring a request after shutdown begins.
const DRAIN_LINGER: Duration = Duration::from_millis(1000);

/// Serves `router` on `listener` until `shutdown`, then drains as described above.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let draining = shutdown.clone();
    let router = router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let draining = draining.clone();
            async move {
                let mut response = next.run(request).await;
                if draining.is_cancelled() {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        },
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(100);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // EMFILE and the like pass; spinning on them would not help them pass sooner.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a head timeout, a malformed request).
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::time::sleep(DRAIN_LINGER).await;
    graceful.shutdown().await;
}
