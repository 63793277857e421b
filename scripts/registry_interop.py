"""Talks to a running Nexus's schema registry with Confluent's own Python client.

Usage: python3 scripts/registry_interop.py http://127.0.0.1:8080/api/schema-registry SUBJECT
Exits non-zero (with the failing check) on any mismatch.
"""
import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

url, subject = sys.argv[1], sys.argv[2]
client = SchemaRegistryClient({"url": url})

v1 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"orderId": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["orderId", "amount"],
}
v2 = json.loads(json.dumps(v1))
v2["properties"]["note"] = {"type": "string", "default": ""}  # optional, with a default
breaking = json.loads(json.dumps(v1))
del breaking["properties"]["amount"]  # a removed field
breaking["required"] = ["orderId"]

checks = 0


def check(condition, what):
    global checks
    if not condition:
        sys.exit(f"FAILED: {what}")
    checks += 1


id1 = client.register_schema(subject, Schema(json.dumps(v1), "JSON"))
check(isinstance(id1, int), "register returns an integer id")
check(client.register_schema(subject, Schema(json.dumps(v1), "JSON")) == id1, "re-registering returns the same id")

fetched = client.get_schema(id1)
check(json.loads(fetched.schema_str) == v1, "fetch by id returns the schema")
check(fetched.schema_type == "JSON", "the schema type is JSON")

found = client.lookup_schema(subject, Schema(json.dumps(v1), "JSON"))
check(found.schema_id == id1 and found.version == 1, "lookup finds version 1")

id2 = client.register_schema(subject, Schema(json.dumps(v2), "JSON"))
check(id2 != id1, "a compatible evolution gets a new id")
latest = client.get_latest_version(subject)
check(latest.version == 2 and latest.schema_id == id2, "latest is version 2")
check(client.get_versions(subject) == [1, 2], "versions are [1, 2]")

check(client.test_compatibility(subject, Schema(json.dumps(breaking), "JSON")) is False, "a removed field is incompatible")
try:
    client.register_schema(subject, Schema(json.dumps(breaking), "JSON"))
    check(False, "a breaking schema must be refused")
except SchemaRegistryError as error:
    check(error.http_status_code == 409, f"a breaking schema is refused with 409 (got {error.http_status_code})")
    check("amount" in error.error_message, f"the 409 names the removed field: {error.error_message}")

print(f"confluent-kafka {__import__('confluent_kafka').version()[0]} SchemaRegistryClient: {checks} checks passed")
