//! Survey on resolve: the service's process manager. Each `TicketResolved` starts a one-step saga
//! that sends `RequestSurvey {ticketId, customerId}` to the ticket's survey, `survey-{ticketId}`.
//!
//! The runtime runs it on the command role, from its own checkpoint on the change feed, and
//! drives the saga it returns: the step's command id is derived from the saga id, so a crash or a
//! replay never requests a survey twice.

use nexus_core::{
    DomainEvent, ProcessError, ProcessManager, SagaDefinition, SagaMetadata, SagaStep, StepCommand,
    derived_id,
};
use serde_json::json;

use crate::read_event;
use crate::surveys::survey_id;
use crate::tickets::{TicketEvent, TicketResolved};

/// The `SurveyOnResolve` saga, one per resolved ticket (saga id `survey-on-resolve:<ticketId>`),
/// with one step, `request-survey`. It has nothing to compensate: a survey request that fails
/// (it was already requested by hand) leaves the saga `COMPENSATED` with the reason, visible at
/// `GET /api/sagas/{sagaId}/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SurveyOnResolve;

impl SurveyOnResolve {
    pub const NAME: &'static str = "survey-on-resolve";
    pub const SAGA_TYPE: &'static str = "SurveyOnResolve";
    pub const STEP: &'static str = "request-survey";

    /// The saga id for a ticket: derived from the trigger, so one ticket starts one saga however
    /// often its `TicketResolved` is seen.
    pub fn saga_id(ticket_id: &str) -> String {
        derived_id(&[Self::NAME, ticket_id])
    }

    /// The saga a ticket's `TicketResolved` starts.
    pub fn saga(ticket_id: &str, resolved: &TicketResolved) -> SagaDefinition {
        SagaDefinition {
            saga_id: Self::saga_id(ticket_id),
            saga_type: Self::SAGA_TYPE.into(),
            steps: vec![SagaStep {
                step_id: Self::STEP.into(),
                command: StepCommand::new(
                    "RequestSurvey",
                    survey_id(ticket_id),
                    json!({"ticketId": ticket_id, "customerId": resolved.customer_id}),
                ),
                compensating_command: None,
                timeout_ms: None,
            }],
            metadata: SagaMetadata { correlation_id: Some(ticket_id.to_owned()), user_id: None },
        }
    }
}

impl ProcessManager for SurveyOnResolve {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn saga_type(&self) -> &'static str {
        Self::SAGA_TYPE
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == "TicketResolved"
    }

    /// On (the default): asking for a survey is part of what resolving a ticket means in this
    /// service. `[process-managers] survey-on-resolve = false` turns it off.
    fn runs_by_default(&self) -> bool {
        true
    }

    fn start(&self, event: &DomainEvent) -> Result<Option<SagaDefinition>, ProcessError> {
        match read_event::<TicketEvent>(event).map_err(|e| ProcessError(e.0))? {
            TicketEvent::TicketResolved(resolved) => Ok(Some(Self::saga(&event.aggregate_id, &resolved))),
            TicketEvent::TicketOpened(_) | TicketEvent::TicketAssigned(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use nexus_core::testing::EventLog;

    use super::*;

    #[test]
    fn a_resolved_ticket_requests_its_survey() {
        let mut log = EventLog::new();
        let resolved = log
            .append(
                "t-1",
                "TicketResolved",
                json!({"resolution": "done", "agentId": "a-1", "customerId": "c-9"}),
            )
            .clone();
        assert!(SurveyOnResolve.handles("TicketResolved"));
        let saga = SurveyOnResolve.start(&resolved).unwrap().expect("a saga");
        assert_eq!(
            (saga.saga_id.as_str(), saga.saga_type.as_str()),
            ("survey-on-resolve:t-1", "SurveyOnResolve")
        );
        assert_eq!(saga.metadata.correlation_id.as_deref(), Some("t-1"));
        assert_eq!(
            saga.steps,
            [SagaStep {
                step_id: "request-survey".into(),
                command: StepCommand::new(
                    "RequestSurvey",
                    "survey-t-1",
                    json!({"ticketId": "t-1", "customerId": "c-9"})
                ),
                compensating_command: None,
                timeout_ms: None,
            }]
        );
        assert_eq!(SurveyOnResolve.start(&resolved).unwrap(), Some(saga), "deterministic");
    }

    #[test]
    fn only_resolutions_start_a_saga_and_unreadable_ones_are_reported() {
        assert!(!SurveyOnResolve.handles("TicketAssigned") && !SurveyOnResolve.handles("TicketOpened"));
        let mut log = EventLog::new();
        let assigned = log.append("t-1", "TicketAssigned", json!({"agentId": "a-1", "customerId": "c-1"}));
        assert_eq!(SurveyOnResolve.start(assigned).unwrap(), None);
        let broken = log.append("t-1", "TicketResolved", json!({"resolution": "done"}));
        assert!(SurveyOnResolve.start(broken).unwrap_err().0.contains("cannot read event"));
    }
}
