"""`kiln compare`: a 2 x 2 grid over post-processing whose size is the cells plus their labels, a
manifest entry per cell, byte-identical grids from two runs, failing cells drawn as labelled error
cells. The command runs in-process against an in-process server (through `server.cli`'s parser, the
server's HTTP API only); the last test runs the real command against `kiln serve` with a key."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from server.cli import build_parser
from server.compare import DEFAULT_SEED, ERROR_BORDER, GridLayout, compare_command, split_values
from testkit.images import gradient_image, png_bytes
from testkit.servers import REPO

PP = "fal-ai/post-processing"
WIDTH, HEIGHT = 192, 144


@pytest.fixture(scope="module")
def app(tmp_path_factory, registry):
    from tests.fixtures.apps import start_app

    started = start_app(tmp_path_factory.mktemp("compare"), registry)
    yield started
    started.__exit__(None, None, None)


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes(gradient_image(WIDTH, HEIGHT)))
    return path


def compare(app, *arguments: str) -> int:
    args = build_parser().parse_args(["compare", "--url", "http://testserver", *arguments])
    return compare_command(args, http=app)


def two_by_two(png, out) -> list[str]:
    return [
        "--endpoint",
        PP,
        "--input",
        f"image_url={png}",
        "--input",
        "enable_vignette=true",
        "--input",
        "enable_grain=true",
        "--vary",
        "vignette_strength=0.5,3",
        "--vary",
        "enable_solarize=false,true",
        "--out",
        str(out),
    ]


def pixels(app, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(app.get(url).content)).convert("RGB"))


def test_two_varies_make_a_labelled_two_by_two_grid_and_a_four_cell_manifest(app, png, tmp_path):
    out = tmp_path / "out"
    assert compare(app, *two_by_two(png, out)) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["labels"] == ["vignette_strength=0.5", "vignette_strength=3"]
    assert manifest["columns"]["labels"] == ["enable_solarize=false", "enable_solarize=true"]
    assert "/files/" in manifest["inputs"]["image_url"], "the local file was uploaded first"
    assert manifest["inputs"]["seed"] == DEFAULT_SEED
    cells = manifest["cells"]
    assert [(cell["row"], cell["column"], cell["status"]) for cell in cells] == [
        (0, 0, "ok"),
        (0, 1, "ok"),
        (1, 0, "ok"),
        (1, 1, "ok"),
    ]
    for cell in cells:
        assert cell["request_id"] and cell["response_url"].endswith(cell["request_id"]) and len(cell["images"]) == 1
        assert cell["provenance"]["endpoint"] == PP and cell["provenance"]["seed"] == DEFAULT_SEED
    assert cells[3]["inputs"]["vignette_strength"] == 3 and cells[3]["inputs"]["enable_solarize"] is True
    assert cells[3]["provenance"]["effects"] == ["grain", "vignette", "solarize"]

    grid = Image.open(out / "grid.png")
    layout = GridLayout(**{key: value for key, value in manifest["layout"].items() if key not in ("width", "height")})
    assert (layout.cell_width, layout.cell_height) == (WIDTH, HEIGHT), "cells are the results' size"
    assert layout.row_label_width > 0 and layout.column_label_height > 0
    assert grid.size == (
        layout.row_label_width + 2 * WIDTH + 3 * layout.gap,
        layout.column_label_height + 2 * HEIGHT + 3 * layout.gap,
    )
    drawn = np.asarray(grid.convert("RGB"))
    for cell in cells:
        x, y = layout.cell_origin(cell["row"], cell["column"])
        assert np.array_equal(drawn[y : y + HEIGHT, x : x + WIDTH], pixels(app, cell["images"][0])), (
            "each cell is its result"
        )
    labels = drawn[: layout.column_label_height, layout.row_label_width :]
    assert (labels < 100).any(), "the column labels are drawn"
    assert (drawn[layout.column_label_height :, : layout.row_label_width] < 100).any(), "the row labels are drawn"


def test_the_same_comparison_twice_gives_the_same_grid_bytes(app, png, tmp_path):
    assert compare(app, *two_by_two(png, tmp_path / "first")) == 0
    assert compare(app, *two_by_two(png, tmp_path / "second")) == 0
    first, second = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("first", "second"))
    assert {cell["request_id"] for cell in first["cells"]}.isdisjoint(cell["request_id"] for cell in second["cells"])
    assert (tmp_path / "first" / "grid.png").read_bytes() == (tmp_path / "second" / "grid.png").read_bytes()


def test_failing_cells_are_drawn_as_labelled_error_cells(app, png, tmp_path, capsys):
    out = tmp_path / "out"
    status = compare(
        app,
        "--endpoint",
        PP,
        "--vary",
        f"image_url={png},data:image/png;base64,AAAA",
        "--vary",
        "vignette_strength=0.5,99",
        "--input",
        "enable_vignette=true",
        "--out",
        str(out),
    )
    assert status == 1
    assert "3 of 4 cells failed" in capsys.readouterr().err
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    assert [cell["status"] for cell in cells] == ["ok", "error", "error", "error"]
    refused, undecodable = cells[1], cells[2]
    assert refused["http_status"] == 422 and refused["request_id"] is None and "vignette_strength" in refused["error"]
    assert undecodable["http_status"] == 422 and undecodable["request_id"] and "image_url" in undecodable["error"]

    manifest = json.loads((out / "manifest.json").read_text())
    layout = GridLayout(**{key: value for key, value in manifest["layout"].items() if key not in ("width", "height")})
    drawn = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    for cell in cells:
        x, y = layout.cell_origin(cell["row"], cell["column"])
        region = drawn[y : y + layout.cell_height, x : x + layout.cell_width]
        is_error_cell = (region == ERROR_BORDER).all(axis=-1).any()
        assert is_error_cell == (cell["status"] == "error")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--endpoint", "fal-ai/none"], "fal-ai/none is not served"),
        (["--endpoint", PP, "--vary", "nothing=1,2"], "takes an input `nothing`"),
        (["--endpoint", PP, "--input", "blur_radius=wide"], "`blur_radius` takes an integer"),
        (["--endpoint", PP, "--input", "image_url"], "write NAME=VALUE"),
        (
            [
                "--endpoint",
                PP,
                "--endpoint",
                "fal-ai/post-processing/sharpen",
                "--vary",
                "sharpen_alpha=1,2",
                "--vary",
                "cas_amount=0,1",
            ],
            "at most 2 dimensions",
        ),
    ],
)
def test_a_comparison_that_cannot_run_exits_2_and_says_why(app, tmp_path, capsys, arguments, message):
    assert compare(app, *arguments, "--out", str(tmp_path / "out")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_the_servers_key_nothing_runs(make_client, png, tmp_path, capsys):
    keyed = make_client(api_keys=("team-key",))
    assert compare(keyed, *two_by_two(png, tmp_path / "out")) == 2
    assert "API key" in capsys.readouterr().err


def test_vary_values_split_on_commas_outside_json():
    assert split_values('0.5, 3,"a,b"') == ["0.5", "3", '"a,b"']
    assert split_values('{"width":64,"height":48},square') == ['{"width":64,"height":48}', "square"]
    assert split_values("data:image/png;base64,AAAA,https://x/a.png") == [
        "data:image/png;base64,AAAA",
        "https://x/a.png",
    ]


@pytest.mark.slow
def test_the_kiln_compare_command_against_a_server_with_a_key(ui_server, png, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "server.cli",
        "compare",
        "--url",
        ui_server.url,
        "--key",
        "ui-test-key",
        *two_by_two(png, out)[:-2],
        "--out",
        str(out),
    ]
    ran = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert len(ran.stdout.strip().splitlines()) == 4, "one provenance line per cell"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["image_url"].startswith(ui_server.url + "/files/")
    assert Image.open(out / "grid.png").size == (manifest["layout"]["width"], manifest["layout"]["height"])
