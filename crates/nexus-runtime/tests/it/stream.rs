//! The event-stream conformance suite against the embedded, in-process core path.

use std::sync::Arc;

use nexus_conformance::{Subject, event_stream_suite};
use nexus_core::ports::EventStream;
use nexus_runtime::MemoryEventStream;

async fn event_stream() -> Subject<dyn EventStream> {
    Subject { store: Arc::new(MemoryEventStream::new(4)), guard: Box::new(()) }
}

event_stream_suite!(event_stream);
