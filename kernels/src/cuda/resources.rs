//! Static resources of every kernel, from ptxas's verbose report (`--ptxas-options=-v`,
//! [`nvrtc::compile_with_resources`](super::nvrtc::compile_with_resources)): registers, static
//! shared memory, stack frame, spill stores and loads, barriers; with the launch table
//! ([`LAUNCHES`](super::launches::LAUNCHES)), blocks per SM ([`occupancy`](super::occupancy)).
//! [`check`] finds what CI refuses: a spill, a kernel that cannot launch at its configuration,
//! a broken budget, and a launch table out of step with the kernels. `engine kernels
//! resources` prints [`Report::table`].
//!
//! The report ptxas writes for each kernel (NVRTC 13.0):
//!
//! ```text
//! ptxas info    : 8 bytes gmem                                  (once per file; sm_80 adds ", 16 bytes cmem[4]")
//! ptxas info    : Compiling entry function 'embedding_bwd_scan' for 'sm_90'
//! ptxas info    : Function properties for embedding_bwd_scan
//! ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ptxas info    : Used 32 registers, used 1 barriers, 128 bytes smem
//! ptxas info    : Compile time = 13.387 ms
//! ```
//!
//! The `Used` line may add `N bytes cmem[K]` and `N bytes cumulative stack size`; a device
//! function ptxas compiles on its own (`__noinline__`) gets a `Function properties` block of
//! its own, outside any entry. The front end's warnings come before the first `ptxas` line.
//! From there on every line must be one of these: anything else is an error naming it.

use std::time::{Duration, Instant};

use super::launches::Launch;
use super::occupancy::{arch_limits, occupancy, Occupancy, ARCHS};
use crate::{Error, Result};

/// What ptxas reports for one kernel (entry function) compiled for one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// The kernel file, `attention.cu`.
    pub file: String,
    /// The entry function's name as ptxas prints it (the `extern "C"` name).
    pub kernel: String,
    /// `sm_80`, `sm_90`.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static (`__shared__`) shared memory per block, bytes; dynamic shared memory is the
    /// launch's (see `Launch`).
    pub shared_static_bytes: u32,
    /// The kernel's own stack frame per thread, bytes.
    pub stack_frame_bytes: u32,
    /// Bytes of registers spilled to local memory (stores).
    pub spill_store_bytes: u32,
    /// Bytes of spilled registers read back (loads).
    pub spill_load_bytes: u32,
    /// Named barriers used (`__syncthreads` is barrier 0).
    pub barriers: u32,
    /// Constant memory of the `Used` line (`cmem[K]`, all banks); 0 when ptxas reports none,
    /// as NVRTC 13.0 mostly does.
    pub const_bytes: u32,
    /// Stack including the device functions it calls (`cumulative stack size`); 0 when not
    /// reported.
    pub cumulative_stack_bytes: u32,
}

impl KernelResources {
    /// Spills in either direction.
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// Stack frame and spills of a device function ptxas compiled on its own (not inlined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionProperties {
    /// The (mangled) function name.
    pub name: String,
    /// Stack frame per thread, bytes.
    pub stack_frame_bytes: u32,
    /// Spill stores, bytes.
    pub spill_store_bytes: u32,
    /// Spill loads, bytes.
    pub spill_load_bytes: u32,
}

/// ptxas's report on one kernel file for one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleResources {
    /// The kernel file, `attention.cu`.
    pub file: String,
    /// `sm_80`, `sm_90`.
    pub arch: String,
    /// Every kernel, in the order ptxas compiled them.
    pub kernels: Vec<KernelResources>,
    /// Device functions compiled on their own (each once, however often ptxas repeats it).
    pub device_functions: Vec<FunctionProperties>,
    /// Global (`__device__`) memory of the file, bytes.
    pub global_bytes: u32,
    /// ptxas's warnings, and the front end's diagnostics (warnings do not fail a compile).
    pub warnings: Vec<String>,
}

/// Parses NVRTC's program log of a compile with `--ptxas-options=-v` of `file` for `arch`.
pub fn parse_ptxas_log(file: &str, arch: &str, log: &str) -> Result<ModuleResources> {
    let error = |msg: String| Error::PtxasReport { file: file.to_string(), arch: arch.to_string(), msg };
    let lines: Vec<&str> = log.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("ptxas")) else {
        return Err(error(format!("the log has no ptxas lines (was {} passed?): {:?}", super::nvrtc::PTXAS_VERBOSE, log.trim())));
    };
    let mut module = ModuleResources {
        file: file.to_string(),
        arch: arch.to_string(),
        kernels: Vec::new(),
        device_functions: Vec::new(),
        global_bytes: 0,
        warnings: Vec::new(),
    };
    let front_end = lines[..start].join("\n");
    if !front_end.trim().is_empty() {
        module.warnings.push(front_end.trim().to_string());
    }

    /// A kernel whose lines are still being read.
    struct Entry {
        kernel: KernelResources,
        properties: bool,
        used: bool,
    }
    let mut entries: Vec<Entry> = Vec::new();
    // The function named by the last `Function properties for` line, until its stack line.
    let mut pending: Option<(usize, String)> = None;
    for (i, &line) in lines.iter().enumerate().skip(start) {
        let at = |msg: &str| error(format!("log line {} `{line}`: {msg}", i + 1));
        if line.trim().is_empty() {
            continue;
        }
        if let Some((number, name)) = &pending {
            if !is_stack_line(line) {
                return Err(error(format!("log line {number}: `Function properties for {name}` is not followed by its stack frame line")));
            }
        }
        if let Some(info) = after_tag(line, "ptxas info") {
            if let Some(rest) = info.strip_prefix("Compiling entry function ") {
                let (kernel, for_arch) = rest
                    .strip_prefix('\'')
                    .and_then(|r| r.strip_suffix('\''))
                    .and_then(|r| r.split_once("' for '"))
                    .ok_or_else(|| at("expected `Compiling entry function 'NAME' for 'ARCH'`"))?;
                if for_arch != arch {
                    return Err(at(&format!("compiled for {for_arch}, but the compile asked for {arch}")));
                }
                if entries.iter().any(|e| e.kernel.kernel == kernel) {
                    return Err(at(&format!("a second report for the entry `{kernel}`")));
                }
                entries.push(Entry { kernel: empty_kernel(file, kernel, arch), properties: false, used: false });
            } else if let Some(name) = info.strip_prefix("Function properties for ") {
                if name.is_empty() || name.contains(char::is_whitespace) {
                    return Err(at("expected a function name"));
                }
                pending = Some((i + 1, name.to_string()));
            } else if info.starts_with("Used ") {
                let entry = entries.last_mut().ok_or_else(|| at("a `Used` line before any `Compiling entry function` line"))?;
                if entry.used {
                    return Err(at(&format!("a second `Used` line for `{}`", entry.kernel.kernel)));
                }
                parse_used(info, &mut entry.kernel).map_err(|m| at(&m))?;
                entry.used = true;
            } else if let Some(time) = info.strip_prefix("Compile time = ") {
                time.strip_suffix(" ms").and_then(|t| t.parse::<f64>().ok()).ok_or_else(|| at("expected `Compile time = T ms`"))?;
            } else if info.contains(" bytes gmem") {
                module.global_bytes = parse_gmem(info).map_err(|m| at(&m))?;
            } else {
                return Err(at("not a line of ptxas's report that this parser knows"));
            }
        } else if is_stack_line(line) {
            let Some((_, name)) = pending.take() else {
                return Err(at("a stack frame line with no `Function properties for` line before it"));
            };
            let stack = line.trim_start_matches("ptxas").trim_start().trim_start_matches('.').trim();
            let properties = parse_stack(&name, stack).map_err(|m| at(&m))?;
            let is_entry = entries.iter().any(|e| e.kernel.kernel == name);
            match entries.last_mut() {
                Some(e) if e.kernel.kernel == name && !e.properties => {
                    e.kernel.stack_frame_bytes = properties.stack_frame_bytes;
                    e.kernel.spill_store_bytes = properties.spill_store_bytes;
                    e.kernel.spill_load_bytes = properties.spill_load_bytes;
                    e.properties = true;
                }
                _ if is_entry => return Err(at(&format!("a second `Function properties` block for the entry `{name}`"))),
                _ => {
                    if !module.device_functions.contains(&properties) {
                        module.device_functions.push(properties);
                    }
                }
            }
        } else if let Some(warning) = after_tag(line, "ptxas warning") {
            module.warnings.push(format!("ptxas: {warning}"));
        } else {
            return Err(at("not a line of ptxas's report"));
        }
    }
    if let Some((number, name)) = pending {
        return Err(error(format!("log line {number}: `Function properties for {name}` is not followed by its stack frame line")));
    }
    for e in entries {
        if !e.properties || !e.used {
            let missing = if e.properties { "`Used N registers` line" } else { "`Function properties` block" };
            return Err(error(format!("ptxas reported no {missing} for the entry `{}`", e.kernel.kernel)));
        }
        module.kernels.push(e.kernel);
    }
    Ok(module)
}

fn empty_kernel(file: &str, kernel: &str, arch: &str) -> KernelResources {
    KernelResources {
        file: file.to_string(),
        kernel: kernel.to_string(),
        arch: arch.to_string(),
        registers: 0,
        shared_static_bytes: 0,
        stack_frame_bytes: 0,
        spill_store_bytes: 0,
        spill_load_bytes: 0,
        barriers: 0,
        const_bytes: 0,
        cumulative_stack_bytes: 0,
    }
}

/// The text after `tag`, spaces and a colon (`ptxas info    : text`).
fn after_tag<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    Some(line.strip_prefix(tag)?.trim_start().strip_prefix(':')?.trim())
}

/// `ptxas         .     0 bytes stack frame, ...`
fn is_stack_line(line: &str) -> bool {
    line.strip_prefix("ptxas").is_some_and(|r| r.starts_with(char::is_whitespace) && r.trim_start().starts_with('.'))
}

/// `N bytes WHAT` -> (N, WHAT).
fn bytes_item(item: &str) -> Option<(u32, &str)> {
    let (n, what) = item.split_once(" bytes ")?;
    Some((n.parse().ok()?, what))
}

/// `8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads`.
fn parse_stack(name: &str, text: &str) -> std::result::Result<FunctionProperties, String> {
    let items: Vec<Option<(u32, &str)>> = text.split(", ").map(bytes_item).collect();
    match items.as_slice() {
        [Some((stack, "stack frame")), Some((stores, "spill stores")), Some((loads, "spill loads"))] => {
            Ok(FunctionProperties { name: name.to_string(), stack_frame_bytes: *stack, spill_store_bytes: *stores, spill_load_bytes: *loads })
        }
        _ => Err("expected `N bytes stack frame, N bytes spill stores, N bytes spill loads`".into()),
    }
}

/// `Used 170 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0], 256 bytes
/// cumulative stack size` into `kernel`.
fn parse_used(text: &str, kernel: &mut KernelResources) -> std::result::Result<(), String> {
    let mut items = text.split(", ");
    let first = items.next().unwrap_or_default();
    kernel.registers = first
        .strip_prefix("Used ")
        .and_then(|r| r.strip_suffix(" registers").or_else(|| r.strip_suffix(" register")))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected `Used N registers`, got `{first}`"))?;
    for item in items {
        if let Some(n) = item.strip_prefix("used ").and_then(|r| r.strip_suffix(" barriers").or_else(|| r.strip_suffix(" barrier"))) {
            kernel.barriers = n.parse().map_err(|_| format!("bad barrier count in `{item}`"))?;
            continue;
        }
        match bytes_item(item) {
            Some((n, "smem")) => kernel.shared_static_bytes = n,
            Some((n, "cumulative stack size")) => kernel.cumulative_stack_bytes = n,
            Some((n, bank)) if is_cmem(bank) => kernel.const_bytes += n,
            _ => return Err(format!("unknown item `{item}`")),
        }
    }
    Ok(())
}

/// `cmem[0]`.
fn is_cmem(what: &str) -> bool {
    what.strip_prefix("cmem[").and_then(|r| r.strip_suffix(']')).is_some_and(|k| k.parse::<u32>().is_ok())
}

/// `76 bytes gmem, 152 bytes cmem[4]` -> the gmem bytes (the file's constant bank is not
/// any one kernel's).
fn parse_gmem(text: &str) -> std::result::Result<u32, String> {
    let mut gmem = None;
    for item in text.split(", ") {
        match bytes_item(item) {
            Some((n, "gmem")) if gmem.is_none() => gmem = Some(n),
            Some((_, bank)) if is_cmem(bank) => {}
            _ => return Err(format!("unknown item `{item}`")),
        }
    }
    gmem.ok_or_else(|| "expected `N bytes gmem`".to_string())
}

/// One compile of [`compile_every_file`].
#[derive(Debug)]
pub struct Compiled {
    /// The file stem, `attention`.
    pub file: &'static str,
    /// The architecture.
    pub arch: String,
    /// How long NVRTC took.
    pub elapsed: Duration,
    /// The cubin and ptxas's report, or the compile's error.
    pub result: Result<(Vec<u8>, ModuleResources)>,
}

/// Compiles every embedded `kernels/cuda/*.cu` for each of `archs` with ptxas's report, on
/// as many threads as there are cores (NVRTC is single-threaded per program; the big
/// template files dominate). One entry per (file, arch), in file order then arch order.
pub fn compile_every_file(archs: &[&str]) -> Vec<Compiled> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs: Vec<(&'static str, &'static str, &str)> =
        super::sources::SOURCES.iter().flat_map(|&(stem, source)| archs.iter().map(move |&arch| (stem, source, arch))).collect();
    let next = AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(jobs.len()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(&(file, source, arch)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let start = Instant::now();
                    let result = super::nvrtc::compile_with_resources(file, source, arch);
                    let compiled = Compiled { file, arch: arch.to_string(), elapsed: start.elapsed(), result };
                    super::lock(&done).push(compiled);
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    let position = |c: &Compiled| jobs.iter().position(|&(f, _, a)| f == c.file && a == c.arch);
    done.sort_by_key(position);
    done
}

/// One kernel on one architecture, with its launch and what that gives.
#[derive(Clone, Debug)]
pub struct Row {
    /// What ptxas reported.
    pub resources: KernelResources,
    /// Its entry in the launch table; `None` when it has none (a problem).
    pub launch: Option<Launch>,
    /// Blocks per SM at that launch; `None` without a launch or for an unknown architecture.
    pub occupancy: Option<Occupancy>,
}

/// The resources of every kernel, and what is wrong with them.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The architectures, in the order given.
    pub archs: Vec<String>,
    /// Every kernel per architecture, in launch-table order (kernels missing from it last).
    pub rows: Vec<Row>,
    /// What CI refuses, one sentence each naming the kernel; empty when all is well.
    pub problems: Vec<String>,
    /// ptxas's and the front end's warnings, naming the file (they fail nothing).
    pub warnings: Vec<String>,
}

/// Checks `modules` (every kernel file, compiled for each architecture) against `launches`:
/// no kernel or device function spills, every kernel has exactly one launch entry and every
/// entry a kernel (on each architecture), every kernel fits at least one block per SM at
/// its launch, and meets its entry's budgets.
pub fn check(modules: &[ModuleResources], launches: &[Launch]) -> Report {
    let mut report = Report::default();
    let problems = &mut report.problems;
    for (i, l) in launches.iter().enumerate() {
        if launches[..i].iter().any(|m| m.kernel == l.kernel) {
            problems.push(format!("the launch table (kernels/src/cuda/launches.rs) lists `{}` twice", l.kernel));
        }
    }
    for m in modules {
        if !report.archs.contains(&m.arch) {
            report.archs.push(m.arch.clone());
        }
        report.warnings.extend(m.warnings.iter().map(|w| format!("{} ({}): {w}", m.file, m.arch)));
        for f in m.device_functions.iter().filter(|f| f.spill_store_bytes > 0 || f.spill_load_bytes > 0) {
            problems.push(format!(
                "device function `{}` ({}, {}) spills: {} bytes spill stores, {} bytes spill loads",
                f.name, m.file, m.arch, f.spill_store_bytes, f.spill_load_bytes
            ));
        }
    }
    for arch in report.archs.clone() {
        let limits = arch_limits(&arch);
        if limits.is_none() {
            let known: Vec<&str> = ARCHS.iter().map(|a| a.arch).collect();
            problems.push(format!("no occupancy figures for {arch} (known: {})", known.join(", ")));
        }
        let kernels: Vec<&KernelResources> = modules.iter().filter(|m| m.arch == arch).flat_map(|m| &m.kernels).collect();
        let mut rows = Vec::new();
        for (i, k) in kernels.iter().enumerate() {
            let name = &k.kernel;
            if let Some(other) = kernels[..i].iter().find(|o| o.kernel == *name) {
                problems.push(format!("kernel `{name}` is defined in both {} and {} ({arch})", other.file, k.file));
                continue;
            }
            if k.spills() {
                problems.push(format!(
                    "kernel `{name}` ({}, {arch}) spills: {} bytes spill stores, {} bytes spill loads ({} registers)",
                    k.file, k.spill_store_bytes, k.spill_load_bytes, k.registers
                ));
            }
            let Some(launch) = launches.iter().find(|l| l.kernel == *name).copied() else {
                push_once(
                    problems,
                    format!(
                        "kernel `{name}` ({}) is not in the launch table: add its threads per block and dynamic shared memory at \
                         the reference shape to LAUNCHES in kernels/src/cuda/launches.rs",
                        k.file
                    ),
                );
                rows.push(Row { resources: (*k).clone(), launch: None, occupancy: None });
                continue;
            };
            let occupancy = limits.map(|a| occupancy(a, k.registers, launch.threads, k.shared_static_bytes + launch.dynamic_shared_bytes));
            if let Some(o) = &occupancy {
                let at = format!(
                    "at {} threads and {} bytes of shared memory a block",
                    launch.threads,
                    k.shared_static_bytes + launch.dynamic_shared_bytes
                );
                if o.blocks_per_sm == 0 {
                    problems.push(format!("kernel `{name}` ({arch}, {} registers) cannot launch {at}: too many {}", k.registers, o.limits()));
                } else if let Some(min) = launch.min_blocks_per_sm.filter(|&min| o.blocks_per_sm < min) {
                    problems.push(format!(
                        "kernel `{name}` ({arch}) fits {} block(s) per SM {at}, below its budget of {min} (limited by {})",
                        o.blocks_per_sm,
                        o.limits()
                    ));
                }
            }
            if let Some(max) = launch.max_registers.filter(|&max| k.registers > max) {
                problems.push(format!("kernel `{name}` ({arch}) uses {} registers, over its budget of {max}", k.registers));
            }
            rows.push(Row { resources: (*k).clone(), launch: Some(launch), occupancy });
        }
        for l in launches.iter().filter(|l| !kernels.iter().any(|k| k.kernel == l.kernel)) {
            let problem =
                format!("the launch table (kernels/src/cuda/launches.rs) names `{}`, which no kernel file defines: renamed or removed?", l.kernel);
            push_once(problems, problem);
        }
        let order = |r: &Row| launches.iter().position(|l| Some(l.kernel) == r.launch.map(|l| l.kernel)).unwrap_or(usize::MAX);
        rows.sort_by(|a, b| {
            order(a).cmp(&order(b)).then_with(|| (&a.resources.file, &a.resources.kernel).cmp(&(&b.resources.file, &b.resources.kernel)))
        });
        report.rows.extend(rows);
    }
    report
}

/// Adds `problem` unless it is there already (the table's problems repeat on every arch).
fn push_once(problems: &mut Vec<String>, problem: String) {
    if !problems.contains(&problem) {
        problems.push(problem);
    }
}

/// Compiles every kernel file for each of `archs` (which must have known limits) and checks
/// them against the launch table. A compile failure is its error; the problems found are in
/// the report ([`Report::ok`] turns them into an error).
pub fn report(archs: &[&str]) -> Result<Report> {
    for arch in archs {
        if arch_limits(arch).is_none() {
            let known: Vec<&str> = ARCHS.iter().map(|a| a.arch).collect();
            return Err(Error::Invalid { op: "kernel resources", msg: format!("no occupancy figures for {arch} (known: {})", known.join(", ")) });
        }
    }
    let mut modules = Vec::new();
    for compiled in compile_every_file(archs) {
        modules.push(compiled.result?.1);
    }
    Ok(check(&modules, super::launches::LAUNCHES))
}

impl Report {
    /// `Err(Error::KernelResources)` listing the problems, if there are any.
    pub fn ok(&self) -> Result<()> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::KernelResources { problems: self.problems.clone() })
        }
    }

    /// One table per architecture: aligned text, or Markdown (a `### sm_90` heading each).
    pub fn table(&self, markdown: bool) -> String {
        const HEADER: [&str; 12] = [
            "kernel",
            "threads",
            "dynamic smem (B)",
            "registers",
            "static smem (B)",
            "stack (B)",
            "spill stores (B)",
            "spill loads (B)",
            "barriers",
            "blocks/SM",
            "warps/SM",
            "limited by",
        ];
        let mut out = String::new();
        for arch in &self.archs {
            let cells: Vec<[String; 12]> = self
                .rows
                .iter()
                .filter(|r| &r.resources.arch == arch)
                .map(|r| {
                    let k = &r.resources;
                    let (threads, dynamic) =
                        r.launch.map_or(("-".into(), "-".into()), |l| (l.threads.to_string(), l.dynamic_shared_bytes.to_string()));
                    let (blocks, warps, limits) = r
                        .occupancy
                        .as_ref()
                        .map_or(("-".into(), "-".into(), "-".into()), |o| (o.blocks_per_sm.to_string(), o.warps_per_sm.to_string(), o.limits()));
                    [
                        k.kernel.clone(),
                        threads,
                        dynamic,
                        k.registers.to_string(),
                        k.shared_static_bytes.to_string(),
                        k.stack_frame_bytes.to_string(),
                        k.spill_store_bytes.to_string(),
                        k.spill_load_bytes.to_string(),
                        k.barriers.to_string(),
                        blocks,
                        warps,
                        limits,
                    ]
                })
                .collect();
            if markdown {
                out.push_str(&format!("### {arch}\n\n| {} |\n|---|{}\n", HEADER.join(" | "), "---:|".repeat(10) + "---|"));
                for row in &cells {
                    out.push_str(&format!("| {} |\n", row.join(" | ")));
                }
            } else {
                let width = |c: usize| cells.iter().map(|r| r[c].len()).chain([HEADER[c].len()]).max().unwrap_or(0);
                let widths: Vec<usize> = (0..12).map(width).collect();
                out.push_str(&format!("{arch}\n"));
                let line = |row: &[&str]| {
                    let mut s = String::new();
                    for (c, cell) in row.iter().enumerate() {
                        let w = widths[c];
                        // names left-aligned, numbers right-aligned
                        let padded = if c == 0 || c == 11 { format!("{cell:<w$}") } else { format!("{cell:>w$}") };
                        s.push_str(&padded);
                        s.push_str(if c + 1 < row.len() { "  " } else { "\n" });
                    }
                    s.trim_end().to_string() + "\n"
                };
                out.push_str(&line(&HEADER));
                for row in &cells {
                    out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests;
