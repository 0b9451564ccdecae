"""What should describe a device to H: its window mean, or its mean and per-channel spread?

    python -m bench.description_study

H reads a camera from one encrypted vector, today the window mean u. A second moment — the
per-channel standard deviation s of the window — is as cheap for the device to compute and
keeps H affine in what is encrypted ([u_sel, s_sel] instead of u_sel: depth 1, twice the
encrypted values). Noise raises the spread of a channel, blur and occlusion lower it,
while the mean may barely move. This study asks whether H would read unfamiliar cameras
better from [u, s], before any change to the product.

H here is the server's ``device`` variant rebuilt on an input of either width —
Θ = Θ_global + up(down(m ⊙ (x − r))), ``down`` [in → 8] without bias, ``up`` [8 → D·C + C]
starting at zero, the mask m drawn as the server draws it (top-α of the window's
importance ranking at α ∈ {0.1, 0.25, 0.5, 1}, 25 % random masks; the same channels of s
as of u), Adam at 3e-3 for 3000 steps of 32 devices, cross-entropy of all a device's clips
plus 0.01 · ‖Θ − Θ_global‖² (rank and penalty as ``bench.personalization`` chose them). The
"mean" arm is the server's H; its numbers sit beside the server's own in the table.

Validation data only: the 40 devices of ``bench.refinement_study`` (H on all the training
devices) and the 48 of ``bench.family_holdout`` (H trained without the family). Per
device: Θ at α = 0.25 from a 64-clip window, and the device's refinement of it; accuracy
on the other clips. Nothing is chosen here. Writes bench/results/description_study.json
and its BENCHMARKS.md section.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.family_holdout import FAMILIES, holdout_family
from bench.personalization import cached
from bench.refinement_study import BenchDevices, bench_training_devices, validation_devices
from bench.report import machine, markdown_table, write_json, write_section
from device_client.head_refinement import refine_head
from server.training.device_embeddings import DeviceSet
from server.training.hypernetwork import draw_masks, rank_positions
from shared.channel_importance import channel_count

WINDOW = 64
ALPHAS = (0.1, 0.25, 0.5, 1.0)
RANK, PENALTY, STEPS, BATCH, LR = 8, 0.01, 3000, 32, 3e-3
DESCRIPTIONS = ("mean", "mean and std")


def describe(z: torch.Tensor, description: str) -> torch.Tensor:
    """The device's description of a window z [N, D] (float64)."""
    mean = z.mean(0)
    return mean if description == "mean" else torch.cat([mean, z.std(0)])


class WindowHyperNet(nn.Module):
    """Θ = Θ_global + up(down(m ⊙ (x − r))) on a description x of one or two widths of D."""

    def __init__(self, head_theta: torch.Tensor, width: int, reference: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("head_theta", head_theta)
        self.register_buffer("reference", reference)
        self.down = nn.Linear(width, RANK, bias=False).double()
        self.up = nn.Linear(RANK, head_theta.numel()).double()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        repeat = x.shape[-1] // mask.shape[-1]  # the same channels of every moment
        return self.head_theta + self.up(self.down(mask.repeat(1, repeat) * (x - self.reference)))


def fit(setup: BenchDevices, train: DeviceSet, description: str) -> WindowHyperNet:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    head = setup.bundle.model.fused_head
    head_theta = torch.cat([head.weight.detach().T.reshape(-1), head.bias.detach()]).double()
    z, y = train.z.double(), train.y
    x = torch.stack([describe(zd, description) for zd in z])  # each device's whole window
    positions = torch.as_tensor(np.stack([rank_positions(zd.numpy()) for zd in z]))
    model = WindowHyperNet(head_theta, x.shape[1], x.mean(0))
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    dim, classes = z.shape[2], setup.bundle.config.num_classes
    for _ in range(STEPS):
        devices = torch.randint(len(z), (BATCH,), generator=generator)
        mask = draw_masks(positions[devices], ALPHAS, 0.25, generator).double()
        theta = model(x[devices], mask)
        kernel = theta[:, : dim * classes].view(BATCH, dim, classes)
        logits = torch.einsum("bnd,bdc->bnc", z[devices], kernel) + theta[:, None, dim * classes :]
        loss = F.cross_entropy(logits.flatten(0, 1), y[devices].flatten())
        loss = loss + PENALTY * (theta - model.head_theta).pow(2).sum(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@torch.no_grad()
def device_accuracy(model: WindowHyperNet, description: str, z: np.ndarray, y: np.ndarray):
    """(Θ's, the refined head's) accuracy after the window; Θ from the window at α = 0.25."""
    window = torch.as_tensor(z[:WINDOW], dtype=torch.float64)
    keep = rank_positions(window.numpy()) < channel_count(0.25, window.shape[1])
    theta = model(describe(window, description)[None], torch.as_tensor(keep)[None].double())[0]
    theta = theta.numpy()
    classes = len(model.head_theta) // (window.shape[1] + 1)
    dim = window.shape[1]
    scored, truth = z[WINDOW:], y[WINDOW:]
    kernel, bias = theta[: dim * classes].reshape(dim, classes), theta[dim * classes :]
    refined = refine_head(window.numpy(), theta, classes)
    return (
        float(((scored @ kernel + bias).argmax(1) == truth).mean()),
        float((refined.logits(scored).argmax(1).numpy() == truth).mean()),
    )


def main() -> int:
    torch.set_num_threads(2)
    started = time.perf_counter()
    setup = bench_training_devices()
    train = setup.train
    groups = cached(
        setup.cache,
        {**setup.key, "what": "refinement_study"},
        lambda: validation_devices(setup.bundle),
    )
    cases: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for group, devices in groups.items():
        cases[f"validation: {group}"] = [(d["val"].numpy(), d["labels"].numpy()) for d in devices]
    subsets = {}
    for family in FAMILIES:
        subsets[family], devices = holdout_family(setup, family)
        cases[f"held-out training family: {family}"] = [(d["id"], d["labels"]) for d in devices]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for description in DESCRIPTIONS:
        print(f"H on the window's {description} ...", flush=True)
        everyone = fit(setup, train, description)
        per_family = {f: fit(setup, subsets[f], description) for f in FAMILIES}
        for name, devices in cases.items():
            family = name.split(": ")[1]
            model = per_family[family] if name.startswith("held-out") else everyone
            scores = np.array([device_accuracy(model, description, z, y) for z, y in devices])
            results.setdefault(name, {})[description] = {
                "theta_acc": float(scores[:, 0].mean()),
                "refined_acc": float(scores[:, 1].mean()),
                "devices": len(devices),
            }
        print(f"  done ({time.perf_counter() - started:.0f} s)", flush=True)
    table = markdown_table(
        ["devices", "n", *(f"{d}: Θ / refined" for d in DESCRIPTIONS),
         "mean and std − mean: Θ / refined (points)"],
        [
            [name, r["mean"]["devices"],
             *(f"{r[d]['theta_acc']:.3f} / {r[d]['refined_acc']:.3f}" for d in DESCRIPTIONS),
             f"{100 * (r['mean and std']['theta_acc'] - r['mean']['theta_acc']):+.1f} / "
             f"{100 * (r['mean and std']['refined_acc'] - r['mean']['refined_acc']):+.1f}"]
            for name, r in results.items()
        ],
    )  # fmt: skip
    write_json(
        "description_study",
        {"results": results, "window": WINDOW, "rank": RANK, "penalty": PENALTY,
         "steps": STEPS, "seconds": round(time.perf_counter() - started, 1),
         "machine": machine()},
    )  # fmt: skip
    print(table)
    write_section(
        "description_study",
        "What describes a device to H: window mean vs mean and per-channel std (validation)",
        "H as the server's `device` variant (rank 8, penalty 0.01, the server's masks and "
        "optimiser), on the window's mean or on its mean and per-channel standard deviation "
        "(the same selected channels of both); Θ at α = 0.25 from a "
        f"{WINDOW}-clip window and the device's refinement of it, ID accuracy on the other "
        "clips. Validation devices of the refinement study (H on all training devices) and "
        "of the held-out training families (H without the family). Nothing chosen here. "
        f"Machine: {machine()}.\n\n{table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
