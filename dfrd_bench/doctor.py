"""`dfrd-bench doctor`: what will and will not work on this machine, before a long run.

One screen: torch, the CUDA it was built for, the NVIDIA driver and whether the two fit, the GPUs
and their bf16 support, whether torch.compile works here (a tiny compile, forward and backward), the
data root and the offline assets (datasets, AutoAttack, robustbench, the paper's teacher checkpoint,
the bundled teachers), the model folder. The driver facts come from dfrd_bench/cuda_driver.py, whose
`cuda_unusable_reason()` is also what `--device cuda` says when CUDA cannot be used (utils.pick_device).
"""
from __future__ import annotations

import os
import platform
import shutil
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .cuda_driver import cuda_unusable_reason, driver_fits, driver_version, required_driver

PAPER_TEACHER = "Chen2024Data_WRN_34_10"


# ------------------------------------------------------------------------------------------ checks
def compile_check(device: str = "cpu", timeout_hint: float = 0.0) -> Dict[str, Any]:
    """Compile a tiny conv net's forward and backward (what attack passes compile) on `device` and
    compare the input gradient with eager: {'ok', 'seconds', 'error'}."""
    import torch

    from .errors import first_line

    dev = torch.device(device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    model = model.to(dev).eval().requires_grad_(False)
    x = torch.rand(4, 3, 16, 16, device=dev)
    t0 = time.time()
    try:
        import torch._dynamo

        torch._dynamo.reset()
        compiled = torch.compile(model, dynamic=False)
        grads = []
        for fn in (model, compiled):
            xa = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(xa).logsumexp(1).sum(), [xa])
            grads.append(g)
        if not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5):
            return {"ok": False, "seconds": round(time.time() - t0, 1),
                    "error": "the compiled input gradient differs from the eager one: use --set compile=off"}
    except Exception as exc:  # noqa: BLE001 - any compiler failure is the answer
        return {"ok": False, "seconds": round(time.time() - t0, 1), "error": first_line(exc, 200)}
    return {"ok": True, "seconds": round(time.time() - t0, 1), "error": None}


def _package(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> Optional[str]:
    """None when `module` imports, else the first line of why not."""
    import importlib

    from .errors import first_line

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # robustbench's deprecation notices are not the answer
            if module == "robustbench":
                from ._compat import import_robustbench

                import_robustbench()
            else:
                importlib.import_module(module)
        return None
    except Exception as exc:  # noqa: BLE001
        return first_line(exc, 160)


def gpu_facts() -> List[Dict[str, Any]]:
    import torch

    out = []
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        with torch.cuda.device(i):
            bf16 = bool(torch.cuda.is_bf16_supported())
        out.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}", "bf16": bf16})
    return out


def data_facts(data_root: Optional[str] = None) -> Dict[str, Any]:
    """Where each dataset's splits would be read from (nothing is downloaded or decoded)."""
    from .data import get_dataset_spec
    from .data.sources import _find_in_data_root, resolve_data_root

    root = resolve_data_root(data_root)
    found: Dict[str, Any] = {}
    offline = os.environ.get("DFRD_OFFLINE", "") not in ("", "0")
    for name in ("cifar10", "cifar100", "tinyimagenet"):
        spec = get_dataset_spec(name)
        for split in spec.splits:
            candidates = [root / rel for kind in ("official", "imagefolder") for rel in spec.root_candidates.get(kind, ())]
            hit = next((c for c in candidates if c.exists()), None)
            if hit is not None:
                try:
                    hit = _find_in_data_root(spec, split, str(root)) if offline else hit
                except Exception:  # noqa: BLE001 - e.g. the val-only Tiny-ImageNet archive for train
                    hit = None
            found[f"{name}/{split}"] = str(hit) if hit is not None else None
    return {"root": str(root), "exists": root.is_dir(), "offline": offline, "splits": found}


def model_facts(model_dir: Optional[str] = None) -> Dict[str, Any]:
    from .teachers import bundled_teachers, models_dir

    folder = models_dir(model_dir)
    paper = {ds: str(folder / ds / "Linf" / f"{PAPER_TEACHER}.pt") for ds in ("cifar10", "cifar100")}
    return {"model_dir": str(folder), "paper_teacher": {ds: {"path": p, "present": Path(p).is_file()} for ds, p in paper.items()},
            "bundled_teachers": sorted(bundled_teachers())}


def report(device: str = "auto", run_compile: bool = True, data_root: Optional[str] = None,
           model_dir: Optional[str] = None) -> Dict[str, Any]:
    """Everything `doctor` prints, as a dict (also its --out JSON)."""
    import torch

    built = torch.version.cuda
    driver = driver_version()
    cuda_ok = torch.cuda.is_available()
    gpus = gpu_facts()
    target = "cuda" if (device in ("auto", "cuda") and cuda_ok) or device.startswith("cuda") else "cpu"
    from .acceleration import cpu_native_bf16

    facts: Dict[str, Any] = {
        "kind": "doctor",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": built,
        "cudnn": torch.backends.cudnn.version() if cuda_ok else None,
        "driver": driver,
        "driver_required": required_driver(built),
        "driver_fits": driver_fits(driver, built),
        "cuda_available": cuda_ok,
        "cuda_reason": None if cuda_ok else cuda_unusable_reason(),
        "gpus": gpus,
        "host_c_compiler": shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"),
        "packages": {p: _package(p) for p in ("torchvision", "timm", "robustbench", "pyautoattack", "triton")},
        "imports": {m: _importable(m) for m in ("pyautoattack", "robustbench")},
        "cpu_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_native_bf16(),
        "compile_device": target,
        "compile": compile_check(target) if run_compile else None,
        "data": data_facts(data_root),
        "models": model_facts(model_dir),
    }
    facts["verdict"] = verdict(facts)
    return facts


def verdict(f: Dict[str, Any]) -> List[Tuple[str, bool, str]]:
    """(what, works, why) lines: what a user can and cannot do here."""
    lines: List[Tuple[str, bool, str]] = []
    if f["cuda_available"]:
        names = ", ".join(g["name"] for g in f["gpus"])
        lines.append(("--device cuda", True, f"{len(f['gpus'])} GPU(s): {names}"))
        bf16 = all(g["bf16"] for g in f["gpus"])
        lines.append(("precision=auto (bf16 training on CUDA)", bf16,
                      "bf16 supported" if bf16 else "no bf16 on this GPU: pass --set precision=fp32"))
    else:
        lines.append(("--device cuda", False, f["cuda_reason"]))
    native = f.get("cpu_native_bf16")
    lines.append(("bf16 training on this CPU (precision=auto in presets with cpu_auto_precision=bf16-if-native)",
                  bool(native), "native bf16 (avx512_bf16 / AMX)" if native else
                  "no native bf16: such presets train in fp32 here (bf16 would be emulated, slower)"))
    c = f["compile"]
    if c is None:
        lines.append(("compile=auto/on (paper preset)", True, "not checked (--no-compile)"))
    else:
        lines.append(("compile=auto/on (paper preset)", bool(c["ok"]),
                      f"a tiny compile took {c['seconds']} s on {f['compile_device']}" if c["ok"] else
                      f"compilation fails here ({c['error']}): runs fall back to eager with one warning; "
                      "--set compile=off skips the attempt"))
    aa = f["imports"]["pyautoattack"]
    lines.append(("AutoAttack (--attacks aa / all)", aa is None, "pyautoattack imports" if aa is None else
                  f"pyautoattack does not import ({aa}): pip install pyautoattack, or leave aa out of --attacks"))
    splits = f["data"]["splits"]
    c10 = splits.get("cifar10/train") and splits.get("cifar10/test")
    lines.append(("CIFAR-10 (runs, evaluation, teacher training)", bool(c10 or not f["data"]["offline"]),
                  f"found under {f['data']['root']}" if c10 else
                  (f"not under {f['data']['root']} and DFRD_OFFLINE is set: put cifar10-jpeg.zip or the official "
                   "cifar-10-batches-py there, or set DFRD_DATA" if f["data"]["offline"] else
                   f"not under {f['data']['root']}: it will be downloaded on first use")))
    rb = f["imports"]["robustbench"]
    present = f["models"]["paper_teacher"]["cifar10"]["present"]
    paper_ok = rb is None and (present or not f["data"]["offline"])
    why = (f"robustbench does not import ({rb})" if rb is not None else
           f"checkpoint at {f['models']['paper_teacher']['cifar10']['path']}" if present else
           (f"its checkpoint is not at {f['models']['paper_teacher']['cifar10']['path']} and DFRD_OFFLINE is set: put "
            "it there (--model-dir / DFRD_MODELS)" if f["data"]["offline"] else "downloaded on first use"))
    lines.append((f"paper preset teacher robustbench:{PAPER_TEACHER}", paper_ok, why))
    gpu_teacher = "gpu-resnet18-cifar10" in f["models"]["bundled_teachers"]
    lines.append(("gpu preset teacher gpu-resnet18-cifar10", gpu_teacher,
                  "bundled" if gpu_teacher else "not bundled yet: results/gpu/make.sh trains it on a GPU"))
    return lines


def format_report(f: Dict[str, Any]) -> str:
    gpus = "; ".join(f"cuda:{g['index']} {g['name']} ({g['memory_gib']} GiB, sm {g['capability']}, "
                     f"bf16 {'yes' if g['bf16'] else 'no'})" for g in f["gpus"]) or "none"
    fits = {True: "fits", False: "TOO OLD", None: "unknown"}[f["driver_fits"]]
    rows = [
        f"python {f['python']}, torch {f['torch']} (built for CUDA {f['torch_cuda'] or '-'}), cuDNN {f['cudnn'] or '-'}",
        f"NVIDIA driver: {f['driver'] or 'none loaded'}"
        + (f" (CUDA {f['torch_cuda']} needs >= {f['driver_required']}: {fits})" if f["driver_required"] else ""),
        f"GPUs: {gpus}",
        f"host C compiler: {f['host_c_compiler'] or 'none'}; triton {f['packages'].get('triton') or '-'}; "
        f"CPU threads {f['cpu_threads']}, native bf16 {'yes' if f.get('cpu_native_bf16') else 'no'}",
        f"packages: " + ", ".join(f"{k} {v or '-'}" for k, v in f["packages"].items() if k != "triton"),
        f"data root: {f['data']['root']}{'' if f['data']['exists'] else ' (missing)'}"
        + (" [offline]" if f["data"]["offline"] else ""),
        "  " + ", ".join(f"{k}: {'yes' if v else '-'}" for k, v in f["data"]["splits"].items()),
        f"model dir: {f['models']['model_dir']}; bundled teachers: {', '.join(f['models']['bundled_teachers']) or '-'}",
        "",
        "what will work here:",
    ]
    rows += [f"  [{'ok' if ok else 'NO'}] {what}: {why}" for what, ok, why in f["verdict"]]
    return "\n".join(rows)
