//! The event-stream conformance suite against a real NATS JetStream (`NEXUS_TEST_NATS_URL`,
//! default the local server). Each case gets a fresh stream, deleted at the end. An unreachable
//! server fails the tests: they never pass silently.

use std::sync::Arc;

use nexus_conformance::{Subject, event_stream_suite};
use nexus_core::ports::EventStream;
use nexus_nats::NatsEventStream;

fn url() -> String {
    std::env::var("NEXUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Deletes the stream when the case ends (on its own runtime: a drop cannot await).
struct Cleanup {
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok(stream) = NatsEventStream::connect(&url(), &name, 1).await {
                    let _ = stream.destroy().await;
                }
            });
        })
        .join();
    }
}

async fn event_stream() -> Subject<dyn EventStream> {
    let name = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let stream = NatsEventStream::connect(&url(), &name, 4)
        .await
        .unwrap_or_else(|e| panic!("NATS at {} is unreachable: {e}", url()));
    Subject { store: Arc::new(stream), guard: Box::new(Cleanup { name }) }
}

event_stream_suite!(event_stream);
