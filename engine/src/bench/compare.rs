//! `engine bench compare A.json B.json`: the ratio B/A of every entry both results files
//! hold, and which side is better by how much. Entries compare only when they measured the
//! same workload (same settings hash); results of different configs are an error that says
//! which settings differ.

use std::path::Path;

use super::{fmt_value, Better, Results};
use crate::{Error, Result};

/// One entry both files hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The entry's name, e.g. `kernels/matmul_qkv_forward/time_ms`.
    pub name: String,
    /// Its unit ("ms", "tokens/s", ...), the same in both files.
    pub unit: String,
    /// Whether a higher or a lower value is better.
    pub better: Better,
    /// The entry's median in file A, in `unit`.
    pub a: f64,
    /// The entry's median in file B, in `unit`.
    pub b: f64,
    /// b / a.
    pub ratio: f64,
    /// How many times better B is than A (b/a for rates, a/b for times); below 1: worse.
    pub b_vs_a: f64,
}

/// What [`compare`] found: the entries both files hold, and the names only one holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// One row per entry both files hold, in A's order.
    pub rows: Vec<Row>,
    /// Entries only one side has.
    pub only_a: Vec<String>,
    /// Names of the entries only B has, in B's order.
    pub only_b: Vec<String>,
}

/// Compares `b` against `a` (paths for messages).
pub fn compare(a: &Results, b: &Results, a_path: &Path, b_path: &Path) -> Result<Comparison> {
    let mut rows = Vec::new();
    let mut only_a = Vec::new();
    for ea in &a.entries {
        let Some(eb) = b.entries.iter().find(|e| e.name == ea.name) else {
            only_a.push(ea.name.clone());
            continue;
        };
        if ea.workload != eb.workload {
            let (wa, wb) = (&a.workloads[&ea.workload], &b.workloads[&eb.workload]);
            let mut diffs = Vec::new();
            differing_keys("", &wa.settings, &wb.settings, &mut diffs);
            return Err(Error::Usage(format!(
                "{} and {} measured different workloads (configs): entry \"{}\" ran workload {} in the first and {} in the second; \
                 settings that differ: {}. Compare results of the same config",
                a_path.display(),
                b_path.display(),
                ea.name,
                ea.workload,
                eb.workload,
                if diffs.is_empty() { "none listed (the hashes differ)".to_string() } else { diffs.join("; ") }
            )));
        }
        if ea.unit != eb.unit || ea.better != eb.better {
            return Err(Error::Usage(format!(
                "entry \"{}\" is in {} in {} but in {} in {}",
                ea.name,
                ea.unit,
                a_path.display(),
                eb.unit,
                b_path.display()
            )));
        }
        let ratio = eb.median / ea.median;
        let b_vs_a = match ea.better {
            Better::Higher => ratio,
            Better::Lower => ea.median / eb.median,
        };
        rows.push(Row { name: ea.name.clone(), unit: ea.unit.clone(), better: ea.better, a: ea.median, b: eb.median, ratio, b_vs_a });
    }
    let only_b: Vec<String> = b.entries.iter().filter(|e| !a.entries.iter().any(|x| x.name == e.name)).map(|e| e.name.clone()).collect();
    if rows.is_empty() {
        return Err(Error::Usage(format!(
            "{} and {} have no entry in common ({} has {} entries of suite \"{}\", {} has {} of suite \"{}\"); nothing to compare",
            a_path.display(),
            b_path.display(),
            a_path.display(),
            a.entries.len(),
            a.suite,
            b_path.display(),
            b.entries.len(),
            b.suite
        )));
    }
    Ok(Comparison { rows, only_a, only_b })
}

/// `key: a -> b` for every leaf where the settings differ.
fn differing_keys(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(ma), serde_json::Value::Object(mb)) => {
            let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                let null = serde_json::Value::Null;
                differing_keys(&path, ma.get(k).unwrap_or(&null), mb.get(k).unwrap_or(&null), out);
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
        _ => {}
    }
}

impl Comparison {
    /// The table `engine bench compare` prints (Markdown).
    pub fn table(&self, a: &Results, b: &Results) -> String {
        let who = |r: &Results| {
            let device = r.environment.gpu.as_ref().map_or(r.environment.device.clone(), |g| g.name.clone());
            format!("{} on {device}, commit {}", r.implementation, &r.environment.git_commit[..r.environment.git_commit.len().min(10)])
        };
        let mut out = format!("A: {}\nB: {}\n\n| entry | unit | A | B | B/A | B vs A |\n|---|---|---|---|---|---|\n", who(a), who(b));
        for r in &self.rows {
            let verdict = match r.b_vs_a {
                v if v >= 1.0 => format!("{v:.2}x better"),
                v => format!("{:.2}x worse", 1.0 / v),
            };
            out += &format!("| {} | {} | {} | {} | {:.3} | {verdict} |\n", r.name, r.unit, fmt_value(r.a), fmt_value(r.b), r.ratio);
        }
        if !self.only_a.is_empty() || !self.only_b.is_empty() {
            out += &format!("\nonly in A: {}; only in B: {}\n", list(&self.only_a), list(&self.only_b));
        }
        out
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
