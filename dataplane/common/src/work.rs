//! How many CPU-heavy ingest jobs this process runs at once: decoding and storing a batch
//! (a frame, an HTTP body, a syslog or UDP batch) and, on a storage member, storing a replica
//! write. Each job runs on a blocking thread from start to end without waiting on another
//! job's slot, and holds its slot for that time.
//!
//! Running more jobs than the CPUs the process may use only interleaves them: each one's
//! entries, columns and hash tables leave the core's cache to the others', and they queue
//! on the same streams' locks. On 2 CPUs a single node needed 10–15 % more CPU per entry
//! with six jobs at once than with two or three, and the local three-member cluster (four
//! processes on the same 2 CPUs) was fastest with one job per process (BENCHMARKS.md,
//! "Ingest jobs bounded by the CPUs"). Jobs waiting for a slot wait on the async runtime,
//! holding no thread; the blocking pool keeps its other threads for fsyncs and queries.

use std::sync::{Arc, LazyLock, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

static SLOTS: OnceLock<(usize, Arc<Semaphore>)> = OnceLock::new();

/// The jobs' metrics: one set per process, like the slots.
struct Metrics {
    started: Counter,
    waiting: Gauge,
    slots: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    started: Counter::default(),
    waiting: Gauge::default(),
    slots: Gauge::default(),
});

/// Registers the jobs' metrics (`logcluster_ingest_jobs_total`, `…_jobs_waiting`,
/// `…_job_slots`) in a node's registry.
pub fn register(registry: &mut Registry) {
    let metrics = &*METRICS;
    metrics.slots.set(capacity() as i64);
    registry.register(
        "logcluster_ingest_jobs",
        "Batches and replica writes decoded and stored (each held one of the process's ingest slots)",
        metrics.started.clone(),
    );
    registry.register(
        "logcluster_ingest_jobs_waiting",
        "Batches and replica writes waiting for an ingest slot (all slots busy: the CPUs are)",
        metrics.waiting.clone(),
    );
    registry.register(
        "logcluster_ingest_job_slots",
        "How many batches and replica writes this process decodes and stores at once (ingest.workers)",
        metrics.slots.clone(),
    );
}

/// The CPUs this process may use (its cgroup's quota counted), at least 1.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets how many jobs run at once (0: [`available_cpus`]), before the first job asks for a
/// slot; returns the number in force (an earlier setting, or the default once a job has
/// asked).
pub fn set_slots(jobs: usize) -> usize {
    let jobs = if jobs == 0 { available_cpus() } else { jobs };
    SLOTS
        .get_or_init(|| (jobs, Arc::new(Semaphore::new(jobs))))
        .0
}

fn slots() -> &'static (usize, Arc<Semaphore>) {
    SLOTS.get_or_init(|| {
        let jobs = available_cpus();
        (jobs, Arc::new(Semaphore::new(jobs)))
    })
}

/// How many jobs run at once.
pub fn capacity() -> usize {
    slots().0
}

/// Waits for a free slot; the job runs while the returned permit lives.
pub async fn slot() -> OwnedSemaphorePermit {
    let metrics = &*METRICS;
    metrics.waiting.inc();
    // Counted out however the wait ends (its future may be dropped unfinished).
    let _waiting = WaitingGuard(&metrics.waiting);
    let permit = slots()
        .1
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore of ingest jobs is never closed");
    metrics.started.inc();
    permit
}

struct WaitingGuard(&'static Gauge);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
