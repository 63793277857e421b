//! The ticketing service over HTTP, on a real server (`nexus_server::testing::TestServer`: the
//! embedded backends in a temporary directory, on 127.0.0.1:0): commands, read-your-writes on
//! per-aggregate and keyed read models, the survey the process manager requests, and the errors.

use std::time::{Duration, Instant};

use nexus_server::testing::{DEADLINE, TestServer};
use serde_json::{Value, json};

fn open(customer: &str) -> Value {
    json!({"title": "Printer on fire", "customerId": customer, "priority": "high"})
}

/// The saga status of `saga_id` once it is `status` (the test fails after the deadline).
async fn saga_once(server: &TestServer, saga_id: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let reply = server.get(&format!("/api/sagas/{saga_id}/status")).await;
        if reply.status == 200 && reply.body["status"] == status {
            return reply.body;
        }
        assert!(started.elapsed() < DEADLINE, "saga {saga_id} never reached {status}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_ticket_is_opened_assigned_resolved_and_its_customer_surveyed() {
    let server = TestServer::start(ticketing::domain()).await;

    let opened = server.accepted("OpenTicket", open("c-1")).await;
    let ticket = opened["aggregateId"].as_str().expect("a generated ticket id").to_owned();
    assert_eq!(opened["version"], 1);
    let doc = server.document_at("tickets", &ticket, 1).await;
    assert_eq!(
        (&doc["status"], &doc["priority"], &doc["customerId"]),
        (&json!("OPEN"), &json!("high"), &json!("c-1"))
    );

    server.accepted("AssignTicket", json!({"aggregateId": ticket, "agentId": "a-1"})).await;
    let resolved =
        server.accepted("ResolveTicket", json!({"aggregateId": ticket, "resolution": "unplugged it"})).await;
    assert_eq!(resolved["version"], 3);
    let doc = server.document_at("tickets", &ticket, 3).await;
    assert_eq!((&doc["status"], &doc["agentId"]), (&json!("RESOLVED"), &json!("a-1")));
    assert_eq!(doc["resolution"], "unplugged it");

    // The agent's document is keyed by agent id: read it at the resolution's store position.
    let position = resolved["position"].as_u64().expect("a position");
    let agent = server.get(&format!("/api/queries/agents/a-1?minPosition={position}")).await;
    assert_eq!(agent.status, 200, "{}", agent.body);
    assert_eq!((&agent.body["openTickets"], &agent.body["resolvedTickets"]), (&json!(0), &json!(1)));
    assert_eq!(agent.body["agentId"], "a-1");
    assert!(agent.body["version"].as_u64().unwrap() >= position, "guarded by position: {}", agent.body);

    // The process manager requests the survey asynchronously, through a saga.
    let survey =
        server.get(&format!("/api/queries/surveys/survey-{ticket}?minVersion=1&timeoutMs=10000")).await;
    assert_eq!(survey.status, 200, "{}", survey.body);
    assert_eq!((&survey.body["status"], &survey.body["ticketId"]), (&json!("REQUESTED"), &json!(ticket)));
    assert_eq!(survey.body["customerId"], "c-1");
    let saga = saga_once(&server, &format!("survey-on-resolve:{ticket}"), "COMPLETED").await;
    assert_eq!(saga["sagaType"], "SurveyOnResolve");
    assert_eq!(saga["completedSteps"], json!(["request-survey"]));
    let events = server.events_of(&format!("survey-{ticket}")).await;
    assert_eq!(events.len(), 1, "one survey per ticket: {events:?}");
    assert_eq!(events[0]["metadata"]["correlationId"], ticket.as_str(), "the saga carries the ticket");

    server.stop().await;
}

#[tokio::test]
async fn a_reassignment_moves_the_open_ticket_between_agents() {
    let server = TestServer::start(ticketing::domain()).await;
    for ticket in ["t-1", "t-2"] {
        server
            .accepted(
                "OpenTicket",
                json!({"aggregateId": ticket, "title": "VPN", "customerId": "c-2", "priority": "low"}),
            )
            .await;
        server.accepted("AssignTicket", json!({"aggregateId": ticket, "agentId": "a-1"})).await;
    }
    let moved = server.accepted("AssignTicket", json!({"aggregateId": "t-2", "agentId": "a-2"})).await;
    let position = moved["position"].as_u64().unwrap();
    for (agent, open) in [("a-1", 1), ("a-2", 1)] {
        let doc = server.get(&format!("/api/queries/agents/{agent}?minPosition={position}")).await;
        assert_eq!((doc.status, &doc.body["openTickets"]), (200, &json!(open)), "{agent}: {}", doc.body);
        assert_eq!(doc.body["resolvedTickets"], 0);
    }
    let events = server.events_of("t-2").await;
    assert_eq!(events[2]["payload"]["previousAgentId"], "a-1");

    // Lists read the indexed fields: a-2's tickets, and agents by workload.
    let mine = server.get(&format!("/api/queries/tickets?agentId=a-2&minPosition={position}")).await;
    let ids: Vec<_> = mine.body["items"].as_array().unwrap().iter().map(|d| d["id"].clone()).collect();
    assert_eq!(ids, [json!("t-2")], "{}", mine.body);
    let busiest =
        server.get(&format!("/api/queries/agents?sort=openTickets:desc&minPosition={position}")).await;
    assert_eq!(busiest.body["items"].as_array().map(Vec::len), Some(2), "{}", busiest.body);
    server.stop().await;
}

#[tokio::test]
async fn the_rules_and_the_schemas_refuse_what_does_not_fit() {
    let server = TestServer::start(ticketing::domain()).await;
    server
        .accepted(
            "OpenTicket",
            json!({"aggregateId": "t-1", "title": "Mail", "customerId": "c-1", "priority": "normal"}),
        )
        .await;

    // Resolving an OPEN ticket breaks a rule (not a schema): `BUSINESS_RULE_VIOLATION`.
    let reply = server.command("ResolveTicket", json!({"aggregateId": "t-1", "resolution": "done"})).await;
    reply.assert_error(400, "BUSINESS_RULE_VIOLATION");
    assert!(reply.body["message"].as_str().unwrap().contains("only an ASSIGNED ticket can be resolved"));
    let again = server
        .command(
            "OpenTicket",
            json!({"aggregateId": "t-1", "title": "Mail", "customerId": "c-1", "priority": "normal"}),
        )
        .await;
    again.assert_error(400, "BUSINESS_RULE_VIOLATION");

    // The schemas name every bad field.
    let bad = server
        .command("OpenTicket", json!({"title": "", "customerId": "c-1", "priority": "urgent", "extra": 1}))
        .await;
    let mut fields = bad.error_fields();
    fields.sort();
    assert_eq!(fields, ["extra", "priority", "title"], "{}", bad.body);
    let none = server.command("CloseTicket", json!({"aggregateId": "t-1"})).await;
    none.assert_error(404, "UNKNOWN_COMMAND");

    // Nothing of it was recorded.
    assert_eq!(server.events_of("t-1").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_survey_requested_by_hand_first_leaves_the_saga_compensated_with_the_reason() {
    let server = TestServer::start(ticketing::domain()).await;
    server
        .accepted(
            "RequestSurvey",
            json!({"aggregateId": "survey-t-9", "ticketId": "t-9", "customerId": "c-1"}),
        )
        .await;
    server
        .accepted(
            "OpenTicket",
            json!({"aggregateId": "t-9", "title": "Disk", "customerId": "c-1", "priority": "low"}),
        )
        .await;
    server.accepted("AssignTicket", json!({"aggregateId": "t-9", "agentId": "a-1"})).await;
    server.accepted("ResolveTicket", json!({"aggregateId": "t-9", "resolution": "replaced"})).await;

    let saga = saga_once(&server, "survey-on-resolve:t-9", "COMPENSATED").await;
    let error = saga["error"].as_str().unwrap_or_default();
    assert!(error.contains("already requested"), "{saga}");
    assert_eq!(server.events_of("survey-t-9").await.len(), 1, "still one survey");
    let twice = server
        .command(
            "RequestSurvey",
            json!({"aggregateId": "survey-t-9", "ticketId": "t-9", "customerId": "c-1"}),
        )
        .await;
    twice.assert_error(400, "BUSINESS_RULE_VIOLATION");
    server.stop().await;
}
