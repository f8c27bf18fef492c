#!/usr/bin/env bash
# Build Kubernetes control-plane binaries (and kwok) from the Go module proxy, once per version,
# into $SCALEREC_CACHE/k8s-<version>/bin.  Called by `cluster.sh build`; usable on its own:
#
#   scripts/cluster/build-k8s.sh [kube-apiserver|kube-controller-manager|kube-scheduler|kwok ...]
#
# k8s.io/kubernetes cannot be `go install`ed directly: its go.mod replaces every k8s.io/* staging
# module with a local ./staging path, which a dependent module does not see.  A small wrapper module
# requires k8s.io/kubernetes and replaces each staging module with its published v0.X.Y twin
# (generated from kubernetes' own go.mod, so the list never goes stale).  Each build appends
# "<binary> <seconds>" to build-times.tsv next to the binaries (docs/benchmarks.md quotes it).
set -euo pipefail

CACHE="${SCALEREC_CACHE:-$HOME/.cache/scalerec}"
K8S_VERSION="${SCALEREC_K8S_VERSION:-v1.31.4}"
KWOK_VERSION="${SCALEREC_KWOK_VERSION:-v0.7.0}"
GO="${GO:-/usr/local/go/bin/go}"
K8S_DIR="$CACHE/k8s-$K8S_VERSION"
BIN="$K8S_DIR/bin"

log() { printf '[cluster-build] %s\n' "$*" >&2; }
die() { printf '[cluster-build] error: %s\n' "$*" >&2; exit 1; }

[[ -x "$GO" ]] || die "no Go toolchain at $GO (set GO=...)"
mkdir -p "$BIN"
export GOFLAGS=-mod=mod
# One build at a time per version: a second caller waits, then finds the binaries cached.
exec 8>"$K8S_DIR/.build.lock"
flock -w 3600 8 || die "another build holds $K8S_DIR/.build.lock"

# The wrapper module: require kubernetes, replace each staging module by its v0.<minor>.<patch> tag.
wrapper() {
  local dir="$K8S_DIR/wrapper" staging_version="v0${K8S_VERSION#v1}" gomod
  [[ -f "$dir/.complete" ]] && { echo "$dir"; return; }
  mkdir -p "$dir"
  gomod="$(cd "$dir" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
           | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "could not fetch k8s.io/kubernetes@$K8S_VERSION's go.mod"
  {
    echo "module scalerec.local/k8s-wrapper"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    awk -v v="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }' "$gomod"
    echo ")"
  } > "$dir/go.mod"
  # A main package so `go build` resolves the module graph from here (blank imports keep it tiny).
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  (cd "$dir" && "$GO" mod tidy -e >/dev/null 2>&1 || true)
  touch "$dir/.complete"
  echo "$dir"
}

record() { # record NAME SECONDS
  printf '%s\t%s\t%s\n' "$1" "$2" "$(date -u +%FT%TZ)" >> "$K8S_DIR/build-times.tsv"
}

build_k8s() {
  local name="$1" dir start major minor
  [[ -x "$BIN/$name" ]] && { log "$name cached ($BIN/$name)"; return; }
  dir="$(wrapper)"
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  local pkg=k8s.io/component-base/version
  log "building $name $K8S_VERSION (kube-apiserver takes ~7 min on 2 cores, the others reuse its cache)"
  start=$SECONDS
  (cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -o "$BIN/$name.tmp" \
      -ldflags "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z" \
      "k8s.io/kubernetes/cmd/$name")
  mv "$BIN/$name.tmp" "$BIN/$name"
  record "$name" $((SECONDS - start))
  log "$name built in $((SECONDS - start)) s"
}

build_kwok() {
  [[ -x "$BIN/kwok" ]] && { log "kwok cached ($BIN/kwok)"; return; }
  local start=$SECONDS
  log "building kwok $KWOK_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 "$GO" install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  record kwok $((SECONDS - start))
  log "kwok built in $((SECONDS - start)) s"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(kube-apiserver kube-controller-manager kube-scheduler kwok)
for t in "${targets[@]}"; do
  case "$t" in
    kwok) build_kwok ;;
    kube-apiserver|kube-controller-manager|kube-scheduler) build_k8s "$t" ;;
    *) die "unknown binary: $t" ;;
  esac
done
