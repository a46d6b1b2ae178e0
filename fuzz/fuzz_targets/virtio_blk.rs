// SPDX-License-Identifier: Apache-2.0
//! Descriptor chain walking and virtio-blk request handling: the shared engine pops and
//! validates chains from a split queue laid out by the fuzzer, and the virtio-blk handler
//! parses each request and runs it with io_uring against a memfd disk (reads, writes,
//! flush, discard, write-zeroes, GET_ID, unknown types).

#![no_main]

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use backends::blk::{BlkHandler, BlkSettings};
use backends::engine::{Engine, EngineConfig, QueueStats};
use iovmm_fuzz::{
    guest_memory, local_queue, memfd, queue_size, run_until_idle, split_queue, Input,
};
use libfuzzer_sys::fuzz_target;

/// Disk size: 64 KiB (128 sectors), so the fuzzer reaches its end easily.
const DISK: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = queue_size(&mut input);
    let mode = input.u8();
    let seg_max = u32::from(input.u8() % 130).max(1);
    let mem = guest_memory();
    let queue = split_queue(&mem, &mut input, size, mode & 2 != 0);
    let mut q = local_queue(&mem, queue);
    let settings = BlkSettings {
        sectors: DISK / 512,
        readonly: mode & 1 != 0,
        serial: *b"fuzz-serial-01234567",
        seg_max,
        discard: mode & 4 != 0,
        write_zeroes: mode & 8 != 0,
    };
    let stats = Arc::new(QueueStats::default());
    let writeback = Arc::new(AtomicBool::new(mode & 16 != 0));
    let handler = BlkHandler::new(Arc::new(memfd(DISK)), settings, writeback, stats.clone());
    let cfg = EngineConfig::new(size, seg_max as usize + 2);
    let mut engine = match Engine::new(handler, cfg, stats) {
        Ok(e) => e,
        Err(e) => panic!("engine setup (harness): {e}"),
    };
    // A pass that fails (a used ring the driver moved out of memory) is an answer, not a
    // finding; a panic or a sanitizer report is.
    run_until_idle(Duration::from_secs(1), || {
        let _ = engine.process(&mut q);
        engine.inflight()
    });
});
