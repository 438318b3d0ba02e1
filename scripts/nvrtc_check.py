#!/usr/bin/env python3
"""Compile CUDA C files with NVRTC to cubins, without a GPU (a developer's quick check).

    python3 scripts/nvrtc_check.py kernels/cuda/*.cu [--arch sm_80 --arch sm_90]

Uses the NVRTC and CUDA headers from the PyPI wheels installed under .cache/cuda
(pip install --target .cache/cuda nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96).
The Rust test `kernels/tests/nvrtc_compile.rs` is the check CI relies on; this script is
for iterating on a kernel file without a cargo build.
"""
import argparse
import ctypes
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU13 = os.path.join(ROOT, ".cache", "cuda", "nvidia", "cu13")


def load_nvrtc():
    lib = os.path.join(CU13, "lib")
    # builtins first, by absolute path, so libnvrtc finds it already loaded
    ctypes.CDLL(os.path.join(lib, "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(os.path.join(lib, "libnvrtc.so.13"), mode=ctypes.RTLD_GLOBAL)


def compile_one(nvrtc, path, arch, extra):
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram failed ({rc})", 0
    opts = [f"--gpu-architecture={arch}", f"--include-path={os.path.join(CU13, 'include')}",
            "--std=c++17", "-default-device"] + extra
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    cubin = 0
    if rc == 0:
        csize = ctypes.c_size_t()
        nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(csize))
        cubin = csize.value
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, log.value.decode(errors="replace").strip(), cubin


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--arch", action="append", help="default: sm_80 and sm_90")
    ap.add_argument("--opt", action="append", default=[], help="extra NVRTC option")
    args = ap.parse_args()
    nvrtc = load_nvrtc()
    failed = 0
    for path in args.files:
        for arch in args.arch or ["sm_80", "sm_90"]:
            ok, log, size = compile_one(nvrtc, path, arch, args.opt)
            print(f"{'ok  ' if ok else 'FAIL'} {path} {arch}" + (f" cubin {size} bytes" if ok else ""))
            if log:
                print(log)
            failed += not ok
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
