#!/usr/bin/env bash
# Install the retraining timer as a systemd *user* unit for this checkout, and start it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
units="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
mkdir -p "$units"
for unit in reviewflow-retrain.service reviewflow-retrain.timer; do
  sed "s#@REPO@#$repo#g" "$repo/infra/schedule/$unit" >"$units/$unit"
done
systemctl --user daemon-reload
systemctl --user enable --now reviewflow-retrain.timer
systemctl --user list-timers reviewflow-retrain.timer
