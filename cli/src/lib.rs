//! The `ensemble` command's library: gathering what every ensemble program on this machine
//! answers on its endpoint ([`ensemble_runtime::introspect`]), arranging it as a tree by parent,
//! rendering it, and finding the process a `stop` or `kill` names.
//!
//! Everything here reads the kernel's view (`/proc/net/unix` for the endpoints) and the
//! programs' answers; nothing is written anywhere, and the code is free of `unsafe`.

#![forbid(unsafe_code)]

use ensemble_runtime::introspect::{self, ChildInfo, ProcessInfo, SegmentInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Every ensemble process that answered, and those that did not.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Machine {
    /// The answers, by increasing pid.
    pub processes: Vec<ProcessInfo>,
    /// Processes with an endpoint that gave no usable answer, and why.
    pub unreachable: Vec<(u32, String)>,
}

/// Asks every endpoint on this machine.
///
/// # Errors
/// When `/proc/net/unix` cannot be read.
pub fn gather() -> std::io::Result<Machine> {
    let mut machine = Machine::default();
    for pid in introspect::discover()? {
        match introspect::query(pid) {
            Ok(info) => machine.processes.push(info),
            // Exited between the listing and the question: not there any more.
            Err(introspect::QueryError::Connect { .. }) => {}
            Err(e) => machine.unreachable.push((pid, ensemble_runtime::error_chain(&e))),
        }
    }
    Ok(machine)
}

/// One process in the tree: what it says of itself, and what its parent says of it.
#[derive(Clone, Debug)]
pub struct Node<'a> {
    /// Its pid.
    pub pid: u32,
    /// The ensemble process that started it, if any.
    pub owner: Option<u32>,
    /// Its own answer, when it has an endpoint.
    pub own: Option<&'a ProcessInfo>,
    /// Its parent's record of it, for a child.
    pub as_child: Option<&'a ChildInfo>,
}

impl Node<'_> {
    /// The name given at spawn, or the root's executable name.
    pub fn name(&self) -> &str {
        self.as_child.map(|c| c.name.as_str()).or(self.own.map(|o| o.name.as_str())).unwrap_or("?")
    }
}

/// The processes of `machine` by pid, each with its owner (the ensemble process that lists it
/// among its children, else its parent pid when that is an ensemble process).
pub fn nodes(machine: &Machine) -> BTreeMap<u32, Node<'_>> {
    let mut nodes: BTreeMap<u32, Node<'_>> = BTreeMap::new();
    for info in &machine.processes {
        nodes.insert(info.pid, Node { pid: info.pid, owner: None, own: Some(info), as_child: None });
    }
    for info in &machine.processes {
        for child in &info.children {
            let node = nodes.entry(child.pid).or_insert(Node {
                pid: child.pid,
                owner: None,
                own: None,
                as_child: None,
            });
            node.owner = Some(info.pid);
            node.as_child = Some(child);
        }
    }
    let pids: BTreeSet<u32> = nodes.keys().copied().collect();
    for node in nodes.values_mut() {
        if node.owner.is_none() {
            node.owner = node.own.map(|o| o.ppid).filter(|ppid| pids.contains(ppid));
        }
    }
    nodes
}

/// The process a command names: a pid, or a name given at spawn (which must be unique).
///
/// # Errors
/// When nothing, or more than one process, matches; or the pid is not an ensemble process.
pub fn resolve<'a>(machine: &'a Machine, target: &str) -> Result<Node<'a>, String> {
    let nodes = nodes(machine);
    if let Ok(pid) = target.parse::<u32>() {
        return nodes.get(&pid).cloned().ok_or_else(|| format!("{pid} is not a running ensemble process"));
    }
    let matches: Vec<_> = nodes.values().filter(|n| n.name() == target).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no ensemble process is named {target:?}")),
        many => {
            let pids: Vec<String> = many.iter().map(|n| n.pid.to_string()).collect();
            Err(format!(
                "{} processes are named {target:?} (pids {}): name one by pid",
                many.len(),
                pids.join(", ")
            ))
        }
    }
}

/// The tree as text: one line per process, indented under its owner, each followed by the
/// segments it holds and which other processes hold the same ones.
pub fn render(machine: &Machine) -> String {
    let nodes = nodes(machine);
    let holders = holders(machine);
    let mut out = format!(
        "{:<14} {:<20} {:<16} {:<9} {:>8} {:>8} {:>8} {:>6} {:>9}\n",
        "PID", "NAME", "ACTOR", "STATE", "UPTIME", "RESTARTS", "CALLS", "ERRORS", "MEAN"
    );
    let roots: Vec<u32> = nodes.values().filter(|n| n.owner.is_none()).map(|n| n.pid).collect();
    for pid in roots {
        render_node(&mut out, &nodes, &holders, pid, 0);
    }
    for (pid, why) in &machine.unreachable {
        let _ = writeln!(out, "{pid:<14} (no answer: {why})");
    }
    if nodes.is_empty() && machine.unreachable.is_empty() {
        out.push_str("(no ensemble program is running)\n");
    }
    out
}

fn render_node(
    out: &mut String,
    nodes: &BTreeMap<u32, Node<'_>>,
    holders: &BTreeMap<u64, Vec<u32>>,
    pid: u32,
    depth: usize,
) {
    let Some(node) = nodes.get(&pid) else { return };
    let indent = "  ".repeat(depth);
    let child = node.as_child;
    let actor = child.map(|c| c.actor.as_str()).or(node.own.and_then(|o| o.actor.as_deref()));
    let state = child.map_or("running".to_owned(), |c| format!("{:?}", c.state).to_lowercase());
    let uptime = child.map(|c| c.uptime_ms).or(node.own.map(|o| o.uptime_ms));
    let restarts = child.and_then(|c| c.supervision.as_ref()).map(|s| s.restarts.to_string());
    let calls = child.map(|c| &c.calls);
    let _ = writeln!(
        out,
        "{:<14} {:<20} {:<16} {:<9} {:>8} {:>8} {:>8} {:>6} {:>9}",
        format!("{indent}{pid}"),
        truncate(node.name(), 20),
        truncate(actor.map_or("-", short_type), 16),
        state,
        uptime.map_or("-".into(), duration),
        restarts.as_deref().unwrap_or("-"),
        calls.map_or("-".into(), |c| c.calls.to_string()),
        calls.map_or("-".into(), |c| c.errors.to_string()),
        calls.and_then(|c| c.mean_seconds()).map_or("-".into(), seconds),
    );
    for segment in node.own.map(|o| o.segments.as_slice()).unwrap_or_default() {
        let _ = writeln!(out, "{indent}    {}", segment_line(segment, pid, holders));
    }
    let children: Vec<u32> = nodes.values().filter(|n| n.owner == Some(pid)).map(|n| n.pid).collect();
    for child in children {
        render_node(out, nodes, holders, child, depth + 1);
    }
}

fn segment_line(segment: &SegmentInfo, pid: u32, holders: &BTreeMap<u64, Vec<u32>>) -> String {
    let others: Vec<String> = holders
        .get(&segment.inode)
        .into_iter()
        .flatten()
        .filter(|&&p| p != pid)
        .map(u32::to_string)
        .collect();
    let shared = if others.is_empty() {
        "held here only".to_owned()
    } else {
        format!("also in {}", others.join(", "))
    };
    format!("segment {} inode {} {} ({shared})", segment.name, segment.inode, bytes(segment.size))
}

/// The pids that hold each segment inode.
pub fn holders(machine: &Machine) -> BTreeMap<u64, Vec<u32>> {
    let mut holders: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for info in &machine.processes {
        for segment in &info.segments {
            holders.entry(segment.inode).or_default().push(info.pid);
        }
    }
    holders
}

fn short_type(key: &str) -> &str {
    key.rsplit("::").next().unwrap_or(key)
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn seconds(s: f64) -> String {
    match s {
        s if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        s if s < 1.0 => format!("{:.1}ms", s * 1e3),
        s => format!("{s:.2}s"),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.1} GiB", n as f64 / 1_073_741_824.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ensemble_runtime::introspect::{ActorState, CallStats, Role, Supervision};

    fn process(
        pid: u32,
        ppid: u32,
        name: &str,
        children: Vec<ChildInfo>,
        segments: Vec<SegmentInfo>,
    ) -> ProcessInfo {
        let role = if children.is_empty() && ppid != 1 { Role::Child } else { Role::Root };
        ProcessInfo { pid, ppid, name: name.into(), role, actor: None, uptime_ms: 65_000, children, segments }
    }

    fn child(pid: u32, name: &str, restarts: Option<u32>) -> ChildInfo {
        let calls = CallStats { calls: 4, errors: 1, seconds_sum: 0.002, ..CallStats::default() };
        let supervision = restarts.map(|restarts| Supervision {
            supervisor: 1,
            child: name.into(),
            restarts,
            restart: "permanent".into(),
        });
        ChildInfo {
            pid,
            name: name.into(),
            actor: "app::Worker".into(),
            state: ActorState::Running,
            uptime_ms: 1_500,
            calls,
            supervision,
        }
    }

    fn segment(inode: u64) -> SegmentInfo {
        SegmentInfo { name: "ensemble:frames".into(), inode, size: 65536, descriptors: 1 }
    }

    fn machine() -> Machine {
        let root = process(
            100,
            1,
            "app",
            vec![child(101, "worker-1", Some(2)), child(102, "worker-2", None)],
            vec![segment(7)],
        );
        let w1 = process(101, 100, "worker-1", vec![], vec![segment(7)]);
        // worker-2 has no endpoint (e.g. ENSEMBLE_INTROSPECT=off): it is listed from its parent.
        Machine { processes: vec![root, w1], unreachable: vec![] }
    }

    #[test]
    fn the_tree_shows_children_under_their_parent_with_their_parents_figures() {
        let text = render(&machine());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PID"), "{text}");
        assert!(
            lines[1].starts_with("100 ") && lines[1].contains("app") && lines[1].contains("1m05s"),
            "{text}"
        );
        assert!(lines[2].contains("segment ensemble:frames inode 7 64.0 KiB (also in 101)"), "{text}");
        assert!(
            lines[3].starts_with("  101") && lines[3].contains("worker-1") && lines[3].contains("Worker"),
            "{text}"
        );
        assert!(lines[3].contains(" 2 ") && lines[3].contains("500µs"), "restarts and mean latency: {text}");
        assert!(lines[4].contains("also in 100"), "{text}");
        assert!(lines[5].starts_with("  102") && lines[5].contains("worker-2"), "{text}");
    }

    #[test]
    fn targets_resolve_by_pid_or_unique_name() {
        let machine = machine();
        assert_eq!(resolve(&machine, "102").unwrap().owner, Some(100));
        assert_eq!(resolve(&machine, "worker-1").unwrap().pid, 101);
        assert_eq!(resolve(&machine, "app").unwrap().owner, None);
        assert!(resolve(&machine, "nobody").unwrap_err().contains("no ensemble process"));
        assert!(resolve(&machine, "4242").is_err());
    }

    #[test]
    fn nothing_running_says_so() {
        assert!(render(&Machine::default()).contains("no ensemble program is running"));
    }
}
