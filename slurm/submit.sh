#!/usr/bin/env bash
# Submits the whole pipeline as four job arrays chained with dependencies:
# each stage starts when every task of the previous one succeeded.
#
#   slurm/submit.sh [CONFIG]          # array sizes from TRAIN_TASKS etc.
#
# TRAIN_TASKS (default: number of runs), EXPLAIN_TASKS (default 8),
# SUMMARIZE_TASKS (default 4). The analyzer is one task. Jobs run from the
# repository root; their logs go to LOG_DIR (default slurm-logs/ there).
# BIN and STAGE_ARGS (see stage.sbatch) travel to the jobs with the rest of
# the environment.
set -euo pipefail
config=${1:-${CONFIG:-pipeline.toml}}
# A relative CONFIG is taken from the caller's directory when it exists there
# (the jobs run from the repository root).
if [[ $config != /* && -e $config ]]; then config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config"); fi
cd "$(dirname "$0")/.."
export CONFIG=$config
[[ -r $CONFIG ]] || { echo "submit.sh: config '$CONFIG' not found" >&2; exit 2; }
log_dir=${LOG_DIR:-slurm-logs}
mkdir -p "$log_dir"
runs=$(grep -cE '^\[runs\.' "$CONFIG" || true)
train_tasks=${TRAIN_TASKS:-$((runs > 0 ? runs : 1))}
explain_tasks=${EXPLAIN_TASKS:-8}
summarize_tasks=${SUMMARIZE_TASKS:-4}
for n in "$train_tasks" "$explain_tasks" "$summarize_tasks"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "submit.sh: array sizes must be positive integers (got '$n')" >&2; exit 2; }
done
submit() { sbatch --parsable --export=ALL --chdir="$PWD" --output="$log_dir/%x-%A_%a.out" "$@" | cut -d';' -f1; }
train=$(submit --array=0-$((train_tasks - 1)) --job-name=at-train slurm/stage.sbatch trainer)
explain=$(submit --dependency=afterok:"$train" --array=0-$((explain_tasks - 1)) --job-name=at-explain slurm/stage.sbatch explainer)
summarize=$(submit --dependency=afterok:"$explain" --array=0-$((summarize_tasks - 1)) --job-name=at-summarize slurm/stage.sbatch summarizer)
analyze=$(submit --dependency=afterok:"$summarize" --array=0-0 --job-name=at-analyze slurm/stage.sbatch analyzer)
echo "submitted: trainer $train, explainer $explain, summarizer $summarize, analyzer $analyze"
echo "$analyze" > "$log_dir/last-analyze-job"
