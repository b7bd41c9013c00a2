#!/usr/bin/env bash
# Builds the images of the one-node cluster tier without Docker or a registry, with Debian's
# buildah, from the Dockerfiles users build (docker/*.Dockerfile, with --build-arg
# BINARIES=prebuilt: the binaries come from dist/, built on this host), and writes each image as
# a docker-archive into OUT (default: $STEAD_NODE_DIR/images) for `ctr images import`:
#
#   scripts/node-images.sh BIN_DIR [OUT]
#
# BIN_DIR holds the binaries (stead, counter, chat, life, stead-operator; a debug build is fine).
# No registry is reachable here, so the runtime base is assembled from this Debian 12 host's own
# files (glibc, libgcc, CA certificates, a passwd with nonroot 65532: what distroless
# cc-debian12:nonroot holds) as localhost/stead-runtime:cc-debian12, and the pause image and the
# helpers (CoreDNS, busybox for `helm test`) are single-binary images made with buildah.
#
# The TypeScript chat (examples/chat-ts) is built as a user builds a Workers project: `stead
# init` adds its Dockerfile and manifest, the SDK goes in as an `npm pack` tarball, and
# `buildah bud` builds it on a Node base assembled from this host's node and npm
# (localhost/stead-node:20-bookworm-slim, passed as --build-arg NODE_IMAGE). That project,
# with the manifest scripts/node-e2e.sh applies (k8s/chat-ts.yaml), is left in
# OUT/projects/chat-ts.
#
# Image names (what scripts/node-e2e.sh installs): stead:dev, stead-operator:dev, the counter
# and chat images their manifests in examples/*/k8s/ name, chat-ts:0.1.0 (the image stead init
# names), registry.k8s.io/pause:3.10, localhost/stead-coredns:dev, localhost/stead-busybox:dev.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR="${1:?usage: scripts/node-images.sh BIN_DIR [OUT]}"
OUT="${2:-${STEAD_NODE_DIR:-/var/lib/stead-node}/images}"
TOOLS_BIN="${STEAD_NODE_TOOLS:-$HOME/.cache/stead-node}/bin"
RUNTIME=localhost/stead-runtime:cc-debian12
NODE_BASE=localhost/stead-node:20-bookworm-slim
mkdir -p "$OUT"

say() { echo "node-images: $*" >&2; }
fail() {
  echo "node-images: FAILED: $*" >&2
  exit 1
}
command -v buildah >/dev/null 2>&1 || fail "buildah is not installed (scripts/node-tools.sh installs it)"
if ! command -v busybox >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox >/dev/null || fail "apt-get install busybox"
fi

# buildah keeps its layers here between runs (a build cache); chroot isolation because the
# Dockerfiles' runtime stages run nothing, and the helpers are assembled without RUN.
export BUILDAH_ISOLATION=chroot
export STORAGE_DRIVER=overlay

# dist/: the binaries the Dockerfiles' `prebuilt` stage copies, stripped (debug builds carry
# hundreds of MB of debug info).
rm -rf dist
mkdir -p dist
for b in stead counter chat life stead-operator; do
  [[ -x "$BIN_DIR/$b" ]] || fail "no $BIN_DIR/$b (cargo build --workspace --bins builds it)"
  strip -o "dist/$b" "$BIN_DIR/$b" 2>/dev/null || cp "$BIN_DIR/$b" "dist/$b"
done

# The runtime base: every shared library the binaries load, from this host, and the nonroot user.
build_runtime() {
  local root
  root="$(mktemp -d)"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
  cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
  chown 65532:65532 "$root/home/nonroot"
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  local lib
  for lib in $(ldd dist/* 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  local c
  c="$(buildah from scratch)"
  buildah copy --quiet "$c" "$root" / >/dev/null
  buildah config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$c"
  buildah commit --quiet --rm "$c" "$RUNTIME" >/dev/null
  rm -rf "$root"
}

# The Node base of a Workers project's image (the Dockerfile `stead init` writes takes it as
# --build-arg NODE_IMAGE): what node:20-bookworm-slim holds that the image needs, from this
# host: node, npm (and npx), /bin/sh (dash) and /usr/bin/env for npm's scripts, their libraries,
# this host's CA certificates (which node trusts besides its own, as node on this host does:
# NODE_EXTRA_CA_CERTS), and the user node (uid 1000) with /home/node.
build_node_base() {
  local root node npm_dir
  node="$(command -v node)" || fail "node is not installed (the Node base is assembled from it)"
  node="$(readlink -f "$node")"
  npm_dir="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
  [[ -f "$npm_dir/package.json" ]] || fail "npm is not installed where node's is ($npm_dir)"
  [[ "$("$node" --version)" == v20.* ]] || say "note: this host's node is $("$node" --version), not 20"
  root="$(mktemp -d)"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/root" "$root/home/node" "$root/usr/bin" \
    "$root/usr/local/bin" "$root/usr/local/lib/node_modules" "$root/bin"
  chmod 1777 "$root/tmp"
  cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
node:x:1000:1000::/home/node:/bin/sh
PASSWD
  cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
node:x:1000:
GROUP
  chown 1000:1000 "$root/home/node"
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  # Where the official image has them.
  cp "$node" "$root/usr/local/bin/node"
  cp -a "$npm_dir" "$root/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
  cp "$(readlink -f /bin/sh)" "$root/bin/sh"
  cp "$(readlink -f /usr/bin/env)" "$root/usr/bin/env"
  local lib
  for lib in $(ldd "$root/usr/local/bin/node" "$root/bin/sh" "$root/usr/bin/env" 2>/dev/null |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  local c
  c="$(buildah from scratch)"
  buildah copy --quiet "$c" "$root" / >/dev/null
  buildah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env NODE_VERSION="$("$node" --version | tr -d v)" \
    --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    --cmd '["node"]' "$c"
  buildah commit --quiet --rm "$c" "$NODE_BASE" >/dev/null
  rm -rf "$root"
}

# One binary as an image: single NAME BINARY ENTRYPOINT-JSON [USER]
single() {
  local name=$1 binary=$2 entry=$3 user=${4:-65532:65532} c
  c="$(buildah from scratch)"
  buildah copy --quiet "$c" "$binary" "/$(basename "$binary")" >/dev/null
  buildah config --entrypoint "$entry" --user "$user" "$c"
  buildah commit --quiet --rm "$c" "$name" >/dev/null
}

archive() {
  local image=$1 file
  file="$OUT/$(echo "$image" | tr '/:' '__').tar"
  rm -f "$file"
  buildah push --quiet "$image" "docker-archive:$file:$image" >/dev/null || fail "writing $image to $file"
}

# buildah 1.28 leaves a working container behind for each `COPY --from` of a stage: whatever
# containers this run adds are removed at its end.
containers_before="$(buildah containers -q 2>/dev/null | sort)"
remove_new_containers() {
  comm -13 <(echo "$containers_before") <(buildah containers -q 2>/dev/null | sort) |
    xargs -r buildah rm >/dev/null 2>&1 || true
}
trap remove_new_containers EXIT

say "assembling $RUNTIME from this host's libraries"
build_runtime

counter_image="$(sed -n 's/^ *image: *//p' examples/counter/k8s/counter.yaml)"
chat_image="$(sed -n 's/^ *image: *//p' examples/chat/k8s/chat.yaml)"
[[ -n "$counter_image" && -n "$chat_image" ]] || fail "no image in examples/{counter,chat}/k8s/*.yaml"

bud() {
  local file=$1 tag=$2
  shift 2
  say "buildah bud -f $file $* -t $tag"
  buildah bud --quiet --layers --build-arg BINARIES=prebuilt --build-arg "RUNTIME=$RUNTIME" \
    -f "$file" "$@" -t "$tag" . >/dev/null || fail "buildah bud -f $file $* (see above)"
}
bud docker/stead.Dockerfile stead:dev --target stead
bud docker/stead.Dockerfile "$counter_image" --target counter
bud docker/stead.Dockerfile "$chat_image" --target chat
bud docker/operator.Dockerfile stead-operator:dev

# The Dockerfiles' user, entrypoint and paths are what the cluster depends on: check them.
check() {
  local image=$1 entry=$2 got
  got="$(buildah inspect --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' "$image")"
  [[ "$got" == "65532:65532 $entry" ]] || fail "$image: user and entrypoint are '$got', want '65532:65532 $entry'"
}
check stead:dev '[/usr/local/bin/stead]'
check "$counter_image" '[/usr/local/bin/counter]'
check "$chat_image" '[/usr/local/bin/chat]'
check stead-operator:dev '[/usr/local/bin/stead-operator]'

# The TypeScript chat as a user builds a Workers project's image: the Dockerfile `stead init`
# writes, on the Node base assembled here, with the SDK as a tarball from `npm pack sdk-ts`
# (scripts/workers-project.sh); `npm ci` in the build fetches the SDK's dependencies from npm.
say "assembling $NODE_BASE from this host's node and npm"
build_node_base
say "the Workers project examples/chat-ts as stead init makes it, in $OUT/projects/chat-ts"
workers_image="$(scripts/workers-project.sh examples/chat-ts "$OUT/projects/chat-ts" "$BIN_DIR/stead")" ||
  fail "scripts/workers-project.sh examples/chat-ts"
say "buildah bud $OUT/projects/chat-ts -t $workers_image"
buildah bud --quiet --layers --build-arg "NODE_IMAGE=$NODE_BASE" -t "$workers_image" "$OUT/projects/chat-ts" >/dev/null ||
  fail "buildah bud of the Workers chat (its Dockerfile is stead init's; see above)"
got="$(buildah inspect --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Cmd}}' "$workers_image")"
[[ "$got" == "node [node node_modules/@stead/workers/bin/stead-workers.mjs serve --config wrangler.toml]" ]] ||
  fail "$workers_image: user and command are '$got'"

say "assembling the pause, CoreDNS and busybox images"
single registry.k8s.io/pause:3.10 "$TOOLS_BIN/pause" '["/pause"]' 65535:65535
single localhost/stead-coredns:dev "$TOOLS_BIN/coredns" '["/coredns"]'
# busybox as the chart's test pod calls it: every applet (sh, wget, timeout, ...) on the PATH, on the runtime base
# (Debian's busybox may be linked dynamically), with any library of its the base lacks.
bb="$(mktemp -d)"
mkdir -p "$bb/bin"
cp "$(command -v busybox)" "$bb/bin/busybox"
for t in $(busybox --list); do ln -sf busybox "$bb/bin/$t"; done
for lib in $(ldd "$bb/bin/busybox" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}'); do
  mkdir -p "$bb$(dirname "$lib")"
  cp -L "$lib" "$bb$lib"
done
c="$(buildah from "$RUNTIME")"
buildah copy --quiet "$c" "$bb" / >/dev/null
buildah config --cmd '["/bin/sh"]' --env PATH=/bin:/usr/bin "$c"
buildah commit --quiet --rm "$c" localhost/stead-busybox:dev >/dev/null
rm -rf "$bb"

for image in stead:dev "$counter_image" "$chat_image" "$workers_image" stead-operator:dev registry.k8s.io/pause:3.10 \
  localhost/stead-coredns:dev localhost/stead-busybox:dev; do
  archive "$image"
done

# Layers no tag names any more (the previous run's images).
buildah rmi --prune >/dev/null 2>&1 || true
say "images in $OUT"
