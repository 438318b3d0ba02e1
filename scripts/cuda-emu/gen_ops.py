# Like gen.py, for the kernels without inline PTX: the cuda_bf16 include becomes ops_ext.h.
import sys
src = open(sys.argv[1]).read()
src = src.replace("#include <cuda_bf16.h>", '#include "ops_ext.h"')
assert "asm" not in src, "inline PTX has no emulation here"
open(sys.argv[2], "w").write(src)
