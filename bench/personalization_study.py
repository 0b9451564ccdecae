"""Validation-only study: which changes to the ``device`` H help on devices it never saw?

Usage::

    python -m bench.personalization_study [--base-model model.pt] [VARIANT ...]

Reads the training and validation devices of :mod:`bench.personalization` (its embedding
cache; computed if absent) and trains one experimental H per variant of :data:`VARIANTS`
(plain PyTorch, the same loop as :mod:`server.training.hypernetwork`). Everything is
measured on validation devices only (the ``val`` split's held-out families and ``pixelate``), and
on the 8 classic (seen) shift types applied to *validation* clips, so no test clip is
touched. Per variant: mean ID accuracy of the global head and of H at α = 0.25 and 1.0,
and the worst device's change against the global head. ``ceiling`` fine-tunes the head
per device on half its clips and scores the other half (the reachable accuracy).

Descriptor pieces a variant may read (each is what the device would encrypt; H stays
affine in every piece, so the cloud's work stays depth 1, one product per piece):

- ``mean``: the window mean minus the reference (the product's descriptor);
- ``std``: the window's per-channel standard deviation, relative to the reference's;
- ``scale``: reference std / window std − 1, clamped on the device to [0.5, 2] − 1.

``standardise`` adds the fixed (not learnt, up to one gain) affine map that turns the
global head into the head for standardised embeddings, ``(z − μ)·s + r`` with
s = reference std / window std: kernel rows scale by s, the bias moves by −(μ·s − r)·W.
``offset_frac`` trains on extra synthetic devices whose embeddings all move by one
random offset (feature-space augmentation).
Writes bench/results/personalization_study.json; prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.personalization import CACHE_VERSION, cached
from bench.report import default_base_model_path
from server.settings import Settings
from server.training.device_embeddings import embed_clipset
from server.training.hypernetwork import (
    HyperNetworkTrainConfig,
    collect_devices,
    rank_positions,
)
from shared.channel_importance import channel_count
from shared.data.corruptions import corrupt_clipset, device_shift
from shared.data.device_shifts import SHIFT_SPLIT
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.models.checkpoint import load_bundle

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = 16
WINDOW = 64
SCALE_CLAMP = (0.5, 2.0)
#: variant name → keyword arguments of :func:`fit` (the first is the product's setting)
VARIANTS: dict[str, dict[str, Any]] = {
    "product (mean, rank 32, penalty 0.1)": {},
    "classic devices 25 % of each batch": {"classic_frac": 0.25},
    "mean + std pieces": {"pieces": ("mean", "std")},
    "mean + scale pieces": {"pieces": ("mean", "scale")},
    "mean + scale pieces, penalty 0.03": {"pieces": ("mean", "scale"), "penalty": 0.03},
    "fixed standardisation + mean": {"standardise": True},
    "rank 64": {"rank": 64},
    "mean + std pieces, rank 64": {"pieces": ("mean", "std"), "rank": 64},
    "penalty 0.3": {"penalty": 0.3},
    "penalty 0.03": {"penalty": 0.03},
    "6000 steps, lr 2e-3": {"steps": 6000, "lr": 2e-3},
    "64 devices per batch": {"batch": 64},
    "offset augmentation 50 %": {"offset_frac": 0.5},
    "masks: top-25 % only": {"alphas": (0.25,), "rfrac": 0.0},
    "masks: 50 % random": {"rfrac": 0.5},
}


def window_stats(z: torch.Tensor, rng: np.random.Generator):
    """Per device of z [M, N, D]: WINDOWS random windows → (means, stds, rank positions)."""
    mu, sd, pos = [], [], []
    for zd in z.numpy():
        rows = [
            rng.choice(len(zd), size=min(WINDOW, len(zd)), replace=False) for _ in range(WINDOWS)
        ]
        mu.append(np.stack([zd[r].mean(0) for r in rows]))
        sd.append(np.stack([zd[r].std(0) + 1e-6 for r in rows]))
        pos.append(np.stack([rank_positions(zd[r]) for r in rows]))
    return (
        torch.as_tensor(np.stack(mu)).float(),
        torch.as_tensor(np.stack(sd)).float(),
        torch.as_tensor(np.stack(pos)),
    )


class StudyH(torch.nn.Module):
    """Θ = Θ_global + low-rank(pieces) [+ fixed standardisation]: affine in every piece."""

    def __init__(self, head, pieces, rank: int, standardise: bool, ref_mu, ref_sd) -> None:
        super().__init__()
        self.w = head.weight.detach().float()  # [C, D]
        c, d = self.w.shape
        self.theta_g = torch.cat([self.w.T.reshape(-1), head.bias.detach().float()])
        self.pieces, self.standardise = tuple(pieces), standardise
        self.ref_mu, self.ref_sd = ref_mu, ref_sd
        self.down = torch.nn.Linear(d * len(self.pieces), rank, bias=False)
        self.up = torch.nn.Linear(rank, d * c + c)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)
        self.gain = torch.nn.Parameter(torch.ones(1))

    def scale(self, sd: torch.Tensor) -> torch.Tensor:
        return (self.ref_sd / sd).clamp(*SCALE_CLAMP)

    def theta(self, mu, sd, mask) -> torch.Tensor:
        parts = {
            "mean": lambda: mask * (mu - self.ref_mu),
            "std": lambda: mask * (sd - self.ref_sd) / self.ref_sd,
            "scale": lambda: mask * (self.scale(sd) - 1),
        }
        x = torch.cat([parts[p]() for p in self.pieces], 1)
        theta = self.theta_g + self.up(self.down(x))
        if self.standardise:
            s = self.scale(sd)
            kernel = (mask * (s - 1))[:, :, None] * self.w.T[None]
            bias = -(mask * (mu * s - self.ref_mu)) @ self.w.T
            theta = theta + self.gain * torch.cat([kernel.flatten(1), bias], 1)
        return theta


def draw_masks(positions, alphas, random_fraction: float, generator) -> torch.Tensor:
    n, d = positions.shape
    counts = torch.tensor([channel_count(a, d) for a in alphas])
    k = counts[torch.randint(len(alphas), (n,), generator=generator)]
    random_position = torch.rand(n, d, generator=generator).argsort(1).argsort(1)
    use = torch.rand(n, generator=generator) < random_fraction
    return (torch.where(use[:, None], random_position, positions) < k[:, None]).float()


def device_logits(z: torch.Tensor, theta: torch.Tensor, classes: int) -> torch.Tensor:
    """z [B, N, D] under one Θ per device [B, D·C + C] → [B, N, C]."""
    d = z.shape[-1]
    kernel = theta[:, : d * classes].reshape(-1, d, classes)
    return torch.einsum("bnd,bdc->bnc", z, kernel) + theta[:, None, d * classes :]


def fit(
    head,
    train,
    pieces=("mean",),
    rank: int = 32,
    penalty: float = 0.1,
    standardise: bool = False,
    steps: int = 3000,
    lr: float = 3e-3,
    batch: int = 32,
    classic_frac: float = 0.0,
    offset_frac: float = 0.0,
    alphas=(0.1, 0.25, 0.5, 1.0),
    rfrac: float = 0.25,
    seed: int = 0,
) -> StudyH:
    torch.manual_seed(seed)
    z, y = train.z, train.y
    mu, sd, pos = window_stats(z, np.random.default_rng(seed))
    model = StudyH(head, pieces, rank, standardise, mu.mean((0, 1)), sd.mean((0, 1)))
    spread = mu.mean(1).std(0)  # per-channel spread of the training devices' means
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    classes = model.w.shape[0]
    for _ in range(steps):
        dev = torch.randint(z.shape[0], (batch,), generator=g)
        if classic_frac:  # devices 0..8: clean + the 8 classic ones
            use = torch.rand(batch, generator=g) < classic_frac
            dev = torch.where(use, torch.randint(9, (batch,), generator=g), dev)
        w = torch.randint(WINDOWS, (batch,), generator=g)
        mask = draw_masks(pos[dev, w], tuple(alphas), rfrac, g)
        zb, mub = z[dev], mu[dev, w]
        if offset_frac:
            use = (torch.rand(batch, generator=g) < offset_frac).float()[:, None]
            delta = torch.randn(batch, z.shape[-1], generator=g) * spread * use
            zb, mub = zb + delta[:, None], mub + delta
        theta = model.theta(mub, sd[dev, w], mask)
        loss = F.cross_entropy(device_logits(zb, theta, classes).flatten(0, 1), y[dev].flatten())
        loss = loss + penalty * (theta - model.theta_g).pow(2).sum(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: StudyH, devices, alpha: float) -> dict[str, float]:
    """Mean accuracy global / H and the worst per-device change (window = first 64 clips)."""
    rows = []
    classes = model.w.shape[0]
    for z, y in zip(devices.z.float(), devices.y, strict=True):
        recent = z[:WINDOW]
        keep = rank_positions(recent.numpy()) < channel_count(alpha, z.shape[1])
        mask = torch.as_tensor(keep).float()[None]
        theta = model.theta(recent.mean(0, keepdim=True), recent.std(0)[None] + 1e-6, mask)
        personal = device_logits(z[None], theta, classes)[0].argmax(1)
        global_ = (z @ model.w.T + model.theta_g[-classes:]).argmax(1)
        rows.append((float((global_ == y).float().mean()), float((personal == y).float().mean())))
    r = np.array(rows)
    return {
        "global": float(r[:, 0].mean()),
        "personalised": float(r[:, 1].mean()),
        "worst_delta": float((r[:, 1] - r[:, 0]).min()),
    }


def ceiling(head, devices) -> float:
    """Per device: the head fine-tuned on half the clips, accuracy on the other half."""
    accuracies = []
    for z, y in zip(devices.z.float(), devices.y, strict=True):
        n = len(z) // 2
        tuned = torch.nn.Linear(z.shape[1], head.out_features)
        tuned.load_state_dict(head.state_dict())
        optimiser = torch.optim.Adam(tuned.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(300):
            optimiser.zero_grad()
            F.cross_entropy(tuned(z[:n]), y[:n]).backward()
            optimiser.step()
        with torch.no_grad():
            accuracies.append(float((tuned(z[n:]).argmax(1) == y[n:]).float().mean()))
    return float(np.mean(accuracies))


def seen_on_validation_clips(bundle, clips_per_device: int = 96) -> SimpleNamespace:
    """The 8 classic (train-type) shifts applied to validation clips: seen shifts, no test clip."""
    clips = load_split("val", DigitActionsConfig())
    rng = np.random.default_rng(11)
    zs, ys = [], []
    for index in range(8):
        subset = clips.subset(rng.choice(len(clips), size=clips_per_device, replace=False))
        shift = device_shift(index)
        shifted = corrupt_clipset(subset, shift.corruption, shift.severity, 7000 + index)
        zs.append(embed_clipset(bundle.model, shifted))
        ys.append(torch.as_tensor(subset.labels))
    return SimpleNamespace(z=torch.stack(zs), y=torch.stack(ys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="base model artifact (.pt); default: the registry's")
    parser.add_argument("variants", nargs="*", help=f"subset of: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench/results/personalization_study.json"
    )
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {list(VARIANTS)}")
    torch.set_num_threads(1)
    base_model = args.base_model or str(default_base_model_path())
    base_sha = hashlib.sha256(Path(base_model).read_bytes()).hexdigest()
    bundle = load_bundle(base_model)
    head = bundle.model.fused_head
    cache = Settings().data_dir / "cache" / "bench-personalization"
    key = {"v": CACHE_VERSION, "base": base_sha, "quick": False, "split": SHIFT_SPLIT}
    config = HyperNetworkTrainConfig(
        base_model_path=base_model,
        devices=200,
        clips_per_device=64,
        val_devices=16,
        val_clips_per_device=64,
        threads=1,
    )
    train, val = cached(cache, {**key, "what": "train"}, lambda: collect_devices(config, bundle))
    seen = cached(
        cache, {**key, "what": "seen_val_clips"}, lambda: seen_on_validation_clips(bundle)
    )
    results: dict[str, Any] = {
        "ceiling": {"validation": ceiling(head, val), "seen_validation_clips": ceiling(head, seen)},
        "variants": {},
    }
    print(f"fine-tuning ceiling: {results['ceiling']}", flush=True)
    for name in args.variants or list(VARIANTS):
        started = time.perf_counter()
        model = fit(head, train, **VARIANTS[name])
        results["variants"][name] = {
            "validation": evaluate(model, val, 0.25),
            "validation_alpha_1": evaluate(model, val, 1.0),
            "seen_validation_clips": evaluate(model, seen, 0.25),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"{name}: {json.dumps(results['variants'][name])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(study_markdown(results))


def study_markdown(results: dict) -> str:
    lines = [
        "| variant | val acc global / H (α .25) | worst val device Δ | val H α 1.0 "
        "| seen shifts on val clips: global / H |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["variants"].items():
        v, a, s = r["validation"], r["validation_alpha_1"], r["seen_validation_clips"]
        lines.append(
            f"| {name} | {v['global']:.3f} / {v['personalised']:.3f} | {v['worst_delta']:+.3f} "
            f"| {a['personalised']:.3f} | {s['global']:.3f} / {s['personalised']:.3f} |"
        )
    c = results["ceiling"]
    lines.append(
        f"| fine-tuned per device (half the clips) | {c['validation']:.3f} | | "
        f"| {c['seen_validation_clips']:.3f} |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
