//! The `logcluster` binary: node roles and the client commands. It only wires library crates.

/// `println!` that returns the write's error instead of panicking: the commands' output is
/// often piped into `head` or `grep -m1`, which close the pipe early ([`StdoutClosed`]).
macro_rules! out {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        )
        .map_err(crate::StdoutClosed::from_io)
    };
}

/// `eprintln!` for the commands' own summaries, which a closed stderr simply loses.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

/// Whoever read a command's output stopped reading: the command is done (exit 0), as the
/// standard tools are. Only [`out!`] gives this error, so a broken pipe elsewhere (a
/// connection) is still an error.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

impl StdoutClosed {
    fn from_io(error: std::io::Error) -> anyhow::Error {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            error.into()
        }
    }
}

mod cluster_cmd;
mod cluster_wiring;
mod http_server;
mod node;
mod query_cmd;
mod send;
mod up;

use clap::{Parser, Subcommand};

/// The ingest path allocates many small strings per entry on one thread (decoding) and frees
/// them on another (after a block is built). glibc malloc spent over a third of the node's
/// CPU in allocation and consolidation under load; mimalloc about a fifth, much of it taking
/// back what other threads had freed; jemalloc less than either, with a lower peak RSS
/// (BENCHMARKS.md, "Allocator"). jemalloc is built to ask for no transparent huge pages and
/// to keep one arena per CPU (`.cargo/config.toml`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a pod's log, a file or a pipe gets plain
        // text that log shippers and grep can read.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr is a pipe whose reader went away) is
        // dropped. By default the subscriber reports that failure with `eprint!`, which
        // panics on the same broken stderr: the task that logged died, and with it, for
        // one, the task that turns SIGTERM into a graceful shutdown.
        .log_internal_errors(false)
        .init();
    // Blocking threads do decoding, WAL writes, fsyncs, compression and scans. Each keeps an
    // allocator heap of its own that retains freed pages: with 16 threads a single node
    // peaked at ~480 MB under full ingest, with 6 at ~280-310 MB and the same throughput
    // (BENCHMARKS.md). Six leave room for queries and parallel fsyncs on 2 cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(6)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Node(args) => {
                if !up::exit_with_parent() {
                    anyhow::bail!("the `logcluster up` that started this node has exited");
                }
                node::run(args).await
            }
            Command::Send(args) => send::run(args).await,
            Command::Query(args) => query_cmd::run(args).await,
            Command::Tail(args) => query_cmd::tail(args).await,
            Command::Alerts(args) => query_cmd::alerts(args).await,
            Command::Cluster(args) => cluster_cmd::run(args).await,
        }
    });
    match result {
        Err(error) if error.downcast_ref::<StdoutClosed>().is_some() => Ok(()),
        other => other,
    }
}
