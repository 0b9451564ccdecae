"""Every OOD detector on the default base model, near- and far-OOD, with ROC curves.

    python -m bench.ood_baselines [--quick]

Writes bench/results/ood_baselines.json, the "OOD baselines" section of
BENCHMARKS.md and docs/img/ood_roc.png. Trains the default model first if the
registry (``$SECDOOD_DATA_DIR``) has none.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench.report import IMAGES, markdown_table, write_json, write_section  # noqa: E402
from server.evaluation import data_config_of, detector_scores, embed_splits  # noqa: E402
from server.registry.bundles import load_registered_bundle  # noqa: E402
from server.settings import Settings  # noqa: E402
from shared.ood.metrics import accuracy, ood_metrics, roc_points  # noqa: E402
from shared.ood.registry import DETECTORS  # noqa: E402
from shared.pipeline import OODPipeline  # noqa: E402


def plot_roc(scores: dict[str, dict], path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, split in zip(axes, ("near", "far"), strict=True):
        for name, by_split in scores.items():
            fpr, tpr = roc_points(by_split["test"], by_split[split])
            auroc = ood_metrics(by_split["test"], by_split[split])["auroc"]
            ax.plot(fpr, tpr, label=f"{name} ({auroc:.3f})", linewidth=1.4)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.axhline(0.95, color="grey", linewidth=0.6)
        ax.set_title(f"ID vs {split}-OOD")
        ax.set_xlabel("OOD accepted (FPR)")
        ax.legend(fontsize=7, loc="lower right", title="detector (AUROC)", title_fontsize=7)
    axes[0].set_ylabel("ID accepted (TPR)")
    fig.suptitle("SecDOOD base model: ROC of every detector (ID positive)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="accepted; this benchmark is fast")
    parser.parse_args(argv)
    torch.set_num_threads(2)

    record, bundle = load_registered_bundle(Settings(), train_if_missing=True)
    pipeline = OODPipeline(bundle)
    config = data_config_of(bundle)
    splits, embedded = embed_splits(pipeline, config)
    scores = detector_scores(pipeline, embedded, sorted(DETECTORS))
    test_logits = pipeline.score_features(embedded["test"]).logits
    id_acc = accuracy(test_logits, torch.as_tensor(splits["test"].labels))

    results = {
        name: {split: ood_metrics(s["test"], s[split]) for split in ("near", "far")}
        for name, s in scores.items()
    }
    rows = [
        [
            name,
            r["near"]["auroc"],
            r["near"]["fpr95"],
            r["near"]["aupr_in"],
            r["near"]["aupr_out"],
            r["far"]["auroc"],
            r["far"]["fpr95"],
            r["far"]["aupr_in"],
            r["far"]["aupr_out"],
        ]
        for name, r in results.items()
    ]
    headers = ["detector", "near AUROC", "near FPR95", "near AUPR-In", "near AUPR-Out"]
    headers += ["far AUROC", "far FPR95", "far AUPR-In", "far AUPR-Out"]
    table = markdown_table(headers, rows)
    sizes = {name: len(clips) for name, clips in splits.items()}
    write_json(
        "ood_baselines",
        {
            "model": {"name": record.name, "version": record.version},
            "id_accuracy": id_acc,
            "clips": sizes,
            "detectors": results,
        },
    )
    plot_roc(scores, IMAGES / "ood_roc.png")
    summary = (
        f"Model `{record.name}` v{record.version}; ID test accuracy {id_acc:.4f}; "
        f"clips: {sizes['test']} ID test, {sizes['near']} near-OOD, {sizes['far']} far-OOD. "
        "ID is the positive class; FPR95 = fraction of OOD accepted at 95 % ID retained.\n\n"
        f"{table}\n\n![ROC curves](docs/img/ood_roc.png)"
    )
    write_section("ood_baselines", "OOD detectors on the base model", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
