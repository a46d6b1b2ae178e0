// SPDX-License-Identifier: Apache-2.0
//! The 8250 UART on COM1 (vm-superio), its interrupt wired to KVM with an
//! irqfd, a console sink that notices guest kernel panics, and a size cap for a
//! console written to a file.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Raises the UART's interrupt line through a KVM irqfd.
pub struct IrqfdTrigger(pub EventFd);

impl Trigger for IrqfdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The last panic message the guest printed, if any.
pub type PanicNote = Arc<Mutex<Option<String>>>;

const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
const MAX_LINE: usize = 512;

/// Console output: forwards bytes and remembers a kernel panic line.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    panic: PanicNote,
}

impl ConsoleSink {
    /// A sink writing to `out` and recording panics into `panic`.
    pub fn new(out: Box<dyn Write + Send>, panic: PanicNote) -> Self {
        Self {
            out,
            line: Vec::with_capacity(MAX_LINE),
            panic,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        if let Some(pos) = self
            .line
            .windows(PANIC_MARKER.len())
            .position(|w| w == PANIC_MARKER)
        {
            let text = String::from_utf8_lossy(&self.line[pos..])
                .trim_end()
                .to_string();
            let mut note = super::bus::lock(&self.panic);
            note.get_or_insert(text);
        }
        self.line.clear();
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        // A console that cannot be written (closed pipe) must not stop the guest.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() && self.line.ends_with(b"\r") {
            self.end_line();
        }
        let _ = self.out.flush();
        Ok(())
    }
}

/// A serial log file that never grows past `max_size` bytes: a write that would cross
/// the cap first truncates the file to a marker line, so a guest printing without end
/// cannot fill the host's disk and the file keeps the newest output.
pub struct CappedFile {
    /// Opened for appending: after a truncation, writes land at the new end.
    file: File,
    size: u64,
    max_size: u64,
}

impl CappedFile {
    /// Cap `file` (opened with `append`; its current contents count) at `max_size` bytes.
    pub fn new(file: File, max_size: u64) -> io::Result<Self> {
        let size = file.metadata()?.len();
        let mut capped = Self {
            file,
            size,
            max_size,
        };
        if size > max_size {
            capped.truncate()?;
        }
        Ok(capped)
    }

    fn marker(&self) -> String {
        format!(
            "[vmm: serial output truncated here: the file reached max_size={} bytes]\n",
            self.max_size
        )
    }

    /// Empty the file and start it with the marker line.
    fn truncate(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        let marker = self.marker();
        self.file.write_all(marker.as_bytes())?;
        self.size = marker.len() as u64;
        Ok(())
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.max_size.saturating_sub(self.size);
        let mut data = buf;
        if data.len() as u64 > room {
            self.truncate()?;
            // A single write larger than the cap keeps only its tail.
            let room = self.max_size.saturating_sub(self.size) as usize;
            data = &data[data.len().saturating_sub(room)..];
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// COM1 as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqfdTrigger, NoEvents, ConsoleSink>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: IrqfdTrigger, sink: ConsoleSink) -> Self {
        Self {
            uart: Serial::new(irq, sink),
        }
    }

    /// Queues host input for the guest; bytes beyond the FIFO are dropped.
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        let room = self.uart.fifo_capacity();
        let n = bytes.len().min(room);
        if n > 0 {
            if let Err(e) = self.uart.enqueue_raw_bytes(&bytes[..n]) {
                tracing::debug!("serial input dropped: {e:?}");
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, b) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn panic_line_is_recorded_and_output_forwarded() {
        let cap = Captured::default();
        let note = PanicNote::default();
        let mut sink = ConsoleSink::new(Box::new(cap.clone()), note.clone());
        sink.write_all(b"hello\r\n[    1.0] Kernel panic - not sync")
            .unwrap();
        assert!(note.lock().unwrap().is_none());
        sink.write_all(b"ing: Attempted to kill init!\r\nmore\n")
            .unwrap();
        assert_eq!(
            note.lock().unwrap().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init!")
        );
        assert!(cap.0.lock().unwrap().starts_with(b"hello\r\n"));
    }

    #[test]
    fn capped_file_truncates_with_a_marker_and_keeps_the_newest_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, b"earlier run\n").unwrap();
        let open = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
        };
        let mut out = CappedFile::new(open(), 4096).unwrap();
        // 100 lines of 100 bytes: 10 000 bytes through a 4 KiB cap.
        for i in 0..100u32 {
            let line = format!("{i:>99}\n");
            out.write_all(line.as_bytes()).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= 4096, "file grew to {len} bytes after line {i}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(
                "[vmm: serial output truncated here: the file reached max_size=4096 bytes]\n"
            ),
            "{text:.120}"
        );
        assert!(!text.contains("earlier run"));
        assert!(text.ends_with(&format!("{:>99}\n", 99)), "newest line kept");
        // One write larger than the cap keeps its tail; a file already past the cap is
        // truncated when opened.
        let big = vec![b'x'; 10_000];
        out.write_all(&big).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        std::fs::write(&path, vec![b'y'; 8000]).unwrap();
        let out = CappedFile::new(open(), 4096).unwrap();
        drop(out);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("[vmm: serial"));
    }

    #[test]
    fn uart_transmits_to_sink() {
        let cap = Captured::default();
        let irq = IrqfdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut dev = SerialDevice::new(
            irq,
            ConsoleSink::new(Box::new(cap.clone()), Default::default()),
        );
        for b in b"ok" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*cap.0.lock().unwrap(), b"ok");
        // An out-of-range offset is ignored rather than trusted.
        dev.write(u64::MAX, &[1]);
    }
}
