//! Process actors answer typed calls: replies, fire-and-forget, events, async handlers,
//! concurrency, and use from plain tokio and from actix actors.

#[path = "common/harness.rs"]
mod harness;

use harness::within;

use ensemble::prelude::*;
use futures::StreamExt;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Add, Get, Echo, async Slow, Emit), event = Tick)]
struct Counter {
    total: u64,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Add(u64);

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Get;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Vec<u8>")]
struct Echo(Vec<u8>);

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Slow {
    wait_ms: u64,
    add: u64,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Emit(u32);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Tick(u32);

impl ProcessHandler<Add> for Counter {
    fn handle(&mut self, Add(n): Add, _: &mut ProcessContext<Self>) -> u64 {
        self.total += n;
        self.total
    }
}

impl ProcessHandler<Get> for Counter {
    fn handle(&mut self, _: Get, _: &mut ProcessContext<Self>) -> u64 {
        self.total
    }
}

impl ProcessHandler<Echo> for Counter {
    fn handle(&mut self, Echo(bytes): Echo, _: &mut ProcessContext<Self>) -> Vec<u8> {
        bytes
    }
}

impl AsyncProcessHandler<Slow> for Counter {
    async fn handle(&mut self, slow: Slow, _: &mut ProcessContext<Self>) -> u64 {
        actix_rt::time::sleep(Duration::from_millis(slow.wait_ms)).await;
        self.total += slow.add;
        self.total
    }
}

impl ProcessHandler<Emit> for Counter {
    fn handle(&mut self, Emit(n): Emit, ctx: &mut ProcessContext<Self>) {
        for i in 0..n {
            ctx.send_out(Tick(i)).expect("parent is listening");
        }
    }
}

/// Fails the test instead of hanging when `future` does not finish in time.
#[tokio::test]
async fn a_call_returns_the_typed_reply_computed_in_the_child() {
    let counter = within(10, ensemble::spawn(Counter { total: 40 })).await.unwrap();
    assert_ne!(counter.pid(), std::process::id());
    assert_eq!(within(5, counter.send(Add(2))).await.unwrap(), 42);
    assert_eq!(within(5, counter.send(Get)).await.unwrap(), 42);
    within(10, counter.stop()).await.unwrap();
}

#[tokio::test]
async fn do_send_is_handled_in_order_before_later_calls() {
    let counter = within(10, ensemble::spawn(Counter { total: 0 })).await.unwrap();
    for n in 1..=100 {
        counter.do_send(Add(n)).unwrap();
    }
    assert_eq!(within(5, counter.send(Get)).await.unwrap(), 5050);
    within(10, counter.stop()).await.unwrap();
}

#[tokio::test]
async fn concurrent_calls_from_many_tasks_are_matched_to_their_replies() {
    let counter = within(10, ensemble::spawn(Counter { total: 0 })).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..16u8 {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u8 {
                let payload = vec![task, i, task ^ i];
                assert_eq!(counter.send(Echo(payload.clone())).await.unwrap(), payload);
            }
        }));
    }
    for task in tasks {
        within(20, task).await.unwrap();
    }
    within(10, counter.stop()).await.unwrap();
}

#[tokio::test]
async fn large_messages_cross_intact() {
    let counter = within(10, ensemble::spawn(Counter { total: 0 })).await.unwrap();
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(within(20, counter.send(Echo(payload.clone()))).await.unwrap(), payload);
    within(10, counter.stop()).await.unwrap();
}

#[tokio::test]
async fn an_async_handler_holds_back_later_messages_until_it_finishes() {
    let counter = within(10, ensemble::spawn(Counter { total: 0 })).await.unwrap();
    let slow = counter.send(Slow { wait_ms: 200, add: 1 });
    let after = counter.send(Add(10));
    let (slow, after) = within(10, async { tokio::join!(slow, after) }).await;
    assert_eq!(slow.unwrap(), 1);
    assert_eq!(after.unwrap(), 11);
    within(10, counter.stop()).await.unwrap();
}

#[tokio::test]
async fn events_arrive_in_order_and_the_stream_ends_when_the_process_exits() {
    let counter = within(10, ensemble::spawn(Counter { total: 0 })).await.unwrap();
    let mut events = counter.events().expect("the first subscriber gets the stream");
    assert!(counter.events().is_none(), "there is one event stream per actor");
    within(5, counter.send(Emit(500))).await.unwrap();
    for i in 0..500 {
        assert_eq!(within(5, events.next()).await.unwrap().unwrap(), Tick(i));
    }
    within(10, counter.stop()).await.unwrap();
    assert!(within(5, events.next()).await.is_none());
}

#[tokio::test]
async fn the_handle_is_send_sync_and_usable_from_plain_threads_runtimes() {
    fn assert_send_sync<T: Send + Sync + Clone>(_: &T) {}
    let counter = within(10, ensemble::spawn(Counter { total: 1 })).await.unwrap();
    assert_send_sync(&counter);
    let clone = counter.clone();
    let from_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(clone.send(Add(1)).timeout(Duration::from_secs(5)))
    });
    assert_eq!(from_thread.join().unwrap().unwrap(), 2);
    within(10, counter.stop()).await.unwrap();
}

#[actix_rt::test]
async fn an_actix_actor_can_call_a_process_actor() {
    use actix::prelude::{Actor, Context, Handler, Message, ResponseFuture};

    struct Frontend(Remote<Counter>);
    impl Actor for Frontend {
        type Context = Context<Self>;
    }
    #[derive(Message)]
    #[rtype(result = "Result<u64, ensemble::CallError>")]
    struct Double(u64);
    impl Handler<Double> for Frontend {
        type Result = ResponseFuture<Result<u64, ensemble::CallError>>;
        fn handle(&mut self, Double(n): Double, _: &mut Context<Self>) -> Self::Result {
            let counter = self.0.clone();
            Box::pin(async move {
                counter.send(Add(n)).await?;
                counter.send(Add(n)).await
            })
        }
    }

    let counter = within(10, ensemble::spawn(Counter { total: 0 })).await.unwrap();
    let frontend = Frontend(counter.clone()).start();
    assert_eq!(within(5, frontend.send(Double(21))).await.unwrap().unwrap(), 42);
    within(10, counter.stop()).await.unwrap();
}

#[tokio::test]
async fn the_process_carries_its_name_in_ps_and_top() {
    let options = SpawnOptions::new().name("counter-7");
    let counter = within(10, ensemble::spawn_with(Counter { total: 0 }, options)).await.unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", counter.pid())).unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", counter.pid())).unwrap();
    assert_eq!(comm.trim_end(), "counter-7");
    assert!(cmdline.starts_with("ensemble: counter-7"), "{cmdline:?}");
    assert_eq!(counter.name(), "counter-7");
    within(10, counter.stop()).await.unwrap();
}
