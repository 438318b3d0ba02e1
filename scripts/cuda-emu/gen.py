# Rewrites a .cu file for emu.h: the cuda_bf16 include becomes emu.h, dynamic shared memory
# a static buffer, and the inline-PTX helpers (cp.async, ldmatrix, mma) emulated calls.
import re, sys
src = open(sys.argv[1]).read()
src = src.replace("#include <cuda_bf16.h>", '#include "emu.h"')
src = src.replace("extern __shared__ float4 smem4[];", "float4* smem4 = emu_dyn_smem;")
emu = {
 "cp_async16": "(void* smem, const void* gmem, int src_bytes) { memset(smem, 0, 16); memcpy(smem, gmem, src_bytes); }",
 "cp_async_commit": "() {}",
 "cp_async_wait_1": "() {}",
 "ldmatrix_x4": "(unsigned (&r)[4], const bf16* p) { emu_ldmatrix(r, p, false); }",
 "ldmatrix_x4_trans": "(unsigned (&r)[4], const bf16* p) { emu_ldmatrix(r, p, true); }",
 "mma_bf16": "(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) { emu_mma(d, a, b0, b1); }",
}
for name, body in emu.items():
    m = re.search(r"__device__ __forceinline__ void " + name + r"\(", src)
    if not m: continue
    i = src.index("{", m.end()); depth = 0; j = i
    # the body starts at the first "{" after the name (parameter lists hold no braces)
    while True:
        if src[j] == "{": depth += 1
        elif src[j] == "}":
            depth -= 1
            if depth == 0: break
        j += 1
    src = src[:m.start()] + "__device__ __forceinline__ void " + name + body + src[j+1:]
assert "asm volatile" not in src, "an inline-PTX helper has no emulation in gen.py"
open(sys.argv[2], "w").write(src)
