//! The `ensemble` command against a running program: `ps` lists its tree (names, actor types,
//! segments shared between processes), `stop` stops a supervised child in order, `kill` kills
//! the root, and after that `ps` lists nothing of the program.
//!
//! The program is this test binary run again with an ignored helper test, so that it is a root
//! of its own that the test can kill.

#![allow(clippy::disallowed_methods)] // tests start helper programs of their own

use ensemble::prelude::*;
use ensemble::supervisor::Background;
use harness::{eventually, Helper};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

#[path = "../../tests/common/harness.rs"]
mod harness;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct Holder {
    frames: SharedSlice<u8>,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "usize")]
struct Ping;

impl ProcessHandler<Ping> for Holder {
    fn handle(&mut self, _: Ping, _: &mut ProcessContext<Self>) -> usize {
        self.frames.len()
    }
}

const HELPER_ENV: &str = "ENSEMBLE_CLI_TEST_PROGRAM";

/// Not a test on its own: the program the test below looks at.
#[test]
#[ignore = "helper process for ps_stop_and_kill_a_running_program"]
fn program_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let frames = SharedSliceMut::<u8>::new(1 << 20).unwrap().freeze().unwrap();
    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    for name in ["cli-holder-1", "cli-holder-2"] {
        let frames = frames.clone();
        supervisor.add(ChildSpec::new(name, move || Holder { frames: frames.clone() }));
    }
    let _running = Background::start(supervisor).unwrap();
    println!("READY {}", std::process::id());
    std::thread::sleep(Duration::from_secs(60));
}

fn ensemble(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ensemble")).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The processes `ps --json` lists, by pid.
fn ps() -> Vec<Value> {
    let (ok, text) = ensemble(&["ps", "--json"]);
    assert!(ok, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["processes"].as_array().unwrap().clone()
}

fn find(processes: &[Value], pid: u64) -> Option<&Value> {
    processes.iter().find(|p| p["pid"] == pid)
}

#[test]
fn ps_stop_and_kill_a_running_program() {
    // Killed and reaped when dropped, also when a check below fails.
    let mut program = Helper::start("program_helper", HELPER_ENV, "1");
    let root: u64 = program.line_after("READY ", 30).trim().parse().expect("the program's pid");
    check(root);
}

fn check(root: u64) {
    // ps: the root and both children, each child under the root, with its actor type.
    let mut processes = Vec::new();
    eventually(15, "the program and its children answer", || {
        processes = ps();
        find(&processes, root).is_some_and(|r| {
            let kids = r["children"].as_array().unwrap();
            kids.len() == 2 && kids.iter().all(|k| find(&processes, k["pid"].as_u64().unwrap()).is_some())
        })
    });
    let info = find(&processes, root).unwrap();
    assert_eq!(info["role"], "root");
    let children = info["children"].as_array().unwrap().clone();
    let names: Vec<&str> = children.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cli-holder-1", "cli-holder-2"]);
    for child in &children {
        assert!(child["actor"].as_str().unwrap().ends_with("Holder"));
        assert_eq!(child["state"], "running");
        assert_eq!(child["supervision"]["restarts"], 0);
        let own = find(&processes, child["pid"].as_u64().unwrap()).unwrap();
        assert_eq!(own["ppid"], root);
    }
    // The segment the root handed to both children: one inode in all three.
    let inodes = |p: &Value| -> Vec<u64> {
        p["segments"].as_array().unwrap().iter().map(|s| s["inode"].as_u64().unwrap()).collect()
    };
    let shared = inodes(info);
    let (one, two) = (children[0]["pid"].as_u64().unwrap(), children[1]["pid"].as_u64().unwrap());
    for pid in [one, two] {
        assert!(
            inodes(find(&processes, pid).unwrap()).iter().any(|i| shared.contains(i)),
            "{pid} shares no segment"
        );
    }

    // The table: the tree and the sharing, in words.
    let (ok, table) = ensemble(&["ps"]);
    assert!(ok, "{table}");
    let line = |pid: u64| {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{pid} ")))
            .unwrap_or_else(|| panic!("{pid} missing:\n{table}"))
    };
    assert!(line(root).starts_with(&root.to_string()), "{table}");
    assert!(
        line(one).starts_with("  ") && line(one).contains("cli-holder-1") && line(one).contains("Holder"),
        "{table}"
    );
    // The root's segment is also in both children (listed in the order the table met them).
    assert!(
        table.contains(&format!("also in {one}, {two}")) || table.contains(&format!("also in {two}, {one}")),
        "{table}"
    );

    // stop by name: in order, and the supervisor does not restart it.
    let (ok, text) = ensemble(&["stop", "cli-holder-2"]);
    assert!(ok && text.contains("will not restart") && text.contains("has exited"), "{text}");
    eventually(15, "cli-holder-2 is no longer listed", || {
        let processes = ps();
        find(&processes, two).is_none()
            && find(&processes, root).is_some_and(|r| r["children"].as_array().unwrap().len() == 1)
    });

    // kill the root: nothing of the program is listed any more.
    let (ok, text) = ensemble(&["kill", &root.to_string()]);
    assert!(ok, "{text}");
    eventually(15, "nothing of the program is listed", || {
        let processes = ps();
        [root, one, two].iter().all(|&pid| find(&processes, pid).is_none())
    });
    let (ok, text) = ensemble(&["kill", &root.to_string()]);
    assert!(!ok && text.contains("not a running ensemble process"), "{text}");
}
