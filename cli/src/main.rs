//! `ensemble`: see and control the ensemble programs running on this machine.
//!
//! - `ensemble ps [--json]`: every program as a tree by parent, with actor types, states,
//!   restarts, call counts and latency, and the segments each process holds.
//! - `ensemble stop PID|NAME`: an orderly stop, by the program that owns the process (its
//!   supervisor, which then does not restart it, or its connection); a root gets SIGTERM.
//! - `ensemble kill PID|NAME`: SIGKILL (only to a process that is an ensemble process).
//!
//! Install with `cargo install --path cli`.

#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ensemble_cli::{gather, render, resolve};
use rustix::process::{kill_process, Pid, Signal};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "ensemble", version, about = "See and control the ensemble programs on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every ensemble process as a tree, with its actors' figures and segments.
    Ps {
        /// Print the processes' answers as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a process in order (post_run runs); a supervised child is not restarted.
    Stop {
        /// A pid, or a process name given at spawn.
        target: String,
        /// How long to wait for it to exit, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Kill a process with SIGKILL (its supervisor, if any, restarts it).
    Kill {
        /// A pid, or a process name given at spawn.
        target: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ps { json } => ps(json),
        Command::Stop { target, timeout } => stop(&target, Duration::from_secs(timeout)),
        Command::Kill { target } => kill(&target),
    }
}

fn ps(json: bool) -> anyhow::Result<()> {
    let machine = gather().context("cannot list the endpoints in /proc/net/unix")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&machine)?);
    } else {
        print!("{}", render(&machine));
    }
    Ok(())
}

fn stop(target: &str, timeout: Duration) -> anyhow::Result<()> {
    let machine = gather().context("cannot list the endpoints in /proc/net/unix")?;
    let node = resolve(&machine, target).map_err(anyhow::Error::msg)?;
    match node.owner {
        Some(owner) => {
            let how = ensemble_runtime::introspect::request_stop(owner, node.pid)?;
            println!("{} ({}): {how}", node.pid, node.name());
        }
        None => {
            signal(node.pid, Signal::TERM)?;
            println!("{} ({}): a root program; sent SIGTERM", node.pid, node.name());
        }
    }
    if !wait_gone(node.pid, timeout) {
        bail!("{} is still running after {timeout:?}", node.pid);
    }
    println!("{} has exited", node.pid);
    Ok(())
}

fn kill(target: &str) -> anyhow::Result<()> {
    let machine = gather().context("cannot list the endpoints in /proc/net/unix")?;
    let node = resolve(&machine, target).map_err(anyhow::Error::msg)?;
    signal(node.pid, Signal::KILL)?;
    println!("{} ({}): killed", node.pid, node.name());
    Ok(())
}

fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw).context("not a pid")?;
    kill_process(raw, signal).with_context(|| format!("cannot signal {pid}"))?;
    Ok(())
}

/// Waits until `pid` is gone (or a zombie its parent has yet to reap).
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
        if matches!(state, None | Some("Z")) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
