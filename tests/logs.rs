//! A child's log lines reach the parent's subscriber with the child's name and pid, inside the
//! span the call was made in; a grandchild's lines reach the root the same way, through its
//! parent.

#[path = "common/harness.rs"]
mod harness;

use ensemble::prelude::*;
use harness::within;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Say, async Relay))]
struct Chatty;

/// Logs `text` at info.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Say(String);

/// Starts a grandchild named `name` and makes it say `text`.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Relay {
    name: String,
    text: String,
}

impl ProcessHandler<Say> for Chatty {
    fn handle(&mut self, Say(text): Say, _: &mut ProcessContext<Self>) {
        tracing::info!(said = %text, "chatty says");
    }
}

impl AsyncProcessHandler<Relay> for Chatty {
    async fn handle(&mut self, Relay { name, text }: Relay, _: &mut ProcessContext<Self>) {
        let grandchild = ensemble::spawn_with(Chatty, SpawnOptions::new().name(&name)).await.unwrap();
        grandchild.send(Say(text)).await.unwrap();
        grandchild.stop().await.unwrap();
    }
}

/// What the test's subscriber saw of one event.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    fields: String,
    spans: Vec<String>,
}

/// Records every event with its fields and the names of the spans it is in.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        let spans = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().map(|span| span.name().to_owned()).collect())
            .unwrap_or_default();
        let seen = Seen { target: event.metadata().target().to_owned(), fields: text.0, spans };
        self.0.lock().unwrap().push(seen);
    }
}

impl Recorder {
    fn lines_with(&self, needle: &str) -> Vec<Seen> {
        self.0.lock().unwrap().iter().filter(|s| s.fields.contains(needle)).cloned().collect()
    }
}

#[actix_rt::test]
async fn a_handlers_log_line_reaches_the_parent_in_the_span_of_the_call() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let child = within(10, ensemble::spawn_with(Chatty, SpawnOptions::new().name("chatty-1"))).await.unwrap();
    let request = tracing::info_span!("request");
    // `send` sends at once: the span current when it is called is the call's.
    within(10, request.in_scope(|| child.send(Say("hello".into())))).await.unwrap();
    let seen = recorder.lines_with("chatty says");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "ensemble::child");
    assert!(seen[0].fields.contains("said=hello"), "{seen:?}");
    assert!(seen[0].fields.contains("child=\"chatty-1\""), "{seen:?}");
    assert!(seen[0].fields.contains(&format!("pid={}", child.pid())), "{seen:?}");
    assert_eq!(seen[0].spans, ["request"], "the child's line is in the caller's span");
    within(10, child.stop()).await.unwrap();
}

#[actix_rt::test]
async fn a_grandchilds_log_line_reaches_the_root_with_both_names_in_the_roots_span() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let child = within(10, ensemble::spawn_with(Chatty, SpawnOptions::new().name("middle"))).await.unwrap();
    let relay = Relay { name: "grand".into(), text: "from below".into() };
    let request = tracing::info_span!("request");
    within(20, request.in_scope(|| child.send(relay))).await.unwrap();
    let seen = recorder.lines_with("from below");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let fields = &seen[0].fields;
    assert!(fields.contains("child=\"middle\"") && fields.contains("child=grand"), "{fields}");
    assert_eq!(seen[0].spans, ["request"], "the grandchild's line is in the root's span");
    within(10, child.stop()).await.unwrap();
}
