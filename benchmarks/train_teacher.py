"""Train the teacher: BVLC GoogLeNet on the real Fashion-MNIST training set.

Recipe (chosen to fit a 2-core CPU): 28x28 images upscaled to 32x32, one channel, light
augmentation (flip, shift), AdamW (lr 2e-3, weight decay 1e-4), batch 128, linear warm-up
then cosine decay, 5 epochs. Writes fp16 safetensors with the model's description in the
header (so `deeprebirth evaluate FILE --data fashion-mnist` can rebuild it) and a results
file with the command, date, machine and the top-1 on the 10k test images.

    .venv/bin/python benchmarks/train_teacher.py [--epochs 5] [--out benchmarks/weights/...]
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
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--input-size", type=int, default=32)
p.add_argument("--batch", type=int, default=128)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--threads", type=int, default=2)
p.add_argument(
    "--out", default="benchmarks/weights/bvlc_googlenet_fashion_mnist_teacher.safetensors"
)
p.add_argument("--results", default="benchmarks/results/teacher_fashion_mnist_googlenet.json")
args = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(args.threads)
config = {"num_classes": 10, "in_chans": 1}
model = get_model("bvlc_googlenet", **config).train()
train = get_loader(
    get_dataset("fashion-mnist", "train", input_size=args.input_size, in_chans=1, augment=True),
    args.batch,
    shuffle=True,
)
test = get_loader(get_dataset("fashion-mnist", "test", input_size=args.input_size, in_chans=1), 256)

opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
total, warmup = args.epochs * len(train), 300
sched = torch.optim.lr_scheduler.LambdaLR(
    opt,
    lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
)
start = time.time()
with Progress() as progress:
    task = progress.add_task("training teacher", total=total)
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
save_weights(model, args.out, {"model": "bvlc_googlenet", **config, "input_size": args.input_size})
reloaded, _, _ = load_model_file(args.out)  # what is committed: the fp16 file
acc = evaluate(reloaded, test)
result = {
    "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
    "recipe": vars(args),
    "train_minutes": train_minutes,
    "teacher": {"path": args.out, **acc},
    "machine": machine_info(),
}
Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
