//! Chapter 4 of valkka-multiprocess's tutorial ("Using shared memory and forked resources").
//!
//! valkka: the frontend creates a named `SharedMemory` ("server side"), wraps it in a numpy
//! array, the backend opens it again by name in `preRun__` ("client side"), `c__readWrite`
//! writes it, an `EventGroup` syncs, `postRun__` unlinks and `__del__` closes: four places to
//! get wrong, and a segfault if an array outlives its segment.
//!
//! Here the frontend creates a 100 x 100 array and hands it to the backend in a message (the
//! backend maps the same pages: nothing is copied); the backend writes it and hands it back in
//! its reply; the frontend reads it. Ownership moves with the messages, so the two sides never
//! write at the same time, views cannot outlive their mapping, and the segment (an anonymous
//! memory file whose descriptor travels with the message) is freed by the kernel when the last
//! holder lets go: there is no name, no close and no unlink anywhere, and nothing in /dev/shm.
//!
//! Run: `cargo run --example 04_shared_memory`

use ensemble::prelude::*;

const SIDE: usize = 100;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(ReadWrite))]
struct MyProcess;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "SharedSliceMut<f64>")]
struct ReadWrite {
    array: SharedSliceMut<f64>,
    value: f64,
}

impl ProcessHandler<ReadWrite> for MyProcess {
    fn handle(
        &mut self,
        ReadWrite { mut array, value }: ReadWrite,
        _: &mut ProcessContext<Self>,
    ) -> SharedSliceMut<f64> {
        tracing::info!("readWrite: will change array values from {} to {value}", array[0]);
        array.fill(value);
        tracing::info!("readWrite: ..did that!");
        array
    }
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let p = ensemble::spawn_with(MyProcess, SpawnOptions::new().name("my-process")).await?;
    let mut array = SharedSliceMut::<f64>::new(SIDE * SIDE)?;
    array.fill(1.0);
    let segment = array.segment_id();
    println!("frontend: array in segment {segment}, values {}", array[0]);
    let array = p.send(ReadWrite { array, value: 3.0 }).await?;
    println!("frontend: array values now {} (row 42: {:?}...)", array[0], &array[42 * SIDE..42 * SIDE + 3]);
    assert!(array.iter().all(|v| *v == 3.0));
    p.stop().await?;
    drop(array);
    let held = ensemble::shm::held_segments()?;
    println!("segments this process still holds: {held}");
    assert_eq!(held, 0);
    Ok(())
}
