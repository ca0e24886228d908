//! A request/response loop to a process actor, with and without a fast lane.
//!
//! `cargo run --release --example fast_lane [-- --calls N] [--split] [--lane-only]`
//!
//! Spawns the same `Pricer` twice, once with `SpawnOptions::fast_lane()`, and makes calls one
//! at a time to each, printing the median and p99 of a call and what the lane counted. With
//! `--split` the parent runs on CPU 0 and the children on CPU 1 (where spinning can pay; on one
//! shared CPU neither side spins and the lane sleeps like the socket).

use ensemble::prelude::*;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Quote))]
struct Pricer {
    spread: f64,
}

/// The price of `qty` units at `mid`.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "f64")]
struct Quote {
    mid: f64,
    qty: u32,
}

impl ProcessHandler<Quote> for Pricer {
    fn handle(&mut self, quote: Quote, _: &mut ProcessContext<Self>) -> f64 {
        (quote.mid + self.spread) * f64::from(quote.qty)
    }
}

async fn timed(pricer: &Remote<Pricer>, calls: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let start = Instant::now();
        let price = pricer.send(Quote { mid: 100.0, qty: i as u32 % 10 }).await.expect("a price");
        times.push(start.elapsed());
        assert!(price >= 0.0);
    }
    times.sort();
    times
}

fn at(times: &[Duration], q: f64) -> Duration {
    times[((times.len() - 1) as f64 * q) as usize]
}

#[ensemble::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let split = args.iter().any(|a| a == "--split");
    // Only the fast lane (to profile it alone).
    let lane_only = args.iter().any(|a| a == "--lane-only");
    let calls = args
        .iter()
        .skip_while(|a| *a != "--calls")
        .nth(1)
        .map_or(if quick { 2_000 } else { 20_000 }, |n| n.parse().expect("--calls N"));
    let mut options = SpawnOptions::new();
    if split {
        ensemble::runtime::pin_to_cpu(0).expect("pin to CPU 0");
        options = options.cpu(1);
    }
    let plain =
        ensemble::spawn_with(Pricer { spread: 0.5 }, options.clone().name("pricer-socket")).await.unwrap();
    let laned =
        ensemble::spawn_with(Pricer { spread: 0.5 }, options.name("pricer-lane").fast_lane()).await.unwrap();
    // Warm both up, then measure them in turn.
    let rounds = if lane_only { 0 } else { 1 };
    timed(&plain, rounds * calls / 10).await;
    timed(&laned, calls / 10).await;
    let (socket, lane) = (timed(&plain, rounds * calls).await, timed(&laned, calls).await);
    println!(
        "{calls} calls, one at a time ({}):",
        if split { "parent on CPU 0, children on CPU 1" } else { "unpinned" }
    );
    for (name, times) in [("socket", &socket), ("fast lane", &lane)] {
        if times.is_empty() {
            continue;
        }
        println!("  {name:<10} median {:>8.2?}  p99 {:>8.2?}", at(times, 0.5), at(times, 0.99));
    }
    let stats = laned.fast_lane_stats().expect("a fast lane");
    println!(
        "  the lane: {} frames sent, {} received; the parent's reader found {} frames by spinning, \
         missed {} spins, slept {} times ({} lost wake-ups)",
        stats.sent, stats.received, stats.spins_found, stats.spins_missed, stats.sleeps, stats.lost_wakeups
    );
    assert_eq!(stats.lost_wakeups, 0);
    plain.stop().await.unwrap();
    laned.stop().await.unwrap();
}
