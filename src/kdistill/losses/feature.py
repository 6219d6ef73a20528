"""Feature distillation: losses between intermediate feature maps (FitNet hints, attention
transfer, NST, ...). Student first, teacher second; teacher features are constants."""

from __future__ import annotations

FEATURE_LOSSES: dict = {}
