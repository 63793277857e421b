//! Ticketing: a support-ticket service built on Nexus, and the example the guide
//! `docs/build-your-own-service.md` quotes. It uses nothing but Nexus's public API: `nexus-core`
//! for the domain, `nexus::cli::main` for the binary.
//!
//! Each module is one part of the domain and everything it owns:
//!
//! - [`tickets`]: the `Ticket` aggregate (`OpenTicket` → `AssignTicket` → `ResolveTicket`) and
//!   the `tickets` read model, one document per ticket;
//! - [`agents`]: the `agents` read model, one document per agent, fed by the events of every
//!   ticket assigned to them (keyed by agent id, not by aggregate);
//! - [`surveys`]: the `Survey` aggregate (`RequestSurvey`) and the `surveys` read model;
//! - [`survey_on_resolve`]: the process manager that requests a survey whenever a ticket is
//!   resolved.
//!
//! The JSON Schemas (draft 2020-12) of every command and event payload are files under
//! `schemas/`, compiled in with `include_str!`: the server validates each command against its
//! schema before `decide` runs, registers them all in its schema registry, and serves them in
//! `GET /api/openapi.json`.
//!
//! [`domain`] registers them all; that is the whole wiring.
//!
//! Architecture invariant: no I/O, no clock, no randomness. Ids, times, versions and positions
//! come from the runtime.

pub mod agents;
pub mod survey_on_resolve;
pub mod surveys;
pub mod tickets;

use nexus_core::{Domain, DomainEvent, ProjectionError};
use serde::de::DeserializeOwned;

pub use agents::AgentsProjection;
pub use survey_on_resolve::SurveyOnResolve;
pub use surveys::{Survey, SurveysProjection};
pub use tickets::{Ticket, TicketsProjection};

/// The ticketing domain: the `Ticket` and `Survey` aggregates, the `tickets`, `agents` and
/// `surveys` read models, and the `survey-on-resolve` process manager. Every event takes the
/// ordered core path (the default): read models and the process manager consume them all.
///
/// Named `ticketing`: on engines several services share, its PostgreSQL schema is `ticketing` by
/// default, and its NATS stream and RabbitMQ exchanges are named after it and its store's id.
pub fn domain() -> Domain {
    Domain::new()
        .named("ticketing")
        .aggregate::<Ticket>()
        .aggregate::<Survey>()
        .projection(TicketsProjection)
        .projection(AgentsProjection)
        .projection(SurveysProjection)
        .process_manager(SurveyOnResolve)
        .queue_path(&["SurveyRequested"])
}

/// Reads a stored event as an aggregate's typed event enum. A projection that cannot read an event
/// it said it handles must stop, not skip it: the read model would silently drift.
fn read_event<E: DeserializeOwned>(event: &DomainEvent) -> Result<E, ProjectionError> {
    event.read_as().map_err(|e| {
        ProjectionError(format!("cannot read event {} ({}): {e}", event.event_id, event.event_type))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    #[test]
    fn the_domain_registers_everything_once_and_routes_survey_requests_to_the_queue_path() {
        // `Domain` panics on a duplicate command, event, projection or process manager name.
        let domain = domain();
        assert_eq!(domain.service_name(), "ticketing");
        let kinds: Vec<_> = domain.aggregates().iter().map(|a| a.kind()).collect();
        assert_eq!(kinds, ["Ticket", "Survey"]);
        let projections: Vec<_> = domain.projections().iter().map(|p| p.name()).collect();
        assert_eq!(projections, ["tickets", "agents", "surveys"]);
        let managers: Vec<_> = domain.process_managers().iter().map(|m| m.name()).collect();
        assert_eq!(managers, ["survey-on-resolve"]);
        assert_eq!(domain.core_events(), ["TicketAssigned", "TicketOpened", "TicketResolved"]);
        assert!(!domain.is_core("SurveyRequested"));
        let creating: BTreeSet<_> = domain.commands().filter(|c| c.creates).map(|c| c.name).collect();
        assert_eq!(creating, BTreeSet::from(["OpenTicket", "RequestSurvey"]));
    }

    /// Every command and event type is a variant of its aggregate's enum, and every schema has
    /// the shape the registry expects (the test kit's `check_domain`).
    #[test]
    fn the_registrations_match_the_code_and_the_schemas() {
        nexus_core::testing::check_domain(&domain());
    }

    #[test]
    fn every_schema_file_belongs_to_a_registered_type() {
        let domain = domain();
        let mut expected: BTreeSet<String> =
            domain.commands().map(|spec| format!("commands/{}.json", spec.name)).collect();
        expected.extend(
            domain.events().map(|spec| format!("events/{}.v{}.json", spec.name, spec.schema_version)),
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut found = BTreeSet::new();
        for folder in ["commands", "events"] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap() {
                found.insert(format!("{folder}/{}", entry.unwrap().file_name().into_string().unwrap()));
            }
        }
        assert_eq!(found, expected);
    }
}
