//! Chapter 1 of valkka-multiprocess's tutorial ("Send message to a forked process"), in ensemble.
//!
//! valkka: subclass `MessageProcess`, write a frontend `ping` that wraps a `MessageObject("ping")`
//! and a backend `c__ping`, `start()`, sleep, call, sleep, `stop()`. Here the message is a type,
//! the backend handler is a `ProcessHandler` impl that runs in the child process, `do_send` is
//! the fire-and-forget call, and `stop` waits until the child has handled it and exited.
//!
//! Run: `cargo run --example 01_send_message`

use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct MyProcess;

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Ping {
    parameter: String,
}

impl ProcessHandler<Ping> for MyProcess {
    fn handle(&mut self, ping: Ping, ctx: &mut ProcessContext<Self>) {
        println!("Regards from process {}! Got parameter {}", ctx.pid(), ping.parameter);
    }
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let p = ensemble::spawn_with(MyProcess, SpawnOptions::new().name("my-process")).await?;
    p.do_send(Ping { parameter: "gotcha!".into() })?;
    p.stop().await?;
    Ok(())
}
