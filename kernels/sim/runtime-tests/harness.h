// Host side of the runtime tests: loads a module .so the way the driver does (dlopen
// RTLD_LOCAL, the abi.h exports) and launches its kernels with cuLaunchKernel-style params.
#pragma once
#include <cudasim/abi.h>
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <string>
#include <vector>

struct Dim {
    unsigned x = 1, y = 1, z = 1;
};

static int g_failures = 0;
static int g_checks = 0;
#define EXPECT(cond, ...)                                                  \
    do {                                                                   \
        g_checks++;                                                        \
        if (!(cond)) {                                                     \
            g_failures++;                                                  \
            printf("  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            printf(__VA_ARGS__);                                           \
            printf("\n");                                                  \
        }                                                                  \
    } while (0)

struct Module {
    void* handle = nullptr;
    const cudasim_kernel* table = nullptr;
    size_t count = 0;
    int (*launch_fn)(const cudasim_launch_params*, char*, size_t) = nullptr;
    std::string msg;

    explicit Module(const std::string& path) {
        handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            printf("cannot load %s: %s\n", path.c_str(), dlerror());
            exit(2);
        }
        auto version = (unsigned (*)())dlsym(handle, "cudasim_abi_version");
        auto kernels = (const cudasim_kernel* (*)(size_t*))dlsym(handle, "cudasim_kernels");
        auto capacity = (size_t (*)())dlsym(handle, "cudasim_dynamic_smem_capacity");
        launch_fn = (int (*)(const cudasim_launch_params*, char*, size_t))dlsym(handle, "cudasim_launch");
        if (!version || !kernels || !capacity || !launch_fn || version() != CUDASIM_ABI_VERSION || capacity() != 232448) {
            printf("%s: incomplete module ABI\n", path.c_str());
            exit(2);
        }
        table = kernels(&count);
    }
    ~Module() { dlclose(handle); }

    const cudasim_kernel* find(const char* name) const {
        for (size_t i = 0; i < count; i++)
            if (!strcmp(table[i].name, name)) return &table[i];
        printf("kernel %s not in the module\n", name);
        exit(2);
    }

    // Returns cudasim_launch's result; the message is kept in `msg`.
    template <class... A> int launch(const char* name, Dim grid, Dim block, size_t smem, uint64_t seed, A... args) {
        const cudasim_kernel* k = find(name);
        void* params[sizeof...(A) + 1] = {(void*)&args...};
        if (k->num_params != sizeof...(A)) {
            printf("%s takes %u parameters, %zu given\n", name, k->num_params, sizeof...(A));
            exit(2);
        }
        cudasim_launch_params p{k, {grid.x, grid.y, grid.z}, {block.x, block.y, block.z}, smem, params, seed};
        char buf[4096];
        buf[0] = 0;
        int rc = launch_fn(&p, buf, sizeof buf);
        msg = buf;
        return rc;
    }
};

inline double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline uint32_t f32_bits_host(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 2654435761u + 1) {}
    uint32_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return (uint32_t)(s >> 11);
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next() & 0xffffff) / 16777216.0f; }
};
