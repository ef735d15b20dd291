"""PyTorch peer for a model the tool prints (`trainer --torch-module`),
timed as ../shared/bench/torch_peer.py times the presets: one Adam training
step on a batch of 100 (NCHW and channels_last), Zennit's EpsilonGammaBox
LRP and Captum's LayerGradCam on the last convolution's ReLU, each over 200
probe images. Prints one JSON line of median seconds, keys <case>_<work>_s.

    python scripts/peer_models.py MODULE.py CLASS CASE CHANNELS SIDE [THREADS]
"""
import importlib.util, json, statistics, sys, time

import torch
from torch import nn

path, class_name, case, channels, side = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
threads = int(sys.argv[6]) if len(sys.argv) > 6 else 2
torch.manual_seed(0)
torch.set_num_threads(threads)
spec = importlib.util.spec_from_file_location("printed_module", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
make = getattr(module, class_name)


def median_seconds(work, runs=7, warmup=2):
    for _ in range(warmup):
        work()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


out = {"torch": torch.__version__, "threads": threads}
x = torch.randn(100, channels, side, side)
y = torch.randint(0, 10, (100,))
for suffix, layout in [("", torch.contiguous_format), ("_cl", torch.channels_last)]:
    net = make().to(memory_format=layout)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    batch = x.contiguous(memory_format=layout)

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(batch), y).backward()
        opt.step()

    out[f"{case}_train_step{suffix}_s"] = median_seconds(step)

net = make().eval()
probe = torch.randn(200, channels, side, side)
from zennit.attribution import Gradient
from zennit.composites import EpsilonGammaBox

composite = EpsilonGammaBox(low=-1.0, high=1.0)


def lrp():
    with Gradient(model=net, composite=composite) as attributor:
        logits = net(probe)
        onehot = torch.zeros_like(logits).scatter_(1, logits.argmax(1, keepdim=True), 1.0)
        return attributor(probe, onehot)[1]


out[f"{case}_lrp200_s"] = median_seconds(lrp, runs=5)
from captum.attr import LayerGradCam

features = net.features_conv
last_conv = max(i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d))
gradcam = LayerGradCam(net, features[last_conv + 1])


def cam():
    with torch.no_grad():
        target = net(probe).argmax(1)
    return gradcam.attribute(probe, target=target)


out[f"{case}_gradcam200_s"] = median_seconds(cam, runs=5)
print(json.dumps(out))
