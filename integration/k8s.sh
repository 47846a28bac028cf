#!/usr/bin/env bash
# k8s.sh builds (at pinned versions, cached like env.sh's servers) and runs a
# one-node Kubernetes cluster on loopback whose kubelet pulls through the
# s3snap agent, as on an EKS node: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and a kubelet (node "localhost")
# on a containerd 2.4 configured by `s3snap install --root` (the agent as the
# CRI snapshotter, its mirror first in hosts.toml), plus an ECR stand-in
# (integration/ecrfake's API over a Distribution registry) whose host name
# the node's images use, and a bucket for it on env.sh's S3 server.
#
# Everything lives under one scratch directory ($S3SNAP_K8S_DIR, default
# /tmp/s3snap-k8s) and is stopped by PID. Loopback only: the pods' bridge
# (s3snapk8s0) has no route out and no NAT. One cluster per machine (kubelet's
# cgroups, the bridge): integration/k8s's tests take a lock for theirs.
#
# Usage: integration/k8s.sh install|up|down|status|env|kubelet-restart|agent-restart|containerd-restart s3snap|plain
#   install   build/install the tools only (~15 min the first time on 2 cores)
#   up        install, then start the cluster (idempotent); needs env.sh up and root
#   down      stop it, undo kubelet's sysctls, remove the bucket and the bridge
#             (`down --purge` also removes the directory)
#   env       print the exports tests read (also in $S3SNAP_K8S_DIR/env)
#   kubelet-restart
#             restart kubelet (with the settings in $S3SNAP_K8S_DIR/kubelet.env:
#             KUBELET_IMAGEFS_AVAILABLE, KUBELET_IMAGE_GC_HIGH, KUBELET_IMAGE_GC_LOW)
#   agent-restart
#             restart the agent (with $S3SNAP_K8S_DIR/agent.toml and agent.env
#             if present: another store, other credentials)
#   containerd-restart MODE
#             restart containerd with s3snap's config (s3snap) or the one
#             s3snap install started from (plain: overlayfs, the registry
#             directly), for a comparison without the agent
set -euo pipefail

K8S_VERSION=v1.37.2
K8S_STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.7.0
CNI_PLUGINS_VERSION=v1.10.0
IMDS_MOCK_VERSION=v1.13.0
# MinIO (for its STS: temporary credentials its S3 API checks) tags no Go
# module versions: a pinned commit of its master.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c

CACHE=${S3SNAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s3snap}
BIN=$CACHE/bin
K8S_BIN=$BIN/k8s-$K8S_VERSION

log() { echo "k8s.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# build_kube: etcd and the five Kubernetes components in one throwaway module.
# `go install k8s.io/kubernetes/cmd/...` is refused (its go.mod replaces the
# staging modules with local paths), so this module requires k8s.io/kubernetes
# and replaces each staging module with its published version.
build_kube() {
  local want="kubernetes@$K8S_VERSION etcd@$ETCD_VERSION" stamp="$K8S_BIN/.version" name ok=1
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
    [[ -x "$K8S_BIN/$name" ]] || ok=0
  done
  if [[ $ok == 1 && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  log "building kubernetes $K8S_VERSION and etcd $ETCD_VERSION into $K8S_BIN (~15 min on 2 cores)"
  local mod start=$SECONDS
  mod=$(mktemp -d)
  (
    cd "$mod" &&
      export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 &&
      gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p') &&
      [[ -f $gomod ]] &&
      go mod init kubebuild >/dev/null 2>&1 &&
      {
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
        sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod" |
          grep -v -e sample-cli-plugin -e sample-controller |
          while read -r m; do echo "replace $m => $m $K8S_STAGING_VERSION"; done
      } >>go.mod &&
      cat >tools.go <<'GO' &&
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
      out=$(go mod tidy -e 2>&1) || { echo "$out" >&2; exit 1; }
    mkdir -p "$K8S_BIN" &&
      v=k8s.io/component-base/version &&
      major=${K8S_VERSION#v} && major=${major%%.*} &&
      minor=${K8S_VERSION#v*.} && minor=${minor%%.*} &&
      nice go build -trimpath -o "$K8S_BIN/" \
        -ldflags "-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=$major -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl &&
      nice go build -trimpath -ldflags "-s -w" -o "$K8S_BIN/etcd" go.etcd.io/etcd/server/v3
  ) || { rm -rf "$mod"; die "building kubernetes $K8S_VERSION failed"; }
  rm -rf "$mod"
  echo "$want" >"$stamp"
  log "built kubernetes $K8S_VERSION and etcd $ETCD_VERSION in $((SECONDS - start))s"
}

# build_cni: the three CNI plugins the node's bridge network needs.
build_cni() {
  local dir="$K8S_BIN/cni" stamp="$K8S_BIN/cni/.version" name ok=1
  for name in bridge host-local loopback; do [[ -x "$dir/$name" ]] || ok=0; done
  [[ $ok == 1 && "$(cat "$stamp" 2>/dev/null)" == "$CNI_PLUGINS_VERSION" ]] && return 0
  log "building CNI plugins $CNI_PLUGINS_VERSION into $dir"
  local p=github.com/containernetworking/plugins/plugins
  mkdir -p "$dir"
  GOBIN="$dir" GOFLAGS=-buildvcs=false CGO_ENABLED=0 nice go install \
    "$p/main/bridge@$CNI_PLUGINS_VERSION" "$p/ipam/host-local@$CNI_PLUGINS_VERSION" \
    "$p/main/loopback@$CNI_PLUGINS_VERSION" || die "building CNI plugins failed"
  echo "$CNI_PLUGINS_VERSION" >"$stamp"
}

# gobuild PKG VERSION NAME: as env.sh's, into $K8S_BIN.
gobuild() {
  local pkg=$1 version=$2 name=$3
  local stamp="$K8S_BIN/.$name.version"
  [[ -x "$K8S_BIN/$name" && "$(cat "$stamp" 2>/dev/null)" == "$pkg@$version" ]] && return 0
  log "building $name ($pkg@$version)"
  mkdir -p "$K8S_BIN"
  GOBIN="$K8S_BIN" GOFLAGS=-buildvcs=false nice go install "$pkg@$version" || die "go install $pkg@$version failed"
  echo "$pkg@$version" >"$stamp"
}

install() {
  command -v go >/dev/null || die "go is not on PATH"
  build_cni
  gobuild github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock "$IMDS_MOCK_VERSION" ec2-metadata-mock
  CGO_ENABLED=0 gobuild github.com/minio/minio "$MINIO_VERSION" minio
  build_kube
}

# ------------------------------------------------------------------ cluster

DIR=${S3SNAP_K8S_DIR:-/tmp/s3snap-k8s}
ENVSTATE=${S3SNAP_STATE:-/tmp/s3snap-env}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PAUSE_IMAGE=localhost/s3snap/pause:k8s
ECR_ACCOUNT=123456789012
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
BRIDGE=s3snapk8s0
POD_SUBNET=10.244.77.0/24
SERVICE_RANGE=10.96.77.0/24

running() { [[ -f "$DIR/$1.pid" ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

# launch NAME [ENV...] -- CMD...: start a server in its own session, logging to
# $DIR/logs/NAME.log, its PID in $DIR/NAME.pid.
launch() {
  local name=$1 env=()
  shift
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  running "$name" && return 0
  mkdir -p "$DIR/logs"
  env "${env[@]}" setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

# wait_for NAME SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
  local name=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    running "$name" || { tail -30 "$DIR/logs/$name.log" >&2; die "$name exited while starting"; }
    sleep 0.1
  done
  tail -30 "$DIR/logs/$name.log" >&2
  die "$name did not become ready in ${secs}s"
}

stop() {
  local name=$1 pid
  [[ -f "$DIR/$name.pid" ]] || return 0
  pid=$(cat "$DIR/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/$name.pid"
}

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ports: chosen once per directory, so `up` after a partial stop reuses them.
ports() {
  if [[ ! -f "$DIR/ports" ]]; then
    local n
    for n in ETCD ETCD_PEER API KCM SCHED KUBELET KUBELET_HEALTHZ REGISTRY ECR_API MIRROR METRICS; do
      echo "${n}_PORT=$(freeport)"
    done >"$DIR/ports"
    echo "BUCKET=s3snap-k8s-$(date +%s)-$$" >>"$DIR/ports"
  fi
  # shellcheck disable=SC1091
  source "$DIR/ports"
}

pki() {
  local p=$DIR/pki
  [[ -f $p/admin.crt ]] && return 0
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=s3snap-k8s-ca
    # cert NAME SUBJECT EXTENSIONS
    cert() {
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -out "$1.crt" -extfile "$1.ext"
    }
    cert apiserver /CN=kube-apiserver \
      "subjectAltName=IP:127.0.0.1,IP:${SERVICE_RANGE%.0/24}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    # One client identity for kubectl, the controllers and the kubelet:
    # system:masters, so no RBAC bootstrap or node certificates are needed.
    cert admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$DIR/logs/pki.log" 2>&1 || die "openssl: $(tail -5 "$DIR/logs/pki.log")"
}

kubeconfig() {
  cat >"$DIR/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: s3snap
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$DIR/pki/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$DIR/pki/admin.crt", client-key: "$DIR/pki/admin.key"}
contexts:
- name: s3snap
  context: {cluster: s3snap, user: admin, namespace: default}
current-context: s3snap
YAML
}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }

build_tools() {
  mkdir -p "$DIR/bin"
  (
    cd "$REPO"
    go build -o "$DIR/bin/s3snap" ./cmd/s3snap &&
      go build -o "$DIR/bin/" ./integration/cmd/ecrfake ./integration/cmd/mkbucket &&
      CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$DIR/bin/pause" ./integration/cmd/pause
  ) || die "go build of s3snap and the test commands failed"
}

# pause_image: the sandbox image as an OCI archive, built here (there is
# no pulling registry.k8s.io offline), its platform set: containerd's
# platform match refuses a config with an empty os or architecture.
pause_image() {
  local d=$DIR/pause-oci arch
  arch=$(go env GOARCH)
  rm -rf "$d"
  mkdir -p "$d/blobs/sha256" "$d/rootfs"
  cp "$DIR/bin/pause" "$d/rootfs/pause"
  tar -C "$d/rootfs" --owner=0 --group=0 --numeric-owner --mtime=2026-01-01 -cf "$d/layer" pause
  # blob FILE: move FILE into blobs/, print "DIGEST SIZE".
  blob() {
    local h s
    h=$(sha256sum "$1" | cut -d' ' -f1)
    s=$(stat -c %s "$1")
    mv "$1" "$d/blobs/sha256/$h"
    echo "sha256:$h $s"
  }
  local l c m
  read -r -a l <<<"$(blob "$d/layer")"
  printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$arch" "${l[0]}" >"$d/config"
  read -r -a c <<<"$(blob "$d/config")"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "${c[0]}" "${c[1]}" "${l[0]}" "${l[1]}" >"$d/manifest"
  read -r -a m <<<"$(blob "$d/manifest")"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"os":"linux","architecture":"%s"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${m[0]}" "${m[1]}" "$arch" "$PAUSE_IMAGE" "${PAUSE_IMAGE##*:}" >"$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
  tar -C "$d" -cf "$DIR/pause.tar" oci-layout index.json blobs
}

# node_disk: the node's image disk, a small ext4 file system on a loop
# device holding the agent's state and containerd's root, so kubelet sees a
# dedicated image file system (imagefs) of a known size.
node_disk() {
  mountpoint -q "$DIR/disk" && return 0
  mkdir -p "$DIR/disk"
  [[ -f $DIR/disk.img ]] || {
    truncate -s "${S3SNAP_K8S_DISK_SIZE:-3G}" "$DIR/disk.img"
    mkfs.ext4 -q -F "$DIR/disk.img" || die "mkfs.ext4 $DIR/disk.img failed"
  }
  mount -o loop "$DIR/disk.img" "$DIR/disk" || die "mount the node disk $DIR/disk.img (a loop device) failed"
}

# node_config: containerd's config as a node would have it before s3snap
# (sandbox pinned to the local pause image, this machine's quirks), then
# `s3snap install --root` over it. The pre-install config (saved by install
# as config.toml.pre-s3snap) becomes the "plain" mode's, with its own hosts
# dir sending the ECR host straight to the registry.
node_config() {
  local root=$DIR/node cfg=$DIR/node/etc/containerd/config.toml
  [[ -f $root/etc/s3snap/config.toml ]] && return 0
  mkdir -p "$root/etc/containerd" "$DIR/cni/net.d"
  "$BIN/containerd" config default >"$cfg"
  # Hermetic: no drop-ins from the host's /etc/containerd/conf.d.
  sed -i "s|^imports = .*|imports = []|" "$cfg"
  # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so containerd
  # must not lower a container's oom_score_adj below its own.
  local from to
  for from_to in "sandbox = 'registry.k8s.io/pause:[^']*'|sandbox = '$PAUSE_IMAGE'" \
    "restrict_oom_score_adj = false|restrict_oom_score_adj = true" \
    "bin_dirs = \\['/opt/cni/bin'\\]|bin_dirs = ['$K8S_BIN/cni']" \
    "conf_dir = '/etc/cni/net.d'|conf_dir = '$DIR/cni/net.d'"; do
    from=${from_to%%|*} to=${from_to#*|}
    grep -q "$from" "$cfg" || die "containerd's default config has no $from"
    sed -i "s#$from#$to#" "$cfg"
  done
  sed "s#config_path = ''#config_path = '$DIR/certs-plain.d'#" "$cfg" >"$DIR/containerd-plain.toml"
  grep -q "config_path = '$DIR/certs-plain.d'" "$DIR/containerd-plain.toml" || die "containerd's default config has no config_path"
  mkdir -p "$DIR/certs-plain.d/$ECR_HOST"
  printf 'server = "http://127.0.0.1:%s"\n\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$REGISTRY_PORT" "$REGISTRY_PORT" >"$DIR/certs-plain.d/$ECR_HOST/hosts.toml"
  # The node paths the agent config and hosts.toml name are real paths
  # under $DIR; config_path's leads into the root, as on a booted image.
  "$DIR/bin/s3snap" install --root "$root" --binary "$DIR/bin/s3snap" --containerd-version "${CONTAINERD_VERSION#v}" \
    --bucket "$BUCKET" --prefix ecr --registry "$ECR_HOST=http://127.0.0.1:$REGISTRY_PORT" \
    --region "$AWS_REGION" --endpoint "$S3SNAP_S3_ENDPOINT" --lazy \
    --socket "$DIR/run/s3snap.sock" --state-dir "$DIR/disk/agent" \
    --mirror-address "127.0.0.1:$MIRROR_PORT" --metrics-address "127.0.0.1:$METRICS_PORT" \
    --hosts-dir "$DIR/certs.d" >"$DIR/logs/install.log" 2>&1 || die "s3snap install: $(cat "$DIR/logs/install.log")"
  ln -sfn "$root$DIR/certs.d" "$DIR/certs.d"
  cat >"$DIR/cni/net.d/10-s3snap.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "s3snap-k8s", "plugins": [{"type": "bridge", "bridge": "$BRIDGE",
 "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local", "dataDir": "$DIR/cni/ipam",
 "ranges": [[{"subnet": "$POD_SUBNET"}]], "routes": [{"dst": "$POD_SUBNET"}]}}]}
JSON
}

# agent_env: the agent's credentials. By default the S3 server's keys; a
# file $DIR/agent.env (KEY=VALUE lines) replaces them, e.g. for instance
# credentials from a metadata service (then no AWS_* key reaches the agent).
agent_env() {
  if [[ -f $DIR/agent.env ]]; then
    grep -v '^#' "$DIR/agent.env"
  else
    printf '%s\n' "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" \
      "AWS_EC2_METADATA_DISABLED=true"
  fi
  echo "AWS_REGION=$AWS_REGION"
}

# start_agent: the agent as installed, or with $DIR/agent.toml if a test
# put one there (the same socket, root and mirror; another store).
start_agent() {
  running agent && return 0
  local env=() cfg=$DIR/node/etc/s3snap/config.toml
  [[ -f $DIR/agent.toml ]] && cfg=$DIR/agent.toml
  mapfile -t env < <(agent_env)
  launch agent -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE -u AWS_ENDPOINT_URL \
    -u AWS_EC2_METADATA_DISABLED -u AWS_CONFIG_FILE -u AWS_SHARED_CREDENTIALS_FILE \
    "${env[@]}" -- "$DIR/bin/s3snap" agent --config "$cfg" --log-level info
  wait_for agent 30 curl -sf -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics"
}

# start_containerd [s3snap|plain]
start_containerd() {
  local mode=${1:-$(cat "$DIR/containerd.mode" 2>/dev/null || echo s3snap)} cfg
  running containerd && return 0
  cfg=$DIR/node/etc/containerd/config.toml
  [[ $mode == plain ]] && cfg=$DIR/containerd-plain.toml
  echo "$mode" >"$DIR/containerd.mode"
  launch containerd "PATH=$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" -- \
    "$BIN/containerd" --config "$cfg" --root "$DIR/disk/containerd" --state "$DIR/containerd/state" --address "$DIR/run/containerd.sock"
  wait_for containerd 30 "$BIN/ctr" --address "$DIR/run/containerd.sock" version
  # The sandbox image, unpacked for both snapshotters (the CRI does not
  # unpack an image it already has for another).
  local sn
  for sn in s3snap overlayfs; do
    [[ $mode == plain && $sn == s3snap ]] && continue
    "$BIN/ctr" --address "$DIR/run/containerd.sock" -n k8s.io images import --local --snapshotter "$sn" \
      --platform "linux/$(go env GOARCH)" "$DIR/pause.tar" >>"$DIR/logs/pause-import.log" 2>&1 ||
      die "import the pause image ($sn): $(tail -5 "$DIR/logs/pause-import.log")"
  done
}

start_etcd() {
  launch etcd -- "$K8S_BIN/etcd" --name default --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn --quota-backend-bytes 1073741824
  wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
}

start_ecr() {
  mkdir -p "$DIR/ecr/storage"
  # No htpasswd: the node's fallback pulls go to the registry through a
  # mirror host, to which the CRI sends no image pull secret.
  cat >"$DIR/registry.yml" <<YML
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $DIR/ecr/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$REGISTRY_PORT}
YML
  launch registry OTEL_TRACES_EXPORTER=none -- "$BIN/registry" serve "$DIR/registry.yml"
  wait_for registry 15 curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/"
  launch ecrfake -- "$DIR/bin/ecrfake" -root "$DIR/ecr/storage" -htpasswd "$DIR/ecr/htpasswd" \
    -addr "127.0.0.1:$ECR_API_PORT" -registry "http://127.0.0.1:$REGISTRY_PORT"
  wait_for ecrfake 15 grep -q ECR_TOKEN "$DIR/logs/ecrfake.log"
}

start_control_plane() {
  local p=$DIR/pki
  launch apiserver -- "$K8S_BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --endpoint-reconciler-type none --service-cluster-ip-range "$SERVICE_RANGE" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" --client-ca-file "$p/ca.crt" \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --allow-privileged \
    --kubelet-client-certificate "$p/admin.crt" --kubelet-client-key "$p/admin.key" \
    --kubelet-preferred-address-types Hostname,InternalIP --profiling=false
  wait_for apiserver 90 kubectl get --raw /readyz
  launch controller-manager -- "$K8S_BIN/kube-controller-manager" --kubeconfig "$DIR/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
    --use-service-account-credentials=false --profiling=false
  launch scheduler -- "$K8S_BIN/kube-scheduler" --kubeconfig "$DIR/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false --profiling=false
}

kubelet_config() {
  cat >"$DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
containerRuntimeEndpoint: unix://$DIR/run/containerd.sock
cgroupDriver: cgroupfs
# This machine has cgroup v1 (hybrid).
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$DIR/pki/ca.crt"}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Image GC: a minimum age of 1s (0 means the default, 2m), so what kubelet
# finds unused it may remove at once; the thresholds can be set (in
# $DIR/kubelet.env) to make it run.
imageMinimumGCAge: 1s
imageGCHighThresholdPercent: ${KUBELET_IMAGE_GC_HIGH:-85}
imageGCLowThresholdPercent: ${KUBELET_IMAGE_GC_LOW:-80}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "${KUBELET_IMAGEFS_AVAILABLE:-1%}", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 5s
YAML
}

start_kubelet() {
  running kubelet && return 0
  # shellcheck disable=SC1091
  [[ -f $DIR/kubelet.env ]] && source "$DIR/kubelet.env"
  kubelet_config
  launch kubelet -- "$K8S_BIN/kubelet" --config "$DIR/kubelet.yaml" --kubeconfig "$DIR/kubeconfig" \
    --root-dir "$DIR/kubelet" --cert-dir "$DIR/kubelet/pki" --hostname-override localhost \
    --v "${KUBELET_V:-1}"
  wait_for kubelet 60 curl -sf "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
}

# wait_node_ready: the node registered and Ready, and the default service
# account there (pods are refused until the controller makes it).
wait_node_ready() {
  local i
  for ((i = 0; i < 1200; i++)); do
    if [[ $(kubectl get node localhost -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] &&
      kubectl get serviceaccount default >/dev/null 2>&1; then
      return 0
    fi
    for n in kubelet controller-manager scheduler apiserver; do
      running "$n" || { tail -30 "$DIR/logs/$n.log" >&2; die "$n exited while the node was starting"; }
    done
    sleep 0.1
  done
  kubectl describe node localhost >&2 || true
  tail -30 "$DIR/logs/kubelet.log" >&2
  die "node localhost did not become Ready in 120s"
}

save_sysctls() {
  [[ -f $DIR/sysctl.saved ]] && return 0
  local k
  for k in "${SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$DIR/sysctl.saved"
}

restore_sysctls() {
  [[ -f $DIR/sysctl.saved ]] || return 0
  local kv
  while read -r kv; do sysctl -q -w "$kv" >/dev/null || log "could not restore $kv"; done <"$DIR/sysctl.saved"
  rm -f "$DIR/sysctl.saved"
}

print_env() {
  cat <<ENV
export S3SNAP_K8S_DIR=$DIR
export S3SNAP_K8S_BIN=$K8S_BIN
export KUBECONFIG=$DIR/kubeconfig
export S3SNAP_K8S_BUCKET=$BUCKET
export S3SNAP_K8S_PREFIX=ecr
export S3SNAP_K8S_AGENT_METRICS=127.0.0.1:$METRICS_PORT
export S3SNAP_K8S_AGENT_MIRROR=127.0.0.1:$MIRROR_PORT
export S3SNAP_K8S_AGENT_CONFIG=$DIR/node/etc/s3snap/config.toml
export S3SNAP_K8S_CONTAINERD=$DIR/run/containerd.sock
export S3SNAP_K8S_API=127.0.0.1:$API_PORT
export S3SNAP_K8S_KUBELET=localhost:$KUBELET_PORT
export S3SNAP_K8S_AGENT_ROOT=$DIR/disk/agent
export S3SNAP_K8S_DISK=$DIR/disk
export S3SNAP_K8S_REGISTRY=127.0.0.1:$REGISTRY_PORT
export S3SNAP_K8S_REGISTRY_LOG=$DIR/logs/registry.log
export S3SNAP_K8S_PAUSE_IMAGE=$PAUSE_IMAGE
$(sed 's/^/export /' <(grep -E '^ECR_(ENDPOINT|URL|HOST|TOKEN)=' "$DIR/logs/ecrfake.log" | tail -4))
ENV
}

envsetup() {
  [[ -f $ENVSTATE/env ]] || die "no $ENVSTATE/env: run integration/env.sh up first"
  # shellcheck disable=SC1091
  source "$ENVSTATE/env"
  BIN=$S3SNAP_BIN
  CONTAINERD_VERSION=$(sed -n 's/^CONTAINERD_VERSION=//p' "$REPO/integration/env.sh")
  ECR_HOST=$ECR_ACCOUNT.dkr.ecr.$AWS_REGION.amazonaws.com
  mkdir -p "$DIR/logs" "$DIR/run"
}

up() {
  [[ $(id -u) == 0 ]] || die "the node (containerd, kubelet) needs root"
  install
  envsetup
  local start=$SECONDS
  ports
  build_tools
  [[ -f $DIR/pause.tar ]] || pause_image
  pki
  kubeconfig
  "$DIR/bin/mkbucket" "$S3SNAP_S3_ENDPOINT" "$BUCKET" || die "create bucket $BUCKET"
  start_etcd
  start_ecr
  node_disk
  node_config
  start_agent
  start_containerd
  start_control_plane
  save_sysctls
  start_kubelet
  wait_node_ready
  print_env >"$DIR/env"
  log "up in $((SECONDS - start))s: source $DIR/env (kubectl: $K8S_BIN/kubectl)"
}

# kill_pods: the pods' containers and shims go with containerd's tasks.
kill_pods() {
  local sock=$DIR/run/containerd.sock c
  running containerd || return 0
  for c in $("$BIN/ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    "$BIN/ctr" --address "$sock" -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for c in $("$BIN/ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    "$BIN/ctr" --address "$sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
  done
}

# stop_fused stops the agent's lazy FUSE server: it runs in a session of
# its own, so that stopping the agent (its process group) leaves it and
# the pods' lazy mounts alone, as a restart must.
stop_fused() {
  local cfg=$DIR/node/etc/s3snap/config.toml
  [[ -f $DIR/agent.toml ]] && cfg=$DIR/agent.toml
  [[ -x $DIR/bin/s3snap && -f $cfg ]] || return 0
  "$DIR/bin/s3snap" agent fused --stop --config "$cfg" >/dev/null 2>&1 || true
}

down() {
  envsetup
  ports
  stop kubelet
  kill_pods
  local n
  for n in containerd agent scheduler controller-manager apiserver etcd ecrfake registry; do stop "$n"; done
  stop_fused
  restore_sysctls
  # kubelet's pod volumes and the agent's lazy mounts, deepest first.
  grep -o " $DIR/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  # (The loop device goes with the last unmount: mount -o loop sets autoclear.)
  ip link del "$BRIDGE" 2>/dev/null || true
  # The pods' cgroups (kubelet's kubepods tree), deepest first.
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} + 2>/dev/null || true
  "$DIR/bin/mkbucket" -rm "$S3SNAP_S3_ENDPOINT" "$BUCKET" >/dev/null 2>&1 || true
  rm -f "$DIR/ports"
  [[ ${1:-} == --purge ]] && rm -rf "$DIR"
  log "down"
}

status() {
  local n
  for n in etcd registry ecrfake agent containerd apiserver controller-manager scheduler kubelet; do
    if running "$n"; then echo "$n: running (pid $(cat "$DIR/$n.pid"))"; else echo "$n: stopped"; fi
  done
}

case "${1:-}" in
install) install ;;
up) up ;;
down) down "${2:-}" ;;
status) status ;;
env) cat "$DIR/env" ;;
kubelet-restart)
  envsetup
  ports
  stop kubelet
  start_kubelet
  ;;
agent-restart)
  envsetup
  ports
  stop agent
  start_agent
  ;;
containerd-restart)
  envsetup
  ports
  [[ ${2:-} == s3snap || ${2:-} == plain ]] || die "usage: $0 containerd-restart s3snap|plain"
  stop containerd
  start_containerd "$2"
  ;;
*) die "usage: $0 install|up|down [--purge]|status|env|kubelet-restart|agent-restart|containerd-restart s3snap|plain" ;;
esac
