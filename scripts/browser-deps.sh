#!/usr/bin/env bash
# Chromium for tests/test_browser.py, and nothing else (scripts/system-deps.sh, which `make test`
# runs, installs it together with the datasets). Playwright's own browser download is unreachable
# from these machines, so the test drives Debian's /usr/bin/chromium. Installs only when it is
# missing and we are root; otherwise says what to do and exits 0 (the test then skips with that
# reason, or fails when CI=true).
set -u
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
else
    echo "note: /usr/bin/chromium is missing; install it with: sudo apt-get install chromium" >&2
fi
