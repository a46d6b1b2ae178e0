// SPDX-License-Identifier: Apache-2.0
//! Chain walk tests: host addresses, region splits, hostile chains walked every way.

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestMemoryMmap, GuestRegionCollection};

use super::*;

type Mem = GuestMemoryMmap<()>;

/// Two adjacent 64 KiB regions: a buffer at 0xff00..0x10100 spans both.
fn two_regions() -> Mem {
    let mem = Mem::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x1_0000), 0x1_0000),
    ])
    .unwrap();
    let pattern: Vec<u8> = (0..0x2_0000u32).map(|i| (i % 253) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(0)).unwrap();
    mem
}

fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn chain_of(mem: &Mem, descs: &[RawDescriptor]) -> DescChain {
    let vq = MockSplitQueue::create(mem, GuestAddress(0x1_8000), 16);
    DescChain::walk(vq.build_desc_chain(descs).unwrap())
}

fn expected(addr: u64, len: usize) -> Vec<u8> {
    (addr..addr + len as u64).map(|i| (i % 253) as u8).collect()
}

/// What a walk recorded, for comparing two walks of the same chain.
fn summary(c: &DescChain) -> (u16, Option<GuestFault>, Vec<Seg>, Vec<Seg>, u64, u64) {
    (
        c.head(),
        c.fault(),
        c.segs(Dir::Readable).to_vec(),
        c.segs(Dir::Writable).to_vec(),
        c.readable_len(),
        c.writable_len(),
    )
}

/// `(index, addr, len, flags, next)` descriptors written to a queue of `size` at 0x8_0000
/// in 1 MiB of memory, the chain at `head` popped from the avail ring (virtio-queue's walk)
/// and walked from its head index ([`SplitWalk`]): both must record the same.
fn both_walks(size: u16, descs: &[(u16, u64, u32, u16, u16)], head: u16) -> DescChain {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), size);
    for &(i, addr, len, flags, next) in descs {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        vq.desc_table().store(i, raw).unwrap();
    }
    vq.avail().ring().ref_at(0).unwrap().store(head);
    vq.avail().idx().store(1);
    let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
    use virtio_queue::QueueT;
    let popped = DescChain::walk(q.pop_descriptor_chain(&mem).unwrap());
    let mut from_head = DescChain::default();
    from_head.reset_from_head(&mem, vq.desc_table_addr(), size, head);
    assert_eq!(summary(&from_head), summary(&popped));
    assert_eq!(summary(&ours(&mem, &vq, size)), summary(&popped));
    popped
}

/// The first chain of `vq` taken by our own ring reader ([`super::super::SplitRing`]).
fn ours(mem: &Mem, vq: &MockSplitQueue<Mem>, size: u16) -> DescChain {
    let addrs = super::super::RingAddrs {
        size,
        desc: vq.desc_table_addr(),
        avail: vq.avail_addr(),
        used: vq.used_addr(),
        event_idx: false,
    };
    let mut ring = super::super::SplitRing::new(mem, addrs, 0, 0).unwrap();
    assert_eq!(ring.pending(), 1);
    let mut c = DescChain::default();
    ring.pop(&mut c);
    c
}

/// Write indirect-table descriptors `(addr, len, flags, next)` at `at`.
fn write_table(mem: &Mem, descs: &[(u64, u32, u16, u16)], at: u64) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        // The last entries may lie past guest memory on purpose.
        let _ = mem.write_obj(raw, GuestAddress(at + 16 * i as u64));
    }
}

const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

#[test]
fn hostile_chains_walk_the_same_from_the_avail_ring_from_a_head_and_through_our_ring() {
    let ok = |c: &DescChain| c.fault();
    // A good chain; the head in the middle of the table.
    let c = both_walks(
        16,
        &[
            (5, 0x1000, 16, NEXT, 9),
            (9, 0x2000, 512, NEXT | WRITE, 2),
            (2, 0x3000, 1, WRITE, 0),
        ],
        5,
    );
    assert_eq!(
        (ok(&c), c.readable_len(), c.writable_len()),
        (None, 16, 513)
    );
    // A loop, a `next` past the table, readable after writable, outside memory.
    let c = both_walks(16, &[(0, 0x1000, 16, NEXT, 1), (1, 0x2000, 8, NEXT, 0)], 0);
    assert_eq!(ok(&c), Some(GuestFault::BrokenChain));
    let c = both_walks(16, &[(0, 0x1000, 16, NEXT, 16)], 0);
    assert_eq!(ok(&c), Some(GuestFault::BrokenChain));
    let c = both_walks(
        16,
        &[(0, 0x1000, 16, NEXT | WRITE, 1), (1, 0x2000, 8, 0, 0)],
        0,
    );
    assert_eq!(ok(&c), Some(GuestFault::ReadableAfterWritable));
    let c = both_walks(16, &[(0, 0xf_ff00, 0x200, WRITE, 0)], 0);
    assert_eq!(ok(&c), Some(GuestFault::OutOfBounds));
    // More than 2^32 bytes in all.
    let c = both_walks(
        16,
        &[(0, 0x1000, u32::MAX, NEXT, 1), (1, 0x2000, 2, 0, 0)],
        0,
    );
    assert_eq!(ok(&c), Some(GuestFault::BrokenChain));
    // Longer than the engine takes (a queue large enough to hold it).
    let long: Vec<_> = (0..1100u16)
        .map(|i| (i, 0x1000, 1, NEXT, i + 1))
        .chain([(1100, 0x1000, 1, 0, 0)])
        .collect();
    let c = both_walks(2048, &long, 0);
    assert_eq!(ok(&c), Some(GuestFault::ChainTooLong));
}

#[test]
fn hostile_indirect_tables_walk_the_same_from_the_avail_ring_from_a_head_and_through_our_ring() {
    let run_at = |queue: &[(u16, u64, u32, u16, u16)], tables: &[(u64, u32, u16, u16)], at| {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_table(&mem, tables, at);
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), 16);
        for &(i, addr, len, flags, next) in queue {
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            vq.desc_table().store(i, raw).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        use virtio_queue::QueueT;
        let popped = DescChain::walk(q.pop_descriptor_chain(&mem).unwrap());
        let mut from_head = DescChain::default();
        from_head.reset_from_head(&mem, vq.desc_table_addr(), 16, 0);
        assert_eq!(summary(&from_head), summary(&popped));
        assert_eq!(summary(&ours(&mem, &vq, 16)), summary(&popped));
        popped.fault()
    };
    let run = |queue: &[(u16, u64, u32, u16, u16)], tables: &[(u64, u32, u16, u16)]| {
        run_at(queue, tables, 0x4_0000)
    };
    let three = [
        (0x1000, 16, NEXT, 1),
        (0x2000, 4096, NEXT | WRITE, 2),
        (0x3000, 1, WRITE, 0),
    ];
    // A good indirect table, at the head and after a direct descriptor.
    assert_eq!(run(&[(0, 0x4_0000, 48, INDIRECT, 0)], &three), None);
    assert_eq!(
        run(
            &[(0, 0x5000, 8, NEXT, 1), (1, 0x4_0000, 48, INDIRECT, 0)],
            &three
        ),
        None
    );
    // Length not a multiple of 16, empty, nested, looping, `next` past the table.
    assert_eq!(
        run(&[(0, 0x4_0000, 40, INDIRECT, 0)], &three),
        Some(GuestFault::BrokenChain)
    );
    assert_eq!(
        run(&[(0, 0x4_0000, 0, INDIRECT, 0)], &three),
        Some(GuestFault::BrokenChain)
    );
    let nested = [(0x1000, 16, NEXT, 1), (0x4_0000, 48, INDIRECT, 0)];
    assert_eq!(
        run(&[(0, 0x4_0000, 32, INDIRECT, 0)], &nested),
        Some(GuestFault::BrokenChain)
    );
    let looping = [(0x1000, 16, NEXT, 1), (0x2000, 16, NEXT, 0)];
    assert_eq!(
        run(&[(0, 0x4_0000, 32, INDIRECT, 0)], &looping),
        Some(GuestFault::BrokenChain)
    );
    let past = [(0x1000, 16, NEXT, 2), (0x2000, 16, 0, 0)];
    assert_eq!(
        run(&[(0, 0x4_0000, 32, INDIRECT, 0)], &past),
        Some(GuestFault::BrokenChain)
    );
    // A table partly outside guest memory: the entry past the end cannot be read.
    let at_end = [(0, 0xf_fff0, 48, INDIRECT, 0)];
    assert_eq!(
        run_at(&at_end, &three, 0xf_fff0),
        Some(GuestFault::BrokenChain)
    );
    // A head index past the table (only reachable from a head): no descriptor at all.
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mut c = DescChain::default();
    c.reset_from_head(&mem, GuestAddress(0x8_0000), 16, 16);
    assert_eq!(c.fault(), Some(GuestFault::BrokenChain));
}

#[test]
fn buffer_inside_one_region_becomes_its_host_address() {
    let mem = two_regions();
    let c = chain_of(
        &mem,
        &[desc(0x1000, 0x200, false), desc(0x1_2000, 0x100, true)],
    );
    assert_eq!(c.fault(), None);
    let mut iov = Vec::new();
    c.iovecs(&mem, Dir::Readable, 0x10, 0x100, 8, &mut iov)
        .unwrap();
    assert_eq!(iov.len(), 1);
    let host = mem.get_host_address(GuestAddress(0x1010)).unwrap();
    assert_eq!(iov[0].iov_base, host.cast());
    assert_eq!(iov[0].iov_len, 0x100);

    c.write_at(&mem, Dir::Writable, 4, b"abcd").unwrap();
    let mut back = [0u8; 4];
    mem.read_slice(&mut back, GuestAddress(0x1_2004)).unwrap();
    assert_eq!(&back, b"abcd");
}

#[test]
fn buffer_spanning_two_regions_is_split_at_the_boundary() {
    let mem = two_regions();
    let c = chain_of(&mem, &[desc(0xff00, 0x200, false)]);
    assert_eq!(c.fault(), None);
    let mut iov = Vec::new();
    c.iovecs(&mem, Dir::Readable, 0, 0x200, 8, &mut iov)
        .unwrap();
    assert_eq!(
        iov.iter().map(|v| v.iov_len).collect::<Vec<_>>(),
        [0x100, 0x100]
    );
    let mut buf = vec![0u8; 0x200];
    c.read_at(&mem, Dir::Readable, 0, &mut buf).unwrap();
    assert_eq!(buf, expected(0xff00, 0x200));
}

#[test]
fn another_memory_object_is_read_through_its_own_mapping() {
    let mem = two_regions();
    let c = chain_of(&mem, &[desc(0x3000, 0x40, false)]);
    // Same layout, different mappings: the chain's cached host addresses must not be used.
    let other: Mem = GuestRegionCollection::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
    other
        .write_slice(&[0x5a; 0x40], GuestAddress(0x3000))
        .unwrap();
    let mut buf = [0u8; 0x40];
    c.read_at(&other, Dir::Readable, 0, &mut buf).unwrap();
    assert_eq!(buf, [0x5a; 0x40]);
    let mut iov = Vec::new();
    c.iovecs(&other, Dir::Readable, 0, 0x40, 8, &mut iov)
        .unwrap();
    assert_eq!(
        iov[0].iov_base,
        other.get_host_address(GuestAddress(0x3000)).unwrap().cast()
    );
}

#[test]
fn buffer_past_the_end_of_memory_is_a_fault() {
    let mem = two_regions();
    let c = chain_of(&mem, &[desc(0x1_ff00, 0x200, false)]);
    assert_eq!(c.fault(), Some(GuestFault::OutOfBounds));
    let mut iov = Vec::new();
    assert!(c
        .iovecs(&mem, Dir::Readable, 0, 0x200, 8, &mut iov)
        .is_err());
}

#[test]
fn ranges_inside_one_descriptor_and_across_descriptors_read_and_write_the_same_bytes() {
    let mem = two_regions();
    let c = chain_of(
        &mem,
        &[
            desc(0x1000, 0x10, false),
            desc(0x3000, 0x20, false),
            desc(0x5000, 0x10, true),
            desc(0x6000, 0x10, true),
        ],
    );
    assert_eq!(c.fault(), None);
    // Inside the second readable descriptor, across the first two, up to the very end.
    for (offset, len, pieces) in [(0x12u64, 8usize, 1usize), (0xc, 8, 2), (0x28, 8, 1)] {
        let mut got = vec![0u8; len];
        c.read_at(&mem, Dir::Readable, offset, &mut got).unwrap();
        let mut want = Vec::new();
        let mut iov = Vec::new();
        c.iovecs(&mem, Dir::Readable, offset, len as u64, 8, &mut iov)
            .unwrap();
        assert_eq!(iov.len(), pieces, "offset {offset:#x}");
        for v in &iov {
            // SAFETY: the iovec points into `mem`, alive for the whole test.
            want.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        assert_eq!(got, want, "offset {offset:#x}");
    }
    let mut four = [0u8; 4];
    c.read_at(&mem, Dir::Readable, 0x12, &mut four).unwrap();
    assert_eq!(four.to_vec(), expected(0x3002, 4));
    // One past the end, and no room for even one iovec, are refused.
    assert_eq!(
        c.read_at(&mem, Dir::Readable, 0x29, &mut [0u8; 8]),
        Err(GuestFault::OutOfBounds)
    );
    assert_eq!(
        c.iovecs(&mem, Dir::Readable, 0, 4, 0, &mut Vec::new()),
        Err(GuestFault::TooManySegments)
    );
    // Writes inside the second writable descriptor and across both land where they should.
    c.write_at(&mem, Dir::Writable, 0x12, b"in").unwrap();
    c.write_at(&mem, Dir::Writable, 0xe, b"span").unwrap();
    let mut back = [0u8; 2];
    mem.read_slice(&mut back, GuestAddress(0x6002)).unwrap();
    assert_eq!(&back, b"in");
    mem.read_slice(&mut back, GuestAddress(0x500e)).unwrap();
    assert_eq!(&back, b"sp");
    mem.read_slice(&mut back, GuestAddress(0x6000)).unwrap();
    assert_eq!(&back, b"an");
}
