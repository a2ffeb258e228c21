#!/bin/bash
# Start the real schedulers the test suite runs against, SLURM and Grid Engine, and a GlusterFS
# volume that SLURM's jobs see through a client of their own; install the headless Chromium the
# HTML report's tests drive. Run as root.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
status=0
bash "$here/slurm/bringup.sh" || { echo "ci/bringup-all.sh: SLURM bring-up failed" >&2; status=1; }
bash "$here/sge/bringup.sh" || { echo "ci/bringup-all.sh: Grid Engine bring-up failed" >&2; status=1; }
# After SLURM: it restarts slurmd in a mount namespace where the volume is a second client.
bash "$here/gluster/bringup.sh" || { echo "ci/bringup-all.sh: GlusterFS bring-up failed" >&2; status=1; }
bash "$here/browser/bringup.sh" || { echo "ci/bringup-all.sh: browser install failed" >&2; status=1; }
exit $status
