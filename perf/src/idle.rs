// SPDX-License-Identifier: Apache-2.0
//! Keeping idle CPUs awake for a benchmark's duration: a PM QoS CPU-latency request through
//! `/dev/cpu_dma_latency`, which holds for as long as the file stays open (the kernel drops it
//! when the file closes, also when the process dies), as `cyclictest` and tuned's latency
//! profiles do.
//!
//! With a zero limit the cpuidle governor picks no state deeper than polling, so an idle CPU
//! never halts. That matters where one side of a benchmark sleeps until the other wakes it (a
//! virtio driver waiting for a used-buffer notification, a backend waiting for a kick): on a
//! virtual machine a halted vCPU gives its physical CPU back to the host, and waking it again
//! costs host scheduling latency that a single-threaded reference never pays.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use crate::{io_err, Result};

/// The PM QoS CPU-latency device.
pub const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

/// An open CPU-latency request; dropping it closes the file, which withdraws the request.
#[derive(Debug)]
pub struct CpuLatencyHold {
    _file: File,
    limit_us: i32,
}

impl CpuLatencyHold {
    /// Ask the kernel to keep every CPU's wake-up latency at or below `limit_us` microseconds
    /// until the returned value is dropped (0: idle CPUs poll instead of halting).
    pub fn request(limit_us: i32) -> Result<Self> {
        let ctx = format!("request a {limit_us} µs CPU latency through {CPU_DMA_LATENCY}");
        let mut file = OpenOptions::new()
            .write(true)
            .open(CPU_DMA_LATENCY)
            .map_err(io_err(ctx.clone()))?;
        // The device takes the limit as one native-endian 32-bit integer.
        file.write_all(&limit_us.to_ne_bytes())
            .map_err(io_err(ctx))?;
        Ok(Self {
            _file: file,
            limit_us,
        })
    }

    /// The limit this request asks for, in microseconds.
    pub fn limit_us(&self) -> i32 {
        self.limit_us
    }
}

/// The CPU-latency limit in force now (the strictest of all open requests), in microseconds.
pub fn cpu_latency_limit_us() -> Result<i32> {
    read_limit(Path::new(CPU_DMA_LATENCY))
}

fn read_limit(path: &Path) -> Result<i32> {
    let mut raw = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(io_err(format!("read {}", path.display())))?;
    Ok(i32::from_ne_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit no other request on a test machine uses, so its presence and absence are ours.
    const PROBE_LIMIT_US: i32 = 7;

    #[test]
    fn a_request_holds_the_limit_while_open_and_ends_when_dropped() {
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .open(CPU_DMA_LATENCY)
        {
            eprintln!("skipped: {CPU_DMA_LATENCY} cannot be opened for writing here ({e}; needs root and a kernel with PM QoS)");
            return;
        }
        let hold = CpuLatencyHold::request(PROBE_LIMIT_US).unwrap();
        assert_eq!(hold.limit_us(), PROBE_LIMIT_US);
        // Another holder (a benchmark running beside this test) may ask for less, never more.
        let held = cpu_latency_limit_us().unwrap();
        assert!(held <= PROBE_LIMIT_US, "limit {held} µs while ours is held");
        drop(hold);
        let after = cpu_latency_limit_us().unwrap();
        assert_ne!(after, PROBE_LIMIT_US, "the request outlived its file");
    }
}
