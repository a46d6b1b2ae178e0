// SPDX-License-Identifier: Apache-2.0
//! Tests of the virtio-pci transport against a real KVM VM (skipped without /dev/kvm).

use super::*;
use crate::devices::virtio::vhost_user::supervisor::Supervisor;
use crate::vstate::vm::Vm;

struct Fake(Option<RawFd>);
impl VirtioDevice for Fake {
    fn device_type(&self) -> u16 {
        2
    }
    fn features(&self) -> u64 {
        crate::devices::virtio::VIRTIO_F_VERSION_1
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn queue_max_size(&self) -> u16 {
        64
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _act: Activation<'_>) -> Result<(), VirtioError> {
        Ok(())
    }
    fn reset(&mut self) {}
    fn hangup_fd(&self) -> Option<RawFd> {
        self.0
    }
    fn name(&self) -> String {
        "fake".into()
    }
}

fn device(fake: Fake, bar: u64) -> Option<(Arc<IoBuses>, Arc<Mutex<VirtioPciDevice>>)> {
    let Ok(vm) = Vm::new(1) else {
        eprintln!("SKIP: no usable /dev/kvm");
        return None;
    };
    let routing = Arc::new(IrqRouting::new(vm.fd.clone()).unwrap());
    let buses = Arc::new(IoBuses::default());
    let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
    let dev = VirtioPciDevice::new(
        Box::new(fake),
        vm.fd.clone(),
        routing,
        buses.clone(),
        mem,
        bar,
    )
    .unwrap();
    Some((buses, dev))
}

#[test]
fn backend_hangup_sets_needs_reset() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let Some((_buses, dev)) = device(Fake(Some(a.as_raw_fd())), 1 << 32) else {
        return;
    };
    let mon = Supervisor::spawn(&dev, "test-mon".into()).unwrap().unwrap();
    assert!(!lock(&dev).needs_reset());
    drop(b);
    let t0 = std::time::Instant::now();
    while !lock(&dev).needs_reset() && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(lock(&dev).needs_reset());
    let mut st = [0u8; 1];
    lock(&dev).read(0x14, &mut st);
    assert_ne!(st[0] & status::DEVICE_NEEDS_RESET, 0);
    // The config generation moved and the ISR shows a config change.
    let mut isr = [0u8; 1];
    lock(&dev).read(ISR_OFFSET, &mut isr);
    assert_eq!(isr[0], ISR_CONFIG);
    drop(mon);
    drop(a);
}

fn read16(buses: &IoBuses, addr: u64) -> Option<u16> {
    let mut d = [0u8; 2];
    buses
        .mmio
        .read()
        .unwrap()
        .read(addr, &mut d)
        .then_some(u16::from_le_bytes(d))
}

/// Needs /dev/kvm (any flavour): skipped without it.
#[test]
fn bar_moves_and_hostile_bar_accesses() {
    let old = 0x1_0000_0000u64;
    let Some((buses, dev)) = device(Fake(None), old) else {
        return;
    };
    // num_queues through the BAR.
    assert_eq!(read16(&buses, old + 0x12), Some(2));
    // The driver disables decoding, moves the BAR, re-enables.
    let cmd = lock(&dev).read_config(COMMAND_REG);
    lock(&dev).write_config(
        COMMAND_REG,
        0,
        &((cmd & !COMMAND_MEMORY) as u16).to_le_bytes(),
    );
    buses.run_deferred();
    assert_eq!(read16(&buses, old + 0x12), None);
    // Sizing with decoding off maps nothing.
    lock(&dev).write_config(4, 0, &[0xff; 4]);
    lock(&dev).write_config(5, 0, &[0xff; 4]);
    assert_eq!(lock(&dev).read_config(4), 0xffff_8004);
    let new = 0x2_0000_0000u64;
    lock(&dev).write_config(4, 0, &(new as u32).to_le_bytes());
    lock(&dev).write_config(5, 0, &((new >> 32) as u32).to_le_bytes());
    lock(&dev).write_config(
        COMMAND_REG,
        0,
        &((cmd | COMMAND_MEMORY) as u16).to_le_bytes(),
    );
    buses.run_deferred();
    assert_eq!(read16(&buses, new + 0x12), Some(2));
    assert_eq!(read16(&buses, old + 0x12), None);
    // A BAR at the top of the address space (would wrap) is not mapped.
    lock(&dev).write_config(4, 0, &[0xff; 4]);
    lock(&dev).write_config(5, 0, &[0xff; 4]);
    buses.run_deferred();
    assert_eq!(read16(&buses, new + 0x12), None);
    // Hostile accesses inside the BAR: no panic.
    let mut d = lock(&dev);
    for off in [
        0x3000u64,
        0x3ffc,
        0x4000 + 3 * 16,
        0x4ffc,
        0x5000,
        0x5fff,
        0x7fff,
        0x1001,
    ] {
        for len in [0usize, 1, 2, 3, 4, 8] {
            let mut b = vec![0u8; len];
            d.read(off, &mut b);
            d.write(off, &b);
        }
    }
    // Vector 9 does not exist: the queue reads back NO_VECTOR.
    d.write(0x16, &0u16.to_le_bytes());
    d.write(0x1a, &9u16.to_le_bytes());
    let mut v = [0u8; 2];
    d.read(0x1a, &mut v);
    assert_eq!(u16::from_le_bytes(v), NO_VECTOR);
    // Device config comes from the backend.
    let mut c = [0u8; 4];
    d.read(0x2000, &mut c);
    assert_eq!(c, [0x5a; 4]);
    // The PCI_CFG window: num_queues (BAR offset 0x12, 2 bytes).
    let base = d.cfg_cap / 4;
    d.write_config(base + 1, 0, &[0]);
    d.write_config(base + 2, 0, &0x12u32.to_le_bytes());
    d.write_config(base + 3, 0, &2u32.to_le_bytes());
    assert_eq!(d.read_config(base + 4) & 0xffff, 2);
    // queue_select through the window, read back directly.
    d.write_config(base + 2, 0, &0x16u32.to_le_bytes());
    d.write_config(base + 4, 0, &1u32.to_le_bytes());
    let mut q = [0u8; 2];
    d.read(0x16, &mut q);
    assert_eq!(u16::from_le_bytes(q), 1);
    // Bad windows (length 3, outside the BAR, other BAR) do nothing.
    for (bar, off, len) in [(0u8, 0x12u32, 3u32), (0, 0x7fff, 4), (2, 0x12, 2)] {
        d.write_config(base + 1, 0, &[bar]);
        d.write_config(base + 2, 0, &off.to_le_bytes());
        d.write_config(base + 3, 0, &len.to_le_bytes());
        d.write_config(base + 4, 0, &u32::MAX.to_le_bytes());
        let _ = d.read_config(base + 4);
    }
}

#[test]
fn capability_layout() {
    let c = virtio_cap(CAP_NOTIFY, NOTIFY_OFFSET, 8, Some(4));
    // cap_len covers the 2-byte header too.
    assert_eq!(c.len() + 2, 20);
    assert_eq!(c[0], 20);
    assert_eq!(c[1], CAP_NOTIFY);
    assert_eq!(u32::from_le_bytes([c[6], c[7], c[8], c[9]]), 0x3000);
    assert_eq!(u32::from_le_bytes([c[14], c[15], c[16], c[17]]), 4);
    assert_eq!(notify_addr(0x1_0000_0000, 1), 0x1_0000_3004);
}

/// Per-vector and function masking unbind the queue's irqfd; a backend call
/// made while masked shows in the PBA and is handed to KVM on unmask.
#[test]
fn msix_masking_pending_and_delivery() {
    let Some((_buses, dev)) = device(Fake(None), 1 << 32) else {
        return;
    };
    let mut d = lock(&dev);
    let cap = d.msix_cap / 4;
    let entry = |v: u64, field: u64| MSIX_TABLE_OFFSET + v * 16 + field;
    let pba = |d: &mut VirtioPciDevice| {
        let mut b = [0u8; 8];
        d.read(MSIX_PBA_OFFSET, &mut b);
        b[0]
    };
    // MSI-X enabled, vector 1 programmed and unmasked, queue 0 uses it.
    d.write_config(cap, 2, &0x8000u16.to_le_bytes());
    d.write(entry(1, 0), &0xfee0_0000u32.to_le_bytes());
    d.write(entry(1, 8), &0x31u32.to_le_bytes());
    d.write(entry(1, 12), &0u32.to_le_bytes());
    d.write(0x16, &0u16.to_le_bytes());
    d.write(0x1a, &1u16.to_le_bytes());
    let gsi = d.routes.gsi(1);
    assert!(gsi.is_some());
    assert_eq!(d.bound[0], gsi);
    // Per-vector mask: unbound, and a call stays pending in the eventfd.
    d.write(entry(1, 12), &1u32.to_le_bytes());
    assert_eq!(d.bound[0], None);
    d.calls[0].write(1).unwrap();
    assert_eq!(pba(&mut d), 0b10);
    // Function mask blocks too, even with the vector unmasked.
    d.write_config(cap, 2, &0xc000u16.to_le_bytes());
    d.write(entry(1, 12), &0u32.to_le_bytes());
    assert_eq!(d.bound[0], None);
    assert_eq!(pba(&mut d), 0b10);
    // Unmask the function: bound again. KVM_IRQFD injects at assign time
    // when the eventfd is already readable (it leaves the count; the next
    // signal resets it), so the PBA no longer shows the vector.
    d.write_config(cap, 2, &0x8000u16.to_le_bytes());
    assert_eq!(d.bound[0], gsi);
    assert_eq!(pba(&mut d), 0);
    // MSI-X disabled: nothing bound.
    d.write_config(cap, 2, &0u16.to_le_bytes());
    assert_eq!(d.bound[0], None);
    // Reset unbinds the config vector and queue vectors.
    d.write(0x14, &[0]);
    assert!(d.bound.iter().all(Option::is_none));
}
