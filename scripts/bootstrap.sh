#!/usr/bin/env bash
# Installs everything `make test`, `make demo` and `make bench` need on a fresh Debian machine:
# the Debian packages (when a command is missing) and the project's virtualenv (when pyproject.toml
# changed since the last install). Safe to run again; does nothing when all is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
check() { # check <path-or-command> <debian package>
  if [[ "$1" == /* ]]; then [[ -e "$1" ]] || need_pkgs+=("$2"); else command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); fi
}
check ip iproute2
check iptables iptables
check iptables-restore iptables
check nft nftables
check ipset ipset
check /usr/lib/cni/bridge containernetworking-plugins
check curl curl
check socat socat
check iperf3 iperf3
check stunnel4 stunnel4
check haproxy haproxy
check wrk wrk
check tcpdump tcpdump
check conntrack conntrack
check ss iproute2
check pkill procps
check chromium chromium      # the dashboard's browser test (headless, DevTools protocol)
check prometheus prometheus  # the scrape-config test (a real Prometheus scrapes the local cluster)

if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: missing Debian packages: ${need_pkgs[*]} (run as root, or: sudo apt-get install ${need_pkgs[*]})" >&2
  else
    echo "bootstrap: installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "bootstrap: installing the ambient package and its dev dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
