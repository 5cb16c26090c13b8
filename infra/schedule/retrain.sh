#!/usr/bin/env bash
# Scheduled retraining: run ReviewFlow once, appending to a log, never two at a time.
# Used by the crontab entry and the systemd timer beside this file; safe to run by hand.
#
# Settings (environment, or the optional file infra/schedule/retrain.env):
#   REVIEWFLOW_PYTHON      python to use (default: python3 on PATH)
#   REVIEWFLOW_RUN_ARGS    extra options for `run`, e.g. "--data s3://bucket/reviews/"
#   REVIEWFLOW_LOG         log file (default: <repo>/logs/retrain.log)
#   plus anything the flow reads: MLFLOW_TRACKING_URI, METAFLOW_* / AWS_* for S3, ...
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
if [ -f infra/schedule/retrain.env ]; then
  set -a; . infra/schedule/retrain.env; set +a
fi
python="${REVIEWFLOW_PYTHON:-python3}"
log="${REVIEWFLOW_LOG:-$repo/logs/retrain.log}"
mkdir -p "$(dirname "$log")"
export USERNAME="${USERNAME:-${USER:-reviewflow}}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"

exec 9>"$(dirname "$log")/.retrain.lock"  # one run at a time per log file
if ! flock -n 9; then
  echo "$(date -u +%FT%TZ) retrain: previous run still in progress; skipping" >>"$log"
  exit 0
fi
echo "$(date -u +%FT%TZ) retrain: starting: $python flows/review_flow.py run ${REVIEWFLOW_RUN_ARGS:-}" >>"$log"
set +e
# shellcheck disable=SC2086  # REVIEWFLOW_RUN_ARGS is a list of options
"$python" flows/review_flow.py run ${REVIEWFLOW_RUN_ARGS:-} >>"$log" 2>&1
status=$?
set -e
echo "$(date -u +%FT%TZ) retrain: finished with exit code $status" >>"$log"
exit "$status"
