#!/bin/bash
# A networked filesystem as clusters have one: a GlusterFS 10 volume (Debian's packages, one
# brick on this machine, no systemd), mounted twice through FUSE: client 1 at $GLUSTER_CI_DIR for
# the driver, client 2 for the jobs. SLURM's slurmd is restarted in a mount namespace of its own
# in which client 2 is mounted at that same path, so that the driver and the jobs see the same
# paths through different client caches, as a login node and a compute node do.
# Run as root, after ci/slurm/bringup.sh. Re-runnable: what is up is left up.
set -euo pipefail
start=$SECONDS
BASE=${GLUSTER_CI_BASE:-/srv/poolparty-gluster}
SHARED=${GLUSTER_CI_DIR:-$BASE/shared}   # client 1: what the driver (and the tests) use
NODE_CLIENT=$BASE/node                   # client 2: bind-mounted at $SHARED for slurmd's jobs
VOLUME=ppr
HOST=$(hostname)

if ! command -v glusterd >/dev/null || ! command -v mount.glusterfs >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
      glusterfs-server glusterfs-client >/dev/null
fi
is_gluster() { [ "$(findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null)" = fuse.glusterfs ]; }
# A client whose process was ended (a session's end) stays mounted, answering ENOTCONN to
# everything, mkdir -p of its own path included: unmount such clients before anything else.
for mountpoint in "$SHARED" "$NODE_CLIENT"; do
  while is_gluster "$mountpoint" && ! timeout 10 stat -f "$mountpoint" >/dev/null 2>&1; do
    umount -l "$mountpoint"
  done
done
mkdir -p "$BASE/brick" "$SHARED" "$NODE_CLIENT" /var/log/glusterfs
pgrep -x glusterd >/dev/null || glusterd --log-file="$BASE/glusterd.log"
for _ in $(seq 100); do gluster --mode=script volume list >/dev/null 2>&1 && break; sleep 0.1; done

if ! gluster --mode=script volume info "$VOLUME" >/dev/null 2>&1; then
  # force: the brick is on the root filesystem, which gluster warns about
  gluster --mode=script volume create "$VOLUME" "$HOST:$BASE/brick" force >/dev/null
fi
gluster --mode=script volume info "$VOLUME" | grep -q "^Status: Started" ||
  gluster --mode=script volume start "$VOLUME" >/dev/null

remounted=0
for mountpoint in "$SHARED" "$NODE_CLIENT"; do
  is_gluster "$mountpoint" || { mount -t glusterfs "$HOST:/$VOLUME" "$mountpoint"; remounted=1; }
done
chmod 0755 "$SHARED"  # work_dirs made in it are 0700 each

# slurmd (and the jobs it starts) in a namespace where $SHARED is client 2. Its own mounts are
# private, so nothing of this shows in the machine's namespace.
pidfile=/run/slurmd.pid
# It is restarted unless it runs in such a namespace already and sees a live client 2 there
# (a remount here leaves its namespace with the client that was replaced).
in_live_namespace() {
  [ -s "$pidfile" ] && local pid && pid=$(cat "$pidfile") &&
  [ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] &&
  timeout 10 nsenter -t "$pid" -m stat -f "$SHARED" >/dev/null 2>&1
}
if command -v slurmd >/dev/null && { [ "$remounted" = 1 ] || ! in_live_namespace; }; then
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile"); kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  unshare -m --propagation private sh -c \
    "mount --bind '$NODE_CLIENT' '$SHARED' && exec /usr/sbin/slurmd"
  NODE=$(hostname -s)
  for _ in $(seq 300); do
    case "$(timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null)" in idle|mix|alloc|comp) break ;; esac
    sleep 0.2
  done
fi
echo "GlusterFS volume $VOLUME up: driver client at $SHARED, SLURM jobs through a second client" \
     "in $((SECONDS - start)) s"
