#!/usr/bin/env bash
# Regenerate every committed CPU report under reports/ (run from the repository root, in the README's venv).
# Each run directory holds results.json (the record), results.csv, report.md and its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
for suite in memory latency alloc segformer-b1 maskformer mask2former fpn a2u-matting; do
    upbench run --suite "$suite" --device cpu --out "reports/$suite-cpu" --force --no-progress
done
# The foundation-model upsamplers' official impls need several GiB at their largest sizes: cap the address
# space so an allocation that does not fit fails as a recorded `oom` cell instead of waking the OOM killer.
(ulimit -v 10000000; upbench run --suite vfm-cpu --device cpu --out reports/vfm-cpu --force --no-progress)
