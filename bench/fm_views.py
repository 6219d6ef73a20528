"""Function matching on P cycled views, in a plain PyTorch loop (issue 18 exploration): the
teacher scores P epochs of shifted, mixed views of the bundled MNIST's training split once; an
MLP student then trains --epochs epochs on them in turn (epoch e reads view e mod P), on the
teacher's outputs alone (KL at --T), against a scratch student on the same views' mixed labels.
What it asks: how many distinct views does a patient student need? (kdistill's ``train.views``
is the same cycle inside the pipeline.) Prints one JSON line, appended to
bench/results/fm_views.jsonl.

    python bench/fm_views.py --teacher runs/.teachers/lenet-<fingerprint>.safetensors \\
        --mix cutmix --pool 40

The teacher is a LeNet trained on shifted digits by ``kdistill run configs/mnist_hinton.yaml``
(the built-in recipe when this was written), which leaves it in runs/.teachers; the views are kept
under --workdir so variants of one seed draw them once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.data import load_dataset
from kdistill.data.augment import apply_shift, draw_shift
from kdistill.data.mixing import mix_batch
from kdistill.io.weights import read_weights
from kdistill.models.cnn import lenet
from kdistill.models.mlp import MLP

RESULTS = Path(__file__).resolve().parent / "results" / "fm_views.jsonl"
CLASSES = 10


def whole(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [dataset[i] for i in range(len(dataset))]
    return torch.stack([s["input"] for s in samples]), torch.stack(
        [torch.as_tensor(s["target"]) for s in samples]
    )


def draw_views(x, y, args, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of views: each image shifted, mixed
    with a shifted partner; and the mixed labels."""
    count = len(x)
    own_shift, partner_shift = draw_shift(count, generator), draw_shift(count, generator)
    partner = torch.randint(count, (count,), generator=generator)
    beta = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
    lam = torch.from_numpy(beta.beta(args.malpha, args.malpha, size=count)).float()
    if args.mixp < 1:  # only this share of the images is mixed
        lam = torch.where(
            torch.rand(count, generator=generator) >= args.mixp, torch.ones(count), lam
        )
    centre = torch.rand((count, 2), generator=generator)
    eye = torch.eye(CLASSES)
    images = apply_shift(x, own_shift)
    if args.mix == "none":
        return images, eye[y]
    views, share = mix_batch(images, apply_shift(x[partner], partner_shift), args.mix, lam, centre)
    return views, share[:, None] * eye[y] + (1 - share[:, None]) * eye[y[partner]]


def scored_views(x, y, teacher, args):
    """(views, mixed labels, teacher logits), each (P, N, ...), drawn once per seed and teacher."""
    os.makedirs(args.workdir, exist_ok=True)
    name = f"views_{args.mix}_{args.malpha}_{args.mixp}_{args.pool}_{args.seed}"
    file = Path(args.workdir) / f"{name}_{Path(args.teacher).stem}.pt"
    if file.is_file():
        return torch.load(file)
    generator = torch.Generator().manual_seed(1000 + args.seed)
    views = torch.empty(args.pool, *x.shape)
    labels, logits = (
        torch.empty(args.pool, len(x), CLASSES),
        torch.empty(args.pool, len(x), CLASSES),
    )
    with torch.no_grad():
        for view in range(args.pool):
            views[view], labels[view] = draw_views(x, y, args, generator)
            logits[view] = torch.cat(
                [teacher(views[view, i : i + 500]) for i in range(0, len(x), 500)]
            )
    torch.save((views, labels, logits), file)
    return views, labels, logits


def train(distil: bool, views, labels, logits, test, args) -> tuple[float, float]:
    """Test accuracy (%) and seconds of an MLP trained on the cycled views."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    student = MLP(width=args.width, depth=args.depth)
    optimizer = torch.optim.Adam(student.parameters(), lr=args.lr)
    count = views.shape[1]
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, args.epochs * math.ceil(count / args.bs)
    )
    started = time.time()
    for epoch in range(args.epochs):
        view, order = epoch % args.pool, torch.randperm(count, generator=generator)
        for start in range(0, count, args.bs):
            rows = order[start : start + args.bs]
            z = student(views[view, rows])
            loss = F.cross_entropy(z, labels[view, rows])
            if distil:
                match = (
                    F.kl_div(
                        F.log_softmax(z / args.T, 1),
                        F.log_softmax(logits[view, rows] / args.T, 1),
                        log_target=True,
                        reduction="batchmean",
                    )
                    * args.T**2
                )
                loss = match if args.alpha >= 1 else args.alpha * match + (1 - args.alpha) * loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    student.eval()
    with torch.no_grad():
        accuracy = (student(test[0]).argmax(1) == test[1]).float().mean().item()
    return accuracy * 100, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher",
        required=True,
        help="a LeNet's .safetensors (runs/.teachers after kdistill run)",
    )
    parser.add_argument(
        "--workdir", default=os.path.join(tempfile.gettempdir(), "kdistill-fm-views")
    )
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--pool", type=int, default=40, help="distinct views per image, cycled")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--T", type=float, default=1.0)
    parser.add_argument(
        "--alpha",
        type=float,
        default=1.0,
        help="weight of the match; the rest is CE on mixed labels",
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", default="mixup", choices=["none", "mixup", "cutmix"])
    parser.add_argument(
        "--mixp", type=float, default=1.0, help="share of the images that are mixed"
    )
    parser.add_argument("--malpha", type=float, default=1.0, help="lambda ~ Beta(malpha, malpha)")
    parser.add_argument("--mode", default="both", choices=["both", "scratch", "kd"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = load_dataset("mnist")
    (x, y), test = whole(splits.train), whole(splits.test)
    teacher = lenet()
    teacher.load_state_dict(read_weights(args.teacher))
    teacher = teacher.eval().to(memory_format=torch.channels_last)
    views, labels, logits = scored_views(x, y, teacher, args)
    with torch.no_grad():
        teacher_accuracy = (teacher(test[0]).argmax(1) == test[1]).float().mean().item()
    record = {
        "args": {k: v for k, v in vars(args).items() if k not in ("teacher", "workdir")},
        "teacher": round(teacher_accuracy * 100, 2),
    }
    if args.mode in ("both", "scratch"):
        record["scratch"], record["t_scratch"] = train(False, views, labels, logits, test, args)
    if args.mode in ("both", "kd"):
        record["kd"], record["t_kd"] = train(True, views, labels, logits, test, args)
    print(json.dumps(record))
    with RESULTS.open("a") as file:
        file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
