"""The diffusion method through the hub: trained by the job runner, exported to int8,
downloaded by a device over gRPC like any model, personalised by the device CLI, the learned
token registered back."""

from __future__ import annotations

import hashlib

import pytest

from device_client.cli import main as device_main
from device_client.concept_images import write_concept_images
from device_client.gateway_client import GatewayClient
from server.jobs import JobRunner
from server.training.catalog import validate_config
from server.training.diffusion import export_int8, register_token
from shared.diffusion.artifact import int8_denoiser_from_bytes, token_bytes, token_from_bytes
from shared.diffusion.data import concept_images
from shared.model_names import DIFFUSION_MODEL, DIFFUSION_TOKEN_MODEL

TINY = {"steps": 3, "batch_size": 8, "width": 8, "token_dim": 8, "held_out_class": 4}


@pytest.fixture
def trained(gateway):
    registry = gateway.registry
    _, record = JobRunner(registry).run(DIFFUSION_MODEL, TINY)
    int8 = export_int8(registry)
    return record, int8


def test_config_is_validated():
    with pytest.raises(ValueError, match="held_out_class"):
        validate_config(DIFFUSION_MODEL, {"held_out_class": 10})


def test_device_downloads_the_int8_denoiser_and_personalises_it(
    gateway, device, trained, tmp_path, capsys
):
    record, int8 = trained
    assert (int8.version, int8.variant) == (record.version, "int8")
    assert int8.metrics["int8_artifact_bytes"] < int8.metrics["float_artifact_bytes"]
    model_file = tmp_path / "diffusion-int8.pt"
    with GatewayClient(gateway.target, token=device.token) as client:
        client.download_model(model_file, DIFFUSION_MODEL, "int8")
    data = model_file.read_bytes()
    assert hashlib.sha256(data).hexdigest() == int8.artifact_sha256
    model, payload = int8_denoiser_from_bytes(data)
    assert payload["held_out_class"] == 4 and model.config.width == 8

    write_concept_images(concept_images(5, held_out=4), tmp_path / "four")
    token_file, grid = tmp_path / "four.pt", tmp_path / "four.png"
    args = ["--state-dir", str(tmp_path / "state"), "personalize-diffusion"]
    args += ["--images", str(tmp_path / "four"), "--model", str(model_file), "--steps", "4"]
    args += ["--out", str(token_file), "--grid", str(grid)]
    assert device_main(args) == 0
    assert "8 forward passes" in capsys.readouterr().out and grid.is_file()
    token = token_from_bytes(token_file.read_bytes())
    assert token["denoiser_sha256"] == int8.artifact_sha256 and token["token"].shape == (8,)

    registered = register_token(gateway.registry, token_file.read_bytes())
    assert registered.name == DIFFUSION_TOKEN_MODEL
    assert registered.config["forward_passes"] == 8

    sample = tmp_path / "sample.png"
    args = ["sample-diffusion", "--token", str(token_file), "--model", str(model_file)]
    assert device_main([*args, "--n", "4", "--steps", "3", "--out", str(sample)]) == 0
    assert sample.is_file()


def test_tokens_of_unknown_denoisers_are_refused(gateway, trained):
    import torch

    with pytest.raises(ValueError, match="does not hold"):
        register_token(gateway.registry, token_bytes(torch.zeros(8), "0" * 64, {}))


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "image folder not found"), ("empty", "is empty"), ("nomodel", "no int8")],
)
def test_device_cli_bad_inputs_exit_2_with_a_message(tmp_path, capsys, setup, message):
    folder = tmp_path / "concept"
    if setup != "missing":
        folder.mkdir()
    if setup == "nomodel":
        write_concept_images(concept_images(2), folder)
    args = ["--state-dir", str(tmp_path / "state"), "personalize-diffusion", "--images"]
    assert device_main([*args, str(folder)]) == 2
    assert message in capsys.readouterr().err
