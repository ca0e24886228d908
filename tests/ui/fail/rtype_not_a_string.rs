use ensemble::prelude::*;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = u64)]
struct Ping;

fn main() {}
