"""``fastnas info [--demo] [--json]`` (``python -m fastnas.info``): environment and kernel report.

Prints the versions, whether the compiled extension ``fastnas._C`` loaded, and for each op which
implementation runs on each device (fused kernel or the pure-PyTorch reference). ``--demo`` also runs
the ops once on small tensors, checks them against the reference and times both.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time

import torch

import fastnas
from fastnas import ops, reference
from fastnas.cli.common import cli_main, description
from fastnas.infra.config import OneLineErrorParser


def report() -> dict:
    """Collect versions, devices and the kernel table as a dict."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table = {}
    for op in ops.OPS:
        table[op] = {}
        for dev in ("cpu", "cuda"):
            if ops.get_backend() == "reference":
                impl = "reference (forced by FASTNAS_BACKEND)"
            elif ops.kernel_available(op, dev):
                impl = "kernel"
            else:
                impl = "reference (no kernel)"
            table[op][dev] = impl
    return {
        "fastnas": fastnas.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "extension_loaded": ops.extension_loaded(),
        "extension_error": ops.extension_error(),
        "backend": ops.get_backend(),
        "devices_in_use": devices,
        "ops": table,
    }


_ERROR_PROBE = """
import sys, torch
import fastnas.ops
for dev in sys.argv[1:]:
    try:
        torch.ops.fastnas.weighted_sum(torch.ones(3, device=dev), [torch.ones(4, device=dev)] * 2)
    except RuntimeError:
        continue
    sys.exit(3)
"""


def error_check(devices: list[str]) -> str:
    """Whether the extension raises its C++ errors as Python exceptions, checked in a child process.

    An extension built with a compiler whose C++ runtime differs from the one the process loads can
    crash on the first error it raises instead (seen on a GPU image whose build picked a second GCC):
    every bad argument then kills the run. Returns "ok", or a one-line description of the failure.
    """
    if not ops.extension_loaded():
        return "ok"
    try:
        r = subprocess.run([sys.executable, "-c", _ERROR_PROBE, *devices], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "the check timed out"
    if r.returncode == 0:
        return "ok"
    if r.returncode == 3:
        return "a bad argument was accepted"
    how = f"signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
    return (f"CRASHES on a bad argument ({how}): rebuild with the system compiler, e.g. "
            "CC=/usr/bin/gcc CXX=/usr/bin/g++ pip install --no-build-isolation .")


def _time(fn, repeat: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def demo(device: str = "cpu") -> dict:
    """Run both ops once on DARTS-like shapes, compare with the reference and time both."""
    gen = torch.Generator().manual_seed(0)
    alpha = (1e-3 * torch.randn(14, 8, generator=gen)).to(device)
    xs = [torch.randn(8, 16, 16, 16, generator=gen).to(device) for _ in range(8)]
    weights, index = ops.gumbel_softmax(alpha, tau=1.0, hard=False, generator=None)
    fused = ops.weighted_sum(weights[0], xs)
    ref = reference.weighted_sum(weights[0], xs)
    t_fused = _time(lambda: ops.weighted_sum(weights[0], xs))
    t_loop = _time(lambda: sum(weights[0][k] * xs[k] for k in range(8)))
    _, hard_index = ops.gumbel_softmax(alpha, tau=1.0, hard=True)
    has_kernel = ops.get_backend() != "reference" and ops.kernel_available("weighted_sum", device)
    in_use = "kernel" if has_kernel else "reference"
    return {
        "device": device,
        "weighted_sum_impl": in_use,
        "weighted_sum_max_abs_diff_vs_reference": float((fused - ref).abs().max()),
        "weighted_sum_fused_ms": t_fused * 1e3,
        "weighted_sum_python_loop_ms": t_loop * 1e3,
        "gumbel_hard_sampled_ops_per_edge": hard_index.tolist(),
    }


def parse_args(argv=None):
    parser = OneLineErrorParser(prog="fastnas info", description=description(__doc__))
    parser.add_argument("--demo", action="store_true", help="also run the ops once and time them")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, _main, argv)


def _main(args) -> int:
    info = report()
    info["cpp_errors"] = error_check(info["devices_in_use"])
    if args.demo:
        info["demo"] = [demo(d) for d in info["devices_in_use"]]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"fastnas {info['fastnas']}  python {info['python']}  torch {info['torch']}"
          f" (CUDA {info['torch_cuda'] or 'none'})")
    gpus = ", ".join(info["cuda_devices"]) or "none visible"
    print(f"platform {info['platform']}; CPU threads {info['cpu_threads']}; GPUs: {gpus}")
    status = "loaded" if info["extension_loaded"] else f"NOT loaded ({info['extension_error']})"
    print(f"extension fastnas._C: {status}; backend: {info['backend']}")
    if info["extension_loaded"]:
        errors = "raised as Python exceptions" if info["cpp_errors"] == "ok" else info["cpp_errors"]
        print(f"C++ errors: {errors}")
    print(f"{'op':<16}{'cpu':<28}{'cuda':<28}")
    for op, row in info["ops"].items():
        print(f"{op:<16}{row['cpu']:<28}{row['cuda']:<28}")
    for d in info.get("demo", []):
        print(f"demo on {d['device']}: weighted_sum K=8 over 8x16x16x16: {d['weighted_sum_impl']} "
              f"{d['weighted_sum_fused_ms']:.3f} ms vs Python loop {d['weighted_sum_python_loop_ms']:.3f} ms"
              f", max |fused - reference| = {d['weighted_sum_max_abs_diff_vs_reference']:.2e}")
        print(f"demo on {d['device']}: gumbel-hard sample, op index per edge: "
              f"{d['gumbel_hard_sampled_ops_per_edge']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
