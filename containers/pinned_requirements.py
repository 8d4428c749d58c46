"""Print the requirement pins of pyproject.toml, one per line, for ``pip install -r`` in an image build.

pyproject.toml is the one place Python pins live; the Dockerfiles read it through this script so
that an image installs exactly the versions the package is tested with. It runs inside the image
before the package is installed, so it imports nothing from vxdeploy.

    python3 pinned_requirements.py pyproject.toml --only torch
    python3 pinned_requirements.py pyproject.toml --exclude torch onnx onnxruntime
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a requirement (``'tritonclient[grpc]==2'`` -> ``tritonclient``)."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pinned_requirements(
    pyproject: Path,
    *,
    only: list[str] | None = None,
    exclude: list[str] | None = None,
    extras: list[str] | None = None,
) -> list[str]:
    """The ``[project] dependencies`` (plus the named optional extras), filtered by distribution name."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in extras or []:
        requirements += project.get("optional-dependencies", {})[extra]
    keep = {requirement_name(n) for n in only} if only else None
    drop = {requirement_name(n) for n in exclude or []}
    known = {requirement_name(r) for r in requirements}
    unknown = sorted((keep or set()) - known)
    if unknown:
        raise SystemExit(f"pinned_requirements: {', '.join(unknown)} not in {pyproject}")
    return [
        r
        for r in requirements
        if requirement_name(r) not in drop and (keep is None or requirement_name(r) in keep)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--only", nargs="*", default=None, help="keep only these distributions")
    parser.add_argument("--exclude", nargs="*", default=[], help="drop these distributions")
    parser.add_argument("--extra", nargs="*", default=[], help="add these optional-dependency groups")
    args = parser.parse_args(argv)
    lines = pinned_requirements(args.pyproject, only=args.only, exclude=args.exclude, extras=args.extra)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
