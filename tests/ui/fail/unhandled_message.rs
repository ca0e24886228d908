use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct Worker;

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Ping;

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Pong;

impl ProcessHandler<Ping> for Worker {
    fn handle(&mut self, _: Ping, _: &mut ProcessContext<Self>) {}
}

async fn call(worker: Remote<Worker>) {
    let _ = worker.send(Pong).await;
}

fn main() {}
