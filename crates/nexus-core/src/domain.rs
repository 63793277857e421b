//! The registry a service is assembled from: its aggregates, projections and process managers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::aggregate::{Aggregate, AggregateHandler, CommandSpec, Erased, EventSpec};
use crate::projection::Projection;
use crate::saga::ProcessManager;

/// Turns an event payload of `from_version` into `from_version + 1` (seed: EventUpcaster). Chains
/// of them bring any stored version up to the current one whenever events are read.
#[derive(Clone, Copy, Debug)]
pub struct Upcaster {
    pub event_type: &'static str,
    pub from_version: u32,
    /// JSON Schema of `from_version`, registered so old events stay governed and importable.
    pub from_schema: &'static str,
    pub upcast: fn(serde_json::Value) -> serde_json::Value,
}

/// Everything a service built on Nexus declares: which commands go to which aggregate, which
/// events exist at which schema version and which path they take, which projections build read
/// models, and which process managers start sagas from events.
///
/// Every event type takes the ordered core path (read models, sagas) unless
/// [`queue_path`](Self::queue_path) sends it to the queue path, where integrations (webhooks)
/// consume it with retries and a dead-letter queue.
#[derive(Clone, Default)]
pub struct Domain {
    aggregates: Vec<Arc<dyn AggregateHandler>>,
    commands: HashMap<&'static str, (CommandSpec, Arc<dyn AggregateHandler>)>,
    events: HashMap<&'static str, (EventSpec, Arc<dyn AggregateHandler>)>,
    projections: Vec<Arc<dyn Projection>>,
    process_managers: Vec<Arc<dyn ProcessManager>>,
    upcasters: HashMap<&'static str, HashMap<u32, Upcaster>>,
    queue_events: BTreeSet<&'static str>,
    name: Option<&'static str>,
}

impl Domain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an aggregate and its command and event types.
    ///
    /// # Panics
    /// When a command or event type is already registered: two handlers for one name is a
    /// programming error that must not reach production.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        let handler: Arc<dyn AggregateHandler> = Arc::new(Erased::<A>::new());
        for spec in A::commands() {
            let previous = self.commands.insert(spec.name, (*spec, handler.clone()));
            assert!(previous.is_none(), "command type {} registered twice", spec.name);
        }
        for spec in A::events() {
            let previous = self.events.insert(spec.name, (*spec, handler.clone()));
            assert!(previous.is_none(), "event type {} registered twice", spec.name);
        }
        self.aggregates.push(handler);
        self
    }

    /// Registers a projection; its name is the resource type served under `/api/queries/`.
    ///
    /// # Panics
    /// When a projection of that name is already registered.
    pub fn projection(mut self, projection: impl Projection) -> Self {
        assert!(
            self.projections.iter().all(|p| p.name() != projection.name()),
            "projection {} registered twice",
            projection.name()
        );
        self.projections.push(Arc::new(projection));
        self
    }

    /// Registers a process manager (a saga as code). Whether it runs is the server's
    /// configuration: it changes what happens after its trigger events.
    ///
    /// # Panics
    /// When a process manager of that name is already registered.
    pub fn process_manager(mut self, manager: impl ProcessManager) -> Self {
        assert!(
            self.process_managers.iter().all(|m| m.name() != manager.name()),
            "process manager {} registered twice",
            manager.name()
        );
        self.process_managers.push(Arc::new(manager));
        self
    }

    /// Names the service (default `nexus`): lower-case letters, digits and `_`, starting with a
    /// letter. With its store's id it names everything the service creates on engines several
    /// services share (its NATS stream, its RabbitMQ exchanges and queues), and it is the default
    /// PostgreSQL schema.
    ///
    /// # Panics
    /// When the name breaks that rule.
    pub fn named(mut self, name: &'static str) -> Self {
        let valid = name.len() <= 40
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        assert!(valid, "service name '{name}' must be [a-z][a-z0-9_]*, at most 40 characters");
        self.name = Some(name);
        self
    }

    /// The service's name ([`named`](Self::named)), `nexus` when it has none.
    pub fn service_name(&self) -> &'static str {
        self.name.unwrap_or("nexus")
    }

    /// Sends `event_types` to the queue path instead of the ordered core path: events nothing in
    /// the service's own flow waits on (a user registered, to be mailed), consumed by
    /// integrations with retries and a dead-letter queue.
    ///
    /// # Panics
    /// When an event type is not registered (register its aggregate first).
    pub fn queue_path(mut self, event_types: &[&'static str]) -> Self {
        for event_type in event_types {
            assert!(self.events.contains_key(event_type), "queue_path: unknown event type {event_type}");
            self.queue_events.insert(event_type);
        }
        self
    }

    /// Whether `event_type` takes the ordered core path (every type the domain did not send to
    /// the queue path, unknown ones included).
    pub fn is_core(&self, event_type: &str) -> bool {
        !self.queue_events.contains(event_type)
    }

    /// The registered event types on the ordered core path, sorted.
    pub fn core_events(&self) -> Vec<&'static str> {
        let mut core: Vec<_> = self.events.keys().copied().filter(|t| self.is_core(t)).collect();
        core.sort_unstable();
        core
    }

    /// Registers an upcaster.
    ///
    /// # Panics
    /// When one is already registered for that event type and version, or the event type is
    /// unknown, or the upcaster would not lead to an older version than the current one.
    pub fn upcaster(mut self, upcaster: Upcaster) -> Self {
        let current = self.event(upcaster.event_type).map(|spec| spec.schema_version);
        assert!(
            current.is_some_and(|current| upcaster.from_version < current),
            "upcaster of {} v{} needs the event type registered at a later version",
            upcaster.event_type,
            upcaster.from_version
        );
        let previous =
            self.upcasters.entry(upcaster.event_type).or_default().insert(upcaster.from_version, upcaster);
        assert!(
            previous.is_none(),
            "upcaster of {} v{} registered twice",
            upcaster.event_type,
            upcaster.from_version
        );
        self
    }

    /// The upcaster from `version` of `event_type`, if any.
    pub fn upcaster_from(&self, event_type: &str, version: u32) -> Option<&Upcaster> {
        self.upcasters.get(event_type).and_then(|chain| chain.get(&version))
    }

    /// Every registered upcaster, in no particular order.
    pub fn upcasters(&self) -> impl Iterator<Item = &Upcaster> {
        self.upcasters.values().flat_map(|chain| chain.values())
    }

    pub fn command(&self, command_type: &str) -> Option<(&CommandSpec, &Arc<dyn AggregateHandler>)> {
        self.commands.get(command_type).map(|(spec, handler)| (spec, handler))
    }

    pub fn commands(&self) -> impl Iterator<Item = &CommandSpec> {
        self.commands.values().map(|(spec, _)| spec)
    }

    pub fn event(&self, event_type: &str) -> Option<&EventSpec> {
        self.events.get(event_type).map(|(spec, _)| spec)
    }

    pub fn events(&self) -> impl Iterator<Item = &EventSpec> {
        self.events.values().map(|(spec, _)| spec)
    }

    /// The aggregate that emits `event_type`.
    pub fn aggregate_of_event(&self, event_type: &str) -> Option<&Arc<dyn AggregateHandler>> {
        self.events.get(event_type).map(|(_, handler)| handler)
    }

    pub fn aggregates(&self) -> &[Arc<dyn AggregateHandler>] {
        &self.aggregates
    }

    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    pub fn process_managers(&self) -> &[Arc<dyn ProcessManager>] {
        &self.process_managers
    }

    pub fn projection_named(&self, name: &str) -> Option<&Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name)
    }
}
