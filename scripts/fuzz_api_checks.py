"""Schemathesis hooks for scripts/fuzz-api.sh (loaded through SCHEMATHESIS_HOOKS).

Registers the check `nexus_error_shape`: every answer that is not 2xx is JSON in the contract's
shape (docs/http-api.md#errors), `{"code": str, "message": str, "fields"?: [{"field", "error"}]}`,
except under /api/schema-registry, whose errors are Confluent's `{"error_code": int,
"message": str}` (its 401/403 keep the usual shape). A 5xx is a failure too (not_a_server_error
reports it as well), except `504 PROJECTION_TIMEOUT`, the documented answer to a `minVersion` or
`minPosition` not reached within `timeoutMs`: the fuzzer asks for arbitrary versions and
positions, so that answer is expected and only its shape is checked.

Two request rewrites keep the run bounded and local (before_call):
- `timeoutMs` is capped at 200 ms (and set to 200 ms when a wait is asked without it), so a query
  for a version that never comes does not wait up to 30 s;
- a webhook URL that the server would accept (http:// or https://) is pointed at 127.0.0.1, so
  nothing the run registers can deliver beyond this machine.
"""

from __future__ import annotations

import json

import schemathesis

REGISTRY_PREFIX = "/api/schema-registry"
WAIT_PARAMS = ("minVersion", "minPosition")
TIMEOUT_CAP_MS = 200
LOCAL_WEBHOOK = "http://127.0.0.1:9/fuzz-webhook"


def _describe(case, response) -> str:
    body = response.content[:500] if response.content is not None else b""
    return (
        f"request: {case.method.upper()} {case.formatted_path}"
        f"{'?' + '&'.join(f'{k}={v}' for k, v in (case.query or {}).items()) if case.query else ''}\n"
        f"status: {response.status_code}, content-type: {_content_type(response)!r}\n"
        f"body: {body!r}"
    )


def _content_type(response) -> str:
    headers = response.headers or {}
    for name, value in headers.items():
        if name.lower() == "content-type":
            if isinstance(value, (list, tuple)):
                return value[0] if value else ""
            return value
    return ""


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _problems_nexus(body) -> list[str]:
    problems = []
    if not isinstance(body.get("code"), str) or not body.get("code"):
        problems.append('"code" is not a non-empty string')
    if not isinstance(body.get("message"), str):
        problems.append('"message" is not a string')
    if "fields" in body:
        fields = body["fields"]
        if not isinstance(fields, list):
            problems.append('"fields" is not an array')
        else:
            for index, item in enumerate(fields):
                if not (
                    isinstance(item, dict)
                    and isinstance(item.get("field"), str)
                    and isinstance(item.get("error"), str)
                ):
                    problems.append(f'"fields[{index}]" is not {{"field": str, "error": str}}')
    return problems


def _problems_registry(body) -> list[str]:
    problems = []
    code = body.get("error_code")
    if not isinstance(code, int) or isinstance(code, bool):
        problems.append('"error_code" is not an integer')
    if not isinstance(body.get("message"), str):
        problems.append('"message" is not a string')
    return problems


@schemathesis.check
def nexus_error_shape(ctx, response, case):
    """Non-2xx answers are JSON in the contract's error shape; no 5xx but 504 PROJECTION_TIMEOUT."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    if not _is_json_type(_content_type(response)):
        raise AssertionError("error answer is not declared as JSON\n" + _describe(case, response))
    try:
        body = json.loads(response.content or b"")
    except ValueError:
        raise AssertionError("error answer is not valid JSON\n" + _describe(case, response)) from None
    if not isinstance(body, dict):
        raise AssertionError("error answer is not a JSON object\n" + _describe(case, response))
    path = case.path or ""
    if path == REGISTRY_PREFIX or path.startswith(REGISTRY_PREFIX + "/"):
        if status in (401, 403):
            problems = _problems_nexus(body)
        else:
            problems = _problems_registry(body)
            if not problems and body["error_code"] != status and not str(body["error_code"]).startswith(str(status)):
                problems.append(f'"error_code" {body["error_code"]} does not start with the status {status}')
    else:
        problems = _problems_nexus(body)
    if problems:
        raise AssertionError("error answer not in the contract's shape: " + "; ".join(problems) + "\n" + _describe(case, response))
    if status >= 500 and not (status == 504 and body.get("code") == "PROJECTION_TIMEOUT"):
        raise AssertionError(f"server error {status}\n" + _describe(case, response))
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query
    if isinstance(query, dict):
        timeout = query.get("timeoutMs")
        # The coverage phase sends query values as strings ("3000"), the fuzzing phase as integers.
        if isinstance(timeout, int) and not isinstance(timeout, bool) and TIMEOUT_CAP_MS < timeout <= 30000:
            query["timeoutMs"] = TIMEOUT_CAP_MS
        elif isinstance(timeout, str) and timeout.isascii() and timeout.isdigit() and TIMEOUT_CAP_MS < int(timeout) <= 30000:
            query["timeoutMs"] = str(TIMEOUT_CAP_MS)
        elif "timeoutMs" not in query and any(name in query for name in WAIT_PARAMS):
            query["timeoutMs"] = TIMEOUT_CAP_MS
    if case.method.upper() == "POST" and case.path == "/api/admin/webhooks" and isinstance(case.body, dict):
        url = case.body.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            case.body["url"] = LOCAL_WEBHOOK
