"""``secdood-device personalize-diffusion`` and ``sample-diffusion``.

    secdood-device download --name diffusion --variant int8
    secdood-device personalize-diffusion --images DIR [--steps 1000] [--out concept.pt]
    secdood-device sample-diffusion --token concept.pt --out grid.png

The first learns a token for the concept shown by the PNGs in DIR (16x16 grayscale) by
zeroth-order textual inversion through the downloaded int8 denoiser — forward passes only —
and saves it; the second writes a PNG grid of digits generated with a token (or a class).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from shared.model_names import DIFFUSION_MODEL

TOKENS_DIR = "tokens"


def _model_file(args: argparse.Namespace, state) -> Path:
    path = Path(args.model) if args.model else state.model_path(DIFFUSION_MODEL, "int8")
    if not path.is_file():
        raise FileNotFoundError(
            f"no int8 diffusion model at {path}; run `secdood-device download --name "
            f"{DIFFUSION_MODEL} --variant int8` first (or pass --model FILE)"
        )
    return path


def _load_model(path: Path):
    from shared.diffusion.artifact import int8_denoiser_from_bytes

    data = path.read_bytes()
    model, payload = int8_denoiser_from_bytes(data)
    return model, payload, hashlib.sha256(data).hexdigest()


def cmd_personalize_diffusion(args: argparse.Namespace, state) -> int:
    from tqdm import tqdm

    from device_client.concept_images import load_concept_images, write_grid
    from device_client.diffusion_personalization import (
        ZOInversionConfig,
        learn_token_zo,
        sample_with_token,
    )
    from device_client.state import write_atomically
    from shared.diffusion.artifact import token_bytes

    images = load_concept_images(args.images)  # bad folders fail before the model loads
    model, _payload, sha = _load_model(_model_file(args, state))
    config = ZOInversionConfig(
        steps=args.steps,
        n_directions=args.directions,
        subspace=not args.no_subspace,
        puts=not args.no_puts,
        seed=args.seed,
    )
    bar = tqdm(total=config.steps, desc="ZO textual inversion (int8)", unit="step", file=sys.stderr)

    def progress(step: int, loss: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")

    result = learn_token_zo(model, images, config, progress=progress)
    bar.close()
    info = {
        "name": args.name,
        "images": len(images),
        "method": "zo_textual_inversion_int8",
        "forward_passes": result.forward_passes,
        "final_loss": result.history[-1][1],
        **result.config,
    }
    out = Path(args.out) if args.out else state.root / TOKENS_DIR / f"{args.name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, token_bytes(result.token, sha, info))
    print(
        f"learned token {args.name!r} from {len(images)} images in {result.forward_passes} "
        f"forward passes (int8, no backprop); saved to {out}"
    )
    if args.grid:
        grid = write_grid(sample_with_token(model, result.token, 16, seed=args.seed), args.grid)
        print(f"samples written to {grid}")
    return 0


def cmd_sample_diffusion(args: argparse.Namespace, state) -> int:
    import torch

    from device_client.concept_images import write_grid
    from device_client.diffusion_personalization import sample_with_token
    from shared.diffusion.artifact import token_from_bytes

    if (args.token is None) == (args.digit is None):
        raise ValueError("give exactly one of --token FILE or --digit N")
    model, _payload, sha = _load_model(_model_file(args, state))
    if args.token is not None:
        token_path = Path(args.token)
        if not token_path.is_file():
            raise FileNotFoundError(f"token file not found: {token_path}")
        loaded = token_from_bytes(token_path.read_bytes())
        if loaded["denoiser_sha256"] != sha:
            raise ValueError(
                f"{token_path} was learned on another denoiser (sha256 "
                f"{loaded['denoiser_sha256'][:12]}…, this one {sha[:12]}…)"
            )
        token = loaded["token"]
    else:
        if not 0 <= args.digit < model.config.num_classes:
            raise ValueError(f"--digit must lie in [0, {model.config.num_classes - 1}]")
        token = model.class_token(torch.tensor([args.digit]))[0]
    images = sample_with_token(model, token, args.n, steps=args.steps, seed=args.seed)
    print(f"{args.n} samples written to {write_grid(images, args.out)}")
    return 0


def add_diffusion_commands(sub) -> None:
    """Register both commands on the ``secdood-device`` subparsers."""
    pers = sub.add_parser(
        "personalize-diffusion",
        help="learn a token for a new concept by ZO textual inversion on the int8 denoiser",
    )
    pers.add_argument("--images", required=True, metavar="DIR", help="16x16 grayscale PNGs")
    pers.add_argument("--name", default="concept", help="token name (file name in the state dir)")
    pers.add_argument("--model", metavar="FILE", help="int8 denoiser (default: downloaded)")
    pers.add_argument("--steps", type=int, default=1000)
    pers.add_argument("--directions", type=int, default=1, choices=(1, 2))
    pers.add_argument("--no-subspace", action="store_true", help="ablation: no subspace gradient")
    pers.add_argument("--no-puts", action="store_true", help="ablation: t uniform on [0, T)")
    pers.add_argument("--seed", type=int, default=0)
    pers.add_argument("--out", metavar="FILE", help="token file (default: STATE/tokens/NAME.pt)")
    pers.add_argument("--grid", metavar="PNG", help="also write 16 samples with the new token")
    pers.set_defaults(func=cmd_personalize_diffusion)

    sample = sub.add_parser("sample-diffusion", help="write a PNG grid of generated digits")
    sample.add_argument("--token", metavar="FILE", help="a learned token file")
    sample.add_argument("--digit", type=int, help="or one of the model's trained classes")
    sample.add_argument("--model", metavar="FILE", help="int8 denoiser (default: downloaded)")
    sample.add_argument("--n", type=int, default=16, help="number of samples")
    sample.add_argument("--steps", type=int, default=100, help="denoising steps (<= 1000)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", required=True, metavar="PNG")
    sample.set_defaults(func=cmd_sample_diffusion)
