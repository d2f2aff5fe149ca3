//! Standard-protocol listeners: UDP JSON, syslog over UDP, syslog over TCP and TLS.
//!
//! UDP is lossy by nature: when the pipeline's byte budget or the batching queue is full a
//! datagram is dropped and counted (`logcluster_ingest_udp_drops`), never queued without
//! bound; so are those the kernel drops and those storage refuses. TCP syslog reserves what
//! it reads in the byte budget and keeps at most a few batches of a connection in flight, so
//! a slow disk slows the sender (backpressure) instead of dropping.

use std::sync::Arc;
use std::time::Duration;

use logcluster_common::io::buffered_socket;
use logcluster_common::shutdown::Shutdown;
use logcluster_proto::Format;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::decode::{self, DecodeContext, DecodeOutput, RecordError, SyslogFramer};
use crate::metrics::{label, labels2};
use crate::pipeline::{BatchSource, Pipeline, Reservation};

/// What a UDP listener expects in each datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpKind {
    /// NDJSON: one or more JSON objects per datagram.
    Json,
    /// One syslog message per datagram.
    Syslog,
}

impl UdpKind {
    fn name(self) -> &'static str {
        match self {
            UdpKind::Json => "json",
            UdpKind::Syslog => "syslog",
        }
    }
}

/// Largest batch handed to the pipeline at once from UDP, in datagrams and in bytes (a JSON
/// datagram may hold many NDJSON records).
const UDP_BATCH_ENTRIES: usize = 4096;
const UDP_BATCH_BYTES: usize = 4 * 1024 * 1024;
const UDP_QUEUE_DATAGRAMS: usize = 8192;
/// Most datagrams taken from a UDP socket at shutdown (more than its receive buffer holds).
const UDP_SHUTDOWN_DRAIN: usize = 100_000;
/// UDP batches being stored at once while the next is gathered.
const UDP_IN_FLIGHT: usize = 4;
/// The receive buffer asked for a UDP socket (the kernel caps it at `net.core.rmem_max`):
/// datagrams that arrive while the listener is busy wait there instead of being dropped.
const UDP_RECEIVE_BUFFER: usize = 8 * 1024 * 1024;

/// Receives datagrams until shutdown.
pub async fn run_udp(
    socket: UdpSocket,
    kind: UdpKind,
    pipeline: Arc<Pipeline>,
    shutdown: Shutdown,
) {
    let listener = kind.name();
    let sock = socket2::SockRef::from(&socket);
    if let Err(error) = sock.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        warn!(%error, listener, "could not enlarge the UDP receive buffer");
    }
    info!(
        listener,
        receive_buffer = sock.recv_buffer_size().unwrap_or(0),
        "udp listener receiving (raise net.core.rmem_max for a larger buffer)"
    );
    let kernel_drops = Arc::new(KernelDrops::of(&socket));
    // Datagrams go to the batcher as received; they are parsed with their batch on the
    // blocking pool, so the receiving task only empties the socket.
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Reservation)>(UDP_QUEUE_DATAGRAMS);
    let batch_pipeline = pipeline.clone();
    let batcher = tokio::spawn(async move {
        let mut storing = tokio::task::JoinSet::new();
        while let Some(first) = rx.recv().await {
            let mut bytes = first.0.len();
            let mut datagrams = vec![first];
            while datagrams.len() < UDP_BATCH_ENTRIES && bytes < UDP_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(more) => {
                        bytes += more.0.len();
                        datagrams.push(more);
                    }
                    Err(_) => break,
                }
            }
            let (datagrams, reservations): (Vec<Vec<u8>>, Vec<Reservation>) =
                datagrams.into_iter().unzip();
            let source = BatchSource {
                format: kind.name(),
                tenant: None,
                batch_id: 0,
            };
            while storing.len() >= UDP_IN_FLIGHT {
                storing.join_next().await;
            }
            let pipeline = batch_pipeline.clone();
            storing.spawn(async move {
                // Bytes were counted as the datagrams came.
                let metrics = pipeline.metrics().clone();
                // Datagrams that decoded to records: those are what a failed store drops
                // (the others were counted as rejected already).
                let with_records = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let decoded = with_records.clone();
                let result = pipeline
                    .ingest_on_blocking_thread(source, 0, false, move |_| {
                        let (output, with_records) = decode_datagrams(kind, &datagrams, &metrics);
                        decoded.store(with_records, std::sync::atomic::Ordering::Relaxed);
                        Ok(output)
                    })
                    .await;
                if result.status == logcluster_proto::AckStatus::RetryLater {
                    warn!(error = %result.error, "udp batch could not be stored; its datagrams are dropped");
                    count_udp_drops(
                        pipeline.metrics(),
                        kind.name(),
                        "storage",
                        with_records.load(std::sync::atomic::Ordering::Relaxed),
                    );
                }
                drop(reservations);
            });
        }
        while storing.join_next().await.is_some() {}
    });
    let metrics = pipeline.metrics().clone();
    let mut buf = vec![0u8; 65_536];
    let mut drops_checked = tokio::time::interval(Duration::from_secs(1));
    let take = |datagram: &[u8]| {
        metrics
            .bytes
            .get_or_create(&label("format", listener))
            .inc_by(datagram.len() as u64);
        let Some(reservation) = pipeline.try_reserve(datagram.len()) else {
            count_udp_drops(&metrics, listener, "memory_budget", 1);
            return;
        };
        if let Err(error) = tx.try_send((datagram.to_vec(), reservation)) {
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "shutting_down",
            };
            count_udp_drops(&metrics, listener, reason, 1);
        }
    };
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            _ = drops_checked.tick() => {
                // A file read: off the runtime's threads.
                let (drops, metrics) = (kernel_drops.clone(), metrics.clone());
                tokio::task::spawn_blocking(move || drops.count(&metrics, listener));
                continue;
            }
            () = shutdown.wait() => break,
        };
        match received {
            Ok((len, _peer)) => take(&buf[..len]),
            Err(error) => debug!(%error, "udp receive failed"),
        }
    }
    // What the socket holds already is taken too (a real non-blocking read until the kernel
    // says there is nothing: tokio's `try_recv_from` trusts its readiness flag), then the
    // kernel's last count, and the socket is closed before the last batches are stored, so
    // nothing waits in it uncounted.
    match socket.into_std() {
        Ok(socket) => {
            // Bounded, so that a flood at the drain's own rate cannot hold shutdown; what
            // arrives while the kernel's count is read is taken after it.
            let mut left = UDP_SHUTDOWN_DRAIN;
            for pass in 0..2 {
                while left > 0 {
                    let Ok((len, _peer)) = socket.recv_from(&mut buf) else {
                        break;
                    };
                    take(&buf[..len]);
                    left -= 1;
                }
                if pass == 0 {
                    kernel_drops.count(&metrics, listener);
                }
            }
        }
        Err(error) => warn!(%error, listener, "could not drain the udp socket at shutdown"),
    }
    drop(tx);
    let _ = batcher.await;
    info!(listener, "udp listener stopped");
}

/// The records of a batch of datagrams, one payload each, and how many datagrams gave
/// records: a JSON datagram that does not decode, or holds no record, is counted as rejected
/// (by reason) and left out, a syslog one is a record error.
fn decode_datagrams(
    kind: UdpKind,
    datagrams: &[Vec<u8>],
    metrics: &crate::metrics::IngestMetrics,
) -> (DecodeOutput, u64) {
    let ctx = DecodeContext::default();
    let mut output = DecodeOutput::default();
    let mut with_records = 0;
    let reject = |reason: &str| {
        metrics.count_rejected(kind.name(), reason, 1);
        metrics
            .totals
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    for datagram in datagrams {
        let records = output.records.len();
        match kind {
            UdpKind::Json => match decode::decode_payload(Format::Json, datagram, &ctx) {
                Ok(more) if more.records.is_empty() && more.errors.is_empty() => reject("empty"),
                Ok(more) => {
                    let offset = output.records.len() + output.errors.len();
                    output.records.extend(more.records);
                    output.errors.extend(more.errors.into_iter().map(|mut e| {
                        e.index += offset;
                        e
                    }));
                }
                Err(error) => reject(error.reason().label()),
            },
            UdpKind::Syslog => {
                let index = output.records.len() + output.errors.len();
                decode::decode_syslog_into(datagram, index, &ctx, &mut output);
            }
        }
        if output.records.len() > records {
            with_records += 1;
        }
    }
    (output, with_records)
}

/// Counts `datagrams` dropped for `reason` (`logcluster_ingest_udp_drops`).
fn count_udp_drops(
    metrics: &crate::metrics::IngestMetrics,
    listener: &str,
    reason: &str,
    datagrams: u64,
) {
    metrics
        .udp_drops
        .get_or_create(&labels2("listener", listener, "reason", reason))
        .inc_by(datagrams);
    metrics
        .totals
        .dropped
        .fetch_add(datagrams, std::sync::atomic::Ordering::Relaxed);
}

/// Datagrams the kernel dropped for a UDP socket (its receive buffer was full, mostly): the `drops`
/// column of the socket's line in `/proc/self/net/udp` (or `udp6`), found by its inode.
struct KernelDrops {
    inode: Option<u64>,
    seen: std::sync::atomic::AtomicU64,
}

impl KernelDrops {
    fn of(socket: &UdpSocket) -> KernelDrops {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .ok()
            .map(|m| m.ino());
        KernelDrops {
            inode,
            seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The socket's drop count now, if the kernel says.
    fn read(&self) -> Option<u64> {
        let inode = self.inode?.to_string();
        ["/proc/self/net/udp", "/proc/self/net/udp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .find_map(|table| {
                table.lines().skip(1).find_map(|line| {
                    let columns: Vec<&str> = line.split_whitespace().collect();
                    (columns.get(9) == Some(&inode.as_str()))
                        .then(|| columns.last()?.parse().ok())
                        .flatten()
                })
            })
    }

    /// Adds the drops since the last look to `udp_drops{reason="kernel"}`.
    fn count(&self, metrics: &crate::metrics::IngestMetrics, listener: &str) {
        let Some(now) = self.read() else {
            return;
        };
        // Reads may overlap (a tick's and the last one): each drop is counted once.
        let before = self
            .seen
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        if now > before {
            count_udp_drops(metrics, listener, "kernel", now - before);
        }
    }
}

/// Syslog over TCP (plain) or TLS (when `acceptor` is set), RFC 6587 framing auto-detected.
pub async fn run_syslog_tcp(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    max_message: usize,
    shutdown: Shutdown,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        let Ok((tcp, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(admitted) = pipeline.admit_connection("syslog", peer) else {
            continue;
        };
        let pipeline = pipeline.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let metrics = pipeline.metrics().clone();
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(buffered_socket(tcp)),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => serve_syslog(tls, pipeline, max_message, shutdown).await,
                        _ => {
                            metrics
                                .protocol_errors
                                .get_or_create(&label("kind", "syslog_tls_handshake"))
                                .inc();
                            warn!(%peer, "syslog tls handshake failed");
                        }
                    }
                }
                None => serve_syslog(tcp, pipeline, max_message, shutdown).await,
            }
            drop(admitted);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Most bytes of a syslog stream cut into one batch: what has arrived when the connection
/// is read, up to this, is stored (and fsynced) together.
const SYSLOG_BATCH_BYTES: usize = 1024 * 1024;
/// Batches of one syslog connection being stored at once, while the next is read.
const SYSLOG_IN_FLIGHT: usize = 4;

async fn serve_syslog<S: AsyncRead + Unpin>(
    mut stream: S,
    pipeline: Arc<Pipeline>,
    max_message: usize,
    shutdown: Shutdown,
) {
    let metrics = pipeline.metrics().clone();
    let mut framer = SyslogFramer::new(max_message);
    let mut buf = vec![0u8; 64 * 1024];
    let mut storing = tokio::task::JoinSet::new();
    let mut failed = false;
    while !failed {
        // Idle for `ingest.idleTimeout`: closed like an end of stream (an unfinished last
        // line is stored). A batch that could not be stored ends the connection at once, so
        // the sender retries: nothing more is read.
        let read = tokio::select! {
            read = stream.read(&mut buf) => read,
            Some(done) = storing.join_next(), if !storing.is_empty() => {
                failed = !stored(done);
                continue;
            }
            () = shutdown.wait() => Ok(0),
            () = pipeline.idle() => Ok(0),
        };
        let mut ended = !matches!(read, Ok(n) if n > 0);
        if let Err(error) = &read {
            debug!(%error, "syslog connection read failed");
        }
        let mut bytes = 0usize;
        let mut reservations = Vec::new();
        let mut messages = Vec::new();
        if let Ok(n) = read
            && n > 0
        {
            // Read, then reserved (waiting for room: backpressure), as framed payloads.
            reservations.push(pipeline.reserve(n).await);
            bytes += n;
            frame_into(&mut framer, &buf[..n], &mut messages);
        }
        // Whatever else has arrived already goes in the same batch (one WAL write and
        // fsync for many reads), up to a batch's worth, as long as the budget has room.
        while !ended && bytes < SYSLOG_BATCH_BYTES {
            use futures_util::FutureExt;
            let Some(room) = pipeline.try_reserve(buf.len()) else {
                break;
            };
            match stream.read(&mut buf).now_or_never() {
                None => break,
                Some(Ok(n)) if n > 0 => {
                    reservations.push(room);
                    bytes += n;
                    frame_into(&mut framer, &buf[..n], &mut messages);
                }
                Some(_) => ended = true,
            }
        }
        metrics
            .bytes
            .get_or_create(&label("format", "syslog"))
            .inc_by(bytes as u64);
        if ended && let Some(last) = framer.finish() {
            messages.push(last.map_err(|error| error.to_string()));
        }
        if !messages.is_empty() {
            while storing.len() >= SYSLOG_IN_FLIGHT {
                if let Some(done) = storing.join_next().await {
                    failed |= !stored(done);
                }
            }
            if failed {
                break;
            }
            let pipeline = pipeline.clone();
            storing.spawn(async move {
                let source = BatchSource {
                    format: "syslog",
                    tenant: None,
                    batch_id: 0,
                };
                // Bytes were counted as they were read.
                let result = pipeline
                    .ingest_on_blocking_thread(source, 0, false, move |_| {
                        let ctx = DecodeContext::default();
                        let mut output = DecodeOutput::default();
                        for (index, message) in messages.into_iter().enumerate() {
                            match message {
                                Ok(message) => {
                                    decode::decode_syslog_into(&message, index, &ctx, &mut output)
                                }
                                Err(error) => push_framing_error(&mut output, index, &error),
                            }
                        }
                        Ok(output)
                    })
                    .await;
                drop(reservations);
                result
            });
        }
        if ended {
            break;
        }
    }
    // The batches already handed over finish (none is cut off halfway).
    while let Some(done) = storing.join_next().await {
        stored(done);
    }
}

/// Whether a syslog batch was stored (logs why not): if not, the connection is closed so
/// the sender retries.
fn stored(done: Result<crate::pipeline::BatchResult, tokio::task::JoinError>) -> bool {
    match done {
        Ok(result) if result.status == logcluster_proto::AckStatus::RetryLater => {
            warn!(error = %result.error, "syslog batch could not be stored; closing the connection so the sender retries");
            false
        }
        Err(error) => {
            warn!(%error, "storing a syslog batch failed; closing the connection");
            false
        }
        Ok(_) => true,
    }
}

/// Adds `chunk` of a syslog stream to `framer` and moves the messages it completes (or why
/// one could not be framed) to `messages`.
fn frame_into(
    framer: &mut SyslogFramer,
    chunk: &[u8],
    messages: &mut Vec<Result<Vec<u8>, String>>,
) {
    framer.push(chunk);
    while let Some(next) = framer.next_message() {
        messages.push(next.map_err(|error| error.to_string()));
    }
}

fn push_framing_error(output: &mut DecodeOutput, index: usize, message: &str) {
    output.errors.push(RecordError {
        index,
        reason: decode::RejectReason::InvalidSyslog,
        message: message.to_string(),
    });
}
