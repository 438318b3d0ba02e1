//! A real (tiny) CPU run, then its report: one well-formed SVG per chart, the loss line has
//! a point per step, the statistics table shows summary.json's numbers, the alert and the
//! memory budget of the run appear, and telemetry (faked here: the engine does not write it
//! yet) adds the GPU and host charts.

use engine::config::Config;
use engine::train::{train, TrainOptions};
use serde_json::Value;

fn svgs(page: &str) -> Vec<&str> {
    let blocks: Vec<&str> = page.match_indices("<svg").map(|(i, _)| &page[i..i + page[i..].find("</svg>").unwrap() + 6]).collect();
    for b in &blocks {
        roxmltree::Document::parse(b).unwrap_or_else(|e| panic!("not well-formed: {e}"));
    }
    blocks
}

#[test]
fn report_of_a_short_run() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[run]\nname = \"rep\"\nout_dir = '{}'\ndevice = \"cpu\"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\ncontext_length = 32\n\
         [train]\nbatch_size = 4\nseq_len = 32\nmax_steps = 6\neval_interval = 3\neval_batches = 1\n\
         [memory]\nbudget = \"16MiB\"\n[logs]\nalert_memory = 0.01\npeak_tflops = 1.0\n",
        dir.path().display()
    );
    let config = Config::parse(&toml, "rep.toml", &[]).unwrap();
    let s = train(&config, &TrainOptions { quiet: true, ..Default::default() }).unwrap();

    // The run wrote its report; writing it again gives the same page.
    let written = std::fs::read_to_string(s.run_dir.join("report.html")).unwrap();
    let path = engine::report::write_report(&s.run_dir).unwrap();
    assert_eq!(path, s.run_dir.join("report.html"));
    let page = std::fs::read_to_string(&path).unwrap();
    assert_eq!(page, written);
    assert!(page.contains("<td>cpu, precision fp32 (run.device = cpu)</td>"), "the device trained on, from summary.json");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(s.run_dir.join("summary.json")).unwrap()).unwrap();
    let share = format!("<td>{:.3} % of step time (", 100.0 * summary["logging"]["share_of_step_time"].as_f64().unwrap());
    assert!(page.contains(&share), "{share} not in the header");
    for bad in ["http://", "https://", "<script"] {
        assert!(!page.contains(bad), "{bad} in the report");
    }
    // Loss, throughput, MFU (a peak rate is given), memory, step time, and the host's CPU
    // and memory from the run's telemetry, which has no GPU on the CPU.
    let blocks = svgs(&page);
    assert_eq!(blocks.len(), 7);
    assert!(page.contains("no GPU telemetry (no sample has a GPU"));
    let loss = roxmltree::Document::parse(blocks[0]).unwrap();
    let line = loss
        .descendants()
        .find(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some("#0072B2") && n.attribute("stroke-width") == Some("2"))
        .expect("the train loss line");
    assert_eq!(line.attribute("points").unwrap().split_whitespace().count(), 6);
    // The budget line is drawn and labelled; the memory alert is in the alerts table.
    assert!(blocks[3].contains(">\nbudget\n</text>"));
    assert!(page.contains("<td class=\"num\">1</td><td>memory_near_budget</td><td>memory near the budget: peak"), "alert row");

    // The statistics table holds summary.json's numbers, formatted.
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(s.run_dir.join("summary.json")).unwrap()).unwrap();
    let m = &summary["metrics"];
    let loss_mean = format!("<td class=\"num\">{:.4}</td>", m["loss"]["mean"].as_f64().unwrap());
    let peak = format!("<td class=\"num\">{}</td>", kernels::memory::fmt_bytes(m["memory_peak"]["max"].as_f64().unwrap() as usize));
    let mfu = format!("<td class=\"num\">{:.2} %</td>", 100.0 * m["mfu"]["p50"].as_f64().unwrap());
    for (key, cell) in [("loss", loss_mean), ("memory_peak", peak), ("mfu", mfu)] {
        let row = &page[page.find(&format!("<tr id=\"stat-{key}\">")).unwrap()..];
        assert!(row[..row.find("</tr>").unwrap()].contains(&cell), "{key}: {cell} not in its row");
    }

    // Fake telemetry: a GPU, then samples without one; the report gains 3 GPU and 2 host charts.
    let gpu = r#"{"index":0,"name":"NVIDIA H100 80GB HBM3","utilization_pct":95,"memory_used":1000,"memory_total":2000,"power_w":600.5,"temperature_c":70,"sm_clock_mhz":1980,"throttle_reasons":[]}"#;
    let lines: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"time_s":{},"step":{},"gpu":{},"host":{{"cpu_pct":50.0,"process_cpu_pct":100.0,"rss":{},"disk_free":null}}}}"#, i as f64 * 0.5, i, if i < 6 { gpu } else { "null" }, 300 << 20))
        .collect();
    std::fs::write(s.run_dir.join("telemetry.jsonl"), lines.join("\n") + "\n").unwrap();
    let page = std::fs::read_to_string(engine::report::write_report(&s.run_dir).unwrap()).unwrap();
    assert_eq!(svgs(&page).len(), 10);
    assert!(page.contains("GPU 0: NVIDIA H100 80GB HBM3") && !page.contains("no GPU telemetry"));

    // A malformed line is an error naming the file and the line; the old page stays.
    std::fs::write(s.run_dir.join("telemetry.jsonl"), lines[0].clone() + "\n{\"time_s\": 1.0, \"step\": -1}\n").unwrap();
    let err = engine::report::write_report(&s.run_dir).unwrap_err().to_string();
    assert!(err.contains("telemetry.jsonl line 2: invalid value: integer `-1`"), "{err}");
    assert!(std::fs::read_to_string(s.run_dir.join("report.html")).unwrap().contains("GPU 0: NVIDIA H100"));
}

#[test]
fn engine_report_of_a_missing_directory_is_one_clear_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let missing = dir.path().join("no-such-run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine")).args(["report", missing.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("no-such-run is not a run directory") && stderr.contains("metrics.jsonl"), "{stderr}");
    // A directory without metrics.jsonl names the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine")).args(["report", dir.path().to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && stderr.contains("metrics.jsonl"), "{stderr}");
}
