//! A flaky worker under a `one_for_one` supervisor: the program keeps serving while the worker
//! panics (the call fails, the worker lives on) or aborts (the process dies and is restarted).
//!
//! In Python, a worker that dies takes its `Pool` down or leaves `apply` waiting forever; a
//! valkka backend that crashes is simply gone. Here every request gets an answer or an error
//! that says what happened, and the supervisor's events show each restart.
//!
//! Run: `cargo run --example crash_and_restart` (`-- --quick` for a short run).

use ensemble::prelude::*;
use ensemble::supervisor::{Backoff, Intensity};
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Square))]
struct Flaky;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Square(u64);

impl ProcessHandler<Square> for Flaky {
    fn handle(&mut self, Square(n): Square, _: &mut ProcessContext<Self>) -> u64 {
        match n % 7 {
            3 => panic!("{n} is unlucky"),
            5 => {
                eprintln!("flaky: {n} makes me abort");
                std::process::abort()
            }
            _ => n * n,
        }
    }
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let requests = if std::env::args().any(|a| a == "--quick") { 15 } else { 50 };
    let config = SupervisorConfig {
        strategy: Strategy::OneForOne,
        intensity: Intensity { max_restarts: 100, within: Duration::from_secs(60) },
        backoff: Some(Backoff { initial: Duration::from_millis(10), max: Duration::from_secs(1) }),
        ..SupervisorConfig::default()
    };
    let mut supervisor = Supervisor::new(config);
    let flaky = supervisor.add(ChildSpec::new("flaky", || Flaky));
    let mut events = supervisor.events();
    let root = supervisor.start().await?;
    actix_rt::spawn(async move {
        while let Some(event) = events.next().await {
            println!("  [supervisor] {event}");
        }
    });
    let (mut ok, mut panicked, mut died) = (0, 0, 0);
    for n in 0..requests {
        match flaky.send(Square(n)).timeout(Duration::from_secs(10)).await {
            Ok(square) => {
                ok += 1;
                println!("{n}^2 = {square}");
            }
            Err(CallError::Panicked { message, .. }) => {
                panicked += 1;
                println!("{n}: the handler panicked ({message}); the worker lives on");
            }
            Err(CallError::Exited(exit)) => {
                died += 1;
                println!(
                    "{n}: the worker died ({}); it is being restarted",
                    exit.signal().map_or("exit", ensemble::runtime::signal_name)
                );
            }
            Err(other) => println!("{n}: {other}"),
        }
    }
    root.shutdown().await?;
    println!("{ok} answered, {panicked} panicked, {died} crashed the worker; still serving at the end");
    Ok(())
}
