"""Build script for the fastnas._C extension (C++ CPU kernels, CUDA kernels when possible).

Environment:
  FASTNAS_CUDA=auto|0|1   auto (default): build CUDA kernels when torch has CUDA and a toolkit is found;
                          0: CPU only; 1: CUDA required (a clear error when it cannot be built).
  CUDA_HOME / CUDA_PATH   toolkit folder; otherwise resolved from the real `nvcc` behind PATH.
  TORCH_CUDA_ARCH_LIST    defaults to "8.0;9.0" (Ampere, Hopper) when no GPU is visible.
"""

import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _is_toolkit(path: Path) -> bool:
    return (path / "bin" / "nvcc").exists() and (path / "include" / "cuda_runtime.h").exists()


def resolve_cuda_home(default_locations: bool = True) -> str | None:
    """Find the real CUDA toolkit folder.

    The `nvcc` on PATH can be a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc that
    execs /usr/local/cuda-13.0/bin/nvcc); torch would then guess CUDA_HOME=/usr/local and fail to link.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and _is_toolkit(Path(value)):
            return value
    candidates: list[Path] = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(os.path.realpath(nvcc))
        candidates.append(real.parent.parent)
        try:
            text = real.read_text(errors="ignore") if real.stat().st_size < 65536 else ""
        except OSError:
            text = ""
        # A wrapper script names the real compiler: take every absolute .../bin/nvcc it mentions.
        candidates += [Path(m) for m in re.findall(r"(/[^\s\"'$]+)/bin/nvcc\b", text)]
    if default_locations:
        candidates.append(Path("/usr/local/cuda"))
        candidates += sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for cand in candidates:
        if _is_toolkit(cand):
            return str(cand)
    return None


def _cuda_mode() -> str:
    mode = os.environ.get("FASTNAS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"error: FASTNAS_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def build_extensions():
    mode = _cuda_mode()
    cuda_home = resolve_cuda_home() if mode != "0" else None
    if cuda_home:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    use_cuda = False
    if mode != "0":
        reasons = []
        if torch.version.cuda is None:
            reasons.append(f"torch {torch.__version__} is a CPU-only build")
        if cuda_home is None:
            reasons.append("no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)")
        if reasons and mode == "1":
            sys.exit("error: FASTNAS_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(reasons))
        use_cuda = not reasons
    if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch's arch detection crashes with no visible GPU: default to Ampere + Hopper.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"

    sources = ["csrc/fastnas.cpp", "csrc/common.cpp", "csrc/autograd.cpp"]
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    # Python's default CFLAGS carry -g, which makes these builds ~2.5x slower: -g0 comes last.
    cxx = ["-O3", "-g0", "-fvisibility=hidden"]
    define_macros = []
    if use_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        define_macros.append(("FASTNAS_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "fastnas._C",
            sources,
            include_dirs=[str(ROOT / "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-Xcompiler=-g0", "--expt-relaxed-constexpr"]},
        )
    else:
        ext = CppExtension(
            "fastnas._C",
            sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": cxx},
        )
    print(f"fastnas: building _C with CUDA={'yes' if use_cuda else 'no'}"
          + (f" (CUDA_HOME={cuda_home}, arch={os.environ.get('TORCH_CUDA_ARCH_LIST')})" if use_cuda else ""))
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


if __name__ == "__main__":  # pip/setuptools run this file as __main__; tests import the helpers
    ext_modules, cmdclass = build_extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
