#!/usr/bin/env bash
# Times the PyTorch peer (../shared/bench/torch_peer.py) and our benchmarks
# in interleaved rounds on this machine, and prints per case the best
# (lowest) median of each side and their ratio.
#
# Why rounds: shared VMs drift by tens of percent from one minute to the
# next. Interleaving peer and ours, and keeping each side's best round,
# compares both at the machine's quieter moments instead of comparing one
# side's good minute with the other's bad one.
#
#   scripts/compare-peer.sh              # 3 rounds
#   ROUNDS=5 PEER_PYTHON=/path/to/python scripts/compare-peer.sh
#   PEER_ARGS="--methods core" scripts/compare-peer.sh   # the peer's train step, LRP and Grad-CAM only
#
# On an AVX-512 machine, both sides at AVX2 (our kernels, oneDNN and ATen):
#   ATTRIBUTION_TRENDS_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 scripts/compare-peer.sh
#
# The model of configs/custom-model.toml, which is no preset, is timed too
# (case cifar_vgg): the trainer prints its PyTorch module and
# scripts/peer_models.py times that module as the peer times the presets.
#
# The peer needs torch, zennit and captum:
#   python3 -m venv /tmp/peer && /tmp/peer/bin/pip install -q torch zennit captum
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
python=${PEER_PYTHON:-/tmp/peer/bin/python}
peer_script=${PEER_SCRIPT:-../shared/bench/torch_peer.py}
peer_args=${PEER_ARGS:-}
# With the peer's core methods only, time ours alike (the gradient family
# takes minutes a round).
case " $peer_args " in
    *" core "*) bench_methods=lrp,gradcam ;;
    *) bench_methods=${BENCH_METHOD:-} ;;
esac
out=${OUT:-target/peer-compare}
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.txt

[ -x "$python" ] || { echo "compare-peer: no peer Python at $python (set PEER_PYTHON)" >&2; exit 1; }
[ -f "$peer_script" ] || { echo "compare-peer: no peer script at $peer_script" >&2; exit 1; }

cargo bench -q -p trainer --bench train_step --no-run
cargo bench -q -p explainer --bench explain --no-run
cargo build -q --release -p trainer
target/release/trainer --config configs/custom-model.toml --torch-module small-vgg > "$out/small_vgg.py"
for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds" >&2
    # shellcheck disable=SC2086 # PEER_ARGS is a list of words
    "$python" "$peer_script" 2 $peer_args > "$out/peer-$round.json"
    "$python" scripts/peer_models.py "$out/small_vgg.py" SmallVgg cifar_vgg 3 32 2 > "$out/peer-models-$round.json"
    cargo bench -q -p trainer --bench train_step > "$out/train-$round.txt"
    BENCH_REPS=7 BENCH_METHOD="$bench_methods" cargo bench -q -p explainer --bench explain > "$out/explain-$round.txt"
done

python3 - "$out" "$rounds" <<'EOF'
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
cases = {("simple", "1x28x28"): "fmnist_simple", ("simple", "3x32x32"): "cifar_simple",
         ("complex", "1x28x28"): "fmnist_complex", ("complex", "3x32x32"): "cifar_complex", ("small-vgg", "3x32x32"): "cifar_vgg"}
# Every round's median per key; a side's figure is its best round.
ours, peer = {}, {}
def record(table, key, value):
    table.setdefault(key, []).append(value)
for r in range(1, rounds + 1):
    for name in (f"peer-{r}.json", f"peer-models-{r}.json"):
        for key, value in json.load(open(f"{out}/{name}")).items():
            if key.endswith("_s"):
                record(peer, key, value)
    for line in open(f"{out}/train-{r}.txt"):
        m = re.match(r"^(\w+_\w+)\s+([0-9.]+)\s", line)
        if m:
            record(ours, f"{m.group(1)}_train_step_s", float(m.group(2)))
    for line in open(f"{out}/explain-{r}.txt"):
        m = re.match(r"^(\w+_\w+)\s+(\w+)\s+([0-9.]+)s\s", line)
        if m:
            record(ours, f"{m.group(1)}_{m.group(2)}_s", float(m.group(3)))
# The goals open now: the presets' training step, LRP and Grad-CAM at
# 0.8 / 0.2 / 0.35 of the peer, the custom model's at 1.0 / 0.25 / 0.5,
# and every gradient-family method at 0.3.
targets = {"train_step": 0.8, "lrp200": 0.2, "gradcam200": 0.35, "saliency200": 0.3, "ixg200": 0.3, "ig32_200": 0.3,
           "smoothgrad16_200": 0.3, "guidedbp200": 0.3, "occlusion200": 0.3}
custom_targets = {"train_step": 1.0, "lrp200": 0.25, "gradcam200": 0.5}
isa = next((line.split(":", 1)[1].strip() for line in open(f"{out}/train-1.txt") if line.startswith("instruction set:")), "?")
print(f"best of {rounds} interleaved rounds (median per round); our kernels: {isa}")
print("medians: the ratio of the two sides' medians over the rounds (far from `ratio`: unsteady minutes)")
print(f"{'case':<28} {'ours (s)':>10} {'peer (s)':>10} {'ratio':>7} {'medians':>8} {'target':>7}  peer NCHW / channels_last")
for what in targets:
    for case in cases.values():
        key = f"{case}_{what}_s"
        if key in ours and key in peer:
            # The training step is compared against the faster of the
            # peer's two memory layouts (NCHW and channels_last), round by
            # round.
            layouts = ""
            rounds_peer = peer[key]
            if what == "train_step" and f"{case}_train_step_cl_s" in peer:
                cl = peer[f"{case}_train_step_cl_s"]
                layouts = f"  {min(peer[key]):.4f} / {min(cl):.4f}"
                rounds_peer = [min(a, b) for a, b in zip(peer[key], cl)]
            ratio = min(ours[key]) / min(rounds_peer)
            medians = statistics.median(ours[key]) / statistics.median(rounds_peer)
            target = custom_targets.get(what, targets[what]) if case == "cifar_vgg" else targets[what]
            print(
                f"{case + ' ' + what:<28} {min(ours[key]):>10.4f} {min(rounds_peer):>10.4f} {ratio:>7.2f} {medians:>8.2f} {target:>7.2f}{layouts}"
            )
EOF
