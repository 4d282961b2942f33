#!/usr/bin/env bash
# Regenerate every committed CPU report under reports/ (run from the repository root, in the README's venv).
# Each run directory holds results.json (the record), results.csv, report.md and its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
for suite in memory latency segformer-b1 maskformer mask2former fpn a2u-matting; do
    upbench run --suite "$suite" --device cpu --out "reports/$suite-cpu" --force --no-progress
done
