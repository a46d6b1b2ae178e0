// SPDX-License-Identifier: Apache-2.0
//! Region format, crash recovery at every store of the batch protocol, hostile regions.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Test-only crash injection: after `budget` more stores to the region, every later store is
/// lost, as if the process had been killed right there.
#[derive(Clone)]
pub(super) struct Crash(Arc<AtomicUsize>);

impl Default for Crash {
    fn default() -> Self {
        Self(Arc::new(AtomicUsize::new(usize::MAX)))
    }
}

impl Crash {
    /// Whether the next store still happens (and counts it).
    pub(super) fn survives(&self) -> bool {
        match self.0.load(Ordering::Relaxed) {
            usize::MAX => true,
            0 => false,
            left => {
                self.0.store(left - 1, Ordering::Relaxed);
                true
            }
        }
    }

    fn after(&self, stores: usize) {
        self.0.store(stores, Ordering::Relaxed);
    }
}

const SIZE: u16 = 8;

fn request(num_queues: u16, queue_size: u16) -> VhostUserInflight {
    VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues,
        queue_size,
    }
}

/// A region for two queues of [`SIZE`], as GET_INFLIGHT_FD makes it.
fn new_region() -> (VhostUserInflight, File) {
    InflightRegion::create(&request(2, SIZE), 4, 256).unwrap()
}

/// What a (re)started backend maps from SET_INFLIGHT_FD: queue 0's view.
fn view(msg: &VhostUserInflight, file: &File) -> InflightQueue {
    InflightRegion::map(msg, file, 4, 256)
        .unwrap()
        .queue(0)
        .unwrap()
}

fn poke<const N: usize>(file: &File, offset: usize, bytes: [u8; N]) {
    file.write_all_at(&bytes, offset as u64).unwrap();
}

fn peek_u16(file: &File, offset: usize) -> u16 {
    let mut b = [0u8; 2];
    file.read_exact_at(&mut b, offset as u64).unwrap();
    u16::from_ne_bytes(b)
}

#[test]
fn layout_matches_libvhost_user() {
    assert_eq!(queue_region_len(1), 64);
    assert_eq!(queue_region_len(3), 64);
    assert_eq!(queue_region_len(4), 128);
    assert_eq!(queue_region_len(128), 2112);
    assert_eq!(queue_region_len(256), 4160);
    let (msg, file) = InflightRegion::create(&request(3, 256), 4, 256).unwrap();
    assert_eq!((msg.mmap_size, msg.mmap_offset), (3 * 4160, 0));
    assert_eq!((msg.num_queues, msg.queue_size), (3, 256));
    assert_eq!(file.metadata().unwrap().len(), 3 * 4160);
    // Sealed: the frontend cannot shrink it under a backend's mapping.
    assert!(file.set_len(100).is_err());
    // The second queue's region starts one queue region in; a ring start initialises it.
    let region = InflightRegion::map(&msg, &file, 4, 256).unwrap();
    let mut q1 = region.queue(1).unwrap();
    assert_eq!(q1.start(9, 256), Recovery::default());
    assert_eq!(peek_u16(&file, 4160 + H_VERSION), INFLIGHT_VERSION);
    assert_eq!(peek_u16(&file, 4160 + H_DESC_NUM), 256);
    assert_eq!(peek_u16(&file, 4160 + H_USED_IDX), 9);
    assert_eq!(peek_u16(&file, H_VERSION), 0, "queue 0 untouched");
    assert!(region.queue(3).is_none());
}

#[test]
fn in_flight_heads_come_back_in_submission_order() {
    let (msg, file) = new_region();
    let mut q = view(&msg, &file);
    assert_eq!(q.start(0, SIZE), Recovery::default());
    for head in [6, 2, 4, 0] {
        q.mark(head);
    }
    // The backend dies; its successor finds all four, oldest first.
    drop(q);
    let mut q = view(&msg, &file);
    let r = q.start(0, SIZE);
    assert_eq!(r.heads, [6, 2, 4, 0]);
    // It takes a new one, then dies too: the new one comes after the resubmitted ones.
    q.mark(5);
    drop(q);
    assert_eq!(view(&msg, &file).start(0, SIZE).heads, [6, 2, 4, 0, 5]);
}

/// Marks `marks`, then publishes `batch` (each head with a used length) with the process
/// killed after `crash_after` stores; returns the guest's used index afterwards and what a
/// restarted backend recovers.
fn crash_while_publishing(
    earlier: &[u16],
    marks: &[u16],
    batch: &[u16],
    crash_after: usize,
) -> (u16, Recovery) {
    let (msg, file) = new_region();
    let mut q = view(&msg, &file);
    q.start(0, SIZE);
    let mut used = 0u16;
    // An earlier batch, fully published, leaves `last_batch_head` and `next` links behind.
    for &h in earlier {
        q.mark(h);
    }
    let entries: Vec<(u16, u32)> = earlier.iter().map(|&h| (h, 1)).collect();
    let new = used.wrapping_add(entries.len() as u16);
    q.publish(&entries, || Ok::<_, ()>(((), new))).unwrap();
    used = new;
    for &h in marks {
        q.mark(h);
    }
    let crash = q.crash.clone();
    crash.after(crash_after);
    let entries: Vec<(u16, u32)> = batch.iter().map(|&h| (h, 512)).collect();
    let new = used.wrapping_add(entries.len() as u16);
    // The used ring publication is one more store (entries then the index; the entries alone
    // are invisible to the driver).
    let _ = q.publish(&entries, || {
        if crash.survives() {
            used = new;
        }
        Ok::<_, ()>(((), new))
    });
    drop(q);
    let mut restarted = view(&msg, &file);
    let recovery = restarted.start(used, SIZE);
    (used, recovery)
}

#[test]
fn a_crash_at_every_store_of_a_batch_recovers_exactly_the_unanswered_heads() {
    let earlier = [1, 6];
    let marks = [3, 5, 1, 7, 0];
    let batch = [5, 1, 0];
    // Stores of one publication: 2 per linked head, the used ring, 1 per cleared flag, used_idx.
    let stores = 2 * batch.len() + 1 + batch.len() + 1;
    for crash_after in 0..=stores + 1 {
        let (used, r) = crash_while_publishing(&earlier, &marks, &batch, crash_after);
        assert_eq!(r.refused, None, "crash after {crash_after} stores");
        if crash_after <= 2 * batch.len() {
            // The driver never saw the batch: all five are still owed, in submission order.
            assert_eq!(used, 2);
            assert_eq!(r.heads, [3, 5, 1, 7, 0], "crash after {crash_after} stores");
            assert_eq!(r.cleared, 0);
        } else {
            // Published: only the two left are owed; an uncleared batch was cleared now.
            assert_eq!(used, 5);
            assert_eq!(r.heads, [3, 7], "crash after {crash_after} stores");
            let uncleared = crash_after < stores;
            assert_eq!(r.cleared, if uncleared { 3 } else { 0 });
        }
        // The ring restarts at the used index plus what is resubmitted: 5 chains were taken
        // after the earlier batch of 2, however far the publication got.
        assert_eq!(r.next_avail, Some(7));
    }
}

#[test]
fn a_crash_while_recovering_is_recovered_again() {
    // The first restart is killed while clearing the uncleared batch, at every store.
    for crash_after in 0..6 {
        let (msg, file) = new_region();
        let mut q = view(&msg, &file);
        q.start(0, SIZE);
        for h in [2, 4, 6] {
            q.mark(h);
        }
        // Published, flags not cleared: a crash right after the used ring store.
        q.crash.after(2 * 2);
        let _ = q.publish(&[(2, 1), (6, 1)], || Ok::<_, ()>(((), 2)));
        drop(q);
        let mut first = view(&msg, &file);
        first.crash.after(crash_after);
        first.start(2, SIZE);
        drop(first);
        let r = view(&msg, &file).start(2, SIZE);
        assert_eq!(r.heads, [4], "crash after {crash_after} stores");
        assert_eq!(r.refused, None);
    }
}

#[test]
fn a_batch_with_the_ring_wrapping_and_heads_past_the_ring_skipped() {
    let (msg, file) = new_region();
    let mut q = view(&msg, &file);
    q.start(65534, SIZE);
    for h in 0..SIZE {
        q.mark(h);
    }
    // A head past the ring is not on the used ring and not linked.
    let batch: Vec<(u16, u32)> = [7, 0, 9, 3].iter().map(|&h| (h, 1)).collect();
    assert_eq!(q.publish(&batch, || Ok::<_, ()>((7, 1))), Ok(7));
    drop(q);
    let r = view(&msg, &file).start(1, SIZE);
    assert_eq!(r.heads, [1, 2, 4, 5, 6]);
    assert_eq!(r.cleared, 0);
    // A failed publication leaves the batch in flight.
    let mut q = view(&msg, &file);
    q.start(1, SIZE);
    assert_eq!(
        q.publish(&[(1, 1)], || Err::<((), u16), _>("used ring unwritable")),
        Err("used ring unwritable")
    );
    drop(q);
    assert_eq!(view(&msg, &file).start(1, SIZE).heads, [1, 2, 4, 5, 6]);
}

#[test]
fn unmarked_heads_and_a_stopped_ring_are_not_tracked() {
    let (msg, file) = new_region();
    let mut q = view(&msg, &file);
    q.mark(1); // not started: ignored
    q.start(0, 4);
    q.mark(2);
    q.mark(3);
    q.mark(6); // past the ring
    q.unmark(2); // given back to the avail ring
    q.stop();
    q.mark(0);
    drop(q);
    assert_eq!(view(&msg, &file).start(0, 4).heads, [3]);
}

/// Starts queue 0 of a fresh region doctored by `doctor`, expecting a refusal; then checks the
/// queue region was reinitialised and tracks again.
fn refused(ring: u16, guest_used: u16, doctor: impl FnOnce(&File)) -> InflightFault {
    let (msg, file) = new_region();
    let mut q = view(&msg, &file);
    q.start(0, SIZE);
    for h in [1, 4] {
        q.mark(h);
    }
    drop(q);
    doctor(&file);
    let mut q = view(&msg, &file);
    let r = q.start(guest_used, ring);
    assert!(r.heads.is_empty() && r.cleared == 0, "{r:?}");
    let fault = r.refused.expect("the region should be refused");
    // Started empty and reinitialised: tracking works from here on.
    assert_eq!(peek_u16(&file, H_VERSION), INFLIGHT_VERSION);
    assert_eq!(peek_u16(&file, H_USED_IDX), guest_used);
    if q.tracking() {
        q.mark(2);
        drop(q);
        assert_eq!(view(&msg, &file).start(guest_used, ring).heads, [2]);
    }
    fault
}

#[test]
fn hostile_queue_regions_are_refused_and_started_empty() {
    let entry = InflightQueue::entry;
    assert_eq!(
        refused(SIZE, 0, |f| poke(f, H_VERSION, 7u16.to_ne_bytes())),
        InflightFault::Version(7)
    );
    assert_eq!(
        refused(SIZE, 0, |f| poke(f, H_DESC_NUM, 4u16.to_ne_bytes())),
        InflightFault::DescNum {
            found: 4,
            expected: SIZE
        }
    );
    assert_eq!(
        refused(16, 0, |_| {}),
        InflightFault::RingTooLarge {
            ring: 16,
            tracked: SIZE
        }
    );
    assert_eq!(
        refused(SIZE, 0, |f| poke(f, entry(4) + D_INFLIGHT, [2])),
        InflightFault::Flag { head: 4, value: 2 }
    );
    assert_eq!(
        refused(5, 0, |f| poke(f, entry(6) + D_INFLIGHT, [1])),
        InflightFault::HeadPastRing { head: 6, ring: 5 }
    );
    assert_eq!(
        refused(SIZE, 0, |f| poke(
            f,
            entry(4) + D_COUNTER,
            u64::MAX.to_ne_bytes()
        )),
        InflightFault::Counter {
            head: 4,
            counter: u64::MAX
        }
    );
    assert_eq!(
        refused(SIZE, 0, |f| poke(
            f,
            entry(4) + D_COUNTER,
            0u64.to_ne_bytes()
        )),
        InflightFault::Counter {
            head: 4,
            counter: 0
        }
    );
    // Last batches: a loop, an index past the ring, more entries than the ring.
    let looping = |f: &File| {
        poke(f, H_LAST_BATCH_HEAD, 1u16.to_ne_bytes());
        poke(f, entry(1) + D_NEXT, 4u16.to_ne_bytes());
        poke(f, entry(4) + D_NEXT, 1u16.to_ne_bytes());
    };
    assert_eq!(
        refused(SIZE, 3, looping),
        InflightFault::Batch {
            len: 3,
            head: 1,
            at: 1
        }
    );
    let past = |f: &File| {
        poke(f, H_LAST_BATCH_HEAD, 1u16.to_ne_bytes());
        poke(f, entry(1) + D_NEXT, 4000u16.to_ne_bytes());
    };
    assert_eq!(
        refused(SIZE, 2, past),
        InflightFault::Batch {
            len: 2,
            head: 1,
            at: 4000
        }
    );
    assert_eq!(
        refused(SIZE, 100, |_| {}),
        InflightFault::Batch {
            len: 100,
            head: 0,
            at: 0
        }
    );
}

#[test]
fn hostile_region_messages_are_refused() {
    let (msg, file) = new_region();
    let map = |m: VhostUserInflight| InflightRegion::map(&m, &file, 4, 256).err();
    assert_eq!(
        map(VhostUserInflight {
            mmap_size: msg.mmap_size - 1,
            ..msg
        }),
        Some(InflightFault::TooSmall {
            have: msg.mmap_size - 1,
            need: msg.mmap_size
        })
    );
    assert_eq!(
        map(VhostUserInflight {
            mmap_offset: 8,
            ..msg
        }),
        Some(InflightFault::Misaligned(8))
    );
    // Past the end of the file (which is exactly one layout long).
    assert_eq!(
        map(VhostUserInflight {
            mmap_offset: 64,
            mmap_size: msg.mmap_size + 64,
            ..msg
        }),
        Some(InflightFault::TooSmall {
            have: msg.mmap_size - 64,
            need: msg.mmap_size
        })
    );
    assert_eq!(
        map(VhostUserInflight {
            mmap_offset: u64::MAX - 63,
            ..msg
        }),
        Some(InflightFault::TooSmall {
            have: 0,
            need: msg.mmap_size
        })
    );
    for (num_queues, queue_size) in [(5, SIZE), (2, 512), (0, SIZE), (2, 0)] {
        assert!(matches!(
            map(VhostUserInflight {
                num_queues,
                queue_size,
                ..msg
            }),
            Some(InflightFault::Geometry { .. })
        ));
        assert!(matches!(
            InflightRegion::create(&request(num_queues, queue_size), 4, 256),
            Err(InflightFault::Geometry { .. })
        ));
    }
    // A region at a 64-byte offset inside a larger file maps and tracks.
    let big = InflightRegion::create(&request(4, SIZE), 4, 256).unwrap().1;
    let at = VhostUserInflight {
        mmap_offset: 64,
        ..msg
    };
    let mut q = InflightRegion::map(&at, &big, 4, 256)
        .unwrap()
        .queue(0)
        .unwrap();
    q.start(0, SIZE);
    assert_eq!(peek_u16(&big, 64 + H_VERSION), INFLIGHT_VERSION);
}
