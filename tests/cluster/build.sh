#!/usr/bin/env bash
# Build the binaries of the local Kubernetes control plane used by tests/cluster/.
#
# No distribution package ships kube-apiserver, and only package registries are reachable, so
# everything is compiled from the Go module proxy with the machine's Go and cached OUTSIDE the
# repository in ${LMFORGE_CACHE:-$HOME/.cache/lmforge}/k8s-<version>/bin/:
#   kube-apiserver, kube-controller-manager, kube-scheduler,
#   kubelet, kube-proxy                                       (k8s.io/kubernetes, one go build)
#   etcd                                                      (go.etcd.io/etcd/server/v3)
#   kwok                                                      (sigs.k8s.io/kwok/cmd/kwok)
#   helm                                                      (helm.sh/helm/v3/cmd/helm)
#   coredns                                                   (github.com/coredns/coredns)
#   pause                                                     (tests/cluster/node/pause, the pod sandbox)
# Each item is skipped when its binary is already cached, so a warm call takes a second.
# Timings and peak RSS of every cold build are appended to <cache>/k8s-<version>/build-times.txt.
#
# Usage: tests/cluster/build.sh            # build what is missing, print the bin dir last
#        K8S_VERSION=v1.36.3 tests/cluster/build.sh
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LMFORGE_CACHE:-$HOME/.cache/lmforge}"
ROOT="$CACHE/k8s-$K8S_VERSION"
BIN="$ROOT/bin"
SRC="$ROOT/src"
TIMES="$ROOT/build-times.txt"
mkdir -p "$BIN" "$SRC"

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[ -x "$GO" ] || { echo "build.sh: no Go toolchain found (set GO=/path/to/go)" >&2; exit 1; }

# Keep the module and build caches out of the repository; never fetch another toolchain.
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$CACHE/go/mod}"
export GOCACHE="${GOCACHE_OVERRIDE:-$CACHE/go/build}"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -mod=mod"
export GOWORK=off
JOBS="${BUILD_JOBS:-2}"

log() { echo "[build.sh] $*" >&2; }

# run_timed NAME CMD...: run a build step under /usr/bin/time -v, record wall time and peak RSS.
run_timed() {
  local name="$1"; shift
  local tfile; tfile="$(mktemp)"
  local start end rc=0
  start="$(date +%s)"
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -v -o "$tfile" "$@" || rc=$?
  else
    "$@" || rc=$?
  fi
  end="$(date +%s)"
  local rss; rss="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tfile" 2>/dev/null || true)"
  rm -f "$tfile"
  if [ "$rc" -ne 0 ]; then
    log "$name FAILED after $((end - start)) s (exit $rc)"
    return "$rc"
  fi
  local line; line="$(date -u +%FT%TZ) $name: $((end - start)) s wall, peak RSS ${rss:-?} KiB, go $("$GO" env GOVERSION), jobs $JOBS"
  echo "$line" >> "$TIMES"
  log "$name built in $((end - start)) s (peak RSS ${rss:-?} KiB)"
}

have() { [ -x "$BIN/$1" ]; }

build_kubernetes() {
  if have kube-apiserver && have kube-controller-manager && have kube-scheduler && have kubelet && have kube-proxy; then
    log "kube-apiserver/kube-controller-manager/kube-scheduler/kubelet/kube-proxy $K8S_VERSION: cached"; return
  fi
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local staging_version="v0.${K8S_VERSION#v1.}"
  local dir="$SRC/kubernetes"
  mkdir -p "$dir"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy $K8S_VERSION (staging $staging_version)"
  # Read the real list of staging modules from k8s.io/kubernetes' own go.mod: every
  # `k8s.io/<m> => ./staging/src/k8s.io/<m>` line needs a replace to the published v0.Y.Z.
  local kmod
  kmod="$(cd "$dir" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  [ -f "$kmod" ] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; return 1; }
  {
    echo "module lmforge.local/k8sbuild"
    echo
    echo "go $("$GO" env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/').0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    grep -oE '^[[:space:]]*k8s\.io/[a-z0-9./-]+ => \./staging/src/' "$kmod" \
      | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}' | sort -u
    echo ")"
  } > "$dir/go.mod"
  local pkg=k8s.io/component-base/version cpkg=k8s.io/client-go/pkg/version
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ld="-s -w"
  for p in $pkg $cpkg; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=module-proxy-$K8S_VERSION"
  done
  # kubelet and kube-proxy come from the same module: the real node of tests/cluster/node.py.
  (cd "$dir" && run_timed "kubernetes-$K8S_VERSION(apiserver+controller-manager+scheduler+kubelet+kube-proxy)" \
    "$GO" build -p "$JOBS" -trimpath -ldflags "$ld" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-proxy)
}

build_etcd() {
  if have etcd; then log "etcd $ETCD_VERSION: cached"; return; fi
  # etcd's server module has relative replace directives, so `go install pkg@version` refuses it;
  # a tiny module that requires it builds the same `etcd` main package (server/main.go).
  local dir="$SRC/etcd"
  mkdir -p "$dir"
  log "building etcd $ETCD_VERSION"
  printf 'module lmforge.local/etcdbuild\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" > "$dir/go.mod"
  local ld="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-proxy-$ETCD_VERSION"
  (cd "$dir" && run_timed "etcd-$ETCD_VERSION" \
    "$GO" build -p "$JOBS" -trimpath -ldflags "$ld" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
}

build_install() {  # build_install NAME PKG@VERSION
  local name="$1" target="$2"
  if have "$name"; then log "$name ${target#*@}: cached"; return; fi
  log "building $name ${target#*@}"
  (cd "$SRC" && GOFLAGS="-buildvcs=false" GOBIN="$BIN" run_timed "$name-${target#*@}" \
    "$GO" install -p "$JOBS" -trimpath -ldflags "-s -w" "$target")
}

build_helm() {
  if have helm; then log "helm $HELM_VERSION: cached"; return; fi
  log "building helm $HELM_VERSION"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  (cd "$SRC" && GOFLAGS="-buildvcs=false" GOBIN="$BIN" run_timed "helm-$HELM_VERSION" \
    "$GO" install -p "$JOBS" -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
}

build_pause() {
  # The pod sandbox ("pause") image cannot be pulled here: a static binary built from our own
  # source, packed into an OCI archive by tests/cluster/node.py. Rebuilt when its source changes.
  local src="$HERE/node/pause" sum
  sum="$(sha256sum "$src/main.go" | cut -c1-16)"
  if have pause && [ "$(cat "$BIN/pause.sum" 2>/dev/null)" = "$sum" ]; then log "pause: cached"; return; fi
  log "building pause"
  (cd "$src" && GOFLAGS="-buildvcs=false -mod=mod" run_timed "pause-$sum" \
    "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/pause" .)
  echo "$sum" > "$BIN/pause.sum"
}

overall_start="$(date +%s)"
build_etcd
build_kubernetes
build_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
build_helm
build_install coredns "github.com/coredns/coredns@$COREDNS_VERSION"
build_pause
log "all binaries present in $BIN ($(( $(date +%s) - overall_start )) s this call)"
echo "$BIN"
