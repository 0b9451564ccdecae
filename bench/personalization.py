"""Benchmark: SecDOOD personalisation vs the global head vs per-device fine-tuning.

Usage::

    python -m bench.personalization [--quick] [--base-model model.pt]

Without ``--base-model`` the latest registered base model of ``$SECDOOD_DATA_DIR`` is used
(trained first if there is none).

Simulated devices 0..K-1 each see their camera corruption (severity 5) on held-out
test clips and on near/far OOD clips. For α ∈ {0.1, 0.25, 0.5, 1.0} (importance
selection over a 64-clip window of the device's ID stream) and random selection at
0.25, per-sample Θ = H(z ⊙ mask) gives the logits; Energy and MSP score them. The
accuracy/AUROC numbers use plaintext mode (the cloud's same restricted affine map);
the HE cost (cloud seconds per request, median), bytes up/down and the max
|encrypted − plaintext| logit difference come from real encrypted requests through
a loopback gRPC gateway with the default CKKS parameters. Writes
bench/results/personalization.json and docs/img/personalization.png; prints a
markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.report import default_base_model_path, write_section
from device_client.gateway_client import GatewayClient
from device_client.keyring import DeviceKeyring, PersonalizationSettings
from device_client.state import DeviceState
from server.gateway import build_grpc_server
from server.registry import open_registry
from server.settings import Settings
from server.training.hypernetwork import (
    HyperNetworkTrainConfig,
    collect_device_embeddings,
    embed_clipset,
    fit_hypernetwork,
    shifted_clips,
)
from shared.channel_importance import channel_importance, random_channels, top_alpha_channels
from shared.data.corruptions import device_shift
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.he import CKKSParams
from shared.hypernet import hypernet_state, personalised_logits
from shared.model_names import HYPERNETWORK
from shared.models.checkpoint import load_bundle
from shared.ood.metrics import accuracy, ood_metrics
from shared.pipeline import OODPipeline

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = (0.1, 0.25, 0.5, 1.0)
ENROLL_KEY = "bench-key"
WINDOW = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="base model artifact (.pt); default: the registry's")
    parser.add_argument("--quick", action="store_true", help="fewer devices/clips (< 5 min)")
    parser.add_argument("--he-requests", type=int, default=None, help="encrypted requests/entry")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/personalization.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/img/personalization.png")
    return parser.parse_args()


def eval_device_embeddings(bundle, devices: int, per_split: int, seed: int = 0) -> list[dict]:
    """Per device: test ID z/y and near/far OOD z, all through that device's corruption."""
    rng = np.random.default_rng(seed)
    splits = {name: load_split(name, DigitActionsConfig()) for name in ("test", "near", "far")}
    splits = {k: v.subset(rng.permutation(len(v))[:per_split]) for k, v in splits.items()}
    out = []
    for index in range(devices):
        shift = device_shift(index)
        entry = {"shift": shift.corruption}
        for name, clips in splits.items():
            shifted = shifted_clips(clips, shift.corruption, shift.severity, 3000 + index)
            entry[name] = embed_clipset(bundle.model, shifted).double()
        entry["labels"] = torch.as_tensor(splits["test"].labels)
        out.append(entry)
        print(f"  embedded eval device {index} ({shift.corruption})", flush=True)
    return out


def scores(pipeline: OODPipeline, z: torch.Tensor, logits: torch.Tensor) -> dict[str, np.ndarray]:
    verdicts = pipeline.score_features(z.float(), "energy", ("msp",), logits=logits.float())
    return {name: s.numpy() for name, s in verdicts.scores.items()}


def detection_metrics(pipeline, device, logits_of) -> dict[str, float]:
    """ID accuracy and near/far AUROC/FPR95 (Energy and MSP) for one device."""
    id_logits = logits_of(device["test"])
    id_scores = scores(pipeline, device["test"], id_logits)
    result = {"id_accuracy": accuracy(id_logits, device["labels"])}
    for ood in ("near", "far"):
        ood_scores = scores(pipeline, device[ood], logits_of(device[ood]))
        for detector in ("energy", "msp"):
            metrics = ood_metrics(id_scores[detector], ood_scores[detector])
            suffix = "" if detector == "energy" else "_msp"
            result[f"{ood}_auroc{suffix}"] = metrics["auroc"]
            result[f"{ood}_fpr95{suffix}"] = metrics["fpr95"]
    return result


def average(per_device: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in per_device])) for k in per_device[0]}


def finetuned_head(bundle, z: torch.Tensor, y: torch.Tensor, epochs: int = 300):
    """The upper bound: the fused head fine-tuned with backprop on the device's labelled data."""
    head = torch.nn.Linear(z.shape[1], bundle.config.num_classes).double()
    head.load_state_dict({k: v.double() for k, v in bundle.model.fused_head.state_dict().items()})
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        optimiser.zero_grad()
        F.cross_entropy(head(z), y).backward()
        optimiser.step()
    return head.requires_grad_(False)


def he_costs(hypernet, devices, requests: int) -> dict[str, dict[str, float]]:
    """Encrypted requests over a loopback gateway: cloud seconds, bytes, logit agreement.

    The device side is the product's: a :class:`DeviceKeyring` (default CKKS
    parameters) makes the keys, uploads the public context when the cloud asks
    for it, and its Personalizer encrypts, sends and decrypts.
    """
    state = io.BytesIO()
    torch.save(hypernet_state(hypernet), state)
    a, c = (t.numpy() for t in hypernet.affine_map())
    embed_dim, classes = a.shape[0], hypernet.config.num_classes
    costs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder, open_registry(None, folder) as registry:
        registry.register_model(HYPERNETWORK, HYPERNETWORK, {}, {}, state.getvalue())
        settings = Settings(
            data_dir=Path(folder),
            host="127.0.0.1",
            grpc_port=0,
            enrollment_key=ENROLL_KEY,
            max_upload_bytes=64 * 1024 * 1024,
        )
        server, port, _ = build_grpc_server(registry, settings)
        server.start()
        target = f"127.0.0.1:{port}"
        try:
            client = GatewayClient(target, timeout_s=300)
            device_id = client.enroll(ENROLL_KEY, "bench-cam").device_id
            keyring = DeviceKeyring(DeviceState(Path(folder) / "device"), CKKSParams())
            z_all = devices[0]["test"].numpy()
            window = z_all[:WINDOW]
            rng = np.random.default_rng(0)
            for key, alpha, method in [*((str(a), a, "importance") for a in ALPHAS)] + [
                ("random_0.25", 0.25, "random")
            ]:
                personalizer = keyring.personalizer(
                    client,
                    target,
                    device_id,
                    embed_dim,
                    classes,
                    model_key="bench",
                    settings=PersonalizationSettings(alpha, "per_sample"),
                )
                seconds, ups, downs, diffs = [], [], [], []
                for i in range(requests):
                    z = z_all[WINDOW + i]
                    idx = (
                        top_alpha_channels(channel_importance(window), alpha)
                        if method == "importance"
                        else random_channels(z.size, alpha, rng)
                    )
                    before = dataclasses.replace(personalizer.stats)
                    theta = personalizer.request_theta(z, idx)
                    after = personalizer.stats
                    plain_theta = z[idx] @ a[idx] + c
                    zt = torch.from_numpy(z)[None]
                    diff = personalised_logits(zt, torch.from_numpy(theta), classes) - (
                        personalised_logits(zt, torch.from_numpy(plain_theta), classes)
                    )
                    seconds.append(after.he_seconds - before.he_seconds)
                    ups.append(after.bytes_up - before.bytes_up)
                    downs.append(after.bytes_down - before.bytes_down)
                    diffs.append(float(diff.abs().max()))
                costs[key] = {
                    "he_seconds": statistics.median(seconds),
                    "bytes_up": float(statistics.median(ups)),
                    "bytes_down": float(statistics.median(downs)),
                    "max_logit_diff": max(diffs),
                }
                print(f"  HE {key}: {costs[key]}", flush=True)
            client.close()
        finally:
            server.stop(grace=None).wait()
    return costs


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.base_model is None:
        args.base_model = str(default_base_model_path())
    bundle = load_bundle(args.base_model)
    pipeline = OODPipeline(bundle)
    quick = args.quick
    train_config = HyperNetworkTrainConfig(
        base_model_path=args.base_model,
        devices=4 if quick else 8,
        clips_per_device=300 if quick else 600,
        val_clips_per_device=60 if quick else 300,
        epochs=20 if quick else 40,
        threads=1,
    )
    print("embedding training devices ...", flush=True)
    embeddings = collect_device_embeddings(train_config, bundle)
    hypernet, train_metrics = fit_hypernetwork(train_config, bundle, embeddings)
    print(f"H trained: {json.dumps(train_metrics)}", flush=True)
    print("embedding evaluation devices ...", flush=True)
    devices = eval_device_embeddings(bundle, train_config.devices, 150 if quick else 300)

    a, c = (t.numpy() for t in hypernet.affine_map())
    classes = bundle.config.num_classes
    rng = np.random.default_rng(1)

    def mask_of(indices: np.ndarray) -> np.ndarray:
        mask = np.zeros(a.shape[0])
        mask[indices] = 1.0
        return mask

    def personalised(masks_for):
        """Per-sample logits; ``masks_for(n)`` gives one mask [D] or one per sample [n, D]."""

        def logits_of(z: torch.Tensor) -> torch.Tensor:
            mask = masks_for(len(z))
            theta = torch.from_numpy((z.numpy() * mask) @ a + c)  # per-sample Θ, [N, D·C + C]
            return personalised_logits(z, theta, classes)

        return logits_of

    results: dict = {"alpha": {}}
    head = bundle.model.fused_head
    weight, bias = head.weight.detach().double(), head.bias.detach().double()
    global_rows, tuned_rows = [], []
    per_alpha: dict[str, list] = {str(a_): [] for a_ in ALPHAS}
    random_rows, device_mode_rows = [], []
    for index, device in enumerate(devices):
        window = device["test"][:WINDOW].numpy()
        importance = channel_importance(window)
        for alpha in ALPHAS:
            fixed_mask = mask_of(top_alpha_channels(importance, alpha))
            chosen = personalised(lambda n, m=fixed_mask: m)
            per_alpha[str(alpha)].append(detection_metrics(pipeline, device, chosen))

        def random_masks(n: int) -> np.ndarray:  # a fresh random selection per request
            return np.stack([mask_of(random_channels(a.shape[0], 0.25, rng)) for _ in range(n)])

        random_rows.append(detection_metrics(pipeline, device, personalised(random_masks)))
        mask = mask_of(top_alpha_channels(importance, 0.25))
        device_theta = torch.from_numpy((window.mean(0) * mask) @ a + c)
        device_mode_rows.append(
            detection_metrics(
                pipeline, device, lambda z, t=device_theta: personalised_logits(z, t, classes)
            )
        )
        global_rows.append(detection_metrics(pipeline, device, lambda z: z @ weight.T + bias))
        # device index i is training-embedding entry i + 1 (entry 0 is the clean device)
        tuned = finetuned_head(
            bundle, embeddings.train_z[index + 1].double(), embeddings.train_y[index + 1]
        )
        tuned_rows.append(detection_metrics(pipeline, device, tuned))

    requests = args.he_requests or (3 if quick else 5)
    print(f"encrypted requests ({requests} per entry) ...", flush=True)
    costs = he_costs(hypernet, devices, requests)
    zero_cost = {"he_seconds": 0.0, "bytes_up": 0.0, "bytes_down": 0.0}
    for alpha in ALPHAS:
        results["alpha"][str(alpha)] = {**average(per_alpha[str(alpha)]), **costs[str(alpha)]}
    results["random_0.25"] = {**average(random_rows), **costs["random_0.25"]}
    results["per_device_0.25"] = {
        **average(device_mode_rows),
        **{k: v for k, v in costs["0.25"].items() if k != "max_logit_diff"},
    }
    results["global"] = {**average(global_rows), **zero_cost}
    results["finetuned"] = {**average(tuned_rows), **zero_cost}
    results["per_device_shift"] = [d["shift"] for d in devices]
    results["per_device_accuracy"] = {
        "global": [r["id_accuracy"] for r in global_rows],
        "alpha_0.25": [r["id_accuracy"] for r in per_alpha["0.25"]],
        "finetuned": [r["id_accuracy"] for r in tuned_rows],
    }
    results["hypernetwork_training"] = train_metrics
    results["he_time_ratio_0.25_vs_1.0"] = costs["0.25"]["he_seconds"] / costs["1.0"]["he_seconds"]
    results["setup"] = {
        "quick": quick,
        "devices": len(devices),
        "eval_clips_per_split": len(devices[0]["test"]),
        "ckks": CKKSParams().model_dump(),
        "he_requests_per_entry": requests,
        "torch_threads": 1,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    plot(results, args.plot)
    write_section(
        "personalization",
        "Personalisation: HyperNetwork over CKKS vs global head vs fine-tuning",
        f"{'Quick' if quick else 'Full'} run: {results['setup']['devices']} shifted devices "
        f"(severity 5), {results['setup']['eval_clips_per_split']} held-out clips per split each, "
        f"CKKS {results['setup']['ckks']}. Cloud HE time of α = 0.25 vs α = 1.0 (same run): "
        f"{results['he_time_ratio_0.25_vs_1.0']:.2f}×.\n\n"
        f"{table_markdown(results)}\n\n![personalisation](docs/img/personalization.png)",
    )
    print(f"wrote {args.out} and {args.plot} in {results['setup']['seconds']} s")


def _rows(results: dict):
    for alpha in ALPHAS:
        yield f"SecDOOD α={alpha}", results["alpha"][str(alpha)]
    yield "SecDOOD random 0.25", results["random_0.25"]
    yield "SecDOOD per-device 0.25", results["per_device_0.25"]
    yield "global head", results["global"]
    yield "fine-tuned head (backprop)", results["finetuned"]


def print_table(results: dict) -> None:
    print(table_markdown(results))


def table_markdown(results: dict) -> str:
    lines = [
        "| setting | ID acc | near AUROC (E/MSP) | far AUROC (E/MSP) | near FPR95 (E) "
        "| cloud HE s/req | bytes up | bytes down |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in _rows(results):
        lines.append(
            f"| {name} | {r['id_accuracy']:.3f} | {r['near_auroc']:.3f}/{r['near_auroc_msp']:.3f} "
            f"| {r['far_auroc']:.3f}/{r['far_auroc_msp']:.3f} | {r['near_fpr95']:.3f} "
            f"| {r['he_seconds']:.3f} | {r['bytes_up'] / 1024:.0f} KiB "
            f"| {r['bytes_down'] / 1024:.0f} KiB |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rows = zip(*_rows(results), strict=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    for offset, key in ((-0.25, "id_accuracy"), (0.0, "near_auroc"), (0.25, "far_auroc")):
        left.bar(x + offset, [r[key] for r in rows], width=0.25, label=key)
    left.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    left.set_ylim(0, 1.02)
    left.set_title("shifted devices: accuracy and AUROC (Energy)")
    left.legend(fontsize=8, loc="lower left")
    alphas = [str(a) for a in ALPHAS]
    right.plot(ALPHAS, [results["alpha"][a]["he_seconds"] for a in alphas], "o-")
    right.set_xlabel("α (fraction of channels encrypted)")
    right.set_ylabel("cloud HE seconds per request (median)")
    right.set_title("selective encryption cost")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
