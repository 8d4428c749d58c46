"""The embedded VLM (``builtin://digits-vlm``): caption accuracy and generation timings, torch vs ONNX.

``.venv/bin/python -m benchmarks.digits_vlm [--repeats 5] [--json PATH]`` trains the model (seed 0),
exports the parts, scores greedy captions on the 500 held-out digits with both runtimes and times a
generation at batch 1 and 32 (median of ``--repeats``; encode ms, time to first token, tokens/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from vxdeploy.components.common import builtin_vlm as vlm
from vxdeploy.components.common.builtin import digits_split


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the measurement, print one JSON object and return it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = vlm.train_digits_vlm(seed=0)
    _, _, x_eval, y_eval = digits_split()
    result: dict[str, Any] = {"train_s": round(model.train_seconds, 2), "final_loss": model.final_loss}
    with tempfile.TemporaryDirectory(prefix="vx-vlm-") as tmp:
        t = time.perf_counter()
        paths = vlm.export_parts(model, tmp)
        result["export_s"] = round(time.perf_counter() - t, 2)
        result["max_abs_diff"] = vlm.part_parity(model, paths)
        gens = {"torch": vlm.generate_torch(model, x_eval), "onnx": vlm.generate_onnx(paths, x_eval)}
        result["same_tokens"] = bool((gens["torch"].tokens == gens["onnx"].tokens).all())
        for name, gen in gens.items():
            acc = vlm.caption_accuracy(gen.texts, y_eval)
            result[f"{name}_accuracy"] = {"exact": acc.exact, "digit_word": acc.digit_word, "n": acc.n}
        for batch in (1, 32):
            for name in ("torch", "onnx"):
                runs = [
                    vlm.generate_torch(model, x_eval[:batch])
                    if name == "torch"
                    else vlm.generate_onnx(paths, x_eval[:batch])
                    for _ in range(args.repeats)
                ]
                result[f"{name}_b{batch}"] = {
                    k: round(statistics.median(getattr(r, k) for r in runs), 3)
                    for k in ("encode_ms", "ttft_ms", "tokens_per_s", "total_ms")
                }
    result["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
