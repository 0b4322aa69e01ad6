"""The device-resident input path: augmentation distribution, normalisation, epochs, state."""

import torch

from resexp.data.batcher import PAD, DeviceBatcher, eval_batches


def _batcher(images, labels, batch_size, augment, seed=0):
    mean = images.float().div(255).mean(0)
    generator = torch.Generator().manual_seed(seed)
    return DeviceBatcher(images, labels, mean, batch_size, augment, generator, torch.contiguous_format), mean


def test_every_crop_offset_and_flip_is_equally_likely():
    # Channel 0 holds row number + 1, channel 1 column number + 1: a view's centre pixels
    # then give away its crop offset, and the direction of the columns its flip.
    n = 1000
    rows = torch.arange(1, 33).view(32, 1).expand(32, 32)
    image = torch.stack([rows, rows.t(), torch.zeros(32, 32, dtype=torch.int64)]).to(torch.uint8)
    images = image.expand(n, 3, 32, 32).contiguous()
    zero_mean = torch.zeros(3, 32, 32)
    batcher = DeviceBatcher(images, torch.zeros(n, dtype=torch.int64), zero_mean, n, True,
                            torch.Generator().manual_seed(0), torch.contiguous_format)
    counts = torch.zeros(2 * PAD + 1, 2 * PAD + 1, 2, dtype=torch.int64)
    batches = 33
    for _ in range(batches):
        views = (batcher.next()[0] * 255).round().long()
        flipped = views[:, 1, 16, 15] > views[:, 1, 16, 17]
        # Output row 16 shows image row 12 + dy (value 13 + dy); unflipped column 16 shows
        # 13 + dx, flipped column 16 shows 12 + dx.
        dy = views[:, 0, 16, 16] - 13
        dx = views[:, 1, 16, 16] - 13 + flipped.long()
        # A view is exactly the shifted (and possibly mirrored) image, zero where it is padding.
        for k in range(3):
            i, j, f = int(dy[k]), int(dx[k]), bool(flipped[k])
            padded = torch.nn.functional.pad(image.float(), (PAD,) * 4)[:, i : i + 32, j : j + 32]
            assert torch.equal(views[k].float(), padded.flip(2) if f else padded)
        counts.index_put_((dy, dx, flipped.long()), torch.ones_like(dy), accumulate=True)
    assert counts.sum() == batches * n
    expected = batches * n / counts.numel()  # about 204 per (offset, flip)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 161 degrees of freedom: mean 161, sd 18; 260 lies beyond p = 1e-6.
    assert chi2 < 260, f"crop/flip distribution is not uniform (chi2 = {chi2:.0f})"
    assert counts.min() > 0.5 * expected
    assert abs(counts[..., 1].sum() / counts.sum() - 0.5) < 0.02


def test_padding_is_zero_after_mean_subtraction():
    # A view shifted by the largest offset shows PAD rows of padding: exactly 0 after the
    # mean is subtracted (the paper pads the mean-subtracted image with zeros).
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    batcher, mean = _batcher(images, torch.arange(64), 64, augment=True)
    views, labels = batcher.next()
    top_padded = (views[:, :, :PAD, :] == 0).all(dim=(1, 2, 3))
    assert top_padded.any(), "some of 64 views have offset dy = 0"
    v, label = views[top_padded][0], labels[top_padded][0]
    # Below the padding the view is the image minus the mean (up to its crop and flip).
    inner = v[:, PAD:, :]
    plain = images[label].float().div(255) - mean
    candidates = [plain[:, : 32 - PAD, :]]
    assert any(
        torch.equal(inner[:, :, max(0, -s) : 32 - max(0, s)], c[:, :, max(0, s) : 32 - max(0, -s)])
        or torch.equal(inner.flip(2)[:, :, max(0, -s) : 32 - max(0, s)], c[:, :, max(0, s) : 32 - max(0, -s)])
        for c in candidates for s in range(-PAD, PAD + 1)
    )


def test_plain_view_is_image_minus_per_pixel_mean():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    batcher, mean = _batcher(images, labels, 5, augment=False)
    assert torch.allclose(mean, images.double().div(255).mean(0).float(), atol=1e-6)
    x, y = batcher.next()
    assert torch.equal(x, images[y].float().div(255) - mean)
    (ex, ey), = list(eval_batches(images, labels, mean, 10, torch.contiguous_format))
    assert torch.equal(ey, labels) and torch.equal(ex, images.float().div(255) - mean)


def test_each_epoch_visits_every_image_once_and_state_round_trips():
    images = torch.zeros(12, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(12)
    batcher, _ = _batcher(images, labels, 4, augment=False)
    first_epoch = torch.cat([batcher.next()[1] for _ in range(3)])
    assert sorted(first_epoch.tolist()) == list(range(12))
    second_epoch = torch.cat([batcher.next()[1] for _ in range(3)])
    assert sorted(second_epoch.tolist()) == list(range(12))
    assert not torch.equal(first_epoch, second_epoch), "reshuffled every epoch"
    assert batcher.epoch == 1
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batcher.state_dict().items()}
    expected = [batcher.next()[1] for _ in range(5)]
    other, _ = _batcher(images, labels, 4, augment=False, seed=99)
    other.load_state_dict(state)
    assert all(torch.equal(a, other.next()[1]) for a in expected)
