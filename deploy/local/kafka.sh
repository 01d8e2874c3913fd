#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, combined broker+controller)
# from Maven Central's jars, for local development, integration tests and CI.
# Needs only Java 17+ and Maven; no Docker, no Kafka download.
#
# Usage: deploy/local/kafka.sh {install|start|wait|stop|status|reset}
#
#   install  resolve kafka_2.13 + runtime deps + log4j2 binding into the jar cache
#            (idempotent: skipped when the cache's marker matches the POM)
#   start    install if needed, format KRaft storage if needed, start the broker
#            in the background, wait until it answers; prints the bootstrap
#            address (e.g. 127.0.0.1:19092) on stdout. Safe to call twice.
#   wait     block until the broker answers a Kafka API request (or times out)
#   stop     SIGTERM, wait for exit, SIGKILL after KAFKA_STOP_TIMEOUT seconds
#   status   print running/stopped (exit 0 when running and answering, else 3)
#   reset    stop and delete the data folder (next start formats a new cluster)
#
# Environment (all optional):
#   CASEFLOW_HOME          state root (default <repo>/.caseflow)
#   KAFKA_HOME_DIR         broker state (default $CASEFLOW_HOME/kafka)
#   KAFKA_LIBS_DIR         jar cache (default $KAFKA_HOME_DIR/libs)
#   KAFKA_DATA_DIR         log.dirs (default $KAFKA_HOME_DIR/data)
#   KAFKA_LOGS_DIR         broker logs (default $KAFKA_HOME_DIR/logs)
#   KAFKA_HOST             listen/advertise address (default 127.0.0.1)
#   KAFKA_PORT             client listener port (default 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default 19093)
#   KAFKA_HEAP             heap flags (default "-Xmx768m -Xms256m")
#   KAFKA_JVM_OPTS         extra JVM flags
#   KAFKA_EXTRA_PROPERTIES extra server.properties lines (newline-separated)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90)
#   KAFKA_STOP_TIMEOUT     seconds before SIGKILL on stop (default 30)
#   KAFKA_WAIT_PYTHON      python with aiokafka for the readiness probe
#                          (default <repo>/.venv/bin/python if it imports aiokafka)
#   JAVA                   java binary (default java from JAVA_HOME or PATH)
#   MVN                    maven binary (default mvn); MAVEN_ARGS extra mvn flags
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
POM="$SCRIPT_DIR/kafka/pom.xml"
LOG4J_CONF="$SCRIPT_DIR/kafka/log4j2.properties"

CASEFLOW_HOME=${CASEFLOW_HOME:-$REPO/.caseflow}
KAFKA_HOME_DIR=${KAFKA_HOME_DIR:-$CASEFLOW_HOME/kafka}
KAFKA_LIBS_DIR=${KAFKA_LIBS_DIR:-$KAFKA_HOME_DIR/libs}
KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-$KAFKA_HOME_DIR/data}
KAFKA_LOGS_DIR=${KAFKA_LOGS_DIR:-$KAFKA_HOME_DIR/logs}
KAFKA_HOST=${KAFKA_HOST:-127.0.0.1}
KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-19093}
KAFKA_HEAP=${KAFKA_HEAP:--Xmx768m -Xms256m}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:-}
KAFKA_EXTRA_PROPERTIES=${KAFKA_EXTRA_PROPERTIES:-}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
MVN=${MVN:-mvn}
if [[ -z "${JAVA:-}" ]]; then
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA=$JAVA_HOME/bin/java; else JAVA=java; fi
fi

PID_FILE="$KAFKA_HOME_DIR/kafka.pid"
PROPS_FILE="$KAFKA_HOME_DIR/server.properties"
OUT_FILE="$KAFKA_LOGS_DIR/kafka.out"
SERVER_LOG="$KAFKA_LOGS_DIR/server.log"
LIBS_MARKER="$KAFKA_LIBS_DIR/.caseflow-complete"
FORMAT_STAMP="$KAFKA_DATA_DIR/.caseflow-format"
BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1
}

# The cache is valid for exactly this POM (kafka + log4j versions).
libs_stamp() {
  { cat "$POM"; echo "cache-format=1"; } | sha256sum | cut -d' ' -f1
}

# The data dir is valid for this Kafka version and these listener ports
# (--standalone writes the controller endpoint into the metadata log).
format_stamp() {
  echo "kafka=$(kafka_version) host=$KAFKA_HOST port=$KAFKA_PORT controller=$KAFKA_CONTROLLER_PORT"
}

with_lock() {
  mkdir -p "$KAFKA_HOME_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$KAFKA_HOME_DIR/.lock"
    flock -w 600 9 || die "could not take $KAFKA_HOME_DIR/.lock"
  fi
}

# ---------------------------------------------------------------- install
cmd_install() {
  if [[ -f "$LIBS_MARKER" && "$(cat "$LIBS_MARKER")" == "$(libs_stamp)" ]]; then
    return 0
  fi
  command -v "$MVN" >/dev/null 2>&1 || die "maven ($MVN) not found"
  local tmp="$KAFKA_LIBS_DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$KAFKA_LIBS_DIR")"
  log "resolving org.apache.kafka:kafka_2.13:$(kafka_version) and runtime deps into $KAFKA_LIBS_DIR"
  # shellcheck disable=SC2086
  # (sed: Debian's Maven 3.8 prints bare ANSI resets even with -B -q.)
  if ! "$MVN" -q -B -Dstyle.color=never ${MAVEN_ARGS:-} -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2; then
    rm -rf "$tmp"
    die "maven could not resolve the Kafka jars"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka_2.13 jar missing after resolve"; }
  libs_stamp >"$tmp/.caseflow-complete"
  rm -rf "$KAFKA_LIBS_DIR"
  mv "$tmp" "$KAFKA_LIBS_DIR"
  log "installed $(find "$KAFKA_LIBS_DIR" -name '*.jar' | wc -l) jars"
}

# ---------------------------------------------------------------- helpers
java_base() {
  # Classpath wildcard: the JVM expands dir/* to every jar in it.
  # shellcheck disable=SC2206
  JAVA_CMD=("$JAVA" $KAFKA_HEAP
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15
    -Djava.awt.headless=true
    -Dkafka.logs.dir="$KAFKA_LOGS_DIR"
    -Dlog4j2.configurationFile="$LOG4J_CONF"
    $KAFKA_JVM_OPTS
    -cp "$KAFKA_LIBS_DIR/*")
}

pid_alive() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: it must be our broker.
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka' || return 1
  fi
  echo "$pid"
}

tcp_open() {
  (exec 3<>"/dev/tcp/$KAFKA_HOST/$KAFKA_PORT") 2>/dev/null
}

probe_python() {
  local py=${KAFKA_WAIT_PYTHON:-$REPO/.venv/bin/python}
  [[ -x "$py" ]] || return 1
  "$py" -c 'import aiokafka' >/dev/null 2>&1 || return 1
  echo "$py"
}

write_properties() {
  mkdir -p "$KAFKA_HOME_DIR" "$KAFKA_DATA_DIR" "$KAFKA_LOGS_DIR"
  cat >"$PROPS_FILE" <<EOF
# Generated by deploy/local/kafka.sh; edits are overwritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA_DIR

# Single-node test broker.
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
# Test stacks delete their topics when done: free their files at once, not after a minute.
file.delete.delay.ms=1000
EOF
  if [[ -n "$KAFKA_EXTRA_PROPERTIES" ]]; then
    printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$PROPS_FILE"
  fi
}

format_storage() {
  local want
  want=$(format_stamp)
  if [[ -f "$FORMAT_STAMP" && -f "$KAFKA_DATA_DIR/meta.properties" ]]; then
    [[ "$(cat "$FORMAT_STAMP")" == "$want" ]] && return 0
    log "data dir was formatted for '$(cat "$FORMAT_STAMP")', now '$want': wiping $KAFKA_DATA_DIR"
  fi
  rm -rf "$KAFKA_DATA_DIR"
  mkdir -p "$KAFKA_DATA_DIR"
  java_base
  local cluster_id
  cluster_id=$("${JAVA_CMD[@]}" kafka.tools.StorageTool random-uuid 2>>"$OUT_FILE" | tail -n1)
  [[ -n "$cluster_id" ]] || die "StorageTool random-uuid failed (see $OUT_FILE)"
  log "formatting KRaft storage in $KAFKA_DATA_DIR (cluster id $cluster_id)"
  if ! "${JAVA_CMD[@]}" kafka.tools.StorageTool format --standalone \
        --cluster-id "$cluster_id" --config "$PROPS_FILE" >>"$OUT_FILE" 2>&1; then
    die "StorageTool format failed; last lines of $OUT_FILE:
$(tail -n 20 "$OUT_FILE")"
  fi
  echo "$want" >"$FORMAT_STAMP"
}

# ---------------------------------------------------------------- wait
# Blocks until a Kafka API request succeeds (describe cluster with >=1 broker).
cmd_wait() {
  local timeout=${1:-$KAFKA_START_TIMEOUT}
  local pid
  pid=$(pid_alive || true)
  local py
  if py=$(probe_python); then
    "$py" - "$BOOTSTRAP" "$timeout" "${pid:-0}" <<'PY'
import asyncio, logging, os, sys, time, warnings

logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")
from aiokafka.admin import AIOKafkaAdminClient

bootstrap, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])


def alive(p):
    try:
        os.kill(p, 0)
        return True
    except OSError:
        return False


async def probe():
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 10)
        return bool(cluster.get("brokers"))
    finally:
        try:
            await admin.close()
        except Exception:
            pass


async def main():
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if pid and not alive(pid):
            print(f"kafka.sh: broker process {pid} exited", file=sys.stderr)
            return 2
        try:
            if await probe():
                return 0
            last = "no brokers in metadata yet"
        except Exception as e:  # not up yet
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            print(f"kafka.sh: {bootstrap} not ready after {timeout:.0f}s ({last})", file=sys.stderr)
            return 1
        await asyncio.sleep(0.25)


sys.exit(asyncio.run(main()))
PY
    return $?
  fi
  # Fallback without aiokafka: TCP port open + the broker's own "started" line.
  local deadline=$((SECONDS + ${timeout%.*}))
  while :; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "broker process $pid exited"; return 2
    fi
    if tcp_open && grep -q 'Kafka Server started' "$SERVER_LOG" 2>/dev/null; then
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "$BOOTSTRAP not ready after ${timeout}s"; return 1
    fi
    sleep 0.25
  done
}

# ---------------------------------------------------------------- start
cmd_start() {
  with_lock
  local pid
  if pid=$(pid_alive); then
    log "already running (pid $pid)"
    cmd_wait || die "broker pid $pid is running but not answering on $BOOTSTRAP"
    echo "$BOOTSTRAP"
    return 0
  fi
  rm -f "$PID_FILE"
  if tcp_open; then
    die "$BOOTSTRAP is already in use by another process (not started by this script)"
  fi
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (need Java 17+)"

  cmd_install
  write_properties
  # Fresh server.log / kafka.out per run, so the logs (and the fallback
  # readiness grep) only ever describe the current broker.
  if [[ -f "$SERVER_LOG" ]]; then mv -f "$SERVER_LOG" "$KAFKA_LOGS_DIR/server.prev.log"; fi
  if [[ -f "$OUT_FILE" ]]; then mv -f "$OUT_FILE" "$KAFKA_LOGS_DIR/kafka.prev.out"; fi
  format_storage

  java_base
  log "starting Kafka $(kafka_version) on $BOOTSTRAP (controller :$KAFKA_CONTROLLER_PORT), logs in $KAFKA_LOGS_DIR"
  # setsid: own session, so the broker outlives the calling shell / job.
  # The inner shell writes its own pid, then execs java (same pid).
  # 9>&- : the broker must not inherit the flock fd (it would hold the lock).
  local launcher=()
  command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  "${launcher[@]}" bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    "${JAVA_CMD[@]}" kafka.Kafka "$PROPS_FILE" \
    </dev/null >>"$OUT_FILE" 2>&1 9>&- &
  local i
  for ((i = 0; i < 100; i++)); do [[ -s "$PID_FILE" ]] && break; sleep 0.05; done
  [[ -s "$PID_FILE" ]] || die "broker did not write $PID_FILE"

  if ! cmd_wait "$KAFKA_START_TIMEOUT"; then
    log "broker failed to become ready; last lines of $SERVER_LOG and $OUT_FILE:"
    tail -n 30 "$SERVER_LOG" >&2 2>/dev/null || true
    tail -n 30 "$OUT_FILE" >&2 2>/dev/null || true
    cmd_stop >/dev/null 2>&1 || true
    exit 1
  fi
  echo "$BOOTSTRAP"
}

# ---------------------------------------------------------------- stop
cmd_stop() {
  local pid
  if ! pid=$(pid_alive); then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "still running after ${KAFKA_STOP_TIMEOUT}s: kill -9 $pid"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  log "stopped"
}

# ---------------------------------------------------------------- status
cmd_status() {
  local pid
  if pid=$(pid_alive); then
    if cmd_wait 5 2>/dev/null; then
      echo "running pid=$pid bootstrap=$BOOTSTRAP version=$(kafka_version)"
      return 0
    fi
    echo "starting-or-unhealthy pid=$pid bootstrap=$BOOTSTRAP"
    return 3
  fi
  echo "stopped"
  return 3
}

cmd_reset() {
  cmd_stop
  rm -rf "$KAFKA_DATA_DIR"
  log "deleted $KAFKA_DATA_DIR"
}

case "${1:-}" in
  install) with_lock; cmd_install ;;
  start) cmd_start ;;
  wait) cmd_wait "${2:-$KAFKA_START_TIMEOUT}" ;;
  stop) with_lock; cmd_stop ;;
  status) cmd_status ;;
  reset) with_lock; cmd_reset ;;
  *)
    echo "usage: $0 {install|start|wait [timeout]|stop|status|reset}" >&2
    exit 2
    ;;
esac
