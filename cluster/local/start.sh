#!/usr/bin/env bash
# The whole local deployment: a multi-node Ray cluster and an MLflow tracking server.
set -euo pipefail
here=$(dirname "$0")
"$here/start-mlflow.sh"  # first: it writes the MLflow login into $CLUSTER_SECRETS for Ray's nodes
"$here/start-ray.sh"
