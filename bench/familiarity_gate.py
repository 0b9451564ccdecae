"""Choosing the device's familiarity gate: when does Θ classify, and when the refined head?

    python -m bench.familiarity_gate

On cameras like those H was trained on, Θ as sent classifies better than the device's
label-free refinement (the seen-shift validation devices of ``bench.refinement_study``:
0.939 vs 0.919); on unfamiliar ones the refinement does. The device measures how far its
window mean lies from H's training devices (:mod:`shared.familiarity`) and lets Θ classify
when the ratio is at most ``FAMILIAR_RATIO``; the refined head scores OOD either way.

Validation data only, never the test families, in two sets: (1) the 40 validation
devices of ``bench.refinement_study`` (8 seen-shift, 24 standard and 8 harder devices of
the validation split's families) under the H the server trains by default; (2) the 48
devices of ``bench.family_holdout`` (16 per held-out per-pixel training family) under an H
trained without that family, with the reference of the devices it was trained on. Per
device: Θ and the refinement from a 64-clip window, accuracy on the other clips. Rule,
fixed before the sweep: the ratio among :data:`RATIOS` with the best mean of the two sets'
mean accuracies (ties → the smaller ratio).

Also swept, as a candidate "EM went wrong" override: on a camera the gate leaves to the
refined head, Θ classifies anyway when the two heads agree on fewer than a share
(:data:`AGREEMENT_FLOORS`) of the window's clips; 0 is no override. Same rule, ties → no
override; the rank correlation of the refinement's gain over Θ with that agreement is
reported per set. Writes bench/results/familiarity_gate.json and its BENCHMARKS.md section.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from bench.family_holdout import FAMILIES, holdout_family
from bench.personalization import cached
from bench.refinement_study import (
    BenchDevices,
    bench_training_devices,
    validation_cameras,
    validation_devices,
    window_theta,
)
from bench.report import machine, markdown_table, write_json, write_section
from device_client.head_refinement import refine_head
from server.training.device_embeddings import DeviceSet
from server.training.hypernetwork import fit_hypernetwork
from shared.data.device_shifts import SHIFT_SPLIT
from shared.familiarity import FAMILIAR_RATIO

WINDOW = 64
#: candidate thresholds on the familiarity ratio (0: the refined head always classifies)
RATIOS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, np.inf)
#: candidate overrides: Θ classifies when it agrees with the refined head on fewer than this
#: share of the window's clips (0: never)
AGREEMENT_FLOORS = (0.0, 0.8, 0.9, 0.95)
#: H's training seeds of the robustness check (the choice itself is seed 0's, the server's)
CHECK_SEEDS = (1, 2)
LABEL = {0.0: "0 (refined head always classifies)", np.inf: "∞ (Θ always classifies)"}


def device_case(hypernet, device_z: np.ndarray, labels: np.ndarray, classes: int) -> dict:
    """Θ's and the refined head's accuracy after the window, the window's ratio and the
    share of window clips on which the two heads agree (all label-free but the accuracies)."""
    window, scored, truth = device_z[:WINDOW], device_z[WINDOW:], labels[WINDOW:]
    theta = window_theta(hypernet, window)
    dim = window.shape[1]
    kernel, bias = theta[: dim * classes].reshape(dim, classes), theta[dim * classes :]
    refined = refine_head(window, theta, classes)
    agrees = (window @ kernel + bias).argmax(1) == refined.logits(window).argmax(1).numpy()
    return {
        "theta_acc": float(((scored @ kernel + bias).argmax(1) == truth).mean()),
        "refined_acc": float((refined.logits(scored).argmax(1).numpy() == truth).mean()),
        "ratio": hypernet.familiarity.ratio(window.mean(0)),
        "agreement": float(agrees.mean()),
    }


def fit(setup: BenchDevices, train: DeviceSet, seed: int = 0):
    return fit_hypernetwork(setup.config(steps=3000, seed=seed), setup.bundle, train)[0]


def validation_cases(setup: BenchDevices, seed: int = 0) -> list[dict]:
    classes = setup.bundle.config.num_classes
    groups = cached(
        setup.cache,
        {**setup.key, "what": "refinement_study"},
        lambda: validation_devices(setup.bundle),
    )
    print(f"H with the server's default settings (seed {seed}) ...", flush=True)
    hypernet = fit(setup, setup.train, seed)
    families = {
        (group, index): "+".join(profile.families) if profile else "classic"
        for group, index, profile in validation_cameras()
    }
    return [
        {"set": "validation", "group": group, "index": i, "families": families[group, i]}
        | device_case(hypernet, d["val"].numpy(), d["labels"].numpy(), classes)
        for group, devices in groups.items()
        for i, d in enumerate(devices)
    ]


def holdout_cases(setup: BenchDevices, seed: int = 0) -> list[dict]:
    classes = setup.bundle.config.num_classes
    cases = []
    for family in FAMILIES:
        subset, devices = holdout_family(setup, family)
        devices_in = len(subset.profiles)
        print(f"{family}: H on the {devices_in} training devices without it ...", flush=True)
        hypernet = fit(setup, subset, seed)
        for d in tqdm(devices, desc=f"{family} devices"):
            case = device_case(hypernet, d["id"], d["labels"], classes)
            cases.append({"set": "held-out training family", "group": family} | case)
    return cases


def theta_classifies(case: dict, ratio: float, floor: float = 0.0) -> bool:
    return case["ratio"] <= ratio or case["agreement"] < floor


def gated_accuracy(cases: list[dict], ratio: float, floor: float = 0.0) -> float:
    chosen = [c["theta_acc" if theta_classifies(c, ratio, floor) else "refined_acc"] for c in cases]
    return float(np.mean(chosen))


def sweep_of(sets: dict[str, list[dict]]) -> list[dict]:
    """Per (threshold, agreement floor): each set's mean gated accuracy, the share Θ
    classifies, their mean."""
    sweep = []
    for floor in AGREEMENT_FLOORS:
        for ratio in RATIOS:
            row = {"ratio": float(ratio), "floor": floor}
            for name, cases in sets.items():
                row[name] = gated_accuracy(cases, ratio, floor)
                row[f"{name}: Θ classifies"] = float(
                    np.mean([theta_classifies(c, ratio, floor) for c in cases])
                )
            row["mean"] = float(np.mean([row[name] for name in sets]))
            sweep.append(row)
    return sweep


def rule(sweep: list[dict]) -> tuple[float, float]:
    """(threshold, floor) with the best mean of the two sets' accuracies; ties → the
    smaller threshold, then the smaller floor (no override)."""
    best = max(r["mean"] for r in sweep)
    return min((r["ratio"], r["floor"]) for r in sweep if r["mean"] >= best - 1e-12)


def agreement_correlation(cases: list[dict], ratio: float) -> dict:
    """Spearman ρ, over the devices the gate leaves to the refined head, between the
    refinement's gain over Θ and the heads' agreement (negative: disagreement goes with
    gains, not losses)."""
    unfamiliar = [c for c in cases if c["ratio"] > ratio]
    gains = [c["refined_acc"] - c["theta_acc"] for c in unfamiliar]
    rho, p_value = spearmanr(gains, [c["agreement"] for c in unfamiliar])
    return {"devices": len(unfamiliar), "rho": float(rho), "p": float(p_value)}


def seed_check(setup: BenchDevices) -> list[dict]:
    """The rule re-run with H trained from other seeds (a robustness check, not a choice)."""
    rows = []
    for seed in CHECK_SEEDS:
        sets = {
            "validation": validation_cases(setup, seed),
            "held-out training family": holdout_cases(setup, seed),
        }
        sweep = sweep_of(sets)
        means = {r["ratio"]: r["mean"] for r in sweep if r["floor"] == 0.0}
        rows.append({"seed": seed, "chosen": rule(sweep), "mean_by_ratio": means})
    return rows


def group_rows(sets: dict[str, list[dict]], ratio: float) -> dict[str, dict]:
    """Per group (validation: per group and families) Θ, refined and gated accuracy."""
    groups = {}
    for name, cases in sets.items():
        keys = [f"{c['group']}: {c['families']}" if "families" in c else c["group"] for c in cases]
        for key in dict.fromkeys(keys):
            members = [c for c, k in zip(cases, keys, strict=True) if k == key]
            groups[f"{name}: {key}"] = {
                "devices": len(members),
                "theta_acc": float(np.mean([c["theta_acc"] for c in members])),
                "refined_acc": float(np.mean([c["refined_acc"] for c in members])),
                "gated_acc": gated_accuracy(members, ratio),
                "ratio_median": float(np.median([c["ratio"] for c in members])),
                "theta_classifies": float(np.mean([c["ratio"] <= ratio for c in members])),
            }
    return groups


def tables(sets, sweep, groups, seeds, chosen) -> tuple[str, str, str, str]:
    """The ratio sweep (no override), the override sweep, the groups and the seed check."""
    ratio = chosen[0]
    sweep_table = markdown_table(
        ["ratio threshold", *(f"{n}: mean ID acc (Θ classifies on)" for n in sets),
         "mean of the two"],
        [
            [LABEL.get(r["ratio"], f"{r['ratio']:g}"),
             *(f"{r[n]:.4f} ({100 * r[f'{n}: Θ classifies']:.0f} %)" for n in sets),
             f"{r['mean']:.4f}"]
            for r in sweep if r["floor"] == 0.0
        ],
    )  # fmt: skip
    override_table = markdown_table(
        ["Θ also classifies when the heads agree on fewer than", "best threshold",
         *(f"{n}: mean ID acc" for n in sets), "mean of the two"],
        [
            [f"{floor:g} of the window" if floor else "0 (no override)", f"{best['ratio']:g}",
             *(f"{best[n]:.4f}" for n in sets), f"{best['mean']:.4f}"]
            for floor in AGREEMENT_FLOORS
            for best in [max((r for r in sweep if r["floor"] == floor),
                             key=lambda r: (r["mean"], -r["ratio"]))]
        ],
    )  # fmt: skip
    group_table = markdown_table(
        ["devices", "n", "median ratio", "Θ as sent", "refined", f"gated at {ratio:g}",
         "Θ classifies on"],
        [
            [name, g["devices"], f"{g['ratio_median']:.2f}", f"{g['theta_acc']:.3f}",
             f"{g['refined_acc']:.3f}", f"{g['gated_acc']:.3f}",
             f"{100 * g['theta_classifies']:.0f} %"]
            for name, g in groups.items()
        ],
    )  # fmt: skip
    shown = list(dict.fromkeys((0.0, 1.0, float(ratio), float(np.inf))))
    seed_table = markdown_table(
        ["H's training seed", "rule picks (threshold, floor)",
         *(f"mean of the two at {LABEL.get(r, f'{r:g}').split(' (')[0]}" for r in shown)],
        [
            [str(row["seed"]), f"{row['chosen'][0]:g}, {row['chosen'][1]:g}",
             *(f"{row['mean_by_ratio'][r]:.4f}" for r in shown)]
            for row in [{"seed": 0, "chosen": chosen,
                         "mean_by_ratio": {r["ratio"]: r["mean"] for r in sweep
                                           if r["floor"] == 0.0}}, *seeds]
        ],
    )  # fmt: skip
    return sweep_table, override_table, group_table, seed_table


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    setup = bench_training_devices()
    sets = {"validation": validation_cases(setup), "held-out training family": holdout_cases(setup)}
    sweep = sweep_of(sets)
    chosen = rule(sweep)
    seeds = seed_check(setup)
    oracle = {
        name: float(np.mean([max(c["theta_acc"], c["refined_acc"]) for c in cases]))
        for name, cases in sets.items()
    }
    correlation = {name: agreement_correlation(cases, chosen[0]) for name, cases in sets.items()}
    groups = group_rows(sets, chosen[0])
    sweep_table, override_table, group_table, seed_table = tables(
        sets, sweep, groups, seeds, chosen
    )
    write_json(
        "familiarity_gate",
        {"sweep": sweep, "chosen": {"ratio": chosen[0], "agreement_floor": chosen[1]},
         "seed_check": seeds, "device_default": FAMILIAR_RATIO, "oracle": oracle,
         "agreement_correlation": correlation, "groups": groups,
         "cases": {n: c for n, c in sets.items()}, "window": WINDOW,
         "seconds": round(time.perf_counter() - started, 1), "machine": machine()},
    )  # fmt: skip
    for table in (sweep_table, override_table, group_table, seed_table):
        print(table)
    print(f"chosen {chosen} (device default {FAMILIAR_RATIO:g}); oracle {oracle}; {correlation}")
    same = "the device's default" if chosen == (FAMILIAR_RATIO, 0.0) else (
        f"**not** the device's default ({FAMILIAR_RATIO:g} in `shared/familiarity.py`, "
        "no agreement override)"
    )  # fmt: skip
    rho = "; ".join(
        f"{n}: ρ = {c['rho']:+.2f} over {c['devices']} devices (p = {c['p']:.1g})"
        for n, c in correlation.items()
    )
    write_section(
        "familiarity_gate",
        "Familiarity gate: when Θ classifies instead of the refined head (validation only)",
        "Per device, Θ (α = 0.25) and the device's refinement from a "
        f"{WINDOW}-clip window, ID accuracy on the other clips; Θ classifies when the "
        "window mean's distance to the nearest training device of H, over the median "
        "nearest-neighbour distance among those devices, is at most the threshold. Sets: "
        "the 40 validation devices of the refinement study (H as the server trains it; "
        f"validation split: {', '.join(SHIFT_SPLIT['val'])}) and the 48 devices of the "
        "held-out training families (H trained without the family). Candidate override: Θ "
        "also classifies when the two heads agree on fewer than a share of the window's "
        "clips. Rule (fixed before the sweep): best mean of the two sets' mean accuracies, "
        f"ties → the smaller threshold, then no override. **Chosen: threshold {chosen[0]:g}, "
        f"agreement floor {chosen[1]:g}**, {same}. Per-device best of Θ and refined (oracle): "
        + ", ".join(f"{n} {v:.4f}" for n, v in oracle.items())
        + ". Rank correlation of the refinement's gain over Θ with the heads' agreement, on "
        f"the devices the gate leaves to the refined head: {rho}. Machine: {machine()}.\n\n"
        f"{sweep_table}\n\n{override_table}\n\n{group_table}\n\n"
        "Robustness (not a choice): the same rule with H trained from other seeds.\n\n"
        f"{seed_table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
