#!/usr/bin/env bash
# `make run`: the greenhouse demo.
#
# Starts `headwater up -f examples/greenhouse` (the embedded MQTT broker on
# MQTT_PORT, HTTP -- ingress, admin API, dashboard -- on HTTP_PORT), waits
# until it answers, then runs `headwater simulate`: DEVICES greenhouse sensors
# publishing RATE readings per second in total. Ctrl-C (or SIGTERM) stops both;
# if either exits on its own, the other is stopped too and its status is ours.
#
# With INFLUXDB_URL set, readings are also written to that InfluxDB
# (deploy/grafana/influxdb-sink.yaml); without it nothing tries to reach one.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
HEADWATER="$VENV/bin/headwater"
HTTP_PORT=${HTTP_PORT:-8080}
export MQTT_PORT=${MQTT_PORT:-1883}
HEADWATER_DATA=${HEADWATER_DATA:-headwater-data}
DEVICES=${DEVICES:-20}
RATE=${RATE:-10}
READY_TIMEOUT=${READY_TIMEOUT:-30} # seconds for headwater up to open its listeners
STOP_TIMEOUT=${STOP_TIMEOUT:-20}   # seconds for both to exit before SIGKILL

files=(-f examples/greenhouse)
if [[ -n "${INFLUXDB_URL:-}" ]]; then
  files+=(-f deploy/grafana/influxdb-sink.yaml)
  echo "demo: telemetry also goes to InfluxDB at $INFLUXDB_URL"
fi

# Job control: each child runs in its own process group, so a Ctrl-C reaches only
# this script, which stops the simulator first and then Headwater (the other
# order would show the devices a broker going away).
set -m

up_pid=""
sim_pid=""

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# stop_one PID SIGNAL: signal it, give it STOP_TIMEOUT seconds, then SIGKILL.
stop_one() {
  local pid=$1
  [[ -n "$pid" ]] || return 0
  if alive "$pid"; then
    kill "-$2" "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      echo "demo: process $pid did not stop in ${STOP_TIMEOUT}s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

stop() {
  local status=$?
  trap - EXIT INT TERM
  stop_one "$sim_pid" INT
  stop_one "$up_pid" TERM
  exit "$status"
}
trap stop EXIT
trap 'exit 0' INT TERM # a requested stop is a clean exit once both have stopped

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

"$HEADWATER" up "${files[@]}" --data-dir "$HEADWATER_DATA" --http-port "$HTTP_PORT" &
up_pid=$!

ready=""
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
  if ! alive "$up_pid"; then
    wait "$up_pid" && status=0 || status=$?
    echo "demo: headwater up exited (status $status) before it was ready" >&2
    exit 1
  fi
  # Both listeners open, and the HTTP one is our headwater (not some other server).
  if accepts "$HTTP_PORT" && accepts "$MQTT_PORT" &&
    "$HEADWATER" get broker --server "http://127.0.0.1:$HTTP_PORT" >/dev/null 2>&1; then
    ready=yes
    break
  fi
  sleep 0.1
done
if [[ -z "$ready" ]]; then
  echo "demo: headwater up was not ready after ${READY_TIMEOUT}s" >&2
  exit 1
fi

echo "demo: dashboard at http://127.0.0.1:$HTTP_PORT/"
echo "demo: $DEVICES simulated sensors publish to mqtt://127.0.0.1:$MQTT_PORT ($RATE readings/s); Ctrl-C stops"
# --prefix sim: the README's commands name sim-3; --register: the devices are in the
# device registry (presence, twins, commands with answers on the dashboard).
"$HEADWATER" simulate --devices "$DEVICES" --rate "$RATE" --broker "mqtt://127.0.0.1:$MQTT_PORT" \
  --prefix sim --register --server "http://127.0.0.1:$HTTP_PORT" &
sim_pid=$!

# Until either ends by itself (a signal to us interrupts this wait instead).
wait -n "$up_pid" "$sim_pid" && status=0 || status=$?
if alive "$up_pid"; then
  echo "demo: the simulator exited (status $status)" >&2
else
  echo "demo: headwater up exited (status $status)" >&2
fi
exit $((status == 0 ? 1 : status))
