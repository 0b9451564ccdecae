"""Save a picture grid of digit-actions clips and corruptions to docs/img/data_preview.png.

Rows: one test clip per ID action, one per near-OOD action, a few far-OOD clips, then one
clip under each corruption at severity 3 and 5. Columns: frames of the clip.
Run: ``python -m bench.data_preview [--out PATH]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shared.data.actions import ID_ACTIONS, NEAR_OOD_ACTIONS  # noqa: E402
from shared.data.corruptions import CORRUPTIONS, corrupt_clip  # noqa: E402
from shared.data.digit_actions import DigitActionsConfig, generate_split  # noqa: E402

N_FAR_ROWS = 3
FRAMES_SHOWN = (0, 2, 4, 7)


def preview_rows() -> list[tuple[str, np.ndarray]]:
    """(row title, clip uint8 [T, H, W, 3]) for every row of the grid."""
    config = DigitActionsConfig(test_per_class=1, ood_per_action=1, far_count=N_FAR_ROWS)
    test, near, far = (generate_split(s, config) for s in ("test", "near", "far"))
    rows = [(f"ID: {a}", test.frames[test.actions.index(a)]) for a in ID_ACTIONS]
    rows += [(f"near: {a}", near.frames[near.actions.index(a)]) for a in NEAR_OOD_ACTIONS]
    rows += [(f"far: {a}", clip) for a, clip in zip(far.actions, far.frames, strict=True)]
    source = test.frames[0]
    for corruption in CORRUPTIONS:
        for severity in (3, 5):
            rng = np.random.default_rng(0)
            rows.append(
                (f"{corruption} s{severity}", corrupt_clip(source, corruption, severity, rng))
            )
    return rows


def save_grid(rows: list[tuple[str, np.ndarray]], out: Path) -> None:
    """Two panels of rows side by side, ``len(FRAMES_SHOWN)`` frames each."""
    half = (len(rows) + 1) // 2
    n_cols = len(FRAMES_SHOWN)
    fig, axes = plt.subplots(half, 2 * n_cols, figsize=(2 * n_cols * 1.1, half * 1.15))
    for ax in axes.ravel():
        ax.axis("off")
    for r, (title, clip) in enumerate(rows):
        row, col0 = r % half, (r // half) * n_cols
        for c, t in enumerate(FRAMES_SHOWN):
            ax = axes[row, col0 + c]
            ax.imshow(clip[t], interpolation="nearest")
            if c == 0:
                ax.set_title(title, fontsize=7, loc="left")
    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/data_preview.png"))
    args = parser.parse_args()
    save_grid(preview_rows(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
