"""What tests/ and bench/ both build on, so that neither imports the other.

- `images`: small deterministic test images and data URIs.
- `servers`: free ports, `kiln serve` in a subprocess, waiting for a request to complete.
- `reference`: NumPy implementations of every post-processing effect, written from the reference
  nodes' definitions: the kernels' test oracle and the CPU baseline of bench/post_processing.py.
- `architectures`, `tiny_diffusion`, `tiny_flux`: the real diffusers/transformers architectures with
  random weights, full size (bench) or shrunk (tests), saved and locked as real weights are.

It imports the product (server/, pipelines/, kernels/) and nothing of tests/ or bench/.
"""
