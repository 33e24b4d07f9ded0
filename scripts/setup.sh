#!/usr/bin/env bash
# Installs what a fresh Debian machine needs and builds the project in release mode.
# Safe to run again: installed packages are skipped and the build is incremental.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

clm_install_packages
swift build -c release
echo "setup done: binaries in $(swift build -c release --show-bin-path)"
