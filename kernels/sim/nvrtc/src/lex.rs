//! Tokens of a CUDA C++ source, only as fine as the translator needs: identifiers, numbers,
//! string and character literals, single-byte punctuators and whole preprocessor lines.
//! Comments and whitespace are dropped; every token keeps its byte span, so the translator
//! can copy anything it does not rewrite straight from the source.
//!
//! Punctuators are single bytes on purpose (`::` is two `:`): the colons that separate the
//! sections of `asm("..." ::"r"(x))` are then one token each, and the source text between
//! two tokens tells whether they were adjacent (so `>>` is never re-spelt `> >`).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ident,
    Number,
    /// Any string literal, with its encoding prefix and raw strings included.
    Str,
    Char,
    Punct,
    /// A whole preprocessor line, `#` to the end of the (spliced) line; its own tokens are
    /// in `Token::sub`.
    Directive,
}

#[derive(Clone, Debug)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    pub sub: Vec<Token>,
}

impl Token {
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start..self.end]
    }
}

/// 1-based line of a byte offset, for error messages.
pub fn line_of(src: &str, offset: usize) -> usize {
    1 + src.as_bytes()[..offset.min(src.len())].iter().filter(|&&b| b == b'\n').count()
}

/// The tokens of `src`, or `(offset, message)` for what cannot be tokenized at all (an
/// unterminated comment or raw string). An unterminated ordinary literal ends at its line's
/// end instead: the C++ compiler reports it better, and `#error don't` must lex.
pub fn lex(src: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut lx = Lexer { s: src.as_bytes(), pos: 0, line_start: true };
    let mut out = Vec::new();
    loop {
        lx.skip_space(false)?;
        if lx.pos >= lx.s.len() {
            return Ok(out);
        }
        if lx.line_start && lx.s[lx.pos] == b'#' {
            let start = lx.pos;
            lx.pos += 1;
            let mut sub = Vec::new();
            loop {
                if !lx.skip_space(true)? {
                    break;
                }
                sub.push(lx.token()?);
            }
            out.push(Token { kind: Kind::Directive, start, end: lx.pos, sub });
            continue;
        }
        lx.line_start = false;
        out.push(lx.token()?);
    }
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    line_start: bool,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

impl Lexer<'_> {
    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    /// Length of a line splice (backslash, optional CR, newline) at `i`, else 0.
    fn splice_at(&self, i: usize) -> usize {
        match (self.at(i), self.at(i + 1), self.at(i + 2)) {
            (b'\\', b'\n', _) => 2,
            (b'\\', b'\r', b'\n') => 3,
            _ => 0,
        }
    }

    /// Skips whitespace, comments and splices. In a directive, stops at the newline that
    /// ends it and returns false (also at the end of input); otherwise returns true.
    fn skip_space(&mut self, directive: bool) -> Result<bool, (usize, String)> {
        loop {
            let c = self.at(self.pos);
            if self.pos >= self.s.len() {
                return Ok(!directive);
            }
            match c {
                b' ' | b'\t' | b'\r' | 0x0b | 0x0c => self.pos += 1,
                b'\n' => {
                    if directive {
                        return Ok(false);
                    }
                    self.line_start = true;
                    self.pos += 1;
                }
                b'\\' if self.splice_at(self.pos) > 0 => self.pos += self.splice_at(self.pos),
                b'/' if self.at(self.pos + 1) == b'/' => {
                    // A line comment runs on over spliced newlines.
                    while self.pos < self.s.len() && self.s[self.pos] != b'\n' {
                        let n = self.splice_at(self.pos);
                        self.pos += if n > 0 { n } else { 1 };
                    }
                }
                b'/' if self.at(self.pos + 1) == b'*' => {
                    let start = self.pos;
                    self.pos += 2;
                    loop {
                        if self.pos + 1 >= self.s.len() {
                            return Err((start, "unterminated /* comment".into()));
                        }
                        if self.s[self.pos] == b'*' && self.s[self.pos + 1] == b'/' {
                            self.pos += 2;
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => return Ok(true),
            }
        }
    }

    fn token(&mut self) -> Result<Token, (usize, String)> {
        let start = self.pos;
        let c = self.s[start];
        let kind = if is_ident_start(c) {
            while is_ident_char(self.at(self.pos)) {
                self.pos += 1;
            }
            let word = &self.s[start..self.pos];
            let quote = self.at(self.pos);
            match (word, quote) {
                (b"R" | b"u8R" | b"uR" | b"UR" | b"LR", b'"') => {
                    self.raw_string(start)?;
                    Kind::Str
                }
                (b"u8" | b"u" | b"U" | b"L", b'"') => {
                    self.quoted(b'"');
                    Kind::Str
                }
                (b"u8" | b"u" | b"U" | b"L", b'\'') => {
                    self.quoted(b'\'');
                    Kind::Char
                }
                _ => Kind::Ident,
            }
        } else if c.is_ascii_digit() || (c == b'.' && self.at(start + 1).is_ascii_digit()) {
            self.pos += 1;
            loop {
                let b = self.at(self.pos);
                if matches!(b, b'+' | b'-') && matches!(self.s[self.pos - 1], b'e' | b'E' | b'p' | b'P') {
                    self.pos += 1;
                } else if b == b'\'' && is_ident_char(self.at(self.pos + 1)) {
                    self.pos += 2; // digit separator: 1'000'000
                } else if is_ident_char(b) || b == b'.' {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            Kind::Number
        } else if c == b'"' || c == b'\'' {
            self.quoted(c);
            if c == b'"' {
                Kind::Str
            } else {
                Kind::Char
            }
        } else {
            // One byte; a non-ASCII byte never gets here (it is an identifier byte), so the
            // span stays on a UTF-8 boundary.
            self.pos += 1;
            Kind::Punct
        };
        Ok(Token { kind, start, end: self.pos, sub: Vec::new() })
    }

    /// From the opening quote at `self.pos` to the closing one (escapes honoured), or to the
    /// end of the line when there is none.
    fn quoted(&mut self, quote: u8) {
        self.pos += 1;
        while self.pos < self.s.len() {
            match self.s[self.pos] {
                b'\\' => self.pos = (self.pos + 2).min(self.s.len()),
                b'\n' => return,
                b if b == quote => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// `R"delim( ... )delim"`, `self.pos` at the opening quote.
    fn raw_string(&mut self, start: usize) -> Result<(), (usize, String)> {
        let open = self.pos + 1;
        let Some(paren) = self.s[open..].iter().take(17).position(|&b| b == b'(').map(|p| open + p) else {
            return Err((start, "malformed raw string literal delimiter".into()));
        };
        let mut close = Vec::with_capacity(paren - open + 2);
        close.push(b')');
        close.extend_from_slice(&self.s[open..paren]);
        close.push(b'"');
        match self.s[paren + 1..].windows(close.len()).position(|w| w == close.as_slice()) {
            Some(p) => {
                self.pos = paren + 1 + p + close.len();
                Ok(())
            }
            None => Err((start, "unterminated raw string literal".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(Kind, &str)> {
        lex(src).unwrap().iter().map(|t| (t.kind, t.text(src))).collect()
    }

    #[test]
    fn literals_comments_and_numbers() {
        use Kind::*;
        let src = "a /* asm */ \"s\\\"x\" // asm(\nu8\"q\" L'c' R\"d(a)\"b)d\" 1'000 0x1p-3f .5e+2 x>>y";
        assert_eq!(
            kinds(src),
            vec![
                (Ident, "a"),
                (Str, "\"s\\\"x\""),
                (Str, "u8\"q\""),
                (Char, "L'c'"),
                (Str, "R\"d(a)\"b)d\""),
                (Number, "1'000"),
                (Number, "0x1p-3f"),
                (Number, ".5e+2"),
                (Ident, "x"),
                (Punct, ">"),
                (Punct, ">"),
                (Ident, "y"),
            ]
        );
    }

    #[test]
    fn directives_end_at_unspliced_newlines() {
        let src = "#define A(x) \\\n  x /* c\n */ + 1\nint a;\n  # pragma once\n#error don't\nb";
        let toks = lex(src).unwrap();
        assert_eq!(toks[0].kind, Kind::Directive);
        assert_eq!(toks[0].sub.iter().map(|t| t.text(src)).collect::<Vec<_>>(), ["define", "A", "(", "x", ")", "x", "+", "1"]);
        assert_eq!(toks[1].text(src), "int");
        assert_eq!(toks[4].kind, Kind::Directive);
        assert_eq!(toks[4].sub[0].text(src), "pragma");
        assert_eq!(toks[5].kind, Kind::Directive);
        assert_eq!(toks[6].text(src), "b");
        // `#` in the middle of a line is a punctuator.
        assert_eq!(lex("a # b").unwrap()[1].kind, Kind::Punct);
    }

    #[test]
    fn unterminated_constructs() {
        assert!(lex("a /* b").unwrap_err().1.contains("comment"));
        assert!(lex("R\"x(abc\"").unwrap_err().1.contains("raw string"));
        // An ordinary literal stops at the end of its line.
        let src = "'a\nb";
        assert_eq!(kinds(src), vec![(Kind::Char, "'a"), (Kind::Ident, "b")]);
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }
}
