#!/usr/bin/env bash
# The project's images, built from its own Dockerfiles with podman on this machine: no Docker
# engine, no reachable image registry. The base image is made locally with debootstrap.
#
#   scripts/images/build.sh [build] [IMAGE ...]  install the tools once, make the base once, build
#                                                IMAGE... (default: the images $IMAGES selects)
#   scripts/images/build.sh base                 the base image only
#   scripts/images/build.sh list                 the images $IMAGES selects, one a line
#   scripts/images/build.sh args IMAGE           its Dockerfile and build arguments, from skaffold.yaml
#   scripts/images/build.sh env                  the CONTAINERS_* variables podman needs here
#   scripts/images/build.sh report               the last measured build time and size of each image
#   scripts/images/build.sh clean                delete every image and the storage (the base too)
#
# IMAGES: "default" (collector preprocessor ranker evaluator loadtests) or "all" (adds the trainer,
# whose torch wheels are several GB), or a list of names.
# State lives in ${SCALEREC_CACHE:-~/.cache/scalerec}/images: podman's storage (images, layers),
# containers.conf, build logs and the report. Kept between runs: the base image, every layer whose
# inputs did not change, and pip's download cache (RUN --mount=type=cache, under /var/tmp); an image
# a rebuild replaced is removed, and so are the build stages of earlier runs (prune_stale_stages).
# Needs root (apt-get, debootstrap, chroot, podman's storage). See docs/kubernetes.md "Images".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

CACHE="${SCALEREC_CACHE:-$HOME/.cache/scalerec}"
STATE="$CACHE/images"
# Debian bookworm's python3 is 3.11 (3.11.2), at /usr/bin: not the Docker Hub python image (which
# builds its own under /usr/local), so the tag names what it is. Its fixed tag is written once, as the
# default PYTHON_IMAGE of services/Dockerfile (every Dockerfile says the same; a chart test checks):
# bump the number there when the recipe below changes.
BASE="${SCALEREC_BASE_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$REPO/services/Dockerfile")}"
[[ -n "$BASE" ]] || { echo "[images] error: no ARG PYTHON_IMAGE= in services/Dockerfile" >&2; exit 1; }
BASE_PYTHON="3.11"
# The chart's default image tag is its appVersion: the images are tagged so that the chart's own
# references (scalerec/<name>:<appVersion>) find them.
TAG="${SCALEREC_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO/charts/scalerec/Chart.yaml")}"

DEFAULT_IMAGES=(collector preprocessor ranker evaluator loadtests)
ALL_IMAGES=(collector preprocessor trainer ranker evaluator loadtests)

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

selected() {
  case "${IMAGES:-default}" in
    default) printf '%s\n' "${DEFAULT_IMAGES[@]}" ;;
    all) printf '%s\n' "${ALL_IMAGES[@]}" ;;
    *) tr ' ,' '\n\n' <<<"$IMAGES" | sed '/^$/d' ;;
  esac
}

# How to build an image is written once, in skaffold.yaml: the artifact scalerec/NAME's Dockerfile
# and buildArgs (services/Dockerfile takes SERVICE, EXTRAS, PORT). Prints "dockerfile PATH", then
# "arg KEY=VALUE" for each build argument.
artifact() {
  local found
  found=$(awk -v want="scalerec/$1" '
    function indent(s) { match(s, /^ */); return RLENGTH }
    function unquote(s) { gsub(/^["\047 ]+|["\047 ]+$/, "", s); return s }
    /^ *- image: / { line = $0; sub(/^ *- image: */, "", line); on = (unquote(line) == want); args = -1; next }
    !on { next }
    /^ *(- |[a-z]+:$)/ && indent($0) <= item { on = 0; next }
    /^ *dockerfile: / { line = $0; sub(/^ *dockerfile: */, "", line); print "dockerfile " unquote(line); next }
    /^ *buildArgs: *$/ { args = indent($0); next }
    args >= 0 && indent($0) > args && /^ *[A-Z_]+: / {
      key = $0; sub(/^ */, "", key); sub(/:.*/, "", key)
      value = $0; sub(/^ *[A-Z_]+: */, "", value)
      print "arg " key "=" unquote(value); next
    }
    args >= 0 && indent($0) <= args { args = -1 }
    ' "$REPO/skaffold.yaml")
  [[ "$found" == dockerfile* ]] || die "unknown image '$1': no artifact scalerec/$1 in skaffold.yaml (known: ${ALL_IMAGES[*]})"
  echo "$found"
}

dockerfile() { artifact "$1" | sed -n 's/^dockerfile //p'; }

# ---------------------------------------------------------------------------------------------------
# podman's configuration: the quirks of these VMs, in files of our own (the system's stay untouched)
# ---------------------------------------------------------------------------------------------------

write_config() {
  mkdir -p "$STATE/storage" "$STATE/logs"
  # crun refuses the hybrid cgroup v1/v2 layout of these VMs: runc. Raising rlimits above the
  # container's inherited ones is not permitted here, so podman must ask for values it may set.
  # PID 1 is not systemd: cgroupfs, and events to a file rather than the journal.
  cat >"$STATE/containers.conf" <<EOF
# Written by scripts/images/build.sh; CONTAINERS_CONF names it.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$STATE/events.log"
EOF
  cat >"$STATE/storage.conf" <<EOF
# Written by scripts/images/build.sh; CONTAINERS_STORAGE_CONF names it.
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "/run/scalerec-images"
EOF
}

export_env() {
  export CONTAINERS_CONF="$STATE/containers.conf" CONTAINERS_STORAGE_CONF="$STATE/storage.conf"
}

# ---------------------------------------------------------------------------------------------------
# tools from Debian, once
# ---------------------------------------------------------------------------------------------------

install_tools() {
  local missing=() tool
  for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || die "${missing[*]} missing; as root: apt-get install -y ${missing[*]}"
  log "installing ${missing[*]} (Debian packages, once)"
  local start=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
  log "installed ${missing[*]} in $((SECONDS - start))s"
}

# ---------------------------------------------------------------------------------------------------
# the base image: Debian bookworm minbase + python3, venv and pip, made with debootstrap
# ---------------------------------------------------------------------------------------------------

# The Debian mirror apt is configured with (deb822 .sources first, then sources.list).
apt_mirror() {
  local f mirror=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    # The URIs of the first stanza whose Suites include plain "bookworm" (not -security/-updates).
    mirror=$(awk 'BEGIN { RS = ""; FS = "\n" }
      {
        uri = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == "bookworm") ok = 1 }
        }
        if (ok && uri != "") { print uri; exit }
      }' "$f")
    [[ -n "$mirror" ]] && break
  done
  if [[ -z "$mirror" && -f /etc/apt/sources.list ]]; then
    mirror=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)
  fi
  echo "${mirror:-http://deb.debian.org/debian}"
}

make_base() {
  if podman image exists "$BASE"; then
    log "base $BASE already built (kept between runs)"
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "making the base image needs root (debootstrap, chroot)"
  local mirror rootfs="$STATE/base-rootfs" start=$SECONDS version
  mirror=$(apt_mirror)
  log "making $BASE with debootstrap from $mirror (once, about a minute)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
    bookworm "$rootfs" "$mirror" >"$STATE/logs/base.log" 2>&1 \
    || { tail -20 "$STATE/logs/base.log" >&2; die "debootstrap failed (log: $STATE/logs/base.log)"; }
  # `python` as the Dockerfiles call it (the python image has it; Debian's python3 needs this package).
  chroot "$rootfs" apt-get install -y -qq python-is-python3 >>"$STATE/logs/base.log" 2>&1 \
    || { tail -20 "$STATE/logs/base.log" >&2; die "python-is-python3 failed (log: $STATE/logs/base.log)"; }
  version=$(chroot "$rootfs" python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [[ "$version" == "$BASE_PYTHON" ]] || die "bookworm's python is $version, the tag $BASE says $BASE_PYTHON"
  chroot "$rootfs" apt-get clean
  # The host's resolver must not be baked in (podman gives each container its own);
  # package lists are not needed at run time.
  rm -rf "$rootfs/etc/resolv.conf" "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  tar -C "$rootfs" --numeric-owner -c . \
    | podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  log "made $BASE (Python $(podman run --rm "$BASE" python -c 'import platform; print(platform.python_version())')) in $((SECONDS - start))s, $(size_mb "$BASE") MB"
}

# ---------------------------------------------------------------------------------------------------
# the images
# ---------------------------------------------------------------------------------------------------

size_mb() { echo $(($(podman image inspect --format '{{.Size}}' "$1") / 1000000)); }

build_one() {
  local name="$1" file ref="localhost/scalerec/$1:$TAG" start=$SECONDS logf="$STATE/logs/$1.log"
  file=$(dockerfile "$name")
  # pip inside a build sees neither the host's configuration nor its CA bundle (this network
  # re-signs TLS): both go in read-only; /opt/wheels too when pip.conf's find-links points there.
  local mounts=()
  [[ -f /etc/pip.conf ]] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] \
    && mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  [[ -d /opt/wheels ]] && mounts+=(-v /opt/wheels:/opt/wheels:ro)
  local args=(--build-arg "PYTHON_IMAGE=$BASE") arg
  while read -r arg; do args+=(--build-arg "$arg"); done < <(artifact "$name" | sed -n 's/^arg //p')
  log "building $ref from $file ${args[*]:2} (log: $logf)"
  local before
  before=$(podman image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)
  if ! podman build --layers --pull=never "${args[@]}" "${mounts[@]}" \
      -f "$REPO/$file" -t "$ref" "$REPO" >"$logf" 2>&1; then
    tail -30 "$logf" >&2
    die "building $name failed (log: $logf)"
  fi
  local took=$((SECONDS - start)) size
  size=$(size_mb "$ref")
  log "built $ref in ${took}s, ${size} MB"
  # The image the tag moved off is garbage (its layers shared with the new one stay): without this
  # every rebuild of the trainer left 6 GB behind. Its build-stage layers stay too: they are the cache.
  if [[ -n "$before" && "$before" != "$(podman image inspect --format '{{.Id}}' "$ref")" ]]; then
    podman rmi "$before" >/dev/null 2>&1 || true
  fi
  # One line per image, the latest build wins: name, seconds, MB, when.
  touch "$STATE/report.tsv"
  { grep -v "^$name	" "$STATE/report.tsv" || true; printf '%s\t%s\t%s\t%s\n' "$name" "$took" "$size" "$(date -u +%FT%TZ)"; } \
    >"$STATE/report.tsv.tmp"
  mv "$STATE/report.tsv.tmp" "$STATE/report.tsv"
}

# Untagged images that no image's latest build log mentions: the build stages of superseded builds.
# A stage is keyed on the sources it copies (libs/, the service), so once they changed it is never
# reused. Since the runtime stage installs the dependencies itself these are small (the wheels
# stage); while a builder's venv was copied, the trainer's weighed 6 GB and every code change left
# ~9 GB behind until the disk filled. Every stage a latest build made or took from the cache
# ("--> <id>" in its log) stays: it is the cache of the next build with the same sources.
prune_stale_stages() {
  local used id removed=0
  # podman build prints 11 hex digits of an image id, `podman images` 12: compared on the first 11.
  used=$(sed -n 's/^--> \([0-9a-f]\{11,64\}\)$/\1/p' "$STATE"/logs/*.log 2>/dev/null | cut -c1-11 | sort -u)
  while read -r id; do
    [[ -n "$id" ]] || continue
    grep -qx "${id:0:11}" <<<"$used" && continue
    podman rmi "$id" >/dev/null 2>&1 && removed=$((removed + 1))
  done < <(podman images --quiet --filter dangling=true)
  ((removed == 0)) || log "removed $removed build stage(s) of superseded builds"
}

report() {
  [[ -f "$STATE/report.tsv" ]] || die "nothing built yet"
  printf '%-14s %8s %8s  %s\n' image seconds MB built
  sort "$STATE/report.tsv" | while IFS=$'\t' read -r name took size when; do
    printf '%-14s %8s %8s  %s\n' "$name" "$took" "$size" "$when"
  done
}

main() {
  local cmd="${1:-build}"
  # `build.sh ranker evaluator` = `build.sh build ranker evaluator`.
  case "$cmd" in build | base | list | args | env | report | clean) shift || true ;; *) cmd=build ;; esac
  case "$cmd" in
    list) selected; return ;;
    args) artifact "${1:?usage: build.sh args IMAGE}"; return ;;
    env)
      write_config
      printf 'CONTAINERS_CONF=%s\nCONTAINERS_STORAGE_CONF=%s\n' "$STATE/containers.conf" "$STATE/storage.conf"
      return
      ;;
    report) report; return ;;
  esac
  install_tools
  write_config
  export_env
  case "$cmd" in
    base) make_base ;;
    build)
      local names=("$@") name start=$SECONDS
      ((${#names[@]})) || mapfile -t names < <(selected)
      for name in "${names[@]}"; do dockerfile "$name" >/dev/null; done
      make_base
      for name in "${names[@]}"; do build_one "$name"; done
      log "built ${names[*]} in $((SECONDS - start))s"
      prune_stale_stages
      ;;
    clean)
      podman rmi --all --force >/dev/null 2>&1 || true
      podman system reset --force >/dev/null 2>&1 || true
      rm -rf "$STATE"
      ;;
    *) die "unknown command '$cmd' (build, base, list, args, env, report, clean)" ;;
  esac
}

main "$@"
