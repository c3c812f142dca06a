# Shared functions for tests/lab/up and tests/lab/down. Sourced, not run.
# shellcheck shell=bash
#
# The lab's shape (every address lives in namespaces the lab creates):
#
#   (each also holds fd51::<same last byte>/64, and the pool has IPv6 VIPs
#   fd51::200-fd51::21f beside the IPv4 ones)
#
#   ferrylb-lab-host    br0 10.250.0.1/24, the API server's address for the
#                       nodes and pods (10.250.0.1:<port>, forwarded to the
#                       test API server on the root namespace's loopback
#                       through a unix socket)
#   ferrylb-lab-nodeN   eth0 10.250.0.1N/24, pods 10.244.N.0/24 on cni0;
#                       containerd, kubelet and kube-proxy (nftables mode)
#   ferrylb-lab-client  eth0 10.250.0.100/24: a client outside the cluster
#                       on the nodes' network; the VIP pool
#                       10.250.0.200-10.250.0.219 is on that network and
#                       answered by whichever node holds a VIP
#   ferrylb-lab-router  eth0 10.250.0.254/24 and fd51::fe on the nodes'
#                       network, eth1 10.251.0.1/24 and fd53::1/64: the
#                       users' router, a BIRD of its own (AS 64500) that
#                       takes BGP sessions from the nodes (AS 64512, over
#                       IPv4 and IPv6) with BFD and routes what they
#                       announce (the BGP pool 10.252.0.0/28 and
#                       fd52::/124, on no link) over every announcing node
#                       (ECMP, hashed on the 4-tuple)
#   ferrylb-lab-outside eth0 10.251.0.100/24 and fd53::100/64: a client
#                       behind the router
#
# Control plane in the root namespace, on 127.0.0.1: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler.

lab_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$lab_here/../.." && pwd)"
# shellcheck source=tests/env/lib.sh
source "$repo_root/tests/env/lib.sh"

lab_prefix=ferrylb-lab
lab_nodes=(node1 node2 node3)
lab_host_ip=10.250.0.1
lab_client_ip=10.250.0.100
lab_pool=10.250.0.200-10.250.0.219,fd51::200-fd51::21f
# The IPv6 network beside 10.250.0.0/24, for IPv6 VIPs.
lab_v6_prefix=fd51:
lab_cluster_cidr=10.244.0.0/16
# The router's side of the nodes' network, the network behind it, and the
# VIPs announced over BGP (on no link: reached only through the router).
lab_router_ip=10.250.0.254
lab_outside_net=10.251.0.0/24
lab_outside_ip=10.251.0.100
lab_bgp_pool=10.252.0.0/28
lab_bgp_pool6=fd52::/124
lab_router_ip6=fd51::fe
lab_router_asn=64500
lab_node_asn=64512

die() { echo "tests/lab: $*" >&2; exit 1; }
log() { echo "tests/lab: $*" >&2; }

default_lab_dir() { echo "${FERRYLB_LAB_DIR:-${TMPDIR:-/tmp}/ferrylb-lab}"; }

ns() { echo "$lab_prefix-$1"; }
node_index() { echo "${1#node}"; }
node_ip() { echo "10.250.0.1$(node_index "$1")"; }
pod_cidr() { echo "10.244.$(node_index "$1").0/24"; }
cgroup_root() { echo "/$lab_prefix-$1"; }
# The cgroup v1 hierarchies kubelet uses (cgroupfs driver).
cgroup_controllers=(cpu cpuacct cpuset memory devices freezer blkio pids systemd hugetlb net_cls net_prio perf_event unified)

# in_ns NAMESPACE CMD...: runs CMD in the network namespace only, keeping
# the root mount namespace (kubelet's and containerd's mounts must be seen
# by each other).
in_ns() {
  local n="$1"
  shift
  nsenter --net="/var/run/netns/$n" "$@"
}

ensure_packages() {
  local need=() c
  for c in containerd:containerd runc:runc umoci:umoci socat:socat nft:nftables \
    iptables:iptables conntrack:conntrack haproxy:haproxy arping:iputils-arping \
    busybox:busybox-static gcc:gcc curl:curl openssl:openssl keepalived:keepalived bird:bird2; do
    command -v "${c%%:*}" >/dev/null || [[ -x "/usr/sbin/${c%%:*}" ]] || need+=("${c#*:}")
  done
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  [[ ${#need[@]} -eq 0 ]] && return 0
  log "installing ${need[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# images_dir FERRYLB_BINARY: builds (or reuses) the lab's images.
images_dir() {
  local bin="$1" stamp dir
  stamp="$(cat "$lab_here/images/build" "$lab_here/images/"*.c "$bin" | sha256sum | cut -c1-16)"
  dir="$ferrylb_cache/lab-images/$stamp"
  if [[ ! -f "$dir/ferrylb.tar" ]]; then
    rm -rf "$ferrylb_cache/lab-images"
    "$lab_here/images/build" "$dir" "$bin" || die "building images failed"
  fi
  echo "$dir"
}

# --- network ---------------------------------------------------------------

make_network() {
  local host client n i ip
  host="$(ns host)"
  client="$(ns client)"
  ip netns add "$host"
  in_ns "$host" ip link set lo up
  in_ns "$host" ip link add br0 type bridge
  in_ns "$host" ip addr add "$lab_host_ip/24" dev br0
  in_ns "$host" ip link set br0 up
  in_ns "$host" sysctl -qw net.ipv4.ip_forward=1
  for n in "${lab_nodes[@]}" client; do
    ip netns add "$(ns "$n")"
    in_ns "$(ns "$n")" ip link set lo up
    in_ns "$host" ip link add "v$n" type veth peer name eth0 netns "$(ns "$n")"
    in_ns "$host" ip link set "v$n" master br0 up
  done
  for n in "${lab_nodes[@]}"; do
    ip="$(node_ip "$n")"
    in_ns "$(ns "$n")" ip addr add "$ip/24" dev eth0
    in_ns "$(ns "$n")" ip addr add "${lab_v6_prefix}:1$(node_index "$n")/64" dev eth0 nodad
    in_ns "$(ns "$n")" ip link set eth0 up
    in_ns "$(ns "$n")" ip route add default via "$lab_host_ip"
    in_ns "$(ns "$n")" sysctl -qw net.ipv4.ip_forward=1
    in_ns "$host" ip route add "$(pod_cidr "$n")" via "$ip"
    for i in "${lab_nodes[@]}"; do
      [[ "$i" == "$n" ]] || in_ns "$(ns "$n")" ip route add "$(pod_cidr "$i")" via "$(node_ip "$i")"
    done
  done
  in_ns "$client" ip addr add "$lab_client_ip/24" dev eth0
  in_ns "$client" ip addr add "${lab_v6_prefix}:100/64" dev eth0 nodad
  in_ns "$client" ip link set eth0 up
  make_router
}

# The users' router and the client behind it.
make_router() {
  local host router outside n
  host="$(ns host)"
  router="$(ns router)"
  outside="$(ns outside)"
  ip netns add "$router"
  ip netns add "$outside"
  in_ns "$router" ip link set lo up
  in_ns "$outside" ip link set lo up
  in_ns "$host" ip link add vrouter type veth peer name eth0 netns "$router"
  in_ns "$host" ip link set vrouter master br0 up
  in_ns "$router" ip link add eth1 type veth peer name eth0 netns "$outside"
  in_ns "$router" ip addr add "$lab_router_ip/24" dev eth0
  in_ns "$router" ip addr add "$lab_router_ip6/64" dev eth0 nodad
  in_ns "$router" ip addr add 10.251.0.1/24 dev eth1
  in_ns "$router" ip addr add fd53::1/64 dev eth1 nodad
  in_ns "$router" ip link set eth0 up
  in_ns "$router" ip link set eth1 up
  in_ns "$router" sysctl -qw net.ipv4.ip_forward=1
  # ECMP hashed on the 4-tuple, so that connections spread over the nodes.
  in_ns "$router" sysctl -qw net.ipv4.fib_multipath_hash_policy=1
  in_ns "$router" sysctl -qw net.ipv6.conf.all.forwarding=1
  in_ns "$router" sysctl -qw net.ipv6.fib_multipath_hash_policy=1
  in_ns "$outside" ip addr add "$lab_outside_ip/24" dev eth0
  in_ns "$outside" ip link set eth0 up
  in_ns "$outside" ip route add default via 10.251.0.1
  in_ns "$outside" ip addr add fd53::100/64 dev eth0 nodad
  in_ns "$outside" ip -6 route add default via fd53::1
  for n in "${lab_nodes[@]}"; do
    in_ns "$(ns "$n")" ip route add "$lab_outside_net" via "$lab_router_ip"
    in_ns "$(ns "$n")" ip -6 route add fd53::/64 via "$lab_router_ip6"
  done
}

# start_router DIR: the router's BIRD, peering with every node.
start_router() {
  local dir="$1" n
  {
    echo "# The lab's router: what a user's router needs for FerryLB's BGP mode."
    echo "router id $lab_router_ip;"
    echo "protocol device { }"
    echo "# Learned routes go to table 100; router-routes forwards by them."
    echo "protocol kernel { kernel table 100; ipv4 { import none; export all; }; merge paths yes; }"
    echo "protocol kernel { kernel table 100; ipv6 { import none; export all; }; merge paths yes; }"
    echo "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }"
    echo "# A session that failed is taken again after 5 s (doubling to 60 s"
    echo "# while it keeps failing), not BIRD's default 60-300 s."
    echo "template bgp ferrylb_node { local as $lab_router_asn; passive on; bfd on; error wait time 5, 60; }"
    for n in "${lab_nodes[@]}"; do
      echo "protocol bgp $n from ferrylb_node { neighbor $(node_ip "$n") as $lab_node_asn;"
      echo "  ipv4 { import where net ~ [ $lab_bgp_pool{32,32} ]; export none; }; }"
      echo "protocol bgp ${n}_v6 from ferrylb_node { neighbor ${lab_v6_prefix}:1$(node_index "$n") as $lab_node_asn;"
      echo "  ipv6 { import where net ~ [ $lab_bgp_pool6{128,128} ]; export none; }; }"
    done
  } >"$dir/router-bird.conf"
  spawn "$dir" router-bird nsenter --net="/var/run/netns/$(ns router)" \
    bird -f -c "$dir/router-bird.conf" -s "$dir/router-bird.ctl"
  wait_for "router bird" 10 "$dir/router-bird.pid" "$dir/router-bird.log" test -S "$dir/router-bird.ctl"
  # How the router hashes over the paths it learned: plain ECMP unless a
  # test writes "resilient" into the file (tests/lab/router-routes).
  echo plain >"$dir/router-hashing"
  spawn "$dir" router-routes nsenter --net="/var/run/netns/$(ns router)" \
    "$lab_here/router-routes" "$dir/router-hashing"
}

# --- control plane ---------------------------------------------------------


start_control_plane() {
  local dir="$1" bin="$2" port
  # The API server, as the tests run it, plus what real nodes and pods need:
  # an address they reach (advertised as the kubernetes Service's endpoint),
  # service-account tokens mounted into pods, and a way to the kubelets
  # (logs, exec) through a proxy in the host namespace.
  spawn "$dir" kubelet-proxy nsenter --net="/var/run/netns/$(ns host)" "$lab_here/kubelet-proxy" "$dir/kubelet-proxy.sock"
  cat >"$dir/egress.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $dir/kubelet-proxy.sock
EOF
  apiserver_sans="IP:$lab_host_ip"
  apiserver_extra_args=(--advertise-address="$lab_host_ip" --enable-admission-plugins=ServiceAccount
    --egress-selector-config-file="$dir/egress.yaml" --kubelet-preferred-address-types=InternalIP
    --kubelet-client-certificate="$dir/pki/admin.crt" --kubelet-client-key="$dir/pki/admin.key")
  start_etcd "$dir"
  start_apiserver "$dir"
  port="$(cat "$dir/apiserver.port")"
  # root netns 127.0.0.1:port <- unix socket <- host netns 10.250.0.1:port
  spawn "$dir" socat-root socat "UNIX-LISTEN:$dir/api.sock,fork,unlink-early" "TCP:127.0.0.1:$port"
  wait_for "api socket" 10 "$dir/socat-root.pid" "$dir/socat-root.log" test -S "$dir/api.sock"
  spawn "$dir" socat-host nsenter --net="/var/run/netns/$(ns host)" socat "TCP-LISTEN:$port,bind=$lab_host_ip,fork,reuseaddr" "UNIX-CONNECT:$dir/api.sock"
  write_kubeconfig "$dir" "https://$lab_host_ip:$port" "$dir/node.kubeconfig"

  spawn "$dir" controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 \
    --controllers=node-lifecycle-controller,deployment-controller,replicaset-controller,job-controller,endpointslice-controller,endpointslice-mirroring-controller,serviceaccount-controller,garbage-collector-controller,namespace-controller,root-ca-certificate-publisher-controller,disruption-controller,pod-garbage-collector-controller \
    --root-ca-file="$dir/pki/ca.crt" --use-service-account-credentials=false \
    --concurrent-deployment-syncs=5 --v=1
  spawn "$dir" scheduler "$bin/kube-scheduler" \
    --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 --v=1
}

# --- nodes -----------------------------------------------------------------

make_cgroups() {
  local n="$1" c d
  for c in "${cgroup_controllers[@]}"; do
    [[ -d "/sys/fs/cgroup/$c" ]] || continue
    d="/sys/fs/cgroup/$c$(cgroup_root "$n")"
    mkdir -p "$d"
    if [[ "$c" == cpuset ]]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"$d/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"$d/cpuset.mems"
    fi
  done
}

write_node_config() {
  local dir="$1" n="$2" nd="$1/$2"
  mkdir -p "$nd/cni" "$nd/pod-logs"
  cat >"$nd/containerd.toml" <<EOF
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$nd/containerd.sock"
[ttrpc]
  address = "$nd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:lab"
  # This machine's bounding set lacks CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "$nd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$nd/cni"
EOF
  cat >"$nd/cni/10-lab.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "$lab_prefix-$n", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(pod_cidr "$n")"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$nd/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat >"$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: $(cgroup_root "$n")
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$nd/containerd.sock
podLogsDir: $nd/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
evictionHard: {memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusReportFrequency: 10s
syncFrequency: 10s
EOF
}

# create_node_object DIR NODE: the Node, with its pod CIDR and address, before
# kubelet and kube-proxy start (kube-proxy waits for it otherwise).
create_node_object() {
  local dir="$1" n="$2" bin="$3"
  "$bin/kubectl" --kubeconfig="$dir/kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $n
  labels: {kubernetes.io/hostname: $n, kubernetes.io/os: linux}
spec:
  podCIDR: $(pod_cidr "$n")
  podCIDRs: ["$(pod_cidr "$n")"]
EOF
}

start_node() {
  local dir="$1" n="$2" bin="$3" images="$4" nd="$1/$2" img
  write_node_config "$dir" "$n"
  make_cgroups "$n"
  spawn "$dir" "$n-containerd" nsenter --net="/var/run/netns/$(ns "$n")" containerd --config "$nd/containerd.toml"
  wait_for "$n containerd" 30 "$dir/$n-containerd.pid" "$dir/$n-containerd.log" \
    ctr -a "$nd/containerd.sock" version
  for img in pause echo haproxy ferrylb; do
    ctr -a "$nd/containerd.sock" -n k8s.io images import --no-unpack=false "$images/$img.tar" >/dev/null \
      || die "importing $img into $n failed"
  done
  spawn "$dir" "$n-kubelet" nsenter --net="/var/run/netns/$(ns "$n")" "$bin/kubelet" \
    --config="$nd/kubelet.yaml" --kubeconfig="$dir/node.kubeconfig" \
    --hostname-override="$n" --node-ip="$(node_ip "$n")" \
    --root-dir="$nd/kubelet" --cert-dir="$nd/pki" --v=1
  spawn "$dir" "$n-proxy" nsenter --net="/var/run/netns/$(ns "$n")" "$bin/kube-proxy" \
    --kubeconfig="$dir/node.kubeconfig" --hostname-override="$n" \
    --proxy-mode=nftables --cluster-cidr="$lab_cluster_cidr" --conntrack-max-per-core=0 \
    --healthz-bind-address=0.0.0.0:10256 --metrics-bind-address=127.0.0.1:10249 --v=1
}

# --- teardown --------------------------------------------------------------

# kill_cgroup_tree DIR: kills every process in a cgroup v1 tree.
kill_cgroup_tree() {
  local d="$1" f
  [[ -d "$d" ]] || return 0
  while IFS= read -r f; do
    { xargs -r kill -KILL <"$f"; } 2>/dev/null || true
  done < <(find "$d" -name cgroup.procs)
}

remove_cgroup_tree() {
  local d="$1" i
  [[ -d "$d" ]] || return 0
  for i in $(seq 1 50); do
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [[ -d "$d" ]] || return 0
    sleep 0.1
  done
  log "could not remove cgroup $d"
}

teardown() {
  local dir="$1" n c mnt pid
  for n in "${lab_nodes[@]}"; do
    stop_pidfile "$dir/$n-kubelet.pid"
    stop_pidfile "$dir/$n-proxy.pid"
  done
  # Containers: everything in the nodes' cgroups, then the shims.
  for n in "${lab_nodes[@]}"; do
    for c in "${cgroup_controllers[@]}"; do kill_cgroup_tree "/sys/fs/cgroup/$c$(cgroup_root "$n")"; done
  done
  for n in "${lab_nodes[@]}"; do
    for pid in $(pgrep -f "containerd-shim.*-address $dir/$n/containerd.sock" || true); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    stop_pidfile "$dir/$n-containerd.pid"
  done
  for p in scheduler controller-manager socat-host socat-root kubelet-proxy; do stop_pidfile "$dir/$p.pid"; done
  stop_pidfile "$dir/apiserver.pid"
  stop_pidfile "$dir/etcd.pid"
  # Whatever else still runs in the lab's network namespaces (haproxy
  # children, a test's client).
  stop_pidfile "$dir/router-routes.pid"
  stop_pidfile "$dir/router-bird.pid"
  for n in host client router outside "${lab_nodes[@]}"; do
    [[ -e "/var/run/netns/$(ns "$n")" ]] || continue
    ip netns pids "$(ns "$n")" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  sleep 0.2
  # Mounts under the lab's directory (volumes, rootfs overlays, pod netns),
  # deepest first.
  if [[ -d "$dir" ]]; then
    while IFS= read -r mnt; do
      umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  fi
  for n in "${lab_nodes[@]}"; do
    for c in "${cgroup_controllers[@]}"; do remove_cgroup_tree "/sys/fs/cgroup/$c$(cgroup_root "$n")"; done
  done
  # kubelet's legacy log links point into the lab's pod-logs.
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete 2>/dev/null || true
  fi
  # CNI's cache of the lab's pods (they name the pods' netns, under DIR),
  # and the shared directories containerd and CNI made, when now empty.
  if [[ -d /var/lib/cni/results ]]; then
    { grep -l -F "$dir/" /var/lib/cni/results/* 2>/dev/null || true; } | xargs -r rm -f
  fi
  rmdir /var/lib/cni/results /var/lib/cni /run/containerd/s /run/containerd 2>/dev/null || true
  # (Gone meanwhile is fine: `leftovers` says what is really left.)
  for n in outside router client "${lab_nodes[@]}" host; do
    if [[ -e "/var/run/netns/$(ns "$n")" ]]; then ip netns delete "$(ns "$n")" 2>/dev/null || true; fi
  done
  return 0
}

# leftovers [DIR]: prints whatever of a lab is still on this machine (network
# namespaces, cgroups, processes, mounts, CNI cache entries) and fails when
# anything is; with DIR, also mounts under DIR and processes naming it.
# Drops the `PID command` lines of this shell, its subshells and its
# ancestors (the `down` that asks, and a watcher that started it, name the
# lab too).
not_ours() {
  local -A mine=()
  local p=$$
  while [[ -n "$p" && "$p" != 0 ]]; do
    mine[$p]=1
    p="$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || true)"
  done
  local pid rest q ours
  while read -r pid rest; do
    ours=0
    q=$pid
    while [[ -n "$q" && "$q" != 0 && "$q" != 1 ]]; do
      if [[ "$q" == "$$" || -n "${mine[$pid]:-}" ]]; then ours=1; break; fi
      q="$(awk '{print $4}' "/proc/$q/stat" 2>/dev/null || true)"
    done
    [[ $ours -eq 1 ]] || echo "$pid $rest"
  done
}

leftovers() {
  local dir="${1:-}" found=0 n c
  for n in host client router outside "${lab_nodes[@]}"; do
    if [[ -e "/var/run/netns/$(ns "$n")" ]]; then echo "network namespace $(ns "$n")"; found=1; fi
  done
  for n in "${lab_nodes[@]}"; do
    for c in "${cgroup_controllers[@]}"; do
      if [[ -d "/sys/fs/cgroup/$c$(cgroup_root "$n")" ]]; then
        echo "cgroup /sys/fs/cgroup/$c$(cgroup_root "$n")"; found=1
      fi
    done
  done
  local procs
  procs="$(pgrep -af "$lab_prefix" | grep -v -e "pgrep" -e "leftovers" | not_ours || true)"
  if [[ -n "$procs" ]]; then
    echo "$procs" | sed 's/^/process /'
    found=1
  fi
  if [[ -n "$dir" ]]; then
    if awk -v d="$dir/" 'index($2, d) == 1 {found=1} END {exit !found}' /proc/self/mounts; then
      echo "mounts under $dir"; found=1
    fi
    procs="$(pgrep -af "$dir/" | not_ours || true)"
    if [[ -n "$procs" ]]; then echo "$procs" | sed 's/^/process /'; found=1; fi
    if [[ -d /var/lib/cni/results ]] && grep -qlF "$dir/" /var/lib/cni/results/* 2>/dev/null; then
      echo "CNI cache entries naming $dir"; found=1
    fi
  fi
  return "$found"
}
