#!/usr/bin/env bash
# Install Coral system-wide (root, idempotent): a venv at /opt/coral built on
# Debian's python3 (whose site-packages hold BCC), the console scripts linked
# into /usr/bin, the systemd units, /etc/coral/coral.toml (an existing one is
# kept), the coral system user and group, and bash completion.
# Then: systemctl daemon-reload && systemctl enable --now coral-agentd coral-colonyd
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'install: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { say "run as root"; exit 1; }
./scripts/setup.sh  # packages, kernel headers, tracefs, the coral group

getent passwd coral >/dev/null || { useradd --system --gid coral --home-dir /var/lib/coral --shell /usr/sbin/nologin coral; say "created user coral"; }

if [ ! -x /opt/coral/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages /opt/coral
  say "created /opt/coral"
fi
/opt/coral/bin/python -m pip install -q --upgrade . 2>&1 | { grep -v 'is ignored' || true; }
for tool in coral-agentd coral-colonyd coral-run coralctl; do
  ln -sfn "/opt/coral/bin/$tool" "/usr/bin/$tool"
done
say "installed coral $(/opt/coral/bin/python -c 'import coral; print(coral.__version__)') into /opt/coral; tools in /usr/bin"

install -d -m 0755 /etc/coral
if [ -e /etc/coral/coral.toml ]; then
  say "kept /etc/coral/coral.toml"
else
  install -m 0644 etc/coral.toml /etc/coral/coral.toml
  say "installed /etc/coral/coral.toml"
fi
install -m 0644 systemd/coral-agentd.service systemd/coral-colonyd.service /etc/systemd/system/

# An older layout kept both databases in /var/lib/coral itself; each daemon
# now has its own directory there (docs/security.md, "Directories").
running() { command -v systemctl >/dev/null && systemctl is-active --quiet "$1"; }
for db in agent colony; do
  for f in /var/lib/coral/$db.duckdb /var/lib/coral/$db.duckdb.wal; do
    [ -e "$f" ] || continue
    if running coral-agentd || running coral-colonyd; then
      say "not moving $f while the daemons run: stop coral-agentd and coral-colonyd, then install again"
      continue
    fi
    if [ -e "/var/lib/coral/$db/${f##*/}" ]; then
      say "kept $f: /var/lib/coral/$db/ already has one"
      continue
    fi
    install -d -m 0750 "/var/lib/coral/$db"
    mv "$f" "/var/lib/coral/$db/" && say "moved $f into /var/lib/coral/$db/"
  done
done
if [ -d /var/lib/coral/colony ]; then chown -R coral:coral /var/lib/coral/colony; fi
install -d /usr/share/bash-completion/completions
install -m 0644 etc/coralctl.bash /usr/share/bash-completion/completions/coralctl
install -d /usr/share/zsh/vendor-completions
install -m 0644 etc/_coralctl /usr/share/zsh/vendor-completions/_coralctl
install -d /usr/share/doc/coral
install -m 0644 docs/*.md /usr/share/doc/coral/
say "installed the units, bash and zsh completion and docs"
say "next: systemctl daemon-reload && systemctl enable --now coral-agentd coral-colonyd"
