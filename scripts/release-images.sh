#!/usr/bin/env bash
# The images a release publishes, and the two steps of publishing them (run by
# .github/workflows/release.yml; scripts/version-check.sh reads the list):
#
#   release-images.sh list                     the image names, one a line
#   release-images.sh build PLATFORM OUTDIR    builds every image for PLATFORM (linux/amd64 or
#                                              linux/arm64) on a runner of that architecture, pushes
#                                              each by digest to $PREFIX/<name> and writes the
#                                              digest to OUTDIR/<name>; checks the binaries'
#                                              --version against the workspace version
#   release-images.sh merge DIGESTDIR          makes $PREFIX/<name>:<version> a multi-arch index of
#                                              the digests in DIGESTDIR/digests-{amd64,arm64}/<name>
#                                              (the build step's OUTDIRs), and checks its platforms
#
# PREFIX is the registry and owner, e.g. ghcr.io/stead-dev. Needs docker with buildx, logged in.
set -euo pipefail
cd "$(dirname "$0")/.."

# name            dockerfile                   target
IMAGES="
stead-operator    docker/operator.Dockerfile   -
stead             docker/stead.Dockerfile      stead
stead-counter     docker/stead.Dockerfile      counter
stead-chat        docker/stead.Dockerfile      chat
stead-life        docker/stead.Dockerfile      life
"
# The images whose binary answers --version with "<binary> <version>".
VERSIONED="stead-operator:stead-operator stead:stead"
PLATFORMS="linux/amd64 linux/arm64"

fail() {
  echo "release-images: FAILED: $*" >&2
  exit 1
}

images() { awk 'NF == 3 { print }' <<<"$IMAGES"; }

cmd="${1:-}"
if [[ "$cmd" == list ]]; then
  images | awk '{ print $1 }'
  exit 0
fi

PREFIX="${PREFIX:?set PREFIX, e.g. ghcr.io/stead-dev}"
VERSION="$(scripts/version-check.sh --print)"

case "$cmd" in
  build)
    platform="${2:?platform}" out="${3:?out dir}"
    [[ " $PLATFORMS " == *" $platform "* ]] || fail "unknown platform $platform (want one of $PLATFORMS)"
    mkdir -p "$out"
    while read -r name dockerfile target; do
      echo "release-images: building $PREFIX/$name for $platform" >&2
      meta="$(mktemp)"
      args=(--platform "$platform" -f "$dockerfile" --metadata-file "$meta"
        --label "org.opencontainers.image.version=$VERSION"
        --output "type=image,name=$PREFIX/$name,push-by-digest=true,name-canonical=true,push=true")
      [[ "$target" == - ]] || args+=(--target "$target")
      docker buildx build "${args[@]}" . || fail "building $name for $platform"
      digest="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' "$meta")"
      [[ "$digest" == sha256:* ]] || fail "no digest for $name in $meta"
      echo "$digest" >"$out/$name"
      rm -f "$meta"
    done < <(images)
    # The runner's own architecture runs the images: what they say is what users will see.
    for pair in $VERSIONED; do
      name="${pair%%:*}" bin="${pair#*:}"
      got="$(docker run --rm --platform "$platform" "$PREFIX/$name@$(cat "$out/$name")" --version)" ||
        fail "running $name --version"
      [[ "$got" == "$bin $VERSION" ]] || fail "$name --version says '$got', want '$bin $VERSION'"
      echo "release-images: $name --version: $got" >&2
    done
    ;;
  merge)
    dir="${2:?digest dir}"
    while read -r name _ _; do
      refs=()
      for platform in $PLATFORMS; do
        file="$dir/digests-${platform#linux/}/$name"
        [[ -s "$file" ]] || fail "no $platform digest for $name ($file)"
        refs+=("$PREFIX/$name@$(cat "$file")")
      done
      docker buildx imagetools create -t "$PREFIX/$name:$VERSION" "${refs[@]}" ||
        fail "creating $PREFIX/$name:$VERSION"
      inspect="$(docker buildx imagetools inspect "$PREFIX/$name:$VERSION")"
      for platform in $PLATFORMS; do
        grep -q "Platform: *$platform\$" <<<"$inspect" || fail "$PREFIX/$name:$VERSION lacks $platform"
      done
      echo "release-images: pushed $PREFIX/$name:$VERSION ($PLATFORMS)" >&2
    done < <(images)
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
