"""Row 8 of the benchmark under the microscope, on a GPU: ResNet-50 training images/s of our trainer
(bf16 + channels_last), of the textbook loop with the same settings (what the trainer costs), of the
fp32 reference (torchvision's settings; cuDNN's TF32 convolutions on, torch's default) and of strict
fp32 (TF32 off), then a torch.profiler table of where ours and the reference spend their GPU time.

    python tools/profile_gpu_step.py [SIZE BATCH STEPS]      (default 224 128 10; DEV=cpu for a dry run)
"""
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's benchmarks/ and visionkit

from benchmarks import common
from benchmarks.trainer_step import TrainerSteps, batch_for

dev = torch.device(os.environ.get("DEV", "cuda"))
common.SETTINGS["device"] = str(dev)
size, batch, steps = (int(x) for x in (sys.argv[1:4] or (224, 128, 10)))
folder = Path(tempfile.mkdtemp(prefix="vk-gpu-profile-"))
cfg = common.classification_config(folder, backbone="resnet50", image_size=size, batch=batch, root=folder / "shapes",
                                   num_images=30, epochs=1000, dev=dev, **{"data.synth.size": 32, "data.num_workers": 0,
                                   "train.amp": "bf16", "train.channels_last": True})
images, labels = batch_for("resnet50", size, batch, dev)
ours = TrainerSteps(cfg, folder / "run", images, labels, steps)

def model_opt(cl):
    m = torchvision.models.resnet50(num_classes=6).to(dev)
    if cl:
        m = m.to(memory_format=torch.channels_last)
    return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

ref, ref_opt = model_opt(False)
tb, tb_opt = model_opt(True)
imgs_cl = images.contiguous(memory_format=torch.channels_last)
bf16 = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)
sides = {
    "ours (trainer, bf16, channels_last)": lambda: ours.run(),
    "textbook loop, bf16, channels_last": lambda: common.textbook_loop(tb, tb_opt, imgs_cl, labels, steps, autocast=bf16),
    "reference fp32 (cuDNN TF32 convs, torch default)": lambda: common.textbook_loop(ref, ref_opt, images, labels, steps),
}
for fn in sides.values():
    fn()
rates = {k: [] for k in sides}
for _ in range(3):
    for k, fn in sides.items():
        rates[k].append(batch * steps / common.timed(fn, dev))
torch.backends.cudnn.allow_tf32 = False
strict = [batch * steps / common.timed(sides["reference fp32 (cuDNN TF32 convs, torch default)"], dev) for _ in range(3)]
torch.backends.cudnn.allow_tf32 = True
base = statistics.median(rates["reference fp32 (cuDNN TF32 convs, torch default)"])
for k, v in rates.items():
    print(f"{k:52s} {statistics.median(v):8.1f} img/s  x{statistics.median(v) / base:.2f}  {[round(x) for x in v]}")
print(f"{'reference strict fp32 (allow_tf32=False)':52s} {statistics.median(strict):8.1f} img/s  x{statistics.median(strict) / base:.2f}")
if dev.type == "cuda":
    from torch.profiler import ProfilerActivity, profile
    for k in ("ours (trainer, bf16, channels_last)", "reference fp32 (cuDNN TF32 convs, torch default)"):
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            sides[k](); torch.cuda.synchronize()
        print("==", k)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
