"""Film grain against a NumPy reference fed the kernel's own random draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.grain import GRAIN_STYLES, _draw_gradient_words, add_film_grain
from testkit.reference import reference_base_noise, reference_grain, unpack
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import SHAPES, assert_close, make_image, tensor


class TestAddFilmGrain(KernelTester):
    kernel = add_film_grain
    args = (0.4, 10.0, "modern")
    low_precision_args = (0.1, 10.0, "fuji")
    batch_args = [
        (torch.tensor([0.1, 0.4, 1.0]), torch.tensor([1.0, 10.0, 55.5]), style, [9, 8, 7]) for style in GRAIN_STYLES
    ]
    large_shape = (2, 150, 131)
    large_batch_args = [
        (torch.tensor([0.3, 0.8]), torch.tensor([10.0, 20.0]), style, [1, 2]) for style in ("modern", "analog")
    ]
    identity_args = [(0.0, 10.0, style, [1, 2]) for style in GRAIN_STYLES]
    extreme_args = [
        (intensity, scale, style, [0, 2**63 - 1])
        for style in GRAIN_STYLES
        for intensity, scale in ((1.0, 100.0), (1.0, 1.0), (0.01, 100.0))
    ]

    def apply(self, image, intensity, scale, style, seeds=None):
        """Seeds default to 0, 1, ...: one per sample."""
        return add_film_grain(image, intensity, scale, style, list(range(len(image))) if seeds is None else seeds)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        """Every style, not only the default one."""
        image = torch.rand(shape[0], 3, *shape[1:])
        for style in GRAIN_STYLES:
            self.check_output(self.apply(image, 0.4, 10.0, style), image)

    def test_styles_are_fal_spellings(self):
        assert GRAIN_STYLES == ("modern", "analog", "kodak", "fuji", "cinematic", "newspaper")

    @pytest.mark.parametrize("style", GRAIN_STYLES)
    @pytest.mark.parametrize(("intensities", "scales"), [([0.4, 0.4], [10.0, 10.0]), ([1.0, 0.15], [3.7, 100.0])])
    def test_reference(self, device, dtype, style, intensities, scales):
        image, seeds = make_image(), [7, 123456789]
        params = [torch.tensor(p, dtype=torch.float64) for p in (intensities, scales)]
        out = add_film_grain(tensor(image, device, dtype), *params, style, seeds)
        expected = reference_grain(image, intensities, scales, style, seeds)
        assert_close(out, expected, 1e-9 if dtype == torch.float64 else 1e-4)

    def test_modern_is_the_reference_grain(self, device):
        """modern is clip(image + intensity * noise) with the reference's noise, unweighted, same on R, G, B."""
        image, seeds = make_image(), [3, 4]
        words = _draw_gradient_words(seeds, 1, 13, 17, torch.device("cpu")).numpy()
        noise = np.stack([reference_base_noise(unpack(w), 10.0) for w in words])
        expected = np.clip(image + 0.4 * noise, 0, 1)
        assert_close(add_film_grain(tensor(image, device), 0.4, 10.0, "modern", seeds), expected, 1e-9)

    def test_draws_are_one_word_per_pixel_and_field(self):
        words = _draw_gradient_words([5, 6], 4, 3, 2, torch.device("cpu"))
        generator = torch.Generator().manual_seed(6)
        expected = torch.randint(-(2**31), 2**31, (4, 3, 2), generator=generator, dtype=torch.int32)
        assert words.shape == (2, 4, 3, 2) and words.dtype == torch.int32 and torch.equal(words[1], expected)
        choices = unpack(_draw_gradient_words([1], 1, 64, 64, torch.device("cpu")).numpy())
        assert set(np.unique(choices)) == {0, 1, 2, 3} and abs(choices.mean() - 1.5) < 0.02

    def test_seeded(self, device):
        image = tensor(make_image(), device)
        first = add_film_grain(image, 0.4, 10.0, "analog", [1, 2])
        assert torch.equal(first, add_film_grain(image, 0.4, 10.0, "analog", [1, 2]))
        assert not torch.equal(first, add_film_grain(image, 0.4, 10.0, "analog", [1, 3]))

    def test_statistics(self):
        """On mid grey: the reference's noise std (about 0.26 per unit intensity) and white-noise grain for
        modern; clumped grain for the blurred styles; colour grain only for the colour styles."""
        grey = torch.full((1, 3, 128, 128), 0.5, dtype=torch.float64)

        def grain_of(style):
            return add_film_grain(grey, 0.2, 10.0, style, [11]) - 0.5

        def lag1(plane):
            return np.corrcoef(plane[:, :-1].ravel(), plane[:, 1:].ravel())[0, 1]

        modern = grain_of("modern")[0].numpy()
        assert 0.045 < modern.std() < 0.06 and abs(lag1(modern[0])) < 0.05
        assert np.array_equal(modern[0], modern[1]) and np.array_equal(modern[1], modern[2])
        for style in ("analog", "kodak", "fuji", "cinematic", "newspaper"):
            assert lag1(grain_of(style)[0, 0].numpy()) > 0.3, style
        analog = grain_of("analog")[0].numpy()
        assert 0.5 < np.corrcoef(analog[0].ravel(), analog[2].ravel())[0, 1] < 0.9

    def test_casts(self):
        grey = torch.full((1, 3, 256, 256), 0.5, dtype=torch.float64)
        kodak = add_film_grain(grey, 0.4, 10.0, "kodak", [0]).mean((0, 2, 3))
        fuji = add_film_grain(grey, 0.4, 10.0, "fuji", [0]).mean((0, 2, 3))
        assert kodak[0] > kodak[1] > kodak[2] and fuji[1] > fuji[0] and fuji[2] > fuji[0]

    @pytest.mark.gpu
    def test_same_grain_on_cpu_and_cuda(self):
        if not torch.cuda.is_available():
            pytest.skip("CUDA is not available")
        image = tensor(make_image())
        cpu = add_film_grain(image, 0.4, 10.0, "kodak", [5, 6])
        cuda = add_film_grain(image.cuda(), 0.4, 10.0, "kodak", [5, 6])
        assert (cuda.cpu() - cpu).abs().max() < 1e-9

    def test_invalid_arguments(self):
        image = torch.rand(2, 3, 4, 4)
        with pytest.raises(ValueError, match="`style`"):
            add_film_grain(image, 0.4, 10.0, "polaroid", [1, 2])
        with pytest.raises(ValueError, match="`seeds`"):
            add_film_grain(image, 0.4, 10.0, "modern", [1])
        with pytest.raises(ValueError, match="`seeds`"):
            add_film_grain(image, 0.4, 10.0, "modern", [1, 2.0])
        with pytest.raises(ValueError, match="`scale`"):
            add_film_grain(image, 0.4, torch.ones(3), "modern", [1, 2])
