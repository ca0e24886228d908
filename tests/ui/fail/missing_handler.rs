use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct Worker;

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Ping;

fn main() {}
