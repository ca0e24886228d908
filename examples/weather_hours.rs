//! The workload of seed 003: 8,760 hourly tasks over one large read-only array, on a farm.
//!
//! In Python this is a `Pool` whose workers attach a `SharedMemory` block, wrap it in numpy,
//! and segfault when a view outlives the block. Here the input is a `SharedSlice<f64>` in every
//! worker's initial state (mapped once per worker, never copied), each task carries only its
//! hour, results come back in order, and views cannot outlive their mapping.
//!
//! Each hour reads its own block of rows (rows / 8760, about 114 at the default size) of 16
//! columns and computes the mean of the row sums and the largest value. The program prints the
//! time of each phase, tasks per second, and the map side by side with the same computation in
//! this one process, on one thread and on as many threads as the farm has workers (the limit
//! of the machine's memory bandwidth, which the farm cannot beat), and checks that all agree.
//!
//! Run: `cargo run --release --example weather_hours [-- --rows 10000000] [--workers N] [--batch N] [--fast-lane] [--populate]`
//!
//! `--populate` maps all of the input in each worker's `pre_run` ([`SharedSlice::populate`]):
//! the first map runs as fast as a warm one, and the start pays for it, more than the first map
//! saves (each worker maps all of the array, and reads only its share).
//!
//! `--fast-lane` spawns the workers with a fast lane. On a machine with as many CPUs as workers
//! it makes the map slower (measured 13-14 ms against 12.5-12.7 ms here): the parent spins for
//! each batch's results on a CPU a worker needs, and batches of several milliseconds leave no
//! round trip worth saving.
//! (`--rows 10000000` is the original 1.28 GB; `--quick` uses 100,000 rows).

use ensemble::farm::{BatchSize, Farm, FarmConfig};
use ensemble::prelude::*;
use std::time::Instant;

const HOURS: usize = 8760;
const COLUMNS: usize = 16;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(batches(Hour), hooks)]
struct Station {
    /// `rows x COLUMNS` values, row-major; mapped, not copied.
    data: SharedSlice<f64>,
    /// Map all of `data` in `pre_run`, rather than page by page during the first map.
    populate: bool,
}

impl Hooks for Station {
    fn pre_run(&mut self, _: &mut ProcessContext<Self>) -> Result<(), HookError> {
        if self.populate {
            self.data.populate()?;
        }
        Ok(())
    }
}

/// The hour whose block of rows to summarise.
#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Summary")]
struct Hour(usize);

/// Mean of the row sums, and the largest value, of one hour's block.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Summary {
    mean_row_sum: f64,
    max: f64,
}

impl ProcessHandler<Hour> for Station {
    fn handle(&mut self, Hour(hour): Hour, _: &mut ProcessContext<Self>) -> Summary {
        summarise(&self.data, hour)
    }
}

fn summarise(data: &[f64], hour: usize) -> Summary {
    let rows = data.len() / COLUMNS;
    let (first, last) = (hour * rows / HOURS, (hour + 1) * rows / HOURS);
    let block = &data[first * COLUMNS..last * COLUMNS];
    // One accumulator per column: independent lanes the compiler turns into vector operations.
    let mut sums = [0.0f64; COLUMNS];
    let mut maxes = [f64::NEG_INFINITY; COLUMNS];
    for row in block.chunks_exact(COLUMNS) {
        for c in 0..COLUMNS {
            sums[c] += row[c];
            if row[c] > maxes[c] {
                maxes[c] = row[c];
            }
        }
    }
    let max = maxes.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Summary { mean_row_sum: sums.iter().sum::<f64>() / (last - first).max(1) as f64, max }
}

/// The map on `workers` threads of this process, each a contiguous share of the hours.
fn on_threads(data: &[f64], workers: usize) -> Vec<Summary> {
    std::thread::scope(|scope| {
        let shares: Vec<_> = (0..workers)
            .map(|w| {
                let hours = w * HOURS / workers..(w + 1) * HOURS / workers;
                scope.spawn(move || hours.map(|hour| summarise(data, hour)).collect::<Vec<_>>())
            })
            .collect();
        shares.into_iter().flat_map(|share| share.join().expect("a thread")).collect()
    })
}

/// One turn of the warm comparison.
struct Turn {
    map: std::time::Duration,
    single: std::time::Duration,
    threads: std::time::Duration,
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn argument(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rows = argument("--rows").unwrap_or(if quick { 100_000 } else { 1_000_000 });
    let workers = argument("--workers").unwrap_or_else(|| FarmConfig::default().workers);
    println!(
        "{HOURS} hourly tasks over {rows} x {COLUMNS} float64 ({:.0} MB), {workers} workers",
        (rows * COLUMNS * 8) as f64 / 1e6
    );

    let t = Instant::now();
    let mut data = SharedSliceMut::<f64>::new(rows * COLUMNS)?;
    for (i, x) in data.iter_mut().enumerate() {
        // A cheap deterministic "temperature": varies by row and column.
        *x = ((i * 7919) % 1000) as f64 / 10.0 - 20.0;
    }
    let data = data.freeze().expect("one owner of the whole array");
    let fill = t.elapsed();

    let t = Instant::now();
    let input = data.clone();
    let batch = argument("--batch").map_or(BatchSize::Auto, BatchSize::Fixed);
    let fast_lane = std::env::args().any(|a| a == "--fast-lane");
    let populate = std::env::args().any(|a| a == "--populate");
    let farm = Farm::start(FarmConfig { workers, batch, fast_lane, ..FarmConfig::default() }, move |_| {
        Station { data: input.clone(), populate }
    })
    .await?;
    let start = t.elapsed();

    let t = Instant::now();
    let summaries = farm.map((0..HOURS).map(Hour)).await?;
    let first_map = t.elapsed();

    // As a long-running service sees each job: workers up, input already mapped and touched,
    // batch sizes learned (one more map settles them). Each warm map is short (~10 ms) and this
    // machine's neighbours are noisy: farm, one thread and threads run in turn, and the ratios
    // are medians of each turn's own ratio.
    farm.map((0..HOURS).map(Hour)).await?;
    let reps = if quick { 3 } else { 15 };
    let mut turns = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let again = farm.map((0..HOURS).map(Hour)).await?;
        let map = t.elapsed();
        anyhow::ensure!(again == summaries, "two runs disagree");
        let t = Instant::now();
        let local: Vec<Summary> = (0..HOURS).map(|hour| summarise(&data, hour)).collect();
        let single = t.elapsed();
        anyhow::ensure!(local == summaries, "the farm and the single process disagree");
        let t = Instant::now();
        let threaded = on_threads(&data, workers);
        let threads = t.elapsed();
        anyhow::ensure!(threaded == summaries, "the farm and the threads disagree");
        turns.push(Turn { map, single, threads });
    }
    let map = median(turns.iter().map(|t| t.map.as_secs_f64()));
    let single = median(turns.iter().map(|t| t.single.as_secs_f64()));
    let threads = median(turns.iter().map(|t| t.threads.as_secs_f64()));
    let speed_up = median(turns.iter().map(|t| t.single.as_secs_f64() / t.map.as_secs_f64()));
    let to_threads = median(turns.iter().map(|t| t.map.as_secs_f64() / t.threads.as_secs_f64()));

    let t = Instant::now();
    farm.shutdown().await?;
    let stop = t.elapsed();

    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!("fill input  {:>9.1} ms", ms(fill));
    println!("start farm  {:>9.1} ms", ms(start));
    println!("first map   {:>9.1} ms", ms(first_map));
    println!("stop farm   {:>9.1} ms", ms(stop));
    println!("the map, warm (median of {reps}):");
    println!("  one thread    {:>9.1} ms", single * 1e3);
    println!(
        "  {workers} threads     {:>9.1} ms   (the machine's limit: one process, shared memory bandwidth)",
        threads * 1e3
    );
    println!(
        "  farm          {:>9.1} ms   {:.0} tasks/s; speed-up over one thread {speed_up:.2}x, {to_threads:.2}x the threads' time",
        map * 1e3,
        HOURS as f64 / map,
    );
    println!(
        "hour 0: mean row sum {:.3}, max {:.1}; results identical to the single-process run",
        summaries[0].mean_row_sum, summaries[0].max
    );
    Ok(())
}
