#!/bin/bash
# Install the real browser the HTML report's tests drive (tests/test_report_html.py): Debian 12's
# headless Chromium and its chromedriver, and selenium for the Python that runs the tests.
# Run as root. Re-runnable: installs only what is missing.
set -euo pipefail
start=$SECONDS
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
fi
# The suite's Python (the one on PATH, as .ci/run uses): selenium drives chromedriver.
python -c "import selenium" 2>/dev/null || python -m pip install -q "selenium>=4.20"
chromium --version
chromedriver --version
echo "ci/browser/bringup.sh: Chromium and chromedriver ready in $((SECONDS - start)) s"
