#![no_implicit_prelude]

#[derive(::serde::Serialize, ::serde::Deserialize, ::ensemble::ProcessActor)]
#[actor(handles(Ping, async Later), event = Note)]
struct Worker {
    count: u32,
}

#[derive(::serde::Serialize, ::serde::Deserialize, ::ensemble::RemoteMessage)]
#[rtype(result = "u32")]
struct Ping;

#[derive(::serde::Serialize, ::serde::Deserialize, ::ensemble::RemoteMessage)]
struct Later;

#[derive(::serde::Serialize, ::serde::Deserialize)]
struct Note;

impl ::ensemble::ProcessHandler<Ping> for Worker {
    fn handle(&mut self, _: Ping, _: &mut ::ensemble::ProcessContext<Self>) -> u32 {
        self.count
    }
}

impl ::ensemble::AsyncProcessHandler<Later> for Worker {
    async fn handle(&mut self, _: Later, _: &mut ::ensemble::ProcessContext<Self>) {}
}

// The prelude's derives of serde's and bytemuck's traits.
#[derive(::ensemble::prelude::Serialize, ::ensemble::prelude::Deserialize)]
struct Encoded<T> {
    value: T,
    #[serde(skip)]
    cache: ::core::option::Option<u8>,
}

#[derive(::core::clone::Clone, ::core::marker::Copy, ::ensemble::prelude::Pod, ::ensemble::prelude::Zeroable)]
#[repr(C)]
struct Element {
    x: u32,
    y: f32,
}

fn main() {}
