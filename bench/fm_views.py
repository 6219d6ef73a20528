"""Function matching on P cycled views, in a plain PyTorch loop (issue 18 exploration): the
teacher scores P epochs of shifted, mixed views of the bundled MNIST's training split once; an
MLP student then trains --epochs epochs on them in turn (epoch e reads view e mod P), on the
teacher's outputs alone (KL at --T), against a scratch student on the same views' mixed labels.
What it asks: how many distinct views does a patient student need? (kdistill's ``train.views``
is the same cycle inside the pipeline.) Prints one JSON line, appended to
bench/results/fm_views.jsonl.

    python bench/fm_views.py --teacher runs/.teachers/lenet-<fingerprint>.safetensors --mix cutmix --pool 40

The teacher is a LeNet trained by the default recipe (``kdistill run`` leaves it in
runs/.teachers); the views are kept under --workdir so variants of one seed draw them once.
"""
import argparse, json, math, time, sys, os, tempfile
from pathlib import Path
import numpy as np
import torch, torch.nn.functional as F
from safetensors.torch import load_file
from kdistill.data import load_dataset
from kdistill.models.cnn import lenet
from kdistill.models.mlp import MLP
from kdistill.data.augment import apply_shift, draw_shift
from kdistill.data.mixing import mix_batch

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=300)
p.add_argument("--pool", type=int, default=40)
p.add_argument("--width", type=int, default=128)
p.add_argument("--depth", type=int, default=1)
p.add_argument("--T", type=float, default=1.0)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--mix", default="mixup")
p.add_argument("--mixp", type=float, default=1.0)
p.add_argument("--malpha", type=float, default=1.0)
p.add_argument("--mode", default="both")
p.add_argument("--alpha", type=float, default=1.0)
p.add_argument("--teacher", required=True, help="a LeNet's .safetensors (runs/.teachers after kdistill run)")
p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "kdistill-fm-views"))
a = p.parse_args()
torch.set_num_threads(1)
splits = load_dataset("mnist")
def stack(ds):
    x = torch.stack([ds[i]["input"] for i in range(len(ds))]); y = torch.stack([torch.as_tensor(ds[i]["target"]) for i in range(len(ds))])
    return x, y
xtr, ytr = stack(splits.train); xte, yte = stack(splits.test)
N = len(xtr)
teacher = lenet(); teacher.load_state_dict(load_file(a.teacher)); teacher.eval(); teacher = teacher.to(memory_format=torch.channels_last)
eye = torch.eye(10)
def make_view(g):
    s1 = draw_shift(N, g); s2 = draw_shift(N, g)
    partner = torch.randint(N, (N,), generator=g)
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=g)))
    lam = torch.from_numpy(rng.beta(a.malpha, a.malpha, size=N)).float()
    if a.mixp < 1:
        keep = torch.rand(N, generator=g) >= a.mixp
        lam = torch.where(keep, torch.ones(N), lam)
    centre = torch.rand((N, 2), generator=g)
    x1 = apply_shift(xtr, s1); x2 = apply_shift(xtr[partner], s2)
    if a.mix == "none":
        return x1, eye[ytr]
    x, share = mix_batch(x1, x2, a.mix, lam, centre)
    y = share[:, None] * eye[ytr] + (1 - share[:, None]) * eye[ytr[partner]]
    return x, y
os.makedirs(a.workdir, exist_ok=True)
key = os.path.join(a.workdir, f"views_{a.mix}_{a.malpha}_{a.mixp}_{a.pool}_{a.seed}_{Path(a.teacher).stem}.pt")
t0 = time.time()
if os.path.exists(key):
    px, py, pt = torch.load(key)
else:
    g = torch.Generator().manual_seed(1000 + a.seed)
    px = torch.empty(a.pool, N, 1, 28, 28); py = torch.empty(a.pool, N, 10); pt = torch.empty(a.pool, N, 10)
    with torch.no_grad():
        for e in range(a.pool):
            x, y = make_view(g); px[e] = x; py[e] = y
            pt[e] = torch.cat([teacher(x[i:i+500]) for i in range(0, N, 500)])
    torch.save((px, py, pt), key)
print(f"pool {time.time()-t0:.1f}s", file=sys.stderr)
with torch.no_grad():
    tacc = (teacher(xte).argmax(1) == yte).float().mean().item()

def train(kd):
    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    m = MLP(width=a.width, depth=a.depth)
    opt = torch.optim.Adam(m.parameters(), lr=a.lr)
    steps = a.epochs * math.ceil(N / a.bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t = time.time()
    for e in range(a.epochs):
        perm = torch.randperm(N, generator=g)
        pe = e % a.pool
        for i in range(0, N, a.bs):
            b = perm[i:i+a.bs]
            z = m(px[pe, b])
            if kd:
                loss = F.kl_div(F.log_softmax(z / a.T, 1), F.log_softmax(pt[pe, b] / a.T, 1), log_target=True, reduction="batchmean") * a.T**2
                if a.alpha < 1:
                    loss = a.alpha * loss + (1 - a.alpha) * F.cross_entropy(z, py[pe, b])
            else:
                loss = F.cross_entropy(z, py[pe, b])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    m.eval()
    with torch.no_grad():
        acc = (m(xte).argmax(1) == yte).float().mean().item()
    return acc * 100, time.time() - t

res = {"args": vars(a), "teacher": round(tacc * 100, 2)}
if a.mode in ("both", "scratch"):
    res["scratch"], res["t_scratch"] = train(False)
if a.mode in ("both", "kd"):
    res["kd"], res["t_kd"] = train(True)
print(json.dumps(res))
with open(Path(__file__).resolve().parent / "results" / "fm_views.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")
