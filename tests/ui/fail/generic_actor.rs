use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
struct Worker<T> {
    value: T,
}

fn main() {}
