#!/usr/bin/env bash
# Stock-client test suite: runs protoserve and talks to it with unmodified
# third-party clients (grpcio + its health/reflection packages under pytest,
# and `buf curl`).
#
#   tests/stock/run.sh [SERVER_BINARY]    (default: target/debug/protoserve)
#
# A relative SERVER_BINARY is taken from the repo root. Installs its own tools
# if missing (pip packages from requirements.txt, buf into tests/stock/node_modules).
# Environment knobs:
#   STOCK_SKIP_INSTALL=1    don't check/install pip and npm packages
#   PYTEST_ADDOPTS          extra pytest options, as usual
# Exits non-zero if any pytest test or buf check failed; everything runs first.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

BIN="${1:-target/debug/protoserve}"
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
if [[ ! -x "$BIN" ]]; then
  echo "run.sh: server binary not found or not executable: $BIN" >&2
  exit 2
fi

# One server for everything, on the repository's own protos/, handlers/ and
# data/ (the tutorial's RouteGuide DB).
RG_DB="data/route_guide_db.json"

# --- tools -------------------------------------------------------------------

install_tools() {
  if ! python3 - "$HERE/requirements.txt" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, _, want = line.partition("==")
        assert version(name) == want, line
PY
  then
    echo "# installing python packages from tests/stock/requirements.txt"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      -r "$HERE/requirements.txt" >&2
  fi
  if [[ ! -x "$HERE/node_modules/.bin/buf" ]] || ! "$HERE/node_modules/.bin/buf" --version >/dev/null 2>&1; then
    echo "# installing buf into tests/stock/node_modules"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}
if [[ "${STOCK_SKIP_INSTALL:-}" != 1 ]]; then install_tools; fi
BUF="$HERE/node_modules/.bin/buf"

# --- scratch space, servers, cleanup --------------------------------------------

TMP="$(mktemp -d "${TMPDIR:-/tmp}/protoserve-stock.XXXXXX")"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME DATA_DIR: starts the server, sets ADDR to host:port it
# reported on stderr ("listening on 127.0.0.1:PORT") and ADMIN_ADDR to its
# admin API's ("admin API on http://127.0.0.1:PORT"), or returns 1.
start_server() {
  local name="$1" data="$2" log="$TMP/$1.stderr" pid line i
  NO_COLOR=1 "$BIN" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --protos protos --handlers handlers --data "$data" \
    >"$TMP/$name.stdout" 2>"$log" </dev/null &
  pid=$!
  PIDS+=("$pid")
  ADDR=""
  for ((i = 0; i < 300; i++)); do  # 30 s
    # (ANSI colour codes, should the server's logger emit any, are stripped first)
    line="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -Eo 'listening on [0-9.]+:[0-9]+' | head -n1 || true)"
    if [[ -n "$line" ]]; then
      ADDR="${line#listening on }"
      ADMIN_ADDR="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -Eo 'admin API on http://[0-9.]+:[0-9]+' | head -n1 || true)"
      ADMIN_ADDR="${ADMIN_ADDR#admin API on http://}"
      echo "# $name server (pid $pid, --data $data) listening on $ADDR"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "# $name server exited before listening; its stderr:" >&2
      sed 's/^/#   /' "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "# $name server did not report 'listening on' within 30 s; its stderr, then stdout:" >&2
  sed 's/^/#   /' "$log" "$TMP/$name.stdout" >&2
  return 1
}

start_server main data || exit 1
MAIN_ADDR="$ADDR"
RG_ADDR="$MAIN_ADDR"

# --- python stubs + pytest --------------------------------------------------

STUBS="$TMP/stubs"
mkdir -p "$STUBS"
python3 -m grpc_tools.protoc -Iprotos --python_out="$STUBS" --grpc_python_out="$STUBS" \
  protos/helloworld.proto protos/route_guide.proto

PYTEST_RC=0
PROTOSERVE_ADDR="$MAIN_ADDR" \
PROTOSERVE_ROUTE_GUIDE_ADDR="$RG_ADDR" \
PROTOSERVE_ROUTE_GUIDE_DB="$RG_DB" \
PROTOSERVE_STUBS="$STUBS" \
PROTOSERVE_ADMIN_ADDR="$ADMIN_ADDR" \
PYTHONPATH="$STUBS${PYTHONPATH:+:$PYTHONPATH}" \
PYTHONDONTWRITEBYTECODE=1 \
  timeout 300 python3 -m pytest -p no:cacheprovider -q -rs --tb=short \
    --junitxml="$TMP/pytest.xml" "$HERE" || PYTEST_RC=$?
# One summary line from pytest's own report, for tests/stock_clients.rs to check.
python3 - "$TMP/pytest.xml" <<'PY' || PYTEST_RC=${PYTEST_RC:-1}
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
counts = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
for suite in suites:
    for case in suite.iter("testcase"):
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            counts["failed"] += 1
        elif "skipped" in kinds:
            skipped = case.find("skipped")
            if (skipped.get("type") or "").endswith("xfail"):
                counts["xfailed"] += 1
            else:
                counts["skipped"] += 1
        else:
            counts["passed"] += 1
print("pytest: {passed} passed, {failed} failed, {skipped} skipped, {xfailed} xfailed".format(**counts))
PY

# --- buf curl -------------------------------------------------------------------

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok - $1"; }
not_ok() {
  FAIL=$((FAIL + 1))
  echo "not ok - $1"
  sed 's/^/#   /' <<<"$2"
}

bufcurl() {
  timeout 30 "$BUF" curl --protocol grpc --http2-prior-knowledge "$@" 2>&1
}

# check_lines NAME "LINES..." OUTPUT: every LINE must appear as a whole line of OUTPUT.
check_lines() {
  local name="$1" want="$2" out="$3" rc="$4" missing=() l
  while IFS= read -r l; do
    [[ -z "$l" ]] && continue
    grep -Fxq -- "$l" <<<"$out" || missing+=("$l")
  done <<<"$want"
  if [[ "$rc" == 0 && ${#missing[@]} == 0 ]]; then
    ok "$name"
  else
    not_ok "$name" "exit $rc; missing: ${missing[*]:-none}; output:
$out"
  fi
}

# check_json NAME EXPECTED_JSON OUTPUT RC: OUTPUT must parse as JSON equal to EXPECTED_JSON.
check_json() {
  local name="$1" want="$2" out="$3" rc="$4"
  if [[ "$rc" == 0 ]] && python3 -c '
import json, sys
sys.exit(0 if json.loads(sys.argv[1]) == json.loads(sys.argv[2]) else 1)' "$out" "$want" 2>/dev/null; then
    ok "$name"
  else
    not_ok "$name" "exit $rc; expected JSON $want; output:
$out"
  fi
}

ADDR_URL="http://$MAIN_ADDR"

rc=0; out="$(bufcurl --list-methods "$ADDR_URL")" || rc=$?
check_lines "buf curl --list-methods" "helloworld.Greeter/SayHello
helloworld.Greeter/SayHelloAgain
routeguide.RouteGuide/GetFeature
routeguide.RouteGuide/ListFeatures
routeguide.RouteGuide/RecordRoute
routeguide.RouteGuide/RouteChat" "$out" "$rc"

rc=0; out="$(bufcurl --list-services "$ADDR_URL")" || rc=$?
check_lines "buf curl --list-services" "helloworld.Greeter
routeguide.RouteGuide
grpc.health.v1.Health" "$out" "$rc"

for v in v1 v1alpha; do
  rc=0; out="$(bufcurl --reflect-protocol "grpc-$v" --list-methods "$ADDR_URL")" || rc=$?
  check_lines "buf curl --reflect-protocol grpc-$v --list-methods" "helloworld.Greeter/SayHello
helloworld.Greeter/SayHelloAgain" "$out" "$rc"
done

rc=0; out="$(bufcurl -d '{"name":"you"}' "$ADDR_URL/helloworld.Greeter/SayHello")" || rc=$?
check_json "buf curl SayHello" '{"message": "Hello, you!"}' "$out" "$rc"
if [[ "$rc" == 0 ]] && ! grep -Fq '"message": "Hello, you!"' <<<"$out"; then
  not_ok "buf curl SayHello prints \"message\": \"Hello, you!\"" "$out"
fi

rc=0; out="$(bufcurl -d '{"name":"you"}' "$ADDR_URL/helloworld.Greeter/SayHelloAgain")" || rc=$?
check_json "buf curl SayHelloAgain" '{"message": "Hello again, you!"}' "$out" "$rc"

rc=0; out="$(bufcurl -d '{"name":"Zoë 世界"}' "$ADDR_URL/helloworld.Greeter/SayHello")" || rc=$?
check_json "buf curl SayHello unicode" '{"message": "Hello, Zoë 世界!"}' "$out" "$rc"

rc=0; out="$(bufcurl -d '{}' "$ADDR_URL/helloworld.Greeter/SayHello")" || rc=$?
check_json "buf curl SayHello empty request" '{"message": "Hello, !"}' "$out" "$rc"

rc=0; out="$(bufcurl -d '{"service":""}' "$ADDR_URL/grpc.health.v1.Health/Check")" || rc=$?
check_json "buf curl Health/Check" '{"status": "SERVING"}' "$out" "$rc"

rc=0; out="$(bufcurl -d '{"service":"helloworld.Greeter"}' "$ADDR_URL/grpc.health.v1.Health/Check")" || rc=$?
check_json "buf curl Health/Check helloworld.Greeter" '{"status": "SERVING"}' "$out" "$rc"

# --- the admin API, as the README shows it ------------------------------------------
# (The calls above are in the journal: pytest's and buf's.)

A="http://$ADMIN_ADDR"
rc=0; out="$(bufcurl --list-methods "$A")" || rc=$?
check_lines "buf curl --list-methods on the admin port" "protoserve.admin.v1.Admin/Status
protoserve.admin.v1.Admin/ListCalls
protoserve.admin.v1.Admin/Verify" "$out" "$rc"

rc=0; out="$(bufcurl -d '{"method": "helloworld.Greeter/SayHello", "when": {"request": {"name": "you"}}, "at_least": 1}' \
  "$A/protoserve.admin.v1.Admin/Verify")" || rc=$?
check_lines "buf curl Admin/Verify" '  "ok": true,' "$out" "$rc"

if command -v curl >/dev/null; then
  json_field() { python3 -c 'import json, sys; v = json.load(sys.stdin); print(eval("v" + sys.argv[1]))' "$1"; }
  rc=0; out="$(curl -sS "$A/v1/status" | json_field '["journal"]["enabled"]')" || rc=$?
  check_lines "curl /v1/status" "True" "$out" "$rc"
  rc=0; out="$(curl -sS "$A/v1/journal?method=helloworld.Greeter/SayHello&status=OK&view=summary&page_size=1000" \
    | json_field '["calls"][0]["status"]["name"]')" || rc=$?
  check_lines "curl /v1/journal?method=…&status=OK" "OK" "$out" "$rc"
  rc=0; out="$(curl -sS -X POST "$A/v1/verify" \
    -d '{"method": "helloworld.Greeter/SayHello", "when": {"request": {"name": "nobody"}}, "exactly": 1}' \
    | json_field '["ok"]')" || rc=$?
  check_lines "curl /v1/verify (does not hold)" "False" "$out" "$rc"
  rc=0; out="$(curl -sS -X POST "$A/v1/reset" | json_field '["journal_cleared"] > 0')" || rc=$?
  check_lines "curl /v1/reset" "True" "$out" "$rc"
  rc=0; out="$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$A/v1/verify" -d '{not json')" || rc=$?
  check_lines "curl /v1/verify with a bad body is 400" "400" "$out" "$rc"
else
  echo "# curl not found: admin API curl checks skipped"
fi

echo
if [[ "$PYTEST_RC" != 0 ]]; then
  echo "# pytest exited with status $PYTEST_RC"
fi
echo "buf: $PASS passed, $FAIL failed"
if [[ "$PYTEST_RC" != 0 || "$FAIL" != 0 ]]; then
  exit 1
fi
