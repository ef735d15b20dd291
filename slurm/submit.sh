#!/usr/bin/env bash
# Submits the whole pipeline as four job arrays chained with dependencies:
# each stage starts when every task of the previous one succeeded.
#
#   slurm/submit.sh [CONFIG]          # array sizes from TRAIN_TASKS etc.
#
# TRAIN_TASKS (default: number of runs), EXPLAIN_TASKS (default 8),
# SUMMARIZE_TASKS (default 4). The analyzer is one task.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONFIG=${1:-${CONFIG:-pipeline.toml}}
mkdir -p slurm-logs
runs=$(grep -cE '^\[runs\.' "$CONFIG" || true)
train_tasks=${TRAIN_TASKS:-${runs:-1}}
explain_tasks=${EXPLAIN_TASKS:-8}
summarize_tasks=${SUMMARIZE_TASKS:-4}
submit() { sbatch --parsable --export=ALL "$@"; }
train=$(submit --array=0-$((train_tasks - 1)) --job-name=at-train slurm/stage.sbatch trainer)
explain=$(submit --dependency=afterok:"$train" --array=0-$((explain_tasks - 1)) --job-name=at-explain slurm/stage.sbatch explainer)
summarize=$(submit --dependency=afterok:"$explain" --array=0-$((summarize_tasks - 1)) --job-name=at-summarize slurm/stage.sbatch summarizer)
analyze=$(submit --dependency=afterok:"$summarize" --array=0-0 --job-name=at-analyze slurm/stage.sbatch analyzer)
echo "submitted: trainer $train, explainer $explain, summarizer $summarize, analyzer $analyze"
echo "$analyze" > slurm-logs/last-analyze-job
