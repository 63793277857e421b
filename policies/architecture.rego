# The seed's architecture rules (Nexus Blueprint 3.0, §7 "Policy Engine"), judged against facts
# about the system: `nexus graph` turns the server's own registrations into facts, and
# `nexus policy check --input FILE` evaluates `data.nexus.architecture.deny` against each one.
#
# `input` is one fact, in the shapes the seed's rules read:
#   {"type": "service_call", "source": "command_service", "target": "query_dashboard", "protocol": "http"}
#   {"type": "database_operation", "table": "EventStore", "operation": "DELETE"}
#   {"type": "event_publish", "eventType": "OrderPlaced", "schemaRegistered": true}
#   {"type": "api_endpoint", "method": "GET", "path": "/api/queries/temporal/{aggregateId}", "rateLimitPerMinute": 10}
# `input` may also be an array of such facts (as `opa exec --input service-graph.json` would pass
# it); every element is then judged the same way. Facts of other types are ignored.
#
# Syntax: Rego v1 (`deny contains msg if { ... }`). `import rego.v1` makes the file valid for
# OPA 0.59+ as well as OPA 1.x; regorus evaluates it in its default (v1) mode.
#
# Missing fields fail closed: a call without a protocol, an event without `schemaRegistered: true`
# and a temporal endpoint without a numeric limit are all violations.
package nexus.architecture

import rego.v1

# The facts under judgement: `input` itself, or each element when `input` is an array.
facts contains input if is_object(input)

facts contains fact if {
	is_array(input)
	some fact in input
	is_object(fact)
}

# ---------------------------------------------------------------------------------------------
# Rule: services communicate via the event bus only.
# The command and query roles never call each other directly (contract §1, `--role`); they meet
# only through the event bus. Any other protocol between them, in either direction, is denied.

command_roles := {"command", "command_service"}

query_roles := {"query", "query_service", "query_dashboard"}

role_labels := {
	"command": "Command Service",
	"command_service": "Command Service",
	"query": "Query Service",
	"query_service": "Query Service",
	"query_dashboard": "Query Dashboard",
}

role_label(role) := object.get(role_labels, role, role)

crosses_command_query(source, target) if {
	source in command_roles
	target in query_roles
}

crosses_command_query(source, target) if {
	source in query_roles
	target in command_roles
}

via_event_bus(call) if call.protocol == "event_bus"

deny contains msg if {
	some fact in facts
	fact.type == "service_call"
	crosses_command_query(fact.source, fact.target)
	not via_event_bus(fact)
	protocol := upper(object.get(fact, "protocol", "unspecified"))
	msg := sprintf(
		"Direct %s calls between %s and %s are prohibited. Use Event Bus.",
		[protocol, role_label(fact.source), role_label(fact.target)],
	)
}

# ---------------------------------------------------------------------------------------------
# Rule: the event store is append-only.
# Any operation that changes or removes a stored event is denied on the event store's table,
# whatever the backend calls it. INSERT and SELECT (and schema set-up) are allowed.

event_store_tables := {"eventstore", "event_store", "events"}

mutating_operations := {"UPDATE", "DELETE", "TRUNCATE", "DROP", "REPLACE", "UPSERT", "MERGE"}

deny contains msg if {
	some fact in facts
	fact.type == "database_operation"
	lower(fact.table) in event_store_tables
	operation := upper(fact.operation)
	operation in mutating_operations
	msg := sprintf(
		"Event Store mutations are prohibited. Only INSERT operations allowed (found %s on %s).",
		[operation, fact.table],
	)
}

# ---------------------------------------------------------------------------------------------
# Rule: every published event type has a registered schema.

schema_exists(fact) if fact.schemaRegistered == true

deny contains msg if {
	some fact in facts
	fact.type == "event_publish"
	not schema_exists(fact)
	msg := sprintf(
		"Event type '%s' has no registered schema in Schema Registry",
		[object.get(fact, "eventType", "<unnamed>")],
	)
}

# ---------------------------------------------------------------------------------------------
# Rule: temporal queries are rate limited at 10 requests/minute/client or less.
# Temporal queries are `/api/queries/temporal/...`; the time-range event query `GET /api/events`
# (the seed's getEventsByTimeRange) is limited the same way (contract §4). A limit of 0 or none
# means unlimited and is denied.

temporal_limit_per_minute := 10

is_temporal_query(endpoint) if endpoint.path == "/api/queries/temporal"

is_temporal_query(endpoint) if startswith(endpoint.path, "/api/queries/temporal/")

is_temporal_query(endpoint) if {
	trim_right(endpoint.path, "/") == "/api/events"
	upper(object.get(endpoint, "method", "GET")) == "GET"
}

has_rate_limit(endpoint, max) if {
	limit := endpoint.rateLimitPerMinute
	is_number(limit)
	limit > 0
	limit <= max
}

endpoint_label(endpoint) := sprintf("%s %s", [upper(endpoint.method), endpoint.path]) if {
	is_string(endpoint.method)
}

endpoint_label(endpoint) := endpoint.path if not is_string(endpoint.method)

limit_label(endpoint) := sprintf("%v requests/minute", [endpoint.rateLimitPerMinute]) if {
	is_number(endpoint.rateLimitPerMinute)
}

limit_label(endpoint) := "no rate limit" if not is_number(endpoint.rateLimitPerMinute)

deny contains msg if {
	some fact in facts
	fact.type == "api_endpoint"
	is_temporal_query(fact)
	not has_rate_limit(fact, temporal_limit_per_minute)
	msg := sprintf(
		"Temporal query endpoints must have rate limit of %d requests/minute/client (%s has %s)",
		[temporal_limit_per_minute, endpoint_label(fact), limit_label(fact)],
	)
}
