"""Which embeddings should H read: the base model's as they are, or after LeanTTA?

    python -m bench.embedding_adaptation

LeanTTA (per-clip BatchNorm statistics, forward only) is the device's own answer to a camera
shift; it moves the embeddings a device sends and so the ones H must be trained on
(:mod:`shared.embedding_adaptation`). Per candidate in :data:`CANDIDATES` (plain first, then
LeanTTA settings): the bench's 209 training devices embedded that way, H trained as the
server trains it on them, and the product's path per device — Θ (α = 0.25) from a 64-clip
window, the device's refinement, the familiarity gate — scored on the clips after the
window. Validation data only, in the two sets of ``bench.familiarity_gate``: the 40
validation devices (ID accuracy, near / far Energy AUROC) and the 48 devices of the
held-out training families (H trained without the family; ID accuracy).

Rule, fixed before the run: the candidate with the best mean of the two sets' mean gated
ID accuracies; ties → the earlier candidate (plain first). Writes
bench/results/embedding_adaptation.json and its BENCHMARKS.md section.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.family_holdout import FAMILIES, holdout_family
from bench.personalization import cached
from bench.refinement_study import (
    GROUPS,
    BenchDevices,
    bench_training_devices,
    device_rows,
    validation_devices,
    window_theta,
)
from bench.report import machine, markdown_table, write_json, write_section
from device_client.head_refinement import familiarity_gate, refine_head
from server.training.hypernetwork import fit_hypernetwork
from shared.embedding_adaptation import DEFAULT, PLAIN, EmbeddingAdaptation

WINDOW = 64
#: plain embeddings, then LeanTTA on all three conv blocks per stream: the device-adaptation
#: bench's validated (τ, λ) = (0.5, 0), the device CLI's default (0.9, 0.9) and (0.2, 0)
CANDIDATES = (
    PLAIN,
    EmbeddingAdaptation(mode="leantta", layers=3, tau=0.5, lam=0.0),
    EmbeddingAdaptation(mode="leantta", layers=3, tau=0.9, lam=0.9),
    EmbeddingAdaptation(mode="leantta", layers=3, tau=0.2, lam=0.0),
)
HEADS = ("global", "theta", "refined", "gated")


def heads_for(setup: BenchDevices, hypernet, window: np.ndarray) -> dict:
    """Logits functions of the global head, Θ, the refined head and the gated head."""
    classes = setup.bundle.config.num_classes
    head = setup.bundle.model.fused_head
    weight = head.weight.detach().double().T.numpy()
    bias = head.bias.detach().double().numpy()
    theta = window_theta(hypernet, window)
    dim = window.shape[1]
    kernel, theta_bias = theta[: dim * classes].reshape(dim, classes), theta[dim * classes :]
    refined = refine_head(window, theta, classes)
    gated, _ = familiarity_gate(refined, window, hypernet.familiarity)
    return {
        "global": lambda z: z @ weight + bias,
        "theta": lambda z: z @ kernel + theta_bias,
        "refined": lambda z: refined.logits(z).numpy(),
        "gated": lambda z: gated.logits(z).numpy(),
    }


def candidate_cases(embedding: EmbeddingAdaptation) -> dict[str, list[dict]]:
    """Per validation device its groups' rows, per held-out device its accuracies."""
    setup = bench_training_devices(embedding)
    groups = cached(
        setup.cache,
        {**setup.key, "what": "refinement_study"},
        lambda: validation_devices(setup.bundle),
    )
    print(f"{embedding.describe()}: H on {len(setup.train.profiles)} devices ...", flush=True)
    hypernet = fit_hypernetwork(setup.config(steps=3000), setup.bundle, setup.train)[0]
    validation = []
    for group, devices in groups.items():
        for device in devices:
            heads = heads_for(setup, hypernet, device["val"][:WINDOW].numpy())
            rows = device_rows(device, heads)
            metrics = {f"{h}_{m}": v for h in HEADS for m, v in rows[h].items()}
            validation.append({"group": group} | metrics)
    holdout = []
    for family in FAMILIES:
        subset, devices = holdout_family(setup, family)
        family_h = fit_hypernetwork(setup.config(steps=3000), setup.bundle, subset)[0]
        for device in devices:
            heads = heads_for(setup, family_h, device["id"][:WINDOW])
            scored, truth = device["id"][WINDOW:], device["labels"][WINDOW:]
            accuracy = {
                f"{h}_acc": float((np.asarray(heads[h](scored)).argmax(1) == truth).mean())
                for h in HEADS
            }
            holdout.append({"group": family} | accuracy)
    return {"validation": validation, "held-out training family": holdout}


def summary(cases: dict[str, list[dict]]) -> dict[str, float]:
    mean = {name: float(np.mean([c["gated_acc"] for c in rows])) for name, rows in cases.items()}
    return mean | {"mean": float(np.mean(list(mean.values())))}


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    results = {}
    for embedding in CANDIDATES:
        cases = candidate_cases(embedding)
        results[embedding.key] = {"cases": cases, "summary": summary(cases)}
        print(embedding.key, results[embedding.key]["summary"], flush=True)
    best = max(r["summary"]["mean"] for r in results.values())
    chosen = next(key for key, r in results.items() if r["summary"]["mean"] >= best - 1e-12)
    names = {c.key: c.describe() for c in CANDIDATES}
    choice_table = markdown_table(
        ["embeddings", "validation: gated ID acc", "held-out training family: gated ID acc",
         "mean of the two"],
        [[names[k], f"{r['summary']['validation']:.4f}",
          f"{r['summary']['held-out training family']:.4f}", f"{r['summary']['mean']:.4f}"]
         for k, r in results.items()],
    )  # fmt: skip
    rows = []
    for key, result in results.items():
        for group in (*GROUPS, *FAMILIES):
            name = "validation" if group in GROUPS else "held-out training family"
            members = [c for c in result["cases"][name] if c["group"] == group]
            cells = [
                "/".join(
                    f"{np.mean([c[f'{h}_{m}'] for c in members]):.3f}"
                    for m in ("acc", "near", "far")
                    if f"{h}_{m}" in members[0]
                )
                for h in HEADS
            ]
            rows.append([names[key], f"{name}: {group}", len(members), *cells])
    group_table = markdown_table(
        ["embeddings", "devices", "n", "global", "Θ as sent", "refined", "gated (shipped path)"],
        rows,
    )
    write_json(
        "embedding_adaptation",
        {"chosen": chosen, "device_default": DEFAULT.key, "window": WINDOW,
         "results": results, "seconds": round(time.perf_counter() - started, 1),
         "machine": machine()},
    )  # fmt: skip
    print(choice_table)
    print(group_table)
    same = "the product's default" if chosen == DEFAULT.key else (
        f"**not** the product's default ({DEFAULT.key} in `shared/embedding_adaptation.py`)"
    )  # fmt: skip
    write_section(
        "embedding_adaptation",
        "Which embeddings H reads: plain or after LeanTTA (validation only)",
        "Per candidate: the bench's training devices embedded that way, H as the server "
        "trains it on them, and per device the product's path (Θ at α = 0.25 from a "
        f"{WINDOW}-clip window, the device's refinement, the familiarity gate) scored on "
        "the clips after the window. Sets: the 40 validation devices of the refinement "
        "study and the 48 devices of the held-out training families (H trained without the "
        "family). Rule (fixed before the run): best mean of the two sets' mean gated ID "
        f"accuracies, ties → the earlier candidate. **Chosen: {names[chosen]}** "
        f"(`{chosen}`), {same}. Cells: ID accuracy / near / far Energy AUROC (held-out "
        f"families: ID accuracy). Machine: {machine()}.\n\n{choice_table}\n\n{group_table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
