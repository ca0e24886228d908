//! Streaming video frames between processes through a ring in shared memory (seed 004 part
//! III: libValkka's "synchronized sharedmem ringbuffers").
//!
//! A producer process writes 1920 x 1080 RGB frames (6.2 MB each) as fast as it can, straight
//! into the ring's slots; a consumer process checksums each frame in place. Nothing is copied
//! between them: each frame is written once and read once. The parent only makes the ring and
//! hands one end to each process in a message; then it waits for both reports.
//!
//! Every frame carries its number, the time it was committed, and a checksum of its pixels: the
//! consumer counts torn frames (must be 0), gaps (0: the ring blocks the producer when full)
//! and the latency from commit to the consumer's first look.
//!
//! Run: `cargo run --release --example frame_stream` (`-- --quick` for a short run,
//! `-- --overwrite` for a live-video ring that drops the oldest frame instead of waiting).

use ensemble::prelude::*;
use ensemble::ring::{self, Consumer, Producer, WhenFull};
use std::time::Instant;

const WIDTH: usize = 1920;
const HEIGHT: usize = 1080;
const FRAME: usize = WIDTH * HEIGHT * 3;
/// Number, commit time (ns), checksum.
const HEADER: usize = 24;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Produce, Consume))]
struct Camera;

/// Writes `frames` frames into the ring, then closes it; replies with the seconds it took.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "f64")]
struct Produce {
    producer: Producer,
    frames: u64,
}

/// Reads and checks frames until the producer closes.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Report")]
struct Consume(Consumer);

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    frames: u64,
    torn: u64,
    gaps: u64,
    seconds: f64,
    /// Commit to first look, in microseconds, sorted.
    latencies_us: Vec<f64>,
    lost_wakeups: u64,
}

/// Nanoseconds on the machine-wide monotonic clock (the same in every process).
fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The pixels of frame `n` as 64-bit words, and their checksum.
fn paint(pixels: &mut [u64], n: u64) -> u64 {
    let mut sum = 0u64;
    for (i, word) in pixels.iter_mut().enumerate() {
        *word = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64;
        sum = sum.wrapping_add(*word).rotate_left(1);
    }
    sum
}

fn checksum(pixels: &[u64]) -> u64 {
    pixels.iter().fold(0u64, |sum, &w| sum.wrapping_add(w).rotate_left(1))
}

fn word(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap())
}

impl ProcessHandler<Produce> for Camera {
    fn handle(&mut self, Produce { mut producer, frames }: Produce, _: &mut ProcessContext<Self>) -> f64 {
        let started = Instant::now();
        for n in 0..frames {
            let mut slot = producer.claim().expect("the consumer is there");
            let (header, pixels) = slot[..HEADER + FRAME].split_at_mut(HEADER);
            let sum = paint(bytemuck::cast_slice_mut(pixels), n);
            header[0..8].copy_from_slice(&n.to_le_bytes());
            header[16..24].copy_from_slice(&sum.to_le_bytes());
            header[8..16].copy_from_slice(&now_ns().to_le_bytes());
            slot.commit(HEADER + FRAME).expect("a frame fits its slot");
        }
        started.elapsed().as_secs_f64()
    }
}

impl ProcessHandler<Consume> for Camera {
    fn handle(&mut self, Consume(mut consumer): Consume, _: &mut ProcessContext<Self>) -> Report {
        let mut report =
            Report { frames: 0, torn: 0, gaps: 0, seconds: 0.0, latencies_us: Vec::new(), lost_wakeups: 0 };
        let mut next = 0;
        let mut started = None;
        loop {
            let frame = match consumer.recv() {
                Ok(frame) => frame,
                Err(ring::RingError::Closed { .. }) => break,
                Err(e) => panic!("{e}"),
            };
            let seen = now_ns();
            started.get_or_insert_with(Instant::now);
            let committed = word(&frame, 1);
            report.latencies_us.push(seen.saturating_sub(committed) as f64 / 1e3);
            let (header, pixels) = frame.split_at(HEADER);
            report.torn += u64::from(checksum(bytemuck::cast_slice(pixels)) != word(header, 2));
            report.gaps += u64::from(word(header, 0) != next);
            next = word(header, 0) + 1;
            report.frames += 1;
        }
        report.seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        report.latencies_us.sort_by(f64::total_cmp);
        report.lost_wakeups = consumer.stats().lost_wakeups;
        report
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let overwrite = std::env::args().any(|a| a == "--overwrite");
    let frames = if quick { 60 } else { 2000 };
    let policy = if overwrite { WhenFull::OverwriteOldest } else { WhenFull::Block };

    let (producer_process, consumer_process) =
        (ensemble::spawn(Camera).await?, ensemble::spawn(Camera).await?);
    let (producer, consumer) = ring::channel(4, HEADER + FRAME, policy)?;
    println!(
        "{frames} frames of {WIDTH}x{HEIGHT} RGB ({:.1} MB) through a ring of 4 slots ({policy:?})",
        FRAME as f64 / 1e6
    );

    let report = consumer_process.send(Consume(consumer));
    let wrote = producer_process.send(Produce { producer, frames });
    let (report, wrote) = futures::future::join(report, wrote).await;
    let (report, wrote) = (report?, wrote?);

    let gb = report.frames as f64 * FRAME as f64 / 1e9;
    println!("producer: {frames} frames in {wrote:.3} s");
    println!(
        "consumer: {} frames in {:.3} s: {:.0} frames/s, {:.2} GB/s",
        report.frames,
        report.seconds,
        report.frames as f64 / report.seconds,
        gb / report.seconds
    );
    let l = &report.latencies_us;
    println!(
        "latency commit -> consumer (us): p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}",
        percentile(l, 0.5),
        percentile(l, 0.9),
        percentile(l, 0.99),
        percentile(l, 1.0)
    );
    println!("torn frames: {}   gaps: {}   lost wake-ups: {}", report.torn, report.gaps, report.lost_wakeups);
    anyhow::ensure!(report.torn == 0, "torn frames");
    anyhow::ensure!(overwrite || (report.gaps == 0 && report.frames == frames), "frames lost");
    Ok(())
}
