"""Build helpers (setup.py) and the environment report."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def setup_module():
    spec = importlib.util.spec_from_file_location("fastnas_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # guarded: defines the helpers, builds nothing
    return module


def _fake_toolkit(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def test_cuda_home_follows_nvcc_wrapper_script(setup_module, tmp_path, monkeypatch):
    toolkit = _fake_toolkit(tmp_path / "opt" / "cuda-99.1")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    wrapper = wrappers / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrappers))
    assert setup_module.resolve_cuda_home(default_locations=False) == str(toolkit)


def test_cuda_home_env_wins_when_valid(setup_module, tmp_path, monkeypatch):
    toolkit = _fake_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert setup_module.resolve_cuda_home() == str(toolkit)


def test_cuda_required_without_toolkit_is_a_clear_error(setup_module, monkeypatch):
    monkeypatch.setenv("FASTNAS_CUDA", "1")
    monkeypatch.setattr(setup_module, "resolve_cuda_home", lambda: None)
    with pytest.raises(SystemExit, match="FASTNAS_CUDA=1 but CUDA kernels cannot be built"):
        setup_module.build_extensions()


def test_bad_cuda_mode_is_rejected(setup_module, monkeypatch):
    monkeypatch.setenv("FASTNAS_CUDA", "maybe")
    with pytest.raises(SystemExit, match="FASTNAS_CUDA must be auto, 0 or 1"):
        setup_module.build_extensions()


def test_cpu_only_mode_builds_no_cuda_sources(setup_module, monkeypatch):
    monkeypatch.setenv("FASTNAS_CUDA", "0")
    (ext,), _ = setup_module.build_extensions()
    assert ext.sources and not any(s.endswith(".cu") for s in ext.sources)


def test_info_reports_kernels():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "fastnas.info", "--json"], capture_output=True, text=True, env=env, check=True
    )
    info = json.loads(out.stdout)
    assert info["extension_loaded"] is True
    assert info["ops"]["weighted_sum"]["cpu"] == "kernel"
    assert info["ops"]["gumbel_softmax"]["cpu"] == "kernel"


def test_info_under_forced_reference_backend():
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTNAS_BACKEND="reference")
    out = subprocess.run(
        [sys.executable, "-m", "fastnas.info", "--demo"], capture_output=True, text=True, env=env, check=True
    )
    assert "reference (forced by FASTNAS_BACKEND)" in out.stdout
    assert "8x16x16x16: reference" in out.stdout
    assert "max |fused - reference| = 0.00e+00" in out.stdout


def test_info_checks_that_cpp_errors_raise(monkeypatch):
    from fastnas import ops
    from fastnas.cli import info

    if not ops.extension_loaded():
        pytest.skip("fastnas._C is not built")

    assert info.error_check(["cpu"]) == "ok"
    # A build whose C++ errors kill the process (seen with a mismatched compiler) is named as such.
    monkeypatch.setattr(info, "_ERROR_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    msg = info.error_check(["cpu"])
    assert msg.startswith("CRASHES on a bad argument (signal 11)") and "CXX=" in msg
    monkeypatch.setattr(info, "_ERROR_PROBE", "import sys; sys.exit(3)")
    assert info.error_check(["cpu"]) == "a bad argument was accepted"
