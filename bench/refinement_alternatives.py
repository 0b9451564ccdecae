"""Two alternatives to the device's refinement, on validation devices only (nothing chosen).

    python -m bench.refinement_alternatives

1. **Cluster, then label**: instead of starting EM from the cloud's Θ, start it from
   k-means on the window (6 clusters, matched one-to-one to Θ's classes by the Hungarian
   method on Θ's soft votes), in the 128 embedding dimensions or in the window's top 16
   principal components. The start is a nearest-centroid head (linear in z: the
   class-common ‖z‖² drops out), sharp enough that its softmax is the k-means assignment;
   then the device's EM and β·Θ exactly as shipped.
2. **A larger window**: the shipped refinement on the first 32 / 64 / 128 clips of each
   device, scored on the clips after 128, beside Θ from the same window.

Devices: the 40 of ``bench.refinement_study`` (8 seen-shift, 24 standard and 8 harder of
the validation families), H as the server trains it by default. Writes
bench/results/refinement_alternatives.json and its BENCHMARKS.md section.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from bench.personalization import cached
from bench.refinement_study import GROUPS, bench_training_devices, validation_devices, window_theta
from bench.report import machine, markdown_table, write_json, write_section
from device_client.head_refinement import RefinementSettings, refine_head
from server.training.hypernetwork import fit_hypernetwork
from shared.ood.energy import energy
from shared.ood.metrics import ood_metrics

WINDOW = 64
WINDOWS = (32, 64, 128)
#: clips after the largest window are scored in the window comparison
SCORED_FROM = max(WINDOWS)
#: softmax temperature of the nearest-centroid start: logits are −‖z − c_k‖² / τ·(spread)
SHARPNESS = 100.0


def split(theta: np.ndarray, dim: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    return theta[: dim * classes].reshape(dim, classes), theta[dim * classes :]


def cluster_start(window: np.ndarray, theta: np.ndarray, classes: int, pca_dims: int | None):
    """A linear head [D·C + C] whose argmax is the k-means cluster matched to each class."""
    kernel_t, bias_t = split(theta, window.shape[1], classes)
    projection, offset = np.eye(window.shape[1]), np.zeros(window.shape[1])
    if pca_dims:
        pca = PCA(pca_dims, random_state=0).fit(window)
        projection, offset = pca.components_.T, pca.mean_  # x = (z − offset)·projection
    x = (window - offset) @ projection
    kmeans = KMeans(classes, n_init=10, random_state=0).fit(x)
    logits = window @ kernel_t + bias_t
    posterior = np.exp(logits - logits.max(1, keepdims=True))
    posterior /= posterior.sum(1, keepdims=True)
    votes = np.stack([posterior[kmeans.labels_ == j].sum(0) for j in range(classes)])
    rows, cols = linear_sum_assignment(-votes)
    centroids = np.empty((classes, x.shape[1]))
    centroids[cols] = kmeans.cluster_centers_[rows]  # centroid of class k
    # −‖x − c_k‖² = 2 x·c_k − ‖c_k‖² + (common to all classes), x linear in z
    scale = SHARPNESS / max(float(((x - x.mean(0)) ** 2).sum(1).mean()), 1e-12)
    kernel = 2.0 * scale * projection @ centroids.T
    bias = scale * (-(centroids**2).sum(1) - 2.0 * (offset @ projection) @ centroids.T)
    return np.concatenate([kernel.reshape(-1), bias])


def clustered_head(window, theta, classes, pca_dims):
    """The shipped EM from a k-means start, with β·Θ (the cloud's Θ) added as shipped."""
    settings = RefinementSettings()
    start = cluster_start(window, theta, classes, pca_dims)
    head = refine_head(window, start, classes, RefinementSettings(cloud_weight=0.0))
    kernel_t, bias_t = split(theta, window.shape[1], classes)

    def logits(z: np.ndarray) -> torch.Tensor:
        cloud = torch.from_numpy(np.asarray(z, dtype=np.float64) @ kernel_t + bias_t)
        return head.logits(z) + settings.cloud_weight * cloud

    return logits


def scores(logits_of, device: dict, scored: np.ndarray, labels: np.ndarray) -> dict:
    id_logits = torch.as_tensor(logits_of(scored))
    near = torch.as_tensor(logits_of(device["near"].numpy()))
    return {
        "acc": float((id_logits.argmax(1).numpy() == labels).mean()),
        "near": ood_metrics(energy(id_logits).numpy(), energy(near).numpy())["auroc"],
    }


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    setup = bench_training_devices()
    classes = setup.bundle.config.num_classes
    groups = cached(
        setup.cache,
        {**setup.key, "what": "refinement_study"},
        lambda: validation_devices(setup.bundle),
    )
    print("H with the server's default settings ...", flush=True)
    config = setup.config(steps=3000)
    hypernet, _ = fit_hypernetwork(config, setup.bundle, setup.train)
    starts = {
        "EM from Θ (shipped)": None,
        "k-means (6, Hungarian), 128 dims": 0,
        "k-means (6, Hungarian), top 16 PCs": 16,
    }
    cluster_rows: dict[str, dict[str, list[dict]]] = {s: {g: [] for g in GROUPS} for s in starts}
    window_rows: dict[int, dict[str, list[dict]]] = {w: {g: [] for g in GROUPS} for w in WINDOWS}
    for group, devices in groups.items():
        for device in devices:
            z, y = device["val"].numpy(), device["labels"].numpy()
            window = z[:WINDOW]
            theta = window_theta(hypernet, window)
            for name, pca_dims in starts.items():
                logits_of = (
                    refine_head(window, theta, classes).logits
                    if pca_dims is None
                    else clustered_head(window, theta, classes, pca_dims)
                )
                cluster_rows[name][group].append(scores(logits_of, device, z[WINDOW:], y[WINDOW:]))
            for size in WINDOWS:
                recent = z[:size]
                theta_w = window_theta(hypernet, recent)
                kernel, bias = split(theta_w, recent.shape[1], classes)
                refined = refine_head(recent, theta_w, classes, RefinementSettings(min_window=2))
                row = scores(refined.logits, device, z[SCORED_FROM:], y[SCORED_FROM:])
                row["theta_acc"] = float(
                    ((z[SCORED_FROM:] @ kernel + bias).argmax(1) == y[SCORED_FROM:]).mean()
                )
                window_rows[size][group].append(row)

    def mean(rows: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    cluster_summary = {
        name: {g: {k: mean(r[g], k) for k in ("acc", "near")} for g in GROUPS}
        | {"mean_acc": mean([x for g in GROUPS for x in r[g]], "acc")}
        for name, r in cluster_rows.items()
    }
    window_summary = {
        size: {g: {k: mean(r[g], k) for k in ("acc", "near", "theta_acc")} for g in GROUPS}
        for size, r in window_rows.items()
    }
    cluster_table = markdown_table(
        ["start of EM (then the shipped EM and β·Θ)",
         *(f"{g}: ID acc / near AUROC" for g in GROUPS), "mean ID acc (40)"],
        [
            [name, *(f"{s[g]['acc']:.3f} / {s[g]['near']:.3f}" for g in GROUPS),
             f"{s['mean_acc']:.3f}"]
            for name, s in cluster_summary.items()
        ],
    )  # fmt: skip
    window_table = markdown_table(
        ["window clips", *(f"{g}: refined acc / near AUROC (Θ acc)" for g in GROUPS)],
        [
            [str(size), *(f"{s[g]['acc']:.3f} / {s[g]['near']:.3f} ({s[g]['theta_acc']:.3f})"
                          for g in GROUPS)]
            for size, s in window_summary.items()
        ],
    )  # fmt: skip
    write_json(
        "refinement_alternatives",
        {"cluster_start": cluster_summary, "window_size": window_summary, "window": WINDOW,
         "seconds": round(time.perf_counter() - started, 1), "machine": machine()},
    )  # fmt: skip
    print(cluster_table)
    print(window_table)
    settings = RefinementSettings()
    write_section(
        "refinement_alternatives",
        "Refinement alternatives: cluster-then-label starts, window size (validation only)",
        "The 40 validation devices of the refinement study, H as the server trains it, the "
        f"device's refinement ({settings.iterations} iterations, λ = {settings.shrinkage:g}, "
        f"β = {settings.cloud_weight:g}). Starts of EM: from Θ (shipped) or from k-means on "
        f"the {WINDOW}-clip window matched to Θ's classes; accuracy and near AUROC on the "
        f"clips after the window. Nothing chosen here. Machine: {machine()}.\n\n"
        f"{cluster_table}\n\nWindow size: Θ and the refinement from the first 32 / 64 / 128 "
        f"clips, scored on the clips after {SCORED_FROM}.\n\n{window_table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
