//! The port a child process listens on, read from `/proc` (Linux): a child started with
//! `--listen 127.0.0.1:0` binds a port the kernel picks, so no other process can take it
//! between a test's choice and the child's bind.

use std::process::Child;
use std::time::{Duration, Instant};

/// Waits (up to `timeout`) until `child` has exactly one listening TCP socket, and returns its
/// port; panics if the child exits first, or listens on more than one port.
pub fn listening_port(child: &mut Child, timeout: Duration) -> u16 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited ({status}) before it listened");
        }
        let ports = listening_ports(child.id());
        match ports.as_slice() {
            [port] => return *port,
            [] => {}
            many => panic!("the child listens on {many:?}; expected one port"),
        }
        assert!(
            Instant::now() < deadline,
            "the child did not listen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The ports of the listening TCP sockets that process `pid` holds.
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}
