"""Print the project's requirements at the lock's versions, one per line, for ``pip install -r`` in an image.

pyproject.toml declares ranges (a library); containers/constraints.txt (the lock) pins the tested versions.
An image installs exactly those: its direct requirements come from pyproject.toml (the core and
the ``all`` extra by default, ``vxdeploy[...]`` self-references expanded), each pinned to the lock,
and ``--constraints`` prints the lock itself (for ``pip install -c``), both filtered by name. It runs
inside the image before the package is installed, so it imports nothing from vxdeploy.

    python3 pinned_requirements.py pyproject.toml --only torch
    python3 pinned_requirements.py pyproject.toml --exclude torch onnx onnxruntime
    python3 pinned_requirements.py pyproject.toml --constraints --exclude onnx onnxruntime
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?")
_SELF = "vxdeploy"


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a requirement (``'tritonclient[grpc]==2'`` -> ``tritonclient``)."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _with_extras(requirement: str) -> str:
    """``'tritonclient[grpc]>=2.73,<3'`` -> ``'tritonclient[grpc]'``."""
    match = _NAME.match(requirement)
    assert match is not None
    return match.group(1) + (match.group(2) or "")


def default_lock(pyproject: Path) -> Path:
    """The lock beside pyproject.toml: ``containers/constraints.txt``, else ``constraints.txt`` (an image)."""
    checkout = pyproject.parent / "containers" / "constraints.txt"
    return checkout if checkout.is_file() else pyproject.parent / "constraints.txt"


def read_lock(lock: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of the lock."""
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[requirement_name(name)] = version.strip()
    return pins


def direct_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """``[project] dependencies`` plus the named extras, with ``vxdeploy[...]`` expanded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"pinned_requirements: no extra {extra!r} in {pyproject}")
        for requirement in optional[extra]:
            if requirement_name(requirement) == _SELF:
                todo += [e.strip() for e in requirement.split("[", 1)[1].rstrip("]").split(",")]
            else:
                out.append(requirement)
    return list(dict.fromkeys(out))


def pinned_requirements(
    pyproject: Path,
    *,
    lock: Path | None = None,
    only: list[str] | None = None,
    exclude: list[str] | None = None,
    extras: list[str] | None = None,
) -> list[str]:
    """The direct requirements at the lock's versions (``name[extras]==version``), filtered by name."""
    pins = read_lock(lock or default_lock(pyproject))
    requirements = direct_requirements(pyproject, ["all"] if extras is None else extras)
    keep = {requirement_name(n) for n in only} if only else None
    drop = {requirement_name(n) for n in exclude or []}
    known = {requirement_name(r) for r in requirements}
    unknown = sorted((keep or set()) - known)
    if unknown:
        raise SystemExit(f"pinned_requirements: {', '.join(unknown)} not in {pyproject}")
    unpinned = sorted(known - set(pins))
    if unpinned:
        raise SystemExit(f"pinned_requirements: {', '.join(unpinned)} not in the lock: run `make lock`")
    return [
        f"{_with_extras(r)}=={pins[requirement_name(r)]}"
        for r in requirements
        if requirement_name(r) not in drop and (keep is None or requirement_name(r) in keep)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--lock", type=Path, help="default: containers/constraints.txt, else constraints.txt")
    parser.add_argument("--only", nargs="*", default=None, help="keep only these distributions")
    parser.add_argument("--exclude", nargs="*", default=[], help="drop these distributions")
    parser.add_argument("--extra", nargs="*", default=None, help="optional-dependency groups (default: all)")
    parser.add_argument("--constraints", action="store_true", help="print the lock's pins instead")
    args = parser.parse_args(argv)
    if args.constraints:
        drop = {requirement_name(n) for n in args.exclude}
        pins = read_lock(args.lock or default_lock(args.pyproject))
        lines = [f"{n}=={v}" for n, v in sorted(pins.items()) if n not in drop]
    else:
        lines = pinned_requirements(
            args.pyproject, lock=args.lock, only=args.only, exclude=args.exclude, extras=args.extra
        )
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
