"""Compile the pipeline to the YAML that Vertex AI runs; the output is byte-identical run to run."""

from __future__ import annotations

import ast
import re
import tempfile
from pathlib import Path
from typing import Any

from kfp import compiler

from pipelines.optimize_and_deploy import optimize_and_deploy


def compile_pipeline(output: Path) -> Path:
    """Write the compiled pipeline to ``output`` atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=output.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        compiler.Compiler().compile(optimize_and_deploy, str(tmp_path))
        tmp_path.write_text(_stable_header(tmp_path.read_text()))
        tmp_path.replace(output)
    finally:
        tmp_path.unlink(missing_ok=True)
    return output


_DEFAULT_COMMENT = re.compile(r"^(#\s+\w+: (?:dict|list) \[Default: )(.*)(\])$")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _stable_header(text: str) -> str:
    """Sort the keys of dict defaults in kfp's header comment.

    kfp renders them from a protobuf Struct whose key order differs between processes; the
    spec itself is already stable.
    """
    lines = []
    for line in text.splitlines(keepends=True):
        m = _DEFAULT_COMMENT.match(line.rstrip("\n"))
        if m:
            line = f"{m.group(1)}{_sorted(ast.literal_eval(m.group(2)))!r}{m.group(3)}\n"
        lines.append(line)
    return "".join(lines)


def compiled_text() -> str:
    """What the current source compiles to."""
    with tempfile.TemporaryDirectory() as tmp:
        return compile_pipeline(Path(tmp) / "p.yaml").read_text()


def check_compiled(committed: Path) -> list[str]:
    """Differences between the committed compiled pipeline and what the source compiles to."""
    import difflib

    want = compiled_text()
    have = committed.read_text() if committed.is_file() else ""
    if want == have:
        return []
    return list(
        difflib.unified_diff(have.splitlines(), want.splitlines(), str(committed), "source", lineterm="", n=1)
    )


def main() -> int:
    """``python -m pipelines.compile --check``: exit 1 when compiled/ is out of date."""
    import sys

    target = Path("compiled/optimize_and_deploy.yaml")
    if "--check" in sys.argv:
        diff = check_compiled(target)
        if diff:
            print("\n".join(diff[:40]))
            print(f"{target} is out of date: run `make compile` and commit it", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    print(f"wrote {compile_pipeline(target)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
