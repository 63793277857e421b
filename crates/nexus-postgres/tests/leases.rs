//! Leases across processes (separate backends, each its own lease connection): one holder per
//! name, released on drop, released when the holder's connection dies, and independent per
//! schema.

mod common;

use std::time::Duration;

use nexus_core::Leases;
use tokio::time::Instant;

/// Polls `try_lease` until it grants (a release is asynchronous), failing after 5 s.
async fn eventually(leases: &dyn Leases, name: &str) -> nexus_core::Lease {
    let started = Instant::now();
    loop {
        if let Some(lease) = leases.try_lease(name).await.unwrap() {
            return lease;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{name} was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_per_name_across_processes() {
    let (a, guard) = common::backend().await;
    let b = common::another(&guard).await;
    let (a, b) = (a.leases(), b.leases());

    let held = a.try_lease("saga:x").await.unwrap().expect("free at first");
    assert!(a.try_lease("saga:x").await.unwrap().is_none(), "held in this process");
    assert!(b.try_lease("saga:x").await.unwrap().is_none(), "held by the other process");
    let other = b.try_lease("saga:y").await.unwrap();
    assert!(other.is_some(), "other names are free");

    drop(held);
    let moved = eventually(b.as_ref(), "saga:x").await;
    assert!(a.try_lease("saga:x").await.unwrap().is_none(), "now held by the other process");
    drop(moved);
    eventually(a.as_ref(), "saga:x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_gives_its_leases_back() {
    let (a, guard) = common::backend().await;
    let b = common::another(&guard).await;
    let _held = a.leases().try_lease("saga:crash").await.unwrap().expect("free at first");
    assert!(b.leases().try_lease("saga:crash").await.unwrap().is_none());

    // The holder's process dies: its connection goes, PostgreSQL drops its session locks.
    let admin = common::raw_client(&guard).await;
    let key = format!("{}:saga:crash", guard.schema);
    let terminated = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
             AND classid::bigint = $1 AND objid::bigint = hashtext($2)::bigint & 4294967295",
            &[&0x4E58_4C53_i64, &key],
        )
        .await
        .unwrap();
    assert!(!terminated.is_empty(), "the lease holder's connection was found");
    eventually(b.leases().as_ref(), "saga:crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_do_not_contend() {
    let (a, _guard_a) = common::backend().await;
    let (b, _guard_b) = common::backend().await;
    let _held = a.leases().try_lease("saga:same-id").await.unwrap().expect("free");
    assert!(b.leases().try_lease("saga:same-id").await.unwrap().is_some(), "another deployment's saga");
}
