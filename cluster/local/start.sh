#!/usr/bin/env bash
# The whole local deployment: a multi-node Ray cluster and an MLflow tracking server.
set -euo pipefail
here=$(dirname "$0")
"$here/start-ray.sh"
"$here/start-mlflow.sh"
