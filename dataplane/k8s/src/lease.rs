//! Leader election with a `coordination.k8s.io/v1` Lease: the operator's replicas (only the
//! holder reconciles) and the query nodes (only the holder evaluates alert rules).
//!
//! The holder renews every `renew_every`; a standby takes over once it has seen the same lease
//! record (holder, renewTime, duration) unchanged for `leaseDurationSeconds` by its *own*
//! monotonic clock, as client-go does. Comparing the holder-written renewTime with the
//! standby's wall clock instead would let a standby whose clock runs ahead take over from a
//! live holder. Every write carries the resourceVersion it read, so two candidates racing for
//! an expired lease cannot both win (the loser gets 409 Conflict). A holder that cannot renew
//! stops acting as leader `renew_every` before anyone else may take over (each attempt is
//! bounded by a timeout, so a hung API call cannot delay that). On shutdown the holder releases
//! the lease so a standby takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal (default 15 s).
    pub duration: Duration,
    /// How often the holder renews and standbys retry.
    pub renew_every: Duration,
}

impl LeaseConfig {
    pub fn new(name: &str, namespace: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// The other holder's lease record as this candidate last saw it change, and when (by this
/// candidate's monotonic clock).
#[derive(Debug)]
struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<i32>),
    at: Instant,
}

/// One candidate's campaign state across attempts.
#[derive(Debug)]
pub struct Candidate {
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl Candidate {
    pub fn new(config: LeaseConfig) -> Candidate {
        Candidate {
            config,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// One attempt now, by the runtime's clock (the one [`run`] times renewals with, which a
    /// test can pause): see [`Candidate::try_acquire_at`]. A record seen for the first time
    /// counts from when the read returned, not from when it was sent, so a slow read cannot
    /// shorten the wait.
    pub async fn try_acquire(&mut self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        self.attempt(api, || tokio::time::Instant::now().into_std())
            .await
    }

    /// One attempt at local time `now`: acquires, renews, or finds the lease held by someone
    /// else. `Ok(true)` when this candidate holds the lease afterwards. Another holder's
    /// lease counts as expired only once this candidate has seen its record unchanged for the
    /// lease's duration.
    pub async fn try_acquire_at(
        &mut self,
        api: &Api<Lease>,
        now: Instant,
    ) -> Result<bool, kube::Error> {
        self.attempt(api, move || now).await
    }

    async fn attempt(
        &mut self,
        api: &Api<Lease>,
        clock: impl FnOnce() -> Instant,
    ) -> Result<bool, kube::Error> {
        let config = &self.config;
        let observed = &mut self.observed;
        try_acquire_with(api, config, |spec| {
            let now = clock();
            let record = (
                spec.holder_identity.clone(),
                spec.renew_time.clone(),
                spec.lease_duration_seconds,
            );
            match observed {
                Some(seen) if seen.record == record => {
                    let seconds = spec.lease_duration_seconds.unwrap_or(0).max(0) as u64;
                    now.saturating_duration_since(seen.at) > Duration::from_secs(seconds)
                }
                _ => {
                    *observed = Some(Observed { record, at: now });
                    false
                }
            }
        })
        .await
    }
}

/// One attempt; `expired` decides whether another holder's lease may be taken.
async fn try_acquire_with(
    api: &Api<Lease>,
    config: &LeaseConfig,
    expired: impl FnOnce(&LeaseSpec) -> bool,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let fresh_spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(current) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(fresh_spec(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                info!(lease = %config.name, identity = %config.identity, "lease created and acquired");
                Ok(true)
            }
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let mine = holder.as_deref() == Some(config.identity.as_str());
    if !(mine || holder.is_none() || expired(&spec)) {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + if mine { 0 } else { 1 };
    let acquired = if mine {
        spec.acquire_time.clone()
    } else {
        None
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: current.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(fresh_spec(transitions, acquired)),
    };
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            if !mine {
                info!(lease = %config.name, identity = %config.identity, previous = ?holder, "lease taken over");
            }
            Ok(true)
        }
        Err(error) if is_conflict(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Gives the lease up (if held) so a standby takes over without waiting for expiry.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(current) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let mut spec = current.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: current.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    };
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    info!(lease = %config.name, identity = %config.identity, "lease released");
    Ok(())
}

/// Campaigns until `stop` resolves, publishing whether this candidate leads; releases the
/// lease on the way out.
pub async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut candidate = Candidate::new(config.clone());
    // When the last successful renewal *started*: the renewTime it wrote is no later, so the
    // lease is ours until at least this + duration.
    let mut last_renewal: Option<tokio::time::Instant> = None;
    // Step down this long after the last renewal, before others may take over; watched while
    // an attempt is in flight and while waiting, so a slow or hung renewal cannot delay it.
    let margin = config.duration.saturating_sub(config.renew_every);
    let step_down = |last_renewal: &mut Option<tokio::time::Instant>| {
        *last_renewal = None;
        leader.send_if_modified(|l| std::mem::replace(l, false));
    };
    loop {
        let started = tokio::time::Instant::now();
        // Bounded: a hung API call must not keep a stale leader acting.
        let attempt = tokio::time::timeout(config.renew_every, candidate.try_acquire(&api));
        match stepping_down_meanwhile(attempt, &mut last_renewal, margin, &step_down).await {
            Ok(Ok(true)) => {
                last_renewal = Some(started);
                leader.send_if_modified(|l| !std::mem::replace(l, true));
            }
            Ok(Ok(false)) => step_down(&mut last_renewal),
            Ok(Err(error)) => warn!(%error, lease = %config.name, "lease renewal failed"),
            Err(_) => warn!(lease = %config.name, "lease renewal timed out"),
        }
        let wait = async {
            tokio::select! {
                () = tokio::time::sleep(config.renew_every) => false,
                () = &mut stop => true,
            }
        };
        // A deadline already past steps down at once.
        if stepping_down_meanwhile(wait, &mut last_renewal, margin, &step_down).await {
            step_down(&mut last_renewal);
            if let Err(error) = release(&api, &config).await {
                warn!(%error, lease = %config.name, "could not release the lease");
            }
            return;
        }
    }
}

/// Runs `work` to its end; if the lease runs out meanwhile (`margin` after the last renewal
/// started), steps down then, without waiting for `work`.
async fn stepping_down_meanwhile<T>(
    work: impl std::future::Future<Output = T>,
    last_renewal: &mut Option<tokio::time::Instant>,
    margin: Duration,
    step_down: &impl Fn(&mut Option<tokio::time::Instant>),
) -> T {
    tokio::pin!(work);
    loop {
        let deadline = last_renewal.map(|t| t + margin);
        tokio::select! {
            out = &mut work => return out,
            () = sleep_until(deadline) => step_down(last_renewal),
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
