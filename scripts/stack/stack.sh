#!/usr/bin/env bash
# The real backends on this machine, without Docker: Kafka (KRaft, one process), HBase standalone
# (master + regionserver + embedded ZooKeeper in one JVM) with its Thrift1 server, and two Memcached
# nodes (two, so the client's consistent hashing really spreads keys).
#
#   scripts/stack/stack.sh up     [kafka|hbase|thrift|memcached[-PORT] ...]  fetch once, start, wait until ready
#   scripts/stack/stack.sh down   [kafka|hbase|thrift|memcached[-PORT] ...]  stop (nothing running is fine)
#   scripts/stack/stack.sh status                                     one line per server; exit 1 if any is down
#   scripts/stack/stack.sh logs   [kafka|hbase|thrift|memcached]      tail the logs
#   scripts/stack/stack.sh reset                                      stop all and delete their data
#   scripts/stack/stack.sh fetch                                      download the jars only
#   scripts/stack/stack.sh env                                        print the backend URLs for the services
#
# Idempotent: `up` on a running server leaves it alone, `down` on a stopped one is a no-op.
# Jars are cached outside the repo (SCALEREC_CACHE); data, logs and pid files live in one folder
# (SCALEREC_STACK_DIR, default var/stack/, which git ignores).  See docs/stack.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

CACHE="${SCALEREC_CACHE:-$HOME/.cache/scalerec}"
STACK_DIR="${SCALEREC_STACK_DIR:-$REPO/var/stack}"
HOST="${SCALEREC_STACK_HOST:-127.0.0.1}"
TIMEOUT="${SCALEREC_STACK_TIMEOUT:-180}"

KAFKA_VERSION="${SCALEREC_KAFKA_VERSION:-3.9.1}"
KAFKA_PORT="${SCALEREC_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${SCALEREC_KAFKA_CONTROLLER_PORT:-19093}"
# The port clients are told to connect to (metadata): another one than KAFKA_PORT puts a TCP proxy
# in every client's path (tests/faults adds latency there); the default is the listener itself.
KAFKA_ADVERTISED_PORT="${SCALEREC_KAFKA_ADVERTISED_PORT:-$KAFKA_PORT}"
KAFKA_HEAP="${SCALEREC_KAFKA_HEAP:-512m}"
# Two more listeners for the services' Kafka security settings (KAFKA_SECURITY_PROTOCOL ...), with a CA,
# broker and client certificate made here on first start (var/stack/kafka/tls): SASL_SSL (PLAIN, and
# SCRAM-SHA-512 for a user registered at start) and SSL that requires a client certificate (mutual TLS).
KAFKA_SASL_SSL_PORT="${SCALEREC_KAFKA_SASL_SSL_PORT:-19094}"
KAFKA_MTLS_PORT="${SCALEREC_KAFKA_MTLS_PORT:-19095}"
KAFKA_USER="scalerec"
KAFKA_PASSWORD="scalerec-dev-password" # a throw-away test broker's; nothing else uses it

HBASE_VERSION="${SCALEREC_HBASE_VERSION:-2.6.1-hadoop3}"
HBASE_THRIFT_VERSION="${SCALEREC_HBASE_THRIFT_VERSION:-2.6.1}"
HBASE_THRIFT_PORT="${SCALEREC_HBASE_THRIFT_PORT:-19090}"
HBASE_ZK_PORT="${SCALEREC_HBASE_ZK_PORT:-12181}"
HBASE_MASTER_PORT="${SCALEREC_HBASE_MASTER_PORT:-19160}"
HBASE_REGIONSERVER_PORT="${SCALEREC_HBASE_REGIONSERVER_PORT:-19162}"
HBASE_HEAP="${SCALEREC_HBASE_HEAP:-768m}"
HBASE_THRIFT_HEAP="${SCALEREC_HBASE_THRIFT_HEAP:-256m}"

MEMCACHED_PORTS="${SCALEREC_MEMCACHED_PORTS:-11211 11212}"
MEMCACHED_MEMORY_MB="${SCALEREC_MEMCACHED_MEMORY_MB:-64}"

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
MVN="${MVN:-mvn}"

# The flags HBase's own bin/hbase adds on JDK 11+ (netty and the WAL reach into JDK internals).
HBASE_JDK17_OPTS=(
  -Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true
  --add-modules jdk.unsupported
  --add-opens java.base/java.nio=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-exports java.base/sun.net.dns=ALL-UNNAMED
  --add-exports java.base/sun.net.util=ALL-UNNAMED
)
# Small JVMs: this stack shares a 2-core laptop-size machine with the services and the tests.
JVM_COMMON=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k -Djava.net.preferIPv4Stack=true -Djava.awt.headless=true)

LOG_TAG=stack
PROC_DIR="$STACK_DIR"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

# ---------------------------------------------------------------------------------------------------
# fetch: jars from Maven Central into the cache, once per version
# ---------------------------------------------------------------------------------------------------

kafka_lib() { echo "$CACHE/kafka-$KAFKA_VERSION/lib"; }
hbase_lib() { echo "$CACHE/hbase-$HBASE_VERSION-thrift-$HBASE_THRIFT_VERSION/lib"; }

# fetch_jars NAME POM LIBDIR -Dprop=value...: copy-dependencies into a temp dir, then rename it into
# place, so an interrupted download never leaves a half-filled lib/ that looks complete.
fetch_jars() {
  local name="$1" pom="$2" lib="$3"; shift 3
  [[ -f "$lib/.complete" ]] && return 0
  command -v "$MVN" >/dev/null || die "Maven ($MVN) is needed once to fetch $name; apt-get install -y maven"
  local tmp="$lib.tmp.$$" start=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "fetching $name jars from Maven Central (once; cached in ${lib%/lib})"
  if ! "$MVN" -q -B -f "$pom" "$@" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
    tail -20 "$tmp.mvn.log" >&2
    rm -rf "$tmp"
    die "could not fetch $name jars (see the Maven output above)"
  fi
  rm -f "$tmp.mvn.log"
  touch "$tmp/.complete"
  rm -rf "$lib"; mkdir -p "$(dirname "$lib")"; mv "$tmp" "$lib"
  log "fetched $name in $((SECONDS - start))s ($(du -sh "$lib" | cut -f1))"
}

fetch_kafka() { fetch_jars "Kafka $KAFKA_VERSION" "$HERE/kafka-pom.xml" "$(kafka_lib)" -Dkafka.version="$KAFKA_VERSION"; }
fetch_hbase() {
  fetch_jars "HBase $HBASE_VERSION" "$HERE/hbase-pom.xml" "$(hbase_lib)" \
    -Dhbase.version="$HBASE_VERSION" -Dhbase.thrift.version="$HBASE_THRIFT_VERSION"
}
fetch_openssl() {
  command -v openssl >/dev/null && return 0
  [[ $(id -u) -eq 0 ]] || die "openssl is not installed; run: sudo apt-get install -y openssl"
  log "installing openssl (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; } \
    || die "apt-get install openssl failed"
}
# A CA, the broker's certificate (for $HOST) and a client certificate, all PEM, made once: Kafka reads
# PEM key stores itself (ssl.keystore.type=PEM), Python's ssl module the CA and the client pair.
kafka_tls() {
  local tls="$1"
  [[ -s "$tls/client.key" ]] && return 0
  fetch_openssl
  mkdir -p "$tls"
  local san="subjectAltName=IP:$HOST,DNS:localhost"
  [[ "$HOST" =~ ^[0-9.]+$ ]] || san="subjectAltName=DNS:$HOST,DNS:localhost"
  (
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=scalerec stack CA" \
      -keyout ca.key -out ca.crt -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    for who in broker client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=scalerec $who" -keyout "$who.key.pkcs8" -out "$who.csr"
      printf '%s\n' "$san" "extendedKeyUsage=serverAuth,clientAuth" >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$who.ext" -out "$who.crt"
      rm -f "$who.csr" "$who.ext"
    done
    cat broker.key.pkcs8 broker.crt >broker.pem # Kafka's PEM key store: the key, then its certificate
    mv client.key.pkcs8 client.key
    rm -f broker.key.pkcs8
  ) >>"$(logfile kafka)" 2>&1 || die "making the Kafka stack's certificates failed (see $(logfile kafka))"
}
fetch_memcached() {
  command -v memcached >/dev/null && return 0
  [[ $(id -u) -eq 0 ]] || die "memcached is not installed; run: sudo apt-get install -y memcached"
  log "installing memcached (Debian package)"
  local start=$SECONDS
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null; } \
    || die "apt-get install memcached failed"
  # The package enables a system service on 11211; ours are separate daemons, so keep it off.
  if command -v systemctl >/dev/null && systemctl is-active --quiet memcached 2>/dev/null; then
    systemctl stop memcached || true
  fi
  if command -v service >/dev/null; then service memcached stop >/dev/null 2>&1 || true; fi
  log "installed memcached in $((SECONDS - start))s"
}

# ---------------------------------------------------------------------------------------------------
# process bookkeeping (scripts/lib.sh): a pid counts only if its command line carries our tag
# ---------------------------------------------------------------------------------------------------

# Every server's command line carries -Dscalerec.stack=NAME (Memcached's as its argv[0]).
owns_pid() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "scalerec.stack=$2"; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

logfile() {
  case "$1" in
    memcached-*) echo "$STACK_DIR/$1/memcached.log" ;;
    *) echo "$STACK_DIR/$1/$1.log" ;;
  esac
}

# ---------------------------------------------------------------------------------------------------
# Kafka: KRaft broker+controller in one JVM
# ---------------------------------------------------------------------------------------------------

kafka_ready() { port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$(logfile kafka)"; }

up_kafka() {
  local dir="$STACK_DIR/kafka" pid
  if pid="$(running_pid kafka)"; then log "kafka already running (pid $pid, $HOST:$KAFKA_PORT)"; return 0; fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set SCALEREC_KAFKA_PORT"
  port_open "$KAFKA_SASL_SSL_PORT" && die "port $KAFKA_SASL_SSL_PORT is taken; set SCALEREC_KAFKA_SASL_SSL_PORT"
  port_open "$KAFKA_MTLS_PORT" && die "port $KAFKA_MTLS_PORT is taken; set SCALEREC_KAFKA_MTLS_PORT"
  fetch_kafka
  mkdir -p "$dir/data"
  kafka_tls "$dir/tls"
  cat >"$dir/server.properties" <<EOF
# Written by scripts/stack/stack.sh: single-node KRaft (broker and controller in one process).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT,MTLS://$HOST:$KAFKA_MTLS_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_ADVERTISED_PORT,SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT,MTLS://$HOST:$KAFKA_MTLS_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/tls/ca.crt
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_USER="$KAFKA_PASSWORD";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.mtls.ssl.client.auth=required
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
# Consumers in tests join one by one: do not hold the first rebalance back 3 s waiting for more.
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=8388608
EOF
  cat >"$dir/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.storage=WARN
log4j.logger.kafka.log=WARN
EOF
  local cp
  cp="$(kafka_lib)/*"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local cid
    cid="$("$JAVA" -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
    "$JAVA" -Xmx256m -Dlog4j.configuration="file:$dir/log4j.properties" -cp "$cp" kafka.tools.StorageTool \
      format -t "$cid" -c "$dir/server.properties" --ignore-formatted >>"$(logfile kafka)" 2>&1 \
      || { show_tail kafka; die "formatting the Kafka log dir failed"; }
    log "formatted Kafka log dir (cluster id $cid)"
  fi
  local start=$SECONDS
  : >"$(logfile kafka).start"; mv "$(logfile kafka).start" "$(logfile kafka)"
  launch kafka "$JAVA" -Dscalerec.stack=kafka "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" "${JVM_COMMON[@]}" \
    -Dlog4j.configuration="file:$dir/log4j.properties" -cp "$cp" kafka.Kafka "$dir/server.properties"
  wait_ready kafka "Kafka" kafka_ready
  # The SCRAM user lives in the cluster's metadata: (re)registered at every start, which is idempotent.
  "$JAVA" -Xmx128m -Dlog4j.configuration="file:$dir/log4j.properties" -cp "$cp" kafka.admin.ConfigCommand \
    --bootstrap-server "$HOST:$KAFKA_PORT" --alter --entity-type users --entity-name "$KAFKA_USER" \
    --add-config "SCRAM-SHA-512=[password=$KAFKA_PASSWORD]" >>"$(logfile kafka)" 2>&1 \
    || { show_tail kafka; die "registering the Kafka stack's SCRAM user failed"; }
  log "kafka ready on $HOST:$KAFKA_PORT (SASL_SSL $KAFKA_SASL_SSL_PORT, mutual TLS $KAFKA_MTLS_PORT) in $((SECONDS - start))s (pid $(cat "$(pidfile kafka)"))"
}

# ---------------------------------------------------------------------------------------------------
# HBase: standalone HMaster (master + regionserver + ZooKeeper) and a Thrift1 server in a second JVM
# ---------------------------------------------------------------------------------------------------

hbase_ready() { port_open "$HBASE_ZK_PORT" && grep -q "Master has completed initialization" "$(logfile hbase)"; }
thrift_ready() { port_open "$HBASE_THRIFT_PORT"; }

write_hbase_conf() {
  local dir="$STACK_DIR/hbase"
  mkdir -p "$dir/conf" "$dir/data" "$dir/tmp"
  cat >"$dir/conf/hbase-site.xml" <<EOF
<?xml version="1.0"?>
<!-- Written by scripts/stack/stack.sh: standalone HBase on the local filesystem. -->
<configuration>
  <property><name>hbase.cluster.distributed</name><value>false</value></property>
  <property><name>hbase.rootdir</name><value>file://$dir/data/hbase</value></property>
  <property><name>hbase.tmp.dir</name><value>$dir/tmp</value></property>
  <property><name>hbase.zookeeper.quorum</name><value>$HOST</value></property>
  <property><name>hbase.zookeeper.property.clientPort</name><value>$HBASE_ZK_PORT</value></property>
  <property><name>hbase.zookeeper.property.dataDir</name><value>$dir/data/zookeeper</value></property>
  <property><name>hbase.master.port</name><value>$HBASE_MASTER_PORT</value></property>
  <property><name>hbase.regionserver.port</name><value>$HBASE_REGIONSERVER_PORT</value></property>
  <property><name>hbase.master.ipc.address</name><value>$HOST</value></property>
  <property><name>hbase.regionserver.ipc.address</name><value>$HOST</value></property>
  <property><name>hbase.master.info.port</name><value>-1</value></property>
  <property><name>hbase.regionserver.info.port</name><value>-1</value></property>
  <!-- The local filesystem has no hflush/hsync capability; HBase refuses it unless told it is fine. -->
  <property><name>hbase.unsafe.stream.capability.enforce</name><value>false</value></property>
  <property><name>hbase.regionserver.handler.count</name><value>16</value></property>
  <!-- One regionserver, in this JVM: stop waiting for more as soon as it reports (saves ~4.5 s). -->
  <property><name>hbase.master.wait.on.regionservers.mintostart</name><value>1</value></property>
  <property><name>hbase.master.wait.on.regionservers.maxtostart</name><value>1</value></property>
  <property><name>hbase.master.wait.on.regionservers.interval</name><value>200</value></property>
  <property><name>hbase.master.wait.on.regionservers.timeout</name><value>1000</value></property>
  <!-- Thrift1 for happybase: buffered binary transport (no framed, no compact), the thread-pool server. -->
  <property><name>hbase.regionserver.thrift.port</name><value>$HBASE_THRIFT_PORT</value></property>
  <property><name>hbase.regionserver.thrift.ipaddress</name><value>$HOST</value></property>
  <property><name>hbase.regionserver.thrift.framed</name><value>false</value></property>
  <property><name>hbase.regionserver.thrift.compact</name><value>false</value></property>
  <property><name>hbase.thrift.info.port</name><value>-1</value></property>
  <property><name>hbase.thrift.minWorkerThreads</name><value>8</value></property>
</configuration>
EOF
  cat >"$dir/conf/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{ISO8601} %-5p [%t] %c{2}: %m%n
rootLogger = INFO,console
logger.zookeeper.name = org.apache.zookeeper
logger.zookeeper.level = WARN
logger.hadoop.name = org.apache.hadoop.hbase.shaded
logger.hadoop.level = WARN
logger.hdfs.name = org.apache.hadoop.hdfs
logger.hdfs.level = WARN
logger.metrics.name = org.apache.hadoop.metrics2
logger.metrics.level = ERROR
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = ERROR
EOF
}

hbase_java() {  # hbase_java NAME HEAP MAIN ARGS...
  local name="$1" heap="$2"; shift 2
  local dir="$STACK_DIR/hbase"
  launch "$name" "$JAVA" "-Dscalerec.stack=$name" "-Xmx$heap" "${JVM_COMMON[@]}" "${HBASE_JDK17_OPTS[@]}" \
    -Dzookeeper.admin.enableServer=false \
    -Dlog4j2.configurationFile="file:$dir/conf/log4j2.properties" \
    -Dhbase.log.dir="$STACK_DIR/$name" -Dhbase.root.logger=INFO,console \
    -cp "$dir/conf:$(hbase_lib)/*" "$@"
}

up_hbase() {
  local pid start
  fetch_hbase
  if pid="$(running_pid hbase)"; then
    log "hbase already running (pid $pid, ZooKeeper $HOST:$HBASE_ZK_PORT)"
  else
    port_open "$HBASE_ZK_PORT" && die "port $HBASE_ZK_PORT is taken by another process; set SCALEREC_HBASE_ZK_PORT"
    write_hbase_conf
    mkdir -p "$STACK_DIR/hbase"; : >"$(logfile hbase)"
    start=$SECONDS
    hbase_java hbase "$HBASE_HEAP" org.apache.hadoop.hbase.master.HMaster start
    wait_ready hbase "HBase master" hbase_ready
    log "hbase ready (ZooKeeper $HOST:$HBASE_ZK_PORT) in $((SECONDS - start))s (pid $(cat "$(pidfile hbase)"))"
  fi
  up_thrift
}

# The Thrift server is stateless: it finds HBase through ZooKeeper, so `up thrift` alone may also
# start an extra one on another port against a running HBase (the fault tests restart their own).
up_thrift() {
  local pid start
  fetch_hbase
  if pid="$(running_pid thrift)"; then
    log "hbase thrift already running (pid $pid, $HOST:$HBASE_THRIFT_PORT)"
    return 0
  fi
  port_open "$HBASE_ZK_PORT" || die "HBase's ZooKeeper is not listening on $HOST:$HBASE_ZK_PORT; start hbase first"
  port_open "$HBASE_THRIFT_PORT" && die "port $HBASE_THRIFT_PORT is taken by another process; set SCALEREC_HBASE_THRIFT_PORT"
  write_hbase_conf
  mkdir -p "$STACK_DIR/thrift"; : >"$(logfile thrift)"
  start=$SECONDS
  hbase_java thrift "$HBASE_THRIFT_HEAP" org.apache.hadoop.hbase.thrift.ThriftServer \
    -p "$HBASE_THRIFT_PORT" --bind "$HOST" --infoport -1 -threadpool start
  wait_ready thrift "HBase Thrift server" thrift_ready
  log "hbase thrift ready on $HOST:$HBASE_THRIFT_PORT in $((SECONDS - start))s (pid $(cat "$(pidfile thrift)"))"
}

# ---------------------------------------------------------------------------------------------------
# Memcached: our own daemons (not the system service), one per port
# ---------------------------------------------------------------------------------------------------

memcached_ready() { port_open "$1" && [[ "$( (exec 3<>"/dev/tcp/$HOST/$1"; printf 'version\r\n' >&3; head -c 7 <&3) 2>/dev/null)" == VERSION ]]; }

up_memcached() {  # up_memcached [PORT...] (default: every port of SCALEREC_MEMCACHED_PORTS)
  fetch_memcached
  local port name pid start user=() ports=("$@")
  ((${#ports[@]})) || read -r -a ports <<<"$MEMCACHED_PORTS"
  [[ $(id -u) -eq 0 ]] && user=(-u root)  # memcached refuses to run as root unless told to
  for port in "${ports[@]}"; do
    name="memcached-$port"
    if pid="$(running_pid "$name")"; then log "$name already running (pid $pid)"; continue; fi
    port_open "$port" && die "port $port is taken by another process (a system memcached?); set SCALEREC_MEMCACHED_PORTS"
    mkdir -p "$STACK_DIR/$name"; : >"$(logfile "$name")"
    start=$SECONDS
    # The tag is in argv from the start (bash's $0), so it is there before and after the exec.
    # shellcheck disable=SC2016  # $0 and $@ are for the inner bash
    launch "$name" bash -c 'exec -a "$0" memcached "$@"' "memcached -Dscalerec.stack=$name" \
      "${user[@]}" -l "$HOST" -p "$port" -U 0 -m "$MEMCACHED_MEMORY_MB" -c 1024 -t 2
    wait_ready "$name" "Memcached on $port" memcached_ready "$port"
    log "$name ready on $HOST:$port in $((SECONDS - start))s (pid $(cat "$(pidfile "$name")"))"
  done
}

# ---------------------------------------------------------------------------------------------------

services() {  # expand service names (default: all) into server names, in start order
  local s out=()
  (($# == 0)) && set -- memcached kafka hbase
  for s in "$@"; do
    case "$s" in
      kafka) out+=(kafka) ;;
      hbase) out+=(hbase thrift) ;;
      thrift) out+=(thrift) ;;
      memcached) for p in $MEMCACHED_PORTS; do out+=("memcached-$p"); done ;;
      memcached-[0-9]*) out+=("$s") ;;
      *) die "unknown service '$s' (kafka, hbase, thrift, memcached)" ;;
    esac
  done
  echo "${out[@]}"
}

cmd_up() {
  mkdir -p "$STACK_DIR"
  local t0=$SECONDS s
  (($# == 0)) && set -- memcached kafka hbase
  for s in "$@"; do
    case "$s" in
      kafka) up_kafka ;;
      hbase) up_hbase ;;
      thrift) up_thrift ;;
      memcached) up_memcached ;;
      memcached-[0-9]*) up_memcached "${s#memcached-}" ;;
      *) die "unknown service '$s' (kafka, hbase, thrift, memcached)" ;;
    esac
  done
  log "stack up in $((SECONDS - t0))s"
  cmd_env
}

cmd_down() {
  local names name
  read -r -a names <<<"$(services "$@")"
  # Thrift first, then the master: the master flushes its regions on a clean stop.
  for name in thrift "${names[@]}"; do
    [[ " ${names[*]} " == *" $name "* ]] || continue
    stop_one "$name"
  done
}

cmd_reset() {  # stop everything and delete the data (topics, tables, offsets); jars stay cached
  cmd_down
  [[ -d "$STACK_DIR" ]] && rm -rf "$STACK_DIR"
  log "removed $STACK_DIR"
}

cmd_status() {
  local name pid bad=0
  for name in $(services); do
    if pid="$(running_pid "$name")"; then
      printf '%-16s up    pid %s\n' "$name" "$pid"
    else
      printf '%-16s down\n' "$name"
      bad=1
    fi
  done
  return $bad
}

cmd_logs() {
  local names=() name
  for name in $(services "$@"); do names+=("$(logfile "$name")"); done
  tail -n 40 "${names[@]}" 2>/dev/null || true
}

cmd_env() {
  local mc=() p
  for p in $MEMCACHED_PORTS; do mc+=("$HOST:$p"); done
  local IFS=,
  echo "BUS_URL=kafka://$HOST:$KAFKA_ADVERTISED_PORT"
  echo "STORE_URL=hbase://$HOST:$HBASE_THRIFT_PORT"
  echo "CACHE_URL=memcached://${mc[*]}"
}

# One up/down/reset at a time per stack folder: two test runs starting the stack together must
# not both find Kafka missing and race for its port.
lock_stack() { lock_dir "$TIMEOUT"; }

main() {
  local cmd="${1:-}"
  (($# > 0)) && shift
  case "$cmd" in up | down | reset) lock_stack ;; esac
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    reset) cmd_reset ;;
    fetch) fetch_kafka; fetch_hbase; fetch_memcached ;;
    env) cmd_env ;;
    *) usage "${BASH_SOURCE[0]}"; [[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help ]] ;;
  esac
}

main "$@"
