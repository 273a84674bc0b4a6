#!/usr/bin/env bash
# Open an edgekd HTML report in a real browser (headless Chromium, Debian's package) and save a
# screenshot, to check that the page renders and shows its charts.
#   benchmarks/screenshot_report.sh benchmarks/results/<run>/report.html out.png
set -euo pipefail
page=$(realpath "$1"); png=${2:-report.png}
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1300,2600 \
  --screenshot="$(realpath -m "$png")" "file://$page" 2>/dev/null
echo "$png"
