"""Validation study behind the device's refinement of Θ (docs/personalization.md).

    python -m bench.refinement_study

Validation devices only, never the test split's families: 8 seen-shift devices (the 8
classic severity-5 devices applied to validation clips), 24 standard and 8 harder devices
of the validation families. Per device: a 64-clip window of validation ID clips, accuracy
on 128 other ID clips, Energy AUROC against near / far OOD clips pushed through the same
camera. H is trained as the server trains it by default (``HyperNetworkTrainConfig()`` on
the bench's training devices). Rows: the global head, Θ as sent (α = 0.25), EM refinement
from Θ at β ∈ :data:`BETAS` (the weight of Θ's logits) and anchored EM (every E-step
under LDA + β·Θ) at β ∈ :data:`ANCHORED_BETAS`, the same without the class-common term,
EM from the global head, EM with a covariance fixed in the cloud (pooled over the
training devices), and Θ classifying while the refined head scores. The rules, fixed
before the rows were run: (β, anchoring) is the best mean near AUROC among configurations
whose mean accuracy over all validation devices is within 0.5 point of the best;
classifying with Θ is adopted only if its mean accuracy is at least the shipped head's.
Writes bench/results/refinement_study.json and its BENCHMARKS.md section.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.personalization import CACHE_VERSION, cached, embedding_cache_key
from bench.report import default_base_model_path, markdown_table, write_json, write_section
from device_client.head_refinement import (
    RefinementSettings,
    refine_head,
    shrunk_precision,
)
from server.settings import Settings
from server.training.device_embeddings import DeviceSet, embed_clipset
from server.training.hypernetwork import (
    HyperNetworkTrainConfig,
    collect_devices,
    fit_hypernetwork,
)
from shared.channel_importance import channel_importance, top_alpha_channels
from shared.data.corruptions import corrupt_clipset, device_shift
from shared.data.device_shifts import (
    SHIFT_SPLIT,
    DeviceProfile,
    evaluation_profiles,
    hard_evaluation_profiles,
    shift_clipset,
)
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.embedding_adaptation import DEFAULT as DEFAULT_EMBEDDING
from shared.embedding_adaptation import PLAIN, EmbeddingAdaptation, adapted_model
from shared.models.checkpoint import ModelBundle, load_bundle
from shared.ood.energy import energy
from shared.ood.metrics import ood_metrics

BETAS = (0.0, 1.0, 2.0, 3.0, 4.0, 8.0)
#: β of the anchored rows (every E-step uses LDA + β·Θ, ``RefinementSettings.anchored``)
ANCHORED_BETAS = (1.0, 3.0, 8.0)
WINDOW = 64
#: clips per split (near_hard_val is drawn but not scored, to keep the draws of the docs table)
CLIPS = {"val": 192, "near_hard_val": 128, "near": 128, "far": 128}
GROUPS = ("seen", "standard", "harder")


def validation_cameras() -> list[tuple[str, int, DeviceProfile | None]]:
    """(group, index, profile) of every validation device, in :func:`validation_devices`'
    order; profile None: the classic device_shift(index) of a seen-shift device."""
    cameras: list[tuple[str, int, DeviceProfile | None]] = [("seen", i, None) for i in range(8)]
    cameras += [("standard", i, p) for i, p in enumerate(evaluation_profiles("val", 24, seed=11))]
    cameras += [("harder", i, p) for i, p in enumerate(hard_evaluation_profiles("val", 8, seed=0))]
    return cameras


def validation_devices(bundle) -> dict[str, list[dict]]:
    """Embeddings of the three validation groups (ID window + scored clips, near, far)."""
    rng = np.random.default_rng(7)
    splits = {k: load_split(k, DigitActionsConfig()) for k in CLIPS}
    splits = {k: v.subset(rng.permutation(len(v))[: CLIPS[k]]) for k, v in splits.items()}
    groups: dict[str, list[dict]] = {g: [] for g in GROUPS}
    for group, index, profile in validation_cameras():
        device: dict = {"labels": torch.as_tensor(splits["val"].labels)}
        for name, clips in splits.items():
            if profile is None:
                shift = device_shift(index)
                shifted = corrupt_clipset(clips, shift.corruption, shift.severity, 7000 + index)
            else:
                shifted = shift_clipset(
                    clips, profile, 9000 + index + (24 if group == "harder" else 0)
                )
            device[name] = embed_clipset(bundle.model, shifted).double()
        groups[group].append(device)
        print(f"  embedded {group} validation device {index}", flush=True)
    return groups


def pooled_covariance(z: torch.Tensor, y: torch.Tensor, classes: int) -> np.ndarray:
    """Within-(device, class) covariance pooled over the training devices."""
    parts = [
        zd[yd == k] - zd[yd == k].mean(0)
        for zd, yd in zip(z.double(), y, strict=True)
        for k in range(classes)
        if int((yd == k).sum()) > 1
    ]
    residual = torch.cat(parts)
    return (residual.T @ residual / len(residual)).numpy()


def fixed_covariance_em(window, kernel, bias, precision, iterations):
    """EM from the global head whose M-step keeps one precision fixed in the cloud."""
    for _ in range(iterations):
        logits = window @ kernel + bias
        r = np.exp(logits - logits.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        counts = r.sum(0) + 1e-9
        means = (r.T @ window) / counts[:, None]
        kernel = precision @ means.T
        bias = -0.5 * np.einsum("dc,cd->c", kernel, means) + np.log(counts / counts.sum())
    return lambda z: z @ kernel + bias


@torch.no_grad()
def window_theta(hypernet, window: np.ndarray, alpha: float = 0.25) -> np.ndarray:
    """Θ [D·C + C] the trained H gives for a window [W, D] in per-device mode (top-α mask)."""
    mask = torch.zeros(1, window.shape[1])
    mask[0, top_alpha_channels(channel_importance(window), alpha)] = 1.0
    mean = torch.from_numpy(window.mean(0, keepdims=True)).float()
    return hypernet.theta(hypernet.masked_input(mean, mask))[0].double().numpy()


def device_rows(device, heads) -> dict[str, dict[str, float]]:
    """Per head: accuracy and Energy AUROCs. A head is one logits function, or a pair
    (the logits that classify, the logits whose Energy scores OOD)."""
    scored, labels = device["val"][WINDOW:].numpy(), device["labels"][WINDOW:].numpy()
    out = {}
    for name, head in heads.items():
        classify_with, logits_of = head if isinstance(head, tuple) else (head, head)
        predicted = torch.as_tensor(classify_with(scored)).argmax(1).numpy()
        id_logits = torch.as_tensor(logits_of(scored))
        row = {"acc": float((predicted == labels).mean())}
        for ood in ("near", "far"):
            ood_logits = torch.as_tensor(logits_of(device[ood].numpy()))
            row[ood] = ood_metrics(energy(id_logits).numpy(), energy(ood_logits).numpy())["auroc"]
        out[name] = row
    return out


#: the device's refinement (β, anchored), as :class:`RefinementSettings` defaults ship it
SHIPPED = (RefinementSettings().cloud_weight, RefinementSettings().anchored)


def _config_name(config: tuple[float, bool]) -> str:
    beta, anchored = config
    return f"{'anchored ' if anchored else ''}EM from Θ, β = {beta:g}"


@dataclass(frozen=True)
class BenchDevices:
    """The registered base model and the personalisation bench's cached training devices."""

    base: str  # path of the base model file
    bundle: ModelBundle  # its model runs as ``embedding`` says: embed every device with it
    train: DeviceSet
    cache: Path  # the bench's embedding cache
    key: dict[str, Any]  # what every cache entry of this base model is keyed on
    embedding: EmbeddingAdaptation = PLAIN

    def config(self, **settings: Any) -> HyperNetworkTrainConfig:
        """The server's default H job on these devices (``settings`` override it)."""
        return HyperNetworkTrainConfig(
            **{"base_model_path": self.base, "threads": 2, "embedding": self.embedding} | settings
        )


def bench_training_devices(embedding: EmbeddingAdaptation = DEFAULT_EMBEDDING) -> BenchDevices:
    """The base model and the training devices ``bench.personalization`` embeds (cached),
    with the base model run as ``embedding`` says (the product's kind by default)."""
    base = str(default_base_model_path())
    sha = hashlib.sha256(Path(base).read_bytes()).hexdigest()
    bundle = load_bundle(base)
    config = HyperNetworkTrainConfig(
        base_model_path=base, devices=200, clips_per_device=64, val_devices=16,
        val_clips_per_device=64, threads=1, embedding=embedding,
    )  # fmt: skip
    cache = Settings().data_dir / "cache" / "bench-personalization"
    key = {"v": CACHE_VERSION, "base": sha, "quick": False, "split": SHIFT_SPLIT}
    key |= embedding_cache_key(embedding)
    print(f"training devices (the bench's cache), {embedding.describe()} ...", flush=True)
    train, _ = cached(cache, {**key, "what": "train"}, lambda: collect_devices(config, bundle))
    adapted = replace(bundle, model=adapted_model(bundle.model, embedding))
    return BenchDevices(base, adapted, train, cache, key, embedding)


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    setup = bench_training_devices()
    bundle, train, cache, key = setup.bundle, setup.train, setup.cache, setup.key
    print("validation devices ...", flush=True)
    groups = cached(cache, {**key, "what": "refinement_study"}, lambda: validation_devices(bundle))
    print("H with the server's default settings ...", flush=True)
    hypernet, _ = fit_hypernetwork(setup.config(steps=3000), bundle, train)
    head = bundle.model.fused_head
    weight = head.weight.detach().double().T.numpy()
    bias = head.bias.detach().double().numpy()
    classes, dim = bundle.config.num_classes, bundle.config.embed_dim
    cloud_precision = shrunk_precision(pooled_covariance(train.z, train.y, classes), 1.0)
    rows: dict[str, dict[str, list[dict]]] = {g: [] for g in GROUPS}
    for group, devices in groups.items():
        for device in devices:
            window = device["val"][:WINDOW].numpy()
            theta = window_theta(hypernet, window)
            heads = {
                "global head": lambda z: z @ weight + bias,
                "Θ as sent (α = 0.25)": lambda z, t=theta: (
                    z @ t[: dim * classes].reshape(dim, classes) + t[dim * classes :]
                ),
            }
            for beta in BETAS:
                refined = refine_head(window, theta, classes, RefinementSettings(cloud_weight=beta))
                heads[f"EM from Θ, β = {beta:g}"] = refined.logits
            for beta in ANCHORED_BETAS:
                anchored = refine_head(
                    window, theta, classes, RefinementSettings(cloud_weight=beta, anchored=True)
                )
                heads[f"anchored EM from Θ, β = {beta:g}"] = anchored.logits
            chosen_head = refine_head(window, theta, classes)
            heads["classify with Θ, score with the device's refined head"] = (
                heads["Θ as sent (α = 0.25)"],
                chosen_head.logits,
            )
            plain = refine_head(window, theta, classes, RefinementSettings(cloud_weight=0.0))
            heads["β = 0, discriminant only (no common term)"] = lambda z, h=plain: (
                z @ h.kernel + h.bias
            )
            from_global = refine_head(
                window, np.concatenate([weight.reshape(-1), bias]), classes,
                RefinementSettings(cloud_weight=0.0),
            )  # fmt: skip
            heads["EM from the global head (β = 0)"] = lambda z, h=from_global: (
                z @ h.kernel + h.bias
            )
            for iterations in (1, 3):
                heads[f"global head, covariance fixed in the cloud, {iterations} it."] = (
                    fixed_covariance_em(window, weight, bias, cloud_precision, iterations)
                )
            rows[group].append(device_rows(device, heads))
    names = list(rows["seen"][0])
    summary = {}
    for name in names:
        entry = {}
        for group in GROUPS:
            per = rows[group]
            entry[group] = {
                m: float(np.mean([d[name][m] for d in per])) for m in ("acc", "near", "far")
            }
        every = [d for g in GROUPS for d in rows[g]]
        entry["mean_acc"] = float(np.mean([d[name]["acc"] for d in every]))
        entry["mean_near"] = float(np.mean([d[name]["near"] for d in every]))
        entry["worst_acc_vs_global"] = float(
            min(d[name]["acc"] - d["global head"]["acc"] for d in every)
        )
        summary[name] = entry
    configs = {(b, False): summary[f"EM from Θ, β = {b:g}"] for b in BETAS} | {
        (b, True): summary[f"anchored EM from Θ, β = {b:g}"] for b in ANCHORED_BETAS
    }
    best = max(r["mean_acc"] for r in configs.values())
    eligible = [c for c, r in configs.items() if r["mean_acc"] >= best - 0.005]
    chosen = max(eligible, key=lambda c: configs[c]["mean_near"])
    decoupled = summary["classify with Θ, score with the device's refined head"]["mean_acc"]
    shipped = summary[_config_name(SHIPPED)]["mean_acc"]
    table = markdown_table(
        ["head (validation only)", *(f"{g}: acc / near / far" for g in GROUPS),
         "mean acc (40)", "worst device vs global (acc)"],
        [
            [
                name,
                *(
                    " / ".join(f"{summary[name][g][m]:.3f}" for m in ("acc", "near", "far"))
                    for g in GROUPS
                ),
                f"{summary[name]['mean_acc']:.3f}",
                f"{100 * summary[name]['worst_acc_vs_global']:+.1f} pts",
            ]
            for name in names
        ],
    )  # fmt: skip
    write_json(
        "refinement_study",
        {"summary": summary, "chosen": _config_name(chosen),
         "eligible": [_config_name(c) for c in eligible],
         "classify_with_theta_adopted": decoupled >= shipped,
         "seconds": round(time.perf_counter() - started, 1)},
    )  # fmt: skip
    print(table)
    print(f"chosen: {_config_name(chosen)} (eligible: {[_config_name(c) for c in eligible]})")
    print(f"classify with Θ: mean acc {decoupled:.3f} vs the shipped refined head {shipped:.3f}")
    write_section(
        "refinement_study",
        "Refinement of Θ on the device: the validation study",
        "Validation devices only (8 seen-shift, 24 standard and 8 harder devices of the "
        f"validation families); {WINDOW}-clip window, accuracy on 128 other ID clips, Energy "
        "AUROC against near / far OOD through the same camera; H trained with the server's "
        "default settings. Rule (fixed beforehand) over β and anchoring: the best mean "
        "near AUROC among configurations within 0.5 point of the best mean accuracy. "
        f"**Chosen: {_config_name(chosen)}** (eligible: "
        f"{'; '.join(_config_name(c) for c in eligible)}). Classifying with Θ and scoring "
        "with the refined head is adopted only if its mean accuracy is at least the shipped "
        f"head's: {decoupled:.3f} vs {shipped:.3f} "
        f"({'adopted' if decoupled >= shipped else 'not adopted'}). The device ships "
        f"{_config_name(SHIPPED)}.\n\n{table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
