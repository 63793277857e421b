//! Surveys: the satisfaction survey a customer is asked for once their ticket is resolved, one
//! per ticket (aggregate `survey-{ticketId}`); and the `surveys` read model.
//!
//! The `survey-on-resolve` process manager sends `RequestSurvey`; nothing else needs to. A survey
//! is requested once: asking again is refused. The process manager never runs into that refusal,
//! because its command carries an id derived from its saga, so a replayed step is answered from
//! the command's idempotency record without reaching `decide`. A second request can only come
//! from outside (a client calling `POST /api/commands/RequestSurvey` by hand), and that client
//! should learn that the customer has already been asked rather than believe it asked them.

use nexus_core::{
    Aggregate, CommandSpec, DomainError, DomainEvent, EventSpec, Projection, ProjectionError, ReadDocument,
    derived_id, is_valid_aggregate_id,
};
use serde::{Deserialize, Serialize};

use crate::read_event;

/// The aggregate id of the survey of `ticket_id`: `survey-{ticketId}`. A ticket id so long that
/// this is not a valid aggregate id (over 128 characters) gets a hashed id instead (see
/// [`derived_id`]); its document is found by `GET /api/queries/surveys?ticketId=…`.
pub fn survey_id(ticket_id: &str) -> String {
    let id = format!("survey-{ticket_id}");
    if is_valid_aggregate_id(&id) { id } else { derived_id(&["survey", ticket_id]) }
}

/// A survey: requested (for one ticket) or not yet.
#[derive(Clone, Debug, Default)]
pub struct Survey {
    /// The ticket it was requested for; `None` until requested.
    ticket_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "commandType", content = "payload")]
pub enum SurveyCommand {
    RequestSurvey(RequestSurvey),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestSurvey {
    pub ticket_id: String,
    pub customer_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "payload")]
pub enum SurveyEvent {
    SurveyRequested(SurveyRequested),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SurveyRequested {
    pub ticket_id: String,
    pub customer_id: String,
}

const COMMANDS: &[CommandSpec] = &[CommandSpec {
    name: "RequestSurvey",
    creates: true,
    schema: include_str!("../schemas/commands/RequestSurvey.json"),
}];

const EVENTS: &[EventSpec] = &[EventSpec {
    name: "SurveyRequested",
    schema_version: 1,
    schema: include_str!("../schemas/events/SurveyRequested.v1.json"),
}];

impl Aggregate for Survey {
    const KIND: &'static str = "Survey";
    type Command = SurveyCommand;
    type Event = SurveyEvent;

    fn commands() -> &'static [CommandSpec] {
        COMMANDS
    }

    fn events() -> &'static [EventSpec] {
        EVENTS
    }

    fn decide(&self, command: SurveyCommand) -> Result<Vec<SurveyEvent>, DomainError> {
        let SurveyCommand::RequestSurvey(RequestSurvey { ticket_id, customer_id }) = command;
        if let Some(requested) = &self.ticket_id {
            return Err(DomainError::rule(format!("a survey was already requested for ticket {requested}")));
        }
        Ok(vec![SurveyEvent::SurveyRequested(SurveyRequested { ticket_id, customer_id })])
    }

    fn apply(&mut self, event: SurveyEvent) {
        let SurveyEvent::SurveyRequested(requested) = event;
        self.ticket_id = Some(requested.ticket_id);
    }
}

/// Builds the `surveys` read model, one document per survey:
/// `{id, ticketId, customerId, status: "REQUESTED"}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SurveysProjection;

impl Projection for SurveysProjection {
    fn name(&self) -> &'static str {
        "surveys"
    }

    fn handles(&self, event_type: &str) -> bool {
        EVENTS.iter().any(|spec| spec.name == event_type)
    }

    /// The survey of a ticket, a customer's surveys.
    fn list_fields(&self) -> &'static [&'static str] {
        &["ticketId", "customerId"]
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        let SurveyEvent::SurveyRequested(SurveyRequested { ticket_id, customer_id }) = read_event(event)?;
        doc.status = "REQUESTED".to_owned();
        doc.searchable_text = format!("{ticket_id} {customer_id}");
        doc.set("ticketId", ticket_id);
        doc.set("customerId", customer_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use nexus_core::testing::{EventLog, given, project};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_survey_is_requested_once() {
        let request = json!({"ticketId": "t-1", "customerId": "c-1"});
        given::<Survey>(&[])
            .when("RequestSurvey", request.clone())
            .then(&[("SurveyRequested", request.clone())]);
        given::<Survey>(&[("SurveyRequested", request.clone())])
            .when("RequestSurvey", request)
            .then_rejected("a survey was already requested for ticket t-1");
    }

    #[test]
    fn the_read_model_shows_the_request() {
        let mut log = EventLog::new();
        log.append("survey-t-1", "SurveyRequested", json!({"ticketId": "t-1", "customerId": "c-1"}));
        let docs = project(&SurveysProjection, log.events());
        let doc = &docs["survey-t-1"];
        assert_eq!(
            (doc.status.as_str(), doc.version, doc.aggregate_id.as_str()),
            ("REQUESTED", 1, "survey-t-1")
        );
        assert_eq!((&doc.fields["ticketId"], &doc.fields["customerId"]), (&json!("t-1"), &json!("c-1")));
    }

    #[test]
    fn survey_ids_are_readable_and_always_valid() {
        assert_eq!(survey_id("t-1"), "survey-t-1");
        let long = "t".repeat(128);
        let hashed = survey_id(&long);
        assert!(is_valid_aggregate_id(&hashed) && hashed.starts_with("h-"), "{hashed}");
        assert_eq!(hashed, survey_id(&long), "deterministic");
    }
}
