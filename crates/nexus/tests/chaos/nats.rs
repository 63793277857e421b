//! NATS killed (SIGKILL) and restarted mid-load, on the core path: `nexus serve` on a fresh
//! PostgreSQL schema and a private `nats-server`. Commands go on; once NATS is back, the read
//! models catch up exactly once: every acknowledged order is there at its version, and the read
//! models equal a fold of the event store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Nexus, Schema, postgres_url};
use crate::engines::PrivateNats;
use crate::kills::{Load, Tally, check_fold, config_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_mid_load_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let mut nats = PrivateNats::start_new();
    let schema = Schema::fresh("nexus_chaos_nats");
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let server = Nexus::serve(|command| {
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .env("NEXUS_STORE_URL", postgres_url())
            .env("NEXUS_STORE_SCHEMA", &schema.0)
            .env("NEXUS_STREAM_URL", nats.url());
    })
    .await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let accepted = || tally.lock().unwrap().accepted;
    let load = Load::start(&server.base, "n", 8, &tally);
    while accepted() < 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "the load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    nats.kill();
    let at_kill = accepted();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let while_down = accepted() - at_kill;
    nats.start();
    let at_restart = accepted();
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop().await;
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    let after_restart = tally.accepted - at_restart;
    eprintln!(
        "nats kill: 202 before the kill {at_kill}, while NATS was down {while_down}, after its restart \
         {after_restart}; {}; samples {:?}",
        tally.summary(),
        tally.samples
    );
    assert!(after_restart > 0, "commands are accepted again once NATS is back");
    assert!(tally.off_contract.is_empty(), "error answers off the contract: {:?}", tally.off_contract);

    let catching_up = Instant::now();
    let folded = check_fold(&server.base, &tally, Duration::from_secs(30)).await;
    eprintln!(
        "nats kill: {folded:?}; caught up in {:?}; took {:?}",
        catching_up.elapsed(),
        started.elapsed()
    );
    drop(server);
}
