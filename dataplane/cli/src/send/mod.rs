//! `logcluster send`: load generator and shipper.
//!
//! Batches (generated, or lines of a file / stdin) go out as frames of the framed protocol over
//! TLS — pipelined on each connection, retried with the same batch id (so the server
//! de-duplicates) up to 3 times with backoff, failing over across `--address` values (once
//! no connection has been made for 10 s, each failed attempt to connect, bounded by
//! `--connect-timeout`, counts as a failed try of every batch waiting, so an unreachable
//! ingestor fails them instead of waiting forever) — or as
//! NDJSON datagrams over UDP, each kept under 1400 bytes. Before sending, the schemas the node
//! serves are fetched and entries that would be refused are counted and not sent. SIGINT or
//! SIGTERM stops producing, waits for in-flight acks and prints the summary.

mod generator;
mod payload;

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use logcluster_proto::frame::{Ack, AckStatus, Format, encode_frame};
use logcluster_schema::CompiledSchema;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use generator::Generator;

/// Options of `logcluster send`.
#[derive(clap::Args, Clone, Debug)]
pub struct SendArgs {
    /// Payload format: json, proto, avro, raw or syslog.
    #[arg(long, default_value = "json")]
    pub format: String,
    /// Entries per batch (frame).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Pause between batches, e.g. 100ms (ignored with --burst).
    #[arg(long, default_value = "0ms")]
    pub interval: String,
    /// Upper bound on entries per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Send as fast as possible, ignoring --interval.
    #[arg(long)]
    pub burst: bool,
    /// Entries to generate (0 = until interrupted). Ignored with --file.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Ingestor addresses, repeatable or comma-separated; connections fail over between them.
    /// `host` or `host:port` (the port then overrides --tcp-port or --udp-port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub address: Vec<String>,
    /// Framed TLS port.
    #[arg(long, default_value_t = 3001)]
    pub tcp_port: u16,
    /// Send NDJSON datagrams over UDP instead (lossy; no acknowledgements).
    #[arg(long)]
    pub udp: bool,
    #[arg(long, default_value_t = 3002)]
    pub udp_port: u16,
    /// CA certificate (PEM) that signed the ingestor's certificate.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify in the server certificate (default: localhost).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Tenant of every frame (empty: the tenant named in each entry).
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Give every generated entry this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Send the lines of this file; `-` = stdin. NDJSON lines go as they are with --format json
    /// and are converted to records (the node's own JSON mapping) with proto or avro (Avro's
    /// record schema carries an array field as its JSON text); with syslog or raw the lines
    /// are syslog messages or raw lines.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Parallel TLS connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Frames awaiting an ack per connection.
    #[arg(long, default_value_t = 32)]
    pub max_in_flight: usize,
    /// Query API of the node, used to fetch schemas before sending.
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    pub query_url: String,
    /// Do not fetch and check schemas before sending.
    #[arg(long)]
    pub no_schema_check: bool,
    /// Seed of the generator (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json_summary: bool,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 1)]
    pub stats_interval: u64,
    /// How long a connection with its TLS handshake may take before the attempt fails.
    #[arg(long, default_value = "5s")]
    pub connect_timeout: String,
}

/// A batch ready to send.
#[derive(Clone, Debug)]
struct Batch {
    id: u64,
    entries: u64,
    frame: Arc<Vec<u8>>,
    attempts: u32,
}

/// Counters shared by producer, connections and the stats printer.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    invalid: AtomicU64,
    bytes: AtomicU64,
    outstanding: AtomicU64,
    retries: AtomicU64,
    /// Connections up now.
    connected: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
}

/// The final summary.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub retries: u64,
    pub elapsed_s: f64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Host and port of an `--address` value: `host`, `ip`, `[ipv6]`, `host:port`, `ip:port` or
/// `[ipv6]:port`; without a port, `default_port`.
fn endpoint(address: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return Ok((socket.ip().to_string(), socket.port()));
    }
    if address.parse::<std::net::IpAddr>().is_ok() {
        return Ok((address.to_string(), default_port));
    }
    if let Some(ip) = address
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return Ok((ip.to_string(), default_port));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            let port = port
                .parse()
                .with_context(|| format!("--address {address:?}: {port:?} is not a port number"))?;
            Ok((host.to_string(), port))
        }
        Some(_) => bail!("--address {address:?} is neither host, host:port nor [ipv6]:port"),
        None if address.is_empty() => bail!("--address must not be empty"),
        None => Ok((address.to_string(), default_port)),
    }
}

/// Resolves once `stop` is set.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a connection may keep failing to connect before, while no connection is up,
/// each failed attempt counts as a failed try of every batch waiting.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(10);

/// Retry delays after the 1st, 2nd and 3rd failure of a batch.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
];

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let summary = run_with(args.clone()).await?;
    if args.json_summary {
        out!("{}", serde_json::to_string(&summary)?)?;
    }
    note!(
        "sent {} acked {} failed {} rejected {} duplicates {} invalid {} retries {} in {:.2}s: {:.0} logs/s, ack p50 {:.1} ms p99 {:.1} ms",
        summary.sent,
        summary.acked,
        summary.failed,
        summary.rejected,
        summary.duplicates,
        summary.invalid,
        summary.retries,
        summary.elapsed_s,
        summary.rate,
        summary.p50_ms,
        summary.p99_ms
    );
    if summary.failed > 0 {
        bail!("{} entries failed after retries", summary.failed);
    }
    Ok(())
}

/// Sends everything and returns the summary (the library entry point tests use).
pub async fn run_with(args: SendArgs) -> anyhow::Result<Summary> {
    let format = payload::parse_format(&args.format)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let interval = logcluster_config::parse_duration(&args.interval).with_context(|| {
        format!(
            "--interval {:?} is not a duration like 100ms",
            args.interval
        )
    })?;
    let schemas = if args.no_schema_check {
        Vec::new()
    } else {
        fetch_schemas(&args.query_url).await
    };
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        logcluster_common::shutdown::wait_for_signal().await;
        warn!("signal received: no new batches; waiting for in-flight acknowledgements");
        signal_stop.store(true, Ordering::SeqCst);
    });
    let started = Instant::now();
    let stats = tokio::spawn(print_stats(
        counters.clone(),
        args.count,
        Duration::from_secs(args.stats_interval.max(1)),
    ));
    if args.udp {
        send_udp(&args, format, &schemas, &counters, &stop, interval).await?;
    } else {
        send_tcp(&args, format, &schemas, &counters, &stop, interval).await?;
    }
    stats.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = counters
        .latencies_ms
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_by(f64::total_cmp);
    let acked = counters.acked.load(Ordering::Relaxed);
    Ok(Summary {
        sent: counters.sent.load(Ordering::Relaxed),
        acked,
        failed: counters.failed.load(Ordering::Relaxed),
        rejected: counters.rejected.load(Ordering::Relaxed),
        duplicates: counters.duplicates.load(Ordering::Relaxed),
        invalid: counters.invalid.load(Ordering::Relaxed),
        retries: counters.retries.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        rate: if args.udp {
            counters.sent.load(Ordering::Relaxed) as f64 / elapsed
        } else {
            acked as f64 / elapsed
        },
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

/// Fetches the node's schemas; failures only warn (the node validates anyway).
async fn fetch_schemas(query_url: &str) -> Vec<CompiledSchema> {
    let url = format!("{}/api/v1/schemas", query_url.trim_end_matches('/'));
    let response = match logcluster_common::http_client::request(
        "GET",
        &url,
        &[],
        b"",
        Duration::from_secs(5),
    )
    .await
    {
        Ok(r) if r.status == 200 => r,
        Ok(r) => {
            warn!(status = r.status, %url, "cannot fetch schemas; sending without a local check");
            return Vec::new();
        }
        Err(error) => {
            warn!(%error, "cannot fetch schemas; sending without a local check");
            return Vec::new();
        }
    };
    let value: serde_json::Value = serde_json::from_str(&response.body).unwrap_or_default();
    let mut compiled = Vec::new();
    for item in value["schemas"].as_array().cloned().unwrap_or_default() {
        let Ok(resource) = serde_json::from_value::<logcluster_schema::LogSchemaResource>(
            item["resource"].clone(),
        ) else {
            continue;
        };
        match logcluster_schema::compile(&resource) {
            Ok(schema) => compiled.push(schema),
            Err(error) => {
                warn!(schema = %resource.metadata.name, %error, "schema does not compile locally")
            }
        }
    }
    if !compiled.is_empty() {
        info!(
            schemas = compiled.len(),
            "checking entries against the node's schemas before sending"
        );
    }
    compiled
}

/// Lines of a file that cannot be converted are each counted as invalid; only the first few
/// are also logged.
const MAX_LINE_WARNINGS: u64 = 10;

/// Produces the batches to send, one at a time.
struct Producer {
    generator: Option<Generator>,
    lines: Option<Box<dyn Iterator<Item = std::io::Result<String>> + Send>>,
    remaining: u64,
    next_id: u64,
    /// Lines read so far (for the warnings about lines that cannot be converted).
    line_number: u64,
}

impl Producer {
    fn new(args: &SendArgs) -> anyhow::Result<Producer> {
        let lines: Option<Box<dyn Iterator<Item = std::io::Result<String>> + Send>> =
            match &args.file {
                None => None,
                Some(path) if path.as_os_str() == "-" => {
                    Some(Box::new(std::io::BufReader::new(std::io::stdin()).lines()))
                }
                Some(path) => {
                    let file = std::fs::File::open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    Some(Box::new(
                        std::io::BufReader::with_capacity(1 << 20, file).lines(),
                    ))
                }
            };
        let seed = args.seed.unwrap_or_else(rand::random);
        Ok(Producer {
            generator: lines
                .is_none()
                .then(|| Generator::new(seed, args.service.clone())),
            lines,
            remaining: if args.count == 0 {
                u64::MAX
            } else {
                args.count
            },
            next_id: (rand::random::<u64>() >> 16).max(1) << 16,
            line_number: 0,
        })
    }

    /// The next batch's payload and entry count; `None` when done.
    fn next(
        &mut self,
        args: &SendArgs,
        format: Format,
        schemas: &[CompiledSchema],
        counters: &Counters,
    ) -> anyhow::Result<Option<(u64, Vec<u8>, u64)>> {
        self.next_id += 1;
        if let Some(lines) = &mut self.lines {
            // Protobuf and Avro carry records, not lines: each NDJSON line is mapped to one.
            let convert = matches!(format, Format::Protobuf | Format::Avro);
            let mut chunk = Vec::with_capacity(args.batch);
            let mut entries = Vec::new();
            for line in lines.by_ref() {
                let line = line.context("failed to read input")?;
                self.line_number += 1;
                if line.trim().is_empty() {
                    continue;
                }
                if convert {
                    match payload::entry_from_json_line(&line) {
                        Ok(entry)
                            if schemas.is_empty()
                                || payload::entry_passes(&entry, format, schemas) =>
                        {
                            entries.push(entry);
                            if entries.len() >= args.batch {
                                break;
                            }
                        }
                        Ok(_) => {
                            counters.invalid.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            let skipped = counters.invalid.fetch_add(1, Ordering::Relaxed);
                            if skipped < MAX_LINE_WARNINGS {
                                warn!(line = self.line_number, %error, "line not sent: it is not a JSON record");
                            }
                        }
                    }
                    continue;
                }
                if format == Format::Json
                    && !schemas.is_empty()
                    && !payload::json_line_passes(&line, schemas, &counters.invalid)
                {
                    continue;
                }
                chunk.push(line);
                if chunk.len() >= args.batch {
                    break;
                }
            }
            if convert {
                if entries.is_empty() {
                    return Ok(None);
                }
                let count = entries.len() as u64;
                return Ok(Some((
                    self.next_id,
                    payload::encode(format, &entries)?,
                    count,
                )));
            }
            if chunk.is_empty() {
                return Ok(None);
            }
            let count = chunk.len() as u64;
            return Ok(Some((self.next_id, chunk.join("\n").into_bytes(), count)));
        }
        if self.remaining == 0 {
            return Ok(None);
        }
        let generator = self.generator.as_mut().context("no input")?;
        let n = (args.batch as u64).min(self.remaining);
        self.remaining -= n;
        let now = logcluster_proto::time::now_nanos();
        let mut entries = Vec::with_capacity(n as usize);
        for i in 0..n {
            let entry = generator.next_entry(now + i as i64);
            if !schemas.is_empty() && !payload::entry_passes(&entry, format, schemas) {
                counters.invalid.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            return Ok(Some((self.next_id, Vec::new(), 0)));
        }
        let count = entries.len() as u64;
        Ok(Some((
            self.next_id,
            payload::encode(format, &entries)?,
            count,
        )))
    }
}

/// Waits as --rate and --interval ask before the next batch of `n` entries.
struct Pacer {
    started: Instant,
    produced: u64,
}

impl Pacer {
    async fn pace(&mut self, args: &SendArgs, interval: Duration, n: u64) {
        if args.rate > 0 {
            let due =
                self.started + Duration::from_secs_f64(self.produced as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        self.produced += n;
        if !args.burst && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
}

async fn send_tcp(
    args: &SendArgs,
    format: Format,
    schemas: &[CompiledSchema],
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
    interval: Duration,
) -> anyhow::Result<()> {
    let ca = args
        .tls_ca
        .as_ref()
        .context("--tls-ca is required for TLS (or use --udp)")?;
    let tls = logcluster_common::tls::load_client_config(ca, None)
        .context("cannot load the CA certificate")?;
    let targets: Vec<(String, u16)> = args
        .address
        .iter()
        .map(|address| endpoint(address, args.tcp_port))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!targets.is_empty(), "--address names no ingestor");
    let name = rustls::pki_types::ServerName::try_from(args.server_name.clone())
        .with_context(|| format!("invalid --server-name {:?}", args.server_name))?;
    // An address that drops packets, or a peer that never answers the handshake, would
    // otherwise hold a connection attempt for minutes.
    let connect_timeout =
        logcluster_config::parse_duration(&args.connect_timeout).with_context(|| {
            format!(
                "--connect-timeout {:?} is not a duration",
                args.connect_timeout
            )
        })?;
    let targets = Arc::new(targets);
    let (work_tx, work_rx) =
        mpsc::channel::<Batch>(args.connections.max(1) * args.max_in_flight.max(1) * 2);
    let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
    let done = Arc::new(AtomicBool::new(false));
    let mut connections = Vec::new();
    for index in 0..args.connections.max(1) {
        connections.push(tokio::spawn(connection(
            index,
            args.clone(),
            targets.clone(),
            name.clone(),
            connect_timeout,
            tls.clone(),
            work_rx.clone(),
            work_tx.clone(),
            counters.clone(),
            done.clone(),
        )));
    }
    let mut producer = Producer::new(args)?;
    let mut pacer = Pacer {
        started: Instant::now(),
        produced: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        let Some((id, payload, count)) = producer.next(args, format, schemas, counters)? else {
            break;
        };
        if count == 0 {
            continue;
        }
        pacer.pace(args, interval, count).await;
        counters.outstanding.fetch_add(count, Ordering::SeqCst);
        counters.sent.fetch_add(count, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let frame = Arc::new(encode_frame(format, id, &args.tenant, &payload));
        let batch = Batch {
            id,
            entries: count,
            frame,
            attempts: 0,
        };
        // The queue is full while nothing drains it (no connection): a signal still stops.
        tokio::select! {
            queued = work_tx.send(batch) => {
                if queued.is_err() {
                    bail!("all connections stopped");
                }
            }
            () = stopped(stop) => {
                counters.outstanding.fetch_sub(count, Ordering::SeqCst);
                counters.sent.fetch_sub(count, Ordering::Relaxed);
                counters.bytes.fetch_sub(payload.len() as u64, Ordering::Relaxed);
                break;
            }
        }
    }
    // Wait for every batch to be acknowledged or to fail; after a signal, at most 15 s.
    let mut drain_deadline: Option<Instant> = None;
    while counters.outstanding.load(Ordering::SeqCst) > 0 {
        if stop.load(Ordering::SeqCst) {
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(15));
            if Instant::now() > deadline {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The connections are stopped first: one could still settle a batch (and count it)
    // after what is left is counted here.
    done.store(true, Ordering::SeqCst);
    drop(work_tx);
    for handle in &connections {
        handle.abort();
    }
    for handle in connections {
        let _ = handle.await;
    }
    let left = counters.outstanding.swap(0, Ordering::SeqCst);
    counters.failed.fetch_add(left, Ordering::Relaxed);
    Ok(())
}

/// Finishes a batch: counts its outcome or schedules a retry.
fn settle(
    batch: Batch,
    ack: Option<&Ack>,
    sent_at: Instant,
    counters: &Arc<Counters>,
    retry: &mpsc::Sender<Batch>,
) {
    match ack.map(|a| a.status) {
        Some(AckStatus::Accepted | AckStatus::Partial) => {
            let ack = ack.expect("matched Some");
            counters
                .acked
                .fetch_add(u64::from(ack.accepted), Ordering::Relaxed);
            counters
                .rejected
                .fetch_add(u64::from(ack.rejected), Ordering::Relaxed);
            if ack.duplicate {
                counters
                    .duplicates
                    .fetch_add(u64::from(ack.accepted), Ordering::Relaxed);
            }
            if let Ok(mut l) = counters.latencies_ms.lock() {
                l.push(sent_at.elapsed().as_secs_f64() * 1000.0);
            }
            counters
                .outstanding
                .fetch_sub(batch.entries, Ordering::SeqCst);
        }
        Some(AckStatus::Rejected) => {
            let ack = ack.expect("matched Some");
            warn!(batch = batch.id, error = %ack.error, "batch rejected");
            counters
                .rejected
                .fetch_add(batch.entries, Ordering::Relaxed);
            counters
                .outstanding
                .fetch_sub(batch.entries, Ordering::SeqCst);
        }
        _ => {
            if batch.attempts as usize >= BACKOFF.len() {
                let error = match ack {
                    Some(ack) if !ack.error.is_empty() => ack.error.as_str(),
                    _ => "no acknowledgement (no connection, or it was lost)",
                };
                warn!(
                    batch = batch.id,
                    %error,
                    "batch failed after {} retries",
                    BACKOFF.len()
                );
                counters.failed.fetch_add(batch.entries, Ordering::Relaxed);
                counters
                    .outstanding
                    .fetch_sub(batch.entries, Ordering::SeqCst);
                return;
            }
            counters.retries.fetch_add(1, Ordering::Relaxed);
            let delay = BACKOFF[batch.attempts as usize];
            let retry = retry.clone();
            let mut batch = batch;
            batch.attempts += 1;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = retry.send(batch).await;
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    index: usize,
    args: SendArgs,
    targets: Arc<Vec<(String, u16)>>,
    name: rustls::pki_types::ServerName<'static>,
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    work: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>,
    retry: mpsc::Sender<Batch>,
    counters: Arc<Counters>,
    done: Arc<AtomicBool>,
) {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut address_index = index;
    let mut failures = 0u32;
    let mut failing_since: Option<Instant> = None;
    while !done.load(Ordering::SeqCst) {
        let (host, port) = &targets[address_index % targets.len()];
        let port = *port;
        let attempt = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| e.to_string())
        };
        let stream = match tokio::time::timeout(connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no connection and TLS handshake within {connect_timeout:?} (--connect-timeout)"
            )),
        };
        let stream = match stream {
            Ok(stream) => {
                failures = 0;
                failing_since = None;
                stream
            }
            Err(error) => {
                failures += 1;
                let failing_since = *failing_since.get_or_insert_with(Instant::now);
                warn!(%host, port, %error, "connection failed; trying the next address");
                address_index += 1;
                // Unreachable for a while with no other connection up: the batches waiting
                // use up a try each (they fail after their last), instead of waiting forever.
                if failing_since.elapsed() >= UNREACHABLE_AFTER
                    && counters.connected.load(Ordering::SeqCst) == 0
                {
                    let mut waiting = work.lock().await;
                    while let Ok(batch) = waiting.try_recv() {
                        settle(batch, None, Instant::now(), &counters, &retry);
                    }
                }
                tokio::time::sleep(Duration::from_millis((50 * u64::from(failures)).min(1000)))
                    .await;
                continue;
            }
        };
        counters.connected.fetch_add(1, Ordering::SeqCst);
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut pending: VecDeque<(Batch, Instant)> = VecDeque::new();
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        let broken = loop {
            let can_send = pending.len() < args.max_in_flight.max(1);
            tokio::select! {
                next = async { work.lock().await.recv().await }, if can_send => {
                    let Some(batch) = next else { break false };
                    if writer.write_all(&batch.frame).await.is_err() {
                        pending.push_back((batch, Instant::now()));
                        break true;
                    }
                    pending.push_back((batch, Instant::now()));
                }
                read = reader.read(&mut chunk) => {
                    match read {
                        Ok(0) | Err(_) => break true,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    loop {
                        match Ack::parse(&buf) {
                            Ok(Some((ack, len))) => {
                                buf.drain(..len);
                                let Some((batch, sent_at)) = pending.pop_front() else { break };
                                settle(batch, Some(&ack), sent_at, &counters, &retry);
                            }
                            Ok(None) => break,
                            Err(error) => {
                                warn!(%error, "unreadable acknowledgement; reconnecting");
                                buf.clear();
                                break;
                            }
                        }
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(30)), if !pending.is_empty() => {
                    warn!("no acknowledgement for 30s; reconnecting");
                    break true;
                }
            }
        };
        counters.connected.fetch_sub(1, Ordering::SeqCst);
        // Whatever was not acknowledged is retried with the same batch id.
        for (batch, sent_at) in pending.drain(..) {
            settle(batch, None, sent_at, &counters, &retry);
        }
        if !broken {
            return;
        }
        address_index += 1;
    }
}

async fn send_udp(
    args: &SendArgs,
    format: Format,
    schemas: &[CompiledSchema],
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
    interval: Duration,
) -> anyhow::Result<()> {
    if format != Format::Json {
        bail!("UDP carries JSON only; use --format json with --udp");
    }
    let (host, port) = endpoint(&args.address[0], args.udp_port)?;
    // Resolved once; the socket binds in the target's family.
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let bind = if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    let mut producer = Producer::new(args)?;
    let mut pacer = Pacer {
        started: Instant::now(),
        produced: 0,
    };
    let mut oversize = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some((_, payload, count)) = producer.next(args, format, schemas, counters)? else {
            break;
        };
        if count == 0 {
            continue;
        }
        pacer.pace(args, interval, count).await;
        let (datagrams, too_big) = payload::split_datagrams(&payload, payload::MAX_DATAGRAM);
        if too_big > 0 {
            oversize += too_big as u64;
            if oversize == too_big as u64 || oversize.is_multiple_of(1000) {
                warn!(
                    oversize,
                    "entries over {} bytes are sent alone and may be fragmented or dropped",
                    payload::MAX_DATAGRAM
                );
            }
        }
        for datagram in datagrams {
            socket
                .send_to(&datagram, target)
                .await
                .with_context(|| format!("cannot send to {target}"))?;
            counters
                .bytes
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        }
        counters.sent.fetch_add(count, Ordering::Relaxed);
    }
    Ok(())
}

async fn print_stats(counters: Arc<Counters>, total: u64, every: Duration) {
    let tty = std::io::stderr().is_terminal();
    let mut last = (0u64, 0u64, Instant::now());
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let sent = counters.sent.load(Ordering::Relaxed);
        let acked = counters.acked.load(Ordering::Relaxed);
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let secs = last.2.elapsed().as_secs_f64().max(1e-3);
        let rate = acked.saturating_sub(last.0) as f64 / secs;
        let mb = bytes.saturating_sub(last.1) as f64 / secs / 1e6;
        let mut recent: Vec<f64> = counters
            .latencies_ms
            .lock()
            .map(|l| l.iter().rev().take(2000).copied().collect())
            .unwrap_or_default();
        recent.sort_by(f64::total_cmp);
        let line = format!(
            "sent {sent} acked {acked} failed {} rejected {} | {rate:.0} logs/s {mb:.1} MB/s | ack p50 {:.1} ms p99 {:.1} ms",
            counters.failed.load(Ordering::Relaxed),
            counters.rejected.load(Ordering::Relaxed),
            percentile(&recent, 0.5),
            percentile(&recent, 0.99),
        );
        if tty && total > 0 {
            let done = (acked as f64 / total as f64).min(1.0);
            let filled = (done * 30.0) as usize;
            // A progress bar that cannot be drawn (stderr closed) is skipped.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr().lock(),
                format_args!(
                    "\r[{}{}] {:>3.0}% {line}",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    done * 100.0
                ),
            );
        } else {
            note!("{line}");
        }
        last = (acked, bytes, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SendArgs,
    }

    #[test]
    fn arguments_parse_with_documented_defaults_and_lists() {
        let w = Wrapper::try_parse_from([
            "send",
            "--address",
            "a,b",
            "--address",
            "c",
            "--format",
            "proto",
            "--rate",
            "5000",
        ])
        .expect("parses");
        assert_eq!(w.args.address, ["a", "b", "c"]);
        assert_eq!(w.args.tcp_port, 3001);
        assert_eq!(w.args.udp_port, 3002);
        assert_eq!(w.args.batch, 1000);
        assert_eq!(w.args.rate, 5000);
        assert!(Wrapper::try_parse_from(["send", "--batch", "x"]).is_err());
    }

    #[test]
    fn addresses_may_name_their_port() {
        let cases = [
            ("127.0.0.1", ("127.0.0.1", 3001)),
            ("127.0.0.1:4000", ("127.0.0.1", 4000)),
            ("ingest.example", ("ingest.example", 3001)),
            ("ingest.example:4000", ("ingest.example", 4000)),
            ("::1", ("::1", 3001)),
            ("[::1]", ("::1", 3001)),
            ("[::1]:4000", ("::1", 4000)),
        ];
        for (address, (host, port)) in cases {
            let parsed = endpoint(address, 3001).expect(address);
            assert_eq!(parsed, (host.to_string(), port), "{address}");
        }
        for bad in ["host:notaport", "host:70000", "a:b:c", ""] {
            assert!(endpoint(bad, 3001).is_err(), "{bad}");
        }
    }

    #[test]
    fn retries_back_off_three_times() {
        assert_eq!(BACKOFF.len(), 3);
        assert!(BACKOFF.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn percentiles_pick_the_right_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 51.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
