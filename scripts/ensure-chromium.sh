#!/usr/bin/env bash
# The browser test drives Debian's Chromium (Playwright's own browser download cannot work
# offline). Install it when missing and we may (root); otherwise say what to do.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser test..."
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is missing: run 'sudo apt-get install chromium' for the browser test" >&2
  exit 1
fi
