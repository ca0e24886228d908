//! Chapter 2 of valkka-multiprocess's tutorial ("Send message and synchronize"), in ensemble.
//!
//! valkka needs an `EventGroup` created before the fork, a `SyncIndex` context manager, and a
//! `sync_index` passed along so the backend can `set` the right event. In ensemble a call that
//! must be waited for is simply `send(..).await`: it resolves when the child's handler returns,
//! with its typed result, or with an error if the handler panicked or the child died.
//!
//! Run: `cargo run --example 02_send_and_sync` (`RUST_LOG=info` is the default in children).

use ensemble::prelude::*;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct MyProcess {
    work: Duration,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "String")]
struct Ping {
    parameter: String,
}

impl ProcessHandler<Ping> for MyProcess {
    fn handle(&mut self, ping: Ping, _: &mut ProcessContext<Self>) -> String {
        tracing::info!("c__ping: got parameter {} - will do some", ping.parameter);
        std::thread::sleep(self.work); // something time consuming
        tracing::info!("c__ping: ..did that!");
        format!("done with {}", ping.parameter)
    }
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).with_ansi(std::io::stderr().is_terminal()).init();
    let work = Duration::from_millis(if quick() { 10 } else { 1000 });
    let p = ensemble::spawn_with(MyProcess { work }, SpawnOptions::new().name("my-process")).await?;
    tracing::info!("ping: calling the backend to do some stuff");
    let answer = p.send(Ping { parameter: "gotcha!".into() }).await?;
    tracing::info!("ping: the backend is ready: {answer}");
    p.stop().await?;
    Ok(())
}

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}
