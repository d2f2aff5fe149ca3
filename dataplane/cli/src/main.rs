//! The `logcluster` binary: node roles and the client commands. It only wires library crates.

mod cluster_cmd;
mod cluster_wiring;
mod node;
mod query_cmd;
mod send;
mod up;

use clap::{Parser, Subcommand};

/// The ingest path allocates many small strings per entry; glibc malloc spent over a third of
/// the node's CPU in allocation and consolidation under load (perf, BENCHMARKS.md), mimalloc
/// a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// LogCluster: a distributed log processing system.
#[derive(Parser)]
#[command(name = "logcluster", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole local cluster on 127.0.0.1 (the embedded default).
    Up(up::UpArgs),
    /// Run one node from a configuration file.
    Node(node::NodeArgs),
    /// Send logs: a load generator and a shipper (files, stdin) over TLS or UDP.
    Send(send::SendArgs),
    /// Search logs through the query API.
    Query(query_cmd::QueryArgs),
    /// Follow matching entries live as they are acknowledged (Server-Sent Events).
    Tail(query_cmd::TailArgs),
    /// Alert rules and their states.
    Alerts(query_cmd::AlertsArgs),
    /// Inspect the cluster: `logcluster cluster status`.
    Cluster(cluster_cmd::ClusterArgs),
}

/// mimalloc settings, read from the environment when the process starts (before `main`), so
/// the process re-executes itself once with them set (same pid; a setting the operator made
/// is left alone):
/// - `MIMALLOC_PURGE_DELAY=250`: mimalloc gives freed memory back to the OS 10 ms after it is
///   freed; under ingest load it faults the same memory back in at once and the kernel zeroes
///   every page again. With a 250 ms delay the memory is reused instead: +10-25 % acknowledged
///   ingest (BENCHMARKS.md, "Allocator purge delay").
/// - `MIMALLOC_ALLOW_THP=0`: without it mimalloc asks for transparent huge pages, so each
///   first touch of its memory faults in and zeroes 2 MiB and partly used huge pages count
///   whole in the resident set: 11 % of the node's CPU went to zeroing huge pages under
///   ingest, and peak RSS fell from 308 to 232-252 MB without them at the same ingest rate
///   (BENCHMARKS.md, "Transparent huge pages").
const ALLOCATOR_SETTINGS: [(&str, &str); 2] =
    [("MIMALLOC_PURGE_DELAY", "250"), ("MIMALLOC_ALLOW_THP", "0")];

fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    let missing: Vec<(&str, &str)> = ALLOCATOR_SETTINGS
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only when it failed; the process then goes on with the defaults.
    let _failed = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(missing)
        .exec();
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Blocking threads do decoding, WAL writes, fsyncs, compression and scans. Each keeps an
    // allocator heap of its own that retains freed pages: with 16 threads a single node
    // peaked at ~480 MB under full ingest, with 6 at ~280-310 MB and the same throughput
    // (BENCHMARKS.md). Six leave room for queries and parallel fsyncs on 2 cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(6)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Node(args) => node::run(args).await,
            Command::Send(args) => send::run(args).await,
            Command::Query(args) => query_cmd::run(args).await,
            Command::Tail(args) => query_cmd::tail(args).await,
            Command::Alerts(args) => query_cmd::alerts(args).await,
            Command::Cluster(args) => cluster_cmd::run(args).await,
        }
    })
}
