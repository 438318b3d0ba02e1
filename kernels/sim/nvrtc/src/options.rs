//! NVRTC's compile options, in the spellings NVRTC accepts, mapped onto the host compiler's.
//! Options that only steer NVIDIA's code generator (fast math, FMA contraction, debug info,
//! register limits) are accepted and change nothing: the simulator always compiles the same
//! way, with exact IEEE arithmetic and no contraction.

/// The architectures `nvrtcGetSupportedArchs` lists and `--gpu-architecture` accepts.
pub const SUPPORTED_ARCHS: [i32; 4] = [80, 86, 89, 90];

/// The architecture a compile without `--gpu-architecture` targets (the oldest supported).
pub const DEFAULT_ARCH: i32 = 80;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Macro {
    /// `X` or `X=Y`, as given.
    Define(String),
    Undefine(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `sm_90` / `compute_90` -> 90; `__CUDA_ARCH__` is ten times it.
    pub arch: i32,
    /// The host compiler's `-std=` value.
    pub std: String,
    /// `--include-path` directories, in order.
    pub include_paths: Vec<String>,
    /// `-D` and `-U`, in order (the compiler applies them in order).
    pub macros: Vec<Macro>,
}

impl Default for Options {
    fn default() -> Self {
        Options { arch: DEFAULT_ARCH, std: "c++17".into(), include_paths: Vec::new(), macros: Vec::new() }
    }
}

/// Accepted and ignored.
const FLAGS: &[&str] = &[
    "-default-device",
    "--device-as-default-execution-space",
    "-lineinfo",
    "--generate-line-info",
    "-G",
    "--device-debug",
    "-use_fast_math",
    "--use_fast_math",
    "-dopt",
    "--dopt",
    "-rdc",
    "-w",
    "--disable-warnings",
    "-restrict",
    "--restrict",
    "-extra-device-vectorization",
    "--extra-device-vectorization",
    "-ewp",
    "--extensible-whole-program",
    "-device-int128",
    "--device-int128",
];

/// Accepted with a value from the list, and ignored.
const VALUED: &[(&[&str], &[&str])] = &[
    (&["--fmad", "-fmad"], &["true", "false"]),
    (&["--ftz", "-ftz"], &["true", "false"]),
    (&["--prec-div", "-prec-div"], &["true", "false"]),
    (&["--prec-sqrt", "-prec-sqrt"], &["true", "false"]),
    (&["--relocatable-device-code", "-rdc"], &["true", "false"]),
    (&["--dopt", "-dopt"], &["on", "off"]),
];

/// Parses NVRTC's options; the error is the log line naming the offending option.
pub fn parse(options: &[String]) -> Result<Options, String> {
    let mut out = Options::default();
    let mut i = 0;
    while i < options.len() {
        let o = options[i].as_str();
        let next = options.get(i + 1).map(String::as_str);
        i += 1;
        if FLAGS.contains(&o) {
            continue;
        }
        let mut value = |names: &[&str], joined: bool| -> Result<Option<String>, String> {
            let (v, used_next) = match take_value(o, next, names, joined) {
                None => return Ok(None),
                Some(found) => found,
            };
            if used_next {
                i += 1;
            }
            v.map(Some).ok_or_else(|| format!("nvrtc (cuda-sim): error: option `{o}` needs a value"))
        };
        if let Some(v) = value(&["--gpu-architecture", "-arch"], false)? {
            out.arch = parse_arch(&v)?;
        } else if let Some(v) = value(&["--include-path", "-I"], true)? {
            out.include_paths.push(v);
        } else if let Some(v) = value(&["--define-macro", "-D"], true)? {
            out.macros.push(Macro::Define(v));
        } else if let Some(v) = value(&["--undefine-macro", "-U"], true)? {
            out.macros.push(Macro::Undefine(v));
        } else if let Some(v) = value(&["--std", "-std"], false)? {
            out.std = match v.as_str() {
                // The runtime header needs C++17; older dialects' programs compile as C++17.
                "c++03" | "c++11" | "c++14" | "c++17" => "c++17".into(),
                "c++20" => "c++20".into(),
                _ => return Err(format!("nvrtc (cuda-sim): error: unsupported value `{v}` for option `{o}` (c++03, c++11, c++14, c++17 or c++20)")),
            };
        } else if let Some(v) = value(&["--maxrregcount", "-maxrregcount"], false)? {
            if v.parse::<u32>().is_err() {
                return Err(format!("nvrtc (cuda-sim): error: option `{o}` needs a number"));
            }
        } else {
            let mut known = false;
            for (names, allowed) in VALUED {
                if let Some(v) = value(names, false)? {
                    if !allowed.contains(&v.as_str()) {
                        return Err(format!("nvrtc (cuda-sim): error: unsupported value `{v}` for option `{o}` ({})", allowed.join(" or ")));
                    }
                    known = true;
                    break;
                }
            }
            if !known {
                return Err(format!("nvrtc (cuda-sim): error: unrecognized option `{o}`"));
            }
        }
    }
    Ok(out)
}

/// The value of option `o` if it is one of `names`: `--name=V`, `-name V` in one string or
/// as two (then `.1` says the next string was used), and with `joined` also `-NV`. `.0` is
/// None when the value is missing.
fn take_value(o: &str, next: Option<&str>, names: &[&str], joined: bool) -> Option<(Option<String>, bool)> {
    for name in names {
        if o == *name {
            return Some((next.map(str::to_string), next.is_some()));
        }
        let Some(rest) = o.strip_prefix(name) else { continue };
        if let Some(v) = rest.strip_prefix('=') {
            return Some((Some(v.to_string()), false));
        }
        if rest.starts_with(' ') {
            let v = rest.trim();
            return Some(((!v.is_empty()).then(|| v.to_string()), false));
        }
        if joined {
            return Some((Some(rest.to_string()), false));
        }
    }
    None
}

fn parse_arch(v: &str) -> Result<i32, String> {
    let digits = v.strip_prefix("sm_").or_else(|| v.strip_prefix("compute_")).map(|d| d.trim_end_matches(['a', 'f']));
    match digits.and_then(|d| d.parse::<i32>().ok()) {
        Some(n) if SUPPORTED_ARCHS.contains(&n) => Ok(n),
        _ => Err(format!(
            "nvrtc (cuda-sim): error: invalid value `{v}` for option --gpu-architecture: the simulator supports {}",
            SUPPORTED_ARCHS.map(|a| format!("sm_{a}")).join(", ")
        )),
    }
}

impl Options {
    /// The host compiler's `-std` and macro arguments (include paths are ordered by the caller).
    pub fn cxx_args(&self) -> Vec<String> {
        // NVRTC's other predefined macros (__CUDACC__, __CUDACC_RTC__, the version) are the
        // runtime header's; only the architecture depends on the options.
        let mut args = vec![format!("-std={}", self.std), format!("-D__CUDA_ARCH__={}", self.arch * 10)];
        for m in &self.macros {
            match m {
                Macro::Define(d) => args.push(format!("-D{d}")),
                Macro::Undefine(u) => args.push(format!("-U{u}")),
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(opts: &[&str]) -> Result<Options, String> {
        parse(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_engines_options() {
        let o = p(&["--gpu-architecture=sm_90", "--include-path=/usr/local/cuda/include", "--std=c++17", "-default-device", "-lineinfo"]).unwrap();
        assert_eq!(o.arch, 90);
        assert_eq!(o.include_paths, ["/usr/local/cuda/include"]);
        assert_eq!(o.std, "c++17");
        assert!(o.cxx_args().contains(&"-D__CUDA_ARCH__=900".to_string()));
        assert_eq!(p(&[]).unwrap(), Options::default());
    }

    #[test]
    fn spellings() {
        for arch in [&["-arch=sm_86"][..], &["-arch", "sm_86"], &["-arch sm_86"], &["--gpu-architecture=compute_86"]] {
            assert_eq!(p(arch).unwrap().arch, 86, "{arch:?}");
        }
        assert_eq!(p(&["-arch=sm_90a"]).unwrap().arch, 90);
        let o = p(&["-I", "/a", "-I/b", "--include-path=/c", "-I /d"]).unwrap();
        assert_eq!(o.include_paths, ["/a", "/b", "/c", "/d"]);
        let o = p(&["-D", "A", "-DB=2", "--define-macro=C=x y", "-UA", "-U", "B", "--undefine-macro=C"]).unwrap();
        use Macro::*;
        assert_eq!(
            o.macros,
            [Define("A".into()), Define("B=2".into()), Define("C=x y".into()), Undefine("A".into()), Undefine("B".into()), Undefine("C".into())]
        );
        let args = o.cxx_args();
        let tail: Vec<&str> = args.iter().rev().take(6).rev().map(String::as_str).collect();
        assert_eq!(tail, ["-DA", "-DB=2", "-DC=x y", "-UA", "-UB", "-UC"]);
        assert_eq!(p(&["--std=c++20"]).unwrap().std, "c++20");
        assert_eq!(p(&["-std=c++14"]).unwrap().std, "c++17");
        let ignored = ["-G", "--device-debug", "-use_fast_math", "-dopt", "--dopt=off", "--fmad=false", "-fmad=true", "-rdc", "-rdc=true", "--relocatable-device-code=false", "--ftz=true", "-maxrregcount=64", "-w"];
        assert_eq!(p(&ignored).unwrap(), Options::default());
    }

    #[test]
    fn rejections_name_the_option() {
        for (opts, needle) in [
            (&["--frobnicate"][..], "unrecognized option `--frobnicate`"),
            (&["-arch=sm_75"], "sm_75"),
            (&["-arch=gfx90a"], "gfx90a"),
            (&["-arch"], "needs a value"),
            (&["-I"], "needs a value"),
            (&["--fmad=maybe"], "maybe"),
            (&["--std=c++98"], "c++98"),
            (&["-maxrregcount=lots"], "number"),
            (&["-Gx"], "-Gx"),
        ] {
            let e = p(opts).unwrap_err();
            assert!(e.contains(needle), "{opts:?}: {e}");
        }
    }
}
