//! The HTTP listener: the node's axum router served by hyper, with a cap on open connections
//! and a deadline for each request's head, so that slow or idle clients cannot pile up
//! connections (each may buffer a request body of up to `ingest.maxFrameBytes`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use logcluster_common::shutdown::Shutdown;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Bounds of the HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a request's head (request line and headers) may take to arrive, and an
    /// idle keep-alive connection may stay open; `None`: no limit.
    pub header_timeout: Option<Duration>,
}

/// Longest wait for the head of the one request an overflow connection may make.
const OVERFLOW_HEAD: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish.
///
/// Past `max_connections`, a few more connections (an eighth as many, at least 8) are
/// served one request each, with a short wait for its head, then closed: health probes and
/// metric scrapes still get through when shippers hold every slot, while the count stays
/// bounded. Past those, a connection is closed as soon as it is accepted.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    refused: Counter,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(Semaphore::new((limits.max_connections / 8).max(8)));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        while connections.try_join_next().is_some() {}
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // A client gave up while queued: nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(error) => {
                // Out of file descriptors, mostly: wait a moment rather than spin.
                warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (slot, one_request) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(slot) => (slot, true),
                Err(_) => {
                    if refused.inc() % 1000 == 0 {
                        warn!(
                            max = limits.max_connections,
                            "refusing HTTP connections: too many open (logged once per 1,000)"
                        );
                    }
                    continue;
                }
            },
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            if one_request {
                let head = limits
                    .header_timeout
                    .map_or(OVERFLOW_HEAD, |t| t.min(OVERFLOW_HEAD));
                builder.keep_alive(false).header_read_timeout(head);
            } else {
                builder.header_read_timeout(limits.header_timeout);
            }
            let connection =
                builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
            let mut connection = std::pin::pin!(connection);
            let finished = tokio::select! {
                result = connection.as_mut() => Some(result),
                () = shutdown.wait() => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                debug!(%error, "HTTP connection ended");
            }
        });
    }
    // New connections are refused from here on, not left waiting in the backlog.
    drop(listener);
    while connections.join_next().await.is_some() {}
}
