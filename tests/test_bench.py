"""The benchmark's baselines compute the same things as the fast paths they are compared with."""

import torch

from phi3v_recipe.bench import naive_process, padded_share
from phi3v_recipe.phi3_v import Phi3VImageProcessor

from .test_processor import photo


def test_per_crop_baseline_computes_the_same_pixels():
    for size, num_crops in [((1000, 750), 4), ((750, 1000), 16), ((600, 200), 4)]:
        image = photo(*size)
        processor = Phi3VImageProcessor(num_crops=num_crops)
        ours = processor(image)["pixel_values"][0]
        naive = naive_process(image, num_crops, processor.image_mean, processor.image_std)
        torch.testing.assert_close(naive, ours, atol=1e-5, rtol=0)


def test_padded_share():
    lengths = [10, 10, 5, 15]
    assert padded_share(lengths, [[0, 1], [2, 3]]) == 1 - 40 / (20 + 30)
    assert padded_share(lengths, [[0, 1], [2, 3]], pad_to=20) == 1 - 40 / 80
    assert padded_share(lengths, [[2, 0], [1, 3]]) == 1 - 40 / (20 + 30)
