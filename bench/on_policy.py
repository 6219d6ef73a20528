"""On-policy distillation (GKD, Agarwal et al., ICLR 2024, arXiv:2306.13649) on the SmolLM2
recipe: how the share λ of each batch the student continues, the warm start (off-policy batches
before the first sample) and the continuation length move the distilled student, each a
`kdistill run` of configs/smollm2_shakespeare.yaml at its one-epoch, live-teacher setting (the
teacher scores the student's own samples, so no cache; ``sequence_kd.LIVE``) with its scratch
student. The loss and α are the token way's of bench/sequence_kd.py (forward KL, α = 0.5, its
student 114.09 in bench/results/sequence_kd.md), so only the windows the student learns from
differ. The base is λ = 0.25, 32 tokens, after 24 of the 48 batches; each other way changes one.

    python bench/on_policy.py                      # runs what runs/bench_gkd lacks
    python bench/on_policy.py --ways gkd_l0.25_c32_a24

Writes bench/results/on_policy.md and .json.
"""

from __future__ import annotations

from sequence_kd import KD, study

SETTINGS = [(0.25, 32, 24), (0.5, 32, 24), (0.25, 32, 0), (0.25, 8, 24)]  # λ, tokens, warm start
WAYS = {
    f"gkd_l{fraction}_c{continuation}_a{after}": [
        f"distill.params={{{KD}, on_policy: {{fraction: {fraction}, "
        f"continuation: {continuation}, after: {after}}}}}",
        "distill.alpha=0.5",
    ]
    for fraction, continuation, after in SETTINGS
}

if __name__ == "__main__":
    study(
        "on_policy",
        "On-policy distillation (GKD) on the SmolLM2 recipe",
        WAYS,
        prefix="smollm2_",
        runs="runs/bench_gkd",
    )
