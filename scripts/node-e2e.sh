#!/usr/bin/env bash
# The one-node cluster tier: a real Kubernetes node on this machine (scripts/node-cluster.sh),
# the images built from docker/*.Dockerfile with buildah (scripts/node-images.sh), the chart
# installed with helm, examples/counter/k8s/ and examples/chat/k8s/ applied, and the TypeScript
# chat (examples/chat-ts) with the Dockerfile and manifest `stead init` writes, the scenarios run
# through the same KubeCluster the kind tier uses (e2e/src/kube.rs), then everything torn down,
# also when a step fails or the run is interrupted.
#
# Needs root and what scripts/node-tools.sh builds or installs (it runs it). Run from anywhere:
#   scripts/node-e2e.sh
#   STEAD_NODE_KEEP=1 scripts/node-e2e.sh   # keep the cluster afterwards, for debugging
#                                           # (scripts/node-cluster.sh down removes it)
# docs/kubernetes.md, "The one-node cluster tier", says more.
set -euo pipefail
cd "$(dirname "$0")/.."

NS_OPERATOR=stead-system
NS_APPS=apps
STATE="${STEAD_NODE_DIR:-/var/lib/stead-node}"
export KUBECONFIG="$STATE/admin.kubeconfig"
TARGET="${CARGO_TARGET_DIR:-target}/debug"
IMAGES="${STEAD_NODE_TOOLS:-$HOME/.cache/stead-node}/images"

step() { echo "node e2e: $*" >&2; }
fail() {
  echo "node e2e: FAILED: $*" >&2
  exit 1
}
[[ "$(id -u)" == 0 ]] || fail "needs root (it runs a kubelet and containerd)"

# The cluster is global to this machine: one run at a time. The lock (fd 9) is held until this
# script ends, teardown included; scripts/node-cluster.sh, run from here, does not take it again.
LOCK=/run/lock/stead-node.lock
exec 9>>"$LOCK"
if ! flock -n 9; then
  step "waiting for another run of the one-node cluster to finish (it holds $LOCK)"
  flock 9
fi
export STEAD_NODE_LOCKED=$$

started=$SECONDS
TOOLS_BIN="$(scripts/node-tools.sh)"
scripts/helm-check.sh >/dev/null 2>&1 || true
HELM_BIN="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}/bin/helm"
[[ -x "$HELM_BIN" ]] || fail "no helm at $HELM_BIN (scripts/helm-check.sh builds it)"
export PATH="$TOOLS_BIN:$(dirname "$HELM_BIN"):$PATH"
export KUBECTL="$TOOLS_BIN/kubectl" HELM="$HELM_BIN" STEAD_PROMLINT="$TOOLS_BIN/promlint"
step "tools ready in $((SECONDS - started))s"

cleanup() {
  status=$?
  trap - EXIT INT TERM
  if ((status != 0)); then
    echo "node e2e: FAILED; state of the cluster:" >&2
    kubectl get nodes,all,durablenamespaces,pvc,pv -A -o wide >&2 || true
    kubectl -n "$NS_APPS" describe durablenamespaces >&2 || true
    kubectl -n "$NS_APPS" describe pods >&2 2>/dev/null | tail -n 80 >&2 || true
    kubectl -n "$NS_OPERATOR" logs deployment/stead-operator --tail=100 >&2 || true
    kubectl -n "$NS_APPS" logs -l app.kubernetes.io/part-of=stead --all-containers --tail=40 >&2 || true
    tail -n 20 "$STATE"/logs/kubelet.log >&2 || true
  fi
  if [[ "${STEAD_NODE_KEEP:-}" == 1 ]]; then
    echo "node e2e: keeping the cluster (KUBECONFIG=$KUBECONFIG; scripts/node-cluster.sh down removes it)" >&2
  else
    scripts/node-cluster.sh down || status=1
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "building the binaries and the images"
cargo build --workspace --bins
scripts/node-images.sh "$TARGET" "$IMAGES"

step "bringing the cluster up"
scripts/node-cluster.sh up "$IMAGES"

step "helm install"
helm_install() {
  "$HELM" "$@" stead charts/stead --namespace "$NS_OPERATOR" --wait --timeout 5m \
    --set image.repository=stead-operator --set image.tag=dev --set image.pullPolicy=Never \
    --set sidecar.image.repository=stead --set sidecar.image.tag=dev \
    --set tests.image.repository=localhost/stead-busybox --set tests.image.tag=dev
}
helm_install install --create-namespace --set operator.logLevel=debug
kubectl wait --for=condition=Established crd/durablenamespaces.stead.dev --timeout=60s

step "applying the counter and chat examples, and the TypeScript chat's manifest as stead init wrote it"
# scripts/node-images.sh built the TypeScript chat's image (chat-ts:0.1.0, a tag that is not
# `latest`, so nothing pulls it) from the Dockerfile stead init wrote, in this project.
WORKERS_MANIFEST="$IMAGES/projects/chat-ts/k8s/chat-ts.yaml"
[[ -f "$WORKERS_MANIFEST" ]] || fail "no $WORKERS_MANIFEST (scripts/node-images.sh writes it)"
kubectl create namespace "$NS_APPS"
# The chat runs with `storage.sync: volume` (commits made durable by one sync of the shard's
# volume), the counter with the default (an fsync per database): the tier covers both, and
# `kube_only_the_chat_syncs_its_volume` checks which one each namespace used.
kubectl patch --local -f examples/chat/k8s/chat.yaml --type merge \
  -p '{"spec":{"storage":{"sync":"volume"}}}' -o yaml >"$STATE/chat-volume-sync.yaml"
kubectl -n "$NS_APPS" apply -f examples/counter/k8s/counter.yaml -f "$STATE/chat-volume-sync.yaml" -f "$WORKERS_MANIFEST"
kubectl -n "$NS_APPS" wait --for=condition=Ready durablenamespace/counter durablenamespace/chat \
  durablenamespace/chat-ts --timeout=5m
kubectl -n "$NS_APPS" get durablenamespaces,pods,pvc -o wide

step "helm test: the chart's test pod calls the counter through its client Service"
"$HELM" test stead --namespace "$NS_OPERATOR" --logs --timeout 3m

step "the scenarios"
export STEAD_KUBE_NAMESPACE="$NS_APPS" STEAD_KUBE_NAME=counter STEAD_KUBE_CHAT=chat STEAD_KUBE_WORKERS_CHAT=chat-ts
export STEAD_KUBE_OPERATOR_NAMESPACE="$NS_OPERATOR" STEAD_KUBE_HELM_RELEASE=stead
# `helm upgrade` during load: the same values again, the operator's pod replaced.
export STEAD_KUBE_HELM_UPGRADE="$HELM upgrade stead $PWD/charts/stead --namespace $NS_OPERATOR --reuse-values --set operator.logLevel=info --wait --timeout 5m"
cargo test -p stead-e2e --lib kube::tier -- --ignored --test-threads=1

step "helm uninstall keeps the volumes"
claims_before="$(kubectl -n "$NS_APPS" get pvc -o name | sort)"
[[ -n "$claims_before" ]] || fail "no PersistentVolumeClaims before helm uninstall"
"$HELM" uninstall stead --namespace "$NS_OPERATOR" --wait --timeout 3m
claims_after="$(kubectl -n "$NS_APPS" get pvc -o name | sort)"
[[ "$claims_before" == "$claims_after" ]] || fail "claims before uninstall: $claims_before; after: $claims_after"
bound="$(kubectl -n "$NS_APPS" get pvc -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | sort -u)"
[[ "$bound" == Bound ]] || fail "claims after helm uninstall are not all Bound: $bound"
databases="$(find "$STATE/pv" -name '*.sqlite' 2>/dev/null | wc -l)"
((databases > 0)) || fail "no object databases on the volumes after helm uninstall"
step "$(echo "$claims_after" | wc -l) claims and $databases databases kept after helm uninstall"

step "passed in $((SECONDS - started))s"
