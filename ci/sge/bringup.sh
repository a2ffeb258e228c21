#!/bin/bash
# Bring up a single-node Son of Grid Engine 8.1.9 (Debian 12 packages) without systemd. Run as
# root. Re-runnable: skips the install when qconf exists, skips objects that exist, starts only
# daemons that do not answer. Env: SGE_CI_SLOTS (default 8).
# Facts behind each step: shared/notes/real-sge.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$SECONDS
H=$(hostname)
SLOTS=${SGE_CI_SLOTS:-8}
export DEBIAN_FRONTEND=noninteractive
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
getent hosts "$H" >/dev/null || echo "127.0.0.1 $H" >> /etc/hosts

if ! command -v qconf >/dev/null; then
  for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
    echo "$p shared/gridengineconfig boolean true"
    echo "$p shared/gridenginecell string default"
    echo "$p shared/gridenginemaster string $H"
  done | debconf-set-selections
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq gridengine-master gridengine-exec gridengine-client >/dev/null
fi

# $H resolves to 127.0.0.1, whose reverse lookup is "localhost": without this alias qmaster
# refuses every client ("client IP resolved to host name localhost").
aliases=$SGE_ROOT/$SGE_CELL/common/host_aliases
if [ "$(cat "$aliases" 2>/dev/null)" != "$H localhost" ]; then
  echo "$H localhost" > "$aliases"
  chown sgeadmin:sgeadmin "$aliases"
  if qconf -sh >/dev/null 2>&1; then qconf -km >/dev/null 2>&1 || true; sleep 10; fi
fi

# qmaster's init script cannot tell that it runs (wrong pidfile path): ask qconf instead.
if ! qconf -sh >/dev/null 2>&1; then
  /etc/init.d/gridengine-master start >/dev/null
  for _ in $(seq 200); do qconf -sh >/dev/null 2>&1 && break; sleep 0.1; done
  qconf -sh >/dev/null
fi

# Configuration, before execd starts (execd reads the global configuration only at start-up).
# qmaster writes the accounting (what qacct reads) at once rather than every flush_time (15 s):
# the pools ask qacct how a job that left qstat ended, and wait for its answer.
tmp=$(mktemp -d)
# qconf wraps a long value over lines ending in a backslash: joined first, so that
# reporting_params is edited as one line and its accounting_flush_time set once however often
# this runs.
qconf -sconf global > "$tmp/before"
sed -e ':a' -e '/\\$/{N;s/[[:space:]]*\\\n[[:space:]]*/ /;ba' -e '}' "$tmp/before" | sed \
  -e 's/^min_uid .*/min_uid                      0/' \
  -e 's/^min_gid .*/min_gid                      0/' \
  -e 's/^load_report_time .*/load_report_time             00:00:05/' \
  -e 's/^administrator_mail .*/administrator_mail           none/' \
  -e '/^reporting_params /{s/ accounting_flush_time=[^ ]*//g;s/ flush_time=/ accounting_flush_time=00:00:00 flush_time=/}' \
  > "$tmp/global"
qconf -Mconf "$tmp/global" >/dev/null
qconf -sconf global | cmp -s - "$tmp/before" || conf_changed=1
qconf -ssconf | sed \
  -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
  -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
  -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' > "$tmp/sconf"
qconf -Msconf "$tmp/sconf" >/dev/null
qconf -ss 2>/dev/null | grep -qx "$H" || qconf -as "$H" >/dev/null
if ! qconf -se "$H" >/dev/null 2>&1; then
  printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$H" > "$tmp/exechost"
  qconf -Ae "$tmp/exechost" >/dev/null
fi
if ! qconf -shgrp @allhosts >/dev/null 2>&1; then
  printf 'group_name @allhosts\nhostlist %s\n' "$H" > "$tmp/allhosts"
  qconf -Ahgrp "$tmp/allhosts" >/dev/null
fi
sed "s/@SLOTS@/$SLOTS/" "$here/all.q.in" > "$tmp/all.q"
if qconf -sq all.q >/dev/null 2>&1; then
  qconf -Mq "$tmp/all.q" >/dev/null
else
  qconf -Aq "$tmp/all.q" >/dev/null
fi
rm -rf "$tmp"

if [ "${conf_changed:-0}" = 1 ]; then  # a running execd would keep the old configuration
  /etc/init.d/gridengine-exec stop >/dev/null 2>&1 || true
fi
/etc/init.d/gridengine-exec start >/dev/null
qmod -c "all.q@$H" >/dev/null 2>&1 || true   # clear an E state left by an earlier run
# Ready when execd reports its load: the queue instance loses its "a" (alarm, unknown) state.
# (A test job would need a free slot, which jobs of an earlier run may hold.)
deadline=$((SECONDS + 90))
until qstat -f -q "all.q@$H" 2>/dev/null | awk -v q="all.q@$H" '$1 == q && (NF == 5 || $6 !~ /[auE]/) {ok=1} END {exit !ok}'; do
  if [ $SECONDS -ge $deadline ]; then
    echo "ci/sge/bringup.sh: execd did not register; see /var/spool/gridengine/*/messages" >&2
    qstat -f >&2 || true
    exit 1
  fi
  sleep 0.5
done
echo "Grid Engine up on $H with $SLOTS slots in $((SECONDS - start)) s"
