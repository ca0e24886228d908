use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping), hooks)]
struct Worker;

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Ping;

impl ProcessHandler<Ping> for Worker {
    fn handle(&mut self, _: Ping, _: &mut ProcessContext<Self>) {}
}

fn main() {}
