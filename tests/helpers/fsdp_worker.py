"""Distils a tiny Llama teacher into a smaller Llama student with ``train_loop`` under whatever
launcher started it (plain python, or torchrun with N processes), by the strategy named, and
writes per rank the student's weights (whole: what the user's module holds after training) and
what the run saw. Used by tests/test_fsdp.py.

    fsdp_worker.py OUT STRATEGY PER_PROCESS_BATCH [chunk] [taps] [best] [on_policy]
        [sequence_kd] [every=N] [resume] [kill_at=STEP] [epochs=N] [tag=SUFFIX]
"""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from kdistill.distiller import Distiller, Teacher
from kdistill.errors import UserError
from kdistill.methods import Term, preset_terms, teacher_taps
from kdistill.modeling import call_model, gives_lazy_logits
from kdistill.models.hf import hf
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Checkpointing, Loop, train_loop
from kdistill.training.sampling import OnPolicy
from kdistill.training.sequences import SequenceKD
from kdistill.training.sharding import ShardedPhase

out_dir, strategy, per_process_batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
flags = dict(arg.partition("=")[::2] for arg in sys.argv[4:])
torch.set_num_threads(1)
VOCAB, LENGTH, SEQUENCES = 64, 12, 32  # global batch 8: 4 updates an epoch, no ragged batch


def llama(seed: int, layers: int, width: int):
    torch.manual_seed(seed)
    config = {
        "model_type": "llama",
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
    }
    return hf(VOCAB, (LENGTH,), config=config, task="causal-lm")


tokens = torch.randint(
    0, VOCAB, (SEQUENCES, LENGTH + 1), generator=torch.Generator().manual_seed(0)
)
data = [
    {"input": t[:-1], "target": t[1:], "mask": torch.ones(LENGTH, dtype=torch.bool)} for t in tokens
]
loader = DataLoader(
    data, batch_size=per_process_batch, shuffle=True, generator=torch.Generator().manual_seed(0)
)
accelerator = make_accelerator("cpu", strategy=strategy, deterministic=True)
teacher_model, student = llama(1, 3, 32), llama(2, 2, 16)
terms = preset_terms("token_kd", loss="jsd", beta=0.5, chunk_size=8 if "chunk" in flags else 0)
if "taps" in flags:  # a feature term through a connector (16 wide to the teacher's 32)
    terms.append(Term("hint", "hint", 0.5, "hidden_states.2", "hidden_states.3", "linear"))
teacher = Teacher(teacher_model, taps=teacher_taps(terms))
set_seed(0)
distiller = Distiller.build(student, terms, teacher=teacher, example_batch=next(iter(loader)))
path = out_dir / f"state-{strategy}.safetensors"
log = []
seen = {}
finish = ShardedPhase.finish


def spy_finish(phase, optimizer):
    """What each rank holds of the sharded copies, just before the weights are handed back."""
    for name, module in (
        ("student", phase.shadow.student),
        ("teacher", phase.shadow_teacher.module),
    ):
        params = list(module.parameters())
        seen[name] = {
            "dtensors": all(isinstance(p, DTensor) for p in params),
            "local": sum(p.to_local().numel() for p in params),
            "whole": sum(p.numel() for p in params),
            "trainable": sum(p.requires_grad for p in params),
            "lazy_logits": gives_lazy_logits(module),  # chunked losses see the sharded head
        }
    finish(phase, optimizer)


ShardedPhase.finish = spy_finish


def kill_at(record):
    """SIGKILL this process (every rank) once the given step has been checkpointed."""
    if record["step"] >= int(flags["kill_at"]):
        os.kill(os.getpid(), signal.SIGKILL)


validations = []


def validate(model, loader, accelerator):
    """The student's own forward pass on the validation split (every rank, in step), plus a
    penalty growing by epoch: the first epoch is the best, so keep=best must return to it."""
    with torch.no_grad():
        losses = [
            F.cross_entropy(call_model(model, b["input"]).flatten(0, 1), b["target"].flatten())
            for b in loader
        ]
    validations.append(float(torch.stack(losses).mean()))
    return {"loss": validations[-1] + 10 * len(validations)}


set_seed(3)
try:
    history = train_loop(
        distiller,
        loader,
        teacher=teacher,
        val_loader=DataLoader(data[:8], batch_size=4) if "best" in flags else None,
        epochs=int(flags.get("epochs", 2)),
        lr=1e-2,
        loop=Loop(
            keep="best" if "best" in flags else "last",
            evaluate_fn=validate,
            log_every=1 if "kill_at" in flags else 0,
            log_step=kill_at if "kill_at" in flags else None,
            batch_transform=OnPolicy(student, fraction=0.5, continuation=4)
            if "on_policy" in flags
            else SequenceKD(  # stand-ins for a teacher's sequences: fixed tokens
                torch.randint(
                    0, VOCAB, (6, LENGTH + 1), generator=torch.Generator().manual_seed(1)
                ),
                prompt=3,
                fraction=0.5,
            )
            if "sequence_kd" in flags
            else None,
        ),
        checkpointing=Checkpointing(
            path if "every" in flags or "resume" in flags else None,
            every=int(flags.get("every", 0)),
            resume="resume" in flags,
        ),
        accelerator=accelerator,
        log=log.append,
        progress=False,
    )
except UserError as error:
    print(f"UserError: {error}")
    sys.exit(2)

weights = [p.detach().flatten().tolist() for p in student.parameters()]
result = {
    "rank": accelerator.process_index,
    "world_size": accelerator.num_processes,
    "sharded": bool(getattr(accelerator, "is_fsdp2", False)),
    "digest": hashlib.sha256(
        b"".join(p.detach().numpy().tobytes() for p in student.parameters())
    ).hexdigest(),
    "weights": weights,
    "teacher_digest": hashlib.sha256(
        b"".join(p.detach().numpy().tobytes() for p in teacher_model.parameters())
    ).hexdigest(),
    "losses": [r["loss"] for r in history],
    "seen": seen,
}
name = f"{strategy}-rank{accelerator.process_index}_of_{accelerator.num_processes}"
(out_dir / f"{name}{flags.get('tag', '')}.json").write_text(json.dumps(result))

accelerator.end_training()  # the process group goes while the interpreter is whole
# Sharded modules still hold the group, which teardown would free after the GIL is gone (a rare
# SIGABRT once everything is written): leave as kdistill.cli.console does under a launcher.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
