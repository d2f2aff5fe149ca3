//! Test support for running the real `logcluster` binary as processes on 127.0.0.1: spawn with
//! captured output, wait for a ready-file, send signals (kill -9, SIGSTOP, SIGTERM), print each
//! node's log when a test fails, and wait with deadlines that CI can stretch.
//!
//! Only for tests: nothing in the product depends on this crate.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod proxy;
pub use proxy::{Fault, FaultProxy};

/// Multiplier for every deadline, from `LOGCLUSTER_TEST_PATIENCE` (default 1): slow CI
/// machines stretch waits instead of failing.
pub fn patience() -> f64 {
    std::env::var("LOGCLUSTER_TEST_PATIENCE")
        .ok()
        .and_then(|p| p.parse::<f64>().ok())
        .filter(|p| *p >= 1.0)
        .unwrap_or(1.0)
}

/// Polls `check` until it returns true or `deadline` (times patience) passes.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, deadline, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

/// Polls `check` until it yields a value or `deadline` (times patience) passes; the error
/// says what was awaited.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline.mul_f64(patience());
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > until {
            bail!(
                "timed out after {:?} waiting for {what}",
                deadline.mul_f64(patience())
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Path of a workspace binary for integration tests: `CARGO_BIN_EXE_<name>` when cargo sets
/// it, else next to the test executable (`target/<profile>/deps/..`).
pub fn binary_path(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A child process with its output captured to a log file in its own temp directory.
pub struct NodeProcess {
    child: Child,
    pid: u32,
    /// Holds the log file; also a scratch directory the caller may use.
    pub dir: tempfile::TempDir,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl NodeProcess {
    /// Spawns `binary args…` with stdout and stderr appended to `<dir>/node.log`.
    pub fn spawn(binary: &Path, args: &[String]) -> anyhow::Result<NodeProcess> {
        let dir = tempfile::tempdir()?;
        let log_path = dir.path().join("node.log");
        let log = File::create(&log_path)?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        Ok(NodeProcess {
            pid: child.id(),
            child,
            dir,
            log_path,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until `ready_file` holds JSON with a `ports` object, and returns the ports.
    pub async fn wait_ready(
        &mut self,
        ready_file: &Path,
        deadline: Duration,
    ) -> anyhow::Result<HashMap<String, u16>> {
        let until = Instant::now() + deadline.mul_f64(patience());
        loop {
            if let Ok(text) = std::fs::read_to_string(ready_file)
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(ports) = value.get("ports").and_then(|p| p.as_object())
            {
                return Ok(ports
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), u16::try_from(v.as_u64()?).ok()?)))
                    .collect());
            }
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                bail!(
                    "process exited during startup ({status}); log:\n{}",
                    self.log_contents()
                );
            }
            if Instant::now() > until {
                bail!(
                    "process not ready within {deadline:?}; log:\n{}",
                    self.log_contents()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {} failed", self.pid);
        Ok(())
    }

    /// SIGKILL and reap: a crash with no chance to flush.
    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if self.exited.is_none() {
            self.child.kill()?;
            self.exited = Some(self.child.wait()?);
        }
        Ok(())
    }

    /// SIGSTOP: the process hangs, its sockets stay open.
    /// SIGSTOP, then waits until every thread of the process is stopped: a group stop is
    /// asynchronous (each thread stops when it next runs), and on a loaded machine a worker
    /// thread can still answer a request after `kill` returned.
    pub fn sigstop(&self) -> anyhow::Result<()> {
        self.signal("STOP")?;
        let until = Instant::now() + Duration::from_secs(10).mul_f64(patience());
        loop {
            if self.all_threads_stopped()? {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < until,
                "process {} did not stop after SIGSTOP",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether every thread in `/proc/<pid>/task` is stopped (T), traced (t) or has exited
    /// (Z, X).
    fn all_threads_stopped(&self) -> anyhow::Result<bool> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .with_context(|| format!("process {} has no /proc entry", self.pid))?;
        for task in tasks {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // The state is the first field after the parenthesised name (which may hold
            // spaces and parentheses, hence the last ')').
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if !matches!(state, Some("T" | "t" | "Z" | "X")) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn sigcont(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// SIGTERM, then wait for the exit (SIGKILL after `deadline`).
    pub async fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        self.signal("TERM")?;
        let until = Instant::now() + deadline.mul_f64(patience());
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                return Ok(status);
            }
            if Instant::now() > until {
                self.kill_9()?;
                bail!(
                    "process ignored SIGTERM for {deadline:?}; killed. log:\n{}",
                    self.log_contents()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process printed so far.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.signal("CONT");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of process {} -----\n{}\n----- end of log -----",
                self.pid,
                self.log_contents()
            );
        }
    }
}

/// Seeded randomness whose seed is printed, so a failing run can be replayed with
/// `LOGCLUSTER_TEST_SEED=<seed>`.
pub struct SeededRng {
    pub seed: u64,
    pub rng: rand::rngs::StdRng,
}

impl SeededRng {
    pub fn new() -> SeededRng {
        use rand::SeedableRng;
        let seed = std::env::var("LOGCLUSTER_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("test seed: {seed} (replay with LOGCLUSTER_TEST_SEED={seed})");
        SeededRng {
            seed,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }
}

impl Default for SeededRng {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_file_ports_are_read_and_kill_9_stops_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = dir.path().join("ready.json");
        let script = format!(
            "echo starting; sleep 0.2; echo '{{\"ports\": {{\"http\": 4242}}}}' > {}; sleep 60",
            ready.display()
        );
        let mut process =
            NodeProcess::spawn(Path::new("sh"), &["-c".to_string(), script]).expect("spawn");
        let ports = process
            .wait_ready(&ready, Duration::from_secs(10))
            .await
            .expect("ready");
        assert_eq!(ports.get("http"), Some(&4242));
        assert!(process.log_contents().contains("starting"));
        process.kill_9().expect("kill");
        assert!(process.child.try_wait().expect("wait").is_some());
    }

    #[tokio::test]
    async fn a_process_that_dies_during_startup_is_reported_with_its_log() {
        let mut process = NodeProcess::spawn(
            Path::new("sh"),
            &["-c".to_string(), "echo boom >&2; exit 3".to_string()],
        )
        .expect("spawn");
        let error = process
            .wait_ready(
                Path::new("/nonexistent/ready.json"),
                Duration::from_secs(10),
            )
            .await
            .expect_err("must fail");
        assert!(error.to_string().contains("boom"), "{error}");
    }

    #[tokio::test]
    async fn wait_until_reports_what_it_waited_for() {
        let error = wait_until("the impossible", Duration::from_millis(50), || async {
            false
        })
        .await
        .expect_err("times out");
        assert!(error.to_string().contains("the impossible"));
        let mut calls = 0;
        wait_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            let done = calls >= 3;
            async move { done }
        })
        .await
        .expect("succeeds");
    }
}
