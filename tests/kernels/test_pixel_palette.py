"""Unique colours, nearest-palette mapping, Wu's quantiser, the colour-count estimate and the merging of shades."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kernels import pixel_palette
from kernels.pixel_palette import (
    cell_spreads,
    colour_distance,
    estimate_color_count,
    map_to_palette,
    merge_similar_colors,
    srgb_to_lab,
    unique_colors,
    wu_palette,
)


def rgba(rgb: np.ndarray, opaque: np.ndarray | None = None) -> torch.Tensor:
    """``(B, H, W, 3)`` colours (+ optional bool mask) -> binary-alpha ``(B, 4, H, W)`` uint8 tensor."""
    opaque = np.ones(rgb.shape[:-1], bool) if opaque is None else opaque
    image = np.concatenate([rgb, np.full(rgb.shape[:-1] + (1,), 255)], -1) * opaque[..., None]
    return torch.from_numpy(image.astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def noisy_image(seed: int, batch: int = 2, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (5, 3))
    rgb = np.clip(
        centres[rng.integers(0, 5, (batch, size, size))] + rng.integers(-12, 13, (batch, size, size, 3)), 0, 255
    )
    return rgb, rng.random((batch, size, size)) < 0.8


class TestUniqueColors:
    def test_matches_numpy(self, device):
        rgb, opaque = noisy_image(0)
        colours = unique_colors(rgba(rgb, opaque).to(device))
        for sample, found in enumerate(colours):
            expected = np.unique(rgb[sample][opaque[sample]], axis=0)
            order = np.lexsort(expected.T[::-1])
            np.testing.assert_array_equal(found.cpu().numpy(), expected[order])

    def test_transparent_image_has_none(self):
        assert unique_colors(rgba(np.zeros((1, 3, 3, 3)), np.zeros((1, 3, 3), bool)))[0].shape == (0, 3)


class TestMapToPalette:
    def test_matches_brute_force_with_first_index_ties(self, device):
        rgb, opaque = noisy_image(1)
        palette = np.array([[10, 10, 10], [200, 40, 90], [10, 10, 10], [128, 128, 128], [0, 255, 0]])
        out = map_to_palette(rgba(rgb, opaque).to(device), torch.tensor(palette, dtype=torch.uint8)).cpu().numpy()
        distance = ((rgb[..., None, :].astype(int) - palette) ** 2).sum(-1)
        expected = palette[distance.argmin(-1)] * opaque[..., None]
        np.testing.assert_array_equal(out[:, :3].transpose(0, 2, 3, 1), expected)
        np.testing.assert_array_equal(out[:, 3], opaque * 255)

    def test_equidistant_colour_takes_the_earlier_entry(self):
        image = rgba(np.array([[[[100, 100, 100]]]]))
        palette = torch.tensor([[110, 100, 100], [90, 100, 100]], dtype=torch.uint8)
        assert map_to_palette(image, palette)[0, :3, 0, 0].tolist() == [110, 100, 100]

    def test_rejects_bad_palette(self):
        with pytest.raises(ValueError, match="`palette`"):
            map_to_palette(rgba(np.zeros((1, 2, 2, 3))), torch.zeros(0, 3, dtype=torch.uint8))


class TestWuPalette:
    def test_few_separated_colours_come_back_exactly(self, device):
        colours = np.array([[0, 0, 0], [255, 0, 0], [16, 200, 64], [255, 255, 255]])
        rgb = colours[np.random.default_rng(2).integers(0, 4, (1, 10, 10))]
        palette = wu_palette(rgba(rgb).to(device), 8)[0].cpu().numpy()
        assert sorted(map(tuple, palette)) == sorted(map(tuple, colours))

    @pytest.mark.parametrize("colours", [1, 2, 5, 16])
    def test_at_most_max_colors_and_error_falls_with_more(self, colours):
        rgb, opaque = noisy_image(3, batch=1)
        image = rgba(rgb, opaque)
        palette = wu_palette(image, colours)[0]
        assert 1 <= palette.shape[0] <= colours
        assert len(set(map(tuple, palette.tolist()))) == palette.shape[0]

        def error(entries: torch.Tensor) -> float:
            mapped = map_to_palette(image, entries)[0, :3].permute(1, 2, 0).numpy().astype(int)
            return float(((mapped - rgb[0]) ** 2)[opaque[0]].sum())

        if colours > 1:
            assert error(palette) < error(wu_palette(image, colours // 2)[0])

    def test_deterministic_and_empty_when_transparent(self):
        rgb, opaque = noisy_image(4)
        image = rgba(rgb, opaque)
        assert all(torch.equal(a, b) for a, b in zip(wu_palette(image, 7), wu_palette(image, 7)))
        assert wu_palette(rgba(rgb[:1], np.zeros_like(opaque[:1])), 4)[0].shape == (0, 3)


class TestEstimateColorCount:
    def test_flat_regions_and_bounds(self):
        colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255]])
        four_bands = colours[np.arange(4).repeat(32)][None, None].repeat(128, 1)
        two_bands = colours[np.arange(2).repeat(64)][None, None].repeat(128, 1)
        four, two = estimate_color_count(rgba(np.concatenate([four_bands, two_bands])))
        assert 2 <= two < four and four >= 4  # each band, plus the blends the blur makes at their borders
        assert estimate_color_count(rgba(four_bands), max_count=3) == [3]
        assert estimate_color_count(rgba(np.zeros((1, 40, 40, 3)))) == [2]


class TestSrgbToLab:
    def test_known_values(self):
        lab = srgb_to_lab(torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]]))
        expected = [[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [53.59, 0.0, 0.0]]
        np.testing.assert_allclose(lab.numpy(), expected, atol=0.02)

    def test_the_cielab_definition_and_the_input_left_as_it_was(self):
        """Against CIELAB as defined (sRGB's transfer curve, its D65 matrix, the cube root with its linear segment
        near black), in NumPy; the conversion works in place on its own temporaries, never on its input."""
        rgb = torch.rand(4, 5, 6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 270 - 10
        given = rgb.clone()
        channels_last = rgb.permute(2, 0, 1, 3)  # not contiguous
        value = rgb.numpy() / 255
        linear = np.where(value > 0.04045, ((value + 0.055) / 1.055) ** 2.4, value / 12.92)
        matrix = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                           [0.0193339, 0.1191920, 0.9503041]])
        xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
        f = np.where(xyz > (6 / 29) ** 3, np.cbrt(np.maximum(xyz, 0)), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
        expected = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)
        np.testing.assert_allclose(srgb_to_lab(rgb).numpy(), expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(srgb_to_lab(channels_last).numpy(), expected.transpose(2, 0, 1, 3), rtol=0, atol=1e-9)
        assert torch.equal(rgb, given)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_integer_colours_as_their_float_values(self, dtype):
        """Integer colours are looked up per channel value; every value of every channel, in any layout, must convert
        as the same colours given as floats."""
        values = torch.arange(256, dtype=torch.uint8)
        colours = torch.stack([values, values.roll(85), values.flip(0)], 1)
        channels_first = colours.t().contiguous().view(1, 3, 16, 16)
        as_floats = srgb_to_lab(colours.to(dtype))
        lab = srgb_to_lab(colours, dtype)
        assert lab.dtype == dtype and torch.allclose(lab, as_floats, rtol=0, atol=1e-4)
        permuted = srgb_to_lab(channels_first.permute(0, 2, 3, 1), dtype).reshape(256, 3)
        assert torch.allclose(permuted, as_floats, rtol=0, atol=1e-4)
        assert srgb_to_lab(colours).dtype == torch.float64


class TestColourDistance:
    def test_symmetric_and_perceptual(self):
        colours = torch.tensor([[255, 108, 0], [248, 112, 6], [2, 2, 2], [0, 0, 0], [0, 0, 255], [60, 60, 60]])
        distance = colour_distance(srgb_to_lab(colours), srgb_to_lab(colours))
        assert torch.allclose(distance, distance.t()) and distance.diagonal().abs().max() < 1e-9
        assert distance[0, 1] < 2.5  # a saturated orange and its JPEG shift
        assert distance[2, 3] < 1.0  # two blacks a couple of levels apart
        assert distance[3, 5] > 20 and distance[0, 4] > 50

    def test_each_pair_is_the_docstrings_delta_e94(self):
        """CIE94 for graphic arts (kL = 1, K1 = 0.045, K2 = 0.015) with the geometric mean of the two chromas in
        both weights, written out pair by pair in float64: all pairs of two sets and broadcast pairs, in both
        dtypes, the inputs left as they were."""
        rng = np.random.default_rng(11)
        first, second = rng.uniform([0, -100, -100], [100, 100, 100], (2, 40, 3))

        def reference(x: np.ndarray, y: np.ndarray) -> float:
            chroma_x, chroma_y = np.hypot(x[1], x[2]), np.hypot(y[1], y[2])
            chroma = chroma_x - chroma_y
            hue_squared = max((x[1] - y[1]) ** 2 + (x[2] - y[2]) ** 2 - chroma**2, 0.0)
            mean = np.sqrt(chroma_x * chroma_y)
            return np.sqrt((x[0] - y[0]) ** 2 + (chroma / (1 + 0.045 * mean)) ** 2 + hue_squared / (1 + 0.015 * mean) ** 2)

        expected = np.array([[reference(x, y) for y in second] for x in first])
        for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
            left, right = torch.tensor(first, dtype=dtype), torch.tensor(second, dtype=dtype)
            kept = left.clone(), right.clone()
            np.testing.assert_allclose(colour_distance(left, right).double().numpy(), expected, rtol=0, atol=tolerance)
            pairs = pixel_palette._delta_e94(left, right)
            np.testing.assert_allclose(pairs.double().numpy(), expected.diagonal(), rtol=0, atol=tolerance)
            assert torch.equal(left, kept[0]) and torch.equal(right, kept[1])


class TestMergeSimilarColors:
    @staticmethod
    def noisy_cloud(seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Four real colours (one rare), each scattered by up to 3 levels per channel, as JPEG leaves cells."""
        rng = np.random.default_rng(seed)
        real = np.array([[20, 24, 82], [200, 40, 30], [240, 220, 90], [90, 200, 60]])
        counts = [400, 200, 120, 12]
        pixels = np.concatenate([c + rng.integers(-3, 4, (n, 3)) for c, n in zip(real, counts)]).clip(0, 255)
        colours, weights = np.unique(pixels, axis=0, return_counts=True)
        return torch.tensor(colours, dtype=torch.uint8), torch.tensor(weights, dtype=torch.float64), real

    def test_noise_merges_back_to_the_real_colours(self):
        colours, weights, real = self.noisy_cloud(0)
        palette, labels = merge_similar_colors(colours, weights)
        assert palette.shape[0] == len(real)
        nearest = ((palette.numpy()[:, None].astype(int) - real[None]) ** 2).sum(-1)
        assert sorted(nearest.argmin(1).tolist()) == [0, 1, 2, 3] and nearest.min(1).max() <= 3 * 3**2
        assert labels.shape == (colours.shape[0],) and int(labels.max()) == palette.shape[0] - 1

    def test_one_wide_cloud_is_one_colour_and_two_apart_are_two(self):
        """One colour under gaussian noise of 3 levels a channel (a cloud the seeding cuts into several pieces)
        is one colour, however the pieces fall; two such clouds far apart stay two."""
        rng = np.random.default_rng(3)
        grey = np.array([120, 120, 120])
        wide = np.clip(grey + rng.normal(0, 3, (3000, 3)).round(), 0, 255)
        colours, weights = np.unique(wide, axis=0, return_counts=True)
        palette, _ = merge_similar_colors(torch.tensor(colours, dtype=torch.uint8), torch.tensor(weights * 1.0))
        assert palette.shape[0] == 1
        pair = np.concatenate([wide, np.clip(grey + 60 + rng.normal(0, 3, (3000, 3)).round(), 0, 255)])
        colours, weights = np.unique(pair, axis=0, return_counts=True)
        palette, _ = merge_similar_colors(torch.tensor(colours, dtype=torch.uint8), torch.tensor(weights * 1.0))
        assert palette.shape[0] == 2

    def test_pairs_measured_in_batches_or_one_at_a_time_give_the_same_result(self, monkeypatch):
        """The valley test measures many pairs of clusters at once; one pair at a time is the plain reading of the
        rule, and must give the same palette and labels on clouds that the seeding cuts into touching pieces."""
        rng = np.random.default_rng(5)
        centres = rng.integers(40, 216, (10, 3))
        cloud = np.clip(centres.repeat(600, 0) + rng.normal(0, 3, (6000, 3)).round(), 0, 255)
        colours, weights = np.unique(cloud, axis=0, return_counts=True)
        colours, weights = torch.tensor(colours, dtype=torch.uint8), torch.tensor(weights * 1.0)
        batched = merge_similar_colors(colours, weights)
        monkeypatch.setattr(pixel_palette, "_POINTS_AT_ONCE", 1)
        one_pair_at_a_time = merge_similar_colors(colours, weights)
        assert torch.equal(batched[0], one_pair_at_a_time[0]) and torch.equal(batched[1], one_pair_at_a_time[1])
        assert batched[0].shape[0] <= 10

    @staticmethod
    def unimodal_rounds(rgb, lab, weight, label, distance) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The plain reading of the valley test's rounds: each round measures every pair of live clusters from
        scratch, and merges each pair whose middle holds `_VALLEY` times the weight around its lesser centre and
        that no fuller pair shares a cluster with (ties to the lower pair). Returns the labels and, for each
        round, how many pairs were full enough and how many of them merged."""
        members = {cluster: (label == cluster).nonzero().flatten() for cluster in label.unique().tolist()}
        points = lab.float()

        def delta(first, second):
            return pixel_palette._delta_e94(first, second)

        rounds = []
        while True:
            centre, radius = {}, {}
            for cluster, index in members.items():
                mass = weight[index]
                centre[cluster] = srgb_to_lab((rgb[index] * mass[:, None]).sum(0) / mass.sum()).float()
                squared = delta(points[index], centre[cluster]).double() ** 2
                radius[cluster] = float(((squared * mass).sum() / mass.sum()).sqrt())
            full = []
            for first, second in itertools.combinations(sorted(members), 2):
                gap = float(delta(centre[first], centre[second]))
                if gap > 2 * distance + radius[first] + radius[second]:
                    continue
                index = torch.cat([members[first], members[second]])
                balls = (centre[first], (centre[first] + centre[second]) / 2, centre[second])
                around = [float(weight[index][delta(points[index], ball) <= gap / 4].sum()) for ball in balls]
                share = around[1] / max(min(around[0], around[2]), 1e-12)
                if share >= pixel_palette._VALLEY:
                    full.append((-share, first, second))
            taken: set[int] = set()
            merges = 0
            for _, first, second in sorted(full):
                if not taken & {first, second}:
                    members[first] = torch.cat([members[first], members.pop(second)])
                    merges += 1
                taken |= {first, second}
            if not merges:
                break
            rounds.append((len(full), merges))
        result = torch.empty_like(label)
        for cluster, index in members.items():
            result[index] = cluster
        return pixel_palette._compact(result), rounds

    def test_unimodal_merge_is_its_rounds_measured_from_scratch(self):
        """The valley test measures again only the pairs of the clusters a round merged, and carries the rest;
        it must merge as measuring every pair afresh each round does, over several rounds in which a fuller
        pair holds some clusters back."""
        rng = np.random.default_rng(8)
        centres = rng.integers(40, 216, (6, 3))
        cloud = np.clip(centres.repeat(500, 0) + rng.normal(0, 4, (3000, 3)).round(), 0, 255)
        colours, weights = np.unique(cloud, axis=0, return_counts=True)
        rgb, weight = torch.tensor(colours).double(), torch.tensor(weights * 1.0)
        lab = srgb_to_lab(rgb)
        order = torch.tensor(np.argsort(-weights, kind="stable"))
        seeded = pixel_palette._seed_clusters(lab, order, 2.5)
        expected, rounds = self.unimodal_rounds(rgb, lab, weight, seeded, 2.5)
        assert torch.equal(pixel_palette._merge_unimodal(rgb, lab, weight, seeded, 2.5), expected)
        assert len(rounds) >= 3 and any(full > merged for full, merged in rounds)
        assert int(expected.max()) + 1 < int(seeded.max()) + 1

    @staticmethod
    def leader_clustering(lab: torch.Tensor, order: torch.Tensor, distance: float, most: int) -> torch.Tensor:
        """The plain reading of the seeding: in order, each free colour seeds and takes every free colour within
        `distance`; after `most` seeds the colours left join their nearest seed."""
        label = torch.full((lab.shape[0],), -1, dtype=torch.long)
        seeds: list[int] = []
        for index in order.tolist():
            if label[index] >= 0:
                continue
            if len(seeds) == most:
                break
            within = (colour_distance(lab[index : index + 1], lab)[0] <= distance) & (label < 0)
            label[within] = len(seeds)
            seeds.append(index)
        left = label < 0
        label[left] = colour_distance(lab[left], lab[seeds]).argmin(1)
        return label

    @pytest.mark.parametrize("most", [256, 7])
    def test_seeding_many_candidates_at_once_is_leader_clustering(self, monkeypatch, most):
        """Candidate seeds are measured in batches, and ones a batch's earlier seeds take are dropped; every
        colour must still go to the first seed that reaches it, as one seed at a time gives."""
        rng = np.random.default_rng(11)
        centres = rng.integers(30, 226, (40, 3))
        cloud = np.clip(centres.repeat(200, 0) + rng.normal(0, 4, (8000, 3)).round(), 0, 255)
        colours, weights = np.unique(cloud, axis=0, return_counts=True)
        lab = srgb_to_lab(torch.tensor(colours).double()).float()
        order = torch.tensor(np.argsort(-weights, kind="stable"))
        monkeypatch.setattr(pixel_palette, "_MAX_SEEDS", most)
        expected = self.leader_clustering(lab, order, 2.5, most)
        assert torch.equal(pixel_palette._seed_clusters(lab, order, 2.5), expected)
        monkeypatch.setattr(pixel_palette, "_SEED_CANDIDATES", 1)
        assert torch.equal(pixel_palette._seed_clusters(lab, order, 2.5), expected)
        seeds = int(expected.max()) + 1
        assert seeds == most if most < 40 else seeds > 40

    def test_nearest_centres_is_the_argmin_with_ties_to_the_first(self):
        """Only the centres within reach of a colour's guess are measured, yet the result is the full argmin, ties
        (repeated centres, colours on a coarse grid) to the lower index, whatever the guess."""
        generator = torch.Generator().manual_seed(2)
        rgb = (torch.randint(0, 256, (3000, 3), generator=generator) // 32 * 32).double()
        centres = torch.cat([rgb[:40], rgb[:20], rgb[40:60] + 1.5])
        lab, centre_lab = srgb_to_lab(rgb), srgb_to_lab(centres)
        guess = torch.randint(0, centres.shape[0], (rgb.shape[0],), generator=generator)
        expected = colour_distance(lab, centre_lab).argmin(1)
        assert torch.equal(pixel_palette._nearest_centres(lab, centre_lab, guess), expected)
        repeated = (expected >= 40) & (expected < 60)
        assert bool((expected < 20).any()) and not bool(repeated.any()) and bool((expected >= 60).any())

    def test_errors_decide_whether_a_few_far_cells_are_a_colour(self):
        """A handful of cells far from the real colours are a colour of their own when their cells are clean,
        and noise (to be merged) when their pixels stray further than they lie from a real colour."""
        colours, weights, real = self.noisy_cloud(0)
        few = torch.tensor([[20, 60, 82], [22, 60, 84], [20, 62, 80]], dtype=torch.uint8)  # 3 cells near real[0]
        colours, weights = torch.cat([colours, few]), torch.cat([weights, torch.ones(3)])
        clean = torch.full((colours.shape[0],), 0.5, dtype=torch.float64)
        noisy = clean.clone()
        noisy[-3:] = 40.0
        assert merge_similar_colors(colours, weights, errors=clean)[0].shape[0] == len(real) + 1
        palette, labels = merge_similar_colors(colours, weights, errors=noisy)
        assert palette.shape[0] == len(real) and bool((labels[-3:] == labels[weights.argmax()]).all())

    def test_a_dark_ramp_keeps_its_shades_above_a_lower_floor(self):
        """Six dark shades 2-3 apart (the crawl floor's red ramp), each scattered by one level a channel (a large
        cell's median under JPEG): at the default floor of 2.5 the ramp merges, at a floor of 1 every shade stays
        and keeps its own cells."""
        rng = np.random.default_rng(5)
        ramp = np.array([[38, 12, 12], [45, 16, 16], [51, 18, 18], [57, 22, 22], [62, 26, 26], [67, 30, 30]])
        steps = colour_distance(srgb_to_lab(torch.tensor(ramp[:-1], dtype=torch.float64)),
                                srgb_to_lab(torch.tensor(ramp[1:], dtype=torch.float64))).diagonal()
        assert 1.9 <= float(steps.min()) and float(steps.max()) <= 3.0
        pixels = np.concatenate([shade + rng.integers(-1, 2, (150, 3)) for shade in ramp])
        colours, inverse, weights = np.unique(pixels, axis=0, return_inverse=True, return_counts=True)
        colours, weights = torch.tensor(colours, dtype=torch.uint8), torch.tensor(weights * 1.0)
        assert merge_similar_colors(colours, weights)[0].shape[0] < len(ramp)
        palette, labels = merge_similar_colors(colours, weights, floor_distance=1.0)
        assert palette.shape[0] == len(ramp)
        shade_of_pixel = np.repeat(np.arange(len(ramp)), 150)
        label_of_pixel = labels.numpy()[inverse.reshape(-1)]
        assert all(len(set(label_of_pixel[shade_of_pixel == shade])) == 1 for shade in range(len(ramp)))

    def test_distinct_colours_stay_and_max_colors_is_honoured(self):
        colours = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255], [0, 200, 0]], dtype=torch.uint8)
        weights = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
        assert merge_similar_colors(colours, weights)[0].shape[0] == 5
        palette, labels = merge_similar_colors(colours, weights, max_colors=3)
        assert palette.shape[0] == 3 and labels.unique().numel() == 3

    def test_deterministic_whatever_the_input_order(self):
        colours, weights, _ = self.noisy_cloud(1)
        order = torch.randperm(colours.shape[0], generator=torch.Generator().manual_seed(0))
        first, labels = merge_similar_colors(colours, weights)
        second, shuffled = merge_similar_colors(colours[order], weights[order])
        assert torch.equal(first, second) and torch.equal(labels[order], shuffled)

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="`colours`"):
            merge_similar_colors(torch.zeros(0, 3, dtype=torch.uint8), torch.zeros(0))
        with pytest.raises(ValueError, match="`weights`"):
            merge_similar_colors(torch.zeros(2, 3, dtype=torch.uint8), torch.ones(3))


class TestCellSpreads:
    def test_zero_when_clean_and_grows_with_noise(self):
        rgb = np.random.default_rng(5).integers(0, 256, (1, 6, 6, 3)).repeat(4, 1).repeat(4, 2)
        clean = rgba(rgb)
        cells = clean[..., ::4, ::4]
        noise = np.random.default_rng(6).integers(-6, 7, rgb.shape)
        assert cell_spreads(clean, cells, 4).shape == (1, 6, 6)
        assert float(cell_spreads(clean, cells, 4).abs().max()) < 1e-3  # float32 CIELAB
        assert float(cell_spreads(rgba(np.clip(rgb + noise, 0, 255)), cells, 4).median()) > 1.0

    def test_a_3_px_cell_against_the_median_of_its_centre_and_the_4_beside_it(self):
        """A 3 px cell's interior is its centre alone: the spread is the centre's distance to the per-channel median
        of the centre and its 4 neighbours in the cell, which a bled side (one of the 4) does not move."""
        rgb = np.full((1, 3, 3, 3), 100)
        rgb[0, 1, 1] = [130, 100, 100]  # the centre, which is the cell's colour
        rgb[0, :, 2] = [20, 20, 200]  # a neighbour bled into the right column
        rgb[0, 0, 0] = [0, 0, 0]  # a corner: not one of the 5
        image = rgba(rgb)
        cell = rgba(np.array([[[[130, 100, 100]]]]))
        lab = srgb_to_lab(torch.tensor([[130, 100, 100], [100, 100, 100]]))
        expected = float(colour_distance(lab[:1], lab[1:]))  # the median of 130, 100, 100, 100, 20 is 100
        assert cell_spreads(image, cell, 3).item() == pytest.approx(expected, rel=1e-3)
        assert cell_spreads(image, rgba(np.full((1, 1, 1, 3), 100)), 3).item() < 1e-3
        opaque = np.ones((1, 3, 3), bool)
        opaque[0, 0, 1] = False
        assert cell_spreads(rgba(rgb, opaque), cell, 3).item() == 0.0  # one of the 5 is transparent

    def test_from_5_px_the_two_rings_that_an_edge_reaches_are_left_out(self):
        """A resampled or blurred edge spreads about a pixel into each cell, and the lattice may be half a pixel
        off: in a 6 px cell whose second ring shows its neighbours' colour, only the 2 x 2 centre is measured."""
        rgb = np.full((1, 6, 6, 3), 100)
        rgb[0, 1:5, 1:5] = [20, 20, 200]  # the ring 1 px in, bled
        rgb[0, 2:4, 2:4] = 100
        rgb[0, 2, 2] = [130, 100, 100]
        cell = rgba(np.full((1, 1, 1, 3), 100))
        lab = srgb_to_lab(torch.tensor([[130, 100, 100], [100, 100, 100]]))
        expected = float(colour_distance(lab[:1], lab[1:]))
        assert cell_spreads(rgba(rgb), cell, 6).item() == pytest.approx(expected / 4, rel=1e-3)
        rgb[0, 2, 2] = 100
        assert cell_spreads(rgba(rgb[:, :5, :5]), cell, 5).item() < 1e-3  # a 5 px cell: its centre pixel alone

    def test_mean_distance_of_the_interior(self):
        """One 4 px cell: its border ring is left out, and the mean runs over the opaque interior pixels only."""
        rgb = np.full((1, 4, 4, 3), 100)
        rgb[0, 0, 0] = 0  # border ring: ignored
        rgb[0, 1, 1] = [130, 100, 100]
        rgb[0, 1, 2] = [100, 100, 160]  # transparent below: ignored
        opaque = np.ones((1, 4, 4), bool)
        opaque[0, 1, 2] = False
        image = rgba(rgb, opaque)
        cell = rgba(np.full((1, 1, 1, 3), 100))
        lab = srgb_to_lab(torch.tensor([[130, 100, 100], [100, 100, 100]]))
        expected = float(colour_distance(lab[:1], lab[1:]))
        assert cell_spreads(image, cell, 4).item() == pytest.approx(expected / 3, rel=1e-3)
        assert cell_spreads(image, cell * 0, 4).item() == 0.0  # a transparent cell
