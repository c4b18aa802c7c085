"""The peers, run the way a sentence-transformers user runs them, in their own virtual environment.

sentence-transformers' ONNX and OpenVINO backends need optimum-onnx / optimum-intel, which pin
transformers (< 4.58 and < 5.6) and optimum (~2.1 and ~2.3) differently from each other and from costopt,
so run.py starts this file twice, once per peer environment (`--family onnx` with the torch and ONNX
peers, `--family openvino` with the OpenVINO ones). It never imports costopt.

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
    ap.add_argument("--calibration", required=True, help="JSON list of calibration texts (the recipe's calibration split)")
    ap.add_argument("--family", choices=["onnx", "openvino"], required=True)
    args = ap.parse_args()
    # stdout carries the protocol alone: libraries' progress bars (NNCF draws on stdout) go to stderr
    protocol, sys.stdout = sys.stdout, sys.stderr

    import torch

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text())
    work = Path(args.work) / args.family
    work.mkdir(parents=True, exist_ok=True)
    if args.family == "onnx":
        models, notes = _torch_and_onnx_peers(args, work)
    else:
        models, notes = _openvino_peers(args, work, json.loads(Path(args.calibration).read_text()))

    import numpy as np

    for name, m in models.items():
        emb = m.encode(texts["eval"], batch_size=args.batch_size, convert_to_numpy=True)
        np.save(Path(args.work) / f"{name}.npy", np.asarray(emb, dtype=np.float32))
    versions = {
        p: metadata.version(p)
        for p in (
            "sentence-transformers",
            "transformers",
            "optimum-onnx",
            "onnxruntime",
            "optimum-intel",
            "openvino",
            "nncf",
            "torch",
        )
        if _installed(p)
    }
    print(json.dumps({"ready": list(models), "versions": versions, "notes": notes}), file=protocol, flush=True)

    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        name = cmd[1]
        t0 = time.perf_counter()
        models[name].encode(texts["speed"], batch_size=args.batch_size, convert_to_numpy=True)
        print(json.dumps({"name": name, "seconds": time.perf_counter() - t0}), file=protocol, flush=True)


def _torch_and_onnx_peers(args: argparse.Namespace, work: Path) -> tuple[dict, list[str]]:
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    so = ort.SessionOptions()  # the same thread count as every other runtime in the comparison
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    onnx_kwargs = {"provider": "CPUExecutionProvider", "session_options": so}
    notes = []
    models = {"st-torch-fp32": SentenceTransformer(args.model, device="cpu")}
    flags = open("/proc/cpuinfo").read()
    if "avx512_bf16" in flags or "amx_bf16" in flags:  # a user picks bf16 only where the CPU computes it natively
        models["st-torch-bf16"] = SentenceTransformer(args.model, device="cpu", model_kwargs={"torch_dtype": torch.bfloat16})
    else:
        notes.append("st-torch-bf16: not run, this CPU has no native bf16 (torch emulates it, about 100x slower than fp32)")
    # The ONNX backend exports the model with optimum on first load; save it so it can be quantized.
    onnx_dir = work / "st-onnx"
    exported = SentenceTransformer(args.model, device="cpu", backend="onnx", model_kwargs=onnx_kwargs)
    exported.save_pretrained(str(onnx_dir))
    models["st-onnx-fp32"] = SentenceTransformer(str(onnx_dir), device="cpu", backend="onnx", model_kwargs=onnx_kwargs)
    # Dynamic int8 as sbert.net's efficiency guide shows: the config matching this CPU (AVX-512 VNNI here).
    qconfig = "avx512_vnni" if "avx512_vnni" in open("/proc/cpuinfo").read() else "avx2"
    export_dynamic_quantized_onnx_model(models["st-onnx-fp32"], qconfig, str(onnx_dir))
    # named by its weight type: model_qint8_avx512_vnni.onnx, model_quint8_avx2.onnx (optimum's avx2 config is uint8)
    qfile = str(next((onnx_dir / "onnx").glob(f"model_q*_{qconfig}.onnx")).relative_to(onnx_dir))
    models["st-onnx-int8"] = SentenceTransformer(
        str(onnx_dir), device="cpu", backend="onnx", model_kwargs=onnx_kwargs | {"file_name": qfile}
    )
    notes.append(f"st-onnx-int8: export_dynamic_quantized_onnx_model(model, {qconfig!r}) -> {qfile}")
    return models, notes


def _openvino_peers(args: argparse.Namespace, work: Path, calibration: list[str]) -> tuple[dict, list[str]]:
    from sentence_transformers import SentenceTransformer

    notes = []
    # OpenVINO backend with its default settings (the CPU plugin picks its own precision), on the same threads.
    ov_kwargs = {"ov_config": {"INFERENCE_NUM_THREADS": args.threads}}
    ov_dir = work / "st-openvino"
    models = {"st-openvino": SentenceTransformer(args.model, device="cpu", backend="openvino", model_kwargs=ov_kwargs)}
    models["st-openvino"].save_pretrained(str(ov_dir))
    notes.append(
        f"st-openvino: backend='openvino', default settings; the CPU plugin ran at inference precision "
        f"{_ov_precision(models['st-openvino'])}"
    )
    ov_file = _static_int8_openvino(models["st-openvino"], ov_dir, calibration)
    # OVQuantizer quantizes the model object it is given in place: load the fp32 IR again for the default row
    models["st-openvino"] = SentenceTransformer(
        str(ov_dir), device="cpu", backend="openvino", model_kwargs=ov_kwargs | {"file_name": "openvino/openvino_model.xml"}
    )
    models["st-openvino-int8"] = SentenceTransformer(
        str(ov_dir), device="cpu", backend="openvino", model_kwargs=ov_kwargs | {"file_name": ov_file}
    )
    notes.append(
        "st-openvino-int8: NNCF static int8 through optimum-intel's OVQuantizer, as "
        "export_static_quantized_openvino_model does (default OVQuantizationConfig and sample count, texts padded to "
        "384 tokens), calibrated on the recipe's calibration texts because its default set needs the network"
        f" -> {ov_file}"
    )
    return models, notes


def _ov_precision(model) -> str:  # noqa: ANN001
    compiled = model.transformers_model.request  # optimum-intel keeps the CompiledModel here
    return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def _static_int8_openvino(model, folder: Path, texts: list[str]) -> str:  # noqa: ANN001
    """sentence-transformers' export_static_quantized_openvino_model, with local calibration texts.

    That function's calibration set is a hub dataset (glue/sst2); everything else is the same: the
    default OVQuantizationConfig, its 300 samples, the same tokenization (padded to 384 tokens), and the
    same file name it writes.
    """
    from optimum.intel.openvino import OVConfig, OVQuantizationConfig, OVQuantizer

    config = OVConfig(quantization_config=OVQuantizationConfig())
    n = config.quantization_config.num_samples or 300
    tokens = model.tokenizer(texts[:n], padding="max_length", max_length=384, truncation=True)
    samples = [{k: v[i] for k, v in tokens.items()} for i in range(len(tokens["input_ids"]))]
    quantizer = OVQuantizer.from_pretrained(model.transformers_model)
    out = folder / "openvino-int8-tmp"
    quantizer.quantize(samples, save_directory=str(out), ov_config=config)
    target = "openvino/openvino_model_qint8_quantized.xml"
    (folder / "openvino").mkdir(exist_ok=True)
    for ext in ("xml", "bin"):
        written = next(out.rglob(f"openvino_model.{ext}"))  # optimum-intel 2.2 writes it under openvino/
        written.rename(folder / target.replace(".xml", f".{ext}"))
    return target


def _installed(pkg: str) -> bool:
    try:
        metadata.version(pkg)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
