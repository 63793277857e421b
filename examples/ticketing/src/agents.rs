//! The `agents` read model: one document per agent, fed by the events of every ticket assigned
//! to them.
//!
//! This is the service's read model keyed by something other than the aggregate
//! ([`Keying::Custom`]): a `TicketAssigned` of any ticket changes the document of its agent (and,
//! for a reassignment, of the previous agent too). The runtime applies each event to each
//! document exactly once, in store order (the document records the store position of the last
//! event applied, where a per-aggregate document records the aggregate's version).

use nexus_core::{DomainEvent, Keying, Projection, ProjectionError, ReadDocument};

use crate::read_event;
use crate::tickets::{TicketAssigned, TicketEvent, TicketResolved};

/// Builds `agents`: `{id, agentId, openTickets, resolvedTickets}`.
///
/// A ticket counts as open for its agent from its assignment until it is resolved; a
/// reassignment moves it from the previous agent's `openTickets` to the new agent's. `status` is
/// `ACTIVE`; `searchableText` is the agent id.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentsProjection;

impl Projection for AgentsProjection {
    fn name(&self) -> &'static str {
        "agents"
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(event_type, "TicketAssigned" | "TicketResolved")
    }

    fn keying(&self) -> Keying {
        Keying::Custom
    }

    /// The agent the event concerns; for a reassignment, the previous agent as well.
    fn document_ids(&self, event: &DomainEvent) -> Vec<String> {
        match read_event::<TicketEvent>(event) {
            Ok(TicketEvent::TicketAssigned(TicketAssigned { agent_id, previous_agent_id, .. })) => {
                std::iter::once(agent_id).chain(previous_agent_id).collect()
            }
            Ok(TicketEvent::TicketResolved(TicketResolved { agent_id, .. })) => vec![agent_id],
            Ok(TicketEvent::TicketOpened(_)) => Vec::new(),
            // `document_ids` cannot report an error, and an empty list would skip the event
            // silently. Naming the ticket's own id hands the event to `apply`, which fails on it
            // with the reason, so the projection stalls visibly instead of drifting.
            Err(_) => vec![event.aggregate_id.clone()],
        }
    }

    /// Agents by workload.
    fn list_fields(&self) -> &'static [&'static str] {
        &["openTickets", "resolvedTickets"]
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        let count = |field: &str| doc.fields.get(field).and_then(|n| n.as_u64()).unwrap_or(0);
        let (mut open, mut resolved) = (count("openTickets"), count("resolvedTickets"));
        match read_event::<TicketEvent>(event)? {
            TicketEvent::TicketAssigned(TicketAssigned { agent_id, previous_agent_id, .. }) => {
                if agent_id == doc.id {
                    open += 1;
                } else if previous_agent_id.as_deref() == Some(doc.id.as_str()) {
                    open = open.saturating_sub(1);
                } else {
                    return Err(unrelated(doc, event));
                }
            }
            TicketEvent::TicketResolved(TicketResolved { agent_id, .. }) if agent_id == doc.id => {
                open = open.saturating_sub(1);
                resolved += 1;
            }
            TicketEvent::TicketResolved(_) | TicketEvent::TicketOpened(_) => {
                return Err(unrelated(doc, event));
            }
        }
        doc.status = "ACTIVE".to_owned();
        doc.searchable_text.clone_from(&doc.id);
        doc.set("agentId", doc.id.clone());
        doc.set("openTickets", open);
        doc.set("resolvedTickets", resolved);
        Ok(())
    }
}

fn unrelated(doc: &ReadDocument, event: &DomainEvent) -> ProjectionError {
    ProjectionError(format!(
        "event {} ({}) does not concern agent {}",
        event.event_id, event.event_type, doc.id
    ))
}

#[cfg(test)]
mod tests {
    use nexus_core::testing::{EventLog, project};
    use serde_json::json;

    use super::*;

    fn open_and_assign(log: &mut EventLog, ticket: &str, agent: &str) {
        log.append(ticket, "TicketOpened", json!({"title": "t", "customerId": "c-1", "priority": "low"}));
        log.append(ticket, "TicketAssigned", json!({"agentId": agent, "customerId": "c-1"}));
    }

    fn resolve(log: &mut EventLog, ticket: &str, agent: &str) {
        log.append(
            ticket,
            "TicketResolved",
            json!({"resolution": "done", "agentId": agent, "customerId": "c-1"}),
        );
    }

    fn counts(doc: &ReadDocument) -> (u64, u64) {
        (doc.fields["openTickets"].as_u64().unwrap(), doc.fields["resolvedTickets"].as_u64().unwrap())
    }

    #[test]
    fn an_agent_counts_open_and_resolved_tickets_across_tickets() {
        let mut log = EventLog::new();
        open_and_assign(&mut log, "t-1", "a-1");
        open_and_assign(&mut log, "t-2", "a-1");
        resolve(&mut log, "t-1", "a-1");
        let docs = project(&AgentsProjection, log.events());
        assert_eq!(docs.keys().collect::<Vec<_>>(), ["a-1"], "opening a ticket concerns no agent");
        let doc = &docs["a-1"];
        assert_eq!(counts(doc), (1, 1));
        assert_eq!(
            (doc.id.as_str(), doc.aggregate_id.as_str(), doc.status.as_str()),
            ("a-1", "a-1", "ACTIVE")
        );
        assert_eq!(doc.fields["agentId"], "a-1");
        assert_eq!(doc.version, log.events().last().unwrap().position, "guarded by store position");
    }

    #[test]
    fn a_reassignment_moves_the_ticket_to_the_new_agent() {
        let mut log = EventLog::new();
        open_and_assign(&mut log, "t-1", "a-1");
        open_and_assign(&mut log, "t-2", "a-1");
        let moved = log.append(
            "t-1",
            "TicketAssigned",
            json!({"agentId": "a-2", "customerId": "c-1", "previousAgentId": "a-1"}),
        );
        assert_eq!(AgentsProjection.document_ids(moved), ["a-2", "a-1"]);
        let docs = project(&AgentsProjection, log.events());
        assert_eq!((counts(&docs["a-1"]), counts(&docs["a-2"])), ((1, 0), (1, 0)));

        resolve(&mut log, "t-1", "a-2");
        let docs = project(&AgentsProjection, log.events());
        assert_eq!((counts(&docs["a-1"]), counts(&docs["a-2"])), ((1, 0), (0, 1)));
    }

    #[test]
    fn an_event_it_cannot_read_stops_the_projection_instead_of_vanishing() {
        let mut log = EventLog::new();
        let broken = log.append("t-1", "TicketAssigned", json!({"agent": "a-1"}));
        assert_eq!(AgentsProjection.document_ids(broken), ["t-1"]);
        let mut doc = ReadDocument::empty("t-1", "t-1");
        let error = AgentsProjection.apply(&mut doc, broken).unwrap_err();
        assert!(error.0.contains("cannot read event"), "{error}");
        assert!(!AgentsProjection.handles("TicketOpened"));
    }
}
