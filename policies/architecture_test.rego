# Unit tests for architecture.rego: for each rule at least one violating fact, caught with the
# rule's message, and one compliant fact. Run with `nexus policy test` (or `opa test policies/`).
package nexus.architecture

import rego.v1

# --- services communicate via the event bus only ---------------------------------------------

test_direct_http_from_command_to_query_is_denied if {
	result := deny with input as {
		"type": "service_call",
		"source": "command_service",
		"target": "query_dashboard",
		"protocol": "http",
	}
	result == {"Direct HTTP calls between Command Service and Query Dashboard are prohibited. Use Event Bus."}
}

test_direct_call_from_query_to_command_is_denied if {
	result := deny with input as {"type": "service_call", "source": "query", "target": "command", "protocol": "grpc"}
	result == {"Direct GRPC calls between Query Service and Command Service are prohibited. Use Event Bus."}
}

test_call_without_protocol_is_denied if {
	result := deny with input as {"type": "service_call", "source": "command", "target": "query"}
	result == {"Direct UNSPECIFIED calls between Command Service and Query Service are prohibited. Use Event Bus."}
}

test_command_to_query_via_event_bus_is_allowed if {
	result := deny with input as {
		"type": "service_call",
		"source": "command_service",
		"target": "query_dashboard",
		"protocol": "event_bus",
	}
	count(result) == 0
}

test_http_from_router_to_query_is_allowed if {
	result := deny with input as {"type": "service_call", "source": "router", "target": "query", "protocol": "http"}
	count(result) == 0
}

# --- the event store is append-only ------------------------------------------------------------

test_delete_on_event_store_is_denied if {
	result := deny with input as {"type": "database_operation", "table": "EventStore", "operation": "DELETE"}
	result == {"Event Store mutations are prohibited. Only INSERT operations allowed (found DELETE on EventStore)."}
}

test_update_on_events_table_is_denied if {
	result := deny with input as {"type": "database_operation", "table": "events", "operation": "update"}
	result == {"Event Store mutations are prohibited. Only INSERT operations allowed (found UPDATE on events)."}
}

test_truncate_on_event_store_is_denied if {
	result := deny with input as {"type": "database_operation", "table": "EventStore", "operation": "TRUNCATE"}
	count(result) == 1
}

test_insert_and_select_on_event_store_are_allowed if {
	inserts := deny with input as {"type": "database_operation", "table": "EventStore", "operation": "INSERT"}
	selects := deny with input as {"type": "database_operation", "table": "events", "operation": "SELECT"}
	count(inserts) == 0
	count(selects) == 0
}

test_update_on_read_model_table_is_allowed if {
	result := deny with input as {"type": "database_operation", "table": "documents", "operation": "UPDATE"}
	count(result) == 0
}

# --- every published event has a registered schema ---------------------------------------------

test_event_without_registered_schema_is_denied if {
	result := deny with input as {"type": "event_publish", "eventType": "OrderShipped", "schemaRegistered": false}
	result == {"Event type 'OrderShipped' has no registered schema in Schema Registry"}
}

test_event_with_unknown_registration_is_denied if {
	result := deny with input as {"type": "event_publish", "eventType": "OrderShipped"}
	result == {"Event type 'OrderShipped' has no registered schema in Schema Registry"}
}

test_event_with_registered_schema_is_allowed if {
	result := deny with input as {"type": "event_publish", "eventType": "OrderPlaced", "schemaRegistered": true}
	count(result) == 0
}

# --- temporal queries are rate limited at 10/min ----------------------------------------------

test_temporal_endpoint_without_rate_limit_is_denied if {
	result := deny with input as {
		"type": "api_endpoint",
		"method": "GET",
		"path": "/api/queries/temporal/{aggregateId}",
		"rateLimitPerMinute": null,
	}
	result == {"Temporal query endpoints must have rate limit of 10 requests/minute/client (GET /api/queries/temporal/{aggregateId} has no rate limit)"}
}

test_temporal_endpoint_with_loose_rate_limit_is_denied if {
	result := deny with input as {
		"type": "api_endpoint",
		"method": "GET",
		"path": "/api/queries/temporal/*",
		"rateLimitPerMinute": 1000,
	}
	result == {"Temporal query endpoints must have rate limit of 10 requests/minute/client (GET /api/queries/temporal/* has 1000 requests/minute)"}
}

test_time_range_event_query_without_limit_is_denied if {
	result := deny with input as {"type": "api_endpoint", "method": "GET", "path": "/api/events"}
	result == {"Temporal query endpoints must have rate limit of 10 requests/minute/client (GET /api/events has no rate limit)"}
}

test_temporal_endpoints_limited_to_ten_per_minute_are_allowed if {
	temporal := deny with input as {
		"type": "api_endpoint",
		"method": "GET",
		"path": "/api/queries/temporal/{aggregateId}",
		"rateLimitPerMinute": 10,
	}
	time_range := deny with input as {"type": "api_endpoint", "method": "GET", "path": "/api/events", "rateLimitPerMinute": 5}
	count(temporal) == 0
	count(time_range) == 0
}

test_list_query_endpoint_needs_no_temporal_limit if {
	result := deny with input as {
		"type": "api_endpoint",
		"method": "GET",
		"path": "/api/queries/{resourceType}",
		"rateLimitPerMinute": 1000,
	}
	count(result) == 0
}

# --- input as an array of facts ----------------------------------------------------------------

test_array_input_judges_every_fact if {
	result := deny with input as [
		{"type": "database_operation", "table": "EventStore", "operation": "INSERT"},
		{"type": "database_operation", "table": "EventStore", "operation": "DELETE"},
		{"type": "event_publish", "eventType": "OrderPlaced", "schemaRegistered": true},
		{"type": "event_publish", "eventType": "Ghost", "schemaRegistered": false},
	]
	result == {
		"Event Store mutations are prohibited. Only INSERT operations allowed (found DELETE on EventStore).",
		"Event type 'Ghost' has no registered schema in Schema Registry",
	}
}
