#!/bin/bash
# The live loop on one machine (README, "The live loop"): a first version of the bench's
# scale (60k synthetic impressions, one epoch per model, the log ending today), a gateway,
# `simulate` (1500 visits of 10 items), `ingest`; the same version served again and
# simulated (users have now taken what they liked most: the fair baseline); then
# `run --dataset events` on what was logged, and a third simulation of the retrained
# version. Needs redis-server and curl on PATH; uses ports 6391 and 8391 and a temp folder.
#
#     bash bench/loop.sh [visits]
set -euo pipefail
cd "$(dirname "$0")/.."
VISITS=${1:-1500}
D=$(mktemp -d /tmp/recsys-loop-XXXXXX)
PY=${PYTHON:-.venv/bin/python}
redis-server --port 6391 --save '' --daemonize yes --dir "$D" >/dev/null
export RECSYS_REDIS_URL=redis://127.0.0.1:6391/0 RECSYS_ARTIFACTS_DIR=$D/art \
       RECSYS_EVENTS_DIR=$D/events RECSYS_API_PORT=8391
GW=
cleanup() { [ -n "$GW" ] && kill "$GW" 2>/dev/null; redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true; }
trap cleanup EXIT
START=$(( ($(date +%s) / 86400 - 60) * 86400 ))  # a midnight 60 days ago: the log ends today
TRAIN='"retrieval": {"trainer": {"epochs": 1}}, "ranking": {"models": ["dcn"], "trainer": {"epochs": 1}}'
echo "{\"dataset_options\": {\"n_impressions\": 60000, \"start\": $START}, $TRAIN}" > "$D/cfg.json"
echo "{\"dataset\": \"events\", \"data_dir\": \"$D/events\", $TRAIN}" > "$D/cfg_events.json"
sim() { "$PY" -m offline simulate --config "$D/cfg.json" --visits "$VISITS" --gateway http://127.0.0.1:8391 2>/dev/null; }
active() { redis-cli -p 6391 get recsys:active; }
served() { curl -s localhost:8391/readyz | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["version"])'; }
wait_swap() { for _ in $(seq 120); do [ "$(served)" = "$(active)" ] && return; sleep 1; done; echo "no swap" >&2; exit 1; }

"$PY" -m offline run --config "$D/cfg.json" >/dev/null 2>&1
"$PY" -m services.gateway > "$D/gateway.log" 2>&1 &
GW=$!
for _ in $(seq 60); do curl -sf localhost:8391/readyz >/dev/null && break; sleep 1; done
FIRST=$(active)
echo "== first version ($FIRST), first simulation"; sim
"$PY" -m offline ingest 2>/dev/null | tail -1
"$PY" -m offline publish --version "$FIRST" >/dev/null 2>&1  # the same bytes, served again
wait_swap
echo "== the same version again, after that simulation"; sim
"$PY" -m offline run --config "$D/cfg_events.json" 2>/dev/null | grep -E "^etl: [0-9]" || true
wait_swap
echo "== retrained on its interactions and the logged events ($(active))"; sim
echo "(files in $D)"
