//! One driver per saga across processes, on PostgreSQL: a saga whose lease another process holds
//! is not driven here (its other sagas are) until that lease is let go; two coordinators on one
//! schema complete every saga with each step applied once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_core::{Domain, EventStore, Leases, SagaDefinition};
use nexus_postgres::PostgresBackend;
use nexus_runtime::CommandBus;
use nexus_runtime::sagas::{SagaCoordinator, SagaSettings, saga_view, with_sagas};
use serde_json::json;
use tokio::sync::watch;

fn url() -> String {
    std::env::var("NEXUS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops the schema when the test ends (pass or fail).
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
                }
            });
        })
        .join();
    }
}

/// A command process: its own backend (pool, appender, lease connection) and coordinator.
struct Process {
    backend: PostgresBackend,
    coordinator: SagaCoordinator,
    _stop: watch::Sender<bool>,
}

async fn process(schema: &str) -> Process {
    let backend = PostgresBackend::connect(&url(), schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required at {} ({e})", url()));
    let events: Arc<dyn EventStore> = backend.event_store();
    let domain: Arc<Domain> = Arc::new(with_sagas(nexus_domain::domain()));
    let bus = Arc::new(CommandBus::new(domain.clone(), events.clone(), 1000).unwrap());
    let settings = SagaSettings {
        default_step_timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(10),
        step_attempts: 3,
        compensation_attempts: 3,
        step_delay: Duration::from_millis(20),
        batch_size: 100,
        lease_poll: Duration::from_millis(20),
    };
    let coordinator = SagaCoordinator::new(bus, events, backend.read_store(), domain, settings)
        .unwrap()
        .with_leases(backend.leases());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(coordinator.clone().run(stopped));
    Process { backend, coordinator, _stop: stop }
}

fn restock(saga_id: &str) -> SagaDefinition {
    let steps: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|s| {
            json!({"stepId": s, "command": {"commandType": "AddStock", "aggregateId": format!("{saga_id}-{s}"), "payload": {"quantity": 1}}})
        })
        .collect();
    serde_json::from_value(json!({"sagaId": saga_id, "sagaType": "Restock", "steps": steps})).unwrap()
}

async fn status(events: &dyn EventStore, saga_id: &str) -> String {
    saga_view(events, saga_id).await.unwrap().map(|v| format!("{:?}", v.status)).unwrap_or_default()
}

async fn wait_completed(events: &dyn EventStore, saga_id: &str) {
    let started = Instant::now();
    while status(events, saga_id).await != "Completed" {
        assert!(started.elapsed() < Duration::from_secs(20), "{saga_id}: {}", status(events, saga_id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_leased_elsewhere_waits_for_its_lease() {
    let schema = Schema(format!("nexus_saga_leases_{}_{}", std::process::id(), rand_suffix()));
    let here = process(&schema.0).await;
    let events = here.backend.event_store();
    // Another process holds one saga's lease (as if it were driving it).
    let elsewhere = PostgresBackend::connect(&url(), &schema.0).await.unwrap();
    let held = elsewhere.leases().try_lease("saga:held").await.unwrap().expect("free");

    here.coordinator.start(restock("held")).await.unwrap();
    here.coordinator.start(restock("free")).await.unwrap();
    wait_completed(events.as_ref(), "free").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = events.read_stream("held", 1, None).await.unwrap();
    assert_eq!(stream.len(), 1, "driven without its lease: {stream:?}");
    assert!(events.read_stream("held-a", 1, None).await.unwrap().is_empty(), "a step ran without the lease");

    drop(held);
    wait_completed(events.as_ref(), "held").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_complete_every_saga_once() {
    let schema = Schema(format!("nexus_saga_leases_{}_{}", std::process::id(), rand_suffix()));
    let one = process(&schema.0).await;
    let two = process(&schema.0).await;
    let ids: Vec<String> = (0..12).map(|i| format!("restock-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let starter = if i % 2 == 0 { &one } else { &two };
        starter.coordinator.start(restock(id)).await.unwrap();
    }
    let events = one.backend.event_store();
    for id in &ids {
        wait_completed(events.as_ref(), id).await;
        for step in ["a", "b", "c"] {
            let applied = events.read_stream(&format!("{id}-{step}"), 1, None).await.unwrap();
            assert_eq!(applied.len(), 1, "{id} step {step} applied {} times", applied.len());
        }
        let types: Vec<String> =
            events.read_stream(id, 1, None).await.unwrap().into_iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            ["SagaStarted", "SagaStepCompleted", "SagaStepCompleted", "SagaStepCompleted", "SagaCompleted"],
            "{id}"
        );
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}
