"""Fail an image build when the base image's TensorRT is not the pinned version.

A serialized TensorRT engine only loads in the TensorRT version that built it, so the optimizer
(which builds engines) and the serving image (which runs them) must carry the same TensorRT. Both
Dockerfiles run this with the version recorded in components/common/images.py. It reads the
version from ``libnvinfer`` itself (``getInferLibVersion``, no GPU needed) and, where the Python
bindings are installed, from ``tensorrt.__version__`` too.

    python3 check_tensorrt_version.py 10.13.3.9
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys


def library_version(major: int) -> str:
    """``major.minor.patch`` of the ``libnvinfer.so.<major>`` the dynamic loader finds."""
    lib = ctypes.CDLL(f"libnvinfer.so.{major}")
    lib.getInferLibVersion.restype = ctypes.c_int32
    encoded = int(lib.getInferLibVersion())
    # TensorRT 10 encodes its version as major * 10000 + minor * 100 + patch.
    return f"{encoded // 10000}.{encoded // 100 % 100}.{encoded % 100}"


def check(expected: str) -> list[str]:
    """Problems found (empty when the base carries ``expected``); compares major.minor.patch."""
    want = ".".join(expected.split(".")[:3])
    problems = []
    try:
        found = library_version(int(want.split(".")[0]))
    except OSError as exc:
        return [f"libnvinfer.so.{want.split('.')[0]} not found in the base image ({exc})"]
    if found != want:
        problems.append(f"base image has TensorRT {found} (libnvinfer), the pin is {expected}")
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        py_version = ".".join(str(tensorrt.__version__).split(".")[:3])
        if py_version != want:
            problems.append(f"Python tensorrt is {tensorrt.__version__}, the pin is {expected}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: check_tensorrt_version.py VERSION", file=sys.stderr)
        return 2
    problems = check(args[0])
    for problem in problems:
        print(
            f"TensorRT mismatch: {problem}. Engines built here would not load in the serving image; "
            "change NGC_RELEASE / TENSORRT_VERSION in components/common/images.py together.",
            file=sys.stderr,
        )
    if not problems:
        print(f"TensorRT {args[0]}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
