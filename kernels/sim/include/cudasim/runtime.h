// The CUDA emulation every simulator module is compiled against (see abi.h for where it sits).
// The nvrtc translator puts `#include <cudasim/runtime.h>` in front of the kernel source and
// compiles the result as one host C++ translation unit, so this header supplies the CUDA
// keywords, built-in variables, types, intrinsics and the grid runner the ABI exports call.
//
// Model: one block at a time on the calling OS thread; each CUDA thread of the block is a
// fiber, switched only where CUDA threads synchronise (barriers, warp collectives, warp-wide
// PTX, exit). __shared__ variables are the module's statics, so nothing in a module may run two
// grids at once (the driver serialises every launch in the process).
//
// Not modelled: preemption between synchronisation points (a race on shared or global memory
// shows only where poisoning exposes it: 0xFF-filled shared memory and cp.async destinations),
// spin-waits on other threads of the block (except through __nanosleep, which yields), the
// GPU's float rounding inside mma and its fast-math approximations (exact libm is used),
// named barriers and bar.sync thread counts, cooperative groups and grid-wide sync, clusters,
// TMA/wgmma, textures and surfaces, host access to __constant__/__device__ symbols, dynamic
// parallelism, and static __shared__ variables of inline/template functions are not
// poisoned (their storage is shared COMDAT data the section trick below cannot reach).
//
// Parts: vector_types.h (float4 & co, dim3), fiber.h (context switch), block.h (launch, block
// scheduler, barrier, errors, shared memory), warp.h (shuffles, votes, matches),
// device_math.h (math and integer intrinsics, min/max), atomics.h, ptx.h (inline PTX:
// cp.async, ldmatrix, mma), module.h (kernel table macros, ABI exports).
#pragma once

// Everything the runtime or a kernel may need from the host library is included before the
// CUDA keyword macros exist: some library headers spell attributes with the same names.
#include <assert.h>
#include <link.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <initializer_list>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

// CUDASIM_FORCE_UCONTEXT selects the portable context switch on x86_64 too (for testing it).
#if defined(__x86_64__) && !defined(CUDASIM_FORCE_UCONTEXT)
#define CUDASIM_ASM_SWITCH 1
#else
#define CUDASIM_ASM_SWITCH 0
#include <ucontext.h>
#endif
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// a*b+c is kept as two roundings (the CPU references round so too), although nvcc and NVRTC
// contract it into an fma by default (--fmad=true): results that differ from a GPU's in the
// last bits are one of the things the simulator does not show (docs/SIMULATOR.md). GCC would
// fuse them wherever the target has FMA (never on baseline x86_64, always on aarch64), so
// contraction is switched off for everything below when it could happen.
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__FP_FAST_FMAF)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cudasim/abi.h>
#include <cudasim/fpconv.h>
#include <cudasim/vector_types.h>

#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif
#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#define __CUDACC_VER_MAJOR__ 13
#define __CUDACC_VER_MINOR__ 0
#define CUDASIM 1

#define __global__
#define __device__
#define __host__
#define __managed__
#define __constant__
#define __grid_constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __cluster_dims__(...)
// A __shared__ variable is a static of the module. Outside ASan builds the ones the compiler
// does not fold into COMDAT groups (i.e. not in inline/template functions with external
// linkage) are gathered in one NOBITS section so each block starts with them set to 0xFF
// bytes, like dynamic shared memory: a read of never-written shared memory shows up as NaN.
// (The "#" ends the directive GCC writes, turning the rest of its flags into a comment.) ASan
// builds leave them where ASan can give them redzones instead.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define CUDASIM_SHARED_SECTION 1
#define __shared__ static __attribute__((section("cudasim_shared,\"aw\",@nobits#")))
#else
#define __shared__ static
#endif

static constexpr int warpSize = 32;

#pragma GCC visibility push(hidden)

// The built-in variables. threadIdx is rewritten by the scheduler on every fiber switch
// (inside calls the compiler cannot see through, so kernel code always reloads it).
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#include <cudasim/fiber.h>
#include <cudasim/block.h>
#include <cudasim/warp.h>
#include <cudasim/device_math.h>
#include <cudasim/atomics.h>
#include <cudasim/ptx.h>
#include <cudasim/module.h>

#pragma GCC visibility pop
