#!/usr/bin/env bash
# Builds the `helm` CLI from the Go module proxy into the ScaleRec tool cache.
#
# Why build instead of download: the only things reachable from our machines
# and CI are package registries, and the Go module proxy serves Helm's source
# (helm.sh/helm/v3). `go install` of a pinned version is reproducible.
#
# Idempotent: does nothing when the pinned version is already there.
#   HELM_VERSION    pinned Helm release (default below)
#   SCALEREC_CACHE  tool cache root (default ~/.cache/scalerec); helm lands in $SCALEREC_CACHE/bin
# Prints the path of the helm binary on its last line.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${SCALEREC_CACHE:-$HOME/.cache/scalerec}"
BIN_DIR="$CACHE/bin"
HELM="$BIN_DIR/helm"

installed_version() {
  # `helm version --template` prints e.g. v3.22.0; empty when the binary is missing/broken.
  [[ -x "$HELM" ]] && "$HELM" version --template '{{.Version}}' 2>/dev/null || true
}

if [[ "$(installed_version)" == "$HELM_VERSION" ]]; then
  echo "helm $HELM_VERSION already at $HELM" >&2
  echo "$HELM"
  exit 0
fi

command -v go >/dev/null || { echo "install-helm: 'go' is needed to build helm (apt-get install golang or use the Go toolchain)" >&2; exit 1; }

mkdir -p "$BIN_DIR"
echo "building helm $HELM_VERSION with $(go version) into $BIN_DIR (takes a few minutes on a fresh cache)" >&2
start=$(date +%s)
# CGO off: a static binary that does not depend on the build machine's libc.
# -trimpath and -buildvcs=false: reproducible, and no VCS lookup (there is no checkout).
# Helm's own Makefile stamps, through ldflags, its version and the Kubernetes
# version that `helm template`/`lint` assume (1.<client-go minor>); a plain
# `go install` would report a dev version and assume Kubernetes 1.20.
gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
k8s_minor=$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2] }' "$gomod")
[[ -n "$k8s_minor" ]] || { echo "install-helm: cannot read k8s.io/client-go's version from $gomod" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
CGO_ENABLED=0 GOBIN="$BIN_DIR" GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
  go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
echo "built helm $("$HELM" version --template '{{.Version}}') in $(( $(date +%s) - start ))s" >&2
echo "$HELM"
