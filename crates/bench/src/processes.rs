//! Starting the workspace's own binaries from a tool that sits beside them
//! (`target/<profile>/`): the cluster bench and the soak run real
//! `payvisor` and `payvisor-bank-sim` processes, not in-process copies.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// The path of a workspace binary built beside the running one.
pub fn beside_me(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.parent().context("no directory")?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --workspace --bins",
        path.display()
    );
    Ok(path)
}

/// A loopback port free now (for an address that must survive restarts).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a process and waits for the line of stdout that contains `ready`;
/// returns the text after it. Its log is dropped (errors only).
pub fn start(mut command: Command, ready: &str) -> anyhow::Result<(Child, String)> {
    let mut child = command
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let rest = loop {
        let line = lines.next().context("exited before it was ready")??;
        if let Some((_, rest)) = line.split_once(ready) {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, rest))
}
