#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, from parts built or installed here (see
# scripts/node-tools.sh): etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd + runc with CNI bridge networking, kubelet, kube-proxy (iptables), CoreDNS and
# local PersistentVolumes. Needs root, cgroup v1 or v2, overlayfs, bridge and br_netfilter.
#
#   scripts/node-cluster.sh up IMAGES_DIR   # bring it up, import IMAGES_DIR/*.tar
#   scripts/node-cluster.sh down            # tear everything down (also what a killed run left)
#   scripts/node-cluster.sh status          # is it up; where the kubeconfig is
#
# Everything stays on this machine: pods live on the bridge stead0 (10.244.0.0/24, no default
# route, no masquerade onto any other interface), Services in 10.96.0.0/16, every component
# listens on the bridge address or loopback, CoreDNS has no upstream and no pod gets the
# host's resolver. `down` stops every process, unmounts, removes the cgroups, the bridge, the
# network namespaces and the iptables chains, and restores every kernel setting `up` or the
# components changed (recorded before `up` touched anything).
#
# State: $STEAD_NODE_DIR (default /var/lib/stead-node) and /run/stead-node; logs in
# $STEAD_NODE_DIR/logs. The kubeconfig: $STEAD_NODE_DIR/admin.kubeconfig.
#
# The cluster is global to the machine (fixed paths, bridge and ports): `up` and `down` take the
# lock /run/lock/stead-node.lock (flock), waiting for a run that holds it, so that two never
# overlap. scripts/node-e2e.sh holds it for its whole run and sets STEAD_NODE_LOCKED for this.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE="${STEAD_NODE_DIR:-/var/lib/stead-node}"
RUN=/run/stead-node
TOOLS_BIN="${STEAD_NODE_TOOLS:-$HOME/.cache/stead-node}/bin"
NODE=stead-node
BRIDGE=stead0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_IP=10.96.0.10
ETCD_PORT=23790
ETCD_PEER_PORT=23800
API_PORT=6443
KUBECONFIG_FILE="$STATE/admin.kubeconfig"
CHAIN=STEAD-NODE
# Kernel settings `up` changes, and those kubelet and kube-proxy set on their own.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  net.netfilter.nf_conntrack_tcp_be_liberal)

say() { echo "node-cluster: $*" >&2; }
fail() {
  echo "node-cluster: FAILED: $*" >&2
  exit 1
}

kubectl() { "$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# One run at a time on this machine: waits for the lock (fd 9), unless the caller holds it.
LOCK=/run/lock/stead-node.lock
lock() {
  [[ -z "${STEAD_NODE_LOCKED:-}" ]] || return 0
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    say "waiting for another run of the one-node cluster to finish (it holds $LOCK)"
    flock 9
  fi
}

# ---------------------------------------------------------------------------------------------
# down

# Every process started from the binaries this cluster runs, and the shims of its containers.
cluster_pids() {
  local pid exe cmdline
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || continue
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
    case "$exe" in
    "$TOOLS_BIN"/*) ;;
    # etcd and kube-apiserver are envtest's binaries: only those of this cluster.
    */etcd | */kube-apiserver | */containerd | */containerd-shim-runc-v2)
      grep -q -e "$RUN" -e "$STATE" <<<"$cmdline" || continue
      ;;
    *) continue ;;
    esac
    echo "$pid"
  done
}

stop_pid_files() {
  local f pid
  for f in "$RUN"/*.pid; do
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    kill -TERM "$pid" 2>/dev/null || true
  done
}

down() {
  say "tearing down"
  # Containers first, while containerd still runs: their processes, mounts and netns go with them.
  if [[ -S "$RUN/containerd/containerd.sock" ]]; then
    timeout 60 "$TOOLS_BIN/crictl" --runtime-endpoint "unix://$RUN/containerd/containerd.sock" rmp -fa >/dev/null 2>&1 || true
  fi
  # kube-proxy removes its own iptables chains.
  if [[ -x "$TOOLS_BIN/kube-proxy" ]] && iptables -t nat -S KUBE-SERVICES >/dev/null 2>&1; then
    pkill -f "$TOOLS_BIN/kube-proxy" 2>/dev/null || true
    "$TOOLS_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  stop_pid_files
  local i
  for i in $(seq 1 30); do
    [[ -z "$(cluster_pids)" ]] && break
    sleep 0.5
  done
  local left
  left="$(cluster_pids)"
  if [[ -n "$left" ]]; then
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 1
  fi
  # Container processes whose shim is gone: anything still in the pods' cgroups. A container
  # runc was creating or killing when its shim died may be left frozen (freezer.state FROZEN on
  # cgroup v1, cgroup.freeze 1 on v2), where SIGKILL waits until it is thawed: thaw first.
  local cg
  for cg in $(find /sys/fs/cgroup -depth -type d \( -name 'kubepods*' -o -path '*/kubepods*' \) 2>/dev/null); do
    [[ -f "$cg/freezer.state" ]] && echo THAWED >"$cg/freezer.state" 2>/dev/null || true
    [[ -f "$cg/cgroup.freeze" ]] && echo 0 >"$cg/cgroup.freeze" 2>/dev/null || true
    [[ -f "$cg/cgroup.procs" ]] && xargs -r kill -KILL <"$cg/cgroup.procs" 2>/dev/null || true
  done
  sleep 0.5
  # Mounts under the state folders (volumes, overlay snapshots, netns, shm), deepest first.
  local m
  for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($STATE|$RUN|/run/netns/cni-|/var/run/netns/cni-)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  for m in /run/netns/cni-* /var/run/netns/cni-*; do
    [[ -e "$m" ]] || continue
    ip netns delete "$(basename "$m")" 2>/dev/null || rm -f "$m"
  done
  for cg in $(find /sys/fs/cgroup -depth -type d \( -name 'kubepods*' -o -path '*/kubepods*' \) 2>/dev/null); do
    rmdir "$cg" 2>/dev/null || true
  done
  # The bridge and the veths on it.
  local veth
  for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$veth" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  # Our forwarding fence, and whatever kube-proxy's cleanup left.
  iptables -D FORWARD -j "$CHAIN" 2>/dev/null || true
  iptables -F "$CHAIN" 2>/dev/null || true
  iptables -X "$CHAIN" 2>/dev/null || true
  local table chain
  for table in filter nat mangle; do
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -S 2>/dev/null | awk -v c="$chain" '$1 == "-A" && $0 ~ "-j " c "( |$)" {print}' |
        while read -r rule; do
          # shellcheck disable=SC2086
          iptables -t "$table" ${rule/-A/-D} 2>/dev/null || true
        done
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  # Kernel settings back to what they were before `up`.
  local key value
  if [[ -f "$STATE/sysctl.before" ]]; then
    while IFS='=' read -r key value; do
      [[ -n "$key" ]] && sysctl -q -w "$key=$value" >/dev/null 2>&1 || true
    done <"$STATE/sysctl.before"
    cp "$STATE/sysctl.before" "$STATE.sysctl"
  fi
  # The CNI plugin's IP allocations live in /var/lib/cni (its default).
  rm -rf /var/lib/cni/networks/stead-node "$RUN"
  if [[ -d "$STATE" ]]; then
    # Keep the logs of a failed run next to the state folder for a look afterwards.
    [[ -d "$STATE/logs" ]] && rm -rf "$STATE.logs" && cp -r "$STATE/logs" "$STATE.logs" 2>/dev/null || true
    rm -rf "$STATE"
  fi
  local still
  still="$(cluster_pids)"
  [[ -z "$still" ]] || fail "processes left after teardown: $still"
  if awk '{print $5}' /proc/self/mountinfo | grep -qE "^($STATE|$RUN)"; then
    fail "mounts left after teardown under $STATE or $RUN"
  fi
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || fail "the bridge $BRIDGE is left after teardown"
  for table in filter nat mangle; do
    ! iptables -t "$table" -S 2>/dev/null | grep -qE "^-N (KUBE-|CNI-|$CHAIN)" ||
      fail "iptables chains left in table $table: $(iptables -t "$table" -S | grep -E '^-N (KUBE-|CNI-|STEAD-)' | head -3)"
  done
  [[ -z "$(find /sys/fs/cgroup -type d -name 'kubepods*' 2>/dev/null)" ]] || fail "kubepods cgroups left after teardown"
  if [[ -f "$STATE.sysctl" ]]; then
    while IFS='=' read -r key value; do
      [[ -z "$key" || "$(sysctl -n "$key" 2>/dev/null)" == "$value" ]] ||
        fail "kernel setting $key is $(sysctl -n "$key"), was $value before the cluster"
    done <"$STATE.sysctl"
    rm -f "$STATE.sysctl"
  fi
  say "down"
}

# ---------------------------------------------------------------------------------------------
# up

record_sysctls() {
  local key
  : >"$STATE/sysctl.before"
  for key in "${SYSCTLS[@]}"; do
    sysctl -n "$key" >/dev/null 2>&1 && echo "$key=$(sysctl -n "$key")" >>"$STATE/sysctl.before"
  done
}

# cert NAME CN [O] [SAN]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 o=${3:-} san=${4:-}
  local subj="/CN=$cn"
  [[ -z "$o" ]] || subj="/O=$o/CN=$cn"
  openssl ecparam -name prime256v1 -genkey -noout -out "$STATE/pki/$name.key" 2>/dev/null
  openssl req -new -key "$STATE/pki/$name.key" -subj "$subj" -out "$STATE/pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [[ -z "$san" ]] || echo "subjectAltName=$san"
  } >"$STATE/pki/$name.ext"
  openssl x509 -req -in "$STATE/pki/$name.csr" -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$STATE/pki/$name.ext" -out "$STATE/pki/$name.crt" 2>/dev/null
}

kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: stead-node
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $STATE/pki/$user.crt
    client-key: $STATE/pki/$user.key
contexts:
- name: stead-node
  context: {cluster: stead-node, user: $user}
current-context: stead-node
EOF
}

# start NAME COMMAND...: runs it in the background, its log in logs/NAME.log, its pid in RUN.
start() {
  local name=$1
  shift
  # 9>&-: the daemons must not hold the lock after this script ends.
  "$@" >"$STATE/logs/$name.log" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
}

# wait_for WHAT SECONDS COMMAND...
wait_for() {
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      say "$what: not ready after ${secs}s; last log lines:"
      tail -n 30 "$STATE/logs/"*.log >&2 2>/dev/null || true
      fail "$what did not come up"
    fi
    sleep 1
  done
}

alive() {
  local name=$1 pid
  pid="$(cat "$RUN/$name.pid")"
  kill -0 "$pid" 2>/dev/null || {
    tail -n 40 "$STATE/logs/$name.log" >&2
    fail "$name exited (log above)"
  }
}

up() {
  local images=${1:?usage: scripts/node-cluster.sh up IMAGES_DIR}
  [[ "$(id -u)" == 0 ]] || fail "needs root (containers, mounts, bridges, iptables)"
  for b in kubelet kube-controller-manager kube-scheduler kube-proxy kubectl crictl; do
    [[ -x "$TOOLS_BIN/$b" ]] || fail "no $TOOLS_BIN/$b: run scripts/node-tools.sh"
  done
  local envtest_bin
  envtest_bin="$(scripts/envtest.sh)"
  # Whatever an earlier, killed run left behind goes first.
  if [[ -e "$STATE" || -e "$RUN" ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "an earlier cluster's state is here; removing it first"
    down
  fi
  mkdir -p "$STATE"/{pki,logs,etcd,kubelet,containerd,cni,pv} "$RUN/containerd"
  record_sysctls

  say "kernel: bridge $BRIDGE ($NODE_IP), forwarding fenced to it"
  sysctl -q -w net.ipv4.ip_forward=1
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 || fail "no br_netfilter (net.bridge.bridge-nf-call-iptables)"
  sysctl -q -w net.bridge.bridge-nf-call-ip6tables=1 || true
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Forwarding exists for pod -> Service -> pod on the bridge; nothing from or to the pods is
  # forwarded anywhere else.
  iptables -N "$CHAIN"
  iptables -A "$CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  iptables -A "$CHAIN" -s 10.244.0.0/16 -j DROP
  iptables -A "$CHAIN" -d 10.244.0.0/16 -j DROP
  iptables -I FORWARD 1 -j "$CHAIN"

  say "certificates"
  openssl ecparam -name prime256v1 -genkey -noout -out "$STATE/pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$STATE/pki/ca.key" -subj "/CN=stead-node-ca" -days 2 -out "$STATE/pki/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver "" "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin stead-admin system:masters
  cert kubelet "system:node:$NODE" system:nodes "IP:$NODE_IP,DNS:$NODE"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  openssl genrsa -out "$STATE/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$STATE/pki/sa.key" -pubout -out "$STATE/pki/sa.pub" 2>/dev/null
  kubeconfig "$KUBECONFIG_FILE" admin
  kubeconfig "$STATE/kubelet.kubeconfig" kubelet

  say "etcd, kube-apiserver"
  start etcd "$envtest_bin/etcd" --name stead-node --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "stead-node=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --quota-backend-bytes 2147483648
  start kube-apiserver "$envtest_bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$STATE/pki/ca.crt" \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --kubelet-client-certificate "$STATE/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$STATE/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$STATE/pki/ca.crt" \
    --authorization-mode Node,RBAC --allow-privileged=true --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key" \
    --enable-priority-and-fairness=false --profiling=false
  wait_for kube-apiserver 120 kubectl get --raw /readyz

  say "kube-controller-manager, kube-scheduler"
  start kube-controller-manager "$TOOLS_BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_FILE" \
    --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --leader-elect=false --service-account-private-key-file "$STATE/pki/sa.key" \
    --root-ca-file "$STATE/pki/ca.crt" --cluster-signing-cert-file "$STATE/pki/ca.crt" \
    --cluster-signing-key-file "$STATE/pki/ca.key" --service-cluster-ip-range "$SERVICE_CIDR" \
    --use-service-account-credentials=true
  start kube-scheduler "$TOOLS_BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_FILE" \
    --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --leader-elect=false
  sleep 1
  alive kube-controller-manager
  alive kube-scheduler

  say "containerd"
  cat >"$STATE/cni/10-stead-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "stead-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "10.244.0.0/16"}, {"dst": "$SERVICE_CIDR"}]
      }
    }
  ]
}
EOF
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$RUN/containerd/containerd.sock"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # Without CAP_SYS_RESOURCE nothing may lower an OOM score.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
EOF
  start containerd containerd --config "$STATE/containerd.toml"
  wait_for containerd 60 ctr --address "$RUN/containerd/containerd.sock" version
  say "importing the images of $images"
  local tar
  for tar in "$images"/*.tar; do
    ctr --address "$RUN/containerd/containerd.sock" -n k8s.io images import --no-unpack "$tar" >/dev/null ||
      fail "ctr images import $tar"
  done

  say "kubelet"
  : >"$STATE/resolv.conf"
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$RUN/containerd/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
# No pod gets the host's resolver: "Default" DNS policy pods get this empty file.
resolvConf: $STATE/resolv.conf
failSwapOn: false
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 60
EOF
  start kubelet "$TOOLS_BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --hostname-override "$NODE" --node-ip "$NODE_IP" --v 1
  wait_for "node $NODE" 120 kubectl get node "$NODE"
  alive kubelet

  say "kube-proxy"
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
hostnameOverride: $NODE
clusterCIDR: 10.244.0.0/16
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the bridge address, never on the machine's other interfaces.
nodePortAddresses: ["$NODE_IP/32"]
# Leave the kernel's conntrack settings as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy "$TOOLS_BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
  wait_for kube-proxy 60 curl -fsS http://127.0.0.1:10256/healthz

  say "CoreDNS, local volumes"
  local pv=""
  for i in $(seq 0 15); do
    mkdir -p "$STATE/pv/pv-$i"
    pv+="
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: stead-node-pv-$i}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: stead-local
  local: {path: $STATE/pv/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE]}]"
  done
  kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: stead-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
$pv
EOF
  kubectl apply -f scripts/node-coredns.yaml >/dev/null
  wait_for "node $NODE Ready" 120 kubectl wait --for=condition=Ready "node/$NODE" --timeout=5s
  wait_for CoreDNS 180 kubectl -n kube-system wait --for=condition=Available deployment/coredns --timeout=5s
  say "up: KUBECONFIG=$KUBECONFIG_FILE"
}

case "${1:-}" in
up)
  lock
  up "${2:-}"
  ;;
down)
  lock
  down
  ;;
status)
  kubectl get --raw /readyz >/dev/null 2>&1 || fail "not up"
  echo "KUBECONFIG=$KUBECONFIG_FILE"
  ;;
*) fail "usage: scripts/node-cluster.sh up IMAGES_DIR | down | status" ;;
esac
