"""CheckpointManager: atomic files, best/latest/periodic, exact resume, safe loading."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from model_store import CheckpointManager, StoreError


def make_run(
    seed: int,
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR, DataLoader]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    gen = torch.Generator().manual_seed(7)
    data = TensorDataset(torch.randn(64, 6, generator=gen), torch.randint(0, 2, (64,), generator=gen))
    return model, opt, sched, DataLoader(data, batch_size=8, shuffle=True)


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: object,
    loader: DataLoader,
    epochs: range,
    ckpt: CheckpointManager | None,
) -> None:
    for epoch in epochs:
        model.train()
        for x, y in loader:
            opt.zero_grad()
            # numpy and python RNGs take part too, as augmentation would.
            noise = float(np.random.rand()) * 1e-3 + random.random() * 1e-3
            nn.functional.cross_entropy(model(x + noise), y).backward()
            opt.step()
        sched.step()  # type: ignore[attr-defined]
        if ckpt:
            ckpt.save(
                epoch,
                model=model,
                optimizer=opt,
                scheduler=sched,
                metrics={"val_loss": 1.0 / (epoch + 1)},
            )


def test_resume_is_bit_identical_to_training_straight_through(tmp_path: Path) -> None:
    np.random.seed(0), random.seed(0)
    model, opt, sched, loader = make_run(0)
    train(model, opt, sched, loader, range(4), None)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    np.random.seed(0), random.seed(0)
    ckpt = CheckpointManager(tmp_path / "ck")
    model, opt, sched, loader = make_run(0)
    train(model, opt, sched, loader, range(2), ckpt)
    # A new process: fresh objects and different RNG states, all restored by resume.
    np.random.seed(99), random.seed(99)
    model, opt, sched, loader = make_run(123)
    start = CheckpointManager(tmp_path / "ck").resume(model, opt, sched)
    assert start == 2
    train(model, opt, sched, loader, range(start, 4), ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_folder_holds_periodic_best_and_latest_only(tmp_path: Path) -> None:
    ckpt = CheckpointManager(tmp_path, monitor="val_acc", mode="max", every_n_epochs=2, keep_last=2)
    model = nn.Linear(2, 2)
    accs = [0.5, 0.7, 0.6, 0.65, 0.69, 0.4, 0.3, 0.2]
    for epoch, acc in enumerate(accs):
        ckpt.save(epoch, model=model, metrics={"val_acc": acc})
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == [
        "best.pt",
        "checkpoint_epoch_0005.pt",
        "checkpoint_epoch_0007.pt",
        "latest.pt",
    ]
    best = torch.load(ckpt.best_path, weights_only=True)
    assert best["epoch"] == 1 and best["metrics"]["val_acc"] == 0.7
    latest = torch.load(ckpt.latest_path, weights_only=True)  # plain load, no allow-list
    assert set(latest) == {"epoch", "model", "optimizer", "scheduler", "metrics", "rng", "extra"}
    assert latest["epoch"] == 7
    # A manager reopened on the folder still knows the best value.
    again = CheckpointManager(tmp_path, monitor="val_acc", mode="max")
    again.save(8, model=model, metrics={"val_acc": 0.69})
    assert torch.load(again.best_path, weights_only=True)["epoch"] == 1


def test_resume_without_checkpoint_starts_at_zero(tmp_path: Path) -> None:
    assert CheckpointManager(tmp_path).resume(nn.Linear(1, 1)) == 0


def test_bad_arguments_and_unsafe_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="mode"):
        CheckpointManager(tmp_path, mode="best")
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        CheckpointManager(tmp_path / "f")
    ckpt = CheckpointManager(tmp_path / "ck")
    torch.save({"model": nn.Linear(1, 1)}, ckpt.latest_path)  # a pickled module, not a state_dict
    with pytest.raises(StoreError, match="not a loadable checkpoint"):
        ckpt.resume(nn.Linear(1, 1))


def test_map_location_loads_on_cpu(tmp_path: Path) -> None:
    ckpt = CheckpointManager(tmp_path)
    ckpt.save(0, model=nn.Linear(2, 2))
    loaded = ckpt.load(ckpt.latest_path, map_location="cpu")
    assert loaded["model"]["weight"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_checkpoint_loads_on_cpu(tmp_path: Path) -> None:
    ckpt = CheckpointManager(tmp_path)
    ckpt.save(0, model=nn.Linear(2, 2).cuda(), optimizer=None)
    model = nn.Linear(2, 2)
    assert ckpt.resume(model, map_location="cpu") == 1
    assert model.weight.device.type == "cpu"
