//! Chapter 5 of valkka-multiprocess's tutorial ("Syncing server/client resources"), in ensemble.
//!
//! valkka: the frontend creates a named `SharedMemory` on demand, sends its name, dtype and
//! shape to the backend, which opens its "client side" in `c__create`; `c__readWrite` writes
//! it; `c__close` unlinks it; an `EventGroup` syncs each step, and a forgotten close leaves a
//! file in /dev/shm.
//!
//! Here segments are created on demand, of any shape, while the backend runs: the frontend
//! hands each array to the backend in a message (the backend now owns it and maps the same
//! pages), asks it to write, and takes it back to read. Ownership moves with the messages, so
//! the two sides never write the same array at once. There is no name, no close and no unlink:
//! an array lives while someone holds it, and /dev/shm is clean at the end.
//!
//! Run: `cargo run --example 05_on_demand_segments`

use ensemble::prelude::*;
use std::collections::HashMap;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Adopt, Fill, GiveBack))]
struct MyProcess {
    #[serde(skip)]
    arrays: HashMap<u32, SharedSliceMut<f32>>,
}

/// Keep this array (valkka's `c__create`).
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Adopt {
    id: u32,
    array: SharedSliceMut<f32>,
}

/// Write `value` everywhere in array `id` (valkka's `c__readWrite`); replies with how many.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "usize")]
struct Fill {
    id: u32,
    value: f32,
}

/// Hand array `id` back to the frontend (instead of valkka's `c__close`).
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Option<SharedSliceMut<f32>>")]
struct GiveBack(u32);

impl ProcessHandler<Adopt> for MyProcess {
    fn handle(&mut self, Adopt { id, array }: Adopt, _: &mut ProcessContext<Self>) {
        tracing::info!("adopted array {id}: {} values in {}", array.len(), array.segment_id());
        self.arrays.insert(id, array);
    }
}

impl ProcessHandler<Fill> for MyProcess {
    fn handle(&mut self, Fill { id, value }: Fill, _: &mut ProcessContext<Self>) -> usize {
        let Some(array) = self.arrays.get_mut(&id) else { return 0 };
        array.fill(value);
        array.len()
    }
}

impl ProcessHandler<GiveBack> for MyProcess {
    fn handle(
        &mut self,
        GiveBack(id): GiveBack,
        _: &mut ProcessContext<Self>,
    ) -> Option<SharedSliceMut<f32>> {
        self.arrays.remove(&id)
    }
}

fn ours_in_dev_shm() -> usize {
    ensemble::shm::held_segments().unwrap_or(usize::MAX)
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let before = ours_in_dev_shm();
    let p =
        ensemble::spawn_with(MyProcess { arrays: HashMap::new() }, SpawnOptions::new().name("my-process"))
            .await?;
    // Three arrays of different shapes, created while the backend is already running.
    for (id, (rows, cols)) in [(10usize, 10usize), (100, 100), (640, 480)].into_iter().enumerate() {
        let id = id as u32;
        p.send(Adopt { id, array: SharedSliceMut::new(rows * cols)? }).await?;
        let written = p.send(Fill { id, value: 3.0 + id as f32 }).await?;
        let array = p.send(GiveBack(id)).await?.expect("the backend had it");
        println!(
            "array {id} ({rows} x {cols}): backend wrote {written} values, frontend reads {}",
            array[rows * cols - 1]
        );
        assert!(array.iter().all(|v| *v == 3.0 + id as f32));
        if id == 1 {
            // Hand one over for good: the backend's drop at exit frees it.
            p.send(Adopt { id, array }).await?;
        }
    }
    p.stop().await?;
    let after = ours_in_dev_shm();
    println!(
        "segments held by this process: {before} before, {after} after, with no close or unlink anywhere"
    );
    anyhow::ensure!(after <= before, "segments leaked");
    Ok(())
}
