"""fal-ai/image2pixel: Kiln against the reference `unfake` 1.0.7 on real pixel art (`bench.pixel_art_set`).

Both run with fal's defaults (max 32 colours, auto detection, dominant downscale). The set is crops of real game
tile sheets that Debian packages ship under free licences, upscaled at every scale 2-16 with random grid offsets,
then JPEG (with and without 4:2:0 chroma subsampling), blur, slight resampling and combinations; see
`bench/pixel_art_set.py` for the sources, their licences and the degradations.

Reported per degradation, per degradation family and per scale bucket (2-3, 4-7, 8-16):

- scale accuracy: the share of images whose `pixel_scale` is the true one (resampled images: the true cell size
  rounded);
- cell accuracy: the share of ground-truth cells shown as the right colour (the truth colour nearest to the
  result's cell), at the best alignment within one cell either way;
- colour error: the CIELAB distance from each ground-truth cell's colour to the result's, averaged over the cells,
  at the alignment within one cell either way where it is least (how far off the colours are, where cell
  accuracy only asks whether the nearest truth colour is the right one);
- palette-size error: the output's colour count less the truth's (median of the absolute error, and the share of
  images within 2), over art of at most 16 colours.

Timing: 1024x1024 JPEGs of real art (scales 8 and 16), the whole computation per image (no file decoding or
encoding on either side), after a warm-up; Kiln runs with the server's CPU thread count. With
`--baseline-tree DIR` (e.g. `git archive HEAD | tar -x -C DIR`) the same timing runs, interleaved, on that tree's
Kiln, and on this tree's the same way (each in a fresh interpreter, `kiln (this tree)`), so before and after are
measured alike in the same run: Kiln timed beside unfake in one process can come out slower than alone.

Kiln runs on `--device` (CUDA where there is one), unfake on the CPU. On a GPU machine without the art packages,
`--timing-only --timing-images FILE.npz` times the images written to that file where the packages are.

`unfake` is installed for the benchmark only (`pip install unfake==1.0.7`), and the set needs the art packages
(`apt-get install nethack-common angband-data crawl-tiles-data freeciv-data`).

    python -m bench.image2pixel [--quick] [--systems kiln,unfake] [--baseline-tree DIR] [--device cuda]
    python -m bench.image2pixel --timing-only --timing-images FILE.npz [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import write_result
from bench.pixel_art_set import (
    SCALES,
    SOURCES,
    build_cases,
    crop_art,
    describe,
    missing_packages,
    upscale,
)
from testkit.degradations import jpeg, jpeg_quantization

TIMING_REPEATS = 3
REPOSITORY = Path(__file__).resolve().parent.parent
# the pixels, and what the server's decoder reports of the file: `RawImage.chroma_subsampling` and
# `RawImage.jpeg_quantization`
Runner = Callable[[np.ndarray, tuple[int, int], np.ndarray | None], tuple[int, np.ndarray]]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` sRGB bytes -> CIELAB (D65), float64."""
    x = rgb.astype(np.float64) / 255
    linear = np.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    matrix = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(np.maximum(xyz, 0)), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


# A result cell within this CIELAB distance of its true colour is right even where the truth has a nearer
# near-duplicate (some palettes hold both (0, 0, 0) and (1, 1, 1)): about one just noticeable difference.
SAME_COLOUR = 2.5


def correct_cells(result: np.ndarray, truth: np.ndarray) -> int:
    """How many cells of ``truth`` the ``result`` shows as the right colour: the truth colour nearest to the result
    cell's colour is the true one, or the two are within `SAME_COLOUR`; at the best alignment within one cell
    either way."""
    palette = np.unique(truth.reshape(-1, 3), axis=0).astype(np.int64)

    def labels(colours: np.ndarray) -> np.ndarray:
        flat = colours.reshape(-1, 3).astype(np.int64)
        distance = ((flat[:, None, :] - palette[None]) ** 2).sum(-1)
        return distance.argmin(-1).reshape(colours.shape[:2])

    want, got = labels(truth), labels(result[..., :3])
    want_lab, got_lab = srgb_to_lab(truth), srgb_to_lab(result[..., :3])
    best = 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows = slice(max(0, dy), min(want.shape[0], got.shape[0] + dy))
            columns = slice(max(0, dx), min(want.shape[1], got.shape[1] + dx))
            source = (slice(rows.start - dy, rows.stop - dy), slice(columns.start - dx, columns.stop - dx))
            same = want[rows, columns] == got[source]
            close = np.linalg.norm(want_lab[rows, columns] - got_lab[source], axis=-1) <= SAME_COLOUR
            best = max(best, int((same | close).sum()))
    return best


def colour_error(result: np.ndarray, truth: np.ndarray) -> float:
    """The mean CIELAB distance from each cell of ``truth`` to ``result``'s, at the alignment within one cell
    either way where it is least. A result with fewer cells (a wrong scale) is extended by repeating its edges,
    so every true cell is compared with something."""
    want = srgb_to_lab(truth)
    height, width = want.shape[:2]
    extra = ((1, max(1, height + 1 - result.shape[0])), (1, max(1, width + 1 - result.shape[1])), (0, 0))
    got = srgb_to_lab(np.pad(result[..., :3], extra, mode="edge"))
    return min(
        float(np.linalg.norm(want - got[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width], axis=-1).mean())
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def kiln_runner(device: torch.device) -> Runner:
    """Kiln's `pixelate` on ``device``: the image goes there, the result comes back to the host."""
    from pipelines.image2pixel import Image2PixelInput, pixelate

    def run(
        image: np.ndarray, chroma_subsampling: tuple[int, int], quantization: np.ndarray | None
    ) -> tuple[int, np.ndarray]:
        rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
        tensor = torch.from_numpy(rgba).permute(2, 0, 1).unsqueeze(0).to(device)
        tables = None if quantization is None else torch.from_numpy(np.array(quantization)).to(device)
        result = pixelate(tensor, Image2PixelInput(image_url="bench"), chroma_subsampling, tables)
        return result.grid.scale, result.native.permute(1, 2, 0).cpu().numpy()

    return run


def reference_runner() -> tuple[Runner | None, str]:
    """`unfake.process_image` with fal's defaults, or None and why it cannot run."""
    try:
        from unfake import process_image
    except ImportError as error:
        return None, f"unfake is not installed ({error}); pip install unfake==1.0.7"
    logging.getLogger("unfake.py").setLevel(logging.ERROR)

    def run(image: np.ndarray, *_file) -> tuple[int, np.ndarray]:
        result = asyncio.run(process_image(Image.fromarray(image), max_colors=32, background_mode="corners"))
        scale = result["manifest"].processing_steps["scale_detection"]["detected_scale"]
        return int(scale), np.asarray(result["image"].convert("RGBA"))

    # the package's own __version__ is stale (1.0.0 in the 1.0.7 wheel); the installed distribution is not
    return run, f"unfake {importlib.metadata.version('unfake')}"


@dataclass
class Tally:
    images: int = 0
    scale_right: int = 0
    cells: int = 0
    cells_right: int = 0
    colour_error: float = 0.0  # summed over cells
    palette_errors: list[int] = field(default_factory=list)  # over truths of at most 16 colours

    def add(self, record: dict) -> None:
        self.images += 1
        self.scale_right += record["scale_right"]
        self.cells += record["cells"]
        self.cells_right += record["cells_right"]
        self.colour_error += record["colour_error"] * record["cells"]
        if record["true_colours"] <= 16:
            self.palette_errors.append(record["colours"] - record["true_colours"])

    def summary(self) -> dict[str, float]:
        numbers = {
            "images": self.images,
            "scale_accuracy": round(self.scale_right / max(1, self.images), 4),
            "cell_accuracy": round(self.cells_right / max(1, self.cells), 4),
            "colour_error": round(self.colour_error / max(1, self.cells), 3),
        }
        if self.palette_errors:
            errors = np.abs(self.palette_errors)
            numbers |= {
                "palette_images": len(errors),
                "palette_error_median": float(np.median(errors)),
                "palette_within_2": round(float((errors <= 2).mean()), 4),
            }
        return numbers


def evaluate(runner: Runner, case) -> dict:
    degradation = case.degradation
    scale, native = runner(case.image, degradation.chroma_subsampling, degradation.jpeg_quantization)
    opaque = native[..., 3] >= 128 if native.shape[-1] == 4 else np.ones(native.shape[:2], bool)
    colours = len(np.unique(native[..., :3][opaque].reshape(-1, 3), axis=0))
    return {
        "case": case.name,
        "degradation": case.degradation.name,
        "family": case.degradation.family,
        "scale": case.scale,
        "bucket": case.scale_bucket,
        "true_scale": case.true_scale,
        "detected": scale,
        "scale_right": scale == case.true_scale,
        "cells": int(case.truth[..., 0].size),
        "cells_right": correct_cells(native, case.truth),
        "colour_error": colour_error(native, case.truth),
        "true_colours": case.colours,
        "colours": colours,
    }


def jpeg_quality(name: str) -> int | None:
    for part in name.split():
        if part.startswith("q") and part[1:].isdigit():
            return int(part[1:])
    return None


def group_keys(record: dict) -> list[str]:
    keys = [
        "all",
        f"family {record['family']}",
        f"degradation {record['degradation']}",
        f"scale {record['bucket']}",
        f"family {record['family']} scale {record['bucket']}",
    ]
    quality = jpeg_quality(record["degradation"])
    if quality is not None and quality >= 75:
        keys.append("jpeg q>=75 (any, incl. combined)")
    if record["family"] == "resample" or (record["family"] == "combined" and "x" in record["degradation"]):
        keys.append(f"resampled (incl. combined) scale {record['bucket']}")
    return keys


def summarise(records: list[dict]) -> dict[str, dict]:
    tallies: dict[str, Tally] = {}
    for record in records:
        for key in group_keys(record):
            tallies.setdefault(key, Tally()).add(record)
    return {key: tallies[key].summary() for key in sorted(tallies, key=_order)}


def _order(key: str) -> tuple:
    kinds = ["all", "scale", "family", "resampled", "jpeg", "degradation"]
    return (next(i for i, kind in enumerate(kinds) if key.startswith(kind)), key)


# -- timing --------------------------------------------------------------------------------------------------


# `timing_images` are 4:2:0 JPEGs at quality 75
TIMING_FILE = ((2, 2), jpeg_quantization(75, "420"))


def timing_images(saved: Path | None) -> list[tuple[str, np.ndarray]]:
    """1024x1024 JPEGs (q75, 4:2:0) of real art at scales 8, 16, 4 and 2; a crop smaller than 1024 px is tiled.

    With ``saved``, read from that `.npz` where it exists, else built and written there: a machine without the art
    packages (a lent GPU) times the same images."""
    if saved is not None and saved.exists():
        with np.load(saved) as stored:
            return list(stored.items())
    rng = np.random.default_rng(7)
    sources = {source.name: source for source in SOURCES}
    images = []
    timed = ((8, "nethack-x11tiles"), (16, "trident-tiles"), (4, "nethack-x11tiles"), (2, "nethack-x11tiles"))
    for scale, name in timed:
        art, _ = crop_art(sources[name], 1024 // scale, 1024 // scale, rng)
        big = upscale(art, scale, (0, 0), (0, 0))
        big = np.tile(big, (-(-1024 // big.shape[0]), -(-1024 // big.shape[1]), 1))[:1024, :1024]
        images.append((f"1024x1024 {name} scale {scale} jpeg q75 420", jpeg(np.ascontiguousarray(big), 75, "420")))
    if saved is not None:
        np.savez_compressed(saved, **dict(images))
    return images


# a tree from before `pixelate` took what the decoder reads of the file runs without it
TIMING_SNIPPET = """
import inspect, sys, time, json, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from pipelines.image2pixel import Image2PixelInput, pixelate
image = np.load(sys.argv[2])
rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
tensor = torch.from_numpy(rgba).permute(2, 0, 1)[None]
inputs = Image2PixelInput(image_url="bench")
parameters = inspect.signature(pixelate).parameters
told = (CHROMA, torch.tensor(TABLES))[: ("chroma_subsampling" in parameters) + ("jpeg_quantization" in parameters)]
pixelate(tensor, inputs, *told)
seconds = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter(); pixelate(tensor, inputs, *told); seconds.append(time.perf_counter() - start)
print(json.dumps(seconds))
""".replace("CHROMA", repr(TIMING_FILE[0])).replace("TABLES", repr(TIMING_FILE[1].tolist()))


def time_runner(runner: Runner, image: np.ndarray, repeats: int) -> list[float]:
    runner(image, *TIMING_FILE)  # warm-up: first-call costs are not per image
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(image, *TIMING_FILE)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_tree(tree: Path, image: np.ndarray, threads: int, repeats: int) -> list[float]:
    """Kiln's `pixelate` of a source tree, timed in a fresh interpreter there."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "image.npy"
        np.save(path, image)
        output = subprocess.run(
            [sys.executable, "-c", TIMING_SNIPPET, str(threads), str(path), str(repeats)],
            cwd=tree,
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.loads(output.strip().splitlines()[-1])


def timing(
    systems: dict[str, Runner], images: list[tuple[str, np.ndarray]], baseline: Path | None, threads: int, repeats: int
) -> dict:
    results: dict[str, dict[str, float]] = {}
    for name, image in images:
        row = {}
        # interleaved rounds, so a busy moment of the machine hits every system alike
        samples: dict[str, list[float]] = {}
        for _ in range(2):
            for system, runner in systems.items():
                samples.setdefault(system, []).extend(time_runner(runner, image, repeats))
            if baseline is not None:
                samples.setdefault("kiln (this tree)", []).extend(time_tree(REPOSITORY, image, threads, repeats))
                samples.setdefault("kiln (baseline tree)", []).extend(time_tree(baseline, image, threads, repeats))
        for system, values in samples.items():
            row[system] = round(1000 * statistics.median(values), 1)
        results[name] = row
        print(f"timing {name}: " + ", ".join(f"{system} {ms:.0f} ms" for system, ms in row.items()))
    return results


# -- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    from server.config import Settings
    from server.host_memory import retain_freed_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one case per scale and degradation, scales 2-9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", default="kiln,unfake", help="comma-separated: kiln, unfake")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true", help="time Kiln and unfake; skip the accuracy set")
    parser.add_argument("--timing-images", type=Path, help="an .npz of the timing images: read, or written if missing")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where Kiln runs (unfake: the CPU)"
    )
    parser.add_argument("--baseline-tree", type=Path, help="also time Kiln of this source tree (before/after)")
    parser.add_argument("--records", type=Path, help="write every case's result to this JSON-lines file")
    parser.add_argument("--label", default="", help="a note stored with the results (e.g. 'before')")
    parser.add_argument(
        "--cpu-threads", type=int, default=Settings().cpu_threads, help="torch threads, as `kiln serve --cpu-threads`"
    )
    args = parser.parse_args()
    # the process as `kiln serve` sets it up: the subprocesses that time source trees run as they always have
    torch.set_num_threads(args.cpu_threads)
    host_memory_retained = retain_freed_memory()
    needs_art = not (args.timing_only and args.timing_images and args.timing_images.exists())
    if needs_art and (missing := missing_packages()):
        sys.exit(f"the pixel-art set needs: apt-get install {' '.join(missing)}")

    wanted = args.systems.split(",")
    systems: dict[str, Runner] = {}
    reference_name = "not run"
    if "kiln" in wanted:
        systems["kiln"] = kiln_runner(torch.device(args.device))
    if "unfake" in wanted:
        reference, reference_name = reference_runner()
        if reference is None:
            print(f"reference not run: {reference_name}")
        else:
            systems["unfake"] = reference

    per_cell = 1 if args.quick else 2
    scales = range(2, 10) if args.quick else SCALES
    cases = [] if args.timing_only else build_cases(args.seed, per_cell, scales)
    records: dict[str, list[dict]] = {name: [] for name in systems}
    started = time.perf_counter()
    for number, case in enumerate(cases):
        for name, runner in systems.items():
            records[name].append(evaluate(runner, case))
        if number % 100 == 99:
            print(f"{number + 1} cases, {time.perf_counter() - started:.0f} s", flush=True)
    if args.records:
        with args.records.open("w") as out:
            for name, rows in records.items():
                for row in rows:
                    out.write(json.dumps({"system": name, **row}, default=bool) + "\n")

    summary = {name: summarise(rows) for name, rows in records.items()}
    keys = list(next(iter(summary.values())))
    print(f"kiln on {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'set':<46}{'system':<8}{'images':>7}{'scale':>9}{'cells':>9}{'dE':>7}{'|dcol|':>8}{'<=2':>8}")
    for key in keys:
        for name in summary:
            numbers = summary[name][key]
            palette = (
                f"{numbers['palette_error_median']:>8.1f}{numbers['palette_within_2']:>8.1%}"
                if "palette_images" in numbers
                else ""
            )
            print(
                f"{key:<46}{name:<8}{numbers['images']:>7}{numbers['scale_accuracy']:>9.1%}"
                f"{numbers['cell_accuracy']:>9.1%}{numbers['colour_error']:>7.2f}{palette}"
            )
    images = [] if args.no_timing else timing_images(args.timing_images)
    times = timing(systems, images, args.baseline_tree, args.cpu_threads, TIMING_REPEATS)
    results = {key: {name: summary[name][key] for name in summary} for key in keys}
    path = write_result(
        "image2pixel",
        {
            "label": args.label,
            "reference": reference_name,
            "torch_threads": torch.get_num_threads(),
            "host_memory_retained": host_memory_retained,
            "kiln_device": args.device,
            "quick": args.quick,
            "set": None if args.timing_only else describe(args.seed, per_cell),
            "results": results,
            "timing_ms": times,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
