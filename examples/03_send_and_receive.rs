//! Chapter 3 of valkka-multiprocess's tutorial ("Send and receive message"), in ensemble.
//!
//! valkka: the backend calls `send_out__(MessageObject("pong", result="pudding"))`, the main
//! process gets the pipe with `getPipe()`, `select`s on it and unpacks an untyped message.
//! Here the backend pushes typed events with `ctx.send_out`, and the frontend reads them as an
//! async `Stream`; with several workers, `futures::stream::select_all` merges their streams
//! the way valkka's `select` over many pipes does. This example runs three workers.
//!
//! Run: `cargo run --release --example 03_send_and_receive`

use ensemble::prelude::*;
use futures::StreamExt;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping), event = Pong)]
struct MyProcess {
    id: usize,
    work: Duration,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Ping {
    parameter: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pong {
    from: usize,
    result: String,
}

impl ProcessHandler<Ping> for MyProcess {
    fn handle(&mut self, ping: Ping, ctx: &mut ProcessContext<Self>) {
        tracing::info!("c__ping: got parameter {} - will do some", ping.parameter);
        std::thread::sleep(self.work);
        let pong = Pong { from: self.id, result: format!("pudding for {}", ping.parameter) };
        if let Err(e) = ctx.send_out(pong) {
            tracing::warn!("could not answer: {e}");
        }
    }
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let work = Duration::from_millis(if std::env::args().any(|a| a == "--quick") { 10 } else { 300 });
    let mut workers = Vec::new();
    for id in 0..3 {
        let options = SpawnOptions::new().name(format!("my-process-{id}"));
        workers.push(ensemble::spawn_with(MyProcess { id, work: work * (id as u32 + 1) }, options).await?);
    }
    let streams = workers.iter().map(|w| w.events().expect("first subscriber"));
    let mut events = futures::stream::select_all(streams);
    for (id, worker) in workers.iter().enumerate() {
        worker.do_send(Ping { parameter: format!("gotcha #{id}") })?;
    }
    println!("main: waiting for replies from {} backends", workers.len());
    for _ in 0..workers.len() {
        let pong = events.next().await.expect("workers are running")?;
        println!("main: got pong from worker {} with some {}", pong.from, pong.result);
    }
    for worker in &workers {
        worker.stop().await?;
    }
    Ok(())
}
