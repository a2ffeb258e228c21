#!/bin/bash
# RIOS's own test suite (rios/riostests, 24 modules) against this package's applier, with only
# the import of rios.applier changed; or against RIOS itself, as the baseline.
#
#   bash ci/peers/rios.sh setup RIOS_GIT_DIR        # once: RIOS's source and a venv in $RIOS_RUN
#   bash ci/peers/rios.sh run pp|rios [-|CW_THREADS|CW_SUBPROC] [module ...]
#
# RIOS is not on PyPI: RIOS_GIT_DIR is a clone of github.com/ubarsc/rios (a bare one will do).
# Needs Debian's python3-gdal and python3-venv (RIOS uses GDAL's Python bindings). Each module
# runs in its own process and scratch directory; logs go to $RIOS_RUN/results/<tag>/.
# A style other than "-" forces every apply that asked for no concurrency onto 2 workers of
# that style (modules that add results up in otherArgs then fail with RIOS too).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
run_dir=${RIOS_RUN:-/tmp/rios-run}

case ${1:-} in
setup)
    rios_git=${2:?usage: rios.sh setup RIOS_GIT_DIR}
    mkdir -p "$run_dir" && cd "$run_dir"
    rm -rf src && mkdir src
    git --git-dir="$rios_git" archive HEAD | tar -x -C src
    # RIOS HEAD calls osr.SpatialReference(epsg=N) (GDAL >= 3.7); Debian 12's GDAL is 3.6.
    sed -i -E 's/(\w+) = osr\.SpatialReference\(epsg=([0-9A-Za-z_]+)\)/\1 = osr.SpatialReference(); \1.ImportFromEPSG(\2)/' \
        src/rios/pixelgrid.py src/rios/riostests/testfootprint.py
    /usr/bin/python3 -m venv --system-site-packages venv
    # numpy 1.x: Debian's osgeo is built against it; scipy, or testoverlap skips itself
    venv/bin/pip install -q 'numpy<2' scipy pyogrio shapely
    venv/bin/pip install -q ./src
    venv/bin/pip install -q -e "$repo"
    ;;
run)
    which=${2:?usage: rios.sh run pp|rios [style] [module ...]}
    style=${3:--}
    shift $(( $# < 3 ? $# : 3 ))
    cd "$run_dir"
    export PATH="$run_dir/venv/bin:$PATH"  # RIOS's CW_SUBPROC starts rios_computeworker
    modules=${*:-$(ls src/rios/riostests/test*.py | xargs -n1 basename | sed 's/\.py$//')}
    tag=$which; [ "$style" != "-" ] && tag=$which-$style
    mkdir -p "results/$tag"
    for module in $modules; do
        scratch=$(mktemp -d "$run_dir/scratch.XXXXXX")
        if (cd "$scratch" && timeout 600 python "$here/rios_module.py" "$which" "$module" "$style" \
                > "$run_dir/results/$tag/$module.log" 2>&1); then
            echo "$module PASS"
        else
            echo "$module FAIL"
        fi
        rm -rf "$scratch"
    done | tee "results/$tag.summary"
    echo "$tag: $(grep -c ' PASS' "results/$tag.summary") of $(wc -l < "results/$tag.summary") modules pass"
    ;;
*)
    sed -n 2,12p "$0"; exit 2 ;;
esac
