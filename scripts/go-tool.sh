# Sourced by the check scripts: builds a Go tool from its module once, through the Go module
# proxy (nothing is downloaded from GitHub), into $STEAD_TOOLS_DIR/bin (~/.cache/stead-tools/bin
# by default, shared between checkouts and kept by CI's cache), stamped with its version.
#
#   go_tool NAME MODULE VERSION     then "$STEAD_TOOLS_BIN/NAME" is that version
# The caller defines fail().
STEAD_TOOLS_BIN="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}/bin"

go_tool() { # name module version
  local name=$1 module=$2 version=$3 stamp="$STEAD_TOOLS_BIN/.$1-$3"
  [[ -x "$STEAD_TOOLS_BIN/$name" && -e "$stamp" ]] && return 0
  command -v go >/dev/null 2>&1 || fail "go is not installed (needed to build $name)"
  mkdir -p "$STEAD_TOOLS_BIN"
  echo "building $name $version (go install $module@$version)" >&2
  GOTOOLCHAIN=local GOBIN="$STEAD_TOOLS_BIN" CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "$module@$version" || fail "building $name $version"
  rm -f "$STEAD_TOOLS_BIN/.$name-"*
  touch "$stamp"
}
