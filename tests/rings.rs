//! Rings between real processes: frames arrive in order and intact under load, both full-ring
//! policies, a stream consumed by an actor, and each side SIGKILLed mid-operation is seen by
//! the other within a second, also after its end moved between processes.

#[path = "common/harness.rs"]
mod harness;

use ensemble::prelude::*;
use ensemble::ring::{self, Consumer, Producer, RingError, WhenFull};
use harness::within;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Produce, Keep, GiveBack, async Drain, Hold))]
struct Station {
    kept: Option<Producer>,
}

/// Produces `frames` frames of `len` bytes (0 = for ever), then closes the end. Replies with
/// the number of frames committed.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Produce {
    producer: Producer,
    frames: u64,
    len: usize,
}

/// Keeps a producer end in the actor's state.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Keep(Producer);

/// Gives the kept producer end back to the caller.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Producer")]
struct GiveBack;

/// Consumes as a stream until the producer closes; replies with (frames, torn frames, gaps).
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "(u64, u64, u64)")]
struct Drain(Consumer);

/// Takes one frame and keeps it lent, for ever (until killed).
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Hold(Consumer);

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Fills `slot[..len]` with frame `n`: its number, a pattern, and the checksum at the end.
fn write_frame(slot: &mut [u8], n: u64, len: usize) {
    slot[..8].copy_from_slice(&n.to_le_bytes());
    for (i, b) in slot[8..len - 8].iter_mut().enumerate() {
        *b = (n as usize).wrapping_mul(131).wrapping_add(i) as u8;
    }
    let sum = checksum(&slot[..len - 8]);
    slot[len - 8..len].copy_from_slice(&sum.to_le_bytes());
}

fn intact(frame: &[u8]) -> bool {
    let (body, sum) = frame.split_at(frame.len() - 8);
    checksum(body).to_le_bytes() == sum
}

fn frame_number(frame: &[u8]) -> u64 {
    u64::from_le_bytes(frame[..8].try_into().unwrap())
}

impl ProcessHandler<Produce> for Station {
    fn handle(
        &mut self,
        Produce { mut producer, frames, len }: Produce,
        _: &mut ProcessContext<Self>,
    ) -> u64 {
        let mut n = 0;
        while frames == 0 || n < frames {
            let mut slot = producer.claim().expect("claim");
            write_frame(&mut slot, n, len);
            slot.commit(len).expect("commit");
            n += 1;
        }
        n
    }
}

impl ProcessHandler<Keep> for Station {
    fn handle(&mut self, Keep(producer): Keep, _: &mut ProcessContext<Self>) {
        self.kept = Some(producer);
    }
}

impl ProcessHandler<GiveBack> for Station {
    fn handle(&mut self, _: GiveBack, _: &mut ProcessContext<Self>) -> Producer {
        self.kept.take().expect("a kept producer")
    }
}

impl AsyncProcessHandler<Drain> for Station {
    async fn handle(&mut self, Drain(mut consumer): Drain, _: &mut ProcessContext<Self>) -> (u64, u64, u64) {
        let (mut frames, mut torn, mut gaps, mut next) = (0, 0, 0, 0);
        while let Some(slot) = consumer.next().await {
            let slot = slot.expect("a frame");
            torn += u64::from(!intact(&slot));
            gaps += u64::from(slot.sequence() != next);
            next = slot.sequence() + 1;
            frames += 1;
        }
        (frames, torn, gaps)
    }
}

impl ProcessHandler<Hold> for Station {
    fn handle(&mut self, Hold(mut consumer): Hold, _: &mut ProcessContext<Self>) -> u64 {
        let slot = consumer.recv().expect("a frame");
        let n = slot.sequence();
        std::mem::forget(slot);
        std::thread::sleep(Duration::from_secs(60));
        n
    }
}

async fn station() -> Remote<Station> {
    within(10, ensemble::spawn(Station { kept: None })).await.unwrap()
}

#[actix_rt::test]
async fn frames_from_another_process_arrive_in_order_and_intact() {
    let producer_process = station().await;
    let (producer, mut consumer) = ring::channel(4, 64 * 1024, WhenFull::Block).unwrap();
    let produced = producer_process.send(Produce { producer, frames: 3_000, len: 60_000 });
    let consumed = async {
        let mut n = 0u64;
        loop {
            match consumer.recv_async().await {
                Ok(frame) => {
                    assert_eq!((frame.sequence(), frame_number(&frame)), (n, n));
                    assert!(intact(&frame), "frame {n} torn");
                    n += 1;
                }
                Err(RingError::Closed { .. }) => return n,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let (produced, consumed) = within(60, futures::future::join(produced, consumed)).await;
    assert_eq!((produced.unwrap(), consumed), (3_000, 3_000));
    assert_eq!(consumer.stats().lost_wakeups, 0);
}

#[actix_rt::test]
async fn a_consumer_actor_streams_an_overwriting_ring_and_sees_only_whole_frames() {
    let consumer_process = station().await;
    let (mut producer, consumer) = ring::channel(3, 4096, WhenFull::OverwriteOldest).unwrap();
    let drained = consumer_process.send(Drain(consumer));
    let produce = async move {
        for n in 0..20_000 {
            let mut slot = producer.claim_async().await.unwrap();
            write_frame(&mut slot, n, 4000);
            slot.commit(4000).unwrap();
            if n % 1000 == 0 {
                actix_rt::task::yield_now().await;
            }
        }
        producer.stats()
    };
    let (stats, drained) = within(60, futures::future::join(produce, drained)).await;
    let (frames, torn, gaps) = drained.unwrap();
    assert_eq!(torn, 0);
    assert_eq!(frames + stats.overwritten, 20_000, "every frame read or overwritten, none twice");
    assert!(gaps <= stats.overwritten);
}

/// SIGKILLs the producer's process while it writes: the consumer gets every frame committed
/// before, none torn, then `PeerGone` naming the killed process, within a second.
#[actix_rt::test]
async fn a_producer_killed_mid_frame_is_seen_within_a_second_after_its_end_moved_twice() {
    let (first, second) = futures::future::join(station(), station()).await;
    let (producer, mut consumer) = ring::channel(4, 256 * 1024, WhenFull::Block).unwrap();
    // Parent -> first -> parent -> second: the end moved three times; first still lives.
    within(10, first.send(Keep(producer))).await.unwrap();
    let producer = within(10, first.send(GiveBack)).await.unwrap();
    let producing = second.send(Produce { producer, frames: 0, len: 250_000 });
    let mut n = 0u64;
    while n < 200 {
        let frame = within(10, consumer.recv_async()).await.unwrap();
        assert!(intact(&frame) && frame.sequence() == n);
        n += 1;
    }
    assert!(second.kill());
    let killed_at = Instant::now();
    let gone = loop {
        match within(5, consumer.recv_async()).await {
            Ok(frame) => assert!(intact(&frame), "frame {} torn", frame.sequence()),
            Err(e) => break e,
        }
    };
    assert!(killed_at.elapsed() < Duration::from_secs(1), "seen after {:?}", killed_at.elapsed());
    match gone {
        RingError::PeerGone { peer: "producer", pid } => assert_eq!(pid, second.pid()),
        other => panic!("expected PeerGone, got {other}"),
    }
    assert!(producing.await.is_err());
    assert!(within(5, first.send(GiveBack)).await.is_err(), "first gave its end away");
    drop(first);
}

/// SIGKILLs the consumer's process while it holds a frame: a producer waiting for room gets
/// `PeerGone` within a second.
#[actix_rt::test]
async fn a_consumer_killed_while_holding_a_frame_frees_a_waiting_producer() {
    let consumer_process = station().await;
    let (mut producer, consumer) = ring::channel(2, 64, WhenFull::Block).unwrap();
    producer.send(b"0 and some bytes").unwrap();
    let holding = consumer_process.send(Hold(consumer));
    producer.send(b"1 and some bytes").unwrap();
    // Both slots are taken: one lent to the consumer, one committed. The next claim waits.
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let got = producer.claim_timeout(Duration::from_secs(10)).map(|_| ());
        (got, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(consumer_process.kill());
    assert!(holding.await.is_err());
    let (got, waited) = within(15, actix_rt::task::spawn_blocking(|| waiter.join().unwrap())).await.unwrap();
    assert!(matches!(got, Err(RingError::PeerGone { peer: "consumer", .. })), "{got:?}");
    assert!(waited < Duration::from_millis(1200), "waited {waited:?}");
}

/// A plain actix actor in the parent consumes a ring with `add_stream`.
#[actix_rt::test]
async fn an_actix_actor_consumes_a_ring_with_add_stream() {
    use actix::{Actor, AsyncContext, StreamHandler};

    struct Viewer {
        frames: u64,
        torn: u64,
        done: Option<futures::channel::oneshot::Sender<(u64, u64)>>,
    }
    impl Actor for Viewer {
        type Context = actix::Context<Self>;
    }
    impl StreamHandler<Result<ring::Slot, RingError>> for Viewer {
        fn handle(&mut self, frame: Result<ring::Slot, RingError>, _: &mut actix::Context<Self>) {
            let frame = frame.expect("a frame");
            self.torn += u64::from(!intact(&frame) || frame_number(&frame) != self.frames);
            self.frames += 1;
        }
        fn finished(&mut self, _: &mut actix::Context<Self>) {
            let _ = self.done.take().unwrap().send((self.frames, self.torn));
        }
    }

    let producer_process = station().await;
    let (producer, consumer) = ring::channel(4, 8192, WhenFull::Block).unwrap();
    let (done, finished) = futures::channel::oneshot::channel();
    Viewer::create(|ctx| {
        ctx.add_stream(consumer);
        Viewer { frames: 0, torn: 0, done: Some(done) }
    });
    let produced =
        within(30, producer_process.send(Produce { producer, frames: 5_000, len: 8000 })).await.unwrap();
    assert_eq!(within(10, finished).await.unwrap(), (5_000, 0));
    assert_eq!(produced, 5_000);
}
