"""``secdood-server train --method diffusion`` then ``export --int8 --model diffusion``."""

from __future__ import annotations

import json

from server.cli import main
from shared.diffusion.artifact import int8_denoiser_from_bytes

TINY = ["--set", "steps=2", "--set", "width=8", "--set", "batch_size=4", "--set", "token_dim=8"]


def test_train_and_export_the_diffusion_denoiser(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SECDOOD_DATA_DIR", str(tmp_path))
    assert main(["export", "--int8", "--model", "diffusion"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--method", "diffusion", *TINY]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["model"] == "diffusion" and trained["metrics"]["held_out_class"] == 7
    assert main(["export", "--int8", "--model", "diffusion"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert (exported["variant"], exported["version"]) == ("int8", trained["version"])
    from server.registry import open_registry

    with open_registry(None, tmp_path) as registry:
        record = registry.get_model("diffusion", variant="int8")
        model, _ = int8_denoiser_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256))
    assert model.config.width == 8
