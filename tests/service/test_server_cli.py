"""``secdood-server train`` and ``eval`` end to end on the real built-in data (tiny model)."""

from __future__ import annotations

import json

import pytest
from support import free_loopback_port

from server.cli import main

SMALL_DATA = {"train_per_class": 40, "val_per_class": 10, "test_per_class": 10,
              "ood_per_action": 8, "far_count": 40}  # fmt: skip
TINY = ["--set", "epochs=1", "--set", "widths=[4,8,8]", "--set", "embed_dim=16",
        "--set", f"data={json.dumps(SMALL_DATA)}"]  # fmt: skip


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SECDOOD_DATA_DIR", str(tmp_path))
    return tmp_path


def test_train_then_eval_json(data_dir, capsys):
    assert main(["train", *TINY]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["model"] == "secdood_base" and trained["version"] == 1
    assert 0.0 <= trained["metrics"]["val_accuracy"] <= 1.0

    assert main(["eval", "--json", "--shift-clips", "12"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["id_accuracy"] <= 1.0
    assert set(report["shift"]["severity"]) == {"1", "2", "3", "4", "5"}
    assert len(report["shift"]["per_corruption"]) >= 10
    for name, result in report["detectors"].items():
        assert set(result) == {"near", "near_hard", "far"}, name  # "near" = near-easy
        for split in ("near", "near_hard", "far"):
            metrics = result[split]
            assert set(metrics) == {"auroc", "fpr95", "aupr_in", "aupr_out"}, name
            assert all(0.0 <= v <= 1.0 for v in metrics.values()), (name, metrics)
    assert {"msp", "maxlogit", "energy", "gen", "mahalanobis", "knn", "vim"} <= set(
        report["detectors"]
    )

    assert main(["eval", "--shift-clips", "12"]) == 0
    table = capsys.readouterr().out
    assert "near-easy AUROC" in table and "near-hard FPR95" in table and "Device shift" in table

    # int8 export of the same version, calibrated on the model's own training data
    assert main(["export", "--int8", "--calibration-clips", "16"]) == 0
    from server.registry import open_registry
    from shared.models.int8 import is_int8_artifact

    with open_registry(None, data_dir) as registry:
        float_record = registry.get_model("secdood_base", variant="float")
        int8_record = registry.get_model("secdood_base", variant="int8")
        assert int8_record.version == float_record.version == 1
        assert is_int8_artifact(registry.artifacts.read_bytes(int8_record.artifact_sha256))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--set", "epochs=-1"], "epochs"),
        (["train", "--set", "colour=blue"], "colour"),
        (["train", "--set", "novalue"], "key=value"),
        (["eval"], "not found"),
    ],
)
def test_bad_commands_fail_clearly(data_dir, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["eval"], ["serve", "--grpc-port", "0", "--rest-port", "0"], ["train", "--set", "epochs=1"]],
    ids=["eval", "serve", "train"],
)
def test_unreachable_database_url_fails_clearly(data_dir, capsys, monkeypatch, argv):
    # serve is the deployment case: a server container given a wrong SECDOOD_DB_URL
    port = free_loopback_port()  # nothing listens there
    monkeypatch.setenv("SECDOOD_DB_URL", f"postgresql://secdood:hunter2@127.0.0.1:{port}/registry")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the registry database" in err and f"127.0.0.1:{port}" in err
    assert "SECDOOD_DB_URL" in err and "hunter2" not in err and "Traceback" not in err


def test_help_and_methods_say_what_things_are(capsys):
    from server.training.catalog import method_names

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == method_names()
    assert all(len(line.split()) > 2 for line in lines)  # a description after every name
    for argv in (["--help"], ["serve", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "``" not in out
        if argv[0] == "serve":
            assert "--grpc-port" in out and "SECDOOD_ENROLLMENT_KEY" in out and "keys.json" in out
        if argv[0] == "train":
            assert "--set KEY=VALUE" in out and "repeatable" in out
