#!/usr/bin/env bash
# Renders a clm-report HTML file to a PNG with headless Chromium, to look at it as a reader would.
#
#   scripts/report-screenshot.sh REPORT.html OUT.png [WIDTHxHEIGHT]   (default 1200x4400)
#
# Headless Chromium captures the window, not the page: the default height holds a full report
# of an LSTM run, a graph run and a scores file (about 3,900 px); shorter reports end in blank space.
#
# Installs Debian's chromium when it is missing (as root, or through sudo).
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: scripts/report-screenshot.sh REPORT.html OUT.png [WIDTHxHEIGHT]" >&2; exit 64; }
report=$1
out=$2
size=${3:-1200x4400}
[ -f "$report" ] || { echo "report $report does not exist" >&2; exit 66; }
[[ "$size" =~ ^[0-9]+x[0-9]+$ ]] || { echo "size must look like 1200x3000, got $size" >&2; exit 64; }

browser=""
for candidate in chromium chromium-browser; do
    if command -v "$candidate" >/dev/null; then browser=$candidate; break; fi
done
if [ -z "$browser" ]; then
    echo "installing Debian package: chromium"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    browser=chromium
fi

# Chromium resolves file:// URLs from an absolute path only.
absolute_report="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
absolute_out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
rm -f "$absolute_out"
# --no-sandbox: the sandbox cannot start as root in a container; the page is our own file.
# A private profile directory keeps runs from touching (or locking) a user's profile.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size="${size/x/,}" --screenshot="$absolute_out" "file://$absolute_report" 2>/dev/null || true
# Chromium's exit status says little in headless mode; the file is the evidence.
[ -s "$absolute_out" ] || { echo "chromium wrote no screenshot to $absolute_out" >&2; exit 1; }
echo "wrote $absolute_out"
