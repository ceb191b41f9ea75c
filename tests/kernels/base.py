"""One base for the post-processing kernels' test classes: the contract every kernel keeps, written once.

Modelled on kornia's ``BaseTester``, the base every kornia op's test class subclasses; here the base also holds
the shared checks, so a test class names its kernel and the arguments to call it with, inherits the checks, and
adds only the tests specific to its effect (known values, the NumPy reference, argument errors).
``KernelTester`` does not start with ``Test``, so pytest collects it only through its subclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from tests.kernels.conftest import (
    SHAPES,
    assert_batch_invariant,
    assert_rejects_bad_images,
    assert_valid,
    make_image,
    tensor,
)

# Test methods parametrized with one `case` (a tuple of arguments after the image) per entry of a class attribute.
_CASES = {"test_identity": "identity_args", "test_extremes": "extreme_args"}


def case_id(case: tuple) -> str:
    """A readable test id for an argument tuple: ``0.5-dodge``, ``3-t[0.3,1,4]``."""

    def part(value: Any) -> str:
        if isinstance(value, Tensor) and value.numel() <= 4:
            return "t[" + ",".join(f"{v:g}" for v in value.tolist()) + "]"
        if isinstance(value, Tensor):
            return "t" + "x".join(map(str, value.shape))
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(map(part, value)) + "]"
        return str(value)

    return "-".join(part(value) for value in case) or "default"


class KernelTester:
    """The shared checks of a kernel ``kernel(image, *args)`` on float RGB ``(B, 3, H, W)`` images in [0, 1].

    A subclass sets:

    - ``kernel``: the function under test (stored as a static method, so it is not bound to the test);
    - ``args``: the arguments after the image for cardinality over ``SHAPES``, rejection of bad images and the
      device/dtype check; ``low_precision_args`` for float16/bfloat16 (default ``args``);
    - ``batch_args``: argument tuples for batch invariance on a ``batch_shape`` ``(B, H, W)`` image (3 samples),
      per-sample parameters as ``(B,)`` tensors; ``large_batch_args`` the same on a ``large_shape`` image, large
      enough that torch's own reductions would split the work differently;
    - ``identity_args``: argument tuples that must return the input bit for bit (set ``test_identity = None``
      when no parameters do);
    - ``extreme_args``: argument tuples at the ends of fal's ranges, run on a textured, a black and a white image.

    Each tuple is one test. A subclass overrides ``apply`` to supply inputs derived from the image (a second
    image, seeds), and ``check_output`` when the output is not image-shaped.
    """

    kernel: ClassVar[Callable[..., Tensor]]
    args: ClassVar[tuple] = ()
    low_precision_args: ClassVar[tuple | None] = None
    batch_args: ClassVar[Sequence[tuple]] = ()
    large_batch_args: ClassVar[Sequence[tuple]] = ()
    batch_shape: ClassVar[tuple[int, int, int]] = (3, 13, 17)
    large_shape: ClassVar[tuple[int, int, int]] = (2, 96, 131)
    identity_args: ClassVar[Sequence[tuple]] = ()
    extreme_args: ClassVar[Sequence[tuple]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Store ``kernel`` unbound, and refuse a class that would silently skip a shared check."""
        super().__init_subclass__(**kwargs)
        kernel = cls.__dict__.get("kernel")
        if kernel is None:
            return
        if not isinstance(kernel, staticmethod):
            cls.kernel = staticmethod(kernel)
        if not cls.batch_args or not cls.extreme_args:
            raise TypeError(f"{cls.__name__} must set `batch_args` and `extreme_args`")
        if cls.test_identity is not None and not cls.identity_args:
            raise TypeError(f"{cls.__name__} must set `identity_args`, or `test_identity = None` with the reason")

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize each case-driven test over its class attribute (pytest calls this hook per class)."""
        name = metafunc.function.__name__
        if name == "test_batch_invariance":
            cases = [(self.batch_shape, case) for case in self.batch_args]
            cases += [(self.large_shape, case) for case in self.large_batch_args]
            ids = [f"{'x'.join(map(str, shape))}-{case_id(case)}" for shape, case in cases]
            metafunc.parametrize(("shape", "case"), cases, ids=ids)
        elif name in _CASES:
            cases = list(getattr(self, _CASES[name]))
            metafunc.parametrize("case", cases, ids=[case_id(case) for case in cases])

    # -- hooks ---------------------------------------------------------------------------------------------

    def apply(self, image: Any, *args: Any) -> Tensor:
        """Run the kernel; override to add inputs that depend on the image."""
        return self.kernel(image, *args)

    def check_output(self, out: Tensor, image: Tensor, *args: Any) -> None:
        """Same shape, dtype and device as ``image``, finite, in [0, 1]."""
        assert_valid(out, image)

    # -- the shared checks -----------------------------------------------------------------------------------

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape: tuple[int, int, int]) -> None:
        """A random image of ``(B, H, W)``, down to 1x1 and smaller than any filter, gives a valid output."""
        image = torch.rand(shape[0], 3, *shape[1:])
        self.check_output(self.apply(image, *self.args), image, *self.args)

    def test_device_and_dtype(self, device: torch.device, dtype: torch.dtype) -> None:
        """On each device and dtype: a valid output, and the same bits on a second call."""
        image = tensor(make_image(), device, dtype)
        first, second = self.apply(image, *self.args), self.apply(image, *self.args)
        self.check_output(first, image, *self.args)
        assert torch.equal(first, second)

    def test_batch_invariance(self, shape: tuple[int, int, int], case: tuple) -> None:
        """Each sample of a batch gets the bits it gets alone (``batch_args`` and ``large_batch_args``)."""
        image = tensor(make_image(*shape), dtype=torch.float32)
        assert_batch_invariant(self.apply, image, *case)

    def test_low_precision(self) -> None:
        """float16 and bfloat16 inputs give valid outputs of their dtype, close to the float32 result."""
        args = self.args if self.low_precision_args is None else self.low_precision_args
        image = tensor(make_image(), dtype=torch.float32)
        reference = self.apply(image, *args)
        for low in (torch.float16, torch.bfloat16):
            out = self.apply(image.to(low), *args)
            self.check_output(out, image.to(low), *args)
            assert (out.float() - reference).abs().mean() < 0.02, low

    def test_rejects_bad_images(self) -> None:
        """Non-tensors, wrong shapes, integer and empty images raise ``ValueError`` naming `image`."""
        assert_rejects_bad_images(self.apply, *self.args)

    def test_identity(self, device: torch.device, dtype: torch.dtype, case: tuple) -> None:
        """These arguments return the input exactly."""
        image = tensor(make_image(), device, dtype)
        assert torch.equal(self.apply(image, *case), image)

    def test_extremes(self, device: torch.device, case: tuple) -> None:
        """The ends of the parameter ranges give valid outputs, also on black and on white."""
        textured = tensor(make_image(), device, torch.float32)
        for image in (textured, torch.zeros_like(textured), torch.ones_like(textured)):
            self.check_output(self.apply(image, *case), image, *case)
