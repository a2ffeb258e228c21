#!/bin/bash
# Start the real schedulers the test suite runs against: SLURM and Grid Engine. Run as root.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
status=0
bash "$here/slurm/bringup.sh" || { echo "ci/bringup-all.sh: SLURM bring-up failed" >&2; status=1; }
bash "$here/sge/bringup.sh" || { echo "ci/bringup-all.sh: Grid Engine bring-up failed" >&2; status=1; }
exit $status
