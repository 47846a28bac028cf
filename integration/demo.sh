#!/usr/bin/env bash
# demo.sh is s3snap's whole mission, end to end, on loopback servers: an ECR
# stand-in holding a few images is migrated into a bucket and verified; a
# node set up by `s3snap install` alone pulls and runs an image by its ECR
# reference with every layer from S3; a lazily indexed image starts next to
# containerd's own pull; `s3snap doctor` calls the node healthy. Everything
# lives in one temp dir and is stopped and removed on exit; the exit code is
# 0 only if every step did what its headline says.
set -euo pipefail
cd "$(dirname "$0")/.."

integration/env.sh up >/dev/null
# shellcheck disable=SC1091
source "${S3SNAP_STATE:-/tmp/s3snap-env}/env"
export AWS_EC2_METADATA_DISABLED=true
[[ $(id -u) == 0 ]] || { echo "demo: the node step (containerd, overlay mounts) needs root" >&2; exit 1; }

t0=$(date +%s.%N)
n=0 cur="start-up" # the issue's step numbers: 1 ECR, 2 migrate, 3 node, 4 lazy, 5 doctor, 6 cleanup
# A command failing outside a checked place still names its step.
trap 'echo "demo: FAILED in step $n ($cur), line $LINENO" >&2' ERR
step() { n=$1; shift; cur=$*; printf '\n\033[1m== %s. %s\033[0m  (t=%.0fs)\n' "$n" "$*" "$(echo "$(date +%s.%N) - $t0" | bc)"; }
fail() { printf '\033[31mdemo: FAILED in step %s: %s\033[0m\n' "$n" "$*" >&2; exit 1; }
ok() { printf '\033[32m   ok: %s\033[0m\n' "$*"; }
# freeport LO HI prints a free loopback TCP port in [LO, HI).
freeport() { python3 -c 'import socket,random,sys
lo,hi=int(sys.argv[1]),int(sys.argv[2])
for p in random.sample(range(lo,hi),hi-lo):
    s=socket.socket()
    try: s.bind(("127.0.0.1",p)); s.close(); print(p); break
    except OSError: pass' "$1" "$2"; }
since() { echo "$(date +%s.%N) - $1" | bc | xargs printf '%.2f'; }

B=$S3SNAP_BIN
CRANE="$B/crane --insecure"
work=$(mktemp -d /tmp/s3demo.XXXX) # short: unix socket paths
pids=()
cleanup() {
  set +e
  if [[ -S "$work/c.sock" ]]; then
    for ns in k8s.io demo-plain; do
      for c in $("$B/ctr" --address "$work/c.sock" -n $ns containers ls -q 2>/dev/null); do
        "$B/ctr" --address "$work/c.sock" -n $ns tasks kill -s KILL "$c" >/dev/null 2>&1
        "$B/ctr" --address "$work/c.sock" -n $ns containers rm "$c" >/dev/null 2>&1
      done
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; wait "${pids[i]}" 2>/dev/null; done
  # The lazy FUSE server outlives the agent (in a session of its own, as a
  # restart needs): stop it, or it keeps its mounts and chunk cache.
  [[ -f ${root:-/nonexistent}/etc/s3snap/config.toml ]] &&
    "$work/s3snap" agent fused --stop --config "$root/etc/s3snap/config.toml" >/dev/null 2>&1
  rm -f "${hostsdir:-/nonexistent}"
  [[ -z ${BUCKET:-} ]] || "$work/mkbucket" -rm "$S3SNAP_S3_ENDPOINT" "$BUCKET" || echo "demo: could not remove bucket $BUCKET" >&2
  grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/s3snap" ./cmd/s3snap
go build -o "$work/ecrfake" ./integration/cmd/ecrfake
go build -o "$work/mkbucket" ./integration/cmd/mkbucket
CGO_ENABLED=0 go build -o "$work/img/hello" ./integration/cmd/hello
S3SNAP="$work/s3snap --endpoint $S3SNAP_S3_ENDPOINT"
export DOCKER_CONFIG=$work/docker

# ---------------------------------------------------------------- 1. ECR
step 1 "an ECR stand-in (integration/ecrfake's API in front of a Distribution registry) holding a few images"
regport=$(freeport 20000 30000)
"$work/ecrfake" -root "$work/ecr/storage" -htpasswd "$work/ecr/htpasswd" -registry "http://127.0.0.1:$regport" >"$work/ecrfake.env" 2>"$work/ecrfake.log" &
pids+=($!)
for _ in $(seq 100); do grep -q ECR_TOKEN "$work/ecrfake.env" 2>/dev/null && break; sleep 0.1; done
# shellcheck disable=SC1091
source "$work/ecrfake.env" || fail "ecrfake did not start: $(cat "$work/ecrfake.log")"
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $work/ecr/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$regport}
auth: {htpasswd: {realm: ecr, path: $work/ecr/htpasswd}}
YML
OTEL_TRACES_EXPORTER=none "$B/registry" serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$regport/v2/" && break; sleep 0.1; done
REG=127.0.0.1:$regport
$B/crane auth login "$REG" -u AWS -p "$ECR_TOKEN" >/dev/null 2>&1 || fail "log in to the ECR stand-in's registry"

# layer DIR FILE...: a gzip layer of the files under $work/img/DIR.
layer() { local d=$work/img/$1; shift; mkdir -p "$d"; tar -C "$d" --owner=0 --group=0 --mtime=2026-01-01 -czf "$d.tar.gz" . ; echo "$d.tar.gz"; }
mkdir -p "$work/img/hello-l" "$work/img/base/etc" "$work/img/v1/app" "$work/img/v2/app" "$work/img/old/app"
cp "$work/img/hello" "$work/img/hello-l/hello"
cp /etc/os-release "$work/img/base/etc/os-release"
head -c 1048576 /dev/urandom >"$work/img/base/etc/base.bin"
echo "api v1" >"$work/img/v1/app/version"; echo "api v2" >"$work/img/v2/app/version"; echo "an old build" >"$work/img/old/app/version"
L_HELLO=$(layer hello-l); L_BASE=$(layer base)
push() { $CRANE append --oci-empty-base -f "$L_BASE" -f "$L_HELLO" -f "$(layer "$1")" -t "$REG/$2" >/dev/null 2>&1 || fail "push $2"; }
push old team/api:v2  # overwritten below: stays as an untagged image, as in ECR
push v1 team/api:v1
push v2 team/api:v2
$CRANE tag "$REG/team/api:v2" latest >/dev/null 2>&1
push v1 team/web:v1
for arch in amd64 arm64; do
  mkdir -p "$work/img/$arch"; echo "$arch" >"$work/img/$arch/arch"
  push "$arch" "multi/tool:$arch-only"
  $CRANE mutate --set-platform "linux/$arch" "$REG/multi/tool:$arch-only" -t "$REG/multi/tool:$arch-only" >/dev/null 2>&1 || fail "set platform $arch"
done
$CRANE index append -m "$REG/multi/tool:amd64-only" -m "$REG/multi/tool:arm64-only" -t "$REG/multi/tool:latest" >/dev/null 2>&1 || fail "push the multi-arch index"
# The benchmarks' realistic image (integration/bench/mkimage.sh: six gzip
# layers of this machine's real files, ~300 MB; built once, then cached).
bigl=()
for l in $(integration/bench/mkimage.sh); do bigl+=(-f "$l"); done
[[ ${#bigl[@]} -gt 0 ]] || fail "integration/bench/mkimage.sh built no layers"
nbig=$((${#bigl[@]} / 2))
$CRANE append --oci-empty-base "${bigl[@]}" -t "$REG/big/data:v1" >/dev/null 2>&1 || fail "push big/data:v1"
echo "ECR $ECR_HOST (API $ECR_ENDPOINT, registry http://$REG):"
for r in team/api team/web multi/tool big/data; do printf '  %-11s tags: %s\n' "$r" "$($CRANE ls "$REG/$r" 2>/dev/null | tr '\n' ' ')"; done
echo "  untagged: team/api's first v2 (pushed over), multi/tool's two single-arch builds from before their platform was set; multi/tool:latest is a linux/amd64+arm64 index; big/data:v1 is the benchmarks' realistic image ($nbig layers, $(du -cm $(integration/bench/mkimage.sh) | tail -1 | cut -f1) MB gzip)"

# ---------------------------------------------------------------- 2. migrate
"$work/mkbucket" "$S3SNAP_S3_ENDPOINT" "s3snap-demo-$$" || fail "create bucket s3snap-demo-$$"
BUCKET=s3snap-demo-$$ # removed on exit
DST=s3://$BUCKET/ecr
step 2a "s3snap migrate --dry-run $ECR_URL $DST (inventory and cost)"
$S3SNAP migrate --ecr-endpoint "$ECR_ENDPOINT" --dry-run "$ECR_URL" "$DST" 2>"$work/dry-run.err" || fail "migrate --dry-run"
step 2b "s3snap migrate $ECR_URL $DST"
s=$(date +%s.%N)
$S3SNAP migrate --ecr-endpoint "$ECR_ENDPOINT" "$ECR_URL" "$DST" || fail "migrate"
echo "   migrate took $(since "$s")s"
step 2c "s3snap verify $ECR_URL $DST (the cutover gate)"
$S3SNAP verify --ecr-endpoint "$ECR_ENDPOINT" "$ECR_URL" "$DST" || fail "verify: the bucket does not hold what ECR holds"
ok "every tag and untagged image is in the bucket at the same digest"

# ---------------------------------------------------------------- 3. node
step 3a "a node: s3snap install --root (containerd 2.x config), then the agent and containerd started from exactly those files"
root=$work/root
hostsdir=/tmp/s3demo-certs.$$ # the node path config_path names; leads into the root
mirror=127.0.0.1:$(freeport 600 1000); metrics=127.0.0.1:$(freeport 600 1000)
[[ $mirror != "$metrics" ]] || metrics=127.0.0.1:$(freeport 600 1000)
mkdir -p "$root/etc/containerd"
"$B/containerd" config default >"$root/etc/containerd/config.toml"
$work/s3snap install --root "$root" --binary "$work/s3snap" --containerd-version 2.4.2 \
  --bucket "$BUCKET" --prefix ecr --registry "$ECR_HOST=http://$REG" --region "$AWS_REGION" --endpoint "$S3SNAP_S3_ENDPOINT" \
  --socket "$work/run/s3snap.sock" --state-dir "$work/agent" --mirror-address "$mirror" --metrics-address "$metrics" \
  --hosts-dir "$hostsdir" --lazy || fail "s3snap install"
ln -sfn "$root$hostsdir" "$hostsdir"
AWS_PROFILE= AWS_ENDPOINT_URL= "$work/s3snap" agent --config "$root/etc/s3snap/config.toml" >"$work/agent.log" 2>&1 &
pids+=($!)
PATH="$B:$PATH" "$B/containerd" --config "$root/etc/containerd/config.toml" --root "$work/ctrd/root" --state "$work/ctrd/state" \
  --address "$work/c.sock" >"$work/containerd.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  curl -sf -o /dev/null "http://$metrics/metrics" && "$B/ctr" --address "$work/c.sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf -o /dev/null "http://$metrics/metrics" || fail "the agent did not start: $(tail -5 "$work/agent.log")"
"$B/ctr" --address "$work/c.sock" version >/dev/null 2>&1 || fail "containerd did not start: $(tail -5 "$work/containerd.log")"
ok "agent (mirror $mirror, metrics $metrics) and containerd $("$B/containerd" --version | awk '{print $3}') running from $root"

# metric NAME: the sum of the agent's series NAME{...}.
metric() { curl -sf "http://$metrics/metrics" | awk -v m="$1" '{split($1, a, "{")} a[1] == m {s += $2} END {printf "%d", s}'; }
printf 'runtime-endpoint: unix://%s/c.sock\nimage-endpoint: unix://%s/c.sock\n' "$work" "$work" >"$work/crictl.yaml"
crictl() { "$B/crictl" --config "$work/crictl.yaml" --runtime-endpoint "unix://$work/c.sock" --image-endpoint "unix://$work/c.sock" --timeout 60s "$@"; }
ctrk() { "$B/ctr" --address "$work/c.sock" -n k8s.io "$@"; }
blobs() { grep -c '"GET /v2/[^ ]*/blobs/' "$work/registry.log" || true; }

step 3b "crictl pull $ECR_HOST/team/api:v1, then a container from it (ctr -n k8s.io run: no pod sandbox, whose pause image is not at hand offline)"
before=$(blobs)
crictl pull "$ECR_HOST/team/api:v1" || fail "crictl pull $ECR_HOST/team/api:v1"
provided=$(metric s3snap_snapshotter_layers_provided_total)
served=$(($(blobs) - before))
echo "   layers provided from S3 by the snapshotter (agent metric s3snap_snapshotter_layers_provided_total): ${provided:-none}"
echo "   blobs the ECR registry served: $served"
[[ ${provided:-0} == 3 ]] || fail "the agent provided ${provided:-no} layers from S3, want all 3"
[[ $served == 0 ]] || fail "the ECR registry served $served blobs, want 0"
out=$(ctrk run --rm --snapshotter s3snap "$ECR_HOST/team/api:v1" demo-api /hello /app/version 2>"$work/ctr.err") || fail "run a container from $ECR_HOST/team/api:v1: $out"
echo "$out" | sed 's/^/   container: /'
grep -q "hello from s3snap" <<<"$out" || fail "the container did not print its greeting"
ok "every layer came from S3, the registry served no blob, the container ran"

# ---------------------------------------------------------------- 4. lazy
step 4a "lazy mode: s3snap index $DST/big/data:v1"
$S3SNAP index "$DST/big/data:v1" || fail "s3snap index"
step 4b "cold pull + first command: containerd's own pull from the registry, then the agent's lazy (FUSE) mounts from S3"
s=$(date +%s.%N)
"$B/ctr" --address "$work/c.sock" -n demo-plain images pull --plain-http --user "AWS:$ECR_TOKEN" "$REG/big/data:v1" >/dev/null 2>"$work/ctr.err" || fail "containerd's own pull of $REG/big/data:v1"
out=$("$B/ctr" --address "$work/c.sock" -n demo-plain run --rm "$REG/big/data:v1" demo-plain /usr/local/go/bin/go version 2>"$work/ctr.err") || fail "run big/data:v1 (containerd's pull): $out"
plain=$(since "$s")
grep -q "go version go1" <<<"$out" || fail "big/data:v1 (containerd's pull): go version printed: $out"
s=$(date +%s.%N)
crictl pull "$ECR_HOST/big/data:v1" >/dev/null || fail "crictl pull $ECR_HOST/big/data:v1"
out=$(ctrk run --rm --snapshotter s3snap "$ECR_HOST/big/data:v1" demo-lazy /usr/local/go/bin/go version 2>"$work/ctr.err") || fail "run big/data:v1 (lazy): $out"
lazyt=$(since "$s")
grep -q "go version go1" <<<"$out" || fail "big/data:v1 (lazy): go version printed: $out"
echo "   first command (/usr/local/go/bin/go version): $out"
lazyn=$(metric s3snap_snapshotter_lazy_layers_total)
printf '   containerd pull + first command: %6.2fs\n   s3snap lazy pull + first command: %6.2fs  (%s of %s layers mounted lazily)\n   ratio: %.1fx\n' \
  "$plain" "$lazyt" "$lazyn" "$nbig" "$(echo "$plain / $lazyt" | bc -l)"
[[ $lazyn == "$nbig" ]] || fail "the agent mounted $lazyn layers lazily, want $nbig"
ok "the big image started from S3 with its layers read on demand"

# ---------------------------------------------------------------- 5. doctor
step 5 "s3snap doctor on that node"
AWS_PROFILE= AWS_ENDPOINT_URL= "$work/s3snap" doctor --config "$root/etc/s3snap/config.toml" \
  --containerd-config "$root/etc/containerd/config.toml" --containerd-address "$work/c.sock" --timeout 5s || fail "s3snap doctor: the node is not healthy"
ok "all green"

# ---------------------------------------------------------------- 6. cleanup
step 6 "stop and remove everything"
cleanup
trap - EXIT
ok "demo passed in $(since "$t0")s"
