//! `impl Hooks` needs no option in `#[actor(..)]`: the child runs the actor's own hooks, and
//! an actor without an impl has empty ones.
use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct Camera {
    device: String,
}

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct Plain;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Ping;

impl Hooks for Camera {
    fn pre_run(&mut self, _: &mut ProcessContext<Self>) -> Result<(), ensemble::HookError> {
        Err(format!("cannot open {}", self.device).into())
    }
}

impl ProcessHandler<Ping> for Camera {
    fn handle(&mut self, _: Ping, _: &mut ProcessContext<Self>) -> u32 {
        0
    }
}

impl ProcessHandler<Ping> for Plain {
    fn handle(&mut self, _: Ping, ctx: &mut ProcessContext<Self>) -> u32 {
        ctx.pid()
    }
}

#[ensemble::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let refused = ensemble::spawn(Camera { device: "/dev/video9".into() }).await;
    let error = refused.err().expect("pre_run fails the spawn").to_string();
    assert!(error.contains("cannot open /dev/video9"), "{error}");
    let plain = ensemble::spawn(Plain).await?;
    assert_eq!(plain.send(Ping).await?, plain.pid());
    plain.stop().await?;
    Ok(())
}
