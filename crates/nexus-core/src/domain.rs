//! The registry a service is assembled from: its aggregates and projections.

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate::{Aggregate, AggregateHandler, CommandSpec, Erased, EventSpec};
use crate::projection::Projection;

/// Everything a service built on Nexus declares: which commands go to which aggregate, which
/// events exist at which schema version, and which projections build read models.
#[derive(Clone, Default)]
pub struct Domain {
    aggregates: Vec<Arc<dyn AggregateHandler>>,
    commands: HashMap<&'static str, (CommandSpec, Arc<dyn AggregateHandler>)>,
    events: HashMap<&'static str, (EventSpec, Arc<dyn AggregateHandler>)>,
    projections: Vec<Arc<dyn Projection>>,
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

    pub fn projection_named(&self, name: &str) -> Option<&Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name)
    }
}
