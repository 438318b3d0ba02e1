// Warp collectives as real rendezvous: each lane named in the mask posts its operands; the
// last to arrive computes every lane's result and wakes the others. A mask naming a lane that
// does not exist, has exited or is not the caller, and lanes meeting with different masks or
// operations where that can never complete, are launch errors; any other wait that cannot
// complete ends in the deadlock report. Included by runtime.h only.
#pragma once

namespace cudasim {

enum : uint8_t {
    kSyncwarp, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kMatchAny, kMatchAll, kReduce,
    kLdmatrix, kMma,
};
enum : uint32_t { kRedAdd, kRedMin, kRedMax, kRedAnd, kRedOr, kRedXor, kRedSigned = 8 };

inline const char* coll_name(uint8_t kind, uint32_t variant) {
    static const char* const names[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                        "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync",
                                        "__match_any_sync", "__match_all_sync", "", "ldmatrix", "mma.sync"};
    static const char* const reduce[] = {"__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync",
                                         "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync"};
    return kind == kReduce ? reduce[(variant & 7) % 6] : names[kind];
}

struct Coll {
    Coll* next;  // the warp's pending list; masks may overlap (lanes running ahead)
    unsigned mask, arrived;
    uint8_t kind;
    uint32_t variant;  // what lanes must also agree on: value size, reduction, PTX shape
    void (*compute)(Coll*);
    struct Slot {
        uint64_t v;
        int a, w;
        const void* p;  // warp-wide PTX: the lane's operand array and parsed instruction
        const void* q;
        unsigned n;
        uint64_t* res;
    } s[32];
};

inline void release_collectives() {
    for (unsigned w = 0; w < g.nwarps; w++) {
        while (Coll* c = g.warps[w].pending) {
            g.warps[w].pending = c->next;
            c->next = g.free_colls;
            g.free_colls = c;
        }
    }
}

inline void check_exit_in_collectives(Fiber* me) {
    unsigned bit = 1u << me->lane;
    for (Coll* c = g.warps[me->warp].pending; c; c = c->next) {
        if (!(c->mask & bit)) continue;
        char lanes[128];
        format_lanes(lanes, sizeof lanes, c->arrived);
        fail(kErrLaunchFailed, "thread exited (lane %u of warp %u) while lanes %s wait for it at %s(mask 0x%08x)",
             me->lane, me->warp, lanes, coll_name(c->kind, c->variant), c->mask);
    }
}

__attribute__((format(printf, 4, 5))) inline void appendf(char* buf, size_t cap, size_t* len, const char* fmt, ...) {
    if (*len >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0) *len = *len + (size_t)n < cap ? *len + (size_t)n : cap;
}

inline void report_deadlock() {
    static char buf[1800];
    size_t len = 0;
    appendf(buf, sizeof buf, &len, "deadlock: every live thread of the block waits and none can continue");
    if (g.bar_arrived) {
        uint32_t at[kMaxThreads / 32] = {}, missing[kMaxThreads / 32] = {};
        for (unsigned i = 0; i < g.bar_arrived; i++) at[g.bar_wait[i]->linear / 32] |= 1u << (g.bar_wait[i]->linear % 32);
        for (unsigned t = 0; t < g.nthreads; t++)
            if (g.fibers[t]->state != kExited && !(at[t / 32] >> (t % 32) & 1)) missing[t / 32] |= 1u << (t % 32);
        char r1[256], r2[256];
        format_ranges(r1, sizeof r1, at, g.nthreads);
        format_ranges(r2, sizeof r2, missing, g.nthreads);
        appendf(buf, sizeof buf, &len, "; __syncthreads reached by %u of %u threads (threads %s; not threads %s)",
                g.bar_arrived, g.live, r1, r2);
    }
    for (unsigned w = 0; w < g.nwarps; w++) {
        bool overlap = false;
        for (Coll* c = g.warps[w].pending; c; c = c->next) {
            char r1[128], r2[128];
            format_lanes(r1, sizeof r1, c->arrived);
            format_lanes(r2, sizeof r2, c->mask & ~c->arrived);
            appendf(buf, sizeof buf, &len, "; warp %u (threads %u-%u): %s(mask 0x%08x) reached by lanes %s, not by lanes %s",
                    w, w * 32, w * 32 + 31, coll_name(c->kind, c->variant), c->mask, r1, r2);
            for (Coll* d = c->next; d; d = d->next) overlap = overlap || (c->mask & d->mask);
        }
        if (overlap) appendf(buf, sizeof buf, &len, " (overlapping masks: the lanes of warp %u disagree on the mask)", w);
    }
    fail(kErrLaunchFailed, "%s", buf);
}

// Error paths, kept out of line so the rendezvous itself stays small.
[[noreturn]] __attribute__((noinline, cold)) inline void coll_misuse(const char* what, unsigned mask, unsigned lanes,
                                                                    const Coll* other) {
    Fiber* me = g.cur;
    char set[128];
    format_lanes(set, sizeof set, other ? other->arrived : lanes);
    if (!other)
        fail(kErrLaunchFailed, "%s(mask 0x%08x) names lanes %s, which %s (warp %u has %d threads)", what, mask, set,
             (lanes & g.warps[me->warp].exists) ? "have exited" : "do not exist", me->warp,
             __builtin_popcount(g.warps[me->warp].exists));
    if (other->mask != mask)
        fail(kErrLaunchFailed, "lanes disagree on the mask: lane %u calls %s(mask 0x%08x) while lanes %s wait for it at %s(mask 0x%08x)",
             me->lane, what, mask, set, coll_name(other->kind, other->variant), other->mask);
    fail(kErrLaunchFailed, "lanes meet at different operations: lane %u calls %s while lanes %s wait for it at %s (mask 0x%08x)",
         me->lane, what, set, coll_name(other->kind, other->variant), mask);
}

// The calling lane joins the pending collective that expects it with the same mask and
// operation, or opens a new one. Lanes may legitimately run ahead into an overlapping
// collective (one half of a warp syncing on its own, then the whole warp), so another mask
// or operation is an error only where it can never complete: a collective that expects this
// lane with the same mask but another operation, or one whose arrived lanes the new mask
// also names (they wait for this lane while it would wait for them).
inline Coll* coll_join(unsigned mask, uint8_t kind, uint32_t variant, void (*compute)(Coll*)) {
    Fiber* me = g.cur;
    if (!me) fail(kErrLaunchFailed, "%s called outside a kernel launch", coll_name(kind, variant));
    Warp& w = g.warps[me->warp];
    unsigned bit = 1u << me->lane;
    if (!(mask & bit))
        fail(kErrLaunchFailed, "%s(mask 0x%08x): the calling lane %u is not in the mask", coll_name(kind, variant), mask,
             me->lane);
    if (mask & ~w.exists) coll_misuse(coll_name(kind, variant), mask, mask & ~w.exists, nullptr);
    if (mask & w.exited) coll_misuse(coll_name(kind, variant), mask, mask & w.exited, nullptr);
    Coll* c = w.pending;
    for (; c; c = c->next) {
        if (!(c->mask & bit)) continue;
        if (c->mask == mask && c->kind == kind && c->variant == variant) break;
        if (c->mask == mask || (c->arrived & mask)) coll_misuse(coll_name(kind, variant), mask, 0, c);
    }
    if (!c) {
        c = g.free_colls;
        if (c) g.free_colls = c->next;
        else c = new Coll;
        c->mask = mask;
        c->arrived = 0;
        c->kind = kind;
        c->variant = variant;
        c->compute = compute;
        c->next = w.pending;
        w.pending = c;
    }
    c->arrived |= bit;
    return c;
}

// Called after the lane filled its slot: waits, or, as the last lane, completes the exchange.
inline void coll_finish(Coll* c) {
    Fiber* me = g.cur;
    if (c->arrived != c->mask) {
        me->coll = c;
        block_current(kWaitColl);
        return;
    }
    c->compute(c);
    Warp& w = g.warps[me->warp];
    Coll** link = &w.pending;
    while (*link != c) link = &(*link)->next;
    *link = c->next;
    for (unsigned m = c->mask & ~(1u << me->lane); m; m &= m - 1) wake(g.fibers[me->warp * 32 + __builtin_ctz(m)]);
    c->next = g.free_colls;
    g.free_colls = c;
}

// A lane that reads from a lane outside the mask gets all-ones bits (NaN for floats): the
// value is undefined in CUDA, and this makes its use visible.
inline void compute_shfl(Coll* c) {
    for (unsigned m = c->mask; m; m &= m - 1) {
        unsigned l = __builtin_ctz(m);
        const Coll::Slot& s = c->s[l];
        unsigned w = (unsigned)s.w, seg = l & ~(w - 1), pos = l & (w - 1), src = l;
        uint64_t a = (unsigned)s.a;
        switch (c->kind) {
            case kShflIdx: src = seg + ((unsigned)a & (w - 1)); break;
            case kShflUp: src = a > pos ? l : l - (unsigned)a; break;
            case kShflDown: src = pos + a >= w ? l : l + (unsigned)a; break;
            case kShflXor: { unsigned t = l ^ ((unsigned)a & 31u); src = t >= seg + w ? l : t; } break;
        }
        *s.res = (c->mask >> src & 1) ? c->s[src].v : ~0ull;
    }
}

inline void compute_vote(Coll* c) {
    uint64_t bits = 0;
    for (unsigned m = c->mask; m; m &= m - 1) bits |= (uint64_t)(c->s[__builtin_ctz(m)].v != 0) << __builtin_ctz(m);
    bool all_equal = true;
    uint64_t first = c->s[__builtin_ctz(c->mask)].v;
    uint64_t red = first;
    for (unsigned m = c->mask; m; m &= m - 1) {
        uint64_t v = c->s[__builtin_ctz(m)].v;
        all_equal = all_equal && v == first;
        if (c->kind != kReduce) continue;
        bool sgn = c->variant & kRedSigned;
        switch (c->variant & 7) {
            case kRedAdd: if (m != c->mask) red = (uint32_t)(red + v); break;
            case kRedMin: red = sgn ? ((int32_t)v < (int32_t)red ? v : red) : ((uint32_t)v < (uint32_t)red ? v : red); break;
            case kRedMax: red = sgn ? ((int32_t)v > (int32_t)red ? v : red) : ((uint32_t)v > (uint32_t)red ? v : red); break;
            case kRedAnd: red &= v; break;
            case kRedOr: red |= v; break;
            case kRedXor: if (m != c->mask) red ^= v; break;
        }
    }
    for (unsigned m = c->mask; m; m &= m - 1) {
        unsigned l = __builtin_ctz(m);
        uint64_t r = 0;
        switch (c->kind) {
            case kBallot: r = bits; break;
            case kAny: r = bits != 0; break;
            case kAll: r = bits == c->mask; break;
            case kMatchAny:
                for (unsigned n = c->mask; n; n &= n - 1)
                    if (c->s[__builtin_ctz(n)].v == c->s[l].v) r |= 1u << __builtin_ctz(n);
                break;
            case kMatchAll: r = all_equal ? (c->mask | (1ull << 32)) : 0; break;
            case kReduce: r = red; break;
        }
        if (c->s[l].res) *c->s[l].res = r;
    }
}

inline uint64_t shfl(uint8_t kind, unsigned mask, uint64_t v, int a, int width, unsigned size) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail(kErrLaunchFailed, "%s: width %d is not a power of 2 in 1..32", coll_name(kind, 0), width);
    Coll* c = coll_join(mask, kind, size, compute_shfl);
    uint64_t res = 0;
    Coll::Slot& s = c->s[g.cur->lane];
    s.v = v;
    s.a = a;
    s.w = width;
    s.res = &res;
    coll_finish(c);
    return res;
}

inline uint64_t vote(uint8_t kind, unsigned mask, uint64_t v, uint32_t variant) {
    Coll* c = coll_join(mask, kind, variant, compute_vote);
    uint64_t res = 0;
    Coll::Slot& s = c->s[g.cur->lane];
    s.v = v;
    s.res = &res;
    coll_finish(c);
    return res;
}

template <class T> inline uint64_t to_bits(const T& v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp exchanges carry at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace cudasim

// ---- CUDA API ---------------------------------------------------------------------------

inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cudasim::vote(::cudasim::kSyncwarp, mask, 0, 0); }

template <class T> inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
    return ::cudasim::from_bits<T>(::cudasim::shfl(::cudasim::kShflIdx, mask, ::cudasim::to_bits(var), srcLane, width, sizeof(T)));
}
template <class T> inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = 32) {
    return ::cudasim::from_bits<T>(::cudasim::shfl(::cudasim::kShflUp, mask, ::cudasim::to_bits(var), (int)delta, width, sizeof(T)));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = 32) {
    return ::cudasim::from_bits<T>(::cudasim::shfl(::cudasim::kShflDown, mask, ::cudasim::to_bits(var), (int)delta, width, sizeof(T)));
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
    return ::cudasim::from_bits<T>(::cudasim::shfl(::cudasim::kShflXor, mask, ::cudasim::to_bits(var), laneMask, width, sizeof(T)));
}

inline unsigned __ballot_sync(unsigned mask, int pred) { return (unsigned)::cudasim::vote(::cudasim::kBallot, mask, pred != 0, 0); }
inline int __any_sync(unsigned mask, int pred) { return (int)::cudasim::vote(::cudasim::kAny, mask, pred != 0, 0); }
inline int __all_sync(unsigned mask, int pred) { return (int)::cudasim::vote(::cudasim::kAll, mask, pred != 0, 0); }

template <class T> inline unsigned __match_any_sync(unsigned mask, T value) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "__match_any_sync takes 32- or 64-bit values");
    return (unsigned)::cudasim::vote(::cudasim::kMatchAny, mask, ::cudasim::to_bits(value), sizeof(T));
}
template <class T> inline unsigned __match_all_sync(unsigned mask, T value, int* pred) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "__match_all_sync takes 32- or 64-bit values");
    uint64_t r = ::cudasim::vote(::cudasim::kMatchAll, mask, ::cudasim::to_bits(value), sizeof(T));
    *pred = (int)(r >> 32);
    return (unsigned)r;
}

// A call site is told apart by its return address (the function is out of line) and by a
// per-expansion number, which also keeps the compiler from merging the calls of different
// branches into one.
namespace cudasim {
__attribute__((noinline)) inline unsigned activemask_at(unsigned site) {
    Fiber* me = g.cur;
    if (!me) return 0;
    me->am_site = (uintptr_t)__builtin_return_address(0) * 0x9E3779B97F4A7C15ull + site;
    g.warps[me->warp].am_waiting |= 1u << me->lane;
    block_current(kWaitActivemask);
    return me->am_result;
}
}  // namespace cudasim
#define __activemask() ::cudasim::activemask_at(__COUNTER__)

#define CUDASIM_REDUCE(NAME, OP)                                                                          \
    inline unsigned NAME(unsigned mask, unsigned v) { return (unsigned)::cudasim::vote(::cudasim::kReduce, mask, v, OP); } \
    inline int NAME(unsigned mask, int v) {                                                               \
        return (int)(unsigned)::cudasim::vote(::cudasim::kReduce, mask, (unsigned)v, OP | ::cudasim::kRedSigned); \
    }
CUDASIM_REDUCE(__reduce_add_sync, ::cudasim::kRedAdd)
CUDASIM_REDUCE(__reduce_min_sync, ::cudasim::kRedMin)
CUDASIM_REDUCE(__reduce_max_sync, ::cudasim::kRedMax)
#undef CUDASIM_REDUCE
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return (unsigned)::cudasim::vote(::cudasim::kReduce, mask, v, ::cudasim::kRedAnd); }
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return (unsigned)::cudasim::vote(::cudasim::kReduce, mask, v, ::cudasim::kRedOr); }
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return (unsigned)::cudasim::vote(::cudasim::kReduce, mask, v, ::cudasim::kRedXor); }
