//! Tickets: a support ticket is opened, assigned to an agent (and maybe reassigned), then
//! resolved; and the `tickets` read model.

use std::fmt;

use nexus_core::{
    Aggregate, CommandSpec, DomainError, DomainEvent, EventSpec, Projection, ProjectionError, ReadDocument,
};
use serde::{Deserialize, Serialize};

use crate::read_event;

/// A ticket's lifecycle: `OPEN` → `ASSIGNED` (→ reassigned, still `ASSIGNED`) → `RESOLVED`.
///
/// The state holds what the rules look at (the status, the agent) and what the events repeat for
/// their readers (the customer, the agent): `TicketResolved` names both, so the `agents` read
/// model and the `survey-on-resolve` process manager need no other event. The title and priority
/// live in the events and the read model.
#[derive(Clone, Debug, Default)]
pub struct Ticket {
    /// `None` until the ticket is opened.
    status: Option<TicketStatus>,
    customer_id: String,
    /// The agent of an `ASSIGNED` or `RESOLVED` ticket.
    agent_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketStatus {
    Open,
    Assigned,
    Resolved,
}

impl TicketStatus {
    /// The status as the read model and the error messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Assigned => "ASSIGNED",
            Self::Resolved => "RESOLVED",
        }
    }
}

impl fmt::Display for TicketStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `"low"`, `"normal"` or `"high"` on the wire; the schemas refuse anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "commandType", content = "payload")]
pub enum TicketCommand {
    OpenTicket(OpenTicket),
    AssignTicket(AssignTicket),
    ResolveTicket(ResolveTicket),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTicket {
    pub title: String,
    pub customer_id: String,
    pub priority: Priority,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignTicket {
    pub agent_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolveTicket {
    pub resolution: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "payload")]
pub enum TicketEvent {
    TicketOpened(TicketOpened),
    TicketAssigned(TicketAssigned),
    TicketResolved(TicketResolved),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketOpened {
    pub title: String,
    pub customer_id: String,
    pub priority: Priority,
}

/// `previousAgentId` names the agent a reassignment takes the ticket from, so a read model per
/// agent can move the ticket from one count to the other with this event alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketAssigned {
    pub agent_id: String,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_agent_id: Option<String>,
}

/// The agent and the customer are repeated from the ticket's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketResolved {
    pub resolution: String,
    pub agent_id: String,
    pub customer_id: String,
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "OpenTicket",
        creates: true,
        schema: include_str!("../schemas/commands/OpenTicket.json"),
    },
    CommandSpec {
        name: "AssignTicket",
        creates: false,
        schema: include_str!("../schemas/commands/AssignTicket.json"),
    },
    CommandSpec {
        name: "ResolveTicket",
        creates: false,
        schema: include_str!("../schemas/commands/ResolveTicket.json"),
    },
];

const EVENTS: &[EventSpec] = &[
    EventSpec {
        name: "TicketOpened",
        schema_version: 1,
        schema: include_str!("../schemas/events/TicketOpened.v1.json"),
    },
    EventSpec {
        name: "TicketAssigned",
        schema_version: 1,
        schema: include_str!("../schemas/events/TicketAssigned.v1.json"),
    },
    EventSpec {
        name: "TicketResolved",
        schema_version: 1,
        schema: include_str!("../schemas/events/TicketResolved.v1.json"),
    },
];

impl Aggregate for Ticket {
    const KIND: &'static str = "Ticket";
    type Command = TicketCommand;
    type Event = TicketEvent;

    fn commands() -> &'static [CommandSpec] {
        COMMANDS
    }

    fn events() -> &'static [EventSpec] {
        EVENTS
    }

    fn decide(&self, command: TicketCommand) -> Result<Vec<TicketEvent>, DomainError> {
        let event = match command {
            TicketCommand::OpenTicket(OpenTicket { title, customer_id, priority }) => {
                if self.status.is_some() {
                    return Err(DomainError::rule("ticket already exists"));
                }
                TicketEvent::TicketOpened(TicketOpened { title, customer_id, priority })
            }
            TicketCommand::AssignTicket(AssignTicket { agent_id }) => {
                // An empty id would become an `agents` document nobody can address.
                if agent_id.is_empty() {
                    return Err(DomainError::rule("agentId must not be empty"));
                }
                match (self.existing()?, &self.agent_id) {
                    (TicketStatus::Resolved, _) => {
                        return Err(DomainError::rule("ticket is RESOLVED and can no longer be assigned"));
                    }
                    (TicketStatus::Assigned, Some(current)) if *current == agent_id => {
                        return Err(DomainError::rule(format!("ticket is already assigned to {agent_id}")));
                    }
                    _ => TicketEvent::TicketAssigned(TicketAssigned {
                        agent_id,
                        customer_id: self.customer_id.clone(),
                        previous_agent_id: self.agent_id.clone(),
                    }),
                }
            }
            TicketCommand::ResolveTicket(ResolveTicket { resolution }) => match self.existing()? {
                TicketStatus::Assigned => TicketEvent::TicketResolved(TicketResolved {
                    resolution,
                    agent_id: self.agent_id.clone().expect("an ASSIGNED ticket has an agent"),
                    customer_id: self.customer_id.clone(),
                }),
                status => {
                    return Err(DomainError::rule(format!(
                        "ticket is {status}; only an ASSIGNED ticket can be resolved"
                    )));
                }
            },
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: TicketEvent) {
        self.status = Some(match event {
            TicketEvent::TicketOpened(opened) => {
                self.customer_id = opened.customer_id;
                TicketStatus::Open
            }
            TicketEvent::TicketAssigned(assigned) => {
                self.agent_id = Some(assigned.agent_id);
                TicketStatus::Assigned
            }
            TicketEvent::TicketResolved(_) => TicketStatus::Resolved,
        });
    }
}

impl Ticket {
    /// The ticket's status; `None` before it is opened.
    pub fn status(&self) -> Option<TicketStatus> {
        self.status
    }

    /// The agent of an assigned or resolved ticket.
    pub fn agent_id(&self) -> Option<&str> {
        self.agent_id.as_deref()
    }

    fn existing(&self) -> Result<TicketStatus, DomainError> {
        self.status.ok_or_else(|| DomainError::rule("ticket does not exist"))
    }
}

/// Builds the `tickets` read model, one document per ticket.
///
/// Document fields: `title`, `customerId`, `priority`, then `agentId` once assigned and
/// `resolution` once resolved. `status` is the ticket's status; `searchableText` holds the ticket
/// id, the title and the customer id; `tags` is `[priority]`, for facet counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct TicketsProjection;

impl Projection for TicketsProjection {
    fn name(&self) -> &'static str {
        "tickets"
    }

    fn handles(&self, event_type: &str) -> bool {
        EVENTS.iter().any(|spec| spec.name == event_type)
    }

    /// A customer's tickets, an agent's tickets, tickets by priority.
    fn list_fields(&self) -> &'static [&'static str] {
        &["customerId", "agentId", "priority"]
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        match read_event::<TicketEvent>(event)? {
            TicketEvent::TicketOpened(TicketOpened { title, customer_id, priority }) => {
                doc.status = TicketStatus::Open.to_string();
                doc.searchable_text = format!("{} {title} {customer_id}", event.aggregate_id);
                doc.tags = vec![priority.as_str().to_owned()];
                doc.set("title", title);
                doc.set("customerId", customer_id);
                doc.set("priority", priority.as_str());
            }
            TicketEvent::TicketAssigned(TicketAssigned { agent_id, .. }) => {
                doc.status = TicketStatus::Assigned.to_string();
                doc.set("agentId", agent_id);
            }
            TicketEvent::TicketResolved(TicketResolved { resolution, agent_id, .. }) => {
                doc.status = TicketStatus::Resolved.to_string();
                doc.set("agentId", agent_id);
                doc.set("resolution", resolution);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use nexus_core::testing::{EventLog, given, project};
    use serde_json::{Value, json};

    use super::*;

    fn opened() -> (&'static str, Value) {
        ("TicketOpened", json!({"title": "Printer on fire", "customerId": "c-1", "priority": "high"}))
    }

    fn assigned(agent: &str) -> (&'static str, Value) {
        ("TicketAssigned", json!({"agentId": agent, "customerId": "c-1"}))
    }

    fn reassigned(agent: &str, previous: &str) -> (&'static str, Value) {
        ("TicketAssigned", json!({"agentId": agent, "customerId": "c-1", "previousAgentId": previous}))
    }

    fn resolved(agent: &str) -> (&'static str, Value) {
        ("TicketResolved", json!({"resolution": "unplugged it", "agentId": agent, "customerId": "c-1"}))
    }

    #[test]
    fn a_ticket_is_opened_once() {
        let open = json!({"title": "Printer on fire", "customerId": "c-1", "priority": "high"});
        let ticket = given::<Ticket>(&[]).when("OpenTicket", open.clone()).then(&[opened()]);
        assert_eq!(ticket.status(), Some(TicketStatus::Open));
        given::<Ticket>(&[opened()]).when("OpenTicket", open.clone()).then_rejected("ticket already exists");
        given::<Ticket>(&[opened(), assigned("a-1"), resolved("a-1")])
            .when("OpenTicket", open)
            .then_rejected("ticket already exists");
    }

    #[test]
    fn a_ticket_is_assigned_then_reassigned_naming_the_previous_agent() {
        let ticket = given::<Ticket>(&[opened()])
            .when("AssignTicket", json!({"agentId": "a-1"}))
            .then(&[assigned("a-1")]);
        assert_eq!((ticket.status(), ticket.agent_id()), (Some(TicketStatus::Assigned), Some("a-1")));
        let ticket = given::<Ticket>(&[opened(), assigned("a-1")])
            .when("AssignTicket", json!({"agentId": "a-2"}))
            .then(&[reassigned("a-2", "a-1")]);
        assert_eq!(ticket.agent_id(), Some("a-2"));
    }

    #[test]
    fn assigning_is_refused_when_it_would_change_nothing_or_come_too_late() {
        let assign = json!({"agentId": "a-1"});
        given::<Ticket>(&[]).when("AssignTicket", assign.clone()).then_rejected("ticket does not exist");
        given::<Ticket>(&[opened(), assigned("a-1")])
            .when("AssignTicket", assign.clone())
            .then_rejected("ticket is already assigned to a-1");
        given::<Ticket>(&[opened(), assigned("a-1"), resolved("a-1")])
            .when("AssignTicket", json!({"agentId": "a-2"}))
            .then_rejected("ticket is RESOLVED and can no longer be assigned");
        given::<Ticket>(&[opened()])
            .when("AssignTicket", json!({"agentId": ""}))
            .then_rejected("agentId must not be empty");
    }

    #[test]
    fn only_an_assigned_ticket_is_resolved_and_the_event_names_agent_and_customer() {
        let resolve = json!({"resolution": "unplugged it"});
        let ticket = given::<Ticket>(&[opened(), assigned("a-1"), reassigned("a-2", "a-1")])
            .when("ResolveTicket", resolve.clone())
            .then(&[resolved("a-2")]);
        assert_eq!(ticket.status(), Some(TicketStatus::Resolved));
        given::<Ticket>(&[opened()])
            .when("ResolveTicket", resolve.clone())
            .then_rejected("ticket is OPEN; only an ASSIGNED ticket can be resolved");
        given::<Ticket>(&[opened(), assigned("a-1"), resolved("a-1")])
            .when("ResolveTicket", resolve.clone())
            .then_rejected("ticket is RESOLVED; only an ASSIGNED ticket can be resolved");
        given::<Ticket>(&[]).when("ResolveTicket", resolve).then_rejected("ticket does not exist");
    }

    #[test]
    fn the_read_model_follows_the_ticket() {
        let mut log = EventLog::new();
        for (event_type, payload) in [opened(), assigned("a-1"), reassigned("a-2", "a-1"), resolved("a-2")] {
            log.append("t-1", event_type, payload);
        }
        let opened_only = project(&TicketsProjection, &log.events()[..1]);
        let doc = &opened_only["t-1"];
        assert_eq!((doc.status.as_str(), doc.version), ("OPEN", 1));
        assert_eq!(doc.searchable_text, "t-1 Printer on fire c-1");
        assert_eq!(doc.tags, ["high"]);
        assert_eq!(doc.fields["priority"], "high");
        assert!(!doc.fields.contains_key("agentId"));

        let assigned = project(&TicketsProjection, &log.events()[..3]);
        assert_eq!(
            (assigned["t-1"].status.as_str(), &assigned["t-1"].fields["agentId"]),
            ("ASSIGNED", &json!("a-2"))
        );

        let docs = project(&TicketsProjection, log.events());
        let doc = &docs["t-1"];
        assert_eq!((doc.status.as_str(), doc.version), ("RESOLVED", 4));
        assert_eq!(doc.fields["resolution"], "unplugged it");
        assert_eq!(doc.fields["title"], "Printer on fire", "resolving keeps the ticket's fields");
        assert_eq!(doc.last_updated, log.events()[3].timestamp);
    }

    #[test]
    fn the_projection_refuses_an_event_it_cannot_read() {
        let mut log = EventLog::new();
        let broken = log.append(
            "t-1",
            "TicketOpened",
            json!({"title": "x", "customerId": "c-1", "priority": "urgent"}),
        );
        let mut doc = ReadDocument::empty("t-1", "t-1");
        assert!(TicketsProjection.apply(&mut doc, broken).is_err());
        assert!(!TicketsProjection.handles("SurveyRequested"));
    }
}
