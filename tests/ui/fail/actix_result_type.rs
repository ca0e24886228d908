use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Add))]
struct Counter {
    total: u64,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Add(u64);

// actix's shape: `type Result` and `Self::Result` do not exist here; the reply type is the
// message's `rtype`. (`Self::Context` does: it is `ProcessContext<Self>`.)
impl ProcessHandler<Add> for Counter {
    type Result = u64;

    fn handle(&mut self, Add(n): Add, _: &mut Self::Context) -> u64 {
        self.total += n;
        self.total
    }
}

fn main() {}
