#!/usr/bin/env bash
# Checks the Helm chart and the example manifests without a cluster:
#   1. the chart's copy of each CRD is byte-for-byte the generated crds/*.yaml
#      (`scripts/helm-check.sh --sync` copies them over);
#   2. `helm lint` (default values, and every optional feature switched on);
#   3. `helm template | kubeconform -strict`, with offline schemas:
#        - core kinds (Deployment, Service, RBAC, CRD, ...) against JSON schemas converted from
#          the OpenAPI document of the Kubernetes release the envtest tier uses (swagger.json of
#          the Go module k8s.io/kubernetes, from the Go module proxy);
#        - DurableNamespace against a JSON schema converted from crds/*.yaml;
#        - ServiceMonitor (prometheus-operator's CRD, not shipped here) is the only kind whose
#          schema is missing; it is skipped by name, and only when the monitoring values are on;
#   4. examples/*/k8s/*.yaml, and the manifests `stead init` writes, against the same schemas.
# The `helm test` hook (templates/tests/) is rendered and checked with the rest.
# kubeconform's default schema location is on GitHub, which this machine cannot reach; nothing
# here downloads anything but Go modules. What JSON schema cannot check (CEL rules such as slots
# immutability, defaults) is the envtest tier's job (operator/tests/envtest.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION="${STEAD_HELM_VERSION:-v4.3.1}"
KUBECONFORM_VERSION="${STEAD_KUBECONFORM_VERSION:-v0.8.0}"
# The release whose OpenAPI document validates core kinds; the envtest tier runs the same one.
KUBE_VERSION="${STEAD_ENVTEST_KUBE_VERSION:-v1.34.4}"
TOOLS="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}"
BIN="$TOOLS/bin"
CHART=charts/stead
CHART_CRDS="$CHART/files/crds"

fail() {
  echo "helm-check: FAILED: $*" >&2
  exit 1
}

if [[ "${1:-}" == "--sync" ]]; then
  rm -f "$CHART_CRDS"/*.yaml
  mkdir -p "$CHART_CRDS"
  cp crds/*.yaml "$CHART_CRDS"/
  echo "helm-check: copied crds/*.yaml into $CHART_CRDS"
  exit 0
fi

# --- tools -------------------------------------------------------------------------------
export GOTOOLCHAIN=local
source scripts/go-tool.sh
go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
HELM="$BIN/helm"
KUBECONFORM="$BIN/kubeconform"
python3 -c 'import yaml' 2>/dev/null ||
  fail "python3 with PyYAML is needed to convert the CRD to JSON schema (pip install pyyaml)"

# --- 1. the chart's CRDs are the generated ones --------------------------------------------
shopt -s nullglob
generated=(crds/*.yaml)
((${#generated[@]} > 0)) || fail "no crds/*.yaml (generate them: cargo run -p stead-operator --bin crdgen)"
for f in "${generated[@]}"; do
  copy="$CHART_CRDS/$(basename "$f")"
  [[ -f "$copy" ]] || fail "$copy is missing: run scripts/helm-check.sh --sync"
  cmp -s "$f" "$copy" || fail "$copy differs from $f: run scripts/helm-check.sh --sync"
done
for copy in "$CHART_CRDS"/*.yaml; do
  [[ -f "crds/$(basename "$copy")" ]] || fail "$copy has no crds/ counterpart: run scripts/helm-check.sh --sync"
done
echo "helm-check: chart CRDs match crds/*.yaml (${#generated[@]} file(s))"

# --- schemas -------------------------------------------------------------------------------
SCHEMAS="$TOOLS/schemas/$KUBE_VERSION"
if [[ ! -e "$SCHEMAS/.done" ]]; then
  echo "helm-check: converting the OpenAPI document of k8s.io/kubernetes $KUBE_VERSION to JSON schemas" >&2
  moddir="$(cd "$TOOLS" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" ||
    fail "downloading k8s.io/kubernetes $KUBE_VERSION from the Go module proxy"
  rm -rf "$SCHEMAS"
  python3 scripts/helm-check-schemas.py openapi "$moddir/api/openapi-spec/swagger.json" "$SCHEMAS" ||
    fail "converting $moddir/api/openapi-spec/swagger.json"
  touch "$SCHEMAS/.done"
fi
CRD_SCHEMAS="$(mktemp -d)"
trap 'rm -rf "$CRD_SCHEMAS"' EXIT
python3 scripts/helm-check-schemas.py crd "$CRD_SCHEMAS" crds/*.yaml || fail "converting crds/*.yaml to JSON schemas"

conform() { # extra kubeconform args..., then files or - for stdin
  "$KUBECONFORM" -strict -summary -output text \
    -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    "$@"
}

# --- 2. lint, 3. template | kubeconform ---------------------------------------------------
ALL_ON=(--set metrics.serviceMonitor.enabled=true --set operator.replicas=2
  --set podDisruptionBudget.enabled=true)
"$HELM" lint --strict "$CHART" || fail "helm lint $CHART"
"$HELM" lint --strict "$CHART" "${ALL_ON[@]}" || fail "helm lint $CHART (all features on)"

render() { "$HELM" template stead "$CHART" --namespace stead-system "$@"; }
render | conform - || fail "helm template $CHART | kubeconform"
render --set crds.install=false | conform - || fail "helm template $CHART (crds.install=false) | kubeconform"
render "${ALL_ON[@]}" | conform -skip ServiceMonitor - ||
  fail "helm template $CHART (all features on) | kubeconform"
render "${ALL_ON[@]}" | grep -q '^kind: ServiceMonitor' || fail "metrics.serviceMonitor.enabled=true renders no ServiceMonitor"
render | grep -q '^kind: CustomResourceDefinition' || fail "the chart renders no CustomResourceDefinition"
render | grep -q 'helm.sh/resource-policy: keep' || fail "the chart's CRDs lack helm.sh/resource-policy: keep"
# The template's fromYaml/toYaml round trip must leave each CRD as generated, but for the
# annotation and labels it adds.
render | python3 -c '
import sys, yaml
rendered = {d["metadata"]["name"]: d for d in yaml.safe_load_all(sys.stdin)
            if d and d.get("kind") == "CustomResourceDefinition"}
for path in sys.argv[1:]:
    for want in yaml.safe_load_all(open(path)):
        if not want:
            continue
        got = rendered.pop(want["metadata"]["name"], None)
        if got is None:
            sys.exit(f"{path}: not rendered by the chart")
        meta = got["metadata"]
        if meta.get("annotations", {}).pop("helm.sh/resource-policy", None) != "keep":
            sys.exit(f"{path}: rendered without helm.sh/resource-policy: keep")
        for k in ("app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
            meta.get("labels", {}).pop(k, None)
        for k in ("annotations", "labels"):
            if meta.get(k) == {} and k not in want["metadata"]:
                del meta[k]
        if got != want:
            sys.exit(f"{path}: the chart renders a different CRD")
if rendered:
    sys.exit(f"the chart renders CRDs not in crds/: {sorted(rendered)}")
' crds/*.yaml || fail "the chart's rendered CRDs differ from crds/*.yaml"
if render --set crds.install=false | grep -q '^kind: CustomResourceDefinition'; then
  fail "crds.install=false still renders a CustomResourceDefinition"
fi

# The `helm test` hook: rendered (so kubeconform above checked it), switched off by
# tests.enabled=false, and its script is valid sh.
render | grep -q '^    helm.sh/hook: test$' || fail "the chart renders no helm test hook (templates/tests/)"
if render --set tests.enabled=false | grep -q 'helm.sh/hook: test'; then
  fail "tests.enabled=false still renders a helm test hook"
fi
render --show-only templates/tests/call-example.yaml | python3 -c '
import sys, yaml
pod = yaml.safe_load(sys.stdin)
print(pod["spec"]["containers"][0]["command"][2])' | sh -n || fail "the helm test pod's script is not valid sh"

# --- 4. examples ---------------------------------------------------------------------------
examples=(examples/*/k8s/*.yaml)
((${#examples[@]} > 0)) || fail "no examples/*/k8s/*.yaml"
conform "${examples[@]}" || fail "examples/*/k8s/*.yaml against the CRD schema"
grep -l '^kind: DurableNamespace' "${examples[@]}" >/dev/null || fail "no example DurableNamespace"
# The schemas must bite: an example with shards 0 and an unknown field is refused.
if sed -e 's/^  shards: .*/  shards: 0/' -e 's/^spec:/spec:\n  shardz: 1/' examples/counter/k8s/counter.yaml |
  conform - >/dev/null 2>&1; then
  fail "kubeconform accepted a DurableNamespace with shards 0 and an unknown field: the CRD schema is not applied"
fi

# The DurableNamespace `stead init` writes: for a new TypeScript and a new Rust project, and for
# an existing Workers project (a copy of examples/chat-ts), from its wrangler config.
STEAD_BIN="${CARGO_TARGET_DIR:-target}/debug/stead"
[[ -x "$STEAD_BIN" ]] || fail "no $STEAD_BIN (cargo build -p stead-sidecar builds it)"
scaffolds="$(mktemp -d)"
"$STEAD_BIN" init --lang ts "$scaffolds/new-ts" >/dev/null
"$STEAD_BIN" init --lang rust "$scaffolds/new-rust" >/dev/null
cp -r examples/chat-ts "$scaffolds/chat-ts"
rm -rf "$scaffolds/chat-ts/node_modules" "$scaffolds/chat-ts/.stead"
"$STEAD_BIN" init "$scaffolds/chat-ts" >/dev/null 2>&1
scaffolded=("$scaffolds"/*/k8s/*.yaml)
((${#scaffolded[@]} == 3)) || fail "stead init wrote ${#scaffolded[@]} manifests, not 3: ${scaffolded[*]}"
conform "${scaffolded[@]}" || fail "the DurableNamespace stead init writes, against the CRD schema"
grep -q 'classes: \[ChatRoom\]' "$scaffolds/chat-ts/k8s/chat-ts.yaml" ||
  fail "stead init did not take the classes of examples/chat-ts from its wrangler config"
rm -rf "$scaffolds"

# The manifest docs/kubernetes.md pastes inline (the released-images install path).
python3 -c '
import re, sys
blocks = re.findall(r"<<.EOF.\n(.*?)\nEOF\n", open("docs/kubernetes.md").read(), re.S)
if not blocks:
    sys.exit("docs/kubernetes.md: no inline manifest (<<EOF ... EOF)")
print("\n---\n".join(blocks))' >"$CRD_SCHEMAS/docs.yaml" || fail "extracting the inline manifests of docs/kubernetes.md"
conform "$CRD_SCHEMAS/docs.yaml" || fail "docs/kubernetes.md: an inline manifest is invalid"

echo "helm-check: ok (helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION, core schemas of Kubernetes $KUBE_VERSION)"
