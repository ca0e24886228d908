//! Measuring: rows, interleaved batches, medians and p99, the table and the JSON report.

use super::*;

/// Every scenario's target, in one place: the ratio of ensemble's median to its baseline's
/// to stay at or under (see `benches/README.md` for what each scenario measures). A row is
/// held to the entry whose name is the longest prefix of its own; a row with none is
/// informational.
pub(crate) const TARGETS: &[(&str, f64)] = &[
    ("call_roundtrip", 1.3),
    ("call_vs_reactor", 1.3),
    ("oneway_throughput", 1.2),
    ("spawn_stop", 3.0),
    ("restart_latency", 1.5),
    ("handover_small", 3.0),
    ("handover_64MiB", 0.05),
    ("handover_1GiB", 0.005),
    ("farm_tiny_tasks", 1.0),
    ("weather_hours", 0.1),
    ("weather_hours_cold", 1.0),
    ("weather_hours_vs_threads", 1.15),
    ("weather_hours_full_cold", 1.0),
    ("ring_1MiB_frames", 2.0),
    ("ring_small_msgs", 0.1),
    ("ring_wakeup", 1.5),
    ("fast_lane_roundtrip.split-cpu", 10.0),
    ("fast_lane_idle_cpu", 1.5),
];

/// The target of `scenario` (see [`TARGETS`]).
pub(crate) fn target(scenario: &str) -> Option<f64> {
    TARGETS
        .iter()
        .filter(|(name, _)| scenario.starts_with(name) && !scenario.contains("(info)"))
        .max_by_key(|(name, _)| name.len())
        .map(|(_, target)| *target)
}

pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) ensemble: Stats,
    pub(crate) baseline: Stats,
    /// The ratio to stay at or under; `None` for a row that is informational.
    pub(crate) target: Option<f64>,
}

#[derive(Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) p99: f64,
}

impl Row {
    pub(crate) fn ratio(&self) -> f64 {
        self.ensemble.median / self.baseline.median
    }
}

pub(crate) fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats { median: at(0.5), p99: at(0.99) }
}

/// Runs `a` and `b` alternately `reps` times; each returns ns per operation for one batch.
pub(crate) fn interleave(
    reps: usize,
    mut a: impl FnMut() -> f64,
    mut b: impl FnMut() -> f64,
) -> (Stats, Stats) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Alternate which side goes first so that neither always follows the other.
        if rep % 2 == 0 {
            xs.push(a());
            ys.push(b());
        } else {
            ys.push(b());
            xs.push(a());
        }
    }
    (stats(xs), stats(ys))
}

/// [`interleave`] for any number of sides: each rep runs every side once, and which side
/// goes first rotates from rep to rep. Returns the stats of each side, in order.
pub(crate) fn interleave_all(reps: usize, sides: &mut [Box<dyn FnMut() -> f64 + '_>]) -> Vec<Stats> {
    let mut samples = vec![Vec::with_capacity(reps); sides.len()];
    for rep in 0..reps {
        for k in 0..sides.len() {
            let side = (rep + k) % sides.len();
            samples[side].push(sides[side]());
        }
    }
    samples.into_iter().map(stats).collect()
}

pub(crate) fn per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// Adds the row named after the scenario, carrying the worse of its two placements.
pub(crate) fn worst_of(rows: &mut Vec<Row>, scenario: &str) {
    let worst = rows
        .iter()
        .filter(|r| r.scenario.starts_with(&format!("{scenario}.")))
        .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
        .map(|r| Row { scenario: scenario.to_owned(), ..*r });
    rows.extend(worst);
}

impl Clone for Row {
    fn clone(&self) -> Self {
        Row { scenario: self.scenario.clone(), ..*self }
    }
}

pub(crate) fn print_table(rows: &[Row]) {
    println!(
        "{:<34} {:>14} {:>14} {:>14} {:>14} {:>7} {:>7}  verdict",
        "scenario", "ensemble ns", "(p99)", "baseline ns", "(p99)", "ratio", "target"
    );
    for r in rows {
        let (target, verdict) = match r.target {
            Some(t) => (format!("{t:.3}"), if r.ratio() <= t { "meets" } else { "MISSES" }),
            None => ("-".to_owned(), "info"),
        };
        println!(
            "{:<34} {:>14.0} {:>14.0} {:>14.0} {:>14.0} {:>7.4} {:>7}  {verdict}",
            r.scenario,
            r.ensemble.median,
            r.ensemble.p99,
            r.baseline.median,
            r.baseline.p99,
            r.ratio(),
            target
        );
    }
}

pub(crate) fn write_json(rows: &[Row]) -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ensemble-compare.json");
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "scenario": r.scenario,
                "ensemble_ns": r.ensemble.median,
                "ensemble_p99_ns": r.ensemble.p99,
                "baseline_ns": r.baseline.median,
                "baseline_p99_ns": r.baseline.p99,
                "ratio": r.ratio(),
                "target_ratio": r.target,
            })
        })
        .collect();
    std::fs::write(&path, serde_json::to_string_pretty(&items).map_err(std::io::Error::other)?)?;
    Ok(path)
}
