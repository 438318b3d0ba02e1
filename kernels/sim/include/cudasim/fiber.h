// User-mode execution contexts for the CUDA threads of a block. On x86_64 a switch saves the
// callee-saved registers, MXCSR and the x87 control word on the old stack and loads them from
// the new one (the SysV ABI leaves everything else caller-saved, so a call is a complete
// boundary); elsewhere ucontext does the same, with a signal-mask syscall per switch.
// Included by runtime.h only.
#pragma once

namespace cudasim {

#ifdef __SANITIZE_ADDRESS__
constexpr size_t kFiberStackBytes = 1u << 20;  // ASan frames carry redzones
#else
constexpr size_t kFiberStackBytes = 256u << 10;
#endif

struct Context {  // trivial, so the runtime's state is zero-initialised without a constructor
#if CUDASIM_ASM_SWITCH
    void* sp;
#else
    ucontext_t uc;
#endif
    char* stack;  // lowest usable byte; null for the OS thread's own stack
    size_t stack_size;
    void* fake_stack;  // ASan's per-context fake stack while switched away
};

// Reserves a stack with an inaccessible guard page below it, so an overflow faults at once
// instead of running into a neighbouring fiber's frames.
inline bool allocate_stack(Context& c) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t bytes = kFiberStackBytes + page;
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) return false;
    mprotect(m, page, PROT_NONE);
    c.stack = (char*)m + page;
    c.stack_size = kFiberStackBytes;
    return true;
}

#if CUDASIM_ASM_SWITCH

// swap_sp(save, load): pushes the callee-saved state, stores rsp to *save, switches to the
// stack `load` and pops the state saved there. Returns into whatever that stack was doing.
__attribute__((naked, noinline)) static void swap_sp(void** /*save*/, void* /*load*/) {
    asm("pushq %rbp\n\t"
        "pushq %rbx\n\t"
        "pushq %r12\n\t"
        "pushq %r13\n\t"
        "pushq %r14\n\t"
        "pushq %r15\n\t"
        "subq $8, %rsp\n\t"
        "stmxcsr (%rsp)\n\t"
        "fnstcw 4(%rsp)\n\t"
        "movq %rsp, (%rdi)\n\t"
        "movq %rsi, %rsp\n\t"
        "ldmxcsr (%rsp)\n\t"
        "fldcw 4(%rsp)\n\t"
        "addq $8, %rsp\n\t"
        "popq %r15\n\t"
        "popq %r14\n\t"
        "popq %r13\n\t"
        "popq %r12\n\t"
        "popq %rbx\n\t"
        "popq %rbp\n\t"
        "ret\n\t");
}

// A fresh context looks like one suspended in swap_sp whose return address is `entry`; the
// slot above is entry's own (never used) return address, placed so that rsp is 8 mod 16 at
// entry as after a call. The control words are the defaults CUDA code expects: round to
// nearest, no flush-to-zero, all exceptions masked.
inline void make_context(Context& c, void (*entry)(), unsigned color) {
    // Stacks are a power of two apart; without a per-fiber offset every fiber's hot frames
    // would fall into the same cache sets.
    uintptr_t top = ((uintptr_t)c.stack + c.stack_size - (color % 64) * 64) & ~(uintptr_t)15;
    uint64_t* s = (uint64_t*)top;
    s[-1] = 0;
    s[-2] = (uint64_t)(uintptr_t)entry;
    for (int i = 3; i <= 8; i++) s[-i] = 0;  // rbp rbx r12 r13 r14 r15
    s[-9] = 0x1F80u | ((uint64_t)0x037Fu << 32);
    c.sp = s - 9;
}
inline void swap_context(Context& from, Context& to) { swap_sp(&from.sp, to.sp); }

#else

inline void make_context(Context& c, void (*entry)(), unsigned) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = c.stack;
    c.uc.uc_stack.ss_size = c.stack_size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
inline void swap_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

#endif

// Switches from `from` to `to`, telling ASan about the change of stacks. `from_done`: `from`
// is never resumed, so ASan may drop its fake stack. Returns when something switches back.
inline void switch_context(Context& from, Context& to, bool from_done) {
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_start_switch_fiber(from_done ? nullptr : &from.fake_stack, to.stack, to.stack_size);
#else
    (void)from_done;
#endif
    swap_context(from, to);
}

// First thing on the resumed side of a switch (and at the start of a fresh context, with a
// null fake stack): hands ASan the fake stack back and reports the stack we came from.
inline void finish_switch(Context& self, const void** came_from = nullptr, size_t* came_from_size = nullptr) {
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(self.fake_stack, came_from, came_from_size);
#else
    (void)self;
    (void)came_from;
    (void)came_from_size;
#endif
}

}  // namespace cudasim
