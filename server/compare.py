"""Comparisons: one base input run over a grid of variations, drawn side by side with provenance.

A comparison has one or more endpoints, a base input and at most two varied dimensions: each
`--vary NAME=V1,V2` is one, and several endpoints are one more (named `endpoint`, always first).
Two dimensions are rows and columns; one is a single row; none is a single cell. At most
`MAX_AXIS_VALUES` values a dimension and `MAX_CELLS` cells. An endpoint with a `seed` input gets
`seed=DEFAULT_SEED` unless the comparison sets or varies it, so cells differ only in what is varied
and a re-run on the same weights draws the same pixels.

Every cell goes through the public queue protocol (so cells batch and run on any worker); the CLI
talks to Kiln over HTTP only. `grid.png` is drawn deterministically: cells in a fixed layout,
labels in Pillow's built-in bitmap font scaled by whole pixels, no timestamps, so the same results
give the same bytes. A cell that fails is drawn as a labelled error cell.

`kiln compare --url URL [--key KEY] --endpoint ID [--endpoint ID2 ...] --input NAME=VALUE ...
--vary NAME=V1,V2[,...] ... --out DIR` writes `DIR/grid.png` and `DIR/manifest.json` (one entry per
cell: inputs, request id, result URLs, provenance). An input or varied value that names a local
file, given to an image field (`*_url`, `*_urls`), is uploaded through Kiln's storage API first.
The compare page saves its comparisons (`ComparisonStore`) so each has a permalink and a re-run.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import logging
import mimetypes
import os
import re
import sys
import textwrap
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field

from server.ui.forms import InputError, InputField, format_value, input_fields, parse_value

logger = logging.getLogger(__name__)

MAX_AXIS_VALUES = 16
MAX_CELLS = 64
MAX_DIMENSIONS = 2
DEFAULT_SEED = 0
ENDPOINT_AXIS = "endpoint"
# a data URI's header, up to the comma that starts its data
DATA_URI_HEAD = re.compile(r"^data:[^,]*$")
IMAGE_KINDS = ("image", "images")

# -- the plan: which cells, with which inputs ------------------------------------------------


class ComparisonError(ValueError):
    """A comparison that cannot be run as asked; `loc` names the offending part, FastAPI-style."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class VarySpec(BaseModel):
    name: str = Field(min_length=1, description="The input to vary")
    values: list[str] = Field(
        min_length=1, max_length=MAX_AXIS_VALUES, description="Its values as text, read by the input's type"
    )
    labels: list[str] | None = Field(
        None, description="How each value is labelled (`name=label`); the value itself by default"
    )


class ComparisonSpec(BaseModel):
    """What a comparison runs: the page posts it, saved comparisons keep it, the CLI builds it."""

    endpoints: list[str] = Field(min_length=1, max_length=MAX_AXIS_VALUES)
    inputs: dict[str, Any] = Field(default_factory=dict, description="The base input every cell starts from")
    vary: list[VarySpec] = Field(default_factory=list, max_length=MAX_DIMENSIONS)


@dataclass(frozen=True)
class Axis:
    """One varied dimension: an input (or `endpoint`) and its values, with their labels."""

    name: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "values": list(self.values), "labels": list(self.labels)}


@dataclass(frozen=True)
class Cell:
    row: int
    column: int
    endpoint: str
    inputs: dict[str, Any]
    row_label: str
    column_label: str

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "column": self.column,
            "row_label": self.row_label,
            "column_label": self.column_label,
            "endpoint": self.endpoint,
            "inputs": self.inputs,
        }


@dataclass(frozen=True)
class Plan:
    endpoints: tuple[str, ...]
    inputs: dict[str, Any]
    rows: Axis | None
    columns: Axis | None
    cells: tuple[Cell, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows.values) if self.rows else 1, len(self.columns.values) if self.columns else 1)


def find_field(name: str, endpoints: Sequence[str], fields: dict[str, list[InputField]]) -> InputField | None:
    """The first of the endpoints' fields called `name`."""
    for endpoint in endpoints:
        for candidate in fields[endpoint]:
            if candidate.name == name:
                return candidate
    return None


def plan(spec: ComparisonSpec, fields: dict[str, list[InputField]]) -> Plan:
    """The cells of a comparison; `fields` holds each endpoint's inputs (`forms.input_fields`)."""
    endpoints = tuple(spec.endpoints)
    for index, endpoint in enumerate(endpoints):
        if endpoint not in fields:
            raise ComparisonError(("endpoints", index), f"{endpoint} is not served here")
    if len(set(endpoints)) != len(endpoints):
        raise ComparisonError(("endpoints",), "each endpoint may be named once")
    for name in spec.inputs:
        if find_field(name, endpoints, fields) is None:
            raise ComparisonError(("inputs", name), f"none of {', '.join(endpoints)} takes an input `{name}`")

    axes: list[Axis] = []
    if len(endpoints) > 1:
        axes.append(Axis(ENDPOINT_AXIS, endpoints, endpoints))
    for index, vary in enumerate(spec.vary):
        found = find_field(vary.name, endpoints, fields)
        if found is None:
            raise ComparisonError(
                ("vary", index, "name"), f"none of {', '.join(endpoints)} takes an input `{vary.name}`"
            )
        if any(axis.name == vary.name for axis in axes):
            raise ComparisonError(("vary", index, "name"), f"`{vary.name}` is varied twice")
        values = []
        for position, text in enumerate(vary.values):
            try:
                values.append(parse_value(found, text))
            except InputError as error:
                raise ComparisonError(("vary", index, "values", position), str(error)) from None
        shown = vary.labels if vary.labels and len(vary.labels) == len(values) else map(format_value, values)
        labels = tuple(f"{vary.name}={label}" for label in shown)
        axes.append(Axis(vary.name, tuple(values), labels))
    if len(axes) > MAX_DIMENSIONS:
        raise ComparisonError(
            ("vary",),
            f"a comparison has at most {MAX_DIMENSIONS} dimensions (rows and columns); several endpoints count as one",
        )
    for axis in axes:
        if len(axis.values) > MAX_AXIS_VALUES:
            raise ComparisonError(("vary",), f"`{axis.name}` has {len(axis.values)} values; at most {MAX_AXIS_VALUES}")

    rows, columns = (axes[0], axes[1]) if len(axes) == 2 else (None, axes[0] if axes else None)
    count = (len(rows.values) if rows else 1) * (len(columns.values) if columns else 1)
    if count > MAX_CELLS:
        raise ComparisonError(("vary",), f"the comparison has {count} cells; at most {MAX_CELLS}")

    base = dict(spec.inputs)
    varied = {axis.name for axis in axes}
    if "seed" not in base and "seed" not in varied and find_field("seed", endpoints, fields) is not None:
        base["seed"] = DEFAULT_SEED

    cells = []
    for (row, row_value), (column, column_value) in itertools.product(_positions(rows), _positions(columns)):
        endpoint = endpoints[0]
        inputs = dict(base)
        for axis, value in ((rows, row_value), (columns, column_value)):
            if axis is None:
                continue
            if axis.name == ENDPOINT_AXIS:
                endpoint = value
            else:
                inputs[axis.name] = value
        cells.append(
            Cell(
                row=row,
                column=column,
                endpoint=endpoint,
                inputs=inputs,
                row_label=rows.labels[row] if rows else "",
                column_label=columns.labels[column] if columns else endpoint,
            )
        )
    return Plan(endpoints, base, rows, columns, tuple(cells))


def _positions(axis: Axis | None) -> list[tuple[int, Any]]:
    return list(enumerate(axis.values)) if axis else [(0, None)]


def split_values(text: str) -> list[str]:
    """`V1,V2,...` split on the commas outside brackets and quotes, so JSON values keep theirs; a
    data URI keeps the comma after its header (`data:image/png;base64,...`)."""
    values, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    joined: list[str] = []
    for value in (value.strip() for value in values):
        if joined and DATA_URI_HEAD.match(joined[-1]):
            joined[-1] += "," + value
        else:
            joined.append(value)
    return joined


# -- the grid image ------------------------------------------------------------------------------

GAP = 8
PAD = 6
LABEL_SCALE = 2
MIN_CELL = 128
MAX_CELL = 512
MAX_COLUMN_LABEL_LINES = 3
MAX_ROW_LABEL_CHARS = 24
BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (236, 236, 236)
LABEL_COLOR = (20, 20, 20)
ERROR_BACKGROUND = (255, 228, 228)
ERROR_BORDER = (190, 30, 30)
ERROR_TEXT = (120, 0, 0)


@dataclass(frozen=True)
class CellPicture:
    """What one cell shows: its first result image, or why it has none."""

    image: Image.Image | None = None
    error_type: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class GridLayout:
    columns: int
    rows: int
    cell_width: int
    cell_height: int
    row_label_width: int
    column_label_height: int
    gap: int = GAP
    # column labels are drawn at twice the font's size, or at its size when a part would not fit
    column_label_scale: int = LABEL_SCALE

    @property
    def width(self) -> int:
        return self.row_label_width + self.columns * (self.cell_width + self.gap) + self.gap

    @property
    def height(self) -> int:
        return self.column_label_height + self.rows * (self.cell_height + self.gap) + self.gap

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        return (
            self.row_label_width + self.gap + column * (self.cell_width + self.gap),
            self.column_label_height + self.gap + row * (self.cell_height + self.gap),
        )

    def to_json(self) -> dict[str, int]:
        return {
            "width": self.width,
            "height": self.height,
            "rows": self.rows,
            "columns": self.columns,
            "cell_width": self.cell_width,
            "cell_height": self.cell_height,
            "row_label_width": self.row_label_width,
            "column_label_height": self.column_label_height,
            "gap": self.gap,
            "column_label_scale": self.column_label_scale,
        }


def _font() -> ImageFont.ImageFont:
    """Pillow's built-in bitmap font (6x11 px, ASCII): no font file, same glyphs on every machine."""
    return ImageFont.load_default_imagefont()


def _ascii(text: str) -> str:
    return "".join(char if 32 <= ord(char) < 127 else "?" for char in text)


def _wrap(text: str, width: int, max_lines: int) -> list[str]:
    """Lines of at most `width` characters; a `name=value` label too long for one line breaks after `=`."""
    width = max(1, width)
    text = _ascii(text)
    name, sep, value = text.partition("=")
    if sep and len(text) > width:
        lines = [*textwrap.wrap(name + sep, width=width), *textwrap.wrap(value, width=width, break_on_hyphens=False)]
    else:
        lines = textwrap.wrap(text, width=width, break_on_hyphens=False)
    lines = lines or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 3)] + "..."
    return lines


def _draw_text(canvas: Image.Image, origin: tuple[int, int], lines: list[str], color, scale: int) -> None:
    """Draws lines of the bitmap font at a whole-pixel scale (nearest neighbour, so exact)."""
    font = _font()
    glyph_width, line_height = _glyph_size()
    for index, line in enumerate(lines):
        if not line:
            continue
        mask = Image.new("L", (glyph_width * len(line), line_height), 0)
        ImageDraw.Draw(mask).text((0, 0), line, fill=255, font=font)
        if scale != 1:
            mask = mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)
        ink = Image.new("RGB", mask.size, color)
        canvas.paste(ink, (origin[0], origin[1] + index * line_height * scale), mask)


def _glyph_size() -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox("M")
    return right - left, 11


def _fit(image: Image.Image) -> Image.Image:
    """The image as RGB on the cell background, no larger than `MAX_CELL` a side."""
    image = image.convert("RGBA")
    if max(image.size) > MAX_CELL:
        scale = MAX_CELL / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    flat = Image.new("RGB", image.size, CELL_BACKGROUND)
    flat.paste(image, (0, 0), image)
    return flat


def layout_for(pictures: Sequence[CellPicture], row_labels: Sequence[str], column_labels: Sequence[str]) -> GridLayout:
    glyph_width, line_height = _glyph_size()
    fitted = [_fit(picture.image) for picture in pictures if picture.image is not None]
    cell_width = max([MIN_CELL, *(image.width for image in fitted)])
    cell_height = max([MIN_CELL, *(image.height for image in fitted)])
    # twice the font's size when every label's `name=` fits on a line at that size
    heads = [len(head + sep) for head, sep, _ in (_ascii(label).partition("=") for label in column_labels)]
    scale = LABEL_SCALE if max(heads) * glyph_width * LABEL_SCALE <= cell_width else 1
    per_line = cell_width // (glyph_width * scale)
    lines = max(len(_wrap(label, per_line, MAX_COLUMN_LABEL_LINES)) for label in column_labels)
    column_label_height = 2 * PAD + lines * line_height * scale
    longest = max((len(label) for label in row_labels), default=0)
    row_label_width = 0
    if any(row_labels):
        row_label_width = 2 * PAD + min(longest, MAX_ROW_LABEL_CHARS) * glyph_width * LABEL_SCALE
    return GridLayout(
        columns=len(column_labels),
        rows=len(row_labels),
        cell_width=cell_width,
        cell_height=cell_height,
        row_label_width=row_label_width,
        column_label_height=column_label_height,
        column_label_scale=scale,
    )


def render_grid(
    pictures: Sequence[CellPicture], row_labels: Sequence[str], column_labels: Sequence[str]
) -> tuple[Image.Image, GridLayout]:
    """The labelled grid; `pictures` row by row, `len(row_labels) * len(column_labels)` of them."""
    if len(pictures) != len(row_labels) * len(column_labels):
        raise ValueError(f"{len(pictures)} pictures for a {len(row_labels)} x {len(column_labels)} grid")
    layout = layout_for(pictures, row_labels, column_labels)
    glyph_width, line_height = _glyph_size()
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    scale = layout.column_label_scale
    per_line = layout.cell_width // (glyph_width * scale)
    for column, label in enumerate(column_labels):
        x, _ = layout.cell_origin(0, column)
        _draw_text(canvas, (x, PAD), _wrap(label, per_line, MAX_COLUMN_LABEL_LINES), LABEL_COLOR, scale)
    row_lines = max(1, layout.cell_height // (line_height * LABEL_SCALE))
    for row, label in enumerate(row_labels):
        if not label:
            continue
        _, y = layout.cell_origin(row, 0)
        _draw_text(canvas, (PAD, y), _wrap(label, MAX_ROW_LABEL_CHARS, row_lines), LABEL_COLOR, LABEL_SCALE)
    for index, picture in enumerate(pictures):
        row, column = divmod(index, len(column_labels))
        x, y = layout.cell_origin(row, column)
        if picture.image is not None:
            image = _fit(picture.image)
            canvas.paste(CELL_BACKGROUND, (x, y, x + layout.cell_width, y + layout.cell_height))
            canvas.paste(
                image, (x + (layout.cell_width - image.width) // 2, y + (layout.cell_height - image.height) // 2)
            )
        else:
            _draw_error(canvas, (x, y), layout, picture)
    return canvas, layout


def _draw_error(canvas: Image.Image, origin: tuple[int, int], layout: GridLayout, picture: CellPicture) -> None:
    x, y = origin
    box = (x, y, x + layout.cell_width - 1, y + layout.cell_height - 1)
    ImageDraw.Draw(canvas).rectangle(box, fill=ERROR_BACKGROUND, outline=ERROR_BORDER, width=2)
    glyph_width, line_height = _glyph_size()
    per_line = (layout.cell_width - 2 * PAD) // glyph_width
    room = max(0, (layout.cell_height - 2 * PAD - 2 * line_height) // line_height)
    _draw_text(canvas, (x + PAD, y + PAD), ["ERROR"], ERROR_BORDER, LABEL_SCALE)
    lines = [
        *_wrap(picture.error_type or "error", per_line, 1),
        *_wrap(picture.error or "", per_line, max(room - 1, 1)),
    ]
    _draw_text(canvas, (x + PAD, y + PAD + line_height * LABEL_SCALE + 2), lines[: max(room, 1)], ERROR_TEXT, 1)


# -- talking to Kiln -----------------------------------------------------------------------------

POLL_SECONDS = 0.2
# how long one comparison may wait for its cells before the rest are drawn as timed out
WAIT_SECONDS = 3600.0


class KilnUnreachable(RuntimeError):
    pass


@dataclass
class CellRun:
    """One cell's request as it goes through the queue."""

    cell: Cell
    request_id: str | None = None
    status_url: str | None = None
    response_url: str | None = None
    http_status: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    done: bool = False
    picture: CellPicture = field(default_factory=CellPicture)

    def fail(self, message: str, error_type: str, http_status: int | None = None) -> None:
        self.error, self.error_type, self.http_status, self.done = message, error_type, http_status, True
        self.picture = CellPicture(error_type=error_type, error=message)

    def to_json(self) -> dict[str, Any]:
        result = self.result or {}
        return {
            **self.cell.to_json(),
            "status": "error" if self.error else "ok",
            "request_id": self.request_id,
            "status_url": self.status_url,
            "response_url": self.response_url,
            "http_status": self.http_status,
            "error": self.error,
            "error_type": self.error_type,
            "images": [image.get("url") for image in result.get("images", []) if isinstance(image, dict)],
            "provenance": result.get("provenance"),
        }


def error_text(body: Any) -> str:
    """A response body's error as one line: FastAPI's 422 list or fal's `detail` string."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', [])[1:])}: {item.get('msg', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return str(detail)


class KilnClient:
    """The few protocol calls a comparison makes, over any httpx client pointed at Kiln."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def _call(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise KilnUnreachable(f"cannot reach Kiln at {self.http.base_url}: {error}") from None

    def input_fields(self, endpoint: str) -> list[InputField]:
        response = self._call("GET", "/api/openapi/queue/openapi.json", params={"endpoint_id": endpoint})
        if response.status_code == 404:
            raise ComparisonError(("endpoints",), f"{endpoint} is not served at {self.http.base_url}")
        if response.status_code != 200:
            raise ComparisonError(("endpoints",), f"{endpoint}'s OpenAPI document: {error_text(_json_body(response))}")
        return input_fields(response.json(), endpoint)

    def upload(self, path: Path) -> str:
        """Uploads a local file through the storage API; its URL on Kiln."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        response = self._call(
            "POST", "/rest/storage/upload/initiate", json={"file_name": path.name, "content_type": content_type}
        )
        if response.status_code != 200:
            raise ComparisonError(("inputs",), f"uploading {path} failed: {error_text(_json_body(response))}")
        target = response.json()
        stored = self._call(
            "PUT", target["upload_url"], content=path.read_bytes(), headers={"Content-Type": content_type}
        )
        if stored.status_code >= 300:
            raise ComparisonError(("inputs",), f"uploading {path} failed: {error_text(_json_body(stored))}")
        return target["file_url"]

    def submit(self, run: CellRun) -> None:
        response = self._call("POST", f"/queue/{run.cell.endpoint}", json=run.cell.inputs)
        body = _json_body(response)
        if response.status_code != 200:
            run.fail(error_text(body), _error_type(response, body), response.status_code)
            return
        run.request_id, run.status_url, run.response_url = body["request_id"], body["status_url"], body["response_url"]

    def poll(self, run: CellRun) -> None:
        """Marks the run done once COMPLETED, with its result or error."""
        status = self._call("GET", run.status_url)
        if status.status_code == 404:
            run.fail("the request is gone (past the server's retention?)", "not_found", 404)
            return
        if status.status_code not in (200, 202) or _json_body(status).get("status") != "COMPLETED":
            return
        response = self._call("GET", run.response_url)
        body = _json_body(response)
        run.http_status = response.status_code
        if response.status_code != 200:
            run.fail(error_text(body), _error_type(response, body), response.status_code)
            return
        run.result, run.done = body, True
        images = [image for image in body.get("images", []) if isinstance(image, dict) and image.get("url")]
        if not images:
            run.picture = CellPicture(error_type="no_image", error="the result has no image")
            return
        try:
            run.picture = CellPicture(image=Image.open(io.BytesIO(self.download(images[0]["url"]))))
        except (OSError, ValueError) as error:
            run.picture = CellPicture(error_type="download_failed", error=str(error))

    def download(self, url: str) -> bytes:
        if url.startswith("data:"):
            return base64.b64decode(url.partition(",")[2])
        response = self._call("GET", url)
        if response.status_code != 200:
            raise ValueError(f"downloading {url} answered {response.status_code}")
        return response.content


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"detail": response.text[:500] or response.reason_phrase}


def _error_type(response: httpx.Response, body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        return body["error_type"]
    if response.status_code == 422:
        return "validation_error"
    return response.headers.get("x-fal-error-type") or f"http_{response.status_code}"


def read_arguments(
    client: KilnClient,
    endpoints: Sequence[str],
    input_args: Iterable[str],
    vary_args: Iterable[str],
    fields: dict[str, list[InputField]],
) -> ComparisonSpec:
    """`--input NAME=VALUE` and `--vary NAME=V1,V2` as a spec: base values read by each field's type
    (a repeated list input appends), local files given to image fields uploaded first."""
    uploads: dict[str, str] = {}

    def upload(field: InputField, value: Any) -> Any:
        if field.kind not in IMAGE_KINDS:
            return value
        if isinstance(value, list):
            return [upload(field, item) for item in value]
        if isinstance(value, str) and not value.startswith(("http://", "https://", "data:")) and os.path.isfile(value):
            if value not in uploads:
                uploads[value] = client.upload(Path(value))
            return uploads[value]
        return value

    inputs: dict[str, Any] = {}
    for argument in input_args:
        name, text = _name_value(argument, "--input")
        found = find_field(name, endpoints, fields)
        if found is None:
            raise ComparisonError(("inputs", name), f"none of {', '.join(endpoints)} takes an input `{name}`")
        try:
            value = upload(found, parse_value(found, text))
        except InputError as error:
            raise ComparisonError(("inputs", name), str(error)) from None
        if name in inputs and isinstance(inputs[name], list) and isinstance(value, list):
            value = inputs[name] + value
        inputs[name] = value
    vary = []
    for argument in vary_args:
        name, text = _name_value(argument, "--vary")
        found = find_field(name, endpoints, fields)
        texts = split_values(text)
        values = [upload(found, value) for value in texts] if found is not None else texts
        # an uploaded file is labelled by its name, not by the URL it was given
        labels = [Path(text).name if value != text else text for text, value in zip(texts, values, strict=True)]
        vary.append(VarySpec(name=name, values=values, labels=labels if labels != values else None))
    return ComparisonSpec(endpoints=list(endpoints), inputs=inputs, vary=vary)


def _name_value(argument: str, option: str) -> tuple[str, str]:
    name, sep, value = argument.partition("=")
    if not sep or not name.strip():
        raise ComparisonError((option,), f"`{option} {argument}`: write NAME=VALUE")
    return name.strip(), value


def run_comparison(client: KilnClient, comparison: Plan, *, wait_seconds: float = WAIT_SECONDS) -> list[CellRun]:
    """Submits every cell, then waits for all of them; failures become error cells, never exceptions."""
    runs = [CellRun(cell) for cell in comparison.cells]
    for run in runs:
        client.submit(run)
    deadline = time.monotonic() + wait_seconds
    while True:
        pending = [run for run in runs if not run.done]
        if not pending:
            return runs
        if time.monotonic() > deadline:
            for run in pending:
                run.fail(f"no result within {wait_seconds:.0f}s", "timeout")
            return runs
        for run in pending:
            client.poll(run)
        if any(not run.done for run in runs):
            time.sleep(POLL_SECONDS)


def manifest(url: str, comparison: Plan, runs: Sequence[CellRun], layout: GridLayout) -> dict[str, Any]:
    return {
        "url": url,
        "endpoints": list(comparison.endpoints),
        "inputs": comparison.inputs,
        "rows": comparison.rows.to_json() if comparison.rows else None,
        "columns": comparison.columns.to_json() if comparison.columns else None,
        "layout": layout.to_json(),
        "cells": [run.to_json() for run in runs],
    }


def write_outputs(out: Path, url: str, comparison: Plan, runs: Sequence[CellRun]) -> dict[str, Any]:
    """`out/grid.png` and `out/manifest.json`; returns the manifest."""
    row_labels = list(comparison.rows.labels) if comparison.rows else [""]
    column_labels = list(comparison.columns.labels) if comparison.columns else [comparison.cells[0].column_label]
    grid, layout = render_grid([run.picture for run in runs], row_labels, column_labels)
    out.mkdir(parents=True, exist_ok=True)
    grid.save(out / "grid.png", "PNG")
    body = manifest(url, comparison, runs, layout)
    (out / "manifest.json").write_text(json.dumps(body, indent=2) + "\n")
    return body


# -- saved comparisons (the compare page's permalinks) -------------------------------------------

COMPARISON_ID = re.compile(r"^[0-9a-f]{32}$")


class ComparisonStore:
    """Comparisons made in the page, one JSON file each under `<data-dir>/comparisons/`, readable
    only by the key that made them (another key is told it does not exist)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, comparison_id: str) -> Path | None:
        return self.root / f"{comparison_id}.json" if COMPARISON_ID.match(comparison_id) else None

    def create(self, owner: str, spec: ComparisonSpec, comparison: Plan) -> dict[str, Any]:
        record = {
            "id": uuid.uuid4().hex,
            "owner": owner,
            "created_at": time.time(),
            "spec": spec.model_dump(mode="json"),
            "endpoints": list(comparison.endpoints),
            "inputs": comparison.inputs,
            "rows": comparison.rows.to_json() if comparison.rows else None,
            "columns": comparison.columns.to_json() if comparison.columns else None,
            "cells": [cell.to_json() for cell in comparison.cells],
        }
        self._write(record)
        return record

    def get(self, comparison_id: str, owner: str) -> dict[str, Any] | None:
        path = self._path(comparison_id)
        if path is None or not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if record.get("owner") == owner else None

    def update_cells(self, record: dict[str, Any], cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Records each cell's request (or why it was not accepted)."""
        record = {**record, "cells": [{**cell, **update} for cell, update in zip(record["cells"], cells, strict=True)]}
        self._write(record)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(record["id"])
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(record, separators=(",", ":")))
        os.replace(partial, path)


# -- the `kiln compare` command ------------------------------------------------------------------

HELP = "run one input over rows and columns of variations and draw the results side by side"


def add_compare_command(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help=HELP,
        description=f"{HELP}. Writes DIR/grid.png and DIR/manifest.json.",
        epilog=(
            f"Two dimensions at most (each --vary is one; several --endpoint are one more), {MAX_AXIS_VALUES} values "
            f"each, {MAX_CELLS} cells. Endpoints with a `seed` input get seed={DEFAULT_SEED} unless you set or vary it. "
            "A value that names a local file, given to an image input (*_url, *_urls), is uploaded first."
        ),
    )
    compare.add_argument("--url", required=True, help="the Kiln server, e.g. http://127.0.0.1:8000")
    compare.add_argument("--key", default=os.environ.get("FAL_KEY"), help="API key (default: $FAL_KEY)")
    compare.add_argument("--endpoint", action="append", required=True, metavar="ID", help="endpoint id, repeatable")
    compare.add_argument("--input", action="append", default=[], metavar="NAME=VALUE", help="a base input, repeatable")
    compare.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="NAME=V1,V2[,...]",
        help="an input to vary, repeatable (two at most)",
    )
    compare.add_argument("--out", required=True, type=Path, metavar="DIR", help="where grid.png and manifest.json go")


def compare_command(args: argparse.Namespace, *, http: httpx.Client | None = None) -> int:
    """Runs `kiln compare`; 0 when every cell has a result, 1 when some failed (the grid is still
    written, failed cells drawn as errors), 2 when the comparison could not run at all."""
    headers = {"Authorization": f"Key {args.key}"} if args.key else {}
    owned = http is None
    http = http or httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=60.0)
    client = KilnClient(http)
    try:
        endpoints = list(dict.fromkeys(args.endpoint))
        fields = {endpoint: client.input_fields(endpoint) for endpoint in endpoints}
        spec = read_arguments(client, endpoints, args.input, args.vary, fields)
        comparison = plan(spec, fields)
        rows, columns = comparison.shape
        print(f"kiln compare: {rows} x {columns} cells on {', '.join(endpoints)}", file=sys.stderr)
        runs = run_comparison(client, comparison)
        body = write_outputs(args.out, args.url, comparison, runs)
    except (ComparisonError, KilnUnreachable) as error:
        print(f"kiln compare: {error}", file=sys.stderr)
        return 2
    finally:
        if owned:
            http.close()
    print_table(body, sys.stdout)
    failed = [cell for cell in body["cells"] if cell["status"] == "error"]
    print(f"wrote {args.out / 'grid.png'} and {args.out / 'manifest.json'}", file=sys.stderr)
    if failed:
        print(
            f"kiln compare: {len(failed)} of {len(body['cells'])} cells failed (drawn as error cells)", file=sys.stderr
        )
        return 1
    return 0


def print_table(body: dict[str, Any], stream) -> None:
    """One line per cell: where it sits, its request, and its provenance at a glance."""
    for cell in body["cells"]:
        label = " / ".join(part for part in (cell["row_label"], cell["column_label"]) if part)
        if cell["status"] == "error":
            summary = f"ERROR {cell['error_type']}: {cell['error']}"
        else:
            summary = " ".join(f"{key}={value}" for key, value in provenance_summary(cell["provenance"] or {}).items())
        print(f"[{cell['row']},{cell['column']}] {label}  {cell['request_id'] or '-'}  {summary}", file=stream)


def provenance_summary(provenance: dict[str, Any]) -> dict[str, str]:
    """The provenance fields a comparison sets side by side (the compare page shows the same)."""
    weights = provenance.get("weights") or {}
    scheduler = provenance.get("scheduler")
    acceleration = provenance.get("acceleration")
    timings = provenance.get("timings") or {}
    summary = {
        "endpoint": provenance.get("endpoint"),
        "weights": ", ".join(
            f"{name}@{str(entry.get('revision', ''))[:12]}#{str(entry.get('digest', ''))[:12]}"
            for name, entry in weights.items()
            if isinstance(entry, dict)
        ),
        "seed": provenance.get("seed"),
        "steps": provenance.get("num_inference_steps"),
        "scheduler": (scheduler.get("name") or scheduler.get("class")) if isinstance(scheduler, dict) else scheduler,
        "acceleration": acceleration.get("level") if isinstance(acceleration, dict) else acceleration,
        "versions": " ".join(
            f"{key.removesuffix('_version')}={value}" for key, value in provenance.items() if key.endswith("_version")
        ),
        "timings": " ".join(f"{stage}={seconds}" for stage, seconds in timings.items()),
    }
    return {key: str(value) for key, value in summary.items() if value not in (None, "")}
