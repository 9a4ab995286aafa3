#!/usr/bin/env bash
# Debian packages the integration tests start for real: PostgreSQL (the MLflow server's backend
# store in tests/integration/test_cluster.py) and Chromium (tests/integration/test_mlflow_ui_browser.py).
# Without them those tests fall back to SQLite or skip, saying why.
set -euo pipefail
packages=(postgresql chromium)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
