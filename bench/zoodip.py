"""ZOODiP in miniature: personalise the int8 digits DDPM to a held-out digit by ZO textual
inversion, with its ablation (neither / SG / PUTS / both) and backprop TI on the float model.

    python -m bench.zoodip [--quick]

Uses the registry's ``diffusion`` model (trained first if absent) and its int8 export. Per
seed, 5 images of the held-out class (a different five per seed) are the concept; each method
gets the same step budget; samples generated with each learned token are labelled by an SVM
trained separately on real digits (all ten classes; the concept images excluded), and the
recognised fraction is the share labelled as the held-out class. Passes-to-target: forward
passes until a fixed-draw monitoring loss on the int8 model covers 50 % / 80 % of the way from
the initial token's loss to the backprop token's, with and without SG (both with PUTS).
Memory and speed: each job in a fresh process (peak RSS = VmHWM), round-robin, medians.
Writes bench/results/zoodip.json, sample grids docs/img/zoodip_*.png and a BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import IMAGES, markdown_table, write_json, write_section

METHODS = {  # name -> (subspace gradient, partial uniform timestep sampling)
    "neither": (False, False),
    "sg": (True, False),
    "puts": (False, True),
    "both": (True, True),
}
TARGET_FRACTIONS = (0.5, 0.8)
TITLE = "ZOODiP in miniature (ZO textual inversion on an int8 DDPM)"


def registered_models() -> tuple[bytes, bytes]:
    """(float artifact, int8 artifact) of the newest ``diffusion`` model (trained if absent)."""
    from server.jobs import ensure_model
    from server.registry import open_registry
    from server.registry.errors import NotFoundError
    from server.settings import Settings
    from server.training.diffusion import export_int8
    from shared.model_names import DIFFUSION_MODEL

    settings = Settings()
    with open_registry(settings.database_url, settings.data_dir) as registry:
        record = ensure_model(registry, DIFFUSION_MODEL)
        try:
            int8 = registry.get_model(DIFFUSION_MODEL, record.version, "int8")
        except NotFoundError:
            int8 = export_int8(registry)
        read = registry.artifacts.read_bytes
        return read(record.artifact_sha256), read(int8.artifact_sha256)


def digit_classifier(held_out: int, exclude: torch.Tensor) -> tuple[Any, float]:
    """SVM on real 16x16 digits of all classes (minus ``exclude`` images); test accuracy."""
    from sklearn.svm import SVC

    from shared.diffusion.data import digit_splits, to_unit

    train, test = digit_splits()
    flat = to_unit(train.images).reshape(len(train.images), -1)
    keep = ~(flat[:, None, :] == to_unit(exclude).reshape(1, len(exclude), -1)).all(-1).any(1)
    classifier = SVC(C=10.0, gamma="scale").fit(flat[keep].numpy(), train.labels[keep].numpy())
    test_x = to_unit(test.images).reshape(len(test.images), -1).numpy()
    return classifier, float((classifier.predict(test_x) == test.labels.numpy()).mean())


def recognised(classifier: Any, images: torch.Tensor, digit: int) -> float:
    from shared.diffusion.data import to_unit

    labels = classifier.predict(to_unit(images).reshape(len(images), -1).numpy())
    return float((labels == digit).mean())


def passes_to(monitored: list[tuple[int, float]], target: float) -> int | None:
    return next((passes for passes, loss in monitored if loss <= target), None)


def run_seed(
    float_model,
    int8_model,
    held_out: int,
    seed: int,
    steps: int,
    samples: int,
    sample_steps: int,
    classifier: Any,
) -> dict[str, Any]:
    """Every method on one concept set; returns per-method fraction, passes, tokens."""
    from device_client.diffusion_personalization import (
        ZOInversionConfig,
        learn_token_zo,
        sample_with_token,
    )
    from shared.diffusion.data import concept_images
    from shared.diffusion.inversion import evaluation_objective, learn_token_backprop

    images = concept_images(5, held_out, offset=seed)
    monitor = evaluation_objective(int8_model, images)
    out: dict[str, Any] = {"tokens": {}}
    token0 = int8_model.initial_token()
    bp_token, bp_objective = learn_token_backprop(float_model, images, steps, seed=seed)
    loss0, loss_bp = monitor(token0), monitor(bp_token)
    targets = {f: loss0 - f * (loss0 - loss_bp) for f in TARGET_FRACTIONS}
    out["backprop_ti"] = {
        "recognised_fraction": recognised(
            classifier,
            sample_with_token(float_model, bp_token, samples, sample_steps, seed),
            held_out,
        ),
        "forward_passes": bp_objective.forward_passes,
        "backward_passes": steps,
        "monitor_loss": loss_bp,
    }
    out["tokens"]["backprop_ti"] = bp_token
    out["initial_token"] = {
        "recognised_fraction": recognised(
            classifier, sample_with_token(int8_model, token0, samples, sample_steps, seed), held_out
        ),
        "monitor_loss": loss0,
    }
    for name, (subspace, puts) in METHODS.items():
        config = ZOInversionConfig(steps=steps, subspace=subspace, puts=puts, seed=seed)
        result = learn_token_zo(int8_model, images, config, monitor=monitor)
        generated = sample_with_token(int8_model, result.token, samples, sample_steps, seed)
        out[name] = {
            "recognised_fraction": recognised(classifier, generated, held_out),
            "forward_passes": result.forward_passes,
            "monitor_loss": result.monitored[-1][1],
            "passes_to_target": {
                str(f): passes_to(result.monitored, t) for f, t in targets.items()
            },
            "d_eff": result.d_eff,
        }
        out["tokens"][name] = result.token
    return out


# -- memory and speed: one job per fresh process ----------------------------------------------


def worker(job: str, model_path: str, images_path: str, steps: int) -> None:
    """Run one job and print ``{"peak_mib", "seconds", "steps"}`` (called in a fresh process)."""
    images = torch.load(images_path, weights_only=True)
    data = Path(model_path).read_bytes()
    seconds = 0.0
    if job == "zo_int8":
        from device_client.diffusion_personalization import ZOInversionConfig, learn_token_zo
        from shared.diffusion.artifact import int8_denoiser_from_bytes

        model, _ = int8_denoiser_from_bytes(data)
        start = time.perf_counter()
        learn_token_zo(model, images, ZOInversionConfig(steps=steps))
        seconds = time.perf_counter() - start
    elif job == "backprop_ti":
        from shared.diffusion.artifact import float_denoiser_from_bytes
        from shared.diffusion.inversion import learn_token_backprop

        model, _ = float_denoiser_from_bytes(data)
        start = time.perf_counter()
        learn_token_backprop(model, images, steps)
        seconds = time.perf_counter() - start
    elif job != "load_int8":
        raise ValueError(f"unknown job {job!r}")
    print(json.dumps({"peak_mib": peak_rss_mib(), "seconds": seconds, "steps": steps}))


def peak_rss_mib() -> float:
    """This process's peak RSS (Linux VmHWM; ru_maxrss elsewhere), in MiB.

    VmHWM rather than ru_maxrss: after fork + exec, ru_maxrss can report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_and_speed(
    float_bytes: bytes, int8_bytes: bytes, held_out: int, steps: int, repeats: int
) -> dict[str, Any]:
    from shared.diffusion.data import concept_images

    runs: dict[str, list[dict]] = {"zo_int8": [], "backprop_ti": [], "load_int8": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"float": Path(tmp) / "float.pt", "int8": Path(tmp) / "int8.pt"}
        paths["float"].write_bytes(float_bytes)
        paths["int8"].write_bytes(int8_bytes)
        images = Path(tmp) / "images.pt"
        torch.save(concept_images(5, held_out), images)
        for _ in range(repeats):
            for job in runs:
                model = paths["float" if job == "backprop_ti" else "int8"]
                command = [
                    sys.executable,
                    "-m",
                    "bench.zoodip",
                    "--worker",
                    job,
                    str(model),
                    str(images),
                    str(steps),
                ]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[job].append(json.loads(out.stdout.strip().splitlines()[-1]))
    peak = {job: statistics.median(r["peak_mib"] for r in rs) for job, rs in runs.items()}
    its = {
        job: statistics.median(r["steps"] / r["seconds"] for r in rs)
        for job, rs in runs.items()
        if job != "load_int8"
    }
    return {
        "zo_int8_mib": peak["zo_int8"],
        "backprop_ti_mib": peak["backprop_ti"],
        "load_int8_only_mib": peak["load_int8"],
        "ratio_backprop_over_zo": peak["backprop_ti"] / peak["zo_int8"],
        "iterations_per_second": {"zo_int8": its["zo_int8"], "backprop_ti": its["backprop_ti"]},
        "steps_per_run": steps,
        "repeats": repeats,
    }


# -- the whole benchmark -----------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.zoodip", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer seeds, steps and samples")
    parser.add_argument(
        "--render", action="store_true", help="rewrite the BENCHMARKS.md section from saved JSON"
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("JOB", "MODEL", "IMAGES", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        job, model_path, images_path, steps = args.worker
        worker(job, model_path, images_path, int(steps))
        return {}
    if args.render:
        from bench.report import RESULTS

        result = json.loads((RESULTS / "zoodip.json").read_text())
        write_section("zoodip", TITLE, render(result))
        print(render(result))
        return result
    from device_client.concept_images import write_grid
    from device_client.diffusion_personalization import sample_with_token
    from shared.diffusion.artifact import float_denoiser_from_bytes, int8_denoiser_from_bytes
    from shared.diffusion.data import concept_images
    from shared.diffusion.int8 import weight_bytes

    seeds, steps, samples, sample_steps = (2, 300, 32, 25) if args.quick else (4, 1000, 64, 50)
    started = time.perf_counter()
    float_bytes, int8_bytes = registered_models()
    float_model, state = float_denoiser_from_bytes(float_bytes)
    int8_model, _ = int8_denoiser_from_bytes(int8_bytes)
    held_out = int(state["held_out_class"])
    all_concepts = torch.cat([concept_images(5, held_out, offset=s) for s in range(seeds)])
    classifier, classifier_accuracy = digit_classifier(held_out, all_concepts)
    trained = [c for c in range(10) if c != held_out]
    per_class = {}
    for digit in trained:
        token = int8_model.class_token(torch.tensor([digit]))[0]
        per_class[digit] = recognised(
            classifier,
            sample_with_token(int8_model, token, samples // 2, sample_steps, digit),
            digit,
        )
    per_seed = []
    for seed in range(seeds):
        print(f"seed {seed + 1}/{seeds} …", file=sys.stderr, flush=True)
        per_seed.append(
            run_seed(
                float_model, int8_model, held_out, seed, steps, samples, sample_steps, classifier
            )
        )
    IMAGES.mkdir(parents=True, exist_ok=True)
    write_grid(concept_images(5, held_out), IMAGES / "zoodip_concept.png", columns=5)
    for name, token in per_seed[0]["tokens"].items():
        model = float_model if name == "backprop_ti" else int8_model
        write_grid(
            sample_with_token(model, token, 32, sample_steps, 0),
            IMAGES / f"zoodip_{name}.png",
            columns=8,
        )
    methods: dict[str, Any] = {}
    for name in (*METHODS, "backprop_ti"):
        fractions = [s[name]["recognised_fraction"] for s in per_seed]
        mean, std = _mean_std(fractions)
        methods[name] = {
            "recognised_fraction": mean,
            "recognised_fraction_std": std,
            "per_seed": fractions,
            "forward_passes": per_seed[0][name]["forward_passes"],
            "monitor_loss": _mean_std([s[name]["monitor_loss"] for s in per_seed])[0],
        }
        if name == "backprop_ti":
            methods[name]["backward_passes"] = steps
        else:  # dimensions the subspace gradient kept at the end (None without SG)
            methods[name]["d_eff_per_seed"] = [s[name]["d_eff"] for s in per_seed]
    initial = _mean_std([s["initial_token"]["recognised_fraction"] for s in per_seed])[0]
    passes = {
        name: {
            str(f): [s[name]["passes_to_target"][str(f)] for s in per_seed]
            for f in TARGET_FRACTIONS
        }
        for name in ("puts", "both")
    }
    memory = memory_and_speed(
        float_bytes, int8_bytes, held_out, 50 if args.quick else 200, 2 if args.quick else 3
    )
    result = {
        "quick": args.quick,
        "held_out_class": held_out,
        "seeds": seeds,
        "steps": steps,
        "samples_per_method": samples,
        "sampling_steps": sample_steps,
        "classifier_test_accuracy": classifier_accuracy,
        "trained_class_recognised_fraction": per_class,
        "initial_token_recognised_fraction": initial,
        "methods": methods,
        "passes_to_target": {
            "without_sg": passes["puts"],
            "with_sg": passes["both"],
            "target": "fraction of the way from L(initial) to L(backprop TI)",
        },
        "memory": memory,
        "weights_bytes": {"float": weight_bytes(float_model), "int8": weight_bytes(int8_model)},
        "seconds": time.perf_counter() - started,
    }
    write_json("zoodip", result)
    write_section("zoodip", TITLE, render(result))
    print(render(result))
    return result


def _passes(values: list[int | None]) -> str:
    reached = [v for v in values if v is not None]
    med = f"median {statistics.median(reached):.0f}" if reached else "never"
    return f"{len(reached)}/{len(values)} reached; {med}; {values}"


def render(r: dict[str, Any]) -> str:
    rows = []
    for name, label in (
        ("neither", "ZO, neither"),
        ("sg", "ZO + SG"),
        ("puts", "ZO + PUTS"),
        ("both", "ZO + SG + PUTS (ZOODiP)"),
        ("backprop_ti", "backprop TI (float)"),
    ):
        m = r["methods"][name]
        rows.append(
            [
                label,
                f"{m['recognised_fraction']:.3f} ± {m['recognised_fraction_std']:.3f}",
                m["forward_passes"],
                f"{m['monitor_loss']:.4f}",
            ]
        )
    mem = r["memory"]
    its = mem["iterations_per_second"]
    p = r["passes_to_target"]
    return "\n".join(
        [
            f"Held-out digit {r['held_out_class']}; {r['seeds']} seeds (5 concept images each), "
            f"{r['steps']} steps per method, {r['samples_per_method']} samples per method and seed "
            f"({r['sampling_steps']} sampling steps). Classifier (SVM on real digits) test "
            f"accuracy "
            f"{r['classifier_test_accuracy']:.3f}; samples of the trained classes recognised "
            f"{np.mean(list(r['trained_class_recognised_fraction'].values())):.3f} on average; "
            f"initial token (mean of trained tokens) {r['initial_token_recognised_fraction']:.3f}.",
            "",
            markdown_table(
                ["method", "recognised as held-out digit", "forward passes", "monitor loss"], rows
            ),
            "",
            markdown_table(
                ["", "ZO on int8", "backprop TI on float", "ratio"],
                [
                    [
                        "peak RSS, MiB (fresh process)",
                        f"{mem['zo_int8_mib']:.0f}",
                        f"{mem['backprop_ti_mib']:.0f}",
                        f"{mem['ratio_backprop_over_zo']:.2f}x",
                    ],
                    [
                        "iterations / s",
                        f"{its['zo_int8']:.1f}",
                        f"{its['backprop_ti']:.1f}",
                        f"{its['zo_int8'] / its['backprop_ti']:.2f}x",
                    ],
                ],
            ),
            "",
            f"Loading the int8 model alone (imports + weights, no training) peaks at "
            f"{mem['load_int8_only_mib']:.0f} MiB; above that, ZO adds "
            f"{mem['zo_int8_mib'] - mem['load_int8_only_mib']:.0f} MiB and backprop TI "
            f"{mem['backprop_ti_mib'] - mem['load_int8_only_mib']:.0f} MiB. "
            f"Weights in "
            f"memory: float {r['weights_bytes']['float'] / 1024:.0f} KiB, int8 "
            f"{r['weights_bytes']['int8'] / 1024:.0f} KiB. The machine is shared with other jobs: "
            "rely on the ratios.",
            "",
            "Passes to target (PUTS on; target = 50 % / 80 % of the way from the initial token's "
            "monitoring loss to the backprop token's):",
            "",
            *[
                f"- {f:.0%}: without SG {_passes(p['without_sg'][str(f)])}; with SG "
                f"{_passes(p['with_sg'][str(f)])}"
                for f in TARGET_FRACTIONS
            ],
        ]
    )


if __name__ == "__main__":
    main()
