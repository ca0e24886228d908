use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handle(Ping))]
struct Worker;

fn main() {}
