//! Leader election against the fake API: acquire, renew, a standby refused while the lease is
//! fresh, takeover after expiry measured by the standby's own clock (whatever the renewTime
//! says), a lost race, and release on shutdown.

mod common;

use common::FakeApi;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use std::time::{Duration, Instant};

use logcluster_k8s::lease::{Candidate, LeaseConfig, release};
use serde_json::json;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/logcluster-operator";

#[tokio::test]
async fn acquire_renew_refuse_take_over_and_release() -> anyhow::Result<()> {
    let api = FakeApi::start();
    let leases: Api<Lease> = Api::namespaced(api.client.clone(), "ops");
    let mut a = Candidate::new(LeaseConfig::new("logcluster-operator", "ops", "operator-a"));
    let mut b = Candidate::new(LeaseConfig::new("logcluster-operator", "ops", "operator-b"));
    let t0 = Instant::now();
    let after = |seconds: u64| t0 + Duration::from_secs(seconds);

    // No lease yet: a creates it and leads.
    assert!(a.try_acquire_at(&leases, t0).await?);
    let created = api
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .expect("a create");
    assert_eq!(
        created.path,
        "/apis/coordination.k8s.io/v1/namespaces/ops/leases"
    );
    assert_eq!(created.body["spec"]["holderIdentity"], "operator-a");
    assert_eq!(created.body["spec"]["leaseDurationSeconds"], 15);

    // a renews (PUT with the resourceVersion it read); b is refused while the lease is fresh.
    api.clear_calls();
    assert!(a.try_acquire_at(&leases, t0).await?);
    let renew = api
        .calls()
        .into_iter()
        .find(|c| c.method == "PUT")
        .expect("a renewal");
    assert_eq!(renew.body["spec"]["holderIdentity"], "operator-a");
    assert!(renew.body["metadata"]["resourceVersion"].is_string());
    assert!(!b.try_acquire_at(&leases, t0).await?);
    assert_eq!(
        api.get(PATH).expect("lease")["spec"]["holderIdentity"],
        "operator-a"
    );

    // A renewTime long past by b's wall clock (b's clock runs ahead, or a's behind) does not
    // make the lease expired: b has seen this record for no time at all.
    let mut lease = api.get(PATH).expect("lease");
    lease["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    api.put(PATH, lease);
    assert!(!b.try_acquire_at(&leases, after(1)).await?);
    // a renews before 15 s have passed on b's clock: b's wait starts over.
    assert!(a.try_acquire_at(&leases, after(10)).await?);
    assert!(!b.try_acquire_at(&leases, after(17)).await?);
    assert!(!b.try_acquire_at(&leases, after(31)).await?);
    assert_eq!(
        api.get(PATH).expect("lease")["spec"]["holderIdentity"],
        "operator-a"
    );
    // a stops renewing: once b has seen the same record for longer than the lease's 15 s, b
    // takes over.
    assert!(b.try_acquire_at(&leases, after(33)).await?);
    let now = api.get(PATH).expect("lease");
    assert_eq!(now["spec"]["holderIdentity"], "operator-b");
    assert_eq!(now["spec"]["leaseTransitions"], 1);
    // a comes back: refused.
    assert!(!a.try_acquire_at(&leases, t0).await?);

    // Two candidates race for an expired lease: the stale write loses with 409.
    let mut lease = api.get(PATH).expect("lease");
    lease["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    lease["metadata"]["resourceVersion"] = json!("old");
    api.put(PATH, lease.clone());
    let stale = leases.get("logcluster-operator").await?;
    lease["metadata"]["resourceVersion"] = json!("newer");
    api.put(PATH, lease);
    let mut racing = stale.clone();
    racing.spec.as_mut().expect("spec").holder_identity = Some("operator-a".into());
    let result = leases
        .replace("logcluster-operator", &Default::default(), &racing)
        .await;
    assert!(
        matches!(result, Err(kube::Error::Api(ref s)) if s.code == 409),
        "{result:?}"
    );

    // b releases on shutdown: a acquires immediately, without waiting for expiry.
    let mut lease = api.get(PATH).expect("lease");
    lease["spec"]["renewTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
    api.put(PATH, lease);
    assert!(!a.try_acquire_at(&leases, t0).await?);
    release(&leases, b.config()).await?;
    assert!(api.get(PATH).expect("lease")["spec"]["holderIdentity"].is_null());
    assert!(a.try_acquire_at(&leases, t0).await?);
    assert_eq!(
        api.get(PATH).expect("lease")["spec"]["holderIdentity"],
        "operator-a"
    );
    Ok(())
}

/// A holder whose renewals hang steps down on its own clock before a standby can take the
/// lease over: at the moment the standby's takeover succeeds, the holder no longer leads.
/// On a paused clock: the runtime jumps to the next timer whenever every task waits, so the
/// seconds of lease time pass at once and in the same order on any machine.
#[tokio::test(start_paused = true)]
async fn a_holder_whose_renewals_hang_steps_down_before_anyone_takes_over() -> anyhow::Result<()> {
    let api = FakeApi::start();
    let leases: Api<Lease> = Api::namespaced(api.client.clone(), "ops");
    let config = |identity: &str| {
        let mut config = LeaseConfig::new("logcluster-operator", "ops", identity);
        config.duration = Duration::from_secs(7);
        config.renew_every = Duration::from_secs(3);
        config
    };
    let (tx, mut leads) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(logcluster_k8s::lease::run(
        leases.clone(),
        config("operator-a"),
        tx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::timeout(Duration::from_secs(20), leads.wait_for(|l| *l)).await??;

    // From now on a's renewals are never answered. a acquired the lease just now, so it
    // steps down 7 - 3 = 4 s from now: while its next renewal (due at 3 s) hangs, not when
    // that call times out (at 6 s).
    api.state.lock().expect("state").hang_writes_of = Some("operator-a".into());
    let hung_at = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), leads.wait_for(|l| !*l)).await??;
    let led_for = hung_at.elapsed();
    assert!(
        led_for >= Duration::from_secs(3) && led_for <= Duration::from_secs(4),
        "a stepped down {led_for:?} after its last renewal"
    );
    let mut b = Candidate::new(config("operator-b"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "b never took the lease over"
        );
        if b.try_acquire(&leases).await? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!*leads.borrow(), "a still leads while b holds the lease");
    assert_eq!(
        api.get(PATH).expect("lease")["spec"]["holderIdentity"],
        "operator-b"
    );
    let _ = stop_tx.send(());
    holder.abort();
    Ok(())
}
