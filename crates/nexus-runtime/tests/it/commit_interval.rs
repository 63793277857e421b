//! A commit interval paces a projection that keeps up, and never delays one that was idle.

use crate::common::{Ledger, tick};

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_core::EventStore;
use nexus_runtime::{Notifier, ProjectionRunner};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore};
use tokio::sync::watch;

async fn until_checkpoint(status: &nexus_runtime::ProjectionStatus, position: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while status.checkpoint() < position {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_projection_steps_at_once_and_a_busy_one_waits_out_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    let interval = Duration::from_secs(2);
    let runner = ProjectionRunner::new(Arc::new(Ledger), events.clone(), read, Notifier::new(16), 100)
        .with_commit_interval(interval);
    let status = runner.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    // Started and idle for longer than the interval: the first event is applied at once.
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    events.append(tick("a-1", 1)).await.unwrap();
    assert!(until_checkpoint(&status, 1, Duration::from_millis(1500)).await, "an idle projection waited");

    // Right after a step, the next event waits for the interval to pass.
    let appended = Instant::now();
    events.append(tick("a-1", 2)).await.unwrap();
    assert!(!until_checkpoint(&status, 2, Duration::from_millis(500)).await, "no wait after a step");
    assert!(until_checkpoint(&status, 2, interval * 2).await, "the paced step never came");
    assert!(appended.elapsed() >= interval / 2, "applied after {:?}", appended.elapsed());
    stop.send(true).unwrap();
    task.await.unwrap();
}
