#!/usr/bin/env bash
# Open a mechattr report in headless Chromium (installed from Debian if missing), fail on
# JavaScript errors or unrendered plots, and save a screenshot.
#
#   scripts/check_report_in_browser.sh [REPORT_HTML] [SCREENSHOT_PNG]
#
# Defaults: reports/demo/report.html -> reports/demo/screenshot.png. The page is loaded from
# a file:// URL with networking disabled, so a report that needs the internet fails here.
# Before the real check, a self-test page that throws must be caught (the detector works).
set -euo pipefail
REPORT=${1:-reports/demo/induction/report.html}
SHOT=${2:-$(dirname "$REPORT")/screenshot.png}
if [ ! -f "$REPORT" ]; then
  echo "no report at $REPORT; run 'make demo' first" >&2
  exit 1
fi

CHROME=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROME" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  echo "installing Debian's chromium (apt-get)..." >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >&2
  CHROME=$(command -v chromium)
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars --no-first-run
       --enable-logging=stderr --v=0 --virtual-time-budget=20000 --window-size=1280,2600
       --user-data-dir="$TMP/profile" --proxy-server=127.0.0.1:9 --proxy-bypass-list='<-loopback>')

js_errors() {  # console errors and uncaught exceptions from a Chromium stderr log
  grep -E 'CONSOLE|Uncaught' "$1" | grep -E 'Uncaught|Error|error' || true
}

# 1. self-test: the detector must catch an uncaught exception
printf '<html><body><script>throw new Error("selftest-uncaught")</script></body></html>' > "$TMP/bad.html"
"$CHROME" "${FLAGS[@]}" --dump-dom "file://$TMP/bad.html" > /dev/null 2> "$TMP/bad.log" || true
if ! js_errors "$TMP/bad.log" | grep -q selftest-uncaught; then
  echo "self-test failed: Chromium's console log did not show a deliberate JavaScript error" >&2
  cat "$TMP/bad.log" >&2
  exit 1
fi

# 2. the report
URL="file://$(realpath "$REPORT")"
"$CHROME" "${FLAGS[@]}" --dump-dom "$URL" > "$TMP/dom.html" 2> "$TMP/run.log" || true
"$CHROME" "${FLAGS[@]}" --screenshot="$SHOT" "$URL" > /dev/null 2>> "$TMP/run.log" || true

status=0
errs=$(js_errors "$TMP/run.log")
if [ -n "$errs" ]; then
  echo "JavaScript errors:" >&2
  echo "$errs" >&2
  status=1
fi
divs=$( (grep -o '<div [^>]*class="plotly-graph-div' "$TMP/dom.html" || true) | wc -l)
drawn=$( (grep -o 'class="plot-container plotly"' "$TMP/dom.html" || true) | wc -l)
echo "plot divs: $divs, rendered by plotly.js: $drawn"
if [ "$divs" -eq 0 ] || [ "$drawn" -lt "$divs" ]; then
  echo "not every plot rendered (plotly.js missing or failing offline?)" >&2
  status=1
fi
if [ ! -s "$SHOT" ]; then
  echo "no screenshot written" >&2
  status=1
else
  echo "screenshot: $SHOT"
fi
[ "$status" -eq 0 ] && echo "browser check passed: no JavaScript errors, $drawn plots rendered offline"
exit "$status"
