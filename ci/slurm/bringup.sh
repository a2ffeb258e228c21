#!/bin/bash
# Bring up a single-node SLURM 22.05 (Debian 12 packages) without systemd or cgroups. Run as root.
# Re-runnable: installs only what is missing, rewrites the config, (re)starts only what needs it.
# Env: SLURM_CI_CPUS (default 16; above nproc the node is oversubscribed via config_overrides,
# which gives small-task throughput on a 2-core machine).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$SECONDS
CPUS=${SLURM_CI_CPUS:-16}
NODE=$(hostname -s)
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
fi

extra=""
[ "$CPUS" -gt "$(nproc)" ] && extra="SlurmdParameters=config_overrides"
mkdir -p /etc/slurm
# Never replace a site's own configuration: only one this script wrote (it carries the marker).
marker="Written by ci/slurm/bringup.sh"
if [ -s /etc/slurm/slurm.conf ] && ! grep -q "$marker" /etc/slurm/slurm.conf && [ "${SLURM_CI_FORCE:-0}" != 1 ]; then
  echo "ci/slurm/bringup.sh: /etc/slurm/slurm.conf was not written by this script; leaving it alone" \
       "(SLURM_CI_FORCE=1 replaces it)" >&2
  exit 1
fi
new=$(mktemp)
sed -e "s/@NODE@/$NODE/g" -e "s/@CPUS@/$CPUS/g" -e "s/@EXTRA@/$extra/" "$here/slurm.conf.in" > "$new"
changed=1
cmp -s "$new" /etc/slurm/slurm.conf && changed=0
install -m 0644 "$new" /etc/slurm/slurm.conf
rm -f "$new"

pidalive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # by PID file; wait until the process has gone
  local pidfile=$1
  if pidalive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}
if [ "$changed" = 1 ]; then  # node and CPU definitions need a restart, not a reconfigure
  stop /run/slurmd.pid
  stop /run/slurmctld.pid
fi

if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
pidalive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd
pidalive /run/slurmctld.pid || /usr/sbin/slurmctld
pidalive /run/slurmd.pid || /usr/sbin/slurmd

# Up means the node accepts jobs: idle, or busy with jobs of an earlier run (mix, alloc, comp).
up() { case "$(timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null)" in idle|mix|alloc|comp) return 0 ;; esac; return 1; }
deadline=$((SECONDS + 60))
until up; do
  if [ $SECONDS -ge $deadline ]; then
    echo "ci/slurm/bringup.sh: SLURM did not come up; see /var/log/slurm/*.log" >&2
    tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
  fi
  state=$(timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  case "$state" in  # a node left down/drained by an earlier run comes back
    down*|drain*|drng*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
echo "SLURM up on $NODE with $CPUS CPUs in $((SECONDS - start)) s"
