// SPDX-License-Identifier: Apache-2.0
//! The VM's devices: creates them from the configuration, places them on the
//! buses (port I/O, MMIO, PCI) and in the 64-bit PCI window, and stops them
//! at teardown.
//!
//! | Devices                      | Where                                    |
//! |------------------------------|------------------------------------------|
//! | i8042, ACPI power, serial    | port I/O                                 |
//! | PCI configuration (CF8, ECAM)| port I/O and MMIO                        |
//! | VFIO passthrough             | PCI; BARs in the upper halves of the windows |
//! | NVMe (emulated tier)         | PCI; BAR in the lower 64-bit half        |
//! | virtio (vhost-user, in-VMM)  | PCI; BAR in the lower 64-bit half        |
//! | e1000 (emulated tier)        | PCI; BAR in the lower 64-bit half, INTx  |

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use backends::net::Tap;
use kvm_ioctls::VmFd;
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use backends::metrics::QueueMetrics;

use crate::api::types::{DeviceCounters, DeviceInfo, QueueCounters};
use crate::boot::acpi;
use crate::config::{DiskBackend, DiskConfig, DiskModel, NetConfig, NicModel, SerialConfig};
use crate::config::{TapNetConfig, VmConfig};
use crate::devices::bus::{lock, Bus};
use crate::devices::e1000::nic::BAR_SIZE as E1000_BAR_SIZE;
use crate::devices::e1000::pci::E1000PciDevice;
use crate::devices::e1000::tap::RxThread;
use crate::devices::e1000::{NetError, E1000};
use crate::devices::i8042::I8042;
use crate::devices::nvme::{self, pci::BAR_SIZE as NVME_BAR_SIZE, NvmePciDevice};
use crate::devices::power::{AcpiPower, PowerButton};
use crate::devices::serial::{CappedFile, ConsoleSink, IrqfdTrigger, PanicNote, SerialDevice};
use crate::devices::vfio::VfioDevices;
use crate::devices::virtio::local::{InVmmBlk, InVmmNet};
use crate::devices::virtio::transport::pci::BAR_SIZE as VIRTIO_BAR_SIZE;
use crate::devices::virtio::vhost_user::supervisor::Supervisor;
use crate::devices::virtio::vhost_user::{VhostUserBlk, VhostUserNet};
use crate::devices::virtio::{BackendState, VirtioDevice, VirtioError, VirtioPciDevice};
use crate::error::Error;
use crate::layout;
use crate::memory::GuestRam;
use crate::pci::{PciBus, PciConfigIo, PciDevice, PciEcam};
use crate::vstate::exit::ExitSignal;
use crate::vstate::interrupts::IrqRouting;
use crate::vstate::vcpu::IoBuses;

/// Queue size of an in-VMM virtio-net queue.
const NET_QUEUE_SIZE: u16 = crate::config::DEFAULT_QUEUE_SIZE;

/// A virtio device waiting for its PCI function, and the name of the thread
/// that watches its backend.
type PendingVirtio = (Box<dyn VirtioDevice>, String);

/// Owns the buses, the PCI bus, the 64-bit BAR allocator and every device.
pub struct DeviceManager {
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    routing: Arc<IrqRouting>,
    buses: Arc<IoBuses>,
    pci: Arc<Mutex<PciBus>>,
    mmio64_start: u64,
    /// The lower half of the 64-bit PCI window (VFIO BARs take the upper half).
    mmio64: AddressAllocator,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    power_button: Option<PowerButton>,
    virtio: Vec<Arc<Mutex<VirtioPciDevice>>>,
    nvmes: Vec<Arc<Mutex<NvmePciDevice>>>,
    /// e1000 NICs: the device, its receive thread and its name.
    nics: Vec<(Arc<Mutex<E1000PciDevice>>, RxThread, String)>,
    monitors: Vec<Supervisor>,
    vfio: VfioDevices,
}

impl DeviceManager {
    /// Empty buses and PCI bus for the VM `vm` with guest memory `ram`, the
    /// 64-bit PCI window starting at `mmio64_start`.
    pub fn new(vm: &Arc<VmFd>, ram: &GuestRam, mmio64_start: u64) -> Result<Self, Error> {
        let mmio64 = AddressAllocator::new(mmio64_start, layout::PCI_MMIO64_SIZE / 2)
            .map_err(Error::PciWindow)?;
        Ok(Self {
            vm: vm.clone(),
            mem: ram.mem.clone(),
            routing: Arc::new(IrqRouting::new(vm.clone())?),
            buses: Arc::new(IoBuses::default()),
            pci: Arc::new(Mutex::new(PciBus::new())),
            mmio64_start,
            mmio64,
            serial: None,
            power_button: None,
            virtio: Vec::new(),
            nvmes: Vec::new(),
            nics: Vec::new(),
            monitors: Vec::new(),
            vfio: VfioDevices::default(),
        })
    }

    /// The port I/O and MMIO buses the vCPUs dispatch exits to.
    pub fn buses(&self) -> &Arc<IoBuses> {
        &self.buses
    }

    /// The serial port, unless the configuration turned it off.
    pub fn serial(&self) -> Option<&Arc<Mutex<SerialDevice>>> {
        self.serial.as_ref()
    }

    /// The ACPI power button.
    pub fn power_button(&self) -> Option<&PowerButton> {
        self.power_button.as_ref()
    }

    /// The i8042 (reset line), the ACPI power port and power button, PCI
    /// configuration access (ports 0xCF8/0xCFC and ECAM) and the serial port
    /// writing to `serial`, which notes a guest panic in `panic`.
    pub fn add_legacy_devices(
        &mut self,
        exit: &Arc<ExitSignal>,
        serial: &SerialConfig,
        panic: &PanicNote,
    ) -> Result<(), Error> {
        let mut pio = self.buses.pio.write().unwrap_or_else(|p| p.into_inner());
        let mut mmio = self.buses.mmio.write().unwrap_or_else(|p| p.into_inner());
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            layout::I8042_PORT.into(),
            5,
        )?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPower::new(exit.clone()))),
            layout::ACPI_SLEEP_CONTROL_PORT.into(),
            AcpiPower::PORTS,
        )?;
        self.power_button = Some(PowerButton::new(&self.routing)?);
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(self.pci.clone()))),
            layout::PCI_CONFIG_ADDRESS_PORT.into(),
            PciConfigIo::PORTS,
        )?;
        mmio.insert(
            Arc::new(Mutex::new(PciEcam::new(self.pci.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;
        let Some(out) = serial_output(serial)? else {
            return Ok(());
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Io)?;
        self.routing.register_irqfd(&irq, layout::COM1_IRQ)?;
        let dev = Arc::new(Mutex::new(SerialDevice::new(
            IrqfdTrigger(irq),
            ConsoleSink::new(out, panic.clone()),
        )));
        pio.insert(dev.clone(), layout::COM1_PORT.into(), 8)?;
        self.serial = Some(dev);
        Ok(())
    }

    /// Passes the checked host devices through (VFIO).
    pub fn add_vfio_devices(
        &mut self,
        ram: &GuestRam,
        checked: &[vfio::CheckedDevice],
    ) -> Result<(), Error> {
        self.vfio = VfioDevices::attach(
            &self.vm,
            ram,
            &self.buses,
            &self.routing,
            &self.pci,
            checked,
            self.mmio64_start,
        )?;
        Ok(())
    }

    /// The disks and NICs of `cfg`, in this PCI order: NVMe disks as they
    /// come, then the virtio disks and NICs (connected to their backends
    /// first), then the e1000 NICs.
    pub fn add_disks_and_nics(&mut self, cfg: &VmConfig) -> Result<(), Error> {
        let mut pending = Vec::new();
        for (i, disk) in cfg.disks.iter().enumerate() {
            if let Some(dev) = self.create_disk(i, disk, cfg.cpus)? {
                pending.push((dev, format!("blk{i}-mon")));
            }
        }
        for (i, net) in cfg.nets.iter().enumerate() {
            pending.extend(create_virtio_net(i, net)?);
        }
        for (dev, monitor) in pending {
            self.add_virtio(dev, monitor)?;
        }
        for net in &cfg.nets {
            match net {
                NetConfig::Tap(tap) if tap.model == NicModel::E1000 => self.add_e1000(tap)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Disk number `index`: a virtio device to put on the bus later, or an
    /// NVMe controller (with one I/O queue pair per vCPU unless configured)
    /// put on the bus now.
    fn create_disk(
        &mut self,
        index: usize,
        disk: &DiskConfig,
        cpus: u8,
    ) -> Result<Option<Box<dyn VirtioDevice>>, Error> {
        let (path, readonly) = match &disk.backend {
            DiskBackend::VhostUser { socket, .. } => {
                return Ok(Some(Box::new(VhostUserBlk::connect(socket, disk, index)?)))
            }
            DiskBackend::File {
                path,
                readonly,
                model: DiskModel::VirtioBlk,
            } => {
                let queues = disk.queues.unwrap_or(1);
                let dev = InVmmBlk::open(path, *readonly, queues, disk.queue_size, index)?;
                return Ok(Some(Box::new(dev)));
            }
            DiskBackend::File {
                path,
                readonly,
                model: DiskModel::Nvme,
            } => (path, *readonly),
        };
        let queues = disk.queues.unwrap_or(u16::from(cpus));
        let bar = self.allocate_bar(NVME_BAR_SIZE)?;
        let dev = nvme::create(
            path,
            readonly,
            queues,
            index,
            self.vm.clone(),
            self.buses.clone(),
            self.mem.clone(),
            bar,
        )?;
        let name = lock(&dev).name().to_string();
        self.plug(dev.clone(), &name, bar)?;
        self.nvmes.push(dev);
        Ok(None)
    }

    /// Puts `device` on the PCI bus behind the virtio-pci transport and, if
    /// it has a backend connection, starts thread `monitor` watching it.
    fn add_virtio(&mut self, device: Box<dyn VirtioDevice>, monitor: String) -> Result<(), Error> {
        let bar = self.allocate_bar(VIRTIO_BAR_SIZE)?;
        let dev = VirtioPciDevice::new(
            device,
            self.vm.clone(),
            self.routing.clone(),
            self.buses.clone(),
            self.mem.clone(),
            bar,
        )?;
        let name = lock(&dev).name().to_string();
        self.plug(dev.clone(), &name, bar)?;
        if let Some(m) = Supervisor::spawn(&dev, monitor)? {
            self.monitors.push(m);
        }
        self.virtio.push(dev);
        Ok(())
    }

    /// An e1000 on a TAP interface, its INTA bound (irqfd) to the GSI the
    /// `_PRT` gives its slot, and its receive thread.
    fn add_e1000(&mut self, net: &TapNetConfig) -> Result<(), Error> {
        let tap = Tap::open_plain(&net.tap).map_err(NetError::Tap)?;
        let reader = tap.try_clone().map_err(NetError::Tap)?;
        let bar = self.allocate_bar(E1000_BAR_SIZE)?;
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Io)?;
        let irq_reg = irq.try_clone().map_err(Error::Io)?;
        let dev = E1000PciDevice::new(
            E1000::new(net.mac),
            Box::new(tap),
            irq,
            self.buses.clone(),
            self.mem.clone(),
            bar,
        );
        let slot = lock(&self.pci).add(dev.clone())?;
        let gsi = acpi::pci_intx_gsi(slot, 0);
        self.routing.register_irqfd(&irq_reg, gsi)?;
        tracing::info!(
            "e1000 tap {} at 00:{slot:02x}.0, BAR {bar:#x}, INTA on GSI {gsi}",
            net.tap
        );
        let rx = RxThread::spawn(reader, dev.clone())?;
        let name = format!("e1000{} tap {}", self.nics.len(), net.tap);
        self.nics.push((dev, rx, name));
        Ok(())
    }

    /// Puts `dev` (called `name`, BAR at `bar`) in the next free PCI slot.
    fn plug(&self, dev: Arc<Mutex<dyn PciDevice>>, name: &str, bar: u64) -> Result<u8, Error> {
        let slot = lock(&self.pci).add(dev)?;
        tracing::info!("{name} at 00:{slot:02x}.0, BAR {bar:#x}");
        Ok(slot)
    }

    /// A naturally aligned `size`-byte BAR in the lower half of the 64-bit window.
    fn allocate_bar(&mut self, size: u64) -> Result<u64, VirtioError> {
        self.mmio64
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| VirtioError::NoBarSpace(size))
    }

    /// Stops every device after the vCPUs have stopped: the backend monitors
    /// first, then each device's data path, then VFIO (interrupts off, BARs
    /// unmapped, devices reset, guest RAM out of the IOMMU).
    pub fn shutdown(&mut self) {
        self.monitors.clear();
        for d in &self.virtio {
            lock(d).shutdown();
        }
        for d in &self.nvmes {
            lock(d).shutdown();
        }
        for (d, rx, _) in self.nics.drain(..) {
            drop(rx);
            lock(&d).shutdown();
        }
        self.vfio.shutdown();
        // Devices hold the buses that hold them: empty the buses so that the
        // devices, their backend connections and guest RAM are freed when the
        // machine is dropped (a reboot builds everything again).
        *self.buses.pio.write().unwrap_or_else(|p| p.into_inner()) = Bus::new();
        *self.buses.mmio.write().unwrap_or_else(|p| p.into_inner()) = Bus::new();
        *lock(&self.pci) = PciBus::new();
    }
}

/// What the API reports and does (`vm.info`, `vm.counters`, `vm.pause`).
impl DeviceManager {
    /// Stops every device thread that takes requests (in-VMM queue threads
    /// after finishing those they took, e1000 receive); `false` if one did
    /// not confirm. vhost-user backends are told nothing, VFIO devices keep
    /// running.
    pub fn pause(&self) -> bool {
        let virtio = self.virtio.iter().all(|d| lock(d).device_mut().pause());
        let nics = self.nics.iter().all(|(_, rx, _)| rx.set_paused(true));
        virtio && nics
    }

    /// Lets the paused device threads take requests again.
    pub fn resume(&self) -> bool {
        let nics = self.nics.iter().all(|(_, rx, _)| rx.set_paused(false));
        let virtio = self.virtio.iter().all(|d| lock(d).device_mut().resume());
        virtio && nics
    }

    /// The counters of the queues the VMM serves itself, for `--metrics`.
    pub fn queue_metrics(&self) -> Vec<QueueMetrics> {
        (self.virtio.iter())
            .flat_map(|d| lock(d).device().queue_metrics())
            .collect()
    }

    /// Every virtio, NVMe and e1000 device with its status.
    pub fn describe(&self) -> Vec<DeviceInfo> {
        let mut out = Vec::new();
        for d in &self.virtio {
            let d = lock(d);
            let (name, backend) = split_name(&d.name());
            let dev = d.device();
            // A reconnect that gave up left the device needing a reset.
            let connection = dev.backend_state().map(|c| match c {
                BackendState::Reconnecting if d.needs_reset() => BackendState::NeedsReset,
                c => c,
            });
            out.push(DeviceInfo {
                name,
                kind: virtio_kind(dev.device_type()).into(),
                tier: if connection.is_some() {
                    "vhost-user"
                } else {
                    "in-vmm"
                }
                .into(),
                backend,
                queues: Some(dev.num_queues()),
                driver: Some(d.driver_state().into()),
                connection: connection.map(|c| c.as_str().into()),
                metrics: dev.backend_metrics(),
            });
        }
        let emulated = |name: &str, kind: &str| {
            let (name, backend) = split_name(name);
            DeviceInfo {
                name,
                kind: kind.into(),
                tier: "emulated".into(),
                backend,
                queues: None,
                driver: None,
                connection: None,
                metrics: None,
            }
        };
        out.extend(self.nvmes.iter().map(|d| emulated(lock(d).name(), "nvme")));
        out.extend(self.nics.iter().map(|(_, _, name)| emulated(name, "e1000")));
        out
    }

    /// Per device, the counters the VMM has.
    pub fn counters(&self) -> Vec<DeviceCounters> {
        let mut out = Vec::new();
        for d in &self.virtio {
            let d = lock(d);
            let dev = d.device();
            let mut c = DeviceCounters {
                name: split_name(&d.name()).0,
                tier: if dev.backend_state().is_some() {
                    "vhost-user"
                } else {
                    "in-vmm"
                }
                .into(),
                metrics: dev.backend_metrics(),
                queues: dev
                    .queue_metrics()
                    .iter()
                    .map(QueueCounters::from)
                    .collect(),
                ..DeviceCounters::default()
            };
            c.counters.insert("vmm_notifies".into(), d.slow_notifies());
            out.push(c);
        }
        let emulated = |name: &str, counters: &[(&str, u64)]| DeviceCounters {
            name: split_name(name).0,
            tier: "emulated".into(),
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..DeviceCounters::default()
        };
        for d in &self.nvmes {
            let d = lock(d);
            out.push(emulated(d.name(), &d.counters()));
        }
        for (d, _, name) in &self.nics {
            out.push(emulated(name, &lock(d).counters()));
        }
        out
    }
}

/// `("vhost-user-blk0", Some("/tmp/vu.sock"))` from a device's log name.
fn split_name(name: &str) -> (String, Option<String>) {
    match name.split_once(' ') {
        Some((n, rest)) => (n.to_string(), Some(rest.to_string())),
        None => (name.to_string(), None),
    }
}

/// The API's name of a virtio device type.
fn virtio_kind(device_type: u16) -> &'static str {
    match device_type {
        1 => "virtio-net",
        2 => "virtio-blk",
        _ => "virtio",
    }
}

/// NIC number `index` if it is a virtio-net device (vhost-user or in-VMM).
fn create_virtio_net(index: usize, net: &NetConfig) -> Result<Option<PendingVirtio>, Error> {
    Ok(match net {
        NetConfig::VhostUser(net) => Some((
            Box::new(VhostUserNet::connect(net, index)?),
            format!("vu-net{index}-mon"),
        )),
        NetConfig::Tap(tap) if tap.model == NicModel::Virtio => Some((
            Box::new(InVmmNet::open(tap, NET_QUEUE_SIZE, index)?),
            format!("net{index}-mon"),
        )),
        NetConfig::Tap(_) => None,
    })
}

/// Where the serial port's output goes, if anywhere.
fn serial_output(serial: &SerialConfig) -> Result<Option<Box<dyn Write + Send>>, Error> {
    Ok(match serial {
        SerialConfig::Off => None,
        SerialConfig::Stdio => Some(Box::new(io::stdout())),
        SerialConfig::File { path, max_size } => {
            let err = |source| Error::SerialFile {
                path: path.clone(),
                source,
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(err)?;
            Some(Box::new(CappedFile::new(file, *max_size).map_err(err)?))
        }
    })
}
