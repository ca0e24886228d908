//! Seed 003's workload (8,760 hourly tasks over a shared array) and its rows: against
//! Python's Pool with numpy, and against the same map on threads of one process.

use super::*;

pub(crate) const HOURS: usize = 8760;
pub(crate) const COLUMNS: usize = 16;

/// The `weather_hours` example's worker, repeated here: examples and benches share no code.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(batches(Hour))]
pub(crate) struct Station {
    pub(crate) data: SharedSlice<f64>,
}

#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "(f64, f64)")]
pub(crate) struct Hour(pub(crate) usize);

impl ProcessHandler<Hour> for Station {
    fn handle(&mut self, Hour(hour): Hour, _: &mut ProcessContext<Self>) -> (f64, f64) {
        summarise(&self.data, hour)
    }
}

/// Mean of the row sums and the largest value of one hour's block of rows.
pub(crate) fn summarise(data: &[f64], hour: usize) -> (f64, f64) {
    let rows = data.len() / COLUMNS;
    let (first, last) = (hour * rows / HOURS, (hour + 1) * rows / HOURS);
    let mut sums = [0.0f64; COLUMNS];
    let mut maxes = [f64::NEG_INFINITY; COLUMNS];
    for row in data[first * COLUMNS..last * COLUMNS].chunks_exact(COLUMNS) {
        for c in 0..COLUMNS {
            sums[c] += row[c];
            if row[c] > maxes[c] {
                maxes[c] = row[c];
            }
        }
    }
    let max = maxes.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (sums.iter().sum::<f64>() / (last - first).max(1) as f64, max)
}

pub(crate) fn weather_input(rows: usize) -> SharedSlice<f64> {
    let mut data = SharedSliceMut::<f64>::new(rows * COLUMNS).unwrap();
    for (i, x) in data.iter_mut().enumerate() {
        *x = ((i * 7919) % 1000) as f64 / 10.0 - 20.0;
    }
    data.freeze().unwrap()
}

/// Runs `benches/python/weather_hours.py` with `args` and reads the sample lists named `keys`
/// from its JSON line; `None` (and a line saying why) when python3 or numpy is missing.
fn python_weather(args: &[String], keys: &[&str]) -> Option<Vec<Vec<f64>>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/weather_hours.py");
    let output = Command::new("python3").arg(script).args(args).env_remove(ROLE).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    if !output.status.success() || json.get("skipped").is_some() || json.is_null() {
        println!("weather_hours: Python side skipped ({})", text.trim());
        return None;
    }
    let numbers = |key: &str| -> Option<Vec<f64>> {
        json.get(key)?.as_array()?.iter().map(serde_json::Value::as_f64).collect()
    };
    keys.iter().map(|key| numbers(key)).collect()
}

/// Seed 003 at 1e6 x 16: the warm map phase, and the whole job cold, against Python.
pub(crate) fn weather_hours(rt: &actix_rt::SystemRunner, reps: usize) -> Vec<Row> {
    const ROWS: usize = 1_000_000;
    let args = [ROWS.to_string(), "2".into(), reps.to_string()];
    let Some(samples) = python_weather(&args, &["map_ns", "cold_ns"]) else { return Vec::new() };
    let [python_map, python_cold]: [Vec<f64>; 2] = samples.try_into().expect("two lists");
    let config = || FarmConfig { workers: 2, progress: false, ..FarmConfig::default() };
    let input = weather_input(ROWS);
    let shared = input.clone();
    let farm = rt.block_on(Farm::start(config(), move |_| Station { data: shared.clone() })).unwrap();
    rt.block_on(farm.map((0..HOURS).map(Hour))).unwrap(); // workers up, input mapped and touched
    let warm: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(rt.block_on(farm.map((0..HOURS).map(Hour))).unwrap().len(), HOURS);
            per_op(start, 1)
        })
        .collect();
    rt.block_on(farm.shutdown()).unwrap();
    drop(input);
    let cold: Vec<f64> = (0..python_cold.len())
        .map(|_| {
            let start = Instant::now();
            let input = weather_input(ROWS);
            let farm = rt.block_on(Farm::start(config(), move |_| Station { data: input.clone() })).unwrap();
            assert_eq!(rt.block_on(farm.map((0..HOURS).map(Hour))).unwrap().len(), HOURS);
            rt.block_on(farm.shutdown()).unwrap();
            per_op(start, 1)
        })
        .collect();
    vec![
        Row {
            scenario: "weather_hours".into(),
            ensemble: stats(warm),
            baseline: stats(python_map),
            target: None,
        },
        Row {
            scenario: "weather_hours_cold".into(),
            ensemble: stats(cold),
            baseline: stats(python_cold),
            target: None,
        },
    ]
}

/// Seed 003 at its original size (1e7 x 16, 1.28 GB): the farm's warm map against the same map
/// on as many threads of one process (contiguous shares of the hours), over the same array.
/// Both are bound by memory bandwidth: this row shows what the farm's processes cost on top.
pub(crate) fn weather_hours_vs_threads(rt: &actix_rt::SystemRunner, reps: usize) -> Row {
    const ROWS: usize = 10_000_000;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let input = weather_input(ROWS);
    let shared = input.clone();
    let config = FarmConfig { workers, progress: false, ..FarmConfig::default() };
    let farm = rt.block_on(Farm::start(config, move |_| Station { data: shared.clone() })).unwrap();
    let expected = rt.block_on(farm.map((0..HOURS).map(Hour))).unwrap(); // workers warm
    let threads = |data: &[f64]| -> Vec<(f64, f64)> {
        std::thread::scope(|scope| {
            let shares: Vec<_> = (0..workers)
                .map(|w| {
                    let hours = w * HOURS / workers..(w + 1) * HOURS / workers;
                    scope.spawn(move || hours.map(|hour| summarise(data, hour)).collect::<Vec<_>>())
                })
                .collect();
            shares.into_iter().flat_map(|share| share.join().unwrap()).collect()
        })
    };
    assert_eq!(threads(&input), expected); // this process's view warm too
    let (ens, base) = interleave(
        reps,
        || {
            let start = Instant::now();
            assert_eq!(rt.block_on(farm.map((0..HOURS).map(Hour))).unwrap().len(), HOURS);
            per_op(start, 1)
        },
        || {
            let start = Instant::now();
            assert_eq!(threads(&input).len(), HOURS);
            per_op(start, 1)
        },
    );
    rt.block_on(farm.shutdown()).unwrap();
    Row { scenario: "weather_hours_vs_threads".into(), ensemble: ens, baseline: base, target: None }
}

/// Seed 003 at its original size, the whole job once more but with the input already in memory:
/// farm start + first map + shutdown, against Python's `Pool` over a fork-inherited numpy array
/// (start + map + teardown). The cost here is in page tables: each worker maps 1.28 GB it has
/// never touched, and tears those mappings down when it exits.
pub(crate) fn weather_hours_full_cold(rt: &actix_rt::SystemRunner, reps: usize) -> Option<Row> {
    const ROWS: usize = 10_000_000;
    let args = [ROWS.to_string(), "2".into(), reps.to_string(), "full-cold".into()];
    let [python]: [Vec<f64>; 1] = python_weather(&args, &["full_cold_ns"])?.try_into().expect("one list");
    let input = weather_input(ROWS);
    let samples = (0..reps)
        .map(|_| {
            let shared = input.clone();
            let config = FarmConfig { workers: 2, progress: false, ..FarmConfig::default() };
            let start = Instant::now();
            let farm = rt.block_on(Farm::start(config, move |_| Station { data: shared.clone() })).unwrap();
            assert_eq!(rt.block_on(farm.map((0..HOURS).map(Hour))).unwrap().len(), HOURS);
            rt.block_on(farm.shutdown()).unwrap();
            per_op(start, 1)
        })
        .collect();
    Some(Row {
        scenario: "weather_hours_full_cold".into(),
        ensemble: stats(samples),
        baseline: stats(python),
        target: None,
    })
}
