// Inline PTX. The translator turns `asm volatile("tmpl" : outs : ins)` into
//   ::cudasim::inline_ptx("tmpl", {::cudasim::ptx_out(x, "=r"), ..., ::cudasim::ptx_in(e, "l")});
// The template is parsed once (cached by its address) and executed per call with the
// operands substituted. Emulated:
//   cp.async.{ca,cg}.shared{::cta}.global{.L2::64B|128B|256B}{.L2::cache_hint} [d], [s], n{, src_size}{, policy}
//   cp.async.commit_group / cp.async.wait_group N / cp.async.wait_all
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}{.shared{::cta}}.b16
//   mma.sync.aligned.{m16n8k16,m16n8k8}.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//   mov.{b,u,s}{16,32,64}/.f32/.f64 d, a (a register, an immediate, or %laneid, %warpid,
//     %nwarpid, %smid, %nsmid, %clock, %clock64, %globaltimer, %lanemask_{eq,lt,le,gt,ge})
//   membar.* and fence.* (no-ops: memory is sequentially consistent here)
//   bar.sync 0 / barrier.sync{.aligned} 0 (= __syncthreads), bar.warp.sync mask (= __syncwarp)
// Anything else stops the launch with CUDA_ERROR_ILLEGAL_INSTRUCTION naming the instruction.
//
// cp.async is asynchronous as on the GPU: an issued copy overwrites its destination with 0xFF
// bytes at once and is performed (source read, destination written, zero fill past src_size)
// only when a wait completes its group, or when the thread exits. A kernel that reads a stage
// before waiting for it, or refills a stage others still read, sees NaN.
//
// Fragment layouts are those of the PTX ISA, "Warp-level matrix instructions" (mma.m16n8k16 /
// m16n8k8 floating-point fragments, ldmatrix). mma products of two 16-bit values are exact in
// f32; each output element sums its K products in k order in f32 and then adds C. The tensor
// cores' internal rounding differs (this is not bit-exact to hardware). Included by runtime.h.
#pragma once

namespace cudasim {

struct Operand {
    void* ptr;     // outputs and read-write operands: the lvalue
    uint64_t val;  // inputs: the value, zero- or sign-extended to 64 bits
    const char* constraint;
    uint8_t size, dir;  // dir: 0 input, 1 output, 2 read-write
};

template <class T> inline Operand ptx_out(T& x, const char* c) {
    static_assert(sizeof(T) <= 8 && !std::is_const<T>::value, "inline PTX output must be a scalar lvalue");
    return Operand{(void*)&x, 0, c, (uint8_t)sizeof(T), 1};
}
template <class T> inline Operand ptx_inout(T& x, const char* c) {
    static_assert(sizeof(T) <= 8 && !std::is_const<T>::value, "inline PTX operand must be a scalar lvalue");
    return Operand{(void*)&x, 0, c, (uint8_t)sizeof(T), 2};
}
template <class T> inline Operand ptx_in(const T& x, const char* c) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "inline PTX input must be a scalar");
    uint64_t v = 0;
    if constexpr (std::is_integral<T>::value && std::is_signed<T>::value) v = (uint64_t)(int64_t)x;
    else memcpy(&v, &x, sizeof(T));
    return Operand{nullptr, v, c, (uint8_t)sizeof(T), 0};
}

enum : uint8_t { kOpBad, kOpCpAsync, kOpCommit, kOpWaitGroup, kOpWaitAll, kOpLdmatrix, kOpMma, kOpMov, kOpNop, kOpBarSync, kOpBarWarp };
enum : uint8_t { kArgReg, kArgVec, kArgMem, kArgImm, kArgSpecial };

struct PtxArg {
    uint8_t kind, n;   // n: registers in a vector
    int16_t reg[8];    // operand numbers; Mem: reg[0] is the base (-1: none)
    int64_t imm;       // Imm: value; Mem: offset; Special: index into kSpecials
};

struct Insn {
    uint8_t op, nargs;
    uint8_t cg, num, trans, shared, k, f16, cache_hint, movsize;
    PtxArg arg[6];
    const char* why;  // kOpBad: what is wrong
    char text[192];
};

struct Program {
    unsigned n;
    Insn insn[1];
};

inline constexpr const char* kSpecials[] = {"laneid",      "warpid",      "nwarpid",     "smid",        "nsmid",
                                        "clock",       "clock64",     "globaltimer", "lanemask_eq", "lanemask_lt",
                                        "lanemask_le", "lanemask_gt", "lanemask_ge"};

inline bool tok_is(const char* t, size_t n, const char* s) { return strlen(s) == n && memcmp(t, s, n) == 0; }

inline const char* skip_ws(const char* p, const char* e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}
inline const char* trim_end(const char* p, const char* e) {
    while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) e--;
    return e;
}

inline bool parse_reg(const char* p, const char* e, int16_t* out) {
    p = skip_ws(p, e);
    e = trim_end(p, e);
    if (e - p < 2 || *p != '%' || p[1] < '0' || p[1] > '9') return false;
    char* end;
    long v = strtol(p + 1, &end, 10);
    if (end != e || v > 255) return false;
    *out = (int16_t)v;
    return true;
}

inline bool parse_arg(const char* p, const char* e, PtxArg& a) {
    p = skip_ws(p, e);
    e = trim_end(p, e);
    memset(&a, 0, sizeof a);
    if (p >= e) return false;
    if (*p == '{') {
        if (e[-1] != '}') return false;
        a.kind = kArgVec;
        const char* q = p + 1;
        while (q < e - 1) {
            const char* c = q;
            while (c < e - 1 && *c != ',') c++;
            if (a.n == 8 || !parse_reg(q, c, &a.reg[a.n++])) return false;
            q = c + 1;
        }
        return a.n > 0;
    }
    if (*p == '[') {
        if (e[-1] != ']') return false;
        a.kind = kArgMem;
        a.reg[0] = -1;
        const char* q = skip_ws(p + 1, e - 1);
        const char* end = trim_end(q, e - 1);
        const char* plus = q;
        while (plus < end && *plus != '+') plus++;
        if (*q == '%') {
            if (!parse_reg(q, plus, &a.reg[0])) return false;
            if (plus == end) return true;
            q = plus + 1;
        }
        char* stop;
        a.imm = strtoll(skip_ws(q, end), &stop, 0);
        return stop == end;
    }
    if (*p == '%' && (p[1] < '0' || p[1] > '9')) {
        const char* name = p + (p[1] == '%' ? 2 : 1);
        a.kind = kArgSpecial;
        for (size_t i = 0; i < sizeof kSpecials / sizeof kSpecials[0]; i++)
            if (tok_is(name, (size_t)(e - name), kSpecials[i])) { a.imm = (int64_t)i; return true; }
        return false;
    }
    if (*p == '%') {
        a.kind = kArgReg;
        return parse_reg(p, e, &a.reg[0]);
    }
    char* stop;
    a.kind = kArgImm;
    a.imm = strtoll(p, &stop, 0);
    return stop == e;
}

inline void decode_insn(Insn& I, const char* s, const char* e) {
    I.op = kOpBad;
    I.why = "not emulated by the CUDA simulator";
    if (*s == '@' || *s == '{' || *s == '.') {
        I.why = "predicates, register scopes and directives are not emulated";
        return;
    }
    const char* op_end = s;
    while (op_end < e && *op_end != ' ' && *op_end != '\t' && *op_end != '\n') op_end++;
    const char* tok[16];
    size_t len[16];
    unsigned m = 0;
    for (const char* p = s; p < op_end && m < 16;) {
        const char* q = p;
        while (q < op_end && *q != '.') q++;
        tok[m] = p;
        len[m++] = (size_t)(q - p);
        p = q + 1;
    }
    // operands: split at top-level commas
    const char* p = skip_ws(op_end, e);
    I.nargs = 0;
    int depth = 0;
    const char* start = p;
    for (const char* q = p; q <= e; q++) {
        if (q < e && (*q == '{' || *q == '[')) depth++;
        if (q < e && (*q == '}' || *q == ']')) depth--;
        if (q == e || (*q == ',' && depth == 0)) {
            if (q == e && skip_ws(start, e) == e && I.nargs == 0) break;
            if (I.nargs == 6 || !parse_arg(start, q, I.arg[I.nargs++])) {
                I.why = "malformed operands";
                return;
            }
            start = q + 1;
        }
    }
    auto is = [&](unsigned i, const char* w) { return i < m && tok_is(tok[i], len[i], w); };
    auto kinds = [&](std::initializer_list<uint8_t> want) {
        if (I.nargs != want.size()) return false;
        unsigned i = 0;
        for (uint8_t k : want) {
            uint8_t have = I.arg[i++].kind;
            if (k == kArgImm ? (have != kArgImm && have != kArgReg) : have != k) return false;
        }
        return true;
    };
    if (is(0, "cp") && is(1, "async")) {
        if (m == 3 && is(2, "commit_group") && kinds({})) { I.op = kOpCommit; return; }
        if (m == 3 && is(2, "wait_all") && kinds({})) { I.op = kOpWaitAll; return; }
        if (m == 3 && is(2, "wait_group") && kinds({kArgImm})) { I.op = kOpWaitGroup; return; }
        if (is(2, "ca") || is(2, "cg")) {
            I.cg = is(2, "cg");
            unsigned i = 3;
            if (!(is(i, "shared") || is(i, "shared::cta")) || !is(i + 1, "global")) return;
            for (i += 2; i < m; i++) {
                if (is(i, "L2::cache_hint")) I.cache_hint = 1;
                else if (!is(i, "L2::64B") && !is(i, "L2::128B") && !is(i, "L2::256B")) return;
            }
            unsigned plain = I.nargs - I.cache_hint;
            if (I.nargs < 3 || plain < 3 || plain > 4 || I.arg[0].kind != kArgMem || I.arg[1].kind != kArgMem) {
                I.why = "malformed operands";
                return;
            }
            for (unsigned a = 2; a < I.nargs; a++)
                if (I.arg[a].kind != kArgImm && I.arg[a].kind != kArgReg) { I.why = "malformed operands"; return; }
            I.op = kOpCpAsync;
        }
        return;
    }
    if (is(0, "ldmatrix")) {
        if (!is(1, "sync") || !is(2, "aligned") || !is(3, "m8n8")) return;
        I.num = is(4, "x1") ? 1 : is(4, "x2") ? 2 : is(4, "x4") ? 4 : 0;
        unsigned i = 5;
        if (is(i, "trans")) { I.trans = 1; i++; }
        if (is(i, "shared") || is(i, "shared::cta")) { I.shared = 1; i++; }
        if (!I.num || !is(i, "b16") || i + 1 != m) return;
        if (!kinds({kArgVec, kArgMem}) || I.arg[0].n != I.num) { I.why = "malformed operands"; return; }
        I.op = kOpLdmatrix;
        return;
    }
    if (is(0, "mma")) {
        if (!is(1, "sync") || !is(2, "aligned") || m != 10) return;
        I.k = is(3, "m16n8k16") ? 16 : is(3, "m16n8k8") ? 8 : 0;
        bool bf = is(7, "bf16") && is(8, "bf16"), hf = is(7, "f16") && is(8, "f16");
        if (!I.k || !is(4, "row") || !is(5, "col") || !is(6, "f32") || !(bf || hf) || !is(9, "f32")) return;
        I.f16 = hf;
        unsigned na = I.k == 16 ? 4 : 2, nb = I.k == 16 ? 2 : 1;
        if (!kinds({kArgVec, kArgVec, kArgVec, kArgVec}) || I.arg[0].n != 4 || I.arg[1].n != na || I.arg[2].n != nb ||
            I.arg[3].n != 4) {
            I.why = "malformed operands";
            return;
        }
        I.op = kOpMma;
        return;
    }
    if (is(0, "mov") && m == 2 && I.nargs == 2 && I.arg[0].kind == kArgReg &&
        (I.arg[1].kind == kArgSpecial || I.arg[1].kind == kArgReg || I.arg[1].kind == kArgImm)) {
        if (is(1, "u16") || is(1, "b16") || is(1, "s16")) I.movsize = 2;
        else if (is(1, "u32") || is(1, "b32") || is(1, "s32") || is(1, "f32")) I.movsize = 4;
        else if (is(1, "u64") || is(1, "b64") || is(1, "s64") || is(1, "f64")) I.movsize = 8;
        if (I.movsize) I.op = kOpMov;
        return;
    }
    if ((is(0, "membar") || is(0, "fence")) && I.nargs == 0) I.op = kOpNop;
    if ((is(0, "bar") || is(0, "barrier")) && is(1, "sync") && (m == 2 || (m == 3 && is(2, "aligned")))) {
        // barrier 0 of all threads is __syncthreads; named barriers and thread counts are not emulated
        if (I.nargs == 1 && I.arg[0].kind == kArgImm && I.arg[0].imm == 0) I.op = kOpBarSync;
        else I.why = "only `bar.sync 0` (all threads, barrier 0) is emulated";
    }
    if (is(0, "bar") && is(1, "warp") && is(2, "sync") && m == 3 && kinds({kArgImm})) I.op = kOpBarWarp;
}

// One statement per ';' (comments stripped); whitespace runs collapse in the kept text.
inline Program* parse_program(const char* t) {
    unsigned cap = 1;
    for (const char* p = t; *p; p++) cap += *p == ';';
    Program* prog = (Program*)calloc(1, sizeof(Program) + cap * sizeof(Insn));
    const char* p = t;
    while (*p) {
        char buf[512];
        size_t n = 0;
        bool space = false;
        for (; *p && *p != ';'; p++) {
            if (p[0] == '/' && p[1] == '/') {
                while (*p && *p != '\n') p++;
                if (!*p) break;
            }
            bool ws = *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r';
            if (ws) { space = n > 0; continue; }
            if (space && n + 1 < sizeof buf) buf[n++] = ' ';
            space = false;
            if (n + 1 < sizeof buf) buf[n++] = *p;
        }
        if (*p == ';') p++;
        if (!n) continue;
        buf[n] = 0;
        Insn& I = prog->insn[prog->n++];
        size_t keep = n < sizeof I.text - 1 ? n : sizeof I.text - 1;
        memcpy(I.text, buf, keep);
        I.text[keep] = 0;
        decode_insn(I, buf, buf + n);
    }
    return prog;
}

struct PtxCacheEntry {
    const char* key;
    Program* prog;
};
inline PtxCacheEntry* g_ptx_cache;
inline size_t g_ptx_cache_cap, g_ptx_cache_used;

inline Program* ptx_program(const char* tmpl) {
    if (g_ptx_cache_used * 2 >= g_ptx_cache_cap) {
        size_t cap = g_ptx_cache_cap ? g_ptx_cache_cap * 2 : 64;
        PtxCacheEntry* t = (PtxCacheEntry*)calloc(cap, sizeof *t);
        for (size_t i = 0; i < g_ptx_cache_cap; i++) {
            if (!g_ptx_cache[i].key) continue;
            size_t h = ((uintptr_t)g_ptx_cache[i].key >> 3) * 0x9E3779B97F4A7C15ull >> 20;
            while (t[h & (cap - 1)].key) h++;
            t[h & (cap - 1)] = g_ptx_cache[i];
        }
        free(g_ptx_cache);
        g_ptx_cache = t;
        g_ptx_cache_cap = cap;
    }
    size_t h = ((uintptr_t)tmpl >> 3) * 0x9E3779B97F4A7C15ull >> 20;
    for (;; h++) {
        PtxCacheEntry& e = g_ptx_cache[h & (g_ptx_cache_cap - 1)];
        if (e.key == tmpl) return e.prog;
        if (!e.key) {
            e.key = tmpl;
            e.prog = parse_program(tmpl);
            g_ptx_cache_used++;
            return e.prog;
        }
    }
}

inline void release_ptx_cache() {
    for (size_t i = 0; i < g_ptx_cache_cap; i++) free(g_ptx_cache[i].prog);
    free(g_ptx_cache);
    g_ptx_cache = nullptr;
    g_ptx_cache_cap = g_ptx_cache_used = 0;
}

// ---- operands -----------------------------------------------------------------------------

inline const Operand& operand(const Insn& I, const Operand* ops, unsigned n, int idx) {
    if (idx < 0 || (unsigned)idx >= n)
        fail(kErrIllegalInstruction, "inline PTX `%s`: operand %%%d does not exist (%u operands given)", I.text, idx, n);
    return ops[idx];
}
inline uint64_t op_read(const Operand& o) {
    if (o.dir == 0) return o.val;
    switch (o.size) {  // fixed-size loads: a variable-length copy into a wider slot stalls
        case 4: { uint32_t v; memcpy(&v, o.ptr, 4); return v; }
        case 8: { uint64_t v; memcpy(&v, o.ptr, 8); return v; }
        case 2: { uint16_t v; memcpy(&v, o.ptr, 2); return v; }
        default: return *(const uint8_t*)o.ptr;
    }
}
inline uint64_t arg_value(const Insn& I, const Operand* ops, unsigned n, const PtxArg& a) {
    return a.kind == kArgImm ? (uint64_t)a.imm : op_read(operand(I, ops, n, a.reg[0]));
}
inline uint64_t mem_address(const Insn& I, const Operand* ops, unsigned n, const PtxArg& a) {
    return (a.reg[0] >= 0 ? op_read(operand(I, ops, n, a.reg[0])) : 0) + (uint64_t)a.imm;
}
// Checked before a warp-wide instruction joins, so the error names the lane at fault.
inline void check_output(const Insn& I, const Operand* ops, unsigned n, int idx, unsigned size) {
    const Operand& o = operand(I, ops, n, idx);
    if (o.dir == 0) fail(kErrIllegalInstruction, "inline PTX `%s`: operand %%%d is an input but is written", I.text, idx);
    if (o.size != size)
        fail(kErrIllegalInstruction, "inline PTX `%s`: operand %%%d has %u bytes, the instruction writes %u", I.text, idx,
             o.size, size);
}
inline void check_input(const Insn& I, const Operand* ops, unsigned n, int idx, unsigned size) {
    const Operand& o = operand(I, ops, n, idx);
    if (o.size != size)
        fail(kErrIllegalInstruction, "inline PTX `%s`: operand %%%d has %u bytes, the instruction reads %u", I.text, idx,
             o.size, size);
}

// ---- cp.async -----------------------------------------------------------------------------

inline void cp_perform(const CpCopy& c) {
    memcpy(c.dst, c.src, c.src_size);
    if (c.src_size < c.size) memset(c.dst + c.src_size, 0, c.size - c.src_size);
}
inline void cp_push(Fiber* f, const CpCopy& c) {
    if (f->cp_tail == f->cp_cap) {
        if (f->cp_head) {
            memmove(f->cp, f->cp + f->cp_head, (f->cp_tail - f->cp_head) * sizeof(CpCopy));
            f->cp_tail -= f->cp_head;
            f->cp_head = 0;
        } else {
            unsigned cap = f->cp_cap ? f->cp_cap * 2 : 64;
            CpCopy* q = (CpCopy*)realloc(f->cp, cap * sizeof(CpCopy));
            if (!q) fail(kErrLaunchFailed, "out of memory for pending cp.async copies");
            f->cp = q;
            f->cp_cap = cap;
        }
    }
    f->cp[f->cp_tail++] = c;
}
// Completes every committed group but the newest `keep`.
inline void cp_wait(Fiber* f, uint64_t keep) {
    while (f->cp_head < f->cp_tail && (uint64_t)f->cp[f->cp_head].group + keep < f->cp_open) cp_perform(f->cp[f->cp_head++]);
    if (f->cp_head == f->cp_tail) f->cp_head = f->cp_tail = 0;
}
inline void cp_complete_all(Fiber* f) {
    while (f->cp_head < f->cp_tail) cp_perform(f->cp[f->cp_head++]);
    f->cp_head = f->cp_tail = 0;
}

inline void exec_cp_async(const Insn& I, const Operand* ops, unsigned n) {
    uint64_t dst_addr = mem_address(I, ops, n, I.arg[0]);
    const char* src = (const char*)(uintptr_t)mem_address(I, ops, n, I.arg[1]);
    uint64_t size = arg_value(I, ops, n, I.arg[2]);
    uint64_t src_size = I.nargs - I.cache_hint == 4 ? arg_value(I, ops, n, I.arg[3]) : size;
    if (size != 4 && size != 8 && size != 16)
        fail(kErrIllegalInstruction, "`%s`: cp-size %llu (must be 4, 8 or 16)", I.text, (unsigned long long)size);
    if (I.cg && size != 16) fail(kErrIllegalInstruction, "`%s`: cp.async.cg copies 16 bytes, not %llu", I.text, (unsigned long long)size);
    if (src_size > size)
        fail(kErrLaunchFailed, "`%s`: src-size %llu exceeds cp-size %llu", I.text, (unsigned long long)src_size,
             (unsigned long long)size);
    char* dst = shared_ptr(dst_addr, size, I.text);
    if (((uintptr_t)dst | (uintptr_t)src) % size)
        fail(kErrMisaligned, "`%s`: misaligned cp.async (shared 0x%llx, global %p; both must be %llu-byte aligned)", I.text,
             (unsigned long long)dst_addr, (const void*)src, (unsigned long long)size);
    if (src_size && !src) fail(kErrIllegalAddress, "`%s`: null global source", I.text);
    Fiber* f = g.cur;
    cp_push(f, CpCopy{dst, src, f->cp_open, (uint8_t)size, (uint8_t)src_size});
    memset(dst, 0xFF, size);
}

// ---- ldmatrix / mma ----------------------------------------------------------------------

// Without .trans lane t gets, from each matrix j, the 32-bit pair at columns 2(t%4), 2(t%4)+1
// of row t/4; with .trans the elements (row 2(t%4), column t/4) and (row 2(t%4)+1, column t/4).
// Row r of matrix j is at the address lane 8j + r supplied.
inline void compute_ldmatrix(Coll* c) {
    unsigned num = c->variant & 7;
    bool trans = c->variant >> 4 & 1;
    for (unsigned m = c->mask; m; m &= m - 1) {
        unsigned t = __builtin_ctz(m);
        const Insn& I = *(const Insn*)c->s[t].q;
        const Operand* ops = (const Operand*)c->s[t].p;
        for (unsigned j = 0; j < num; j++) {
            uint32_t r;
            if (!trans) {
                memcpy(&r, (const char*)c->s[8 * j + t / 4].v + 4 * (t % 4), 4);
            } else {
                uint16_t lo, hi;
                memcpy(&lo, (const char*)c->s[8 * j + 2 * (t % 4)].v + 2 * (t / 4), 2);
                memcpy(&hi, (const char*)c->s[8 * j + 2 * (t % 4) + 1].v + 2 * (t / 4), 2);
                r = lo | (uint32_t)hi << 16;
            }
            memcpy(ops[I.arg[0].reg[j]].ptr, &r, 4);
        }
    }
}

inline void exec_ldmatrix(const Insn& I, const Operand* ops, unsigned n) {
    Fiber* me = g.cur;
    Warp& w = g.warps[me->warp];
    unsigned rows = 8u * I.num, need = rows == 32 ? ~0u : (1u << rows) - 1;
    if ((w.exists & need) != need)
        fail(kErrLaunchFailed, "`%s`: needs row addresses from lanes 0-%u, but warp %u has %d threads", I.text, rows - 1,
             me->warp, __builtin_popcount(w.exists));
    const char* row = nullptr;
    if (me->lane < rows) {
        uint64_t a = mem_address(I, ops, n, I.arg[1]);
        row = I.shared ? shared_ptr(a, 16, I.text) : generic_shared_ptr(a, 16, I.text);
        if ((uintptr_t)row & 15)
            fail(kErrMisaligned, "`%s`: row address 0x%llx (lane %u) is not 16-byte aligned", I.text, (unsigned long long)a,
                 me->lane);
    }
    for (unsigned j = 0; j < I.num; j++) check_output(I, ops, n, I.arg[0].reg[j], 4);
    Coll* c = coll_join(w.exists, kLdmatrix, I.num | (unsigned)I.trans << 4, compute_ldmatrix);
    Coll::Slot& s = c->s[me->lane];
    s.v = (uint64_t)(uintptr_t)row;
    s.p = ops;
    s.q = &I;
    s.n = n;
    coll_finish(c);
}

// m16n8kK, groupID g = lane/4, t = lane%4. A register i holds (row g + 8(i&1), columns
// 2t + 8(i>>1) + {0,1}); B register i holds (rows 2t + 8i + {0,1}, column g); C/D element i
// is (row g + 8(i>>1), column 2t + (i&1)). Low half of a register = lower column/row.
inline void compute_mma(Coll* c) {
    unsigned K = c->variant & 0xff, na = K == 16 ? 4 : 2, nb = K == 16 ? 2 : 1;
    bool f16 = c->variant >> 8 & 1;
    float A[16][16], B[16][8], C[16][8];
    auto half = [f16](uint32_t r, int hi) {
        uint16_t b = (uint16_t)(hi ? r >> 16 : r);
        return f16 ? f16_to_f32(b) : bf16_to_f32(b);
    };
    for (unsigned l = 0; l < 32; l++) {
        const Insn& I = *(const Insn*)c->s[l].q;
        const Operand* ops = (const Operand*)c->s[l].p;
        unsigned gq = l / 4, tq = l % 4;
        for (unsigned i = 0; i < na; i++) {
            uint32_t r = (uint32_t)op_read(ops[I.arg[1].reg[i]]);
            unsigned row = gq + 8 * (i & 1), col = 2 * tq + 8 * (i >> 1);
            A[row][col] = half(r, 0);
            A[row][col + 1] = half(r, 1);
        }
        for (unsigned i = 0; i < nb; i++) {
            uint32_t r = (uint32_t)op_read(ops[I.arg[2].reg[i]]);
            B[2 * tq + 8 * i][gq] = half(r, 0);
            B[2 * tq + 8 * i + 1][gq] = half(r, 1);
        }
        for (unsigned i = 0; i < 4; i++)
            C[gq + 8 * (i >> 1)][2 * tq + (i & 1)] = bits_f32((uint32_t)op_read(ops[I.arg[3].reg[i]]));
    }
    // k outermost: every element still sums in k order, but the 128 sums proceed side by side.
    float S[16][8] = {};
    for (unsigned k = 0; k < K; k++)
        for (unsigned row = 0; row < 16; row++)
            for (unsigned col = 0; col < 8; col++) S[row][col] += A[row][k] * B[k][col];
    for (unsigned l = 0; l < 32; l++) {
        const Insn& I = *(const Insn*)c->s[l].q;
        const Operand* ops = (const Operand*)c->s[l].p;
        unsigned gq = l / 4, tq = l % 4;
        for (unsigned i = 0; i < 4; i++) {
            unsigned row = gq + 8 * (i >> 1), col = 2 * tq + (i & 1);
            float d = C[row][col] + S[row][col];
            memcpy(ops[I.arg[0].reg[i]].ptr, &d, 4);
        }
    }
}

inline void exec_mma(const Insn& I, const Operand* ops, unsigned n) {
    Fiber* me = g.cur;
    Warp& w = g.warps[me->warp];
    if (w.exists != ~0u)
        fail(kErrLaunchFailed, "`%s`: mma.sync needs a full warp, warp %u has %d threads", I.text, me->warp,
             __builtin_popcount(w.exists));
    for (unsigned i = 0; i < 4; i++) check_output(I, ops, n, I.arg[0].reg[i], 4);
    for (unsigned a = 1; a < 4; a++)
        for (unsigned i = 0; i < I.arg[a].n; i++) check_input(I, ops, n, I.arg[a].reg[i], 4);
    Coll* c = coll_join(~0u, kMma, I.k | (unsigned)I.f16 << 8, compute_mma);
    Coll::Slot& s = c->s[me->lane];
    s.p = ops;
    s.q = &I;
    s.n = n;
    coll_finish(c);
}

inline void exec_mov(const Insn& I, const Operand* ops, unsigned n) {
    Fiber* me = g.cur;
    uint64_t v = 0, lane = me->lane;
    struct timespec ts;
    if (I.arg[1].kind != kArgSpecial) v = arg_value(I, ops, n, I.arg[1]);
    else switch (I.arg[1].imm) {
        case 0: v = lane; break;
        case 1: v = me->warp; break;
        case 2: v = 64; break;
        case 3: v = 0; break;
        case 4: v = 132; break;
        case 5: case 6: v = (uint64_t)clock64(); break;
        case 7: clock_gettime(CLOCK_REALTIME, &ts); v = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec; break;
        case 8: v = 1ull << lane; break;
        case 9: v = (1ull << lane) - 1; break;
        case 10: v = (2ull << lane) - 1; break;
        case 11: v = ~((2ull << lane) - 1) & 0xffffffffull; break;
        case 12: v = ~((1ull << lane) - 1) & 0xffffffffull; break;
    }
    check_output(I, ops, n, I.arg[0].reg[0], I.movsize);
    memcpy(ops[I.arg[0].reg[0]].ptr, &v, I.movsize);
}

inline void inline_ptx(const char* tmpl, std::initializer_list<Operand> list) {
    if (!g.cur) fail(kErrLaunchFailed, "inline PTX executed outside a kernel launch: %s", tmpl);
    Program* prog = ptx_program(tmpl);
    const Operand* ops = list.begin();
    unsigned n = (unsigned)list.size();
    // A matching constraint ("0") makes the input the initial value of that output register.
    for (unsigned i = 0; i < n; i++) {
        const char* c = ops[i].constraint;
        if (ops[i].dir == 0 && c && c[0] >= '0' && c[0] <= '9') {
            unsigned k = (unsigned)atoi(c);
            if (k >= n || ops[k].dir == 0)
                fail(kErrIllegalInstruction, "inline PTX `%s`: constraint \"%s\" names no output", tmpl, c);
            memcpy(ops[k].ptr, &ops[i].val, ops[k].size);
        }
    }
    for (unsigned i = 0; i < prog->n; i++) {
        const Insn& I = prog->insn[i];
        switch (I.op) {
            case kOpCpAsync: exec_cp_async(I, ops, n); break;
            case kOpCommit: g.cur->cp_open++; break;
            case kOpWaitGroup: cp_wait(g.cur, arg_value(I, ops, n, I.arg[0])); break;
            case kOpWaitAll: g.cur->cp_open++; cp_wait(g.cur, 0); break;
            case kOpLdmatrix: exec_ldmatrix(I, ops, n); break;
            case kOpMma: exec_mma(I, ops, n); break;
            case kOpMov: exec_mov(I, ops, n); break;
            case kOpNop: break;
            case kOpBarSync: __syncthreads(); break;
            case kOpBarWarp: __syncwarp((unsigned)arg_value(I, ops, n, I.arg[0])); break;
            default: fail(kErrIllegalInstruction, "inline PTX instruction `%s` is %s", I.text, I.why);
        }
    }
}

}  // namespace cudasim
