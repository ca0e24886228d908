//! What a new user writes with `ensemble` as the only dependency: every name comes from
//! `ensemble::prelude::*` or `ensemble::..`: serde's and bytemuck's derives, `StreamExt`,
//! `sleep`, and actix's `Self::Context`. (trybuild builds this with the root package's
//! dependencies; `.ci/run` builds the README's example in a crate that has only `ensemble`.)
use ensemble::prelude::*;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Add, async Paint), event = Painted)]
struct Canvas {
    total: u64,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Add(u64);

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Pixel {
    r: u8,
    g: u8,
    b: u8,
    a: u8,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "SharedSliceMut<Pixel>")]
struct Paint(SharedSliceMut<Pixel>);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Painted {
    pixel_count: usize,
}

impl ProcessHandler<Add> for Canvas {
    fn handle(&mut self, Add(n): Add, _: &mut Self::Context) -> u64 {
        self.total += n;
        self.total
    }
}

impl AsyncProcessHandler<Paint> for Canvas {
    async fn handle(&mut self, Paint(mut pixels): Paint, ctx: &mut Self::Context) -> SharedSliceMut<Pixel> {
        sleep(Duration::from_millis(1)).await;
        pixels.fill(Pixel { r: 255, g: 0, b: 0, a: 255 });
        ctx.send_out(Painted { pixel_count: pixels.len() }).expect("the parent listens");
        pixels
    }
}

#[ensemble::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let canvas = ensemble::spawn(Canvas { total: 0 }).await?;
    assert_eq!(canvas.send(Add(2)).await?, 2);
    let mut events = canvas.events().expect("the first taker gets the events");
    let pixels = canvas.send(Paint(SharedSliceMut::new(16)?)).await?;
    assert!(pixels.iter().all(|p| *p == Pixel { r: 255, g: 0, b: 0, a: 255 }));
    let Painted { pixel_count } = events.next().await.expect("an event")?;
    assert_eq!(pixel_count, 16);
    canvas.stop().await?;
    Ok(())
}
