//! Inline-asm statements, rewritten into calls of the runtime's PTX emulation.

use super::{Kind, Scope, Translator};

const ASM_QUALIFIERS: &[&str] = &["volatile", "__volatile__", "__volatile", "inline", "__inline", "__inline__"];

/// A parsed asm operand.
struct Operand {
    name: Option<String>,
    constraint: String,
    expr: String,
}

impl Translator<'_> {
    /// The asm statement whose keyword is token `at`: the index of its closing parenthesis
    /// and the replacement for the tokens up to it.
    pub(super) fn asm_statement(&self, at: usize, scopes: &[Scope]) -> Result<(usize, String), String> {
        let in_function = scopes.contains(&Scope::Other);
        let prev_is_declarator = at > 0
            && ((self.kind(at - 1) == Some(Kind::Ident) && !matches!(self.text(at - 1), "else" | "do"))
                || self.is_punct(at - 1, b']'));
        if !in_function {
            return self.err(at, "file-scope asm and asm labels (`int f() asm(\"g\");`) are not supported by the CUDA simulator");
        }
        if prev_is_declarator {
            return self.err(at, "asm labels on declarations (`int x asm(\"r\");`) are not supported by the CUDA simulator");
        }
        let mut j = at + 1;
        while self.kind(j) == Some(Kind::Ident) {
            if self.text(j) == "goto" {
                return self.err(j, "asm goto is not supported by the CUDA simulator");
            }
            if !ASM_QUALIFIERS.contains(&self.text(j)) {
                return self.err(j, format!("unexpected `{}` after asm", self.text(j)));
            }
            j += 1;
        }
        if !self.is_punct(j, b'(') {
            return self.err(j, "expected '(' after asm");
        }
        let close = self.matching(j)?;
        if !self.is_punct(close + 1, b';') {
            return self.err(close + 1, "expected ';' after the asm statement");
        }
        let sections = self.split_top(j + 1, close, b':')?;
        let (t0, t1) = sections[0];
        if t0 == t1 {
            return self.err(j, "asm statement without a template string");
        }
        if sections.len() > 4 {
            return self.err(sections[4].0, "asm goto labels are not supported by the CUDA simulator");
        }
        let outputs = match sections.get(1) {
            Some(&(a, b)) => self.operands(a, b, true)?,
            None => Vec::new(),
        };
        let inputs = match sections.get(2) {
            Some(&(a, b)) => self.operands(a, b, false)?,
            None => Vec::new(),
        };
        let all: Vec<&Operand> = outputs.iter().chain(&inputs).collect();
        let index_of = |name: &str| all.iter().position(|o| o.name.as_deref() == Some(name));

        let mut template = String::new();
        let mut prev_end: Option<usize> = None;
        for k in t0..t1 {
            let t = &self.toks[k];
            if prev_end.is_some_and(|e| e != t.start) {
                template.push(' ');
            }
            prev_end = Some(t.end);
            let text = t.text(self.src);
            if t.kind == Kind::Str && text.contains("%[") {
                template.push_str(&self.renumber(k, text, &index_of)?);
            } else {
                template.push_str(text);
            }
        }
        let mut ops = Vec::with_capacity(all.len());
        for (n, op) in all.iter().enumerate() {
            let mut constraint = op.constraint.clone();
            // A matching constraint by name ("[out]") becomes the number GCC means by it.
            if let Some(name) = constraint.strip_prefix("\"[").and_then(|c| c.strip_suffix("]\"")) {
                match index_of(name) {
                    Some(i) => constraint = format!("\"{i}\""),
                    None => return self.err(at, format!("asm operand constraint names unknown operand `{name}`")),
                }
            }
            let func = if n >= outputs.len() {
                "ptx_in"
            } else if constraint_body(&constraint).starts_with('+') {
                "ptx_inout"
            } else {
                "ptx_out"
            };
            ops.push(format!("::cudasim::{func}({}, {constraint})", op.expr));
        }
        let rep = format!("::cudasim::inline_ptx({template}, {{{}}})", ops.join(", "));
        Ok((close, self.padded(rep, at, close)))
    }

    /// `%[name]` in the template string token `k` replaced by `%N`.
    fn renumber(&self, k: usize, text: &str, index_of: &dyn Fn(&str) -> Option<usize>) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(p) = rest.find('%') {
            out.push_str(&rest[..p]);
            let after = &rest[p + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                out.push_str("%%");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('[') {
                let Some(e) = tail.find(']') else { return self.err(k, "unterminated %[ in asm template") };
                match index_of(&tail[..e]) {
                    Some(n) => out.push_str(&format!("%{n}")),
                    None => return self.err(k, format!("asm template names unknown operand `{}`", &tail[..e])),
                }
                rest = &tail[e + 1..];
            } else {
                out.push('%');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The operands of one asm section `[from, to)`.
    fn operands(&self, from: usize, to: usize, outputs: bool) -> Result<Vec<Operand>, String> {
        if from == to {
            return Ok(Vec::new());
        }
        let mut ops = Vec::new();
        for (a, b) in self.split_top(from, to, b',')? {
            let mut p = a;
            let mut name = None;
            if self.is_punct(p, b'[') {
                if self.kind(p + 1) != Some(Kind::Ident) || !self.is_punct(p + 2, b']') {
                    return self.err(p, "expected `[name]` in asm operand");
                }
                name = Some(self.text(p + 1).to_string());
                p += 3;
            }
            let c0 = p;
            while p < b && self.kind(p) == Some(Kind::Str) {
                p += 1;
            }
            if p == c0 {
                return self.err(a.min(self.toks.len() - 1), "expected a constraint string in asm operand");
            }
            if !self.is_punct(p, b'(') || self.matching(p)? + 1 != b {
                return self.err(p, "expected `\"constraint\"(expression)` in asm operand");
            }
            if p + 1 == b - 1 {
                return self.err(p, "empty asm operand expression");
            }
            let constraint = self.compact(c0..p);
            let body = constraint_body(&constraint);
            if outputs && !body.starts_with('=') && !body.starts_with('+') {
                return self.err(c0, format!("asm output constraint {constraint} must start with '=' or '+'"));
            }
            if !outputs && (body.starts_with('=') || body.starts_with('+')) {
                return self.err(c0, format!("asm input constraint {constraint} cannot start with '=' or '+'"));
            }
            ops.push(Operand { name, constraint, expr: self.compact(p + 1..b - 1) });
        }
        Ok(ops)
    }
}

/// The characters of a constraint literal after its quote (`"=r"` -> `=r"`), enough to
/// look at its first one.
fn constraint_body(c: &str) -> &str {
    let after = c.find('"').map_or("", |p| &c[p + 1..]);
    if c[..c.find('"').unwrap_or(0)].contains('R') {
        after.find('(').map_or(after, |p| &after[p + 1..])
    } else {
        after
    }
}
