"""The baseline for bench/queue_overhead.py: the same 64x64 post-processing work in a bare FastAPI
route (decode, color correction kernel, encode), answered directly with no queue in between."""

from __future__ import annotations

import argparse
import base64

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from kernels.color import correct_color
from kernels.convert import quantize
from server.media import decode_image, encode_image

app = FastAPI()


class Job(BaseModel):
    image_url: str
    brightness: float = 0.0


@app.post("/bare")
def bare(job: Job) -> dict:
    data = base64.b64decode(job.image_url.split(",", 1)[1])
    image = decode_image(data, max_pixels=8192 * 8192).to_float("cpu").unsqueeze(0)
    corrected = correct_color(image, 0.0, job.brightness, 0.0, 0.0, 1.0)
    pixels = quantize(corrected).permute(0, 2, 3, 1)[0].numpy()
    png = encode_image(pixels, image_format="png")
    return {"images": [{"url": "data:image/png;base64," + base64.b64encode(png).decode(), "width": 64, "height": 64}]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    torch.set_num_threads(1)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
