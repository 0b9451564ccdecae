"""torchrun with two CPU processes (gloo) trains what one process trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import free_loopback_port

from server.training.data_parallel import DataParallel

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def train(kind: str, out_dir: Path, processes: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Every rank's final parameters after running the worker (torchrun when processes > 1)."""
    out_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "MASTER_ADDR"}}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env["OMP_NUM_THREADS"] = "1"
    if processes == 1:
        command = [sys.executable, str(WORKER), kind, str(out_dir), str(seed)]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1", f"--master_port={free_loopback_port()}",
            str(WORKER), kind, str(out_dir), str(seed),
        ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(processes)]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_alone_the_hooks_change_nothing() -> None:
    parallel = DataParallel.from_environment()
    assert (parallel.rank, parallel.world_size, parallel.is_main) == (0, 1, True)
    indices = torch.arange(10)
    assert torch.equal(parallel.shard(indices), indices)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert torch.equal(parallel.wrap(model)(x), model(x))


def test_shards_split_a_batch_without_overlap() -> None:
    indices = torch.arange(11)
    shards = [DataParallel(rank, 3).shard(indices) for rank in range(3)]
    assert sorted(torch.cat(shards).tolist()) == indices.tolist()


def test_uneven_shares_are_weighted_by_their_size() -> None:
    # 11 samples on 3 ranks: 4, 4, 3; weighted means of the shares give the batch mean.
    ranks = [DataParallel(rank, 3) for rank in range(3)]
    values = torch.arange(11, dtype=torch.float64) ** 2
    means = [values[p.shard(torch.arange(11))].mean() * p.share_weight / 3 for p in ranks]
    assert [p.share_weight for p in ranks] == [12 / 11, 12 / 11, 9 / 11]
    assert torch.isclose(sum(means), values.mean())


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach() for name, value in model.named_parameters()}


def test_two_processes_equal_one_on_a_batchnorm_free_model(tmp_path: Path) -> None:
    from ddp_worker import train_mlp  # the one-process runs here, in this process

    rank0, rank1 = train("mlp", tmp_path / "two", processes=2)
    for hook in ("wrap", "attach"):
        alone = parameters(train_mlp(seed=0, hook=hook))
        assert max_difference(rank0[hook], rank1[hook]) == 0.0, hook  # replicas identical
        # weighted averages of the shares' gradients = the batch gradient
        assert max_difference(alone, rank0[hook]) < 1e-5, hook
        other_seed = parameters(train_mlp(seed=1, hook=hook))
        assert max_difference(alone, other_seed) > 0.1, hook  # the comparison can fail


@pytest.mark.slow
def test_base_model_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    # BatchNorm statistics are per rank (half batches), so this is a tolerance, measured
    # against what a different seed changes: two processes must stay far closer.
    (alone,) = train("base", tmp_path / "one", processes=1)
    rank0, rank1 = train("base", tmp_path / "two", processes=2)
    assert max_difference(rank0, rank1) == 0.0
    other_seed = train("base", tmp_path / "seed1", processes=1, seed=1)[0]
    assert max_difference(alone, rank0) < 0.25 * max_difference(alone, other_seed)


@pytest.mark.slow  # three real trainers, twice: a minute or more on 2 shared cores
def test_hypernetwork_and_hub_trainers_under_torchrun_equal_one_process(tmp_path: Path) -> None:
    """The HyperNetwork (``attach``), Forward-Forward (one optimiser per layer, uneven last
    batch) and the predictive-coding backprop baseline (batch-sum rule) under two processes."""
    from ddp_worker import train_hub

    (alone,) = train("hub", tmp_path / "one", processes=1)
    rank0, rank1 = train("hub", tmp_path / "two", processes=2)
    other_seed = train_hub(seed=1)
    assert set(alone) == {"hypernetwork", "ff", "pc_bp"}
    for method in alone:
        assert max_difference(rank0[method], rank1[method]) == 0.0, method  # replicas agree
        assert max_difference(alone[method], rank0[method]) < 1e-5, method
        assert max_difference(alone[method], other_seed[method]) > 0.05, method  # can fail
