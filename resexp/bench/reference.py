"""The usual recipe `resexp bench` compares against, as in most public CIFAR ResNet
reproductions: torchvision dataset + DataLoader (workers = CPU count, pinned memory on CUDA) +
PIL RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize, fp32 NCHW,
torch.optim.SGD, and the per-step `loss.item()` / accuracy read most training scripts do."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision import transforms
from torchvision.datasets import CIFAR10

from resexp.bench.timing import Pipeline
from resexp.data import RawData
from resexp.models import build_model

STATS_IMAGES = 10_000  # the normalisation's per-channel mean and std are taken from this many training images


def reference_pipeline(cfg: DictConfig, raw: RawData, device: torch.device, batch: int) -> Pipeline:
    """The usual recipe on the same images and model as resexp's step."""
    # the recipes' constants (CIFAR-10's mean 0.4914, 0.4822, 0.4465, ...) are the dataset's own statistics
    sample = raw.train_images[:STATS_IMAGES].float().div_(255)
    dataset = ArrayDataset(raw, transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(sample.mean((0, 2, 3)).tolist(), sample.std((0, 2, 3)).tolist()),
    ]))
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=True,
    )
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, raw.channels, raw.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = iter(loader)
    seen = {"loss": 0.0, "correct": 0}

    def step() -> None:
        nonlocal batches
        try:
            images, labels = next(batches)
        except StopIteration:  # a new epoch: reshuffle, as `for epoch ...: for batch in loader` does
            batches = iter(loader)
            images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen["loss"] += loss.item()
        seen["correct"] += (logits.argmax(1) == labels).sum().item()

    return Pipeline(f"reference (DataLoader, {workers} workers, PIL transforms)", "fp32", "NCHW", "eager", step)


class ArrayDataset(CIFAR10):
    """torchvision's CIFAR10 over images already in memory: its own __getitem__ (PIL image,
    transforms) on the layout it reads from the batch files, HWC uint8 (HW for one channel, a
    greyscale PIL image, as torchvision's FashionMNIST makes)."""

    def __init__(self, raw: RawData, transform: Callable) -> None:
        images = raw.train_images.permute(0, 2, 3, 1)
        self.data = np.ascontiguousarray((images[..., 0] if raw.channels == 1 else images).numpy())
        self.targets = raw.train_labels.tolist()
        self.transform, self.target_transform = transform, None
