use ensemble::farm::{Farm, FarmConfig};
use ensemble::prelude::*;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Square))]
struct Worker;

#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Square(u64);

impl ProcessHandler<Square> for Worker {
    fn handle(&mut self, Square(n): Square, _: &mut ProcessContext<Self>) -> u64 {
        n * n
    }
}

async fn squares() -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let farm = Farm::start(FarmConfig::default(), |_| Worker).await?;
    Ok(farm.map((0..10).map(Square)).await?)
}

fn main() {}
