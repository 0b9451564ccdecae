"""Does a held-out *training* family predict what the refinement does on unseen families?

    python -m bench.family_holdout

The device's refinement of Θ was chosen on the validation families (pixelate, geometric),
where it gained 4–5 points of ID accuracy over Θ as sent; on the test families it gained
none. This script asks whether a validation built from the training families themselves
would have said so — without touching the test split. For each per-pixel training family
F (noise, lighting, blur): H is trained as the server trains it on the bench's training
devices *without* any F type (the cached embeddings, filtered), then evaluated on 16 new
devices whose shift includes an F type (8 alone, 8 composed with 1–2 other per-pixel
training types; severities 3–5) applied to validation clips: a 64-clip window, accuracy on
the 128 other clips and Energy AUROC against 96 near and 96 far OOD clips pushed through
the same camera, for the global head, Θ as sent (α = 0.25), Θ refined on the window with
the device's settings, and the head fine-tuned with the window's labels (the ceiling).
Nothing is chosen here. Writes bench/results/family_holdout.json and its
BENCHMARKS.md section.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from bench.personalization import cached, finetuned_head
from bench.refinement_study import BenchDevices, bench_training_devices, window_theta
from bench.report import (
    machine,
    markdown_table,
    write_json,
    write_section,
)
from device_client.head_refinement import RefinementSettings, refine_head
from server.training.device_embeddings import DeviceSet, embed_devices
from server.training.hypernetwork import (
    fit_hypernetwork,
)
from shared.data.corruptions import FAMILY_OF
from shared.data.device_shifts import SHIFT_SPLIT, DeviceProfile, ShiftStep
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.ood.energy import energy
from shared.ood.metrics import ood_metrics

FAMILIES = ("noise", "lighting", "blur")
DEVICES = 16
CLIPS = 192
WINDOW = 64
#: OOD clips per device and split, through the device's camera
OOD_CLIPS = 96
METRICS = ("acc", "near", "far")
HEADS = ("global head", "Θ as sent (α = 0.25)", "Θ refined on the device", "fine-tuned")


def held_out_profiles(family: str, seed: int = 5) -> list[DeviceProfile]:
    """8 devices with one ``family`` type alone, 8 composed with 1–2 other per-pixel types."""
    held = [t for t in SHIFT_SPLIT["train"] if FAMILY_OF[t] == family]
    others = [
        t for t in SHIFT_SPLIT["train"] if FAMILY_OF[t] not in (family, "temporal")
    ]  # fmt: skip
    rng = np.random.default_rng(seed)
    profiles = []
    for i in range(DEVICES):
        steps = [ShiftStep(held[i % len(held)], int(rng.integers(3, 6)))]
        extra = int(i >= DEVICES // 2) + int(i >= 3 * DEVICES // 4)
        for other in rng.choice(others, size=extra, replace=False):
            steps.append(ShiftStep(str(other), int(rng.integers(3, 6))))
        profiles.append(DeviceProfile(tuple(steps), int(rng.integers(2**31))))
    return profiles


def device_metrics(bundle, hypernet, device: dict) -> dict[str, dict[str, float]]:
    """Per head: accuracy on the clips after the window, Energy AUROC against near / far."""
    classes, dim = bundle.config.num_classes, bundle.config.embed_dim
    z, y = device["id"], device["labels"]
    window, scored, labels = z[:WINDOW], z[WINDOW:], y[WINDOW:]
    head = bundle.model.fused_head
    weight, bias = head.weight.detach().double().T.numpy(), head.bias.detach().double().numpy()
    theta = window_theta(hypernet, window)
    kernel, offset = theta[: dim * classes].reshape(dim, classes), theta[dim * classes :]
    refined = refine_head(window, theta, classes)
    tuned = finetuned_head(bundle, torch.from_numpy(window), torch.from_numpy(y[:WINDOW]))
    heads = {
        HEADS[0]: lambda x: torch.from_numpy(x @ weight + bias),
        HEADS[1]: lambda x: torch.from_numpy(x @ kernel + offset),
        HEADS[2]: refined.logits,
        HEADS[3]: lambda x: tuned(torch.from_numpy(x)),
    }
    out = {}
    for name, logits_of in heads.items():
        id_logits = logits_of(scored)
        row = {"acc": float((id_logits.argmax(1).numpy() == labels).mean())}
        for ood in ("near", "far"):
            ood_energy = energy(logits_of(device[ood])).numpy()
            row[ood] = ood_metrics(energy(id_logits).numpy(), ood_energy)["auroc"]
        out[name] = row
    return out


def embed_family_devices(bundle, profiles: list[DeviceProfile]) -> list[dict]:
    """ID (validation clips) and near / far OOD embeddings of each held-out device."""
    data = DigitActionsConfig()
    sets = {
        "id": embed_devices(bundle.model, load_split("val", data), profiles, CLIPS, seed=77),
        "near": embed_devices(bundle.model, load_split("near", data), profiles, OOD_CLIPS, 78),
        "far": embed_devices(bundle.model, load_split("far", data), profiles, OOD_CLIPS, 79),
    }
    return [
        {"name": profile.name, "labels": sets["id"].y[i].numpy()}
        | {split: s.z[i].double().numpy() for split, s in sets.items()}
        for i, profile in enumerate(profiles)
    ]


def holdout_family(setup: BenchDevices, family: str) -> tuple[DeviceSet, list[dict]]:
    """The bench's training devices without any ``family`` type, and that family's
    held-out validation devices (embedded once, cached)."""
    train = setup.train
    keep = [i for i, p in enumerate(train.profiles) if family not in p.families]
    subset = DeviceSet([train.profiles[i] for i in keep], train.z[keep], train.y[keep])
    profiles = held_out_profiles(family)
    what = {"what": "family_holdout", "family": family, "ood": OOD_CLIPS}
    devices = cached(
        setup.cache,
        {**setup.key, **what, "profiles": [p.name for p in profiles]},
        lambda: embed_family_devices(setup.bundle, profiles),
    )
    return subset, devices


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    setup = bench_training_devices()
    bundle = setup.bundle
    results: dict[str, dict] = {}
    for family in FAMILIES:
        subset, devices = holdout_family(setup, family)
        keep = subset.profiles
        print(f"{family}: H on the {len(keep)} training devices without it ...", flush=True)
        hypernet, _ = fit_hypernetwork(setup.config(steps=3000), bundle, subset)
        rows = [
            {"device": device["name"], **device_metrics(bundle, hypernet, device)}
            for device in tqdm(devices, desc=f"{family} devices")
        ]
        mean = {h: {m: float(np.mean([r[h][m] for r in rows])) for m in METRICS} for h in HEADS}
        results[family] = {
            "training_devices": len(keep),
            "mean": mean,
            "refined_below_global": sum(
                r[HEADS[2]]["acc"] < r[HEADS[0]]["acc"] - 0.01 for r in rows
            ),
            "devices": rows,
        }
        print(f"  {family}: " + "; ".join(
            f"{h} " + " / ".join(f"{v[m]:.3f}" for m in METRICS) for h, v in mean.items()
        ), flush=True)  # fmt: skip
    table = markdown_table(
        ["held-out training family (ID acc / near / far AUROC)", "H trained on", *HEADS,
         "refined − Θ, ID acc (points)", "devices refined < global − 1 pt (ID)"],
        [
            [family, f"{r['training_devices']} devices",
             *(" / ".join(f"{r['mean'][h][m]:.3f}" for m in METRICS) for h in HEADS),
             f"{100 * (r['mean'][HEADS[2]]['acc'] - r['mean'][HEADS[1]]['acc']):+.1f}",
             f"{r['refined_below_global']} of {DEVICES}"]
            for family, r in results.items()
        ],
    )  # fmt: skip
    settings = RefinementSettings()
    write_json(
        "family_holdout",
        {"results": results, "window": WINDOW, "clips_per_device": CLIPS,
         "refinement": {"iterations": settings.iterations, "shrinkage": settings.shrinkage,
                        "cloud_weight": settings.cloud_weight},
         "ood_clips": OOD_CLIPS, "seconds": round(time.perf_counter() - started, 1),
         "machine": machine()},
    )  # fmt: skip
    print(table)
    write_section(
        "family_holdout",
        "Refinement on held-out training families (a validation check, nothing chosen)",
        f"Per training family F: H trained without any F type, {DEVICES} new devices with an "
        f"F type (8 alone, 8 composed; severities 3–5) on validation clips; {WINDOW}-clip "
        f"window, ID accuracy on the {CLIPS - WINDOW} other clips, Energy AUROC against "
        f"{OOD_CLIPS} near and {OOD_CLIPS} far OOD clips through the same camera. "
        f"Refinement as the device "
        f"ships it ({settings.iterations} iterations, λ = {settings.shrinkage:g}, β = "
        f"{settings.cloud_weight:g}); fine-tuned: the global head trained on the window "
        f"with its labels. Machine: {machine()}.\n\n{table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
