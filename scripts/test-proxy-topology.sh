#!/usr/bin/env bash
# The deployment topology of deploy/, run for real on this machine: 2 command processes, 1 query
# process and 1 router process of target/debug/nexus on PostgreSQL, NATS JetStream and RabbitMQ,
# behind nginx running deploy/nginx/nexus.conf itself (only its ports are replaced) and the
# settings of deploy/systemd/nexus.toml (auth on, nginx as trusted proxy). Every check goes
# through the proxy, except reading each command process's own /metrics:
#
#   - a request without a credential is refused (auth is on although Nexus listens on loopback);
#   - a webhook registered at the router reaches a local receiver (OrderPlaced, UserRegistered);
#   - an order placed is read back with read-your-writes (?minVersion=, ?minPosition=);
#   - its WebSocket notification arrives on a subscription opened through the proxy before;
#   - the other routes (events, imports, sagas, lists, search, admin, registry) reach a process
#     of the role that serves them (nginx's upstream log names it);
#   - both command processes served commands (nginx's upstream log, and each one's metrics);
#   - the bad-credential throttle counts the client address nginx appends to X-Forwarded-For
#     (one address throttled, another not), so trusted-proxies and the header work together;
#   - nginx refuses a body over 1 MiB and answers for a dead backend in Nexus's error shape;
#   - with one command process stopped, commands still succeed through the other;
#   - and, first, the units of deploy/systemd pass `systemd-analyze verify` (when it is there).
#
# Needs the engines of the backend tests (NEXUS_TEST_POSTGRES_URL, NEXUS_TEST_NATS_URL,
# NEXUS_TEST_AMQP_URL, with the defaults below); installs nginx (Debian's package), psql and
# websocket-client and pika (pip) when missing. Uses a fresh PostgreSQL schema, NATS stream and
# RabbitMQ namespace, and removes them at the end. All traffic stays on 127.0.0.1. Bounded to
# TOPOLOGY_TIME_LIMIT seconds (120) after the build.
#
#   scripts/test-proxy-topology.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${NEXUS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
NATS_URL=${NEXUS_TEST_NATS_URL:-nats://127.0.0.1:4222}
AMQP_URL=${NEXUS_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
TIME_LIMIT=${TOPOLOGY_TIME_LIMIT:-120}
WEBSOCKET_CLIENT_VERSION=1.9.2 # the WebSocket client
PIKA_VERSION=1.4.4             # an AMQP client, to remove the run's exchanges and queues

# ---- tools ----------------------------------------------------------------------------------

apt_install() {
  apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
    (apt-get update -qq && apt-get install -y --no-install-recommends "$@" >/dev/null)
}
# Debian's nginx lives in /usr/sbin. This script runs its own nginx (its own configuration, pid
# file and logs in a temporary directory), never the system's service; on the test machine
# installing the package does not start that service either (no init system to start it).
export PATH=$PATH:/usr/sbin
command -v nginx >/dev/null || apt_install nginx
command -v psql >/dev/null || apt_install postgresql-client
python3 -c 'import websocket, pika' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "websocket-client==$WEBSOCKET_CLIENT_VERSION" "pika==$PIKA_VERSION"

cargo build -q --locked -p nexus
NEXUS=$PWD/target/debug/nexus

# ---- state and cleanup ----------------------------------------------------------------------

started=$SECONDS
tmp=$(mktemp -d)
tag="$$$(date +%s)"
schema="nexus_topology_$tag"
stream="nexus-topology-$tag"
namespace="nexus-topology-$tag"
declare -A nexus_pid=() nexus_port=()
nginx_pid= receiver_pid= ws_pid= watchdog_pid= webhook_id=
proxy=

stop_pid() { # pid [signal]: signal it and wait up to 15 s, then SIGKILL
  local pid=$1 sig=${2:-TERM}
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT TERM INT
  set +e # clean up all that can be, whatever fails
  [[ -n $watchdog_pid ]] && kill "$watchdog_pid" 2>/dev/null
  if ((status != 0)); then
    echo "-- last lines of each log ($tmp) --" >&2
    for log in "$tmp"/*.log "$tmp"/nginx/*.log; do
      [[ -s $log ]] && { echo "--- $log" >&2; tail -n 15 "$log" >&2; }
    done
  fi
  # The webhook's consumer queue goes with the webhook.
  if [[ -n $webhook_id && -n $proxy ]]; then
    curl -s -o /dev/null --max-time 5 -X DELETE -H "X-API-Key: $api_key" "$proxy/api/admin/webhooks/$webhook_id" || true
  fi
  stop_pid "$ws_pid"
  stop_pid "$receiver_pid"
  stop_pid "$nginx_pid" QUIT
  for name in "${!nexus_pid[@]}"; do kill -TERM "${nexus_pid[$name]}" 2>/dev/null || true; done
  for name in "${!nexus_pid[@]}"; do stop_pid "${nexus_pid[$name]}"; done
  psql "$PG_URL" -q -X -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 ||
    echo "warning: could not drop schema $schema" >&2
  NATS_URL=$NATS_URL STREAM=$stream timeout 10 python3 - <<'EOF' || echo "warning: could not delete NATS stream $stream" >&2
# Deletes the run's JetStream stream with one request of the NATS text protocol.
import os, socket, urllib.parse
url = urllib.parse.urlparse(os.environ["NATS_URL"])
s = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=5)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.topology 1\r\n'
          + f'PUB $JS.API.STREAM.DELETE.{os.environ["STREAM"]} _INBOX.topology 0\r\n\r\nPING\r\n'.encode())
while not f.readline().startswith(b"MSG"):
    pass
EOF
  # The namespace's queues (AMQP cannot list them: rabbitmqctl does, on this machine's broker)
  # and exchanges.
  queues=$(timeout 20 rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null | grep -F "$namespace." || true)
  AMQP_URL=$AMQP_URL NAMESPACE=$namespace QUEUES=$queues timeout 20 python3 - <<'EOF' ||
# Deletes the run's RabbitMQ exchanges and queues (names as crates/nexus-rabbitmq makes them).
import os, pika
ns = os.environ["NAMESPACE"]
connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
channel = connection.channel()
for queue in {f"{ns}.dlq", f"{ns}.dlq.archive", *os.environ["QUEUES"].split()}:
    channel.queue_delete(queue)
for exchange in (f"{ns}.events", f"{ns}.dlx"):
    channel.exchange_delete(exchange)
connection.close()
EOF
    echo "warning: could not delete RabbitMQ namespace $namespace" >&2
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted or over the time limit (${TIME_LIMIT} s)" >&2; exit 124' TERM INT
# The time limit: one process (no shell with a sleep that would outlive it) that signals this one.
python3 -c 'import os, sys, time; time.sleep(float(sys.argv[1])); os.kill(int(sys.argv[2]), 15)' "$TIME_LIMIT" $$ &
watchdog_pid=$!

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { printf 'ok   %s\n' "$*"; }

# A JSON field of a file: json FILE EXPR, EXPR a Python expression over `d`.
json() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# An HTTP request; sets $code and leaves the body in $tmp/body. Extra curl arguments after the
# body (say, --interface or other headers).
request() { # METHOD URL [BODY [curl args…]]
  local method=$1 url=$2 body=${3-}
  local args=(-s -o "$tmp/body" -w '%{http_code}' --max-time 40 -X "$method")
  [[ -n $body ]] && args+=(-H 'content-type: application/json' --data-binary "$body")
  code=$(curl "${args[@]}" "${@:4}" "$url") || code=000
}
authed() { request "$1" "$2" "${3-}" "${@:4}" -H "X-API-Key: $api_key"; } # with the test's API key
expect() { # STATUS WHAT
  [[ $code == "$1" ]] || fail "$2: HTTP $code, expected $1: $(head -c 500 "$tmp/body" 2>/dev/null)"
}

# ---- the systemd units: checked, not run (this machine does not boot with systemd) ----------

if command -v systemd-analyze >/dev/null; then
  mkdir "$tmp/units"
  for role in command query router; do
    # An instance of each template, with ExecStart pointed at this build.
    sed "s#/usr/local/bin/nexus#$NEXUS#" "deploy/systemd/nexus-$role@.service" >"$tmp/units/nexus-$role@8081.service"
  done
  (cd "$tmp/units" && systemd-analyze verify --man=no ./*.service) || fail "systemd-analyze verify refuses deploy/systemd"
  ok "deploy/systemd units pass systemd-analyze verify"
else
  echo "note: no systemd-analyze here; deploy/systemd units not checked"
fi

# ---- the processes --------------------------------------------------------------------------

# Free ports: bound at once, so they differ, and released for the servers to take.
read -r p_command1 p_command2 p_query p_router p_proxy < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
proxy=http://127.0.0.1:$p_proxy

api_key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
key_sha=$(printf %s "$api_key" | sha256sum | cut -d' ' -f1)

# The deployment's configuration file, with a throttle that trips after 3 bad credentials (to
# test it in a few requests), the test's API key, and this run's stream and namespace.
grep -q '^failures-per-minute = 20$' deploy/systemd/nexus.toml || fail "deploy/systemd/nexus.toml changed shape"
sed 's/^failures-per-minute = 20$/failures-per-minute = 3/' deploy/systemd/nexus.toml >"$tmp/nexus.toml"
cat >>"$tmp/nexus.toml" <<EOF

[[auth.api-keys]]
subject = "topology-test"
key-sha256 = "$key_sha"
scopes = ["commands", "queries", "admin"]

[stream]
name = "$stream"

[queue]
namespace = "$namespace"
EOF

start_nexus() { # NAME ROLE PORT
  NEXUS_STORE_URL=$PG_URL NEXUS_STORE_SCHEMA=$schema NEXUS_STREAM_URL=$NATS_URL NEXUS_QUEUE_URL=$AMQP_URL \
    NEXUS_LOG=info NO_COLOR=1 "$NEXUS" serve --role "$2" --listen "127.0.0.1:$3" --data-dir "$tmp/$1" \
    --config "$tmp/nexus.toml" >"$tmp/$1.log" 2>&1 &
  nexus_pid[$1]=$!
  nexus_port[$1]=$3
}
start_nexus command-1 command "$p_command1"
start_nexus command-2 command "$p_command2"
start_nexus query-1 query "$p_query"
start_nexus router-1 router "$p_router"

wait_ready() { # NAME URL PID
  for _ in $(seq 1 300); do
    curl -sf --max-time 2 "$2/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || fail "$1 exited before it was ready (see its log below)"
    sleep 0.2
  done
  fail "$1 not ready after 60 s"
}
for name in command-1 command-2 query-1 router-1; do
  wait_ready "$name" "http://127.0.0.1:${nexus_port[$name]}" "${nexus_pid[$name]}"
done
ok "4 processes ready: command :$p_command1 :$p_command2, query :$p_query, router :$p_router ($((SECONDS - started)) s)"

# ---- nginx ----------------------------------------------------------------------------------

mkdir -p "$tmp/nginx"
# deploy/nginx/nexus.conf with this run's ports: each replacement must happen exactly once.
substitutions=(
  "s/^    server 127\.0\.0\.1:8081;$/    server 127.0.0.1:$p_command1;/"
  "s/^    server 127\.0\.0\.1:8082;$/    server 127.0.0.1:$p_command2;/"
  "s/^    server 127\.0\.0\.1:8091;$/    server 127.0.0.1:$p_query;/"
  "s/^    server 127\.0\.0\.1:8095;$/    server 127.0.0.1:$p_router;/"
  "s/^    listen 80;$/    listen 127.0.0.1:$p_proxy;/"
)
cp deploy/nginx/nexus.conf "$tmp/nginx/nexus.conf"
for s in "${substitutions[@]}"; do
  before=$(md5sum <"$tmp/nginx/nexus.conf")
  sed -i "$s" "$tmp/nginx/nexus.conf"
  [[ $(md5sum <"$tmp/nginx/nexus.conf") != "$before" ]] || fail "deploy/nginx/nexus.conf: '$s' matched nothing"
done
# A minimal main configuration around it, everything under the temporary directory. As root,
# the worker runs as nobody: it must reach the temporary directories.
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log info;
events { worker_connections 256; }
http {
    log_format upstream '\$remote_addr "\$request" \$status upstream=\$upstream_addr';
    access_log $tmp/nginx/access.log upstream;
    client_body_temp_path $tmp/nginx/client_body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    include $tmp/nginx/nexus.conf;
}
EOF
chmod 755 "$tmp" "$tmp/nginx"
nginx_args=(-p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log")
nginx "${nginx_args[@]}" -t -q || fail "nginx refuses the configuration"
nginx "${nginx_args[@]}" -g 'daemon off;' &
nginx_pid=$!
for _ in $(seq 1 50); do curl -sf --max-time 2 "$proxy/health/ready" >/dev/null 2>&1 && break; sleep 0.2; done
request GET "$proxy/health/ready"
expect 200 "nginx → query /health/ready"
request GET "$proxy/health/command/ready"
expect 200 "nginx → command /health/ready"
request GET "$proxy/health/router/ready"
expect 200 "nginx → router /health/ready"
ok "nginx on :$p_proxy with deploy/nginx/nexus.conf; /health/ready of each pool answers 200 through it"

# ---- through the proxy only -----------------------------------------------------------------

request GET "$proxy/api/queries/orders/nothing"
expect 401 "a query without a credential"
[[ $(json "$tmp/body" 'd["code"]') == UNAUTHENTICATED ]] || fail "401 without the error shape"
ok "a request without a credential is refused: 401 UNAUTHENTICATED (auth on behind the proxy)"

# The webhook receiver: records each POST (CloudEvents headers and body) as a JSON line.
python3 - "$tmp/deliveries.jsonl" "$tmp/receiver.port" >"$tmp/receiver.log" 2>&1 <<'EOF' &
import http.server, json, sys
out, port_file = sys.argv[1], sys.argv[2]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(out, "a") as f:
            f.write(json.dumps({"type": self.headers.get("ce-type"), "subject": self.headers.get("ce-subject"),
                                "id": self.headers.get("ce-id"), "body": body.decode()}) + "\n")
        self.send_response(204)
        self.end_headers()
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
server.serve_forever()
EOF
receiver_pid=$!
for _ in $(seq 1 50); do [[ -s $tmp/receiver.port ]] && break; sleep 0.1; done
[[ -s $tmp/receiver.port ]] || fail "the webhook receiver did not start"
hook_url="http://127.0.0.1:$(cat "$tmp/receiver.port")/hook"

# OrderPlaced (core path) and UserRegistered (queue path). Should the router not take
# OrderPlaced webhooks, UserRegistered alone is checked.
hook_types='["OrderPlaced", "UserRegistered"]'
authed POST "$proxy/api/admin/webhooks" "{\"url\": \"$hook_url\", \"eventTypes\": $hook_types}"
if [[ $code == 400 ]]; then
  echo "note: the router refuses OrderPlaced webhooks ($(head -c 200 "$tmp/body")); checking UserRegistered only"
  hook_types='["UserRegistered"]'
  authed POST "$proxy/api/admin/webhooks" "{\"url\": \"$hook_url\", \"eventTypes\": $hook_types}"
fi
expect 201 "POST /api/admin/webhooks (router)"
webhook_id=$(json "$tmp/body" 'd["id"]')
ok "webhook $webhook_id registered at the router for $hook_types"

order_id="order-topology-$tag"
user_id="user-topology-$tag"
customer_id="customer-topology-$tag"

# The subscription, opened through the proxy before the order is placed.
python3 - "ws://127.0.0.1:$p_proxy/api/subscriptions" "$api_key" "$order_id" "$tmp/ws.ready" "$tmp/ws.out" \
  >"$tmp/ws.log" 2>&1 <<'EOF' &
import json, sys, time, websocket
url, key, order_id, ready, out = sys.argv[1:]
ws = websocket.create_connection(url, header=[f"X-API-Key: {key}"], timeout=30)
ws.send(json.dumps({"type": "subscribe", "aggregateIds": [order_id]}))
reply = json.loads(ws.recv())
assert reply == {"type": "subscribed", "aggregateIds": [order_id]}, reply
open(ready, "w").close()
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    message = json.loads(ws.recv())
    print("received", message)
    if message.get("type") == "projection_updated" and message.get("aggregateId") == order_id \
            and message.get("resourceType") == "orders":
        with open(out, "w") as f:
            json.dump(message, f)
        ws.close()
        sys.exit(0)
sys.exit("no projection_updated for the order within 30 s")
EOF
ws_pid=$!
for _ in $(seq 1 100); do [[ -e $tmp/ws.ready ]] && break; kill -0 "$ws_pid" 2>/dev/null || break; sleep 0.1; done
[[ -e $tmp/ws.ready ]] || fail "the WebSocket subscription through the proxy was not confirmed: $(cat "$tmp/ws.log")"
ok "WebSocket subscription through the proxy confirmed for $order_id"

authed POST "$proxy/api/commands/PlaceOrder" \
  "{\"aggregateId\": \"$order_id\", \"customerId\": \"$customer_id\", \"items\": [{\"productId\": \"p-1\", \"quantity\": 1, \"unitPrice\": 5}]}"
expect 202 "PlaceOrder"
position=$(json "$tmp/body" 'd["position"]')
ok "PlaceOrder $order_id accepted: 202, version $(json "$tmp/body" 'd["version"]'), position $position"

authed GET "$proxy/api/queries/orders/$order_id?minVersion=1"
expect 200 "GET /api/queries/orders/{id}?minVersion=1"
[[ $(json "$tmp/body" 'd["status"]') == PLACED ]] || fail "the order read back is not PLACED: $(cat "$tmp/body")"
authed GET "$proxy/api/queries/customers/$customer_id?minPosition=$position"
expect 200 "GET /api/queries/customers/{id}?minPosition="
[[ $(json "$tmp/body" 'd["orderCount"]') == 1 ]] || fail "the customer read back has no order: $(cat "$tmp/body")"
ok "read-your-writes through the proxy: order PLACED (?minVersion=1), customer orderCount 1 (?minPosition=$position)"

authed POST "$proxy/api/commands/RegisterUser" \
  "{\"aggregateId\": \"$user_id\", \"firstName\": \"Ada\", \"lastName\": \"Lovelace\", \"email\": \"ada-$tag@example.com\"}"
expect 202 "RegisterUser"
for i in 1 2; do
  authed POST "$proxy/api/commands/PlaceOrder" \
    "{\"customerId\": \"$customer_id\", \"items\": [{\"productId\": \"p-$i\", \"quantity\": 1, \"unitPrice\": 1}]}"
  expect 202 "PlaceOrder #$((i + 1))"
done
ok "RegisterUser $user_id and 2 more orders accepted"

# The route table: each route reaches a process of the role that serves it (nginx's log names
# the process) and is answered by Nexus, not refused by nginx.
declare -A pool=([command]="$p_command1 $p_command2" [query]=$p_query [router]=$p_router)
routes=(
  "GET /api/events/$order_id query"
  "GET /api/events?eventType=OrderPlaced query"
  "POST /api/events/$order_id command"
  "GET /api/queries/orders?limit=1 query"
  "GET /api/queries/orders/search?q=p-1 query"
  "POST /api/sagas command"
  "GET /api/sagas/no-such-saga/status query"
  "GET /api/admin/sagas query"
  "GET /api/admin/projections query"
  "GET /api/admin/dlq router"
  "GET /api/schema-registry/subjects query"
  "GET /api/openapi.json query"
)
routed=
for route in "${routes[@]}"; do
  read -r method path role <<<"$route"
  body=
  [[ $method == POST ]] && body='{}' # refused by Nexus's validation: where it went is the point
  authed "$method" "$proxy$path" "$body"
  upstream=$(tail -n 1 "$tmp/nginx/access.log" | grep -o 'upstream=127.0.0.1:[0-9]*$' | cut -d: -f2 || true)
  [[ -n $upstream && " ${pool[$role]} " == *" $upstream "* ]] ||
    fail "$method $path went to ${upstream:-no process}, not to the $role pool (${pool[$role]})"
  ((code < 500)) || fail "$method $path: HTTP $code: $(head -c 300 "$tmp/body")"
  routed+=", $method ${path//$order_id/\{id\}} → $role $code"
done
ok "${#routes[@]} routes reach their role's pool and Nexus answers: ${routed#, }"

for _ in $(seq 1 150); do kill -0 "$ws_pid" 2>/dev/null || break; sleep 0.2; done
wait "$ws_pid" || fail "WebSocket: $(tail -n 3 "$tmp/ws.log")"
ws_pid=
ok "WebSocket notification through the proxy: $(json "$tmp/ws.out" '"%s %s version %s" % (d["type"], d["resourceType"], d["version"])')"

delivered() { # TYPE SUBJECT
  [[ -s $tmp/deliveries.jsonl ]] && python3 -c '
import json, sys
sys.exit(0 if any(d["type"] == sys.argv[2] and d["subject"] == sys.argv[3]
                  for d in map(json.loads, open(sys.argv[1]))) else 1)' "$tmp/deliveries.jsonl" "$1" "$2"
}
expected=("UserRegistered $user_id")
[[ $hook_types == *OrderPlaced* ]] && expected+=("OrderPlaced $order_id")
for pair in "${expected[@]}"; do
  read -r type subject <<<"$pair"
  for _ in $(seq 1 150); do delivered "$type" "$subject" && break; sleep 0.2; done
  delivered "$type" "$subject" || fail "no $type webhook delivery for $subject within 30 s"
  ok "webhook delivered by the router: $type $subject"
done

# Round robin over the command pool: nginx's log names the process of each command, and each
# process counts the commands it ran (its own /metrics, asked directly: not through the proxy).
summary=
for port in "$p_command1" "$p_command2"; do
  sent=$(grep -F '"POST /api/commands/' "$tmp/nginx/access.log" | grep -c "upstream=127.0.0.1:$port\$" || true)
  ((sent > 0)) || fail "nginx sent no command to :$port"
  count=$(curl -sf --max-time 5 -H "X-API-Key: $api_key" "http://127.0.0.1:$port/metrics" |
    awk '/^nexus_command_duration_seconds_count/ { n += $NF } END { print n + 0 }')
  ((count > 0)) || fail "command process :$port counted no command in nexus_command_duration_seconds"
  summary+=", :$port: nginx sent $sent, its metrics count $count"
done
ok "both command processes served commands${summary}"

# X-Forwarded-For: nginx appends the client's address and Nexus, trusting nginx, counts that
# address. Bad credentials from 127.0.0.2 trip the throttle (3 a minute here) for 127.0.0.2 only;
# without the trust both would share nginx's address and 127.0.0.3 would be throttled too. What
# 127.0.0.2 writes in X-Forwarded-For itself does not help it.
for i in 1 2 3; do
  request GET "$proxy/api/queries/orders/nothing" "" --interface 127.0.0.2 -H "X-API-Key: wrong-$i"
  expect 401 "bad credential #$i from 127.0.0.2"
done
request GET "$proxy/api/queries/orders/nothing" "" --interface 127.0.0.2 -H "X-API-Key: wrong-4" -H "X-Forwarded-For: 203.0.113.7"
expect 429 "a 4th bad credential from 127.0.0.2 (posing as 203.0.113.7)"
request GET "$proxy/api/queries/orders/nothing" "" --interface 127.0.0.3 -H "X-API-Key: wrong-5"
expect 401 "a bad credential from 127.0.0.3 after 127.0.0.2 was throttled"
ok "Nexus counts the client nginx appends to X-Forwarded-For: 127.0.0.2 throttled (429), 127.0.0.3 not (401)"

# The proxy's own limits and errors, in Nexus's error shape.
head -c 1048577 /dev/zero | tr '\0' ' ' >"$tmp/big.json"
request POST "$proxy/api/commands/PlaceOrder" "@$tmp/big.json" -H "X-API-Key: $api_key"
expect 413 "a body of 1 MiB + 1 byte"
[[ $(json "$tmp/body" 'd["code"]') == PAYLOAD_TOO_LARGE ]] || fail "413 without the error shape: $(cat "$tmp/body")"
request GET "$proxy/metrics"
expect 404 "/metrics through the proxy"
ok "nginx refuses a body over 1 MiB (413 PAYLOAD_TOO_LARGE) and does not serve /metrics (404)"

# One command process stops (cleanly, as systemd stops it): nginx sends commands to the other.
stop_pid "${nexus_pid[command-2]}"
unset 'nexus_pid[command-2]'
for i in 1 2 3; do
  authed POST "$proxy/api/commands/PlaceOrder" \
    "{\"customerId\": \"$customer_id\", \"items\": [{\"productId\": \"p-failover\", \"quantity\": 1}]}"
  expect 202 "PlaceOrder #$i with command-2 stopped"
done
ok "with command-2 stopped, 3 commands through the proxy succeed on command-1"

authed DELETE "$proxy/api/admin/webhooks/$webhook_id"
expect 204 "DELETE /api/admin/webhooks/{id} (router)"
webhook_id=
ok "webhook removed at the router"

# The router pool emptied: nginx answers for it in Nexus's error shape.
stop_pid "${nexus_pid[router-1]}"
unset 'nexus_pid[router-1]'
authed GET "$proxy/api/admin/webhooks"
expect 503 "/api/admin/webhooks with the router stopped"
[[ $(json "$tmp/body" 'd["code"]') == UNAVAILABLE ]] || fail "503 without the error shape: $(cat "$tmp/body")"
ok "with no router left, nginx answers 503 UNAVAILABLE in Nexus's error shape"

echo "PASS: proxy topology (2 command, 1 query, 1 router behind nginx) in $((SECONDS - started)) s"
