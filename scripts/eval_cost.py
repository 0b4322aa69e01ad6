"""Time the trainer's evaluate() on a 10,000-image split (CIFAR-10's test size), ResNet-56, the
CUDA default runtime; its share of a run that evaluates every 1000 steps is eval / (1000 * step)."""
import time

import torch

from resexp.config import compose
from resexp.data import build_data
from resexp.engine.runtime import Runtime
from resexp.engine.evaluate import evaluate
from resexp.models import build_model

cfg = compose(["model=resnet56", "data=synthetic", "data.test_size=10000"])
runtime = Runtime.from_config(cfg.trainer)
data = build_data(cfg.data, runtime.device, 128, 0, runtime.memory_format)
model = build_model(cfg.model, 3, 10).to(runtime.device, memory_format=runtime.memory_format).train()
for _ in range(3):
    evaluate(model, data, int(cfg.trainer.eval_batch_size), runtime.memory_format, runtime.autocast)
torch.cuda.synchronize() if runtime.device.type == "cuda" else None
times = []
for _ in range(10):
    t = time.perf_counter()
    evaluate(model, data, int(cfg.trainer.eval_batch_size), runtime.memory_format, runtime.autocast)
    times.append(time.perf_counter() - t)
times.sort()
ms = 1000 * times[len(times) // 2]
print(f"evaluate ResNet-56 on 10,000 images, batch {cfg.trainer.eval_batch_size}: median {ms:.1f} ms "
      f"(all {[round(1000 * t, 1) for t in times]}); at 3.75 ms/step every 1000 steps: {ms / 3750 * 100:.2f}%")
