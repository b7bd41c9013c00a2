#!/usr/bin/env bash
# Lints every GitHub Actions workflow (.github/workflows/*.yml) with actionlint: expression and
# context types, job `needs` and outputs, matrix keys, runner labels, action inputs of popular
# actions, glob patterns. actionlint is built from its Go module (scripts/go-tool.sh; nothing is
# downloaded from GitHub). Its shellcheck and pyflakes integrations are off: they would run or not
# depending on what the machine has installed, and the same commit must pass or fail everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTIONLINT_VERSION="${STEAD_ACTIONLINT_VERSION:-v1.7.12}"

fail() {
  echo "workflow-check: FAILED: $*" >&2
  exit 1
}

source scripts/go-tool.sh
go_tool actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION"
actionlint() { "$STEAD_TOOLS_BIN/actionlint" -shellcheck= -pyflakes= "$@"; }

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
((${#workflows[@]} > 0)) || fail "no .github/workflows/*.yml"
actionlint "${workflows[@]}" || fail "actionlint found problems in .github/workflows"

# The lint must bite: a job that needs a job that does not exist is refused.
if actionlint - >/dev/null 2>&1 <<'BAD'; then
on: push
jobs:
  a:
    needs: nope
    runs-on: ubuntu-24.04
    steps:
      - run: echo "${{ needs.nope.outputs.x }}"
BAD
  fail "actionlint accepted a workflow whose job needs a missing job"
fi

echo "workflow-check: ok (actionlint $ACTIONLINT_VERSION, ${#workflows[@]} workflows)"
