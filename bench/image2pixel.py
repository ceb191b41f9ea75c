"""fal-ai/image2pixel: Kiln against the reference `unfake` 1.0.7 on the same generated pixel art.

Both run with fal's defaults (max 32 colours, auto detection, dominant downscale) on:

- clean aligned / clean offset: nearest-neighbour upscales at every scale 2-16 of random, blobby and textured
  art, with the grid at the image's corner (where the reference's run lengths work) or offset (by s // 2 rows
  and s - 1 columns);
- degraded: the offset upscales under JPEG (q60, q75, q90), gaussian blur (0.6, 1.0) and bilinear resampling
  (x1.02, x0.98), the acceptance fixtures of the tests;
- timing: 1024x1024 JPEG upscales (scales 8 and 16), the time of the whole computation per image (no file
  decoding or encoding on either side). Kiln runs with the server's CPU thread count (default 1).

Scale accuracy is the share of images whose detected scale is the true one (resampled images: the true cell
size rounded); cell accuracy the share of ground-truth cells shown as the right palette colour (see
`correct_cells`). `unfake` is installed for the benchmark only (`pip install unfake==1.0.7`); without it the
reference columns are empty and the reason is printed.

    python -m bench.image2pixel [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from bench.common import write_result
from pipelines.image2pixel import Image2PixelInput, pixelate
from server.config import Settings
from tests.pipelines.test_image2pixel import (
    DEGRADATIONS,
    blobby_art,
    complete_cells,
    correct_cells,
    random_art,
    textured_blobs,
    upscale,
)

ART = {"random": random_art, "blobby": blobby_art, "textured": textured_blobs}
SCALES = range(2, 17)
TIMING_REPEATS = 3


@dataclass
class Case:
    group: str
    name: str
    scale: int
    image: np.ndarray  # (H, W, 3) uint8
    truth: np.ndarray  # (h, w, 3) complete cells
    palette: np.ndarray


@dataclass
class Tally:
    images: int = 0
    scale_right: int = 0
    cells: int = 0
    cells_right: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, case: Case, scale: int, native: np.ndarray, seconds: float) -> None:
        self.images += 1
        self.scale_right += scale == case.scale
        self.cells += case.truth[..., 0].size
        self.cells_right += correct_cells(native, case.truth, case.palette)
        self.seconds.append(seconds)

    def summary(self) -> dict[str, float]:
        return {
            "images": self.images,
            "scale_accuracy": round(self.scale_right / self.images, 4),
            "cell_accuracy": round(self.cells_right / self.cells, 4),
            "median_ms": round(1000 * statistics.median(self.seconds), 1),
        }


def accuracy_cases(cells: int, quick: bool) -> list[Case]:
    cases = []
    scales = SCALES if not quick else (2, 4, 8, 13, 16)
    for art_name, make in ART.items():
        for scale in scales:
            art = make(cells, seed=1000 + scale)
            palette = np.unique(art.reshape(-1, 3), axis=0)
            cases.append(Case("clean aligned", art_name, scale, upscale(art, scale), art, palette))
            offset = (scale // 2, scale - 1)
            clean = upscale(art, scale, offset)
            truth = complete_cells(art, scale, offset, (0, 0))
            cases.append(Case("clean offset", art_name, scale, clean, truth, palette))
            for name, degrade in DEGRADATIONS.items():
                cases.append(Case("degraded", f"{art_name} {name}", scale, degrade(clean), truth, palette))
    return cases


def timing_cases(quick: bool) -> list[Case]:
    cases = []
    for scale, seed in ((8, 1), (16, 2)) if not quick else ((16, 2),):
        art = blobby_art(1024 // scale, seed=seed)
        image = DEGRADATIONS["jpeg q75"](upscale(art, scale))
        palette = np.unique(art.reshape(-1, 3), axis=0)
        cases.append(Case("timing", f"1024x1024 jpeg q75 scale {scale}", scale, image, art, palette))
    return cases


def run_kiln(image: np.ndarray) -> tuple[int, np.ndarray]:
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    tensor = torch.from_numpy(rgba).permute(2, 0, 1).unsqueeze(0)
    result = pixelate(tensor, Image2PixelInput(image_url="bench"))
    return result.grid.scale, result.native.permute(1, 2, 0).numpy()


def reference_runner() -> tuple[Callable[[np.ndarray], tuple[int, np.ndarray]] | None, str]:
    """`unfake.process_image` with fal's defaults, or None and why it cannot run."""
    try:
        from unfake import process_image
    except ImportError as error:
        return None, f"unfake is not installed ({error}); pip install unfake==1.0.7"
    logging.getLogger("unfake.py").setLevel(logging.ERROR)

    def run(image: np.ndarray) -> tuple[int, np.ndarray]:
        result = asyncio.run(process_image(Image.fromarray(image), max_colors=32, background_mode="corners"))
        scale = result["manifest"].processing_steps["scale_detection"]["detected_scale"]
        return int(scale), np.asarray(result["image"].convert("RGBA"))

    # the package's own __version__ is stale (1.0.0 in the 1.0.7 wheel); the installed distribution is not
    return run, f"unfake {importlib.metadata.version('unfake')}"


def measure(runner, cases: list[Case]) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    for case in cases:
        repeats = 1
        if case.group == "timing":
            runner(case.image)  # warm-up: first-call costs are not per image
            repeats = TIMING_REPEATS
        for _ in range(repeats):
            start = time.perf_counter()
            scale, native = runner(case.image)
            seconds = time.perf_counter() - start
            for key in (case.group, f"{case.group} scale>=4" if case.scale >= 4 else None):
                if key:
                    tallies.setdefault(key, Tally()).add(case, scale, native, seconds)
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few scales only (a smoke run)")
    parser.add_argument("--cells", type=int, default=16, help="art size in cells for the accuracy sets")
    parser.add_argument(
        "--cpu-threads", type=int, default=Settings().cpu_threads, help="torch threads, as `kiln serve --cpu-threads`"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.cpu_threads)

    cases = accuracy_cases(args.cells, args.quick) + timing_cases(args.quick)
    reference, reference_name = reference_runner()
    systems = {"kiln": run_kiln} | ({"unfake": reference} if reference else {})
    results = {name: measure(runner, cases) for name, runner in systems.items()}
    if reference is None:
        print(f"reference not run: {reference_name}")

    groups = ["clean aligned", "clean offset", "degraded", "degraded scale>=4", "timing"]
    header = f"{'set':<20}{'system':<8}{'images':>7}{'scale acc':>11}{'cell acc':>10}{'median ms':>11}"
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads {torch.get_num_threads()}")
    print(header)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for group in groups:
        for name, tallies in results.items():
            numbers = tallies[group].summary()
            summary.setdefault(group, {})[name] = numbers
            print(
                f"{group:<20}{name:<8}{numbers['images']:>7}{numbers['scale_accuracy']:>11.2%}"
                f"{numbers['cell_accuracy']:>10.2%}{numbers['median_ms']:>11.1f}"
            )
    path = write_result(
        "image2pixel",
        {
            "reference": reference_name,
            "torch_threads": torch.get_num_threads(),
            "art_cells": args.cells,
            "quick": args.quick,
            "sets": {
                "clean aligned": "every scale 2-16, random/blobby/textured art, grid at the corner",
                "clean offset": "the same with the grid offset by s // 2 rows and s - 1 columns",
                "degraded": f"the offset set under {', '.join(DEGRADATIONS)}",
                "timing": [case.name for case in cases if case.group == "timing"],
            },
            "results": summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
