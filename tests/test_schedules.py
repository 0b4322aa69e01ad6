from omegaconf import OmegaConf

from resexp.config import compose
from resexp.engine.schedules import ErrorWarmup, learning_rate


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
        assert (warm.lr, warm.until_error, warm.window, warm.max_iters) == (0.01, 80.0, 6400, 4000)
        assert learning_rate(compose([f"model={name}"]).optim, 10, 64000, in_error_warmup=True) == 0.01
    assert compose(["model=resnet56"]).optim.error_warmup is None
    assert compose(["model=resnet110", "optim.error_warmup=null"]).optim.error_warmup is None


def test_linear_warmup_then_cosine():
    optim = OmegaConf.create({"lr": 1.0, "warmup_iters": 10, "schedule": "cosine", "error_warmup": None})
    assert learning_rate(optim, 0, 110) == 0.1
    assert learning_rate(optim, 9, 110) == 1.0
    assert abs(learning_rate(optim, 60, 110) - 0.5) < 1e-9
    assert learning_rate(optim, 110, 110) < 1e-12


WARMUP = {"lr": 0.01, "until_error": 80.0, "window": 128, "max_iters": 100}


def test_error_warmup_ends_on_the_window_not_on_one_lucky_batch():
    warmup = ErrorWarmup(WARMUP, batch_size=32)  # a window of 4 batches, 128 images
    # The first batch, 10 of 32 wrong (31%), would have ended the one-batch rule; the window is not full yet
    assert [warmup.observe(wrong, it) for it, wrong in enumerate([10, 31, 31], 1)] == [False] * 3
    assert not warmup.observe(31, 4)  # full: 103 of 128 wrong = 80.47%, not below 80
    assert not warmup.observe(12, 5)  # the 10 slid out: 31 + 31 + 31 + 12 = 105 = 82.03%
    assert warmup.active and warmup.end is None
    assert warmup.observe(8, 6)  # 31 + 31 + 12 + 8 = 82 of 128 = 64.06%
    assert warmup.end == {"ended_at": 6, "ended_by": "error", "train_error": 64.06, "over_images": 128}
    assert not warmup.active


def test_error_warmup_ends_at_its_limit_and_its_state_round_trips():
    warmup = ErrorWarmup({**WARMUP, "max_iters": 3}, batch_size=32)
    assert [warmup.observe(30, it) for it in (1, 2, 3)] == [False, False, True]
    assert warmup.end == {"ended_at": 3, "ended_by": "max_iters", "train_error": 93.75, "over_images": 96}
    resumed = ErrorWarmup(WARMUP, batch_size=32)
    half = ErrorWarmup(WARMUP, batch_size=32)
    for it, wrong in enumerate([31, 31, 31], 1):
        half.observe(wrong, it)
    resumed.load_state_dict(half.state_dict())
    assert resumed.observe(0, 4) and resumed.end["train_error"] == 72.66  # 93 of 128: the saved batches count
