#!/usr/bin/env bash
# demo.sh is s3snap's main job, end to end, against local servers it starts:
# build an image, put it into an S3 bucket in Distribution's layout, list and
# inspect it there, then prove a stock registry serves the bucket as is.
set -euo pipefail
cd "$(dirname "$0")/.."

integration/env.sh up
# shellcheck disable=SC1091
source "${S3SNAP_STATE:-/tmp/s3snap-env}/env"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

make -s build
S3SNAP="$PWD/bin/s3snap --endpoint $S3SNAP_S3_ENDPOINT"
CRANE="$S3SNAP_BIN/crane"
BUCKET=s3snap-demo
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

step "build a two-layer image and push it to the local registry ($S3SNAP_REGISTRY)"
mkdir -p "$work/l1/etc" "$work/l2/app"
cp /etc/os-release "$work/l1/etc/os-release"
echo "hello from s3snap" >"$work/l2/app/hello.txt"
tar -C "$work/l1" -czf "$work/l1.tar.gz" .
tar -C "$work/l2" -czf "$work/l2.tar.gz" .
$CRANE append --insecure --oci-empty-base -f "$work/l1.tar.gz" -f "$work/l2.tar.gz" \
  -t "$S3SNAP_REGISTRY/demo/hello:v1"
want=$($CRANE digest --insecure "$S3SNAP_REGISTRY/demo/hello:v1")
$CRANE pull --insecure --format oci "$S3SNAP_REGISTRY/demo/hello:v1" "$work/oci"

step "put it into s3://$BUCKET/mirror (Distribution's layout)"
go run ./integration/cmd/mkbucket "$S3SNAP_S3_ENDPOINT" "$BUCKET"
$S3SNAP push --prefix mirror "$work/oci" "s3://$BUCKET/mirror/demo/hello:v1"

step "s3snap ls s3://$BUCKET/mirror"
$S3SNAP ls "s3://$BUCKET/mirror"
step "s3snap ls s3://$BUCKET/mirror/demo/hello"
$S3SNAP ls "s3://$BUCKET/mirror/demo/hello"
step "s3snap inspect s3://$BUCKET/mirror/demo/hello:v1"
$S3SNAP inspect "s3://$BUCKET/mirror/demo/hello:v1"

step "a stock Distribution registry over the same bucket serves it"
port=15099
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage:
  s3:
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    region: us-east-1
    regionendpoint: $S3SNAP_S3_ENDPOINT
    forcepathstyle: true
    bucket: $BUCKET
    rootdirectory: /mirror
  redirect: {disable: true}
http: {addr: 127.0.0.1:$port}
YML
OTEL_TRACES_EXPORTER=none "$S3SNAP_BIN/registry" serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
got=$($CRANE digest --insecure "127.0.0.1:$port/demo/hello:v1")
echo "source registry digest: $want"
echo "bucket via stock registry: $got"
[[ "$got" == "$want" ]] || { echo "demo: digests differ" >&2; exit 1; }
echo "demo: OK, identical digests"
