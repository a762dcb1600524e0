"""The demo: a small ConvNet on scikit-learn's bundled 8x8 digits, trained with the seed's
Trainer pattern (train/validation split, CheckpointManager, best model) and published twice,
each version with its labels file (`labels.json`) for the demo's handler
(`server.handlers.digits:DigitsHandler`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .checkpoint import CheckpointManager
from .manifest import Manifest
from .runtimes import load_state_dict
from .store import ModelStore
from .verify import load_examples

NAME = "digits"
LABELS = [str(d) for d in range(10)]  # output i is the digit i
LABELS_FILE = "labels.json"


class ConvNet(nn.Module):
    """Input [N, 1, 8, 8] FP32 (pixels scaled to 0..1), output [N, 10] logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


def digits_data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The 1,797 bundled 8x8 digits, split 80/20 with a fixed seed (no download)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(y, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(order))
    train, val = order[:cut], order[cut:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val])


class Trainer:
    """The seed's Trainer, with checkpoints written by CheckpointManager."""

    def __init__(
        self,
        model: nn.Module,
        train: TensorDataset,
        val: TensorDataset,
        ckpt_dir: Path,
        lr: float = 1e-3,
    ) -> None:
        self.model = model
        self.train_loader = DataLoader(train, batch_size=64, shuffle=True)
        self.val_loader = DataLoader(val, batch_size=256)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.checkpoints = CheckpointManager(ckpt_dir, monitor="val_acc", mode="max", keep_last=2)

    def train_epoch(self) -> float:
        self.model.train()
        total = 0.0
        for data, targets in self.train_loader:
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(data), targets)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(data)
        return total / len(self.train_loader.dataset)  # type: ignore[arg-type, no-any-return]

    def validate(self) -> tuple[float, float]:
        self.model.eval()
        loss, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for data, targets in self.val_loader:
                out = self.model(data)
                loss += self.criterion(out, targets).item() * len(data)
                correct += int((out.argmax(1) == targets).sum())
                seen += len(data)
        return loss / seen, correct / seen

    def fit(self, epochs: int, on_epoch: Callable[[int, dict[str, float]], None]) -> None:
        start = self.checkpoints.resume(self.model, self.optimizer)
        for epoch in range(start, epochs):
            train_loss = self.train_epoch()
            val_loss, val_acc = self.validate()
            metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc}
            self.checkpoints.save(epoch, model=self.model, optimizer=self.optimizer, metrics=metrics)
            on_epoch(epoch, metrics)


def run_demo(store_root: str | Path, epochs: int = 12, early_epoch: int = 1, seed: int = 0) -> list[int]:
    """Train, publish an early version and the final best; returns the published versions."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    store = ModelStore(store_root)
    ckpt_dir = Path(store_root) / ".checkpoints" / NAME
    train, val = digits_data(seed)
    model = ConvNet()
    trainer = Trainer(model, train, val, ckpt_dir)
    example = val.tensors[0][:4]
    published: list[int] = []

    def publish(metrics: dict[str, float], epoch: int) -> None:
        version = store.publish(
            NAME,
            model,
            example_inputs=example,
            metrics={"val_acc": metrics["val_acc"], "val_loss": metrics["val_loss"]},
            model_factory=ConvNet,
            factory_kwargs={"num_classes": 10},
            description="ConvNet on scikit-learn's 8x8 digits (demo)",
            training={"epoch": epoch, "optimizer": "Adam"},
            data_files={LABELS_FILE: json.dumps(LABELS).encode()},
        )
        published.append(version)

    bar = tqdm(total=epochs, desc="training digits", unit="epoch")

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(val_acc=f"{metrics['val_acc']:.3f}", val_loss=f"{metrics['val_loss']:.3f}")
        if epoch == early_epoch:
            publish(metrics, epoch)

    t0 = time.perf_counter()
    trainer.fit(epochs, on_epoch)
    bar.close()
    best = trainer.checkpoints.load(trainer.checkpoints.best_path)
    model.load_state_dict(best["model"])
    publish(best["metrics"], best["epoch"])
    print(f"published {NAME} versions {published} in {time.perf_counter() - t0:.1f}s")
    return published


def add_labels(store_root: str | Path) -> int | None:
    """Republish the newest valid digits version with `labels.json` when it lacks it (a store
    made by a release before data files); returns the new version, or None when nothing was due.

    Same weights, metrics and examples, no training: the handler can serve the store at once.
    """
    store = ModelStore(store_root)
    versions = store.versions(NAME)
    if not versions:
        return None
    folder = store.path(NAME, versions[-1])
    manifest = Manifest.load(folder)
    state = manifest.artifact("state_dict")
    if manifest.data_file(LABELS_FILE) is not None or state is None or manifest.model_factory is None:
        return None
    model = ConvNet(**manifest.model_factory.kwargs)
    model.load_state_dict(load_state_dict(folder / state.path))
    inputs, _ = load_examples(folder / manifest.examples.path)
    return store.publish(
        NAME,
        model.eval(),
        example_inputs=tuple(torch.from_numpy(a) for a in inputs.values()),
        formats=tuple(a.format for a in manifest.artifacts),
        metrics=manifest.metrics,
        model_factory=ConvNet,
        factory_kwargs=manifest.model_factory.kwargs,
        description=manifest.description,
        training={**(manifest.training or {}), "republished_from": manifest.version},
        data_files={LABELS_FILE: json.dumps(LABELS).encode()},
    )
