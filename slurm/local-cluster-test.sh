#!/usr/bin/env bash
# Proves that slurm/submit.sh and slurm/stage.sbatch work on a real SLURM:
# brings up a private one-node cluster (munged, slurmctld, slurmd) whose state
# lives in a temporary folder, submits configs/smoke.toml through
# slurm/submit.sh as four job arrays, checks that every task completed, runs
# the same pipeline in one local process per stage, and compares the two
# output trees byte for byte.
#
#   slurm/local-cluster-test.sh        # as root on Debian/Ubuntu; ~2-4 minutes
#
# Installs Debian's slurm-wlm and munge when they are missing (the only thing
# it changes outside its temporary folder); needs no systemd. It uses its own
# munge socket, config and ports, so it neither needs nor disturbs a SLURM or
# munged already on the machine, and is safe to rerun. The last line is
# `slurm-local-test: PASS` (exit 0) or `slurm-local-test: FAIL (<why>)`
# (exit 1).
#
# Environment: TRAIN_TASKS (2), EXPLAIN_TASKS (3), SUMMARIZE_TASKS (2): array
# sizes; SLURM_TEST_TIMEOUT (600): seconds to wait for the jobs;
# SLURM_TEST_KEEP=1 keeps the temporary folder (it is always kept on failure);
# BUILD_RETRIES (3) and BUILD_RETRY_WAIT (180): retries of a failed build.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
keep=${SLURM_TEST_KEEP:-0}
timeout=${SLURM_TEST_TIMEOUT:-600}
say() { printf '[slurm-local-test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

tmp=""
pids=()
result=""
finish() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $result ]] || result="FAIL (interrupted or unexpected error, exit $rc)"
    if [[ -n $tmp && -f $tmp/slurm.conf ]]; then
        # Cancel whatever is still queued or running before the daemons go.
        if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
            say "cancelling leftover jobs"
            # shellcheck disable=SC2046
            scancel --quiet $(squeue -h -o %A | sort -u) 2>/dev/null
            for _ in $(seq 30); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 1; done
        fi
    fi
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ -n $tmp && -d $tmp ]]; then
        if [[ $result == PASS && $keep != 1 ]]; then
            rm -rf "$tmp"
        else
            say "state, logs and outputs kept in $tmp"
        fi
    fi
    echo "slurm-local-test: $result"
    [[ $result == PASS ]] && exit 0 || exit 1
}
trap finish EXIT
trap 'result="FAIL (interrupted)"; exit 1' INT TERM
fail() {
    result="FAIL ($*)"
    exit 1
}
show_tail() { [[ -f $1 ]] && { echo "---- tail of $1"; tail -n "${2:-20}" "$1"; echo "----"; }; }

[[ $(id -u) == 0 ]] || fail "must run as root (it installs packages and runs slurmd)"
# No service manager is used: the daemons are started here, in the foreground under &.
say "PID 1 is '$(cat /proc/1/comm 2>/dev/null)'; the daemons are started directly, not through systemd"

# ---------------------------------------------------------------- 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null 2>&1; then
        apt-get update >/dev/null || fail "apt-get update failed"
        apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null || fail "apt-get install slurm-wlm munge failed"
    fi
fi
for tool in munged slurmctld slurmd sbatch squeue sinfo scontrol scancel; do
    command -v "$tool" >/dev/null || fail "$tool not found after installing slurm-wlm and munge"
done
say "$(slurmctld -V) and $(munged --version 2>&1 | head -n1)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/slurm-local-test.XXXXXX") || fail "mktemp failed"
chmod 700 "$tmp"
mkdir -p "$tmp"/{munge,state,spool/slurmd-"$(hostname -s)",run,log,bin,jobs-logs}
chmod 700 "$tmp/munge"
say "working in $tmp"

# The client commands (sbatch, squeue, ...) and the jobs read this config.
export SLURM_CONF=$tmp/slurm.conf
# The developer's settings for submit.sh and stage.sbatch are not this test's.
unset CONFIG BIN STAGE_ARGS LOG_DIR
# Nothing from an enclosing SLURM job may leak into ours or into the local run.
while read -r v; do unset "$v"; done < <(env | grep -oE '^SLURM_[A-Z_]+' | grep -vE '^SLURM_(CONF|TEST_.*)$' || true)

# ---------------------------------------------------------------- 2. munge
key=$tmp/munge/munge.key
if [[ ! -s $key ]]; then
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$key" >/dev/null 2>&1 || fail "mungekey failed"
    else
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none || fail "cannot create a munge key"
    fi
fi
chmod 600 "$key"
munge_socket=$tmp/munge/munge.socket
munged --foreground --force --key-file="$key" --socket="$munge_socket" \
    --pid-file="$tmp/munge/munged.pid" --log-file="$tmp/log/munged.log" \
    --seed-file="$tmp/munge/munged.seed" >"$tmp/log/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [[ -S $munge_socket ]] && break; sleep 0.2; done
if [[ ! -S $munge_socket ]] || ! munge --socket="$munge_socket" -n </dev/null | unmunge --socket="$munge_socket" >/dev/null 2>&1; then
    show_tail "$tmp/log/munged.out"
    show_tail "$tmp/log/munged.log"
    fail "munged did not start"
fi
say "munged is up (socket $munge_socket)"

# ---------------------------------------------------------------- 3. slurm
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ctld_port=""
for p in $(seq 16817 2 16899); do
    if ! port_busy "$p" && ! port_busy $((p + 1)); then ctld_port=$p; break; fi
done
[[ -n $ctld_port ]] || fail "no free pair of TCP ports in 16817-16900"
slurmd_port=$((ctld_port + 1))

node=$(hostname -s)
cpus=$(nproc)
mem_total=$(free -m | awk '/^Mem:/ {print $2}')
margin=$((mem_total / 20 > 512 ? mem_total / 20 : 512))
real_memory=$((mem_total - margin))
((real_memory >= 4096)) || fail "stage.sbatch asks for --mem=4G but this machine has only ${mem_total} MiB"

cat >"$SLURM_CONF" <<EOF
# A one-node cluster for slurm/local-cluster-test.sh; all state under $tmp.
ClusterName=attrtrends-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$munge_socket
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool/slurmd-%n
SlurmctldPidFile=$tmp/run/slurmctld.pid
SlurmdPidFile=$tmp/run/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$tmp/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
# Keep finished jobs in slurmctld's memory so that scontrol can still show them.
MinJobAge=3600
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
MailProg=/bin/true
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_memory State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

# The jobs inherit slurmd's niceness: keep the machine usable for others.
nice -n 10 slurmctld -D -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
if ! scontrol ping 2>/dev/null | grep -q UP; then
    show_tail "$tmp/log/slurmctld.out"
    show_tail "$tmp/log/slurmctld.log"
    fail "slurmctld did not come up"
fi
nice -n 10 slurmd -D -f "$SLURM_CONF" -N "$node" >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)
state=""
for i in $(seq 120); do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null | head -n1)
    case $state in
        idle) break ;;
        down* | drain* | drng*) ((i % 10 == 5)) && scontrol update nodename="$node" state=resume 2>/dev/null ;;
    esac
    sleep 0.5
done
if [[ $state != idle ]]; then
    sinfo -R 2>/dev/null
    show_tail "$tmp/log/slurmd.out"
    show_tail "$tmp/log/slurmd.log"
    show_tail "$tmp/log/slurmctld.log"
    fail "node $node is '$state', not idle, after 60 s"
fi
say "slurmctld and slurmd are up (ports $ctld_port/$slurmd_port), node $node idle with $cpus CPU(s), ${real_memory} MiB"

# ---------------------------------------------------------------- 4. build, submit, wait
cd "$repo" || fail "cannot cd to $repo"
tries=$((${BUILD_RETRIES:-3} + 1))
for ((t = 1; t <= tries; t++)); do
    say "cargo build --release --workspace --bins (try $t of $tries)"
    if nice -n 10 cargo build --release --workspace --bins >"$tmp/log/build.log" 2>&1; then break; fi
    show_tail "$tmp/log/build.log" 15
    ((t < tries)) || fail "cargo build failed (log: $tmp/log/build.log)"
    say "build failed; another change may be in progress: retrying in ${BUILD_RETRY_WAIT:-180} s"
    sleep "${BUILD_RETRY_WAIT:-180}"
done
# Both runs use this copy, so a rebuild by someone else in the meantime
# cannot make them differ.
for stage in trainer explainer summarizer analyzer; do
    cp "target/release/$stage" "$tmp/bin/" || fail "target/release/$stage missing after the build"
done

# Both runs read the same config file and write to the same folder (moved
# aside in between): the report names its config file.
out=$tmp/out
sed -E "s#^dir[[:space:]]*=.*#dir = \"$out\"#" configs/smoke.toml >"$tmp/smoke.toml"
grep -q "^dir = \"$out\"" "$tmp/smoke.toml" || fail "could not point [output] dir of configs/smoke.toml at $out"

export TRAIN_TASKS=${TRAIN_TASKS:-2} EXPLAIN_TASKS=${EXPLAIN_TASKS:-3} SUMMARIZE_TASKS=${SUMMARIZE_TASKS:-2}
expected_tasks=$((TRAIN_TASKS + EXPLAIN_TASKS + SUMMARIZE_TASKS + 1))
logs=$tmp/jobs-logs
start=$(date +%s)
say "submitting with TRAIN_TASKS=$TRAIN_TASKS EXPLAIN_TASKS=$EXPLAIN_TASKS SUMMARIZE_TASKS=$SUMMARIZE_TASKS"
# Submit from elsewhere, as a user would, to check that submit.sh finds the repository.
submitted=$(cd "$tmp" && BIN=$tmp/bin LOG_DIR=$logs "$repo/slurm/submit.sh" smoke.toml 2>&1) || {
    echo "$submitted"
    fail "slurm/submit.sh failed"
}
say "$submitted"
read -r -a job_ids < <(grep '^submitted:' <<<"$submitted" | grep -oE '[0-9]+' | tr '\n' ' ')
((${#job_ids[@]} == 4)) || fail "could not read four job ids from: $submitted"

jobs_table() { scontrol show job -o 2>/dev/null | grep -E "JobName=at-(train|explain|summarize|analyze) " ; }
last=""
while :; do
    table=$(jobs_table)
    active=$(grep -cE 'JobState=(PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|RESIZING)' <<<"$table")
    bad=$(grep -E 'JobState=(FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)|Reason=DependencyNeverSatisfied' <<<"$table")
    [[ -n $table ]] && ((active == 0)) && break
    [[ -z $bad ]] || break
    now=$(date +%s)
    if ((now - start > timeout)); then
        squeue -o '%.14i %.12j %.10T %.10M %R'
        fail "jobs still pending or running after ${timeout} s (SLURM_TEST_TIMEOUT)"
    fi
    summary=$(squeue -h -o '%j %T' | sort | uniq -c | awk '{printf "%s %s x%s; ", $2, $3, $1}')
    [[ $summary != "$last" ]] && say "waiting: $summary" && last=$summary
    sleep 2
done
elapsed=$(($(date +%s) - start))

# ---------------------------------------------------------------- check the jobs
table=$(jobs_table)
summary=$(sed -E 's/.*JobName=([^ ]+) .*JobState=([A-Z_]+) .* ExitCode=([0-9:]+).*/\1 \2 exit \3/' <<<"$table" | sort | uniq -c | awk '{$1=$1" x"; print}' | paste -sd';' -)
say "jobs: $summary"
not_ok=$(grep -vE 'JobState=COMPLETED .* ExitCode=0:0' <<<"$table")
if [[ -n $not_ok ]]; then
    for f in "$logs"/*.out; do grep -qiE 'error|panick' "$f" && show_tail "$f" 15; done
    show_tail "$tmp/log/slurmd.log"
    fail "not every job completed with exit code 0: $(awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(JobId|JobName|JobState|Reason|ExitCode)=/) printf "%s ", $i; print ""}' <<<"$not_ok" | head -n 5 | paste -sd';' -)"
fi
tasks=$(grep -c . <<<"$table")
((tasks == expected_tasks)) || fail "expected $expected_tasks array tasks, slurmctld knows $tasks"
n_logs=$(find "$logs" -name '*.out' | wc -l)
((n_logs == expected_tasks)) || fail "expected $expected_tasks job logs in $logs, found $n_logs"
# Each task must have been told its own shard: stage.sbatch logs the array
# variables that the stages shard themselves by.
for spec in "trainer at-train $TRAIN_TASKS" "explainer at-explain $EXPLAIN_TASKS" \
    "summarizer at-summarize $SUMMARIZE_TASKS" "analyzer at-analyze 1"; do
    read -r stage name n <<<"$spec"
    for ((i = 0; i < n; i++)); do
        f=$(find "$logs" -name "$name-*_$i.out" | head -n1)
        [[ -n $f ]] || fail "no log of $name task $i"
        grep -q "^$stage: array task $i of $n " "$f" || { show_tail "$f" 5; fail "$name task $i was not run as array task $i of $n"; }
    done
done
# ANSI colours are in the way of \b.
if grep -lE 'panicked|ERROR|^error' "$logs"/*.out >/dev/null; then
    grep -lE 'panicked|ERROR|^error' "$logs"/*.out | while read -r f; do show_tail "$f" 10; done
    fail "errors in the job logs"
fi
for f in analysis/report.md analysis/by_step.parquet analysis/correlations.parquet; do
    [[ -s $out/$f ]] || fail "the analyzer's $f is missing"
done
ls "$out"/analysis/figures/*.png >/dev/null 2>&1 || fail "the analyzer wrote no figures"
say "all $tasks array tasks COMPLETED with exit code 0 in ${elapsed} s; analysis written"
mv "$out" "$tmp/slurm-out"

# ---------------------------------------------------------------- 5. local run and comparison
say "running the same pipeline locally, one process per stage"
for stage in trainer explainer summarizer analyzer; do
    if ! nice -n 10 "$tmp/bin/$stage" --config "$tmp/smoke.toml" >"$tmp/log/local-$stage.log" 2>&1; then
        show_tail "$tmp/log/local-$stage.log"
        fail "local $stage failed"
    fi
done
mv "$out" "$tmp/local-out"
# The array tasks together must have done each unit once, as the one process did.
done_count() { sed -E 's/\x1b\[[0-9;]*m//g' "$@" | grep -oE "^.*$stage: [0-9]+ unit\(s\) done" | grep -oE '[0-9]+ unit' | awk '{s += $1} END {print s + 0}'; }
for stage in trainer explainer summarizer analyzer; do
    local_done=$(done_count "$tmp/log/local-$stage.log")
    ((local_done > 0)) || continue # this stage does not log its count
    case $stage in trainer) name=at-train ;; explainer) name=at-explain ;; summarizer) name=at-summarize ;; analyzer) name=at-analyze ;; esac
    slurm_done=$(done_count "$logs/$name"-*.out)
    ((slurm_done == local_done)) || fail "$stage: the array tasks did $slurm_done unit(s) in all, one process $local_done"
done
if ! diff -r "$tmp/slurm-out" "$tmp/local-out" >"$tmp/log/diff.txt" 2>&1; then
    head -n 20 "$tmp/log/diff.txt"
    fail "the SLURM run and the local run differ ($(grep -c . "$tmp/log/diff.txt") diff lines, see $tmp/log/diff.txt)"
fi
files=$(find "$tmp/slurm-out" -type f | wc -l)
say "SLURM and local outputs are byte-identical ($files files)"
result=PASS
