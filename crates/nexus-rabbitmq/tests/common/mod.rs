//! What the crate's test targets share: the broker's URL and a guard that removes what a test
//! declared on it.

use nexus_core::ports::EventQueue;
use nexus_rabbitmq::RabbitEventQueue;

/// The shared broker (`NEXUS_TEST_AMQP_URL`, default the local RabbitMQ).
pub fn url() -> String {
    std::env::var("NEXUS_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Deletes `consumer`'s queue, if given, and the namespace's exchanges and dead-letter queues
/// when the test ends, pass or fail (directly on the broker, on its own runtime: a drop cannot
/// await).
pub struct Cleanup {
    pub namespace: String,
    pub consumer: Option<&'static str>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (namespace, consumer) = (self.namespace.clone(), self.consumer);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok(queue) = RabbitEventQueue::connect(&url(), &namespace).await {
                    if let Some(consumer) = consumer {
                        let _ = queue.unsubscribe(consumer).await;
                    }
                    let _ = queue.destroy().await;
                }
            });
        })
        .join();
    }
}
