"""Where the time goes in costopt's chosen OpenVINO artifact: the CPU plugin's own per-node profile.

    python experiments/minilm-cpu/profile_ov.py [--deploy runs/minilm-cpu-search/deploy.yaml]

The deployed IR is compiled with PERF_COUNT on one thread, one stream, at each precision hint (f32, bf16),
and run over the 256 benchmark texts in the deployment's batch size (length-sorted, as encode() forms
them), twice; the second pass is profiled. Time is summed per node type and per part of the block: the
fused attention (the Snippets subgraph OpenVINO makes of scaled_dot_product_attention), the FFN's two
matmuls, the other matmuls (Q, K, V and the attention output projection) and everything else. Writes the
"OpenVINO" section of PROFILE.md (the ONNX Runtime section, from profile_ops.py, is kept) and
profile-ov.json beside this file.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HEADING = "## OpenVINO: costopt's chosen artifact, per node"


def part_of(node_type: str, name: str) -> str:
    if "scaled_dot_product_attention" in name:
        return "fused attention (scores, softmax, weighted sum)"
    if node_type.startswith("FullyConnected"):
        return (
            "FFN matmuls"
            if ("intermediate.dense" in name or "output.dense" in name) and "attention" not in name
            else "Q/K/V and attention output matmuls"
        )
    return "everything else (layer norms, adds, GELU, transposes, embeddings)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploy", default=str(REPO / "runs/minilm-cpu-search/deploy.yaml"))
    ap.add_argument("--recipe", default=str(REPO / "recipes/minilm-cpu-search.yaml"))
    args = ap.parse_args()

    import openvino as ov

    from optimizer import fingerprint, load_dataset, load_deployment, load_recipe, make_batches, read_deployment

    recipe = load_recipe(args.recipe)
    texts = load_dataset(recipe.data.eval, "eval", recipe.task, recipe.data.seed).interleaved()[: recipe.speed.texts]
    config = read_deployment(Path(args.deploy))
    cand = load_deployment(args.deploy).candidate
    if cand.runtime != "openvino":
        raise SystemExit(f"the deployment runs on {cand.runtime}; this profile is OpenVINO's")
    batch = int(config["batch_size"])
    feeds = [
        {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()} for b in make_batches(cand, texts, batch)
    ]
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "batch_size": batch, "texts": len(texts), "hints": {}}
    core = ov.Core()
    for hint in ("f32", "bf16"):
        props = {
            "INFERENCE_NUM_THREADS": 1,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": hint,
            "PERF_COUNT": True,
        }
        request = core.compile_model(str(cand.model_path), "CPU", props).create_infer_request()
        for f in feeds:  # first pass: kernels compiled for each shape
            request.infer(f)
        by_type, by_part = Counter(), Counter()
        for f in feeds:
            request.infer(f)
            for p in request.profiling_info:
                ms = p.real_time.total_seconds() * 1e3
                by_type[f"{p.node_type} ({p.exec_type})"] += ms
                by_part[part_of(p.node_type, p.node_name)] += ms
        result["hints"][hint] = {"by_type": dict(by_type.most_common()), "by_part": dict(by_part.most_common())}
    result["machine"] = fingerprint()["cpu"]
    (HERE / "profile-ov.json").write_text(json.dumps(result, indent=1) + "\n")

    lines = [
        HEADING,
        "",
        f"Recorded {result['date']} with `python experiments/minilm-cpu/profile_ov.py` on {result['machine'].get('model')}: "
        f"the deployed IR ({' -> '.join(p['name'] for p in config['passes'])}) on one thread, one stream, "
        f"{len(texts)} benchmark texts in length-sorted batches of {batch}, second of two passes, at each precision hint.",
        "",
        "| part of the model | f32 hint (ms) | share | bf16 hint (ms) | share |",
        "|---|---|---|---|---|",
    ]
    f32, bf16 = (result["hints"][h]["by_part"] for h in ("f32", "bf16"))
    tf, tb = sum(f32.values()), sum(bf16.values())
    for part in f32:
        lines.append(
            f"| {part} | {f32[part]:.1f} | {f32[part] / tf:.0%} | {bf16.get(part, 0):.1f} | {bf16.get(part, 0) / tb:.0%} |"
        )
    lines += [
        f"| all nodes | {tf:.1f} | | {tb:.1f} | |",
        "",
        "| node (kernel) | f32 hint (ms) | bf16 hint (ms) |",
        "|---|---|---|",
    ]
    types = result["hints"]["f32"]["by_type"]
    other = result["hints"]["bf16"]["by_type"]
    lines += [f"| {t} | {ms:.1f} | {other.get(t, 0):.1f} |" for t, ms in list(types.items())[:12]]
    lines.append("")
    path = HERE / "PROFILE.md"
    text = path.read_text() if path.is_file() else ""
    if HEADING in text:
        head, _, tail = text.partition(HEADING)
        rest = tail.split("\n## ", 1)
        text = head + ("## " + rest[1] if len(rest) > 1 else "")
    path.write_text(text.rstrip() + "\n\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
