//! `memory.budget`: how much memory a run may take, as bytes or a share of what is free.

use crate::{Device, Error, Result};

/// A memory budget as written in a config: an amount, or a percentage of the memory free
/// on the device when the run starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Bytes(usize),
    /// Percent (0, 100] of the free device memory on a GPU (the driver's `cuMemGetInfo`),
    /// of the available host memory on the CPU (`MemAvailable` in /proc/meminfo).
    Percent(f64),
}

const EXPECTED: &str = "expected an amount such as \"20GiB\", \"512MiB\", \"1.5GB\" or \"4096\" (bytes), or a percentage of the free memory such as \"90%\"";

impl Budget {
    /// Parses `"20GiB"`, `"512 MiB"`, `"1.5GB"`, `"4096"` (bytes) or `"90%"`. Binary units
    /// (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB) of 1000. The
    /// error names the value and what was expected (the caller adds the key).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let s = text.trim();
        let bad = || format!("\"{text}\" is not a memory budget: {EXPECTED}");
        if let Some(pct) = s.strip_suffix('%') {
            let p: f64 = pct.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("\"{text}\" is not a memory budget: a percentage must be above 0% and at most 100%"));
            }
            return Ok(Budget::Percent(p));
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = (&s[..split], s[split..].trim());
        let value: f64 = number.parse().map_err(|_| bad())?;
        let scale: f64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kib" => 1024f64,
            "mib" => 1024f64.powi(2),
            "gib" => 1024f64.powi(3),
            "tib" => 1024f64.powi(4),
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            _ => return Err(bad()),
        };
        let bytes = value * scale;
        if !(bytes >= 1.0 && bytes < usize::MAX as f64) {
            return Err(format!("\"{text}\" is not a memory budget: it must be at least 1 byte"));
        }
        Ok(Budget::Bytes(bytes as usize))
    }

    /// The budget in bytes on `device`; a percentage reads the memory free there now.
    pub fn resolve(self, device: Device) -> Result<usize> {
        match self {
            Budget::Bytes(b) => Ok(b),
            Budget::Percent(p) => {
                let free = match device {
                    Device::Cpu => host_available()?,
                    Device::Cuda(ordinal) => {
                        let dev = crate::cuda::device(ordinal)?;
                        dev.context().mem_get_info().map_err(dev.error("reading the free device memory"))?.0
                    }
                };
                Ok((free as f64 * p / 100.0) as usize)
            }
        }
    }
}

/// Available host memory in bytes (`MemAvailable` in /proc/meminfo).
fn host_available() -> Result<usize> {
    let err = |msg: String| Error::Invalid { op: "memory.budget", msg };
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| err(format!("a percentage needs the available host memory, but /proc/meminfo is unreadable ({e}); give an amount such as \"8GiB\"")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| err("no MemAvailable line in /proc/meminfo; give an amount such as \"8GiB\"".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_amounts_and_percentages() {
        assert_eq!(Budget::parse("20GiB"), Ok(Budget::Bytes(20 << 30)));
        assert_eq!(Budget::parse("512MiB"), Ok(Budget::Bytes(512 << 20)));
        assert_eq!(Budget::parse(" 512 mib "), Ok(Budget::Bytes(512 << 20)));
        assert_eq!(Budget::parse("1.5GiB"), Ok(Budget::Bytes(3 << 29)));
        assert_eq!(Budget::parse("2GB"), Ok(Budget::Bytes(2_000_000_000)));
        assert_eq!(Budget::parse("4096"), Ok(Budget::Bytes(4096)));
        assert_eq!(Budget::parse("90%"), Ok(Budget::Percent(90.0)));
        assert_eq!(Budget::parse("12.5 %"), Ok(Budget::Percent(12.5)));
    }

    #[test]
    fn bad_budgets_name_the_value_and_what_was_expected() {
        for bad in ["", "lots", "20 GiBs", "GiB", "-1GiB", "1e9", "20GiB20"] {
            let msg = Budget::parse(bad).unwrap_err();
            assert!(msg.contains(&format!("\"{bad}\"")) && msg.contains("\"20GiB\"") && msg.contains("\"90%\""), "{bad}: {msg}");
        }
        for bad in ["0%", "150%", "-5%"] {
            let msg = Budget::parse(bad).unwrap_err();
            assert!(msg.contains(bad) && msg.contains("at most 100%"), "{bad}: {msg}");
        }
        assert!(Budget::parse("0").unwrap_err().contains("at least 1 byte"));
    }

    #[test]
    fn percent_of_host_memory() {
        let all = Budget::Percent(100.0).resolve(Device::Cpu).unwrap();
        let half = Budget::Percent(50.0).resolve(Device::Cpu).unwrap();
        // Two reads of MemAvailable: other processes (and parallel tests) move it a little
        // in between, so half is half of the first read within 2%.
        assert!(all > 0 && (half as f64 - all as f64 / 2.0).abs() < 0.02 * all as f64, "{half} of {all}");
        assert_eq!(Budget::Bytes(123).resolve(Device::Cpu).unwrap(), 123);
    }
}
