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
the 128 other clips, for the global head, Θ as sent (α = 0.25), Θ refined on the window
with the device's settings, and the head fine-tuned with the window's labels (the
ceiling). Nothing is chosen here. Writes bench/results/family_holdout.json and its
BENCHMARKS.md section.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.personalization import CACHE_VERSION, cached, finetuned_head
from bench.report import (
    default_base_model_path,
    machine,
    markdown_table,
    write_json,
    write_section,
)
from device_client.head_refinement import RefinementSettings, refine_head
from server.settings import Settings
from server.training.device_embeddings import DeviceSet, embed_devices
from server.training.hypernetwork import (
    HyperNetworkTrainConfig,
    collect_devices,
    fit_hypernetwork,
)
from shared.channel_importance import channel_importance, top_alpha_channels
from shared.data.corruptions import FAMILY_OF
from shared.data.device_shifts import SHIFT_SPLIT, DeviceProfile, ShiftStep
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.models.checkpoint import load_bundle

FAMILIES = ("noise", "lighting", "blur")
DEVICES = 16
CLIPS = 192
WINDOW = 64
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


def device_accuracies(bundle, hypernet, z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy of each head on the clips after the window."""
    classes, dim = bundle.config.num_classes, bundle.config.embed_dim
    window, scored, labels = z[:WINDOW], z[WINDOW:], y[WINDOW:]
    head = bundle.model.fused_head
    weight, bias = head.weight.detach().double().T.numpy(), head.bias.detach().double().numpy()
    mask = torch.zeros(1, dim)
    mask[0, top_alpha_channels(channel_importance(window), 0.25)] = 1.0
    with torch.no_grad():
        mean = torch.from_numpy(window.mean(0, keepdims=True)).float()
        theta = hypernet.theta(hypernet.masked_input(mean, mask))[0].double().numpy()
    tuned = finetuned_head(bundle, torch.from_numpy(window), torch.from_numpy(y[:WINDOW]))
    logits = {
        HEADS[0]: scored @ weight + bias,
        HEADS[1]: scored @ theta[: dim * classes].reshape(dim, classes) + theta[dim * classes :],
        HEADS[2]: refine_head(window, theta, classes).logits(scored).numpy(),
        HEADS[3]: tuned(torch.from_numpy(scored)).numpy(),
    }
    return {name: float((np.asarray(lg).argmax(1) == labels).mean()) for name, lg in logits.items()}


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    base = str(default_base_model_path())
    sha = hashlib.sha256(Path(base).read_bytes()).hexdigest()
    bundle = load_bundle(base)
    config = HyperNetworkTrainConfig(
        base_model_path=base, devices=200, clips_per_device=64, val_devices=16,
        val_clips_per_device=64, threads=1,
    )  # fmt: skip
    cache = Settings().data_dir / "cache" / "bench-personalization"
    key = {"v": CACHE_VERSION, "base": sha, "quick": False, "split": SHIFT_SPLIT}
    print("training devices (the bench's cache) ...", flush=True)
    train, _ = cached(cache, {**key, "what": "train"}, lambda: collect_devices(config, bundle))
    clips = load_split("val", DigitActionsConfig())
    results: dict[str, dict] = {}
    for family in FAMILIES:
        keep = [i for i, p in enumerate(train.profiles) if family not in p.families]
        subset = DeviceSet([train.profiles[i] for i in keep], train.z[keep], train.y[keep])
        print(f"{family}: H on the {len(keep)} training devices without it ...", flush=True)
        hypernet, _ = fit_hypernetwork(
            HyperNetworkTrainConfig(base_model_path=base, steps=3000, threads=2), bundle, subset
        )
        profiles = held_out_profiles(family)
        names = [p.name for p in profiles]
        devices = cached(
            cache,
            {**key, "what": "family_holdout", "family": family, "profiles": names},
            lambda profiles=profiles: embed_devices(bundle.model, clips, profiles, CLIPS, seed=77),
        )
        rows = []
        for profile, z, y in tqdm(
            list(zip(devices.profiles, devices.z.double().numpy(), devices.y.numpy(), strict=True)),
            desc=f"{family} devices",
        ):
            rows.append({"device": profile.name, **device_accuracies(bundle, hypernet, z, y)})
        mean = {h: float(np.mean([r[h] for r in rows])) for h in HEADS}
        results[family] = {
            "training_devices": len(keep),
            "mean": mean,
            "refined_below_global": sum(r[HEADS[2]] < r[HEADS[0]] - 0.01 for r in rows),
            "refined_below_theta": sum(r[HEADS[2]] < r[HEADS[1]] - 0.01 for r in rows),
            "devices": rows,
        }
        print(f"  {family}: " + ", ".join(f"{h} {v:.3f}" for h, v in mean.items()), flush=True)
    table = markdown_table(
        ["held-out training family", "H trained on", *HEADS, "refined − Θ (points)",
         "devices refined < global − 1 pt"],
        [
            [family, f"{r['training_devices']} devices",
             *(f"{r['mean'][h]:.3f}" for h in HEADS),
             f"{100 * (r['mean'][HEADS[2]] - r['mean'][HEADS[1]]):+.1f}",
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
         "seconds": round(time.perf_counter() - started, 1), "machine": machine()},
    )  # fmt: skip
    print(table)
    write_section(
        "family_holdout",
        "Refinement on held-out training families (a validation check, nothing chosen)",
        f"Per training family F: H trained without any F type, {DEVICES} new devices with an "
        f"F type (8 alone, 8 composed; severities 3–5) on validation clips; {WINDOW}-clip "
        f"window, ID accuracy on the {CLIPS - WINDOW} other clips. Refinement as the device "
        f"ships it ({settings.iterations} iterations, λ = {settings.shrinkage:g}, β = "
        f"{settings.cloud_weight:g}); fine-tuned: the global head trained on the window "
        f"with its labels. Machine: {machine()}.\n\n{table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
