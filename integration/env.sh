#!/usr/bin/env bash
# env.sh brings up (and down) the real servers s3snap's tests and demo run against,
# all on 127.0.0.1, each with its own data dir and port:
#
#   S3 server     versitygw (posix backend)          127.0.0.1:${S3SNAP_S3_PORT:-19000}
#   registry      CNCF Distribution (filesystem)      127.0.0.1:${S3SNAP_REGISTRY_PORT:-15000}
#
# It also installs, at pinned versions, what tests start on demand: crane,
# containerd + ctr + shim (2.4, and 1.7 in bin/containerd-1.7/), crictl,
# Debian's runc and fuse3. Go binaries are built once with `go install` into a
# cache outside the repo and reused.
#
# Usage: integration/env.sh install|up|down|status|env
#   install  build/install the tools only
#   up       install, then start the servers (idempotent: running ones are kept)
#   down     stop the servers (data dirs are kept; `down --purge` removes them)
#   env      print the exports tests and the demo read
set -euo pipefail

VERSITYGW_VERSION=v1.8.0
DISTRIBUTION_VERSION=v3.1.2
CRANE_VERSION=v0.22.1
CONTAINERD_VERSION=v2.4.2
CONTAINERD17_VERSION=v1.7.29
STATICCHECK_VERSION=v0.8.2
CRICTL_VERSION=v1.34.0

CACHE=${S3SNAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s3snap}
BIN=$CACHE/bin
STATE=${S3SNAP_STATE:-/tmp/s3snap-env}
S3_PORT=${S3SNAP_S3_PORT:-19000}
REGISTRY_PORT=${S3SNAP_REGISTRY_PORT:-15000}
ACCESS_KEY=${S3SNAP_ACCESS_KEY:-s3snap}
SECRET_KEY=${S3SNAP_SECRET_KEY:-s3snapsecret}

log() { echo "env.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# gobuild PKG VERSION NAME: go install PKG@VERSION into $BIN unless that exact
# version is already there (a stamp file records it).
gobuild() {
  local pkg=$1 version=$2 name=$3
  local stamp="$BIN/.$name.version"
  if [[ -x "$BIN/$name" && "$(cat "$stamp" 2>/dev/null)" == "$pkg@$version" ]]; then
    return 0
  fi
  log "building $name ($pkg@$version)"
  mkdir -p "$BIN"
  GOBIN="$BIN" GOFLAGS=-buildvcs=false go install "$pkg@$version" || die "go install $pkg@$version failed"
  echo "$pkg@$version" >"$stamp"
}

# build_crictl: crictl for the CRI-path tests. `go install crictl@version`
# fails here (the proxy refuses cri-tools' version list, and the checksum
# database has no entries for its k8s.io dependencies), so build it from a
# throwaway module with those two paths exempt from the checksum database.
build_crictl() {
  local stamp="$BIN/.crictl.version"
  if [[ -x "$BIN/crictl" && "$(cat "$stamp" 2>/dev/null)" == "$CRICTL_VERSION" ]]; then
    return 0
  fi
  log "building crictl (sigs.k8s.io/cri-tools@$CRICTL_VERSION)"
  local mod
  mod=$(mktemp -d)
  (
    cd "$mod"
    export GONOSUMDB=sigs.k8s.io,k8s.io GOFLAGS=-mod=mod
    go mod init crictlbuild >/dev/null 2>&1
    go get "sigs.k8s.io/cri-tools@$CRICTL_VERSION" >/dev/null 2>&1
    go build -o "$BIN/crictl" sigs.k8s.io/cri-tools/cmd/crictl
  ) || { rm -rf "$mod"; die "building crictl failed"; }
  rm -rf "$mod"
  echo "$CRICTL_VERSION" >"$stamp"
}

# build_containerd17: containerd 1.7 (most EKS nodes still run it) with its
# ctr and shim, into $BIN/containerd-1.7/: the shim must keep its name
# containerd-shim-runc-v2, so it cannot sit next to 2.4's. `go install`
# refuses the module (its go.mod has exclude directives), so build it from a
# throwaway module that requires the pinned version.
build_containerd17() {
  local dir="$BIN/containerd-1.7" stamp="$BIN/containerd-1.7/.version" name
  local ok=1 want="$CONTAINERD17_VERSION (version stamped)"
  for name in containerd ctr containerd-shim-runc-v2; do [[ -x "$dir/$name" ]] || ok=0; done
  if [[ $ok == 1 && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  log "building containerd $CONTAINERD17_VERSION (containerd, ctr, containerd-shim-runc-v2) into $dir"
  local mod pkg=github.com/containerd/containerd
  mod=$(mktemp -d)
  # (set -e does not apply in a subshell that is the left of ||: chain with &&.)
  (
    cd "$mod" &&
      export GOFLAGS="-mod=mod -buildvcs=false" &&
      go mod init containerd17build >/dev/null 2>&1 &&
      out=$(go get "$pkg@$CONTAINERD17_VERSION" 2>&1) || { echo "$out" >&2; exit 1; }
    # `containerd --version` says the version as a release build does
    # (s3snap install reads it), not 1.7.29+unknown.
    mkdir -p "$dir" &&
      go build -ldflags "-X $pkg/version.Version=$CONTAINERD17_VERSION" -o "$dir/" \
        "$pkg/cmd/containerd" "$pkg/cmd/ctr" "$pkg/cmd/containerd-shim-runc-v2"
  ) || { rm -rf "$mod"; die "building containerd $CONTAINERD17_VERSION failed"; }
  rm -rf "$mod"
  echo "$want" >"$stamp"
}

install_debs() {
  local missing=()
  command -v runc >/dev/null || missing+=(runc)
  command -v fusermount3 >/dev/null || missing+=(fuse3)
  command -v curl >/dev/null || missing+=(curl)
  # igzip (ISA-L): containerd and the agent inflate gzip layers with it
  # when it is on PATH, as production nodes should (s3snap doctor says so).
  command -v igzip >/dev/null || missing+=(isal)
  # systemd-analyze verifies the unit files s3snap install writes.
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
  log "apt-get install ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

install() {
  command -v go >/dev/null || die "go is not on PATH"
  install_debs
  gobuild github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION" versitygw
  gobuild github.com/distribution/distribution/v3/cmd/registry "$DISTRIBUTION_VERSION" registry
  gobuild github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION" crane
  gobuild github.com/containerd/containerd/v2/cmd/containerd "$CONTAINERD_VERSION" containerd
  gobuild github.com/containerd/containerd/v2/cmd/ctr "$CONTAINERD_VERSION" ctr
  gobuild github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$CONTAINERD_VERSION" containerd-shim-runc-v2
  gobuild honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION" staticcheck
  build_crictl
  build_containerd17
}

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

# wait_http URL NAME: poll until the server answers at all (any HTTP status).
wait_http() {
  local url=$1 name=$2 i
  for i in $(seq 1 100); do
    if curl -s -o /dev/null "$url"; then return 0; fi
    running "$name" || { tail -20 "$STATE/logs/$name.log" >&2; die "$name exited while starting"; }
    sleep 0.1
  done
  tail -20 "$STATE/logs/$name.log" >&2
  die "$name did not answer at $url"
}

start_s3() {
  running s3 && return 0
  mkdir -p "$STATE/s3" "$STATE/logs"
  log "starting versitygw on 127.0.0.1:$S3_PORT"
  ROOT_ACCESS_KEY="$ACCESS_KEY" ROOT_SECRET_KEY="$SECRET_KEY" \
    setsid "$BIN/versitygw" --port "127.0.0.1:$S3_PORT" --quiet posix "$STATE/s3" \
    >"$STATE/logs/s3.log" 2>&1 </dev/null &
  echo $! >"$STATE/s3.pid"
  wait_http "http://127.0.0.1:$S3_PORT/" s3
}

start_registry() {
  running registry && return 0
  mkdir -p "$STATE/registry" "$STATE/logs"
  cat >"$STATE/registry.yml" <<YML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REGISTRY_PORT
YML
  log "starting registry on 127.0.0.1:$REGISTRY_PORT"
  OTEL_TRACES_EXPORTER=none setsid "$BIN/registry" serve "$STATE/registry.yml" \
    >"$STATE/logs/registry.log" 2>&1 </dev/null &
  echo $! >"$STATE/registry.pid"
  wait_http "http://127.0.0.1:$REGISTRY_PORT/v2/" registry
}

stop() {
  local name=$1
  if running "$name"; then
    log "stopping $name"
    kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do running "$name" || break; sleep 0.1; done
    running "$name" && kill -9 "$(cat "$STATE/$name.pid")" 2>/dev/null || true
  fi
  rm -f "$STATE/$name.pid"
}

print_env() {
  cat <<ENV
export S3SNAP_BIN=$BIN
export S3SNAP_STATE=$STATE
export S3SNAP_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export S3SNAP_REGISTRY=127.0.0.1:$REGISTRY_PORT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=us-east-1
ENV
}

case "${1:-}" in
  install) install ;;
  up)
    install
    start_s3
    start_registry
    mkdir -p "$STATE"
    print_env >"$STATE/env"
    log "up: source $STATE/env for the settings"
    ;;
  down)
    stop registry
    stop s3
    if [[ "${2:-}" == "--purge" ]]; then rm -rf "$STATE"; fi
    ;;
  status)
    for s in s3 registry; do
      if running "$s"; then echo "$s: running (pid $(cat "$STATE/$s.pid"))"; else echo "$s: stopped"; fi
    done
    ;;
  env) print_env ;;
  *) echo "usage: $0 install|up|down [--purge]|status|env" >&2; exit 2 ;;
esac
