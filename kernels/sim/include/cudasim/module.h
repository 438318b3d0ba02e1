// The module ABI (abi.h) of one translated unit: the kernel table the translator appends,
//   CUDASIM_KERNELS_BEGIN
//   CUDASIM_KERNEL(fill_f32, 1024)
//   CUDASIM_KERNEL(matmul_fwd_bf16, (256))
//   CUDASIM_KERNELS_END
// and the exported entry points. Each module is a single translation unit, so the exports
// below are defined exactly once per module. Included by runtime.h only.
#pragma once

namespace cudasim {

// entry(params) for a kernel void f(A...): params[i] points at the i-th argument's value;
// sizes[i] is that argument's size (the driver copies the values when the launch is queued).
template <class F, F f> struct Thunk;
template <class... A, void (*f)(A...)> struct Thunk<void (*)(A...), f> {
    static constexpr unsigned arity = sizeof...(A);
    static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(std::remove_cv_t<std::remove_reference_t<A>>)..., 0};
    template <size_t... I> static void call_with(void** p, std::index_sequence<I...>) {
        (void)p;
        f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
    }
    static void call(void** p) { call_with(p, std::index_sequence_for<A...>{}); }
};
template <class... A, void (*f)(A...) noexcept> struct Thunk<void (*)(A...) noexcept, f> {
    using Plain = Thunk<void (*)(A...), (void (*)(A...))f>;
    static constexpr unsigned arity = sizeof...(A);
    static constexpr const size_t* sizes = Plain::sizes;
    static void call(void** p) { Plain::call(p); }
};

// dlclose of the module: hand back the fiber stacks and the rest (nothing runs in the module
// any more).
__attribute__((destructor)) static void release_module() {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (unsigned i = 0; i < g.nfibers; i++) {
        Fiber* f = g.fibers[i];
        munmap(f->ctx.stack - page, f->ctx.stack_size + page);
        free(f->cp);
        delete f;
    }
    g.nfibers = 0;
    while (Coll* c = g.free_colls) {
        g.free_colls = c->next;
        delete c;
    }
    release_ptx_cache();
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_set_death_callback(nullptr);
#endif
}

}  // namespace cudasim

extern "C" __attribute__((visibility("default"))) unsigned cudasim_abi_version(void) { return CUDASIM_ABI_VERSION; }
extern "C" __attribute__((visibility("default"))) size_t cudasim_dynamic_smem_capacity(void) {
    return ::cudasim::kDynSmemCapacity;
}
extern "C" __attribute__((visibility("default"))) int cudasim_launch(const cudasim_launch_params* p, char* msg,
                                                                     size_t msg_cap) {
    return ::cudasim::launch(p, msg, msg_cap);
}

#define CUDASIM_KERNELS_BEGIN static const ::cudasim_kernel cudasim_kernel_table_[] = {
#define CUDASIM_KERNEL(name, max_threads)                                                                   \
    {#name, &::cudasim::Thunk<decltype(&name), &name>::call, (unsigned)(max_threads),                       \
     ::cudasim::Thunk<decltype(&name), &name>::arity, ::cudasim::Thunk<decltype(&name), &name>::sizes},
// The table ends with a null sentinel so that an empty table is still a valid array.
#define CUDASIM_KERNELS_END                                                                                  \
    {nullptr, nullptr, 0u, 0u, nullptr}};                                                                             \
    extern "C" __attribute__((visibility("default"))) const ::cudasim_kernel* cudasim_kernels(size_t* cudasim_count_) { \
        if (cudasim_count_) *cudasim_count_ = sizeof cudasim_kernel_table_ / sizeof cudasim_kernel_table_[0] - 1; \
        return cudasim_kernel_table_;                                                                         \
    }
