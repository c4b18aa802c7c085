"""The peers, run the way a sentence-transformers user runs them, in their own virtual environment.

sentence-transformers' ONNX backend needs optimum-onnx, which pins transformers < 5 while costopt needs
>= 5, so run.py starts this file with the peer environment's Python. It never imports costopt.

Protocol (one JSON object per line on stdout):
  start-up: loads each peer, writes its embeddings of the eval texts to OUT/<name>.npy, then prints
            {"ready": [names], "versions": {...}, "notes": [...]}
  stdin "time NAME": encodes the speed texts once with that peer; prints {"name", "seconds"}
  stdin "quit": exits
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="sentence-transformers model folder")
    ap.add_argument("--texts", required=True, help="JSON: {eval: [...], speed: [...]}")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--work", required=True, help="scratch folder for exports and embeddings")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    so = ort.SessionOptions()  # the same thread count as every other runtime in the comparison
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    onnx_kwargs = {"provider": "CPUExecutionProvider", "session_options": so}
    notes = []

    models = {
        "st-torch-fp32": SentenceTransformer(args.model, device="cpu"),
        "st-torch-bf16": SentenceTransformer(args.model, device="cpu", model_kwargs={"torch_dtype": torch.bfloat16}),
    }
    # The ONNX backend exports the model with optimum on first load; save it so it can be quantized.
    onnx_dir = work / "st-onnx"
    exported = SentenceTransformer(args.model, device="cpu", backend="onnx", model_kwargs=onnx_kwargs)
    exported.save_pretrained(str(onnx_dir))
    models["st-onnx-fp32"] = SentenceTransformer(str(onnx_dir), device="cpu", backend="onnx", model_kwargs=onnx_kwargs)
    # Dynamic int8 as sbert.net's efficiency guide shows: the config matching this CPU (AVX-512 VNNI here).
    qconfig = "avx512_vnni" if "avx512_vnni" in open("/proc/cpuinfo").read() else "avx2"
    export_dynamic_quantized_onnx_model(models["st-onnx-fp32"], qconfig, str(onnx_dir))
    qfile = f"onnx/model_qint8_{qconfig}.onnx"
    models["st-onnx-int8"] = SentenceTransformer(str(onnx_dir), device="cpu", backend="onnx",
                                                 model_kwargs=onnx_kwargs | {"file_name": qfile})
    notes.append(f"st-onnx-int8: export_dynamic_quantized_onnx_model(model, {qconfig!r}) -> {qfile}")

    import numpy as np

    for name, m in models.items():
        emb = m.encode(texts["eval"], batch_size=args.batch_size, convert_to_numpy=True)
        np.save(work / f"{name}.npy", np.asarray(emb, dtype=np.float32))
    versions = {p: metadata.version(p) for p in ("sentence-transformers", "transformers", "optimum-onnx", "onnxruntime", "torch")
                if _installed(p)}
    print(json.dumps({"ready": list(models), "versions": versions, "notes": notes}), flush=True)

    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        name = cmd[1]
        t0 = time.perf_counter()
        models[name].encode(texts["speed"], batch_size=args.batch_size, convert_to_numpy=True)
        print(json.dumps({"name": name, "seconds": time.perf_counter() - t0}), flush=True)


def _installed(pkg: str) -> bool:
    try:
        metadata.version(pkg)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
