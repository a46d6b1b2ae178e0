// SPDX-License-Identifier: Apache-2.0
//! The inflight region a frontend hands a backend (vhost-user SET_INFLIGHT_FD): the
//! message's size, offset, queue count and size are checked against the file, the region
//! (the fuzzer's bytes: headers, descriptor states, batch links, used indices) is mapped,
//! and each queue is started as after a backend restart, which must yield a recovery that
//! names only heads inside the ring, each once; then requests are marked, unmarked and
//! published.

#![no_main]

use std::collections::HashSet;
use std::os::unix::fs::FileExt;

use backends::inflight::InflightRegion;
use iovmm_fuzz::{memfd, Input};
use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::message::VhostUserInflight;

const MAX_QUEUES: u16 = 4;
const MAX_SIZE: u16 = 256;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let msg = VhostUserInflight {
        mmap_size: u64::from(input.u32() % 0x40000),
        mmap_offset: u64::from(input.u16()) * 64 % 0x10000,
        num_queues: input.u16() % 6,
        queue_size: input.u16() % 300,
    };
    let file_len = u64::from(input.u32() % 0x20000);
    let guest_used = input.u16();
    let ring_size = input.u16() % 300;
    let ops = input.bytes(64);
    let file = memfd(file_len);
    let _ = file.write_all_at(input.rest(), msg.mmap_offset);
    let Ok(region) = InflightRegion::map(&msg, &file, MAX_QUEUES, MAX_SIZE) else {
        return;
    };
    assert!(region.num_queues() <= MAX_QUEUES);
    for index in 0..region.num_queues() {
        let Some(mut queue) = region.queue(index) else {
            panic!("queue {index} of {} missing", region.num_queues());
        };
        let recovery = queue.start(guest_used, ring_size);
        let mut seen = HashSet::new();
        for &head in &recovery.heads {
            assert!(
                head < ring_size.max(1),
                "head {head} outside a ring of {ring_size}"
            );
            assert!(seen.insert(head), "head {head} resubmitted twice");
        }
        for pair in ops.chunks(2) {
            let head = u16::from(pair[0]) % (ring_size.max(1) + 2);
            match pair.get(1).copied().unwrap_or(0) % 3 {
                0 => queue.mark(head),
                1 => queue.unmark(head),
                _ => {
                    let used = [(head, 0u32)];
                    let _ = queue.publish(&used, || Ok::<_, ()>(((), guest_used.wrapping_add(1))));
                }
            }
        }
        queue.stop();
    }
});
