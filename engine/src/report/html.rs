//! The page: header, statistics table, charts, alerts, samples of text, plan changes, checkpoints.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::chart::{self, Chart, Kind, Series};
use super::{escape, Event, Run, Sample, Step};

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 24px auto; max-width: 1320px; padding: 0 16px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { color: #555; font-weight: normal; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.charts > div { border: 1px solid #e4e4e4; border-radius: 4px; padding: 4px; }
.charts svg { width: 100%; height: auto; display: block; }
.note { color: #555; font-style: italic; }
code { background: #f4f4f4; padding: 0 3px; }
";

/// The report page of `run`.
pub fn render(run: &Run) -> String {
    let name = run_name(run);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{} – run report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"note\">{}</p>\n",
        escape(&name),
        escape(&name),
        escape(&run.dir.display().to_string())
    );
    header(&mut page, run);
    summary_table(&mut page, run);
    charts(&mut page, run);
    alerts(&mut page, run);
    samples(&mut page, run);
    events(&mut page, run);
    page.push_str("</body>\n</html>\n");
    page
}

fn run_name(run: &Run) -> String {
    let from_config = run.config.as_ref().and_then(|c| c.get("run")?.get("name")?.as_str().map(str::to_string));
    from_config.unwrap_or_else(|| run.dir.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned()))
}

/// `config.toml`'s `[table] key`, as written there.
fn config_value(run: &Run, table: &str, key: &str) -> Option<String> {
    let v = run.config.as_ref()?.get(table)?.get(key)?;
    Some(v.as_str().map_or_else(|| v.to_string(), str::to_string))
}

fn header(page: &mut String, run: &Run) {
    let mut rows: Vec<(&str, String)> = Vec::new();
    let gpus: BTreeMap<u32, String> = run.telemetry.iter().flatten().filter_map(|s| s.gpu.as_ref()).map(|g| (g.index, g.name.clone())).collect();
    let recorded = run.summary.as_ref().and_then(|s| Some(format!("{}, precision {}", s.device.as_ref()?, s.precision.as_ref()?)));
    let mut device = config_value(run, "run", "device").map_or("not recorded".into(), |d| format!("run.device = {d}"));
    let names: Vec<String> = gpus.iter().map(|(i, n)| format!("GPU {i}: {n}")).collect();
    match recorded {
        Some(recorded) if names.is_empty() => device = format!("{recorded} ({device})"),
        Some(recorded) => device = format!("{recorded} ({device}; NVML {})", names.join(", ")),
        None if !names.is_empty() => device = format!("{} ({device})", names.join(", ")),
        None => {}
    }
    if let (None, Some(precision)) = (run.summary.as_ref().and_then(|s| s.precision.as_ref()), config_value(run, "train", "precision")) {
        device += &format!(", precision {precision}");
    }
    rows.push(("device", device));
    if let Some(s) = &run.summary {
        let source = &s.peak_tflops_source;
        rows.push(("peak rate (MFU)", s.peak_tflops.map_or(source.clone(), |p| format!("{p} TFLOP/s ({source})"))));
    }
    let model: Vec<String> = [("n_layer", "layers"), ("n_head", "heads"), ("n_embd", "wide"), ("context_length", "context")]
        .iter()
        .filter_map(|(key, unit)| config_value(run, "model", key).map(|v| format!("{v} {unit}")))
        .collect();
    if !model.is_empty() {
        rows.push(("model", format!("GPT-2, {}", model.join(", "))));
    }
    if let Some(last) = run.steps.last() {
        let seq = config_value(run, "train", "seq_len").map_or(String::new(), |t| format!(", seq_len {t}"));
        rows.push(("batch", format!("micro-batch {} × {} accumulation{seq}, recompute {}", last.micro_batch, last.grad_accum, last.recompute)));
    }
    let (first, last) = (run.steps.first().map(|s| s.step), run.steps.last().map(|s| s.step));
    rows.push(("steps", match (first, last) {
        (Some(a), Some(b)) => format!("{} recorded, steps {a} to {b}", run.steps.len()),
        _ => "none recorded (metrics.jsonl is empty)".into(),
    }));
    rows.push(("tokens", thousands(run.steps.iter().map(|s| s.tokens).sum::<u64>() as f64)));
    if let Some(s) = &run.summary {
        rows.push(("wall time", format!("{} (of which steps {})", duration(s.wall_seconds), duration(s.train_seconds))));
        if let Some(l) = &s.logging {
            rows.push((
                "logging cost",
                format!(
                    "{:.3} % of step time ({:.1} ms writing step lines, {:.1} ms in {} telemetry samples)",
                    100.0 * l.share_of_step_time,
                    l.step_logging_ms,
                    l.telemetry_ms,
                    l.telemetry_samples
                ),
            ));
        }
        let val = s.final_val_loss.map_or("–".into(), |v| format!("{v:.4}"));
        rows.push(("final loss", format!("train {}, validation {val}", s.final_loss.map_or("–".into(), |v| format!("{v:.4}")))));
    } else if let Some(last) = run.steps.last() {
        rows.push(("wall time", format!("{} at the last recorded step", duration(last.time_s))));
    }
    if let Some(h) = run.steps.iter().rev().find(|s| s.hellaswag_examples.is_some()) {
        let pct = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.2} %", 100.0 * v));
        rows.push((
            "HellaSwag (last)",
            format!(
                "step {}: acc_norm {}, acc {} (lm-eval-harness); llmc_acc_norm {} ({} examples)",
                h.step,
                pct(h.hellaswag_acc_norm),
                pct(h.hellaswag_acc),
                pct(h.hellaswag_llmc_acc_norm),
                h.hellaswag_examples.unwrap_or(0)
            ),
        ));
    }
    page.push_str("<table class=\"facts\">\n");
    for (key, value) in rows {
        let _ = writeln!(page, "<tr><th>{key}</th><td>{}</td></tr>", escape(&value));
    }
    page.push_str("</table>\n");
    if !run.restarts.is_empty() {
        let lines: Vec<String> = run.restarts.iter().map(|l| l.to_string()).collect();
        let _ = writeln!(
            page,
            "<p class=\"note\">metrics.jsonl holds {} trainings of this directory (the step goes back at line {}: trained again without --resume); this report shows the last.</p>",
            run.restarts.len() + 1,
            lines.join(", ")
        );
    }
    for note in &run.notes {
        let _ = writeln!(page, "<p class=\"note\">{}</p>", escape(note));
    }
}

/// Statistics rows: the summary's metric name, its label and how its values are written.
const METRICS: [(&str, &str, Unit); 11] = [
    ("loss", "train loss", Unit::Plain),
    ("grad_norm", "gradient norm", Unit::Plain),
    ("tokens_per_s", "throughput", Unit::TokensPerSecond),
    ("mfu", "MFU", Unit::Percent),
    ("step_ms", "step time", Unit::Ms),
    ("data_wait_ms", "data wait", Unit::Ms),
    ("forward_ms", "forward", Unit::Ms),
    ("backward_ms", "backward", Unit::Ms),
    ("optimizer_ms", "optimizer", Unit::Ms),
    ("memory_in_use", "memory in use", Unit::Bytes),
    ("memory_peak", "memory peak", Unit::Bytes),
];

#[derive(Clone, Copy)]
pub(super) enum Unit {
    Plain,
    TokensPerSecond,
    /// A fraction, shown as a percentage.
    Percent,
    Ms,
    Bytes,
}

/// `value` written in `unit`; `–` for a value that was not finite (null in the JSON).
pub(super) fn format_value(value: Option<f64>, unit: Unit) -> String {
    let Some(v) = value.filter(|v| v.is_finite()) else { return "–".into() };
    match unit {
        Unit::Plain => format!("{v:.4}"),
        Unit::TokensPerSecond => format!("{} tok/s", thousands(v)),
        Unit::Percent => format!("{:.2} %", v * 100.0),
        Unit::Ms if v.abs() >= 100.0 => format!("{v:.1} ms"),
        Unit::Ms if v.abs() >= 1.0 => format!("{v:.2} ms"),
        Unit::Ms => format!("{v:.4} ms"),
        Unit::Bytes => kernels::memory::fmt_bytes(v.max(0.0).round() as usize),
    }
}

/// `v` rounded to a whole number with thousands separators: 28,837.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => {
            // Whole seconds first, so 119.6 s reads "2 min 00 s", not "1 min 60 s".
            let s = s.round() as u64;
            format!("{} min {:02} s", s / 60, s % 60)
        }
        s => format!("{} h {:02.0} min", (s / 3600.0).floor(), (s % 3600.0 / 60.0).floor()),
    }
}

fn summary_table(page: &mut String, run: &Run) {
    page.push_str("<h2>Statistics</h2>\n");
    let Some(s) = &run.summary else {
        page.push_str("<p class=\"note\">No summary.json: the run did not finish (it crashed, or is still running), so there is no statistics table; the charts below are drawn from metrics.jsonl.</p>\n");
        return;
    };
    let _ = writeln!(
        page,
        "<p class=\"note\">Over steps {} to {} of this invocation, leaving out the first {} (warm-up); population std, percentiles interpolated.</p>",
        s.first_step + s.warmup_steps_excluded,
        s.last_step,
        s.warmup_steps_excluded
    );
    page.push_str("<table class=\"stats\">\n<tr><th>metric</th><th class=\"num\">mean</th><th class=\"num\">min</th><th class=\"num\">max</th><th class=\"num\">std</th><th class=\"num\">p50</th><th class=\"num\">p95</th><th class=\"num\">steps</th></tr>\n");
    let known = METRICS.iter().map(|&(k, l, u)| (k.to_string(), l.to_string(), u));
    let unknown = s.metrics.keys().filter(|k| !METRICS.iter().any(|(m, ..)| m == k)).map(|k| (k.clone(), k.clone(), Unit::Plain));
    for (key, label, unit) in known.chain(unknown) {
        let Some(st) = s.metrics.get(&key) else { continue };
        let _ = write!(page, "<tr id=\"stat-{key}\"><td>{}</td>", escape(&label));
        for v in [st.mean, st.min, st.max, st.std, st.p50, st.p95] {
            let _ = write!(page, "<td class=\"num\">{}</td>", escape(&format_value(v, unit)));
        }
        let _ = writeln!(page, "<td class=\"num\">{}</td></tr>", st.count);
    }
    page.push_str("</table>\n");
}

/// A chart, or a note where there is nothing to draw.
fn figure(page: &mut String, chart: &Chart, empty: &str) {
    page.push_str("<div>");
    match chart::svg(chart) {
        Some(svg) => page.push_str(&svg),
        None => {
            let _ = write!(page, "<p><b>{}</b></p><p class=\"note\">{}</p>", escape(chart.title), escape(empty));
        }
    }
    page.push_str("</div>\n");
}

fn note(page: &mut String, title: &str, text: &str) {
    let _ = writeln!(page, "<div><p><b>{}</b></p><p class=\"note\">{}</p></div>", escape(title), escape(text));
}

fn charts(page: &mut String, run: &Run) {
    page.push_str("<h2>Charts</h2>\n");
    let steps = chart::downsample(&run.steps.iter().collect::<Vec<&Step>>());
    if steps.len() < run.steps.len() {
        let _ = writeln!(
            page,
            "<p class=\"note\">{} steps: the charts show one step in every {} (a plain stride, plus the last step), so short spikes between them may not appear; the statistics cover every step.</p>",
            run.steps.len(),
            chart::stride(run.steps.len())
        );
    }
    page.push_str("<div class=\"charts\">\n");
    let xy = |f: &dyn Fn(&Step) -> Option<f64>| -> Vec<(f64, f64)> { steps.iter().filter_map(|s| Some((s.step as f64, f(s)?))).collect() };
    let plain = |v: f64| format!("{v:.2}");
    let vals: Vec<&Step> = run.steps.iter().filter(|s| s.val_loss.is_some()).collect();
    let val_points: Vec<(f64, f64)> = chart::downsample(&vals).iter().filter_map(|s| Some((s.step as f64, s.val_loss?))).collect();
    let loss = Chart {
        title: "Loss",
        x_desc: "step",
        y_desc: "loss",
        series: vec![
            Series::new("train", chart::BLUE, Kind::Line, xy(&|s| s.loss)),
            Series::new("validation", chart::ORANGE, Kind::Markers, val_points),
        ],
        hlines: vec![],
        y_fmt: &plain,
    };
    figure(page, &loss, "no finite loss recorded");
    let scored: Vec<&Step> = run.steps.iter().filter(|s| s.hellaswag_examples.is_some()).collect();
    if !scored.is_empty() {
        let points = |f: fn(&Step) -> Option<f64>| -> Vec<(f64, f64)> { scored.iter().filter_map(|s| Some((s.step as f64, 100.0 * f(s)?))).collect() };
        let percent = |v: f64| format!("{v:.1}");
        let chart = Chart {
            title: "HellaSwag",
            x_desc: "step",
            y_desc: "accuracy (%)",
            series: vec![
                Series::new("acc_norm", chart::BLUE, Kind::Line, points(|s| s.hellaswag_acc_norm)),
                Series::new("acc", chart::GREEN, Kind::Line, points(|s| s.hellaswag_acc)),
                Series::new("llmc_acc_norm", chart::ORANGE, Kind::Line, points(|s| s.hellaswag_llmc_acc_norm)),
            ]
            .into_iter()
            // An llm.c .bin has no lm-eval-harness rendering.
            .filter(|s| !s.points.is_empty())
            .collect(),
            hlines: vec![("chance".to_string(), 25.0)],
            y_fmt: &percent,
        };
        figure(page, &chart, "no HellaSwag accuracy recorded");
    }
    let thousands_fmt = |v: f64| thousands(v);
    let throughput = Chart {
        title: "Throughput",
        x_desc: "step",
        y_desc: "tokens/s",
        series: vec![Series::new("tokens/s", chart::GREEN, Kind::Line, xy(&|s| s.tokens_per_s))],
        hlines: vec![],
        y_fmt: &thousands_fmt,
    };
    figure(page, &throughput, "no finite throughput recorded");
    let percent = |v: f64| format!("{v:.1}");
    let mfu = xy(&|s| s.mfu.map(|m| m * 100.0));
    if mfu.is_empty() {
        let source = run.summary.as_ref().map_or("no summary.json to say why".into(), |s| s.peak_tflops_source.clone());
        note(page, "MFU", &format!("MFU unknown: {}", source.trim_start_matches("unknown: ")));
    } else {
        let chart = Chart { title: "MFU", x_desc: "step", y_desc: "MFU (%)", series: vec![Series::new("MFU", chart::PURPLE, Kind::Line, mfu)], hlines: vec![], y_fmt: &percent };
        figure(page, &chart, "");
    }
    // In MiB before plotting, so that the ticks fall on round MiB values.
    let mib = |v: f64| format!("{v:.0}");
    let mb = |bytes: u64| bytes as f64 / 1048576.0;
    let budget = run.steps.iter().rev().find_map(|s| s.memory.budget);
    let memory = Chart {
        title: "Memory (device pool)",
        x_desc: "step",
        y_desc: "MiB",
        series: vec![
            Series::new("reserved", chart::GREY, Kind::Line, xy(&|s| Some(mb(s.memory.reserved)))),
            Series::new("peak", chart::ORANGE, Kind::Line, xy(&|s| Some(mb(s.memory.peak)))),
            Series::new("in use", chart::BLUE, Kind::Line, xy(&|s| Some(mb(s.memory.in_use)))),
        ],
        hlines: budget.map(|b| ("budget".to_string(), mb(b))).into_iter().collect(),
        y_fmt: &mib,
    };
    figure(page, &memory, "no memory recorded");
    step_time(page, &steps);
    telemetry(page, run.telemetry.as_deref());
    page.push_str("</div>\n");
}

/// A band of the step-time chart: label, colour, its milliseconds in a step.
type Part = (&'static str, chart::Rgb, fn(&Step) -> f64);

/// Stacked areas of the step's parts when the split was measured, else step and data wait.
fn step_time(page: &mut String, steps: &[&Step]) {
    let ms = |v: f64| format!("{v:.0}");
    let split = steps.iter().any(|s| s.forward_ms.is_some() || s.backward_ms.is_some() || s.optimizer_ms.is_some());
    let total = Series::new("step", chart::GREY, Kind::Line, steps.iter().map(|s| (s.step as f64, s.step_ms)));
    let mut series = Vec::new();
    let title = if split {
        // Cumulative sums drawn from the top down, so each part shows as its own band.
        let parts: [Part; 4] = [
            ("optimizer", chart::PURPLE, |s| s.optimizer_ms.unwrap_or(0.0)),
            ("backward", chart::ORANGE, |s| s.backward_ms.unwrap_or(0.0)),
            ("forward", chart::BLUE, |s| s.forward_ms.unwrap_or(0.0)),
            ("data wait", chart::VERMILION, |s| s.data_wait_ms),
        ];
        for (i, (label, color, _)) in parts.iter().enumerate() {
            let points = steps.iter().map(|s| (s.step as f64, parts[i..].iter().map(|p| p.2(s)).sum::<f64>()));
            series.push(Series::new(label, *color, Kind::Area, points));
        }
        series.push(total);
        "Step time split (stacked)"
    } else {
        series.push(total);
        series.push(Series::new("data wait", chart::VERMILION, Kind::Line, steps.iter().map(|s| (s.step as f64, s.data_wait_ms))));
        "Step time (split unavailable: forward/backward/optimizer not timed on this device)"
    };
    let chart = Chart { title, x_desc: "step", y_desc: "ms", series, hlines: vec![], y_fmt: &ms };
    figure(page, &chart, "no step times recorded");
}

fn telemetry(page: &mut String, samples: Option<&[Sample]>) {
    let Some(samples) = samples.filter(|s| !s.is_empty()) else {
        let why = if samples.is_some() { "telemetry.jsonl is empty" } else { "no telemetry.jsonl in the run directory" };
        note(page, "GPU", &format!("no GPU telemetry ({why})"));
        note(page, "Host", &format!("no host telemetry ({why})"));
        return;
    };
    let samples = chart::downsample(&samples.iter().collect::<Vec<&Sample>>());
    let mut gpus: BTreeMap<u32, Vec<&Sample>> = BTreeMap::new();
    for s in &samples {
        if let Some(g) = &s.gpu {
            gpus.entry(g.index).or_default().push(s);
        }
    }
    if gpus.is_empty() {
        note(page, "GPU", "no GPU telemetry (no sample has a GPU: a CPU run, or the GPU could not be queried)");
    } else {
        let colors = [chart::BLUE, chart::ORANGE, chart::GREEN, chart::PURPLE, chart::VERMILION, chart::GREY];
        let per_gpu = |f: fn(&super::Gpu) -> Option<f64>| -> Vec<Series> {
            gpus.iter()
                .enumerate()
                .map(|(i, (index, s))| {
                    let points = s.iter().filter_map(|s| Some((s.time_s, f(s.gpu.as_ref()?)?)));
                    Series::new(&format!("GPU {index}"), colors[i % colors.len()], Kind::Line, points)
                })
                .collect()
        };
        let whole = |v: f64| format!("{v:.0}");
        for (title, unit, f) in [
            ("GPU utilization", "%", (|g| g.utilization_pct.map(f64::from)) as fn(&super::Gpu) -> Option<f64>),
            ("GPU power", "W", |g| g.power_w),
            ("GPU temperature", "°C", |g| g.temperature_c.map(f64::from)),
        ] {
            let chart = Chart { title, x_desc: "time (s)", y_desc: unit, series: per_gpu(f), hlines: vec![], y_fmt: &whole };
            figure(page, &chart, &format!("no GPU telemetry (the samples have no {})", title.to_lowercase()));
        }
    }
    let host: Vec<(f64, &super::Host)> = samples.iter().map(|s| (s.time_s, &s.host)).collect();
    let cpu_fmt = |v: f64| format!("{v:.0}");
    let cpu = Chart {
        title: "Host CPU",
        x_desc: "time (s)",
        y_desc: "CPU (%)",
        series: vec![Series::new("CPU", chart::GREEN, Kind::Line, host.iter().map(|(t, h)| (*t, h.cpu_pct)))],
        hlines: vec![],
        y_fmt: &cpu_fmt,
    };
    figure(page, &cpu, "no host telemetry (the samples have no host)");
    let mib = |v: f64| format!("{v:.0}");
    let rss = Chart {
        title: "Host memory (RSS)",
        x_desc: "time (s)",
        y_desc: "MiB",
        series: vec![Series::new("RSS", chart::BLUE, Kind::Line, host.iter().map(|(t, h)| (*t, h.rss as f64 / 1048576.0)))],
        hlines: vec![],
        y_fmt: &mib,
    };
    figure(page, &rss, "no host telemetry (the samples have no host)");
    let mut throttles: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for s in &samples {
        for r in s.gpu.iter().flat_map(|g| &g.throttle_reasons) {
            throttles.entry(r).or_insert((0, s.step)).0 += 1;
        }
    }
    if !throttles.is_empty() {
        let list: Vec<String> = throttles.iter().map(|(r, (n, first))| format!("{r}: {n} samples, first at step {first}")).collect();
        note(page, "GPU throttling", &list.join("; "));
    }
}

fn alerts(page: &mut String, run: &Run) {
    page.push_str("<h2>Alerts</h2>\n");
    let from_events: Vec<&super::Alert> = run.events.iter().flatten().filter_map(|e| if let Event::Alert(a) = e { Some(a) } else { None }).collect();
    // events.jsonl has every invocation's alerts; summary.json only the last one's.
    let list = if from_events.is_empty() { run.summary.iter().flat_map(|s| &s.alerts).collect() } else { from_events };
    if list.is_empty() {
        page.push_str("<p class=\"note\">No alerts.</p>\n");
        return;
    }
    page.push_str("<table class=\"alerts\">\n<tr><th class=\"num\">step</th><th>kind</th><th>message</th></tr>\n");
    for a in list {
        let _ = writeln!(page, "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>", a.step, escape(&a.kind), escape(&a.message));
    }
    page.push_str("</table>\n");
}

/// `train.sample_interval`'s samples, in step order: the prompt, then the generated text.
fn samples(page: &mut String, run: &Run) {
    let samples: Vec<&super::TextSample> =
        run.events.iter().flatten().filter_map(|e| if let Event::TextSample(s) = e { Some(s) } else { None }).collect();
    if samples.is_empty() {
        return;
    }
    page.push_str("<h2>Samples</h2>\n<table>\n<tr><th class=\"num\">step</th><th class=\"num\">seed</th><th>prompt, then the generated text</th></tr>\n");
    for s in samples {
        let _ = writeln!(
            page,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td><pre style=\"white-space: pre-wrap; margin: 0\"><b>{}</b>{}</pre><span class=\"note\">{} tokens</span></td></tr>",
            s.step,
            s.seed,
            escape(&s.prompt),
            escape(&s.text),
            s.tokens
        );
    }
    page.push_str("</table>\n");
}

fn events(page: &mut String, run: &Run) {
    let events = run.events.as_deref().unwrap_or_default();
    page.push_str("<h2>Plan changes</h2>\n");
    let changes: Vec<&super::PlanChange> = events.iter().filter_map(|e| if let Event::PlanChange(c) = e { Some(c) } else { None }).collect();
    if changes.is_empty() {
        page.push_str("<p class=\"note\">The plan did not change during the run.</p>\n");
    } else {
        page.push_str("<table>\n<tr><th class=\"num\">step</th><th>from</th><th>to</th><th>error</th></tr>\n");
        for c in changes {
            let _ = writeln!(
                page,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                c.step,
                escape(&format!("micro-batch {}, recompute {}", c.from_micro_batch, c.from_policy)),
                escape(&format!("micro-batch {} × {} accumulation, recompute {}", c.to_micro_batch, c.to_grad_accum, c.to_policy)),
                escape(&c.error)
            );
        }
        page.push_str("</table>\n");
    }
    page.push_str("<h2>Checkpoints</h2>\n");
    let saved: Vec<&super::Checkpoint> = events.iter().filter_map(|e| if let Event::Checkpoint(c) = e { Some(c) } else { None }).collect();
    if !saved.is_empty() {
        page.push_str("<table>\n<tr><th class=\"num\">step</th><th>path</th></tr>\n");
        for c in saved {
            let _ = writeln!(page, "<tr><td class=\"num\">{}</td><td><code>{}</code></td></tr>", c.step, escape(&c.path));
        }
        page.push_str("</table>\n");
    }
    if run.checkpoints_on_disk.is_empty() {
        page.push_str("<p class=\"note\">No checkpoint directories under checkpoints/.</p>\n");
    } else {
        let names: Vec<String> = run
            .checkpoints_on_disk
            .iter()
            .map(|n| if run.latest_checkpoint.as_deref() == Some(n) { format!("<code>{}</code> (latest)", escape(n)) } else { format!("<code>{}</code>", escape(n)) })
            .collect();
        let _ = writeln!(page, "<p>On disk under checkpoints/: {}</p>", names.join(", "));
    }
    let other: Vec<(&String, &String)> = events.iter().filter_map(|e| if let Event::Other { kind, json } = e { Some((kind, json)) } else { None }).collect();
    if !other.is_empty() {
        page.push_str("<h2>Other events</h2>\n<table>\n<tr><th>event</th><th>as logged</th></tr>\n");
        for (kind, json) in other {
            let _ = writeln!(page, "<tr><td>{}</td><td><code>{}</code></td></tr>", escape(kind), escape(json));
        }
        page.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Alert, Gpu, Host, Memory, Summary};
    use super::*;

    fn step(n: u64) -> Step {
        Step {
            step: n,
            time_s: n as f64 * 0.15,
            loss: Some(5.0 - n as f64 * 0.001),
            val_loss: n.is_multiple_of(10).then_some(4.0),
            lr: Some(1e-3),
            grad_norm: Some(1.0),
            tokens: 4096,
            tokens_per_s: Some(28000.0 + n as f64),
            mfu: None,
            step_ms: 140.0,
            data_wait_ms: 0.5,
            forward_ms: Some(50.0),
            backward_ms: Some(88.0),
            optimizer_ms: Some(1.5),
            memory: Memory { in_use: 13 << 20, peak: 190 << 20, reserved: 200 << 20, budget: None },
            micro_batch: 32,
            grad_accum: 1,
            recompute: "none".into(),
            hellaswag_acc: None,
            hellaswag_acc_norm: None,
            hellaswag_llmc_acc_norm: None,
            hellaswag_examples: None,
        }
    }

    fn run(steps: u64) -> Run {
        Run { dir: "runs/test".into(), steps: (1..=steps).map(step).collect(), ..Default::default() }
    }

    fn sample(t: f64, gpu: bool) -> Sample {
        Sample {
            time_s: t,
            step: t as u64,
            gpu: gpu.then(|| Gpu {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                utilization_pct: Some(97),
                memory_used: Some(70 << 30),
                memory_total: Some(80 << 30),
                power_w: Some(650.5),
                temperature_c: Some(71),
                sm_clock_mhz: Some(1980),
                throttle_reasons: if t > 2.0 { vec!["sw_thermal".into()] } else { vec![] },
            }),
            host: Host { cpu_pct: 180.0, process_cpu_pct: 150.0, rss: 3 << 30, disk_free: None },
        }
    }

    /// Every `<svg>...</svg>` block of the page, each parsed as XML.
    fn svgs(page: &str) -> Vec<&str> {
        let blocks: Vec<&str> = page.match_indices("<svg").map(|(i, _)| &page[i..i + page[i..].find("</svg>").unwrap() + 6]).collect();
        for b in &blocks {
            roxmltree::Document::parse(b).unwrap_or_else(|e| panic!("not well-formed: {e}\n{}", &b[..200.min(b.len())]));
        }
        blocks
    }

    /// The points of the train loss line of `svg` (blue, 2 wide; the legend's sample is 3 wide).
    fn polyline_points(svg: &str) -> usize {
        let doc = roxmltree::Document::parse(svg).unwrap();
        let is_loss = |n: &roxmltree::Node| n.has_tag_name("polyline") && n.attribute("stroke") == Some("#0072B2") && n.attribute("stroke-width") == Some("2");
        let line = doc.descendants().find(is_loss).expect("the loss polyline");
        line.attribute("points").unwrap().split_whitespace().count()
    }

    #[test]
    fn one_well_formed_svg_per_chart() {
        // CPU run, no telemetry: loss, throughput, memory, step time; MFU and GPU/host are notes.
        let page = render(&run(50));
        assert_eq!(svgs(&page).len(), 4);
        assert!(page.contains("MFU unknown: no summary.json to say why"));
        // With MFU and GPU telemetry: + MFU, GPU utilization/power/temperature, host CPU/RSS.
        let mut r = run(50);
        r.steps.iter_mut().for_each(|s| s.mfu = Some(0.4));
        r.telemetry = Some((0..20).map(|t| sample(t as f64 * 0.5, true)).collect());
        let page = render(&r);
        let blocks = svgs(&page);
        assert_eq!(blocks.len(), 10);
        for title in ["Loss", "MFU", "Memory (device pool)", "GPU utilization", "GPU power", "GPU temperature", "Host CPU", "Host memory (RSS)"] {
            assert_eq!(blocks.iter().filter(|b| b.contains(&format!(">\n{title}\n</text>"))).count(), 1, "{title}");
        }
        assert!(page.contains("NVIDIA H100 80GB HBM3") && page.contains("sw_thermal: 15 samples, first at step 2"));
        assert!(!page.contains("no GPU telemetry"));
    }

    #[test]
    fn hellaswag_gets_a_chart_and_a_row_only_when_scored() {
        let page = render(&run(50));
        assert!(!page.contains("HellaSwag"));
        let mut r = run(50);
        for s in r.steps.iter_mut().filter(|s| s.step % 20 == 0) {
            (s.hellaswag_acc, s.hellaswag_acc_norm, s.hellaswag_llmc_acc_norm, s.hellaswag_examples) = (Some(0.25), Some(0.3), Some(0.28), Some(100));
        }
        let page = render(&r);
        let blocks = svgs(&page);
        assert_eq!(blocks.len(), 5);
        let chart = blocks.iter().find(|b| b.contains(">\nHellaSwag\n</text>")).expect("a HellaSwag chart");
        assert!(chart.contains("acc_norm") && chart.contains("llmc_acc_norm") && chart.contains("chance"));
        assert!(page.contains("step 40: acc_norm 30.00 %, acc 25.00 % (lm-eval-harness); llmc_acc_norm 28.00 % (100 examples)"), "{page}");
    }

    #[test]
    fn the_loss_line_has_a_point_per_finite_step() {
        let mut r = run(30);
        r.steps[7].loss = None; // NaN in the run: null in metrics.jsonl
        assert_eq!(polyline_points(svgs(&render(&r))[0]), 29);
        // 5000 steps are strided by 3 (and keep the last): 1667 + 1 points.
        let page = render(&run(5000));
        assert_eq!(polyline_points(svgs(&page)[0]), 1668);
        assert!(page.contains("one step in every 3 (a plain stride"), "the page says it strides");
        // One step: a chart all the same, with one point.
        assert_eq!(polyline_points(svgs(&render(&run(1)))[0]), 1);
    }

    #[test]
    fn the_table_shows_the_summary_numbers() {
        let summary: Summary = serde_json::from_str(
            r#"{"steps":60,"warmup_steps_excluded":2,"first_step":1,"last_step":60,"tokens":245760,"wall_seconds":11.7,"train_seconds":8.58,
            "final_loss":2.5582955,"final_val_loss":null,"peak_tflops":null,"peak_tflops_source":"unknown: cpu (set logs.peak_tflops for MFU)","alerts":[],
            "metrics":{"tokens_per_s":{"count":58,"mean":28837.43,"min":25522.2,"max":30467.0,"std":919.65,"p50":28960.8,"p95":30181.6},
            "memory_peak":{"count":58,"mean":196227072.0,"min":196227072.0,"max":196227072.0,"std":0.0,"p50":196227072.0,"p95":196227072.0},
            "mfu":{"count":58,"mean":0.41234,"min":0.4,"max":0.5,"std":0.01,"p50":0.41,"p95":0.49},
            "step_ms":{"count":58,"mean":142.186,"min":134.44,"max":160.48,"std":4.66,"p50":141.43,"p95":148.59},
            "data_wait_ms":{"count":58,"mean":0.00723,"min":0.000779,"max":0.169,"std":0.0287,"p50":0.0018,"p95":0.0029},
            "loss":{"count":58,"mean":3.27677,"min":null,"max":5.2664,"std":0.8375,"p50":2.8398,"p95":4.9012}}}"#,
        )
        .unwrap();
        let mut r = run(60);
        r.summary = Some(summary);
        let page = render(&r);
        let row = |key: &str| {
            let start = page.find(&format!("<tr id=\"stat-{key}\">")).unwrap_or_else(|| panic!("no row {key}"));
            let cells: Vec<String> = page[start..start + page[start..].find("</tr>").unwrap()]
                .split("<td")
                .skip(1)
                .map(|c| c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()].to_string())
                .collect();
            cells
        };
        assert_eq!(row("tokens_per_s"), ["throughput", "28,837 tok/s", "25,522 tok/s", "30,467 tok/s", "920 tok/s", "28,961 tok/s", "30,182 tok/s", "58"]);
        assert_eq!(row("memory_peak")[1..3], ["187.14 MiB", "187.14 MiB"]);
        assert_eq!(row("memory_peak")[4], "0 B");
        assert_eq!(row("mfu")[1..3], ["41.23 %", "40.00 %"]);
        assert_eq!(row("step_ms")[1..4], ["142.2 ms", "134.4 ms", "160.5 ms"]);
        assert_eq!(row("data_wait_ms")[1..3], ["0.0072 ms", "0.0008 ms"]);
        assert_eq!(row("loss")[1..3], ["3.2768", "–"], "a null (non-finite) statistic is a dash");
        assert!(page.contains("MFU unknown: cpu (set logs.peak_tflops for MFU)"));
        assert!(page.contains("11.7 s (of which steps 8.6 s)"));
        assert!(!render(&run(60)).contains("<table class=\"stats\">") && render(&run(60)).contains("No summary.json"));
    }

    #[test]
    fn missing_telemetry_and_missing_gpu_are_said() {
        let page = render(&run(5));
        assert!(page.contains("no GPU telemetry (no telemetry.jsonl in the run directory)"));
        assert!(page.contains("no host telemetry (no telemetry.jsonl in the run directory)"));
        let mut r = run(5);
        r.telemetry = Some((0..4).map(|t| sample(t as f64, false)).collect());
        let page = render(&r);
        assert!(page.contains("no GPU telemetry (no sample has a GPU"));
        assert_eq!(svgs(&page).len(), 6, "loss, throughput, memory, step time, host CPU, host RSS");
    }

    #[test]
    fn no_url_no_script_and_text_is_escaped() {
        let mut r = run(20);
        r.events = Some(vec![Event::Alert(Alert {
            step: 3,
            kind: "loss_spike".into(),
            message: "<script>alert(1)</script> & more".into(),
            value: None,
            threshold: Some(2.0),
        })]);
        r.telemetry = Some((0..4).map(|t| sample(t as f64, true)).collect());
        let page = render(&r);
        for bad in ["http://", "https://", "<script"] {
            assert!(!page.contains(bad), "{bad} in the page");
        }
        assert!(page.contains("<td class=\"num\">3</td><td>loss_spike</td><td>&lt;script&gt;alert(1)&lt;/script&gt; &amp; more</td>"));
    }

    #[test]
    fn samples_are_shown_in_step_order_and_escaped() {
        let mut r = run(20);
        assert!(!render(&r).contains("<h2>Samples</h2>"), "no section without samples");
        let sample = |step: u64, text: &str| {
            Event::TextSample(super::super::TextSample { step, seed: 1337 + step, prompt: "A<".into(), tokens: 3, text: text.into() })
        };
        r.events = Some(vec![sample(10, "x</pre><script>"), sample(20, "two & more")]);
        let page = render(&r);
        assert!(!page.contains("<script"), "the text is escaped");
        let first = page.find("<b>A&lt;</b>x&lt;/pre&gt;&lt;script&gt;</pre>").expect("step 10's sample");
        let second = page.find("<b>A&lt;</b>two &amp; more</pre>").expect("step 20's sample");
        assert!(first < second);
        assert!(page.contains("<td class=\"num\">10</td><td class=\"num\">1347</td>"));
    }

    #[test]
    fn step_time_split_or_not() {
        let page = render(&run(10));
        assert!(page.contains("Step time split (stacked)") && page.contains(">\nforward\n</text>"));
        let mut r = run(10);
        r.steps.iter_mut().for_each(|s| (s.forward_ms, s.backward_ms, s.optimizer_ms) = (None, None, None));
        let page = render(&r);
        assert!(page.contains("split unavailable") && !page.contains(">\nforward\n</text>"));
        // No steps at all: notes instead of charts, still a whole page.
        let page = render(&run(0));
        assert_eq!(svgs(&page).len(), 0);
        assert!(page.contains("no finite loss recorded") && page.contains("none recorded (metrics.jsonl is empty)"));
    }
}
