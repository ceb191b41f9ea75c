"""A pixel-art evaluation set built from real, human-made game art that Debian packages ship under free licences.

The art comes from the tile sheets of four games, read where their Debian packages install them:

    apt-get install nethack-common angband-data crawl-tiles-data freeciv-data

=========================  ==================  ============================================================
package                    sheets              licence (debian/copyright)
=========================  ==================  ============================================================
nethack-common             x11tiles (16 px)    NetHack General Public License
angband-data               16x16.png           public domain (Adam Bolt: "may be redistributed and used for
                                               any purpose, with or without modification")
angband-data               8x8.png             GPL-2 or the Angband licence
crawl-tiles-data           player, floor       Dungeon Crawl Stone Soup: GPL-2+; most tiles public domain /
                           (32 px)             CC0 (the RLTiles)
freeciv-data               trident units,      GPL-2+ (the Freeciv project)
                           tiles, cities
=========================  ==================  ============================================================

Every case is one crop of a sheet (sprites, tiles or terrain; pixels of alpha below 128 take a background colour
per sheet, so the art is opaque as users send it) holding 3 to 32 colours, the palette size fal's default
`max_colors` can keep, so that cell accuracy measures the grid and the palette rather than quantisation loss. It
is upscaled nearest-neighbour at a scale from 2 to 16
with a random grid offset at each side, then degraded: JPEG at several qualities with and without 4:2:0 chroma
subsampling, gaussian blur, bilinear or bicubic resampling by x0.97 to x1.03, and combinations. The ground truth
is the crop's complete cells. The set is deterministic for a given seed and the packages' versions, which are
recorded with each art crop (`describe`).

    python -m bench.pixel_art_set [--seed 0] [--out DIR]   # writes the set as PNGs plus cases.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from testkit.degradations import blur, count_colours, jpeg, jpeg_quantization, resample

__all__ = ["DEGRADATIONS", "SCALES", "SOURCES", "Case", "Source", "build_cases", "describe", "missing_packages"]

SCALES = range(2, 17)
# Upscaled images are about this many pixels a side; crops hold 28-96 cells a side.
TARGET_SIDE = 448
MIN_CELLS, MAX_CELLS = 24, 96
# Crops keep a pixel-art palette that fal's default `max_colors` (32) can hold, and some figure or texture.
MAX_COLOURS = 32
MAX_BACKGROUND = 0.6
CROP_TRIES = 60


@dataclass(frozen=True)
class Source:
    """One sprite or tile sheet of a Debian package."""

    name: str
    package: str
    path: str
    licence: str
    credit: str
    kind: str  # "sprites" (figures on a flat background) or "tiles" (textured terrain, scenes)
    background: tuple[int, int, int]  # composited under transparent pixels


SOURCES = (
    Source(
        "nethack-x11tiles",
        "nethack-common",
        "/usr/share/pixmaps/nethack/x11tiles",
        "NGPL (NetHack General Public License)",
        "NetHack DevTeam tile set",
        "sprites",
        (71, 108, 108),
    ),
    Source(
        "angband-16x16",
        "angband-data",
        "/usr/share/angband/xtra/graf/16x16.png",
        "public domain",
        "Adam Bolt, 1998",
        "sprites",
        (0, 0, 0),
    ),
    Source(
        "angband-8x8",
        "angband-data",
        "/usr/share/angband/xtra/graf/8x8.png",
        "GPL-2 or Angband licence",
        "Angband contributors",
        "sprites",
        (18, 22, 70),
    ),
    Source(
        "crawl-player",
        "crawl-tiles-data",
        "/usr/share/crawl/dat/tiles/player.png",
        "GPL-2+ / CC0 (RLTiles)",
        "Dungeon Crawl Stone Soup tile artists",
        "sprites",
        (20, 24, 82),
    ),
    Source(
        "crawl-floor",
        "crawl-tiles-data",
        "/usr/share/crawl/dat/tiles/floor.png",
        "GPL-2+ / CC0 (RLTiles)",
        "Dungeon Crawl Stone Soup tile artists",
        "tiles",
        (0, 0, 0),
    ),
    Source(
        "trident-units",
        "freeciv-data",
        "/usr/share/games/freeciv/trident/units.png",
        "GPL-2+",
        "Freeciv trident tileset (the Freeciv project)",
        "sprites",
        (96, 140, 60),
    ),
    Source(
        "trident-tiles",
        "freeciv-data",
        "/usr/share/games/freeciv/trident/tiles.png",
        "GPL-2+",
        "Freeciv trident tileset (the Freeciv project)",
        "tiles",
        (255, 255, 255),
    ),
    Source(
        "trident-cities",
        "freeciv-data",
        "/usr/share/games/freeciv/trident/cities.png",
        "GPL-2+",
        "Freeciv trident tileset (the Freeciv project)",
        "sprites",
        (96, 140, 60),
    ),
)


# -- degradations --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Degradation:
    name: str
    family: str  # offset, jpeg, blur, resample, combined
    factor: float  # the resampling factor (1 when none): true cells are scale * factor pixels
    apply: Callable[[np.ndarray], np.ndarray]
    # (quality, chroma) when the last step is a JPEG: what the server's decoder reads of the file
    last_jpeg: tuple[int, str] | None = None

    @property
    def chroma_subsampling(self) -> tuple[int, int]:
        """`RawImage.chroma_subsampling` of the file: (2, 2) when the last step is a 4:2:0 JPEG."""
        return (2, 2) if self.last_jpeg is not None and self.last_jpeg[1] == "420" else (1, 1)

    @property
    def jpeg_quantization(self) -> np.ndarray | None:
        """`RawImage.jpeg_quantization` of the file: the tables of its last step when that is a JPEG."""
        return None if self.last_jpeg is None else jpeg_quantization(*self.last_jpeg)


def _degradations() -> dict[str, Degradation]:
    table = [Degradation("offset", "offset", 1.0, lambda image: image)]
    for quality in (60, 75, 90):
        for chroma in ("444", "420"):
            table.append(
                Degradation(
                    f"jpeg q{quality} {chroma}", "jpeg", 1.0, lambda i, q=quality, c=chroma: jpeg(i, q, c),
                    (quality, chroma),
                )
            )
    for sigma in (0.5, 1.0):
        table.append(Degradation(f"blur {sigma}", "blur", 1.0, lambda i, s=sigma: blur(i, s)))
    for factor in (0.97, 0.98, 0.99, 1.01, 1.02, 1.03):
        table.append(Degradation(f"resample x{factor}", "resample", factor, lambda i, f=factor: resample(i, f)))
    table += [
        Degradation(
            "resample x0.98 + jpeg q85 420", "combined", 0.98, lambda i: jpeg(resample(i, 0.98), 85, "420"),
            (85, "420"),
        ),
        Degradation(
            "resample x1.02 + jpeg q75 444", "combined", 1.02, lambda i: jpeg(resample(i, 1.02), 75, "444"),
            (75, "444"),
        ),
        Degradation(
            "blur 0.6 + jpeg q80 420", "combined", 1.0, lambda i: jpeg(blur(i, 0.6), 80, "420"), (80, "420")
        ),
        Degradation("resample x1.03 + blur 0.5", "combined", 1.03, lambda i: blur(resample(i, 1.03), 0.5)),
        Degradation(
            "bicubic x0.97 + jpeg q90 420",
            "combined",
            0.97,
            lambda i: jpeg(resample(i, 0.97, Image.BICUBIC), 90, "420"),
            (90, "420"),
        ),
    ]
    return {degradation.name: degradation for degradation in table}


DEGRADATIONS = _degradations()


# -- art and cases -------------------------------------------------------------------------------------------


def missing_packages() -> list[str]:
    """The packages whose sheets are not installed."""
    return sorted({source.package for source in SOURCES if not Path(source.path).exists()})


@cache
def package_version(package: str) -> str:
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=True
        )
        return result.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@cache
def sheet(source: Source) -> np.ndarray:
    """The sheet as opaque ``(H, W, 3)`` uint8: pixels of alpha below 128 (the games' soft shadows too) take the
    source's background colour, so every colour is one the artist drew."""
    rgba = np.asarray(Image.open(source.path).convert("RGBA"))
    opaque = rgba[..., 3:] >= 128
    return np.where(opaque, rgba[..., :3], np.array(source.background, np.uint8)).astype(np.uint8)


def crop_art(source: Source, rows: int, columns: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple] | None:
    """A crop of about ``rows x columns`` cells with real content and a pixel-art palette (3 to `MAX_COLOURS`
    colours, at most `MAX_BACKGROUND` of it background); smaller (down to `MIN_CELLS`) where the sheet has no
    such crop of that size; None where it has none at all."""
    pixels = sheet(source)
    background = np.array(source.background, np.uint8)
    while True:
        height, width = min(rows, pixels.shape[0]), min(columns, pixels.shape[1])
        for _ in range(CROP_TRIES):
            top = int(rng.integers(0, pixels.shape[0] - height + 1))
            left = int(rng.integers(0, pixels.shape[1] - width + 1))
            crop = pixels[top : top + height, left : left + width]
            share_background = float((crop == background).all(-1).mean())
            colours = count_colours(crop)
            if 3 <= colours <= MAX_COLOURS and share_background <= MAX_BACKGROUND:
                return crop, (top, left, height, width)
        if max(rows, columns) <= MIN_CELLS:
            return None
        rows, columns = max(MIN_CELLS, rows * 3 // 4), max(MIN_CELLS, columns * 3 // 4)


@dataclass(frozen=True)
class Case:
    """One image of the set and its ground truth."""

    source: Source
    box: tuple[int, int, int, int]  # crop of the sheet: top, left, rows, columns (native pixels)
    scale: int
    start: tuple[int, int]  # pixels cut at the top and left of the upscale (the grid offset is scale - start)
    end: tuple[int, int]  # pixels cut at the bottom and right
    degradation: Degradation
    image: np.ndarray  # (H, W, 3) uint8, what the detector sees
    truth: np.ndarray  # (h, w, 3) uint8, the complete cells
    colours: int  # distinct colours of the truth

    @property
    def cell_size(self) -> float:
        return self.scale * self.degradation.factor

    @property
    def true_scale(self) -> int:
        """The scale a detector should report: the cell size in the image, rounded."""
        return round(self.cell_size)

    @property
    def scale_bucket(self) -> str:
        return "2-3" if self.scale <= 3 else "4-7" if self.scale <= 7 else "8-16"

    @property
    def name(self) -> str:
        top, left, _, _ = self.box
        return f"{self.source.name}@{top},{left} s{self.scale} {self.degradation.name}"

    def palette(self) -> np.ndarray:
        return np.unique(self.truth.reshape(-1, 3), axis=0)


def upscale(art: np.ndarray, scale: int, start: tuple[int, int], end: tuple[int, int]) -> np.ndarray:
    big = art.repeat(scale, 0).repeat(scale, 1)
    return np.ascontiguousarray(big[start[0] : big.shape[0] - end[0], start[1] : big.shape[1] - end[1]])


def complete_cells(art: np.ndarray, start: tuple[int, int], end: tuple[int, int]) -> np.ndarray:
    rows = slice(1 if start[0] else 0, art.shape[0] - (1 if end[0] else 0))
    columns = slice(1 if start[1] else 0, art.shape[1] - (1 if end[1] else 0))
    return art[rows, columns]


def build_cases(seed: int = 0, per_cell: int = 2, scales=SCALES, degradations=None) -> Iterator[Case]:
    """Every scale x degradation, ``per_cell`` times, each with its own art crop (sources taken in turn) and
    random grid offsets; deterministic for a seed."""
    if missing := missing_packages():
        raise RuntimeError(f"the pixel-art set needs Debian packages: apt-get install {' '.join(missing)}")
    rng = np.random.default_rng(seed)
    names = list(degradations or DEGRADATIONS)
    turn = 0
    for scale in scales:
        cells = int(np.clip(round(TARGET_SIDE / scale), MIN_CELLS, MAX_CELLS))
        for name in names:
            degradation = DEGRADATIONS[name]
            made = 0
            while made < per_cell:
                source = SOURCES[turn % len(SOURCES)]
                turn += 1
                crop = crop_art(source, cells, cells, rng)
                if crop is None:
                    continue
                art, box = crop
                made += 1
                start = tuple(int(v) for v in rng.integers(0, scale, 2))
                end = tuple(int(v) for v in rng.integers(0, scale, 2))
                truth = complete_cells(art, start, end)
                image = degradation.apply(upscale(art, scale, start, end))
                colours = count_colours(truth)
                yield Case(source, box, scale, start, end, degradation, image, truth, colours)


def describe(seed: int = 0, per_cell: int = 2) -> dict:
    """What the set is made of, for the benchmark's JSON."""
    return {
        "what": "crops of real game tile sheets (sprites on flat backgrounds, textured terrain), upscaled "
        "nearest-neighbour at every scale 2-16 with a random grid offset on every side, then degraded",
        "seed": seed,
        "cases_per_scale_and_degradation": per_cell,
        "crop_cells": f"round({TARGET_SIDE} / scale) clamped to [{MIN_CELLS}, {MAX_CELLS}] a side "
        "(smaller where the sheet is)",
        "truth": "the crop's complete cells; the true scale of a resampled image is scale x factor, rounded",
        "degradations": {name: d.family for name, d in DEGRADATIONS.items()},
        "jpeg": "PIL/libjpeg, 444 = no chroma subsampling, 420 = 4:2:0",
        "sources": [
            {
                "name": source.name,
                "package": source.package,
                "version": package_version(source.package),
                "file": source.path,
                "licence": source.licence,
                "credit": source.credit,
                "kind": source.kind,
            }
            for source in SOURCES
        ],
    }


# The committed test fixtures (tests/fixtures/pixel_art/): small native crops of freely licensed sheets.
FIXTURES = (
    ("nethack-cells.png", "nethack-x11tiles", (415, 434, 32, 32)),
    ("angband-flat.png", "angband-8x8", (633, 202, 32, 32)),
    ("angband-red-on-navy.png", "angband-8x8", (347, 230, 24, 24)),
    ("angband-bolt-texture.png", "angband-16x16", (33, 307, 24, 24)),
    ("trident-terrain.png", "trident-tiles", (28, 316, 32, 32)),
    ("trident-desert.png", "trident-tiles", (29, 382, 32, 32)),
    ("trident-ships.png", "trident-units", (0, 405, 30, 30)),
    ("crawl-dark-floor.png", "crawl-floor", (86, 760, 32, 32)),
)


def write_fixtures(folder: Path) -> None:
    """Write `FIXTURES` as PNGs and their licences as LICENSES.md into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = {source.name: source for source in SOURCES}
    lines = [
        "# Pixel-art test fixtures",
        "",
        "Native (one pixel per cell) crops of game tile sheets that Debian packages ship, written by",
        "`python -m bench.pixel_art_set --fixtures tests/fixtures/pixel_art`. Pixels of alpha below 128 take the",
        "background colour listed. Each file keeps its own licence; the full texts are in the packages'",
        "`/usr/share/doc/<package>/copyright` and, for the GPL, `/usr/share/common-licenses/GPL-2`.",
        "",
        "| file | package (version) | sheet | crop top, left, rows, columns | background | licence | credit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for file, name, (top, left, rows, columns) in FIXTURES:
        source = sources[name]
        crop = sheet(source)[top : top + rows, left : left + columns]
        Image.fromarray(crop).save(folder / file, optimize=True)
        lines.append(
            f"| {file} | {source.package} ({package_version(source.package)}) | {source.path} | "
            f"{top}, {left}, {rows}, {columns} | {source.background} | {source.licence} | {source.credit} |"
        )
    (folder / "LICENSES.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-cell", type=int, default=2, help="cases per scale and degradation")
    parser.add_argument("--out", type=Path, default=Path("pixel-art-set"), help="folder for the PNGs")
    parser.add_argument("--fixtures", type=Path, help="only write the test fixtures into this folder")
    args = parser.parse_args()
    if args.fixtures:
        write_fixtures(args.fixtures)
        print(f"wrote {len(FIXTURES)} fixtures to {args.fixtures}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for number, case in enumerate(build_cases(args.seed, args.per_cell)):
        image_name, truth_name = f"{number:04d}.png", f"{number:04d}-truth.png"
        Image.fromarray(case.image).save(args.out / image_name)
        Image.fromarray(case.truth).save(args.out / truth_name)
        index.append(
            {
                "image": image_name,
                "truth": truth_name,
                "name": case.name,
                "scale": case.scale,
                "cell_size": case.cell_size,
                "start": case.start,
                "end": case.end,
                "degradation": case.degradation.name,
                "colours": case.colours,
            }
        )
    record = {"set": describe(args.seed, args.per_cell), "cases": index}
    (args.out / "cases.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {len(index)} cases to {args.out}")


if __name__ == "__main__":
    main()
