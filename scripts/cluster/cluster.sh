#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, without containers or a kubelet: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler (built once from the Go module proxy),
# kwok for fake nodes (an ordinary pool and one GPU node), and the CRDs the chart renders objects of.
#
#   scripts/cluster/cluster.sh up       build/fetch once, start, wait until ready, register nodes + CRDs
#   scripts/cluster/cluster.sh down     stop every process (nothing running is fine); state stays
#   scripts/cluster/cluster.sh status   one line per process; exit 1 if any is down
#   scripts/cluster/cluster.sh env      print KUBECONFIG=... for kubectl and helm
#   scripts/cluster/cluster.sh logs     [etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok]
#   scripts/cluster/cluster.sh reset    stop all and delete etcd's data, certificates and kubeconfigs
#   scripts/cluster/cluster.sh build    build the binaries, install etcd, fetch the CRDs (no start)
#
# Idempotent: `up` on a running control plane leaves it alone (and re-applies nodes and CRDs),
# `down` on a stopped one is a no-op.  Binaries are cached outside the repo (SCALEREC_CACHE); etcd
# data, certificates, kubeconfigs, logs and pid files live in SCALEREC_CLUSTER_DIR (default
# var/cluster/, which git ignores).  Nodes are kwok's fakes: pods are scheduled onto them by the real
# scheduler and reported Running/Ready, but no container runs.  See docs/kubernetes.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

CACHE="${SCALEREC_CACHE:-$HOME/.cache/scalerec}"
CLUSTER_DIR="${SCALEREC_CLUSTER_DIR:-$REPO/var/cluster}"
TIMEOUT="${SCALEREC_CLUSTER_TIMEOUT:-180}"
K8S_VERSION="${SCALEREC_K8S_VERSION:-v1.31.4}"
export SCALEREC_K8S_VERSION="$K8S_VERSION"
BIN="$CACHE/k8s-$K8S_VERSION/bin"
GO="${GO:-/usr/local/go/bin/go}"
KUBECTL="${KUBECTL:-$(command -v kubectl || echo /usr/bin/kubectl)}"

# The address the API server advertises (the `kubernetes` Service's endpoint): the host's own
# address, as on a real node; 127.0.0.1 would point every in-cluster client at itself.
HOST_IP="${SCALEREC_CLUSTER_HOST:-$(ip -4 route get 1.0.0.0 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}"
HOST_IP="${HOST_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
ETCD_PORT="${SCALEREC_CLUSTER_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${SCALEREC_CLUSTER_ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${SCALEREC_CLUSTER_APISERVER_PORT:-16443}"
CONTROLLER_MANAGER_PORT="${SCALEREC_CLUSTER_CONTROLLER_MANAGER_PORT:-20257}"
SCHEDULER_PORT="${SCALEREC_CLUSTER_SCHEDULER_PORT:-20259}"
KWOK_PORT="${SCALEREC_CLUSTER_KWOK_PORT:-20247}"
SERVICE_CIDR="${SCALEREC_CLUSTER_SERVICE_CIDR:-10.96.0.0/16}"
SERVICE_IP="${SCALEREC_CLUSTER_SERVICE_IP:-10.96.0.1}"
POD_CIDR="${SCALEREC_CLUSTER_POD_CIDR:-10.244.0.0/16}"

# Where each CRD comes from: the upstream project's own YAML inside its Go module zip, fetched through
# the module proxy (no copies committed, nothing downloaded from elsewhere).
KEDA_MODULE="${SCALEREC_KEDA_MODULE:-github.com/kedacore/keda/v2@v2.16.1}"
KEDA_CRDS=(config/crd/bases/keda.sh_scaledobjects.yaml)
PROMETHEUS_OPERATOR_MODULE="${SCALEREC_PROMETHEUS_OPERATOR_MODULE:-github.com/prometheus-operator/prometheus-operator@v0.85.0}"
PROMETHEUS_OPERATOR_CRDS=(example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
                          example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml)

PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

LOG_TAG=cluster
PROC_DIR="$CLUSTER_DIR"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

PKI="$CLUSTER_DIR/pki"
ADMIN_KUBECONFIG="$CLUSTER_DIR/kubeconfig"
ETCD_BIN="${SCALEREC_ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"

# ---------------------------------------------------------------------------------------------------
# build: control-plane binaries and kwok from the module proxy, etcd from Debian, CRDs from modules
# ---------------------------------------------------------------------------------------------------

build_binaries() {
  local missing=() b
  for b in kube-apiserver kube-controller-manager kube-scheduler kwok; do
    [[ -x "$BIN/$b" ]] || missing+=("$b")
  done
  ((${#missing[@]} == 0)) || "$HERE/build-k8s.sh" "${missing[@]}"
}

install_etcd() {
  [[ -x "$ETCD_BIN" ]] && return 0
  ((EUID == 0)) || die "etcd is missing: as root, apt-get install -y etcd-server (or set SCALEREC_ETCD)"
  log "installing Debian's etcd-server"
  # Another apt-get on this machine holds the lock for a while: wait for it rather than fail.
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq etcd-server >/dev/null 2>&1 ||
    { apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null && \
      apt-get -o DPkg::Lock::Timeout=600 install -y -qq etcd-server >/dev/null; } ||
    die "apt-get install etcd-server failed"
  ETCD_BIN="$(command -v etcd)"
}

# module_dir MODULE@VERSION: the module's unpacked source in the Go module cache (downloaded once).
module_dir() {
  local tmp dir
  tmp="$(mktemp -d)"
  # `go mod download` wants a module context; an empty throwaway one will do.
  dir="$(cd "$tmp" && GOFLAGS=-mod=mod "$GO" mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  rm -rf "$tmp"
  [[ -d "$dir" ]] || die "could not fetch $1 through the Go module proxy"
  echo "$dir"
}

crd_files() {  # every CRD YAML the cluster installs, one path per line
  local dir f
  dir="$(module_dir "$KEDA_MODULE")"
  for f in "${KEDA_CRDS[@]}"; do echo "$dir/$f"; done
  dir="$(module_dir "$PROMETHEUS_OPERATOR_MODULE")"
  for f in "${PROMETHEUS_OPERATOR_CRDS[@]}"; do echo "$dir/$f"; done
}

cmd_build() {
  build_binaries
  install_etcd
  crd_files >/dev/null
  log "binaries in $BIN; etcd $("$ETCD_BIN" --version 2>/dev/null | head -1)"
}

# ---------------------------------------------------------------------------------------------------
# certificates (openssl) and kubeconfigs: one CA, a serving cert for the API server, a client cert per
# component (the RBAC user names the bootstrap policy already grants), the service-account key pair
# ---------------------------------------------------------------------------------------------------

issue_cert() {  # issue_cert NAME SUBJECT EXTENSIONS
  local name="$1" subj="$2" ext="$3"
  [[ -f "$PKI/$name.crt" ]] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

write_kubeconfig() {  # write_kubeconfig FILE CERT-NAME
  local file="$1" name="$2"
  local k=("$KUBECTL" --kubeconfig="$file")
  "${k[@]}" config set-cluster scalerec --server="https://$HOST_IP:$APISERVER_PORT" \
    --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
  "${k[@]}" config set-credentials "$name" --client-certificate="$PKI/$name.crt" \
    --client-key="$PKI/$name.key" --embed-certs=true >/dev/null
  "${k[@]}" config set-context scalerec --cluster=scalerec --user="$name" >/dev/null
  "${k[@]}" config use-context scalerec >/dev/null
}

make_pki() {
  mkdir -p "$PKI"
  # A certificate for another address (the host's address changed) is useless: start over.
  if [[ -f "$PKI/apiserver.crt" ]] && ! openssl x509 -in "$PKI/apiserver.crt" -noout -text | grep -q "IP Address:$HOST_IP"; then
    log "host address is now $HOST_IP: new certificates"
    rm -f "$PKI"/*.crt "$PKI"/*.key "$CLUSTER_DIR"/*.kubeconfig "$ADMIN_KUBECONFIG"
  fi
  if [[ ! -f "$PKI/ca.crt" ]]; then
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=scalerec-cluster-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$PKI/ca.crt" 2>/dev/null
  fi
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  issue_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$HOST_IP,IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert admin "/O=system:masters/CN=scalerec-admin" "$client"
  issue_cert kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  issue_cert kube-scheduler "/CN=system:kube-scheduler" "$client"
  # kwok plays every kubelet: it writes node and pod status, so it gets the admin group.
  issue_cert kwok "/O=system:masters/CN=kwok" "$client"
  if [[ ! -f "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  [[ -f "$ADMIN_KUBECONFIG" ]] || write_kubeconfig "$ADMIN_KUBECONFIG" admin
  local c
  for c in kube-controller-manager kube-scheduler kwok; do
    [[ -f "$CLUSTER_DIR/$c.kubeconfig" ]] || write_kubeconfig "$CLUSTER_DIR/$c.kubeconfig" "$c"
  done
  chmod 600 "$PKI"/*.key "$CLUSTER_DIR"/*.kubeconfig "$ADMIN_KUBECONFIG"
}

# ---------------------------------------------------------------------------------------------------
# process bookkeeping (scripts/lib.sh): a pid counts only if its command line names this cluster's folder
# ---------------------------------------------------------------------------------------------------

logfile() { echo "$CLUSTER_DIR/$1/$1.log"; }

# Its command line names this cluster's folder (every process gets a file from it).
owns_pid() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$CLUSTER_DIR/"; }

kubectl_() { "$KUBECTL" --kubeconfig="$ADMIN_KUBECONFIG" --request-timeout=20s "$@"; }

healthz() {  # healthz PORT: a component's own /healthz over TLS (self-signed serving cert)
  curl -fsSk --max-time 2 "https://127.0.0.1:$1/healthz" | grep -q '^ok$'
}

# ---------------------------------------------------------------------------------------------------
# the processes
# ---------------------------------------------------------------------------------------------------

up_etcd() {
  running_pid etcd >/dev/null && return 0
  mkdir -p "$CLUSTER_DIR/etcd/data"
  chmod 700 "$CLUSTER_DIR/etcd/data"
  # Loopback only, no TLS: the API server on this host is its one client.
  launch etcd "$ETCD_BIN" --name scalerec \
    --data-dir "$CLUSTER_DIR/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "scalerec=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 1073741824 --snapshot-count 10000
  wait_ready etcd etcd curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
  log "etcd ready on 127.0.0.1:$ETCD_PORT"
}

up_apiserver() {
  running_pid kube-apiserver >/dev/null && return 0
  launch kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --advertise-address "$HOST_IP" --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --enable-admission-plugins NodeRestriction \
    --profiling=false --audit-log-path "" \
    --cert-dir "$CLUSTER_DIR/kube-apiserver"
  wait_ready kube-apiserver kube-apiserver kubectl_ get --raw /readyz
  log "kube-apiserver $K8S_VERSION ready on https://$HOST_IP:$APISERVER_PORT"
}

up_controller_manager() {
  running_pid kube-controller-manager >/dev/null && return 0
  local kc="$CLUSTER_DIR/kube-controller-manager.kubeconfig"
  launch kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" \
    --cert-dir "$CLUSTER_DIR/kube-controller-manager" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --cluster-cidr "$POD_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" \
    --allocate-node-cidrs=false
  wait_ready kube-controller-manager kube-controller-manager healthz "$CONTROLLER_MANAGER_PORT"
  log "kube-controller-manager ready"
}

up_scheduler() {
  running_pid kube-scheduler >/dev/null && return 0
  local kc="$CLUSTER_DIR/kube-scheduler.kubeconfig"
  launch kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
    --cert-dir "$CLUSTER_DIR/kube-scheduler" --leader-elect=false
  wait_ready kube-scheduler kube-scheduler healthz "$SCHEDULER_PORT"
  log "kube-scheduler ready"
}

kwok_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz" | grep -q ok; }

up_kwok() {
  running_pid kwok >/dev/null && return 0
  # Only nodes that say so are kwok's (nodes.yaml annotates them); the default stages make them
  # Ready and take each pod bound to them through Running/Ready, Job pods to Succeeded.  Without a
  # node lease kwok heartbeats through node status every 20-45 s, longer than the controller
  # manager's 40 s grace: nodes flapped NotReady and their pods lost Ready. Leases as kubelets do.
  launch kwok "$BIN/kwok" --kubeconfig "$CLUSTER_DIR/kwok.kubeconfig" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --disregard-status-with-annotation-selector kwok.x-k8s.io/status=custom \
    --cidr "$POD_CIDR" --node-ip "$HOST_IP" \
    --node-lease-duration-seconds 40 \
    --server-address "127.0.0.1:$KWOK_PORT"
  wait_ready kwok kwok kwok_ready
  log "kwok ready"
}

apply_nodes() {
  kubectl_ apply -f "$HERE/nodes.yaml" >/dev/null
  local deadline=$((SECONDS + TIMEOUT)) n
  n="$(grep -c '^kind: Node$' "$HERE/nodes.yaml")"
  until [[ "$(kubectl_ get nodes -l scalerec.dev/cluster=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" == "$n" ]]; do
    ((SECONDS < deadline)) || { show_tail kwok; die "kwok nodes not Ready after ${TIMEOUT}s"; }
    sleep 0.5
  done
  log "$n nodes Ready (kwok)"
}

apply_crds() {
  local f args=()
  while read -r f; do args+=(-f "$f"); done < <(crd_files)
  # Server-side: the CRDs' annotations are too large for client-side apply's last-applied copy.
  kubectl_ apply --server-side --force-conflicts "${args[@]}" >/dev/null
  kubectl_ wait --for condition=established --timeout="${TIMEOUT}s" \
    crd/scaledobjects.keda.sh crd/servicemonitors.monitoring.coreos.com crd/podmonitors.monitoring.coreos.com >/dev/null
  log "CRDs established: ScaledObject (KEDA), ServiceMonitor and PodMonitor (Prometheus operator)"
}

cmd_up() {
  local t0=$SECONDS
  [[ -n "$HOST_IP" ]] || die "could not find this host's address (set SCALEREC_CLUSTER_HOST)"
  cmd_build
  mkdir -p "$CLUSTER_DIR"
  make_pki
  up_etcd
  up_apiserver
  up_controller_manager
  up_scheduler
  up_kwok
  apply_nodes
  apply_crds
  log "cluster up in $((SECONDS - t0))s"
  cmd_env
}

cmd_down() {
  local i
  for ((i = ${#PROCS[@]} - 1; i >= 0; i--)); do stop_one "${PROCS[i]}"; done
}

cmd_reset() {
  cmd_down
  [[ -d "$CLUSTER_DIR" ]] && rm -rf "$CLUSTER_DIR"
  log "removed $CLUSTER_DIR"
}

cmd_status() {
  local name pid bad=0
  for name in "${PROCS[@]}"; do
    if pid="$(running_pid "$name")"; then
      printf '%-24s up    pid %s\n' "$name" "$pid"
    else
      printf '%-24s down\n' "$name"
      bad=1
    fi
  done
  return $bad
}

cmd_logs() {
  local names=() name
  (($# == 0)) && set -- "${PROCS[@]}"
  for name in "$@"; do names+=("$(logfile "$name")"); done
  tail -n 40 "${names[@]}" 2>/dev/null || true
}

cmd_env() { echo "KUBECONFIG=$ADMIN_KUBECONFIG"; }

# The first `up` on a fresh machine builds the binaries (minutes): wait that long for it.
lock_cluster() { lock_dir 3600; }

main() {
  local cmd="${1:-}"
  (($# > 0)) && shift
  case "$cmd" in up | down | reset) lock_cluster ;; esac
  case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    reset) cmd_reset ;;
    build) cmd_build ;;
    env) cmd_env ;;
    *) usage "${BASH_SOURCE[0]}"; [[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help ]] ;;
  esac
}

main "$@"
