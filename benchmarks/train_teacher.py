"""Train a network on the real Fashion-MNIST training set: the teacher (BVLC GoogLeNet) or,
with ``--model``, a reference network for the paper table (SqueezeNet 1.1, MobileNetV2).

Recipe (chosen to fit a 2-core CPU): 28x28 images upscaled to 32x32, one channel, light
augmentation (flip, shift), AdamW (lr 2e-3, weight decay 1e-4), batch 128, linear warm-up
then cosine decay, 5 epochs. Writes fp16 safetensors with the model's description in the
header (so `deeprebirth evaluate FILE --data fashion-mnist` can rebuild it) and a results
file with the command, date, machine and the top-1 on the 10k test images. torchvision
models take 3-channel input: the gray image is repeated on the three channels.

    .venv/bin/python benchmarks/train_teacher.py [--model bvlc_googlenet] [--epochs 5]
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import Progress

from deeprebirth import get_model
from deeprebirth.data import get_dataset, get_loader
from deeprebirth.evaluation import evaluate, load_model_file, save_weights
from deeprebirth.profiling.machine import machine_info

p = argparse.ArgumentParser()
p.add_argument("--model", default="bvlc_googlenet")
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--input-size", type=int, default=32)
p.add_argument("--batch", type=int, default=128)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--threads", type=int, default=2)
p.add_argument(
    "--out", help="default: benchmarks/weights/MODEL_fashion_mnist[_teacher].safetensors"
)
p.add_argument(
    "--results", help="default: benchmarks/results/{teacher,reference}_fashion_mnist_MODEL.json"
)
args = p.parse_args()
is_teacher = args.model == "bvlc_googlenet"
role = "teacher" if is_teacher else "reference"
if args.out is None:
    suffix = "_teacher" if is_teacher else ""
    args.out = f"benchmarks/weights/{args.model}_fashion_mnist{suffix}.safetensors"
if args.results is None:
    short = "googlenet" if is_teacher else args.model
    args.results = f"benchmarks/results/{role}_fashion_mnist_{short}.json"

torch.manual_seed(0)
torch.set_num_threads(args.threads)
in_chans = 1 if is_teacher else 3  # torchvision classifiers take RGB
config = {"num_classes": 10, "in_chans": in_chans}
model = get_model(args.model, **config).train()
data = {"input_size": args.input_size, "in_chans": in_chans}
train = get_loader(
    get_dataset("fashion-mnist", "train", augment=True, **data), args.batch, shuffle=True
)
test = get_loader(get_dataset("fashion-mnist", "test", **data), 256)

opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
total, warmup = args.epochs * len(train), 300
sched = torch.optim.lr_scheduler.LambdaLR(
    opt,
    lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
)
start = time.time()
with Progress() as progress:
    task = progress.add_task(f"training {args.model}", total=total)
    for epoch in range(args.epochs):
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update(
                task,
                advance=1,
                description=f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f}",
            )
train_minutes = (time.time() - start) / 60
model.eval()
save_weights(model, args.out, {"model": args.model, **config, "input_size": args.input_size})
reloaded, _, _ = load_model_file(args.out)  # what is committed: the fp16 file
acc = evaluate(reloaded, test)
result = {
    "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
    "recipe": vars(args),
    "train_minutes": train_minutes,
    role: {"path": args.out, **acc},
    "machine": machine_info(),
}
Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
