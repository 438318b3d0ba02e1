// The CUDA simulator's two contracts, shared by its three parts:
//
//   libnvrtc.so.13 (kernels/sim/nvrtc)   translates a .cu source, compiles it with the host
//                                        C++ compiler into a shared object, and hands that
//                                        object out as the program's "cubin" (a module image);
//   libcuda.so.1   (kernels/sim/driver)  loads a module image (cuModuleLoadData), looks its
//                                        kernels up (cuModuleGetFunction) and launches them
//                                        (cuLaunchKernel) through the module ABI below;
//   the runtime    (cudasim/runtime.h)   compiled into every module: runs a grid's blocks,
//                                        each block's threads as fibers, barriers, warp
//                                        collectives and the emulated inline PTX.
//
// The Rust side mirrors these declarations by hand (kernels/sim/driver/src/module.rs);
// CUDASIM_ABI_VERSION is bumped whenever either contract changes.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define CUDASIM_ABI_VERSION 1u

// ---- 1. The module image ("cubin") ----------------------------------------------------
// Bytes, little-endian:
//   offset 0   char     magic[8]   = "CUDASIM1"
//   offset 8   uint32_t abi        = CUDASIM_ABI_VERSION
//   offset 12  uint32_t flags      = CUDASIM_IMAGE_* below
//   offset 16  uint64_t so_bytes   = length of the shared object that follows
//   offset 24  the shared object (ELF, as written by the host C++ compiler)
// Anything else given to cuModuleLoadData (a real cubin, PTX, garbage) is refused with
// CUDA_ERROR_INVALID_IMAGE.
#define CUDASIM_IMAGE_MAGIC "CUDASIM1"
#define CUDASIM_IMAGE_HEADER_BYTES 24u
// Built with AddressSanitizer (CUDA_SIM_CHECK=1): loadable only into a process that has the
// ASan runtime (scripts/cuda-sim --check preloads it).
#define CUDASIM_IMAGE_ASAN 1u

// ---- 2. The module ABI: what every module's shared object exports (extern "C") ---------
typedef struct cudasim_kernel {
    const char* name;                 // the extern "C" name cuModuleGetFunction looks up
    void (*entry)(void** params);     // calls the kernel with cuLaunchKernel's kernelParams
    unsigned max_threads_per_block;   // __launch_bounds__'s first argument, else 1024
    unsigned num_params;              // how many parameters the kernel takes
    const size_t* param_sizes;        // sizeof each parameter (num_params entries): the driver
                                      // copies the argument values at cuLaunchKernel time, as
                                      // the real driver does, since the launch runs later
} cudasim_kernel;

typedef struct cudasim_launch_params {
    const cudasim_kernel* kernel;     // one of this module's cudasim_kernels()
    unsigned grid[3];                 // already checked by the driver against the device limits
    unsigned block[3];                // idem (x*y*z <= max_threads_per_block <= 1024)
    size_t dynamic_smem_bytes;        // idem (<= the function's max dynamic shared memory)
    void** params;                    // cuLaunchKernel's kernelParams
    uint64_t seed;                    // orders the blocks (a shuffled order, reproducible)
} cudasim_launch_params;

#ifdef __cplusplus
extern "C" {
#endif
// == CUDASIM_ABI_VERSION of the runtime the module was compiled against.
unsigned cudasim_abi_version(void);
// This module's kernels; *count receives their number.
const cudasim_kernel* cudasim_kernels(size_t* count);
// The module's dynamic shared memory capacity in bytes (the most any launch may ask for).
size_t cudasim_dynamic_smem_capacity(void);
// Runs the whole grid on the calling thread and returns when every block has finished.
// Returns 0, or a CUresult (CUDA_ERROR_LAUNCH_FAILED 719, CUDA_ERROR_ILLEGAL_ADDRESS 700,
// CUDA_ERROR_MISALIGNED_ADDRESS 716, CUDA_ERROR_ASSERT 710, CUDA_ERROR_ILLEGAL_INSTRUCTION
// 715, ...) with a NUL-terminated message in msg[0..msg_cap) naming the kernel, the block
// and thread, and what went wrong (a deadlock at a barrier, an inline PTX instruction the
// simulator does not emulate, a misaligned shared-memory access, ...). Not reentrant: the
// driver runs one grid at a time in the whole process (a module's __shared__ variables are
// the module's statics).
int cudasim_launch(const cudasim_launch_params* p, char* msg, size_t msg_cap);
#ifdef __cplusplus
}
#endif
