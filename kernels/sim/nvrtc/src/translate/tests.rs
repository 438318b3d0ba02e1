use super::*;

/// The body of the translation: the source's part, without the two header lines and the
/// kernel table.
fn body(src: &str) -> String {
    let t = translate(src, "t.cu").unwrap_or_else(|e| panic!("{e}"));
    let rest = t.cpp.strip_prefix("#include <cudasim/runtime.h>\n#line 1 \"t.cu\"\n").expect("header");
    let end = rest.find("#line 1 \"t.cu (cudasim kernel table)\"\n").expect("table");
    let mut b = rest[..end].to_string();
    if !src.is_empty() && !src.ends_with('\n') {
        assert_eq!(b.pop(), Some('\n'), "the table starts on a line of its own");
    }
    assert_eq!(b.matches('\n').count(), src.matches('\n').count(), "newlines must be preserved:\n{b}");
    b
}

fn names(src: &str) -> Vec<(String, String)> {
    translate(src, "t.cu").unwrap_or_else(|e| panic!("{e}")).kernels.into_iter().map(|k| (k.name, k.max_threads)).collect()
}

fn error(src: &str) -> String {
    match translate(src, "t.cu") {
        Ok(t) => panic!("expected an error, got:\n{}", t.cpp),
        Err(e) => e,
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn whole_unit_layout() {
    let src = "extern \"C\" __global__ void fill_f32(float* o) { o[0] = 1; }\n\
               extern \"C\" __global__ void __launch_bounds__(256) matmul_fwd_bf16(float* o) {}\n";
    let t = translate(src, "dir/we\"ird.cu").unwrap();
    assert_eq!(
        t.cpp,
        format!(
            "#include <cudasim/runtime.h>\n#line 1 \"dir/we\\\"ird.cu\"\n{src}#line 1 \"dir/we\\\"ird.cu (cudasim kernel table)\"\n\
             CUDASIM_KERNELS_BEGIN\nCUDASIM_KERNEL(fill_f32, 1024)\nCUDASIM_KERNEL(matmul_fwd_bf16, (256))\nCUDASIM_KERNELS_END\n"
        )
    );
    // No kernels, no trailing newline: still a well-formed unit with an empty table.
    let t = translate("int x;", "e.cu").unwrap();
    assert!(t.cpp.ends_with("int x;\n#line 1 \"e.cu (cudasim kernel table)\"\nCUDASIM_KERNELS_BEGIN\nCUDASIM_KERNELS_END\n"), "{}", t.cpp);
    assert!(t.kernels.is_empty());
}

#[test]
fn asm_operands_in_gcc_order() {
    let b = body("void f() { asm volatile(\"mov.b32 %0, %1;\" : \"=r\"(x) : \"r\"(y)); }");
    assert_eq!(b, "void f() { ::cudasim::inline_ptx(\"mov.b32 %0, %1;\", {::cudasim::ptx_out(x, \"=r\"), ::cudasim::ptx_in(y, \"r\")}); }");
    let b = body("void f() { asm(\"mma %0 %1;\" : \"+f\"(d[0]), \"=&r\"(r) : \"l\"(p)); }");
    assert_eq!(
        b,
        "void f() { ::cudasim::inline_ptx(\"mma %0 %1;\", {::cudasim::ptx_inout(d[0], \"+f\"), ::cudasim::ptx_out(r, \"=&r\"), ::cudasim::ptx_in(p, \"l\")}); }"
    );
}

#[test]
fn asm_spellings_and_empty_sections() {
    for kw in ["asm", "asm volatile", "__asm__ __volatile__", "__asm volatile", "asm __volatile__", "__asm__", "asm inline"] {
        let b = body(&format!("void f() {{ {kw}(\"trap;\"); }}"));
        assert_eq!(b, "void f() { ::cudasim::inline_ptx(\"trap;\", {}); }", "{kw}");
    }
    assert_eq!(body("void f() { asm volatile(\"c;\\n\" ::); }"), "void f() { ::cudasim::inline_ptx(\"c;\\n\", {}); }");
    assert_eq!(body("void f() { asm volatile(\"c;\" ::: \"memory\"); }"), "void f() { ::cudasim::inline_ptx(\"c;\", {}); }");
    assert_eq!(body("void f() { asm(\"c;\" : : : \"memory\", \"cc\"); }"), "void f() { ::cudasim::inline_ptx(\"c;\", {}); }");
    assert_eq!(
        body("void f() { asm volatile(\"cp [%0];\" ::\"r\"(a), \"l\"(b)); }"),
        "void f() { ::cudasim::inline_ptx(\"cp [%0];\", {::cudasim::ptx_in(a, \"r\"), ::cudasim::ptx_in(b, \"l\")}); }"
    );
    assert_eq!(
        body("void f() { asm(\"x %0;\" : \"=r\"(a)); }"),
        "void f() { ::cudasim::inline_ptx(\"x %0;\", {::cudasim::ptx_out(a, \"=r\")}); }"
    );
    // After `if (...)`, `else`, a label and a directive: all statements.
    let b = body("void f() {\n if (c) asm(\"a;\");\n else asm(\"b;\");\n l: asm(\"c;\");\n#pragma unroll\n asm(\"d;\");\n}");
    assert_eq!(b.matches("::cudasim::inline_ptx").count(), 4, "{b}");
}

#[test]
fn asm_operand_expressions_are_copied_whole() {
    let b = body(
        "void f() { asm volatile(\"op %0, %1, %2;\" : \"=r\"(out[idx(a, b)]) : \"r\"(static_cast<unsigned>(x >> 2)), \
         \"l\"((const void*)g(\")\", ',')), \"n\"(std::min<int>(1, 2))); }",
    );
    assert_eq!(
        b,
        "void f() { ::cudasim::inline_ptx(\"op %0, %1, %2;\", {::cudasim::ptx_out(out[idx(a, b)], \"=r\"), \
         ::cudasim::ptx_in(static_cast<unsigned>(x >> 2), \"r\"), ::cudasim::ptx_in((const void*)g(\")\", ','), \"l\"), \
         ::cudasim::ptx_in(std::min<int>(1, 2), \"n\")}); }"
    );
}

#[test]
fn asm_adjacent_literals_comments_and_newlines() {
    let src = "void f() {\n    asm volatile(\n        \"mma {%0,%1}, \"  // the shape\n        \"{%2};\\n\"\n        : \"+f\"(d[0]), /* second */ \"+f\"(d[1])\n        : \"r\"(a));\n    next();\n}\n";
    let b = body(src);
    let expected = "void f() {\n    ::cudasim::inline_ptx(\"mma {%0,%1}, \" \"{%2};\\n\", {::cudasim::ptx_inout(d[0], \"+f\"), ::cudasim::ptx_inout(d[1], \"+f\"), ::cudasim::ptx_in(a, \"r\")})\n\n\n\n;\n    next();\n}\n";
    assert_eq!(b, expected);
    // `next();` stays on line 7.
    assert_eq!(b.lines().nth(6), Some("    next();"));
}

#[test]
fn asm_named_operands_are_renumbered() {
    let b = body("void f() { asm(\"add %[o], %[a], %[b]; // 100%%\" : [o] \"=r\"(o) : [a] \"r\"(a), [b] \"r\"(b), \"[o]\"(o)); }");
    assert_eq!(
        b,
        "void f() { ::cudasim::inline_ptx(\"add %0, %1, %2; // 100%%\", {::cudasim::ptx_out(o, \"=r\"), ::cudasim::ptx_in(a, \"r\"), \
         ::cudasim::ptx_in(b, \"r\"), ::cudasim::ptx_in(o, \"0\")}); }"
    );
    assert!(error("void f() { asm(\"%[nope]\" : [o] \"=r\"(o)); }").contains("unknown operand `nope`"));
}

#[test]
fn asm_in_comments_strings_and_chars_is_left_alone() {
    let src = "// asm volatile(\"x\");\n/* asm(\"y\"); */\nconst char* s = \"asm(\\\"z\\\");\";\nchar c = 'a';\nconst char* r = R\"(asm(\"w\");)\";\n";
    assert_eq!(body(src), src);
}

#[test]
fn asm_errors() {
    for (src, needle) in [
        ("#define SYNC() asm volatile(\"bar.sync 0;\")\n", "inside a #define (macro `SYNC`)"),
        ("#define X __asm__(\"x\")\n", "inline asm inside a #define"),
        ("void f() { asm goto(\"x\" :::: l); l:; }", "asm goto"),
        ("asm(\".globl x\");", "file-scope asm"),
        ("int f() asm(\"g\");", "file-scope asm"),
        ("void f() { register int x asm(\"r1\"); }", "asm labels"),
        ("void f() { asm(\"x\") }", "expected ';'"),
        ("void f() { asm(\"x\" : \"r\"(a)); }", "must start with '=' or '+'"),
        ("void f() { asm(\"x\" :: \"=r\"(a)); }", "cannot start with '=' or '+'"),
        ("void f() { asm(\"x\" : \"=r\"); }", "expected `\"constraint\"(expression)`"),
        ("void f() { asm(\"x\" : (a)); }", "expected a constraint string"),
        ("void f() { asm(); }", "without a template"),
        ("void f() { asm(\"x\" : \"=r\"(a); }", "unbalanced"),
        ("void f() {\n\n asm(\"x\"\n#ifdef A\n : \"=r\"(a)\n#endif\n); }", "preprocessor directive"),
    ] {
        let e = error(src);
        assert!(e.contains(needle), "{src:?}: {e}");
        assert!(e.starts_with("t.cu:"), "{e}");
    }
    // The error names the line.
    assert!(error("\n\nvoid f() {\n asm goto(\"x\" :::: l); }").starts_with("t.cu:4: error:"));
}

#[test]
fn extern_shared_arrays() {
    let expect = |ty: &str, name: &str| format!("static {ty}* const {name} = reinterpret_cast<{ty}*>(::cudasim::dynamic_smem());");
    assert_eq!(body("extern __shared__ float smem[];"), expect("float", "smem"));
    for src in [
        "extern __shared__ __align__(16) unsigned char buf[];",
        "__align__(16) extern __shared__ unsigned char buf[];",
        "extern __align__(16) __shared__ unsigned char buf[];",
        "extern __shared__ unsigned char __align__(16) buf[];",
        "extern __shared__ unsigned char buf[] __attribute__((aligned(16)));",
        "extern __shared__ alignas(16) unsigned char buf[];",
        "extern   __shared__ /* c */ unsigned   char buf [ ] ;",
    ] {
        assert_eq!(body(src), expect("unsigned char", "buf"), "{src}");
    }
    let b = body("template <int R>\n__device__ void f() {\n    extern __shared__ float4 smem4[];\n    float* s = (float*)smem4;\n}\n");
    assert_eq!(b, format!("template <int R>\n__device__ void f() {{\n    {}\n    float* s = (float*)smem4;\n}}\n", expect("float4", "smem4")));
    let b = body("void f() {\n  extern __shared__\n    __align__(8)\n    my::Pair<int, float> p[];\n  g();\n}");
    assert_eq!(b, format!("void f() {{\n  {}\n\n\n  g();\n}}", expect("my::Pair<int, float>", "p")));
    // Static shared memory is the runtime header's business.
    let src = "void f() { __shared__ float s[32]; __shared__ float t; }";
    assert_eq!(body(src), src);
}

#[test]
fn extern_shared_errors() {
    for (src, needle) in [
        ("extern __shared__ float s[256];", "unsized array"),
        ("extern __shared__ float* p;", "unsized array"),
        ("extern __shared__ float a[], b[];", "one declarator"),
        ("extern __shared__ s[];", "unsized array"),
        ("#define SMEM extern __shared__ float smem[]\n", "extern __shared__ declaration inside a #define"),
    ] {
        let e = error(src);
        assert!(e.contains(needle), "{src:?}: {e}");
    }
}

#[test]
fn kernels_found_and_registered_once() {
    let src = "\
extern \"C\" __global__ void a(float* x);\n\
extern \"C\" __global__ void a(float* x) {}\n\
extern \"C\" __global__ void __launch_bounds__(256, 2) b() {}\n\
extern \"C\" __launch_bounds__(THREADS * 2) __global__ void c() {}\n\
extern \"C\"\n__global__\nvoid\n__launch_bounds__( 128 )\nd\n(int n)\n{\n}\n\
extern \"C\" {\n\
__global__ void e();\n\
__global__ void __launch_bounds__(64) f(int) { }\n\
__device__ void not_a_kernel() {}\n\
extern \"C++\" __global__ void g() {}\n\
extern \"C++\" { __global__ void h() {} }\n\
}\n\
extern \"C\" __global__ void a(float*);\n\
extern \"C\" __global__ void late();\n\
extern \"C\" __global__ void __launch_bounds__(32) late() {}\n";
    assert_eq!(
        names(src),
        pairs(&[("a", "1024"), ("b", "(256)"), ("c", "(THREADS * 2)"), ("d", "(128)"), ("e", "1024"), ("f", "(64)"), ("late", "(32)")])
    );
    let t = translate(src, "k.cu").unwrap();
    assert!(t.cpp.ends_with(
        "CUDASIM_KERNELS_BEGIN\nCUDASIM_KERNEL(a, 1024)\nCUDASIM_KERNEL(b, (256))\nCUDASIM_KERNEL(c, (THREADS * 2))\n\
         CUDASIM_KERNEL(d, (128))\nCUDASIM_KERNEL(e, 1024)\nCUDASIM_KERNEL(f, (64))\nCUDASIM_KERNEL(late, (32))\nCUDASIM_KERNELS_END\n"
    ));
}

#[test]
fn kernels_that_are_not_registered() {
    let src = "\
__global__ void mangled(float* x) {}\n\
template <typename T> __global__ void templ(T* x) {}\n\
template <> __global__ void templ<float>(float* x) {}\n\
static __global__ void internal() {}\n\
namespace { extern \"C\" __global__ void anon() {} }\n\
// extern \"C\" __global__ void in_comment() {}\n\
/* extern \"C\" __global__ void in_block() {} */\n\
const char* s = \"extern \\\"C\\\" __global__ void in_string() {}\";\n\
struct S { static void f() { extern \"C\" int printf(const char*, ...); } };\n";
    assert_eq!(names(src), pairs(&[("anon", "1024")]));
    for (src, needle) in [
        ("namespace ns { extern \"C\" __global__ void k() {} }", "inside namespace `ns`"),
        ("namespace a::b { extern \"C\" { __global__ void k(); } }", "inside namespace `a::b`"),
        ("#define KERNEL(n) extern \"C\" __global__ void n()\n", "a __global__ function inside a #define"),
        ("extern \"C\" __global__ void __launch_bounds__() k() {}", "without a thread count"),
    ] {
        let e = error(src);
        assert!(e.contains(needle), "{src:?}: {e}");
    }
}

#[test]
fn headers_get_the_rewrites_without_a_table() {
    let h = translate_header("extern \"C\" __global__ void k() {}\n__device__ void f() { asm(\"trap;\"); }\n", "sub/h.cuh").unwrap();
    assert_eq!(h, "#line 1 \"sub/h.cuh\"\nextern \"C\" __global__ void k() {}\n__device__ void f() { ::cudasim::inline_ptx(\"trap;\", {}); }\n");
    assert!(translate_header("/* open", "h.h").unwrap_err().starts_with("h.h:1: error: unterminated"));
}

// ---- the engine's own kernels ---------------------------------------------------------------

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whole-word occurrences of `word` in `text`.
fn words(text: &str, word: &str) -> usize {
    let bytes = text.as_bytes();
    text.match_indices(word)
        .filter(|(at, _)| {
            let before = *at == 0 || !is_ident_byte(bytes[at - 1]);
            let after = !matches!(bytes.get(at + word.len()), Some(&b) if is_ident_byte(b));
            before && after
        })
        .count()
}

/// The names after each `extern "C" __global__` of the raw text, found without the
/// translator's machinery.
fn declared_kernels(src: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (at, m) in src.match_indices("extern \"C\" __global__") {
        let mut rest = src[at + m.len()..].trim_start();
        rest = rest.strip_prefix("void").expect("kernels return void").trim_start();
        if let Some(r) = rest.strip_prefix("__launch_bounds__") {
            // past the balanced parentheses: the bounds may call constexpr functions
            let mut depth = 0;
            let end = r
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    c == ')' && depth == 0
                })
                .expect("balanced __launch_bounds__")
                .0;
            rest = r[end + 1..].trim_start();
        }
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[test]
fn the_engines_kernels() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cuda");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "cu")).collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let mut asm_files = 0;
    for path in files {
        let file = path.file_name().unwrap().to_str().unwrap();
        let src = std::fs::read_to_string(&path).unwrap();
        let t = translate(&src, file).unwrap_or_else(|e| panic!("{e}"));

        let expected = declared_kernels(&src);
        assert_eq!(expected.len(), src.matches("extern \"C\" __global__").count(), "{file}: a kernel declared twice?");
        assert!(!expected.is_empty(), "{file}");
        let found: Vec<&str> = t.kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(found, expected, "{file}");
        let table: Vec<&str> = t
            .cpp
            .lines()
            .filter_map(|l| l.strip_prefix("CUDASIM_KERNEL("))
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(table, expected, "{file}");

        // Line for line the same, except inside the rewritten statements.
        let out: Vec<&str> = t.cpp.lines().collect();
        let orig: Vec<&str> = src.lines().collect();
        assert_eq!(out[0], "#include <cudasim/runtime.h>");
        assert_eq!(out[1], format!("#line 1 \"{file}\""));
        assert_eq!(out[2 + orig.len()], format!("#line 1 \"{file} (cudasim kernel table)\""), "{file}: line count changed");
        assert_eq!(t.cpp.matches('\n').count(), 2 + src.matches('\n').count() + 3 + expected.len());
        for (n, line) in orig.iter().enumerate() {
            if out[2 + n] != *line {
                let start = n.saturating_sub(6);
                assert!(
                    orig[start..=n].iter().any(|l| words(l, "asm") > 0 || l.contains("extern __shared__")),
                    "{file}:{}: changed outside a rewrite:\n{line}\n{}",
                    n + 1,
                    out[2 + n]
                );
            }
        }

        let code: String = t.cpp.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        for w in ["asm", "__asm", "__asm__"] {
            assert_eq!(words(&code, w), 0, "{file}: `{w}` left");
        }
        assert!(!code.contains("extern __shared__"), "{file}");
        if words(&src, "asm") > 0 {
            asm_files += 1;
            assert!(t.cpp.contains("::cudasim::inline_ptx("), "{file}");
        }
    }
    // The shared headers (common.cuh holds the tensor-core PTX): translated the same way.
    let mut headers: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "cuh")).collect();
    headers.sort();
    for path in headers {
        let name = path.file_name().unwrap().to_str().unwrap();
        let src = std::fs::read_to_string(&path).unwrap();
        let text = translate_header(&src, name).unwrap_or_else(|e| panic!("{e}"));
        let code: String = text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        for w in ["asm", "__asm", "__asm__"] {
            assert_eq!(words(&code, w), 0, "{name}: `{w}` left");
        }
        if words(&src, "asm") > 0 {
            asm_files += 1;
            assert!(text.contains("::cudasim::inline_ptx("), "{name}");
        }
    }
    assert!(asm_files >= 1, "common.cuh has inline PTX");
}
