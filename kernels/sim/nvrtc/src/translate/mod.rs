//! The source-to-source step of the simulated NVRTC: a `.cu` file becomes one C++
//! translation unit that the host compiler builds against `<cudasim/runtime.h>`.
//!
//! What it rewrites, on tokens (comments, literals and preprocessor lines are never
//! mistaken for code), and nothing else:
//! - every inline-asm statement (`asm`, `__asm`, `__asm__`, any of `volatile`/`__volatile__`/
//!   `inline`) becomes `::cudasim::inline_ptx("template", {operands})`: outputs first, then
//!   inputs, numbered as GCC numbers them (`%0`, `%1`, ...; `%[name]` operands are renumbered
//!   to that form), each operand `::cudasim::ptx_out(lvalue, "=r")`, `ptx_inout(lvalue, "+f")`
//!   or `ptx_in(expr, "l")`; clobbers are dropped. The runtime emulates the PTX text.
//! - `extern __shared__ T name[];` (any scope, `__align__`/`alignas`/`__attribute__` anywhere)
//!   becomes `static T* const name = reinterpret_cast<T*>(::cudasim::dynamic_smem());`.
//! - a kernel table is appended, one `CUDASIM_KERNEL(name, max_threads)` for every
//!   `extern "C" __global__` function declared or defined at namespace scope (the
//!   declaration's own `extern "C"` or an enclosing `extern "C" { }` block); `max_threads` is
//!   `(first argument of __launch_bounds__)`, else `1024`.
//!
//! Every rewrite is padded with the newlines it replaced and the unit starts with
//! `#line 1 "<file>"`, so the compiler's diagnostics name the `.cu` file and its own lines.
//!
//! What it does not do:
//! - register `__global__` functions without C linkage (C++-mangled or template kernels):
//!   real NVRTC reaches those through name expressions and mangled names, which would need
//!   a C++ front end; `nvrtcGetLoweredName` refuses them.
//! - look through macros: inline asm, `__global__` or `extern __shared__` inside a `#define`
//!   is refused with an error rather than compiled for the host (the host assembler would
//!   choke on PTX, or the kernel would silently be missing). Headers given to
//!   `nvrtcCreateProgram` get the asm and shared-memory rewrites (`translate_header`), but
//!   kernels defined in headers are not registered.
//! - evaluate the preprocessor: a kernel inside `#if 0` is still registered (the compiler
//!   then reports it undeclared in the kernel table), and a `__launch_bounds__` argument is
//!   evaluated after the whole source, where a macro `#undef`'d in between is gone.
//! - accept `asm goto`, asm labels (`int f() asm("g");`), file-scope asm, or `extern "C"`
//!   kernels inside a named namespace (the table at global scope could not name them).

use crate::lex::{self, Kind, Token};

/// A kernel the table registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    /// The table's second argument: `1024`, or `(expr)` from `__launch_bounds__(expr, ...)`.
    pub max_threads: String,
}

#[derive(Clone, Debug)]
pub struct Translation {
    /// The C++ translation unit.
    pub cpp: String,
    /// Every registered kernel, once each, in the order first seen.
    pub kernels: Vec<Kernel>,
}

/// The whole translation unit for `source`, known to the compiler as `file_name`.
pub fn translate(source: &str, file_name: &str) -> Result<Translation, String> {
    let (body, kernels) = Translator::new(source, file_name)?.run()?;
    let mut cpp = String::with_capacity(body.len() + 256);
    cpp.push_str("#include <cudasim/runtime.h>\n");
    cpp.push_str(&format!("#line 1 \"{}\"\n", escape(file_name)));
    cpp.push_str(&body);
    if !body.is_empty() && !body.ends_with('\n') {
        cpp.push('\n');
    }
    // A name of its own, so an error in the table (a kernel inside `#if 0`) does not point
    // at a line past the end of the .cu file.
    cpp.push_str(&format!("#line 1 \"{} (cudasim kernel table)\"\n", escape(file_name)));
    cpp.push_str("CUDASIM_KERNELS_BEGIN\n");
    for k in &kernels {
        cpp.push_str(&format!("CUDASIM_KERNEL({}, {})\n", k.name, k.max_threads));
    }
    cpp.push_str("CUDASIM_KERNELS_END\n");
    Ok(Translation { cpp, kernels })
}

/// A header given to `nvrtcCreateProgram`: the asm and `extern __shared__` rewrites only
/// (no runtime include, no kernel table: it is compiled as part of the including source).
pub fn translate_header(source: &str, include_name: &str) -> Result<String, String> {
    let (body, _) = Translator::new(source, include_name)?.run()?;
    Ok(format!("#line 1 \"{}\"\n{body}", escape(include_name)))
}

/// `s` as the inside of a C string literal.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What an open brace opened.
#[derive(Debug, PartialEq)]
enum Scope {
    Namespace(Option<String>),
    /// `extern "C" {` (true) or `extern "C++" {` (false).
    Linkage(bool),
    /// A function, class, initializer, lambda...
    Other,
}

struct Translator<'a> {
    src: &'a str,
    file: &'a str,
    toks: Vec<Token>,
}

/// Attribute-like groups `word(...)` that may sit anywhere in a declaration.
const ATTRIBUTES: &[&str] = &["__align__", "alignas", "__attribute__", "__declspec", "__launch_bounds__", "__maxnreg__", "__cluster_dims__"];

impl<'a> Translator<'a> {
    fn new(src: &'a str, file: &'a str) -> Result<Self, String> {
        let toks = lex::lex(src).map_err(|(at, msg)| format!("{file}:{}: error: {msg}", lex::line_of(src, at)))?;
        Ok(Translator { src, file, toks })
    }

    fn err<T>(&self, tok: usize, msg: impl std::fmt::Display) -> Result<T, String> {
        let at = self.toks.get(tok).map_or(self.src.len(), |t| t.start);
        Err(format!("{}:{}: error: {msg}", self.file, lex::line_of(self.src, at)))
    }

    fn text(&self, i: usize) -> &'a str {
        self.toks.get(i).map_or("", |t| &self.src[t.start..t.end])
    }

    fn is_punct(&self, i: usize, c: u8) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == Kind::Punct && self.src.as_bytes()[t.start] == c)
    }

    fn is_ident(&self, i: usize, word: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == Kind::Ident) && self.text(i) == word
    }

    fn kind(&self, i: usize) -> Option<Kind> {
        self.toks.get(i).map(|t| t.kind)
    }

    /// The index of the bracket closing the one at `open`.
    fn matching(&self, open: usize) -> Result<usize, String> {
        let mut stack: Vec<u8> = Vec::new();
        for i in open..self.toks.len() {
            let t = &self.toks[i];
            match t.kind {
                Kind::Punct => {}
                Kind::Directive => return self.err(i, "preprocessor directive inside a bracketed construct the simulator rewrites"),
                _ => continue,
            }
            match self.src.as_bytes()[t.start] {
                b'(' => stack.push(b')'),
                b'[' => stack.push(b']'),
                b'{' => stack.push(b'}'),
                c @ (b')' | b']' | b'}') => {
                    if stack.pop() != Some(c) {
                        return self.err(i, format!("unbalanced '{}'", c as char));
                    }
                    if stack.is_empty() {
                        return Ok(i);
                    }
                }
                _ => {}
            }
        }
        self.err(open, "unclosed bracket")
    }

    /// `[from, to)` split at the separator punctuator `sep` outside brackets.
    fn split_top(&self, from: usize, to: usize, sep: u8) -> Result<Vec<(usize, usize)>, String> {
        let mut parts = Vec::new();
        let (mut start, mut i) = (from, from);
        while i < to {
            if self.is_punct(i, b'(') || self.is_punct(i, b'[') || self.is_punct(i, b'{') {
                i = self.matching(i)?;
            } else if self.is_punct(i, sep) {
                parts.push((start, i));
                start = i + 1;
            }
            i += 1;
        }
        parts.push((start, to));
        Ok(parts)
    }

    /// The source text of these tokens on one line: each gap (whitespace, comments,
    /// newlines) becomes one space, adjacent tokens stay adjacent.
    fn compact(&self, idx: impl IntoIterator<Item = usize>) -> String {
        let mut out = String::new();
        let mut prev_end: Option<usize> = None;
        for i in idx {
            let t = &self.toks[i];
            if prev_end.is_some_and(|e| e != t.start) {
                out.push(' ');
            }
            out.push_str(&self.src[t.start..t.end]);
            prev_end = Some(t.end);
        }
        out
    }

    /// `rep` followed by as many newlines as the source span it replaces had more.
    fn padded(&self, mut rep: String, first: usize, last: usize) -> String {
        let original = &self.src[self.toks[first].start..self.toks[last].end];
        let missing = original.matches('\n').count().saturating_sub(rep.matches('\n').count());
        rep.push_str(&"\n".repeat(missing));
        rep
    }

    fn run(&self) -> Result<(String, Vec<Kernel>), String> {
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        let mut kernels: Vec<Kernel> = Vec::new();
        let mut scopes: Vec<Scope> = Vec::new();
        let mut decl = 0;
        let mut i = 0;
        while i < self.toks.len() {
            match self.toks[i].kind {
                Kind::Directive => {
                    self.check_directive(i)?;
                    decl = i + 1;
                }
                Kind::Punct if self.is_punct(i, b';') => decl = i + 1,
                Kind::Punct if self.is_punct(i, b'{') => {
                    scopes.push(self.classify_brace(decl, i));
                    decl = i + 1;
                }
                Kind::Punct if self.is_punct(i, b'}') => {
                    scopes.pop();
                    decl = i + 1;
                }
                Kind::Ident => match self.text(i) {
                    "asm" | "__asm" | "__asm__" => {
                        let (close, rep) = self.asm_statement(i, &scopes)?;
                        edits.push((self.toks[i].start, self.toks[close].end, rep));
                        i = close + 1;
                        continue;
                    }
                    "__shared__" => {
                        if let Some((end, rep)) = self.extern_shared(decl)? {
                            edits.push((self.toks[decl].start, self.toks[end].end, rep));
                            i = end + 1;
                            decl = i;
                            continue;
                        }
                    }
                    "__global__" => {
                        if let Some(k) = self.kernel(decl, i, &scopes)? {
                            match kernels.iter_mut().find(|e| e.name == k.name) {
                                // A declaration without bounds, then the definition with them.
                                Some(e) if e.max_threads == "1024" => e.max_threads = k.max_threads,
                                Some(_) => {}
                                None => kernels.push(k),
                            }
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
            i += 1;
        }
        let mut body = String::with_capacity(self.src.len() + 64 * edits.len());
        let mut at = 0;
        for (start, end, rep) in edits {
            body.push_str(&self.src[at..start]);
            body.push_str(&rep);
            at = end;
        }
        body.push_str(&self.src[at..]);
        Ok((body, kernels))
    }

    /// Refuses macros whose expansion the translator would have had to rewrite.
    fn check_directive(&self, i: usize) -> Result<(), String> {
        let sub = &self.toks[i].sub;
        if sub.first().map(|t| t.text(self.src)) != Some("define") {
            return Ok(());
        }
        let macro_name = sub.get(1).map_or("", |t| t.text(self.src));
        let has = |w: &str| sub.iter().skip(2).any(|t| t.kind == Kind::Ident && t.text(self.src) == w);
        let what = if has("asm") || has("__asm") || has("__asm__") {
            "inline asm"
        } else if has("__global__") {
            "a __global__ function"
        } else if has("extern") && has("__shared__") {
            "an extern __shared__ declaration"
        } else {
            return Ok(());
        };
        self.err(
            i,
            format!(
                "the CUDA simulator does not support {what} inside a #define (macro `{macro_name}`): it rewrites \
                 these in the source text before preprocessing, so write them out in the source (for asm, in a \
                 __device__ function the macro calls)"
            ),
        )
    }

    fn classify_brace(&self, decl: usize, brace: usize) -> Scope {
        if brace == decl + 2 && self.is_ident(decl, "extern") && self.kind(decl + 1) == Some(Kind::Str) {
            return Scope::Linkage(self.text(decl + 1) == "\"C\"");
        }
        let start = if self.is_ident(decl, "inline") { decl + 1 } else { decl };
        if self.is_ident(start, "namespace") {
            let name: String = (start + 1..brace).map(|j| self.text(j)).collect();
            return Scope::Namespace(if name.is_empty() { None } else { Some(name) });
        }
        Scope::Other
    }

    /// If the declaration starting at token `decl` is `extern __shared__ T name[]`: the
    /// index of its `;` and the replacement.
    fn extern_shared(&self, decl: usize) -> Result<Option<(usize, String)>, String> {
        let mut end = decl;
        loop {
            if end >= self.toks.len() || self.is_punct(end, b'{') || self.is_punct(end, b'}') {
                return Ok(None); // not a simple declaration; nothing to rewrite
            }
            if self.is_punct(end, b'(') || self.is_punct(end, b'[') {
                end = self.matching(end)?;
            } else if self.is_punct(end, b';') {
                break;
            }
            end += 1;
        }
        if !(decl..end).any(|j| self.is_ident(j, "extern")) {
            return Ok(None);
        }
        let mut kept = Vec::new();
        let mut j = decl;
        while j < end {
            match self.text(j) {
                "extern" | "__shared__" if self.kind(j) == Some(Kind::Ident) => {}
                w if ATTRIBUTES.contains(&w) && self.kind(j) == Some(Kind::Ident) && self.is_punct(j + 1, b'(') => {
                    j = self.matching(j + 1)?;
                }
                _ if self.kind(j) == Some(Kind::Str) => {
                    return self.err(j, "a linkage specification on an extern __shared__ declaration is not supported");
                }
                _ => kept.push(j),
            }
            j += 1;
        }
        let n = kept.len();
        let unsized_array = n >= 4
            && self.kind(kept[n - 3]) == Some(Kind::Ident)
            && self.is_punct(kept[n - 2], b'[')
            && self.is_punct(kept[n - 1], b']')
            && kept[n - 1] == kept[n - 2] + 1;
        if !unsized_array {
            return self.err(
                decl,
                "the CUDA simulator supports extern __shared__ only as one unsized array, `extern __shared__ T name[];`",
            );
        }
        // Commas inside a template argument list (`Pair<int, float>`) are not declarators.
        let mut angle = 0i32;
        let mut several = false;
        for &k in &kept[..n - 3] {
            if self.is_punct(k, b'<') {
                angle += 1;
            } else if self.is_punct(k, b'>') {
                angle -= 1;
            } else if (self.is_punct(k, b',') && angle == 0) || self.is_punct(k, b'=') {
                several = true;
            }
        }
        if several {
            return self.err(decl, "extern __shared__: one declarator per declaration, without initializer");
        }
        let ty = self.compact(kept[..n - 3].iter().copied());
        let name = self.text(kept[n - 3]);
        let rep = format!("static {ty}* const {name} = reinterpret_cast<{ty}*>(::cudasim::dynamic_smem());");
        Ok(Some((end, self.padded(rep, decl, end))))
    }

    /// If the `__global__` at token `at` (in the declaration starting at `decl`) declares an
    /// extern "C" kernel at namespace scope: that kernel.
    fn kernel(&self, decl: usize, at: usize, scopes: &[Scope]) -> Result<Option<Kernel>, String> {
        let mut linkage_c = scopes.iter().rev().find_map(|s| match s {
            Scope::Linkage(c) => Some(*c),
            _ => None,
        });
        for j in decl..at {
            if self.is_ident(j, "extern") && self.kind(j + 1) == Some(Kind::Str) {
                linkage_c = Some(self.text(j + 1) == "\"C\"");
            }
            if self.is_ident(j, "template") || self.is_ident(j, "static") {
                return Ok(None);
            }
        }
        if linkage_c != Some(true) || scopes.contains(&Scope::Other) {
            return Ok(None);
        }
        let mut j = at + 1;
        let name_at = loop {
            match self.kind(j) {
                None => return Ok(None),
                Some(Kind::Ident) if ATTRIBUTES.contains(&self.text(j)) && self.is_punct(j + 1, b'(') => {
                    j = self.matching(j + 1)? + 1;
                    continue;
                }
                Some(Kind::Punct) if self.is_punct(j, b'(') => {
                    // `void (*table)(...)` or `k<int>(` are not kernel names.
                    if j == 0 || self.kind(j - 1) != Some(Kind::Ident) || self.is_punct(j.wrapping_sub(2), b':') {
                        return Ok(None);
                    }
                    break j - 1;
                }
                Some(Kind::Punct) if [b';', b'{', b'}', b'=', b'<', b':'].iter().any(|&c| self.is_punct(j, c)) => return Ok(None),
                _ => j += 1,
            }
        };
        let name = self.text(name_at).to_string();
        if let Some(Scope::Namespace(Some(ns))) = scopes.iter().find(|s| matches!(s, Scope::Namespace(Some(_)))) {
            return self.err(
                name_at,
                format!("extern \"C\" kernel `{name}` inside namespace `{ns}`: the CUDA simulator's kernel table is at global scope and cannot name it; declare it outside the namespace"),
            );
        }
        let mut max_threads = "1024".to_string();
        for k in decl..name_at {
            if self.is_ident(k, "__launch_bounds__") && self.is_punct(k + 1, b'(') {
                let close = self.matching(k + 1)?;
                let (a, b) = self.split_top(k + 2, close, b',')?[0];
                if a == b {
                    return self.err(k, "__launch_bounds__ without a thread count");
                }
                max_threads = format!("({})", self.compact(a..b));
            }
        }
        Ok(Some(Kernel { name, max_threads }))
    }
}

mod asm;
#[cfg(test)]
mod tests;
