#!/usr/bin/env bash
# Refresh docs/status-page.png, the README's picture of the status page, on purpose: runs
# the status page's browser test with its screenshot pointed there. (In the test suite it
# goes to a temporary folder, so that a test run leaves the work tree as it found it.)
#   bash scripts/status-page-picture.sh     then commit docs/status-page.png
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup.sh

say "taking the picture (the browser test, about 30 s)"
MS_STATUS_PAGE_PICTURE="$REPO/docs/status-page.png" pytest -q -p no:cacheprovider \
  tests/integration/test_status_page_browser.py -k follows_a_model_live
say "wrote docs/status-page.png"
