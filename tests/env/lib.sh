# Shared functions for tests/env/up and tests/env/down. Sourced, not run.
# shellcheck shell=bash

env_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ferrylb_cache="${FERRYLB_CACHE:-$HOME/.cache/ferrylb}"

die() { echo "tests/env: $*" >&2; exit 1; }
log() { echo "tests/env: $*" >&2; }

default_env_dir() { echo "${FERRYLB_ENV_DIR:-${TMPDIR:-/tmp}/ferrylb-env}"; }

# alive PIDFILE: true when the process recorded in PIDFILE runs.
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {
  local f="$1" pid i
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# port DIR NAME: the port recorded for NAME, or a newly chosen free one.
port() {
  local f="$1/$2.port"
  if [[ ! -s "$f" ]]; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' >"$f"
  fi
  cat "$f"
}

# wait_for WHAT SECONDS PIDFILE LOG CMD...: poll CMD until it succeeds.
wait_for() {
  local what="$1" secs="$2" pidfile="$3" logf="$4" deadline
  shift 4
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$pidfile"; then
      tail -n 30 "$logf" >&2 || true
      die "$what exited during start-up (log: $logf)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logf" >&2 || true
      die "$what not ready after ${secs}s (log: $logf)"
    fi
    sleep 0.2
  done
}

# spawn DIR NAME CMD...: start CMD detached, logging to DIR/NAME.log.
spawn() {
  local dir="$1" name="$2"
  shift 2
  setsid "$@" </dev/null >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

kube_bin() {
  local bin
  bin="$("$env_here/build-kube")" || die "building kube-apiserver/etcd/kubectl failed"
  echo "$bin"
}

moto_venv() {
  local req="$env_here/moto-requirements.txt" venv
  venv="$ferrylb_cache/moto/$(sha256sum "$req" | cut -c1-16)"
  if [[ ! -f "$venv/.complete" ]]; then
    log "installing moto into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    touch "$venv/.complete"
  fi
  echo "$venv"
}

start_etcd() {
  local dir="$1" bin cport pport
  alive "$dir/etcd.pid" && return 0
  bin="$(kube_bin)"
  cport="$(port "$dir" etcd)"
  pport="$(port "$dir" etcd-peer)"
  spawn "$dir" etcd "$bin/etcd" --name default --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "default=http://127.0.0.1:$pport" --unsafe-no-fsync --log-level warn
  wait_for etcd 30 "$dir/etcd.pid" "$dir/etcd.log" curl -fsS "http://127.0.0.1:$cport/health"
  log "etcd ready on 127.0.0.1:$cport"
}

make_certs() {
  local d="$1/pki"
  [[ -f "$d/admin.crt" ]] && return 0
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.crt -subj "/CN=ferrylb-test-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc%s\nextendedKeyUsage=serverAuth\n' \
      "${apiserver_sans:+,$apiserver_sans}" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=ferrylb-admin" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile admin.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

# write_kubeconfig DIR SERVER OUT: an admin kubeconfig for SERVER with the
# certificates in DIR/pki.
write_kubeconfig() {
  local dir="$1" server="$2" out="$3"
  cat >"$out" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: ferrylb-test
  cluster:
    server: $server
    certificate-authority: $dir/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $dir/pki/admin.crt
    client-key: $dir/pki/admin.key
contexts:
- name: ferrylb-test
  context: {cluster: ferrylb-test, user: admin}
current-context: ferrylb-test
KCFG
}

# start_apiserver DIR: the API server the tests use. Callers may set
# apiserver_extra_args (an array of flags; the lab advertises an address its
# nodes reach and mounts service-account tokens into pods) and apiserver_sans
# (extra subjectAltNames for the serving certificate, e.g. IP:10.250.0.1).
start_apiserver() {
  local dir="$1" bin port args=(--advertise-address=127.0.0.1 --disable-admission-plugins=ServiceAccount)
  if [[ -n "${apiserver_extra_args+set}" ]]; then args=("${apiserver_extra_args[@]}"); fi
  alive "$dir/apiserver.pid" && return 0
  bin="$(kube_bin)"
  port="$(port "$dir" apiserver)"
  make_certs "$dir"
  # Two Service ranges: the cluster is dual-stack, so Services may ask for
  # IPv6 and both families (IPv4 stays the default family).
  spawn "$dir" apiserver "$bin/kube-apiserver" \
    --bind-address=127.0.0.1 --secure-port="$port" \
    --etcd-servers="http://127.0.0.1:$(port "$dir" etcd)" \
    --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112 \
    --service-node-port-range=30000-32767 \
    --authorization-mode=RBAC \
    --allow-privileged=true \
    --profiling=false --v=1 \
    "${args[@]}"
  wait_for kube-apiserver 90 "$dir/apiserver.pid" "$dir/apiserver.log" \
    curl -fsS --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "https://127.0.0.1:$port/readyz"
  write_kubeconfig "$dir" "https://127.0.0.1:$port" "$dir/kubeconfig"
  echo "$bin" >"$dir/kube-bin"
  log "kube-apiserver ready on https://127.0.0.1:$port"
}

start_moto() {
  local dir="$1" venv port
  alive "$dir/moto.pid" && return 0
  venv="$(moto_venv)"
  port="$(port "$dir" moto)"
  spawn "$dir" moto "$venv/bin/moto_server" -H 127.0.0.1 -p "$port"
  wait_for moto 30 "$dir/moto.pid" "$dir/moto.log" curl -fsS "http://127.0.0.1:$port/moto-api/"
  log "moto ready on http://127.0.0.1:$port"
}

write_env_file() {
  local dir="$1"
  {
    echo "export FERRYLB_ENV_DIR=$dir"
    if alive "$dir/apiserver.pid"; then
      echo "export KUBECONFIG=$dir/kubeconfig"
      echo "export PATH=$(cat "$dir/kube-bin"):\$PATH"
    fi
    if alive "$dir/moto.pid"; then
      echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$dir/moto.port")"
      echo "export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
      echo "export AWS_EC2_METADATA_DISABLED=true"
    fi
  } >"$dir/env"
}
