//! The universal framed protocol over TLS (default port 3001); see docs/protocol.md.
//!
//! Per connection: a reader task parses frames and hands each payload to the pipeline as its
//! own task; a writer writes the acks strictly in frame order. At most
//! `max_in_flight` frames per connection are unacknowledged, and every payload first
//! reserves its bytes in the pipeline's budget, so a client faster than the disk is slowed
//! by TCP backpressure instead of growing memory. A broken stream (bad magic or version,
//! oversize frame) gets one `ProtocolError` ack and the connection is closed; other
//! connections are unaffected.

use std::sync::Arc;
use std::time::Duration;

use logcluster_common::io::{buffered_socket, read_exact_vec};
use logcluster_common::shutdown::Shutdown;
use logcluster_proto::frame::{FRAME_FIXED_LEN, FrameError, FrameHeader};
use logcluster_proto::{Ack, AckStatus};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::metrics::label;
use crate::pipeline::{BatchSource, Pipeline};

/// Limits of the framed listener.
#[derive(Clone, Debug)]
pub struct FramedConfig {
    pub max_frame_bytes: u32,
    pub max_in_flight: usize,
    pub handshake_timeout: Duration,
}

/// Accepts TLS connections until `shutdown` fires, then lets open connections finish the
/// frames they already sent.
pub async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    pipeline: Arc<Pipeline>,
    config: FramedConfig,
    shutdown: Shutdown,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "accept failed on the framed ingest port");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = pipeline.admit_connection("framed", peer) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let pipeline = pipeline.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let metrics = pipeline.metrics().clone();
            let tls = match tokio::time::timeout(config.handshake_timeout, acceptor.accept(buffered_socket(tcp))).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    metrics.protocol_errors.get_or_create(&label("kind", "tls_handshake")).inc();
                    warn!(%peer, %error, "tls handshake failed on the framed ingest port (plaintext or wrong CA?)");
                    return;
                }
                Err(_) => {
                    metrics.protocol_errors.get_or_create(&label("kind", "tls_handshake_timeout")).inc();
                    warn!(%peer, "tls handshake timed out");
                    return;
                }
            };
            serve_connection(tls, pipeline, config, shutdown).await;
            drop(admitted);
            debug!(%peer, "framed connection closed");
        });
        while connections.try_join_next().is_some() {}
    }
    info!("framed listener stopped accepting; draining connections");
    while connections.join_next().await.is_some() {}
}

enum Pending {
    Batch(JoinHandle<Ack>),
    Final(Ack),
}

/// Serves one connection (any byte stream, so tests can use plain TCP or in-memory pipes).
/// How long a connection closed for a protocol error keeps discarding the client's input
/// so the error ack reaches it (see the lingering close in `serve_connection`).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn serve_connection<S>(
    stream: S,
    pipeline: Arc<Pipeline>,
    config: FramedConfig,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Pending>(config.max_in_flight.max(1));
    let write_acks = async move {
        while let Some(pending) = rx.recv().await {
            let (ack, last) = match pending {
                Pending::Batch(handle) => match handle.await {
                    Ok(ack) => (ack, false),
                    Err(error) => (
                        Ack {
                            status: AckStatus::RetryLater,
                            batch_id: 0,
                            accepted: 0,
                            rejected: 0,
                            duplicate: false,
                            error: format!("internal error: {error}"),
                        },
                        false,
                    ),
                },
                Pending::Final(ack) => (ack, true),
            };
            if writer.write_all(&ack.encode()).await.is_err() {
                return;
            }
            if (rx.is_empty() || last) && writer.flush().await.is_err() {
                return;
            }
            if last {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let metrics = pipeline.metrics().clone();
    let idle_pipeline = pipeline.clone();
    let read_frames = async move {
        let mut fixed = [0u8; FRAME_FIXED_LEN];
        loop {
            // Between frames: a client that sends nothing for `ingest.idleTimeout` is let
            // go (the acks of its last frames still go out).
            let first = tokio::select! {
                read = reader.read(&mut fixed[..1]) => read,
                () = shutdown.wait() => return,
                () = idle_pipeline.idle() => {
                    debug!("closing an idle framed connection");
                    return;
                }
            };
            match first {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    debug!(%error, "read failed");
                    return;
                }
            }
            // The rest of the header (and the tenant) within `ingest.frameTimeout`.
            let header = pipeline.frame_part(async {
                reader.read_exact(&mut fixed[1..]).await?;
                let mut header_bytes = fixed.to_vec();
                let tenant_len = fixed[FRAME_FIXED_LEN - 1] as usize;
                if fixed[0..2] == logcluster_proto::frame::FRAME_MAGIC && tenant_len > 0 {
                    let start = header_bytes.len();
                    header_bytes.resize(start + tenant_len, 0);
                    reader.read_exact(&mut header_bytes[start..]).await?;
                }
                Ok::<_, std::io::Error>(header_bytes)
            });
            let header_bytes = match header.await {
                Some(Ok(header_bytes)) => header_bytes,
                Some(Err(error)) => {
                    metrics
                        .protocol_errors
                        .get_or_create(&label("kind", "truncated_frame"))
                        .inc();
                    warn!(%error, "connection closed inside a frame header");
                    return;
                }
                None => {
                    warn!(
                        "closing a connection whose frame header did not arrive within ingest.frameTimeout"
                    );
                    return;
                }
            };
            let header = match FrameHeader::parse(&header_bytes, config.max_frame_bytes) {
                Ok(Some(header)) => header,
                Ok(None) => return,
                Err(error) => {
                    let kind = match error {
                        FrameError::BadMagic(_) => "bad_magic",
                        FrameError::BadVersion(_) => "bad_version",
                        FrameError::BadFormat(_) => "bad_format",
                        FrameError::TooLarge { .. } => "oversize_frame",
                        FrameError::BadTenant => "bad_tenant",
                    };
                    metrics
                        .protocol_errors
                        .get_or_create(&label("kind", kind))
                        .inc();
                    warn!(%error, "closing connection after a protocol error");
                    let batch_id = u64::from_be_bytes(fixed[4..12].try_into().expect("8 bytes"));
                    let _ = tx
                        .send(Pending::Final(Ack {
                            status: AckStatus::ProtocolError,
                            batch_id,
                            accepted: 0,
                            rejected: 0,
                            duplicate: false,
                            error: error.to_string(),
                        }))
                        .await;
                    drop(tx);
                    // Lingering close: the client may still be sending (an oversize frame's
                    // payload). Closing with unread input makes the kernel send a reset,
                    // which can destroy the error ack before the client reads it; so discard
                    // input for a moment while the ack and the TLS close go out.
                    let mut sink = vec![0u8; 64 * 1024];
                    let _ = tokio::time::timeout(LINGER, async {
                        while let Ok(n) = reader.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                    return;
                }
            };
            let reservation = pipeline.reserve(header.payload_len as usize).await;
            // The payload within `ingest.frameTimeout` of the node having room for it: a
            // trickling client would otherwise hold its reserved share of the budget.
            let read = read_exact_vec(&mut reader, header.payload_len as usize);
            let payload = match pipeline.frame_part(read).await {
                Some(Ok(payload)) => payload,
                None => {
                    warn!(
                        expected = header.payload_len,
                        "closing a connection whose frame payload did not arrive within ingest.frameTimeout; the partial batch is discarded"
                    );
                    return;
                }
                Some(Err(error)) => {
                    metrics
                        .protocol_errors
                        .get_or_create(&label("kind", "truncated_frame"))
                        .inc();
                    warn!(%error, expected = header.payload_len, "connection closed inside a frame payload; the partial batch is discarded");
                    return;
                }
            };
            let pipeline = pipeline.clone();
            let batch_id = header.batch_id;
            let source = BatchSource {
                format: header.format.name(),
                tenant: (!header.tenant.is_empty()).then(|| header.tenant.clone()),
                batch_id,
            };
            let format = header.format;
            let handle = tokio::spawn(async move {
                let result = pipeline.ingest_payload(format, source, payload).await;
                drop(reservation);
                result.to_ack(batch_id)
            });
            if tx.send(Pending::Batch(handle)).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read_frames, write_acks);
}
