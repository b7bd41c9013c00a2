#!/usr/bin/env bash
# The kind e2e tier: a throwaway kind cluster, the images built and loaded, the chart installed,
# the counter and chat examples applied (the TypeScript chat's image built with `docker build`
# from the Dockerfile `stead init` writes), the Kubernetes scenarios run against it (e2e/src/kube.rs,
# module `tier`: the same ones the one-node tier, scripts/node-e2e.sh, runs), then the cluster
# deleted.
#
# Needs docker (with a running engine), kind, kubectl and helm (helm is built by
# scripts/helm-check.sh when missing). Where any is missing it says so and exits 0.
#   STEAD_KIND_KEEP=1   keep the cluster afterwards (for debugging)
#   STEAD_KIND_NAME     cluster name (default stead-e2e)
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${STEAD_KIND_NAME:-stead-e2e}"
NS_OPERATOR=stead-system
NS_APPS=apps
TOOLS_BIN="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}/bin"
export PATH="$TOOLS_BIN:$PATH"

skip() {
  echo "kind e2e: skipped: $*"
  exit 0
}

command -v docker >/dev/null 2>&1 || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine is running (docker info failed)"
command -v kind >/dev/null 2>&1 || skip "kind is not installed (go install sigs.k8s.io/kind@latest)"
command -v kubectl >/dev/null 2>&1 || skip "kubectl is not installed"
if ! command -v helm >/dev/null 2>&1; then
  scripts/helm-check.sh >/dev/null || true
  command -v helm >/dev/null 2>&1 || skip "helm is not installed and could not be built"
fi

KUBECONFIG="$(mktemp)"
export KUBECONFIG
cleanup() {
  status=$?
  if ((status != 0)); then
    echo "kind e2e: FAILED; state of the cluster:" >&2
    kubectl get all,durablenamespaces,pvc -A -o wide >&2 || true
    kubectl -n "$NS_APPS" describe durablenamespaces >&2 || true
    kubectl -n "$NS_OPERATOR" logs deployment/stead-operator --tail=200 >&2 || true
    kubectl -n "$NS_APPS" logs -l app.kubernetes.io/part-of=stead --all-containers --tail=100 >&2 || true
  fi
  if [[ "${STEAD_KIND_KEEP:-}" == 1 ]]; then
    echo "kind e2e: keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG)" >&2
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -f "$KUBECONFIG"
    [[ -z "${WORKERS_DIR:-}" ]] || rm -rf "$WORKERS_DIR"
  fi
  exit "$status"
}
trap cleanup EXIT

step() { echo "kind e2e: $*" >&2; }

# The counter image is built under the name its manifest names (a released image's name, see
# docs/kubernetes.md, "a local kind cluster"), so the manifest is applied as it is.
COUNTER_IMAGE="$(sed -n 's/^ *image: *//p' examples/counter/k8s/counter.yaml)"
CHAT_IMAGE="$(sed -n 's/^ *image: *//p' examples/chat/k8s/chat.yaml)"
[[ -n "$COUNTER_IMAGE" && -n "$CHAT_IMAGE" ]] || { echo "kind e2e: no image in examples/{counter,chat}/k8s/*.yaml" >&2; exit 1; }
# Prometheus's metrics linter for the metrics scenario (a small Go build, cached).
STEAD_PROMLINT="$(scripts/node-tools.sh promlint)/promlint"
export STEAD_PROMLINT

step "building images"
docker build -f docker/stead.Dockerfile --target stead -t stead:dev .
docker build -f docker/stead.Dockerfile --target counter -t "$COUNTER_IMAGE" .
docker build -f docker/stead.Dockerfile --target chat -t "$CHAT_IMAGE" .
docker build -f docker/operator.Dockerfile -t stead-operator:dev .
# The TypeScript chat as a user builds a Workers project: the Dockerfile and manifest `stead
# init` writes, the SDK as an `npm pack` tarball (scripts/workers-project.sh), on node:20.
cargo build -p stead-sidecar --bin stead
WORKERS_DIR="$(mktemp -d)"
WORKERS_IMAGE="$(scripts/workers-project.sh examples/chat-ts "$WORKERS_DIR/chat-ts" "${CARGO_TARGET_DIR:-target}/debug/stead")"
docker build -t "$WORKERS_IMAGE" "$WORKERS_DIR/chat-ts"

step "creating kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 120s
for image in stead:dev "$COUNTER_IMAGE" "$CHAT_IMAGE" "$WORKERS_IMAGE" stead-operator:dev; do
  kind load docker-image --name "$CLUSTER" "$image"
done

step "installing the chart"
helm install stead charts/stead --namespace "$NS_OPERATOR" --create-namespace --wait --timeout 5m \
  --set image.repository=stead-operator --set image.tag=dev --set image.pullPolicy=Never \
  --set sidecar.image.repository=stead --set sidecar.image.tag=dev \
  --set operator.logLevel=debug
kubectl wait --for=condition=Established crd/durablenamespaces.stead.dev --timeout=60s

step "applying the counter and chat examples, and the TypeScript chat's manifest as stead init wrote it"
kubectl create namespace "$NS_APPS"
# The chat with `storage.sync: volume`, the counter with the default: as in scripts/node-e2e.sh.
kubectl patch --local -f examples/chat/k8s/chat.yaml --type merge \
  -p '{"spec":{"storage":{"sync":"volume"}}}' -o yaml >"$WORKERS_DIR/chat-volume-sync.yaml"
kubectl -n "$NS_APPS" apply -f examples/counter/k8s/counter.yaml -f "$WORKERS_DIR/chat-volume-sync.yaml" \
  -f "$WORKERS_DIR/chat-ts/k8s/chat-ts.yaml"
kubectl -n "$NS_APPS" wait --for=condition=Ready durablenamespace/counter durablenamespace/chat \
  durablenamespace/chat-ts --timeout=5m
kubectl -n "$NS_APPS" get durablenamespaces

step "helm test: the chart's test pod calls the counter through its client Service"
helm test stead --namespace "$NS_OPERATOR" --logs --timeout 3m

step "running the scenarios (the same as the one-node tier's, scripts/node-e2e.sh)"
export STEAD_KUBE_NAMESPACE="$NS_APPS" STEAD_KUBE_NAME=counter STEAD_KUBE_CHAT=chat STEAD_KUBE_WORKERS_CHAT=chat-ts
export STEAD_KUBE_OPERATOR_NAMESPACE="$NS_OPERATOR"
export STEAD_KUBE_HELM_UPGRADE="helm upgrade stead $PWD/charts/stead --namespace $NS_OPERATOR --reuse-values --set operator.logLevel=info --wait --timeout 5m"
cargo test -p stead-e2e --lib kube::tier -- --ignored --test-threads=1

step "helm upgrade keeps the namespace (CRD updated in place)"
helm upgrade stead charts/stead --namespace "$NS_OPERATOR" --reuse-values --wait --timeout 5m
kubectl -n "$NS_APPS" wait --for=condition=Ready durablenamespace/counter --timeout=5m

step "deleting the DurableNamespace"
kubectl -n "$NS_APPS" delete durablenamespace counter --wait --timeout=2m
kubectl -n "$NS_APPS" wait --for=delete statefulset -l app.kubernetes.io/instance=counter --timeout=2m || true
echo "kind e2e: passed"
