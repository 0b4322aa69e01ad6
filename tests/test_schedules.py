from omegaconf import OmegaConf

from resexp.config import compose
from resexp.engine.schedules import learning_rate


def test_paper_schedule_divides_by_ten_at_32k_and_48k():
    cfg = compose([])
    assert cfg.trainer.max_iters == 64000 and cfg.trainer.batch_size == 128
    optim = cfg.optim
    assert (optim.lr, optim.momentum, optim.weight_decay) == (0.1, 0.9, 1e-4)
    lr = lambda it: learning_rate(optim, it, 64000)  # noqa: E731
    assert lr(0) == lr(31999) == 0.1
    assert abs(lr(32000) - 0.01) < 1e-12 and abs(lr(47999) - 0.01) < 1e-12
    assert abs(lr(48000) - 0.001) < 1e-12 and abs(lr(63999) - 0.001) < 1e-12


def test_resnet110_and_1202_use_the_error_warmup_and_others_do_not():
    for name in ("resnet110", "resnet1202"):
        warm = compose([f"model={name}"]).optim.error_warmup
        assert (warm.lr, warm.until_error, warm.max_iters) == (0.01, 80.0, 400)
        assert learning_rate(compose([f"model={name}"]).optim, 10, 64000, in_error_warmup=True) == 0.01
    assert compose(["model=resnet56"]).optim.error_warmup is None
    assert compose(["model=resnet110", "optim.error_warmup=null"]).optim.error_warmup is None


def test_linear_warmup_then_cosine():
    optim = OmegaConf.create({"lr": 1.0, "warmup_iters": 10, "schedule": "cosine", "error_warmup": None})
    assert learning_rate(optim, 0, 110) == 0.1
    assert learning_rate(optim, 9, 110) == 1.0
    assert abs(learning_rate(optim, 60, 110) - 0.5) < 1e-9
    assert learning_rate(optim, 110, 110) < 1e-12
