// The grid runner: launch validation, the shuffled block order, the per-block fiber scheduler,
// __syncthreads, thread exit, deadlock detection, launch errors and shared memory.
// Included by runtime.h only.
#pragma once

extern "C" const char __ehdr_start;  // the module's ELF header: base of shared-space addresses
#ifdef CUDASIM_SHARED_SECTION
extern "C" char __start_cudasim_shared[] __attribute__((weak));
extern "C" char __stop_cudasim_shared[] __attribute__((weak));
#endif

namespace cudasim {

enum : int {
    kErrInvalidValue = 1,
    kErrOutOfMemory = 2,
    kErrIllegalAddress = 700,
    kErrAssert = 710,
    kErrIllegalInstruction = 715,
    kErrMisaligned = 716,
    kErrLaunchFailed = 719,
};

constexpr size_t kDynSmemCapacity = 232448;  // 228 KiB: sm_90's opt-in maximum per block
constexpr unsigned kMaxThreads = 1024;
alignas(1024) inline unsigned char g_dyn_smem[kDynSmemCapacity];

inline void* dynamic_smem() { return g_dyn_smem; }

struct CpCopy {  // one cp.async, performed when its group completes
    char* dst;
    const char* src;
    uint32_t group;
    uint8_t size, src_size;
};

struct Coll;

enum : uint8_t { kRunnable, kBlocked, kExited };
enum : uint8_t { kWaitNone, kWaitBarrier, kWaitColl, kWaitActivemask };

struct Fiber {
    Context ctx;
    uint3 tid;
    unsigned linear, warp, lane;
    uint8_t state, wait;
    bool dirty;        // abandoned mid-call: its stack shadow needs clearing before reuse
    Coll* coll;        // the collective it waits in
    unsigned bar_count, bar_total;
    CpCopy* cp;        // FIFO [cp_head, cp_tail), groups in issue order
    unsigned cp_head, cp_tail, cp_cap;
    uint32_t cp_open;  // id of the group new copies join (= number of commits so far)
    uintptr_t am_site;  // __activemask: the call site it waits at, and the answer
    unsigned am_result;
};

struct Warp {
    unsigned exists, exited;  // lane masks
    unsigned runnable;        // lanes running or ready to
    unsigned am_waiting;      // lanes waiting in __activemask
    Coll* pending;            // collectives some lanes wait in
};

struct State {
    const cudasim_kernel* kernel;
    void** params;
    size_t dyn_bytes;
    unsigned nthreads, nwarps, live;
    bool running;
    int err;
    char msg[2048];
    Context main;
    bool entering_from_main;
    Fiber* cur;
    Fiber* fibers[kMaxThreads];
    unsigned nfibers;
    Warp warps[kMaxThreads / 32];
    Fiber* ready[kMaxThreads];
    unsigned rq_head, rq_count;
    unsigned bar_arrived, bar_count;
    Fiber* bar_wait[kMaxThreads];
    Coll* free_colls;
    uintptr_t map_lo, map_hi;  // the module's loaded image
};
inline State g;

// ---- errors ----------------------------------------------------------------------------

inline void record_error_v(int code, const char* fmt, va_list ap) {
    if (g.err) return;
    g.err = code;
    int n = 0;
    if (g.kernel) {
        n = snprintf(g.msg, sizeof g.msg, "kernel `%s` block (%u,%u,%u)", g.kernel->name, blockIdx.x, blockIdx.y,
                     blockIdx.z);
        if (g.cur && n >= 0 && (size_t)n < sizeof g.msg)
            n += snprintf(g.msg + n, sizeof g.msg - n, " thread (%u,%u,%u)", g.cur->tid.x, g.cur->tid.y, g.cur->tid.z);
        if (n >= 0 && (size_t)n < sizeof g.msg) n += snprintf(g.msg + n, sizeof g.msg - n, ": ");
    }
    if (n >= 0 && (size_t)n < sizeof g.msg) vsnprintf(g.msg + n, sizeof g.msg - n, fmt, ap);
}

// Leaves the block for good: control returns to the launch loop, which reports the error.
[[noreturn]] inline void abandon() {
    Fiber* me = g.cur;
    me->dirty = true;
    g.cur = nullptr;
    switch_context(me->ctx, g.main, true);
    __builtin_unreachable();
}

// Records the first error of the launch (with kernel, block and thread) and stops the block.
// Outside a launch (a device function called from host code) there is nothing to return the
// error to, so it is printed and the process aborts.
[[noreturn]] __attribute__((format(printf, 2, 3))) inline void fail(int code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    record_error_v(code, fmt, ap);
    va_end(ap);
    if (!g.running || !g.cur) {
        fprintf(stderr, "cuda-sim: %s\n", g.msg);
        abort();
    }
    abandon();
}

// "0-15,20,22-31" for the set bits of a bitmap of n bits.
inline void format_ranges(char* out, size_t cap, const uint32_t* bits, unsigned n) {
    size_t len = 0;
    out[0] = 0;
    for (unsigned i = 0; i < n;) {
        if (!(bits[i / 32] >> (i % 32) & 1)) { i++; continue; }
        unsigned j = i;
        while (j + 1 < n && (bits[(j + 1) / 32] >> ((j + 1) % 32) & 1)) j++;
        int w = j > i ? snprintf(out + len, cap - len, "%s%u-%u", len ? "," : "", i, j)
                      : snprintf(out + len, cap - len, "%s%u", len ? "," : "", i);
        if (w < 0 || (size_t)w >= cap - len) { if (cap > 4) strcpy(out + cap - 4, "..."); return; }
        len += (size_t)w;
        i = j + 1;
    }
}
inline void format_lanes(char* out, size_t cap, unsigned mask) { format_ranges(out, cap, &mask, 32); }

// ---- scheduling --------------------------------------------------------------------------

inline void rq_push(Fiber* f) { g.ready[(g.rq_head + g.rq_count++) % kMaxThreads] = f; }
inline Fiber* rq_pop() {
    if (!g.rq_count) return nullptr;
    Fiber* f = g.ready[g.rq_head];
    g.rq_head = (g.rq_head + 1) % kMaxThreads;
    g.rq_count--;
    return f;
}
inline void wake(Fiber* f) {
    g.warps[f->warp].runnable++;
    f->state = kRunnable;
    f->wait = kWaitNone;
    f->coll = nullptr;
    rq_push(f);
}

// Runs `next` until it switches back; the caller continues when it is resumed.
inline void resume(Fiber* me, Fiber* next) {
    g.cur = next;
    threadIdx = next->tid;
    switch_context(me->ctx, next->ctx, false);
    finish_switch(me->ctx);
    g.cur = me;
    threadIdx = me->tid;
}

[[noreturn]] inline void report_deadlock();

// __activemask: the lanes of a warp count as converged at a call site once no lane of the
// warp can run any more (each waits somewhere or has exited); the lanes waiting at the same
// site then get the mask of that group.
inline void resolve_activemask(Warp& w, unsigned warp) {
    unsigned waiting = w.am_waiting;
    w.am_waiting = 0;
    while (waiting) {
        uintptr_t site = g.fibers[warp * 32 + __builtin_ctz(waiting)]->am_site;
        unsigned group = 0;
        for (unsigned m = waiting; m; m &= m - 1)
            if (g.fibers[warp * 32 + __builtin_ctz(m)]->am_site == site) group |= 1u << __builtin_ctz(m);
        for (unsigned m = group; m; m &= m - 1) {
            Fiber* f = g.fibers[warp * 32 + __builtin_ctz(m)];
            f->am_result = group;
            wake(f);
        }
        waiting &= ~group;
    }
}
inline void lane_stops_running(Fiber* f) {
    Warp& w = g.warps[f->warp];
    if (--w.runnable == 0 && w.am_waiting) resolve_activemask(w, f->warp);
}

// The current thread waits (at a barrier or collective, already recorded) until woken.
inline void block_current(uint8_t wait) {
    Fiber* me = g.cur;
    me->state = kBlocked;
    me->wait = wait;
    lane_stops_running(me);
    Fiber* next = rq_pop();
    if (!next) report_deadlock();
    resume(me, next);
}

// Lets every other runnable thread go first (__nanosleep: spin-waits need others to move).
inline void yield_current() {
    Fiber* me = g.cur;
    if (!me || !g.rq_count) return;
    rq_push(me);
    resume(me, rq_pop());
}

// ---- __syncthreads ------------------------------------------------------------------------

inline void complete_barrier() {
    unsigned n = g.bar_arrived, c = g.bar_count;
    g.bar_arrived = 0;
    g.bar_count = 0;
    for (unsigned i = 0; i < n; i++) {
        Fiber* f = g.bar_wait[i];
        f->bar_count = c;
        f->bar_total = n;
        if (f != g.cur) wake(f);
    }
}

// Every live thread must arrive; exited threads count as arrived. Returns how many arrivals
// had a non-zero predicate (for the _count/_and/_or forms).
inline unsigned barrier_arrive(int pred, unsigned* total) {
    Fiber* me = g.cur;
    if (!me) fail(kErrLaunchFailed, "__syncthreads called outside a kernel launch");
    g.bar_wait[g.bar_arrived++] = me;
    g.bar_count += pred != 0;
    if (g.bar_arrived == g.live) complete_barrier();
    else block_current(kWaitBarrier);
    *total = me->bar_total;
    return me->bar_count;
}

inline void cp_complete_all(Fiber* f);
inline void check_exit_in_collectives(Fiber* me);

// A thread's kernel function returned: its pending copies land, barriers stop counting it,
// and a warp collective still naming it can never complete.
[[noreturn]] inline void thread_exit() {
    Fiber* me = g.cur;
    cp_complete_all(me);
    check_exit_in_collectives(me);
    me->state = kExited;
    g.warps[me->warp].exited |= 1u << me->lane;
    lane_stops_running(me);
    g.live--;
    if (g.bar_arrived && g.bar_arrived == g.live) complete_barrier();
    Fiber* next = rq_pop();
    if (next) {
        g.cur = next;
        threadIdx = next->tid;
        switch_context(me->ctx, next->ctx, true);
    } else if (g.live == 0) {
        g.cur = nullptr;
        switch_context(me->ctx, g.main, true);
    } else {
        report_deadlock();
    }
    __builtin_unreachable();
}

inline void fiber_entry() {
    const void* from = nullptr;
    size_t from_size = 0;
    finish_switch(g.cur->ctx, &from, &from_size);
    if (g.entering_from_main) {  // ASan needs the OS thread's stack to switch back to it
        g.main.stack = (char*)from;
        g.main.stack_size = from_size;
        g.entering_from_main = false;
    }
    threadIdx = g.cur->tid;
    g.kernel->entry(g.params);
    thread_exit();
}

// ---- shared memory ----------------------------------------------------------------------

inline size_t cvta_generic_to_shared(const void* p) { return (size_t)((const char*)p - &__ehdr_start); }

inline int find_mapping_cb(struct dl_phdr_info* info, size_t, void*) {
    uintptr_t base = (uintptr_t)&__ehdr_start, lo = UINTPTR_MAX, hi = 0;
    bool mine = false;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        uintptr_t a = info->dlpi_addr + ph.p_vaddr, b = a + ph.p_memsz;
        if (base >= a && base < b) mine = true;
        if (a < lo) lo = a;
        if (b > hi) hi = b;
    }
    if (!mine) return 0;
    g.map_lo = lo;
    g.map_hi = hi;
    return 1;
}

// A shared-space address (an offset from the module base, as __cvta_generic_to_shared makes
// it) back to a pointer, checked to lie in the module's image and, inside the dynamic shared
// memory buffer, within what the launch asked for.
inline char* shared_ptr(uint64_t addr, size_t len, const char* insn) {
    uintptr_t p = (uintptr_t)&__ehdr_start + (uintptr_t)addr;
    uintptr_t dyn = (uintptr_t)g_dyn_smem;
    if (p < g.map_lo || p > g.map_hi || len > g.map_hi - p)
        fail(kErrIllegalAddress, "`%s`: shared-space address 0x%llx (%zu bytes) is not shared memory of this module", insn,
             (unsigned long long)addr, len);
    if (p + len > dyn && p < dyn + kDynSmemCapacity && (p < dyn || p + len > dyn + g.dyn_bytes))
        fail(kErrIllegalAddress,
             "`%s`: shared-space address 0x%llx (%zu bytes) is past the %zu bytes of dynamic shared memory the launch asked for",
             insn, (unsigned long long)addr, len, g.dyn_bytes);
    return (char*)p;
}
inline char* generic_shared_ptr(uint64_t addr, size_t len, const char* insn) {
    return shared_ptr(addr - (uint64_t)(uintptr_t)&__ehdr_start, len, insn);
}

// ---- blocks ------------------------------------------------------------------------------

// A reproducible shuffle of [0, n) without storing it: a 4-round Feistel permutation of the
// smallest even-width bit domain covering n, walked until it lands inside [0, n).
struct BlockOrder {
    uint64_t n, mask, key[4];
    unsigned half;
    static uint64_t mix(uint64_t x) {
        x += 0x9E3779B97F4A7C15ull;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        return x ^ (x >> 31);
    }
    BlockOrder(uint64_t count, uint64_t seed) : n(count) {
        unsigned bits = 0;
        while (bits < 64 && (1ull << bits) < n) bits++;
        half = (bits + 1) / 2;
        mask = half >= 64 ? ~0ull : (1ull << half) - 1;
        for (int r = 0; r < 4; r++) key[r] = mix(seed + 0x632BE59BD9B4E019ull * (r + 1));
    }
    uint64_t permute(uint64_t x) const {
        uint64_t l = x >> half, r = x & mask;
        for (int i = 0; i < 4; i++) {
            uint64_t t = l ^ (mix(r ^ key[i]) & mask);
            l = r;
            r = t;
        }
        return (l << half) | r;
    }
    uint64_t operator[](uint64_t i) const {
        if (n <= 1) return 0;
        uint64_t x = i;
        do x = permute(x);
        while (x >= n);
        return x;
    }
};

inline void release_collectives();

inline void run_block() {
    if (g.dyn_bytes) memset(g_dyn_smem, 0xFF, g.dyn_bytes);
#ifdef CUDASIM_SHARED_SECTION
    if (__start_cudasim_shared && (char*)__stop_cudasim_shared > (char*)__start_cudasim_shared)
        memset(__start_cudasim_shared, 0xFF, (size_t)(__stop_cudasim_shared - __start_cudasim_shared));
#endif
    for (unsigned w = 0; w < g.nwarps; w++) {
        unsigned lanes = g.nthreads - w * 32 < 32 ? g.nthreads - w * 32 : 32;
        g.warps[w].exists = lanes == 32 ? ~0u : (1u << lanes) - 1;
        g.warps[w].exited = 0;
        g.warps[w].runnable = lanes;
        g.warps[w].am_waiting = 0;
        g.warps[w].pending = nullptr;
    }
    g.live = g.nthreads;
    g.bar_arrived = g.bar_count = 0;
    g.rq_head = g.rq_count = 0;
    for (unsigned t = 0; t < g.nthreads; t++) {
        Fiber* f = g.fibers[t];
        f->state = kRunnable;
        f->wait = kWaitNone;
        f->coll = nullptr;
        f->cp_head = f->cp_tail = 0;
        f->cp_open = 0;
#ifdef __SANITIZE_ADDRESS__
        if (f->dirty) __asan_unpoison_memory_region(f->ctx.stack, f->ctx.stack_size);
#endif
        f->dirty = false;
        f->ctx.fake_stack = nullptr;  // a fresh context has none; the last one is gone or abandoned
        make_context(f->ctx, fiber_entry, t);
        rq_push(f);
    }
    Fiber* first = rq_pop();
    g.cur = first;
    threadIdx = first->tid;
    g.entering_from_main = true;
    switch_context(g.main, first->ctx, false);
    finish_switch(g.main);
    g.cur = nullptr;
    if (g.err) {
        for (unsigned t = 0; t < g.nthreads; t++)
            if (g.fibers[t]->state != kExited) g.fibers[t]->dirty = true;
        release_collectives();
    }
}

inline bool prepare_fibers(unsigned n) {
    while (g.nfibers < n) {
        Fiber* f = new (std::nothrow) Fiber();
        if (!f || !allocate_stack(f->ctx)) { delete f; return false; }
        g.fibers[g.nfibers++] = f;
    }
    unsigned bx = blockDim.x, by = blockDim.y;
    for (unsigned t = 0; t < n; t++) {
        Fiber* f = g.fibers[t];
        f->linear = t;
        f->warp = t / 32;
        f->lane = t % 32;
        f->tid = uint3{t % bx, (t / bx) % by, t / (bx * by)};
    }
    return true;
}

#ifdef __SANITIZE_ADDRESS__
inline void asan_death_callback() {
    if (!g.running || !g.cur || !g.kernel) return;
    fprintf(stderr, "cuda-sim: the access above was made by kernel `%s` (block (%u,%u,%u), thread (%u,%u,%u))\n",
            g.kernel->name, blockIdx.x, blockIdx.y, blockIdx.z, g.cur->tid.x, g.cur->tid.y, g.cur->tid.z);
}
#endif

__attribute__((format(printf, 3, 4))) inline int launch_error(char* msg, size_t cap, const char* fmt, ...) {
    if (msg && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, cap, fmt, ap);
        va_end(ap);
    }
    return kErrInvalidValue;
}

inline int launch(const cudasim_launch_params* p, char* msg, size_t cap) {
    if (msg && cap) msg[0] = 0;
    if (!p || !p->kernel || !p->kernel->entry) return launch_error(msg, cap, "cudasim_launch: no kernel");
    const char* name = p->kernel->name ? p->kernel->name : "?";
    if (g.running) return launch_error(msg, cap, "kernel `%s`: launched while another grid runs in this module", name);
    uint64_t threads = (uint64_t)p->block[0] * p->block[1] * p->block[2];
    uint64_t blocks = (uint64_t)p->grid[0] * p->grid[1] * p->grid[2];
    if (threads == 0 || blocks == 0)
        return launch_error(msg, cap, "kernel `%s`: empty grid (%u,%u,%u) or block (%u,%u,%u)", name, p->grid[0],
                            p->grid[1], p->grid[2], p->block[0], p->block[1], p->block[2]);
    if (threads > kMaxThreads)
        return launch_error(msg, cap, "kernel `%s`: block of %llu threads (at most %u)", name,
                            (unsigned long long)threads, kMaxThreads);
    if (p->dynamic_smem_bytes > kDynSmemCapacity)
        return launch_error(msg, cap, "kernel `%s`: %zu bytes of dynamic shared memory (at most %zu)", name,
                            p->dynamic_smem_bytes, kDynSmemCapacity);
    if (!g.map_hi) dl_iterate_phdr(find_mapping_cb, nullptr);

    blockDim = dim3(p->block[0], p->block[1], p->block[2]);
    gridDim = dim3(p->grid[0], p->grid[1], p->grid[2]);
    if (!prepare_fibers((unsigned)threads)) {
        if (msg && cap) snprintf(msg, cap, "kernel `%s`: cannot allocate %llu fiber stacks", name, (unsigned long long)threads);
        return kErrOutOfMemory;
    }
    g.kernel = p->kernel;
    g.params = p->params;
    g.dyn_bytes = p->dynamic_smem_bytes;
    g.nthreads = (unsigned)threads;
    g.nwarps = (g.nthreads + 31) / 32;
    g.err = 0;
    g.msg[0] = 0;
    g.running = true;
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_set_death_callback(asan_death_callback);  // process-wide: re-register per launch
    __asan_unpoison_memory_region(g_dyn_smem, kDynSmemCapacity);
    __asan_poison_memory_region(g_dyn_smem + g.dyn_bytes, kDynSmemCapacity - g.dyn_bytes);
#endif
    BlockOrder order(blocks, p->seed);
    unsigned gx = p->grid[0], gy = p->grid[1];
    for (uint64_t i = 0; i < blocks && !g.err; i++) {
        uint64_t b = order[i];
        blockIdx = uint3{(unsigned)(b % gx), (unsigned)(b / gx % gy), (unsigned)(b / ((uint64_t)gx * gy))};
        run_block();
    }
#ifdef __SANITIZE_ADDRESS__
    __asan_unpoison_memory_region(g_dyn_smem, kDynSmemCapacity);
#endif
    g.running = false;
    if (g.err && msg && cap) snprintf(msg, cap, "%s", g.msg);
    return g.err;
}

}  // namespace cudasim

// ---- CUDA API ---------------------------------------------------------------------------

inline void __syncthreads() {
    unsigned total;
    ::cudasim::barrier_arrive(0, &total);
}
inline int __syncthreads_count(int pred) {
    unsigned total;
    return (int)::cudasim::barrier_arrive(pred, &total);
}
inline int __syncthreads_and(int pred) {
    unsigned total;
    return ::cudasim::barrier_arrive(pred, &total) == total;
}
inline int __syncthreads_or(int pred) {
    unsigned total;
    return ::cudasim::barrier_arrive(pred, &total) != 0;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { ::cudasim::yield_current(); }
[[noreturn]] inline void __trap() { ::cudasim::fail(::cudasim::kErrLaunchFailed, "__trap() called"); }
[[noreturn]] inline void __brkpt() { ::cudasim::fail(::cudasim::kErrLaunchFailed, "__brkpt() called"); }
inline long long clock64() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}
inline size_t __cvta_generic_to_shared(const void* p) { return ::cudasim::cvta_generic_to_shared(p); }
inline void* __cvta_shared_to_generic(size_t a) { return (void*)(&__ehdr_start + a); }
inline unsigned __isShared(const void* p) {
    uintptr_t a = (uintptr_t)p;
    return a >= ::cudasim::g.map_lo && a < ::cudasim::g.map_hi;
}
inline unsigned __isGlobal(const void* p) { return !__isShared(p); }

// A failing assert() stops the block with CUDA_ERROR_ASSERT. glibc's assert macro calls this;
// being hidden and defined here, the module's calls bind to it rather than to libc's.
extern "C" [[noreturn]] void __assert_fail(const char* expr, const char* file, unsigned int line,
                                                  const char* func) noexcept {
    if (!::cudasim::g.running || !::cudasim::g.cur) {
        fprintf(stderr, "%s:%u: %s: assertion `%s` failed\n", file, line, func, expr);
        abort();
    }
    ::cudasim::fail(::cudasim::kErrAssert, "assertion `%s` failed at %s:%u in %s", expr, file, line, func);
}
