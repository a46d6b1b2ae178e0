// SPDX-License-Identifier: Apache-2.0
//! DPDK's `dpdk-testpmd` (Debian package `dpdk-dev`) as the link benchmark's independent
//! peer: `net_virtio_user` clients (a frame generator, `txonly`, and a sink, `rxonly`: vhost-user
//! frontends that need no VM) and, as the reference switch, two `net_vhost` ports io-forwarding
//! to each other. Each runs interactively without huge pages (`--no-huge -m 1024 --no-pci
//! --total-num-mbufs=16384`); commands go to its stdin, its port counters are read back from
//! the answers to `show port stats` once it has quit (it buffers its output).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::{io_err, Error, Result};

/// One testpmd process.
pub struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    name: String,
    output: PathBuf,
}

/// What a testpmd instance does.
#[derive(Debug, Clone)]
pub enum Role {
    /// A `net_virtio_user` client sending frames (`txonly`).
    Sender {
        /// The vhost-user socket.
        socket: PathBuf,
        /// Ethernet frame length.
        frame_len: usize,
    },
    /// A `net_virtio_user` client receiving and dropping frames (`rxonly`).
    Sink {
        /// The vhost-user socket.
        socket: PathBuf,
    },
    /// Two `net_vhost` ports io-forwarding between them.
    Switch {
        /// Socket of port 0.
        a: PathBuf,
        /// Socket of port 1.
        b: PathBuf,
    },
}

/// The largest queue size a `net_virtio_user` client may use (its default is 256).
pub const CLIENT_QUEUE_SIZE: u16 = 1024;

impl Testpmd {
    /// Start `bin` in `role`, output to `dir/<name>.log`; forwarding is started at once. Its
    /// two lcores (main and forwarding) may run on either of CPUs 0 and 1, as the kernel
    /// places them (as it places our backend's threads).
    pub fn start(bin: &Path, role: &Role, name: &str, dir: &Path) -> Result<Self> {
        // Commands reach testpmd through `cat`: fed straight from this process's pipe, the
        // virtio-user port's vhost-user handshake failed with EINTR nearly every time (never
        // through a shell pipeline).
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat | exec \"$0\" \"$@\""]).arg(bin);
        cmd.args(["--lcores", "0@(0,1),1@(0,1)", "--main-lcore", "0"])
            .args(["--no-huge", "-m", "1024", "--no-pci", "--file-prefix"])
            .arg(format!("vmm-perf-{name}-{}", std::process::id()));
        let mode = match role {
            Role::Sender { socket, .. } | Role::Sink { socket } => {
                cmd.arg("--vdev")
                    .arg(format!("net_virtio_user0,path={}", socket.display()));
                if matches!(role, Role::Sender { .. }) {
                    "txonly"
                } else {
                    "rxonly"
                }
            }
            Role::Switch { a, b } => {
                cmd.arg("--vdev")
                    .arg(format!("net_vhost0,iface={},queues=1", a.display()));
                cmd.arg("--vdev")
                    .arg(format!("net_vhost1,iface={},queues=1", b.display()));
                "io"
            }
        };
        cmd.args(["--", "-i", "--nb-cores=1", "--total-num-mbufs=16384"])
            .arg(format!("--forward-mode={mode}"));
        if let Role::Sender { frame_len, .. } = role {
            cmd.arg(format!("--txpkts={frame_len}"));
        }
        let output = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&output).map_err(io_err(output.display().to_string()))?;
        let err = log.try_clone().map_err(io_err("dup log"))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io_err(format!("spawn {}", bin.display())))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Backend("testpmd stdin".into()))?;
        let mut t = Testpmd {
            child,
            stdin,
            name: name.into(),
            output,
        };
        t.command("start")?;
        Ok(t)
    }

    /// Send one interactive command.
    pub fn command(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(io_err(format!("testpmd {}: {line}", self.name)))
    }

    /// Zero port 0's counters now (`clear port stats all`).
    pub fn clear_counters(&mut self) -> Result<()> {
        self.command("clear port stats all")
    }

    /// Ask for port 0's counters now (`show port stats 0`); testpmd buffers its output, so
    /// the answers are read with [`Testpmd::quit`].
    pub fn ask_counters(&mut self) -> Result<()> {
        self.command("show port stats 0")
    }

    /// Quit (forwarding stops) and reap the process (killed if it does not exit in 5 s);
    /// returns port 0's `(RX-packets, TX-packets)` of every [`Testpmd::ask_counters`], in order.
    pub fn quit(mut self) -> Result<Vec<(u64, u64)>> {
        let _ = self.command("quit");
        crate::stop_child(&mut self.child, Duration::from_secs(5));
        let mut text = String::new();
        std::fs::File::open(&self.output)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(io_err(self.output.display().to_string()))?;
        // virtio-user gives up on a vhost-user message interrupted by a signal (EINTR), which
        // happens now and then on a loaded machine: the port then stays down.
        if ["No probed ethernet devices", "Failed to start device"]
            .iter()
            .any(|e| text.contains(e))
        {
            return Err(Error::Backend(format!(
                "testpmd {}: its port did not come up (see {})",
                self.name,
                self.output.display()
            )));
        }
        Ok(parse_port_stats(&text))
    }
}

/// The `(RX-packets, TX-packets)` pairs of the `NIC statistics` blocks `show port stats`
/// prints (forward statistics blocks, printed when forwarding stops, are left out).
pub fn parse_port_stats(text: &str) -> Vec<(u64, u64)> {
    let value = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    let mut out = Vec::new();
    let mut in_block = false;
    let mut rx = None;
    for line in text.lines() {
        if line.contains("NIC statistics for port") {
            in_block = true;
            rx = None;
        } else if in_block {
            if let Some(v) = value(line, "RX-packets:") {
                rx = Some(v);
            }
            if let (Some(r), Some(t)) = (rx, value(line, "TX-packets:")) {
                out.push((r, t));
                in_block = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_statistics_are_read_and_forward_statistics_left_out() {
        let text = "testpmd> show port stats 0

  ######################## NIC statistics for port 0  ########################
  RX-packets: 97408      RX-missed: 0          RX-bytes:  6234112
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 12         TX-errors: 0          TX-bytes:  768

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  ############################################################################
  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 1553984        RX-dropped: 0             RX-total: 1553984
  TX-packets: 0              TX-dropped: 0             TX-total: 0
  ######################## NIC statistics for port 0  ########################
  RX-packets: 316309     RX-missed: 0          RX-bytes:  20243776
  TX-packets: 13         TX-errors: 0          TX-bytes:  768
";
        assert_eq!(parse_port_stats(text), vec![(97408, 12), (316309, 13)]);
        assert!(parse_port_stats("Invalid port 0").is_empty());
    }
}
