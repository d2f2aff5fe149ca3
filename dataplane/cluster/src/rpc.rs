//! Node-to-node RPC over mutual TLS: one long-lived, pipelined connection per peer.
//!
//! Why not HTTP: replication sends tens of thousands of small batches per second; a request
//! per connection would pay a TLS handshake each, and HTTP/1.1 keep-alive cannot pipeline
//! answers out of order. Here every message carries a request id, requests are answered as
//! they finish, and a connection carries any number of requests at once.
//!
//! Wire format (big-endian), both directions:
//! `[u32 length of the rest][u8 kind or status][u64 request id][payload]`.
//! Request kinds are the caller's (see [`crate::replication::Kind`]); a response's status is
//! [`STATUS_OK`] or [`STATUS_ERROR`] (payload = UTF-8 message).
//!
//! Must not: interpret payloads. Handlers decide what a kind means.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logcluster_common::io::{buffered_socket, read_exact_vec};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

pub const STATUS_OK: u8 = 0;
pub const STATUS_ERROR: u8 = 1;

/// Largest message either side accepts (a replicated batch is at most one ingest frame plus
/// encoding overhead; query answers are bounded by the query limit).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Why a call failed. Every variant means "this peer did not confirm": callers treat them
/// alike for quorum purposes and differ only in what they log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("connection to {addr} lost: {message}")]
    Io { addr: String, message: String },
    #[error("call to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("{addr} answered with an error: {message}")]
    Remote { addr: String, message: String },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, RpcError>>>>>;

/// A message on its way out (a request or an answer): the header, then the payload, which
/// calls with the same payload (one batch to several replicas) share instead of copying.
struct Outgoing {
    head: [u8; HEAD_BYTES],
    payload: Arc<Vec<u8>>,
}

/// `[u32 length][u8 kind][u64 id]`.
const HEAD_BYTES: usize = 13;

fn message_head(kind: u8, id: u64, payload_len: usize) -> [u8; HEAD_BYTES] {
    let mut head = [0u8; HEAD_BYTES];
    head[..4].copy_from_slice(&((HEAD_BYTES - 4 + payload_len) as u32).to_be_bytes());
    head[4] = kind;
    head[5..].copy_from_slice(&id.to_be_bytes());
    head
}

struct Connection {
    outgoing: mpsc::Sender<Outgoing>,
    pending: Pending,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// A client for one peer; cheap to clone; reconnects lazily after a failure.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    connect_timeout: Duration,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    next_id: AtomicU64,
}

impl RpcClient {
    /// A client for `addr` (`host:port`); the peer's certificate must name `server_name`.
    pub fn new(
        addr: String,
        server_name: ServerName<'static>,
        connector: TlsConnector,
        connect_timeout: Duration,
    ) -> RpcClient {
        RpcClient {
            inner: Arc::new(ClientInner {
                addr,
                server_name,
                connector,
                connect_timeout,
                connection: tokio::sync::Mutex::new(None),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    async fn connection(&self) -> Result<Arc<Connection>, RpcError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.alive.load(Ordering::Acquire)
        {
            return Ok(conn.clone());
        }
        let addr = self.inner.addr.clone();
        let connect = async {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            self.inner
                .connector
                .connect(self.inner.server_name.clone(), tcp)
                .await
        };
        let tls = tokio::time::timeout(self.inner.connect_timeout, connect)
            .await
            .map_err(|_| RpcError::Connect {
                addr: addr.clone(),
                message: format!("no answer within {:?}", self.inner.connect_timeout),
            })?
            .map_err(|e| RpcError::Connect {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
        let conn = Arc::new(spawn_client_connection(tls, addr));
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request and waits for its answer, at most `timeout` in all. The payload may
    /// be shared with other calls: it is written as it is, not copied into the message.
    pub async fn call(
        &self,
        kind: u8,
        payload: Arc<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let addr = self.inner.addr.clone();
        let used: std::sync::Mutex<Option<Arc<Connection>>> = std::sync::Mutex::new(None);
        let work = async {
            let conn = self.connection().await?;
            *used.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            let message = Outgoing {
                head: message_head(kind, id, payload.len()),
                payload: payload.clone(),
            };
            if conn.outgoing.send(message).await.is_err() {
                conn.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                conn.alive.store(false, Ordering::Release);
                return Err(RpcError::Io {
                    addr: addr.clone(),
                    message: "connection closed".into(),
                });
            }
            let answer = rx.await.unwrap_or_else(|_| {
                Err(RpcError::Io {
                    addr: addr.clone(),
                    message: "connection closed".into(),
                })
            });
            if answer.is_err() {
                conn.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            }
            answer
        };
        let outcome = tokio::time::timeout(timeout, work).await;
        let used = used.lock().unwrap_or_else(|p| p.into_inner()).take();
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // A peer that stops answering (SIGSTOP, partition) would otherwise keep the
                // connection "alive" forever: drop it so the next call reconnects — only if
                // it is still the one this call used, not a fresh one made meanwhile.
                let mut slot = self.inner.connection.lock().await;
                if let (Some(current), Some(used)) = (slot.as_ref(), used.as_ref())
                    && Arc::ptr_eq(current, used)
                {
                    current.alive.store(false, Ordering::Release);
                    *slot = None;
                }
                Err(RpcError::Timeout {
                    addr,
                    after: timeout,
                })
            }
        }
    }
}

async fn write_outgoing<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Outgoing,
) -> std::io::Result<()> {
    writer.write_all(&message.head).await?;
    writer.write_all(&message.payload).await
}

/// Writes queued messages until the queue closes, coalescing whatever else is queued into
/// the same flush (both directions of a connection).
async fn write_queued<W: AsyncWrite + Unpin>(
    rx: &mut mpsc::Receiver<Outgoing>,
    writer: &mut BufWriter<W>,
) -> std::io::Result<()> {
    while let Some(message) = rx.recv().await {
        write_outgoing(writer, &message).await?;
        while let Ok(more) = rx.try_recv() {
            write_outgoing(writer, &more).await?;
        }
        writer.flush().await?;
    }
    Ok(())
}

/// Reads one message: `(kind/status, id, payload)`; `Ok(None)` at a clean end of stream.
async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<(u8, u64, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(9..=MAX_MESSAGE_BYTES).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message length {len} outside 9..={MAX_MESSAGE_BYTES}"),
        ));
    }
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await?;
    let payload = read_exact_vec(reader, len - 9).await?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[1..9]);
    Ok(Some((head[0], u64::from_be_bytes(id), payload)))
}

fn spawn_client_connection<S>(stream: S, addr: String) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(1024);
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail_all = {
        let pending = pending.clone();
        let alive = alive.clone();
        let addr = addr.clone();
        move |message: String| {
            alive.store(false, Ordering::Release);
            let drained: Vec<_> = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for (_, waiter) in drained {
                let _ = waiter.send(Err(RpcError::Io {
                    addr: addr.clone(),
                    message: message.clone(),
                }));
            }
        }
    };
    let writer_fail = fail_all.clone();
    tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
        match write_queued(&mut rx, &mut writer).await {
            Ok(()) => {
                let _ = writer.shutdown().await;
            }
            Err(error) => writer_fail(error.to_string()),
        }
    });
    let reader_pending = pending.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(256 * 1024, read_half);
        loop {
            match read_message(&mut reader).await {
                Ok(Some((status, id, payload))) => {
                    let waiter = reader_pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(waiter) = waiter {
                        let result = if status == STATUS_OK {
                            Ok(payload)
                        } else {
                            Err(RpcError::Remote {
                                addr: addr.clone(),
                                message: String::from_utf8_lossy(&payload).into_owned(),
                            })
                        };
                        let _ = waiter.send(result);
                    }
                }
                Ok(None) => {
                    fail_all("peer closed the connection".into());
                    return;
                }
                Err(error) => {
                    fail_all(error.to_string());
                    return;
                }
            }
        }
    });
    Connection {
        outgoing: tx,
        pending,
        alive,
    }
}

/// What a server does with a request: `Ok(answer)` or `Err(message)`.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        kind: u8,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;
}

/// Serves RPC connections until `stop` resolves. Each connection runs at most
/// `max_in_flight` requests at once; beyond that it stops reading (TCP backpressure).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<dyn Handler>,
    max_in_flight: usize,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "cluster listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                Duration::from_secs(10),
                acceptor.accept(buffered_socket(tcp)),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    warn!(%error, %peer, "cluster TLS handshake failed (is the peer using the cluster CA?)");
                    return;
                }
                Err(_) => {
                    warn!(%peer, "cluster TLS handshake timed out");
                    return;
                }
            };
            serve_connection(tls, handler, max_in_flight).await;
            debug!(%peer, "cluster connection closed");
        });
    }
}

async fn serve_connection<S>(stream: S, handler: Arc<dyn Handler>, max_in_flight: usize)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(max_in_flight.max(1));
    let writer = tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
        let _ = write_queued(&mut rx, &mut writer).await;
    });
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (kind, id, payload) = match read_message(&mut reader).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(error) => {
                warn!(%error, "bad message on a cluster connection; closing it");
                break;
            }
        };
        let handler = handler.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let (status, body) = match handler.handle(kind, payload).await {
                Ok(body) => (STATUS_OK, body),
                Err(message) => (STATUS_ERROR, message.into_bytes()),
            };
            let answer = Outgoing {
                head: message_head(status, id, body.len()),
                payload: Arc::new(body),
            };
            let _ = tx.send(answer).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_bad_lengths_are_refused() {
        let mut written = Vec::new();
        let outgoing = Outgoing {
            head: message_head(7, 42, 5),
            payload: Arc::new(b"hello".to_vec()),
        };
        write_outgoing(&mut written, &outgoing)
            .await
            .expect("write");
        let mut message = vec![0, 0, 0, 14, 7];
        message.extend_from_slice(&42u64.to_be_bytes());
        message.extend_from_slice(b"hello");
        assert_eq!(written, message);
        let mut reader = &message[..];
        let (kind, id, payload) = read_message(&mut reader)
            .await
            .expect("read")
            .expect("one message");
        assert_eq!((kind, id, payload.as_slice()), (7, 42, &b"hello"[..]));
        let mut empty: &[u8] = &[];
        assert!(read_message(&mut empty).await.expect("eof").is_none());
        let mut short: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert!(read_message(&mut short).await.is_err());
    }
}
