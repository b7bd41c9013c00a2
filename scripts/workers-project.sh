#!/usr/bin/env bash
# Makes a Workers project ready for `docker build` / `buildah bud` the way a user without a
# published @stead/workers does (docs/getting-started.md, "Build the image"): a copy of the
# project in DEST, what `stead init` adds to it (Dockerfile, .dockerignore, k8s/NAME.yaml), the
# SDK packed into it with `npm pack sdk-ts`, package.json depending on that tarball
# ("@stead/workers": "file:./stead-workers-VERSION.tgz") and package-lock.json for the image's
# `npm ci`. Prints the image the manifest names (NAME:0.1.0) on stdout.
#
#   scripts/workers-project.sh SRC DEST STEAD_BIN
#   scripts/workers-project.sh examples/chat-ts /tmp/x/chat-ts target/debug/stead
#
# DEST is replaced. Needs node and npm (and the npm registry, for the SDK's own dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

SRC="${1:?usage: scripts/workers-project.sh SRC DEST STEAD_BIN}"
DEST="${2:?usage: scripts/workers-project.sh SRC DEST STEAD_BIN}"
STEAD_BIN="${3:?usage: scripts/workers-project.sh SRC DEST STEAD_BIN}"
ROOT="$PWD"

fail() {
  echo "workers-project: FAILED: $*" >&2
  exit 1
}
[[ -x "$STEAD_BIN" ]] || fail "no stead binary at $STEAD_BIN (cargo build -p stead-sidecar --bin stead)"
command -v npm >/dev/null 2>&1 || fail "npm is not installed (Node.js 20 or later)"

# stead init reads the project's classes with the runner, which needs the SDK's dependencies.
[[ -d sdk-ts/node_modules ]] || (cd sdk-ts && npm ci --no-audit --no-fund --loglevel=error >&2)

rm -rf "$DEST"
mkdir -p "$DEST"
tar -C "$SRC" --exclude=node_modules --exclude=.stead -cf - . | tar -C "$DEST" -xf -
name="$(basename "$DEST")"
"$STEAD_BIN" init --name "$name" "$DEST" >&2 || fail "stead init $DEST"
[[ -f "$DEST/Dockerfile" && -f "$DEST/k8s/$name.yaml" ]] || fail "stead init wrote no Dockerfile or k8s/$name.yaml"

tarball="$(cd "$DEST" && npm pack --silent "$ROOT/sdk-ts" | tail -n 1)"
[[ -f "$DEST/$tarball" ]] || fail "npm pack sdk-ts made no $tarball"
if [[ ! -f "$DEST/package.json" ]]; then
  cat >"$DEST/package.json" <<EOF
{
  "name": "$name",
  "version": "0.1.0",
  "private": true,
  "type": "module"
}
EOF
fi
# npm install records "file:stead-workers-VERSION.tgz" in package.json and package-lock.json.
(cd "$DEST" && npm install --no-audit --no-fund --loglevel=error --package-lock-only --save "./$tarball" >&2) ||
  fail "npm install ./$tarball in $DEST"
grep -q "\"@stead/workers\": \"file:$tarball\"" "$DEST/package.json" ||
  fail "package.json of $DEST does not depend on file:$tarball: $(cat "$DEST/package.json")"

image="$(sed -n 's/^ *image: *//p' "$DEST/k8s/$name.yaml")"
[[ -n "$image" ]] || fail "no image in $DEST/k8s/$name.yaml"
echo "$image"
