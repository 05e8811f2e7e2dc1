#!/usr/bin/env bash
# The Coral demo, end to end on this host: set the machine up (idempotent),
# start a colony and an agent on a private runtime directory, run the C
# payments service under coral-run, attach to validate_card, stream its
# calls live, print the summary, and shut everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
work=$(mktemp -d /tmp/coral-demo-XXXXXX)
export CORAL_RUNTIME_DIR="$work/run" CORAL_STATE_DIR="$work/state" CORAL_CONFIG="$PWD/etc/coral.toml"
PATH="$PWD/.venv/bin:$PATH"   # coral-* tools, and the venv's python (which has coral.sdk)
pids=()
cleanup() {
  say "shutting down (SIGTERM)"
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "logs: $work/*.log"
}
trap cleanup EXIT

say "building the demo service (examples/native/payments.c)"
gcc -g -O1 -Wall -o "$work/payments" examples/native/payments.c
echo "built $work/payments"

say "starting coral-colonyd and coral-agentd (runtime dir $CORAL_RUNTIME_DIR)"
coral-colonyd >"$work/colonyd.log" 2>&1 & pids+=($!)
coral-agentd >"$work/agentd.log" 2>&1 & pids+=($!)
# A ping waits for the socket to appear and answer: readiness by message.
coralctl --timeout 30s ping
coralctl --local --timeout 30s ping

say "coral-run --service payments -- payments --loop-ms 40"
coral-run --service payments -- "$work/payments" --loop-ms 40 --sleep-ms 3 >"$work/payments.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  coralctl --output json services | grep -q '"service":"payments"' && break
  sleep 0.1
done
coralctl services
echo; echo "$ coralctl functions payments --pattern 'v*'"
coralctl functions payments --pattern 'v*'

say "coralctl debug attach payments --function validate_card --duration 3s --capture-args --capture-return"
coralctl debug attach payments --function validate_card --duration 3s --capture-args --capture-return

say "a Python service: examples/python/payments_service.py (coral.sdk.init)"
python examples/python/payments_service.py --port 0 >"$work/py.out" 2>"$work/py.log" & pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/py.out" 2>/dev/null && break; sleep 0.1; done
port=$(awk '/listening on/ {print $3}' "$work/py.out")
for _ in $(seq 100); do
  coralctl --output json services | grep -q '"service":"payments-api"' && break
  sleep 0.1
done
echo "payments-api listening on 127.0.0.1:$port"
# Some traffic: a charge every 50 ms, every fifth one declined.
python - "$port" <<'PY' & pids+=($!)
import sys, time, urllib.error, urllib.request
for i in range(400):
    card = "4111111111111117" if i % 5 == 0 else "4111111111111111"
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/charge?card={card}&amount={1000 + i}", timeout=5).read()
    except urllib.error.HTTPError:
        pass
    time.sleep(0.05)
PY

say "coralctl debug attach payments-api --function payments.validate_card --duration 3s --capture-args --capture-return"
coralctl debug attach payments-api --function payments.validate_card --duration 3s --capture-args --capture-return

say "coralctl debug sessions"
coralctl debug sessions
