// SPDX-License-Identifier: Apache-2.0
//! The admin command set: Identify, Create/Delete I/O SQ/CQ, Get/Set
//! Features, Get Log Page, Abort and Asynchronous Event Request.

use vm_memory::GuestMemoryMmap;

use super::ctrl::{ring_ok, Command, Controller, Cq, Interrupts, Outcome, Sq};
use super::prp::Prps;
use super::{identify, Status, CQ_ENTRY, MAX_AERS, MAX_QUEUE_ENTRIES, PAGE_SIZE, SQ_ENTRY};

/// Admin opcodes.
pub mod op {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0c;
}

/// Feature identifiers.
mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
}

const fn done(s: Status) -> Outcome {
    Outcome::Done(s, 0)
}

impl Controller {
    /// Executes one admin command.
    pub(super) fn admin(
        &mut self,
        mem: &GuestMemoryMmap,
        irq: &mut dyn Interrupts,
        cmd: &Command,
    ) -> Outcome {
        match cmd.opcode() {
            op::IDENTIFY => self.identify(mem, cmd),
            op::CREATE_CQ => done(self.create_cq(mem, cmd)),
            op::CREATE_SQ => done(self.create_sq(mem, cmd)),
            op::DELETE_SQ => done(self.delete_sq(cmd)),
            op::DELETE_CQ => done(self.delete_cq(cmd)),
            op::GET_FEATURES => self.get_features(cmd),
            op::SET_FEATURES => self.set_features(cmd),
            op::GET_LOG_PAGE => done(self.get_log_page(mem, cmd)),
            // Commands complete synchronously: there is never one to abort.
            // DW0 bit 0 = 1: command not aborted.
            op::ABORT => Outcome::Done(Status::SUCCESS, 1),
            op::ASYNC_EVENT => {
                if self.aers.len() >= MAX_AERS {
                    return done(Status::AER_LIMIT_EXCEEDED);
                }
                self.aers.push(cmd.cid());
                self.deliver_events(mem, irq);
                Outcome::Held
            }
            other => {
                tracing::debug!("nvme: unsupported admin opcode {other:#x}");
                done(Status::INVALID_OPCODE)
            }
        }
    }

    fn identify(&mut self, mem: &GuestMemoryMmap, cmd: &Command) -> Outcome {
        let cns = cmd.cdw(10) & 0xff;
        let nsid = cmd.nsid();
        let data = match cns {
            0x00 if nsid == 1 => {
                identify::namespace(self.ns.blocks, self.ns.readonly, &self.serial)
            }
            0x03 if nsid == 1 => identify::descriptors(&self.serial),
            0x00 | 0x03 => return done(Status::INVALID_NAMESPACE),
            0x01 => identify::controller(&self.serial, self.max_io_queues),
            0x02 if nsid < 0xffff_fffe => identify::active_namespaces(nsid),
            0x02 => return done(Status::INVALID_NAMESPACE),
            // I/O command set specific Identify Controller for the NVM
            // command set (CSI 0): all limits zero, i.e. none reported.
            0x06 if cmd.cdw(11) >> 24 == 0 => vec![0u8; identify::IDENTIFY_LEN],
            _ => return done(Status::INVALID_FIELD),
        };
        let len = identify::IDENTIFY_LEN as u64;
        let status = Prps::new(mem, cmd.prp1(), cmd.prp2(), len)
            .and_then(|p| p.write(mem, &data))
            .err()
            .unwrap_or(Status::SUCCESS);
        done(status)
    }

    /// Queue ID and 0-based size from CDW10, validated against the
    /// controller's limits: (qid, entries).
    fn queue_params(&self, cmd: &Command) -> Result<(u16, u16), Status> {
        let qid = cmd.cdw(10) as u16;
        let qsize = (cmd.cdw(10) >> 16) as u16;
        if qid == 0 || qid > self.max_io_queues {
            return Err(Status::INVALID_QUEUE_ID);
        }
        if qsize == 0 || qsize >= MAX_QUEUE_ENTRIES {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        Ok((qid, qsize + 1))
    }

    fn create_cq(&mut self, mem: &GuestMemoryMmap, cmd: &Command) -> Status {
        let (qid, size) = match self.queue_params(cmd) {
            Ok(p) => p,
            Err(s) => return s,
        };
        if self.cqs[usize::from(qid)].is_some() {
            return Status::INVALID_QUEUE_ID;
        }
        let flags = cmd.cdw(11);
        let (contiguous, ien, vector) = (flags & 1 != 0, flags & 2 != 0, (flags >> 16) as u16);
        if !contiguous {
            return Status::INVALID_FIELD;
        }
        if vector >= self.vectors {
            return Status::INVALID_VECTOR;
        }
        let base = cmd.prp1();
        if !base.is_multiple_of(PAGE_SIZE) {
            return Status::PRP_OFFSET_INVALID;
        }
        if !ring_ok(mem, base, size, CQ_ENTRY) {
            return Status::DATA_TRANSFER_ERROR;
        }
        self.cqs[usize::from(qid)] = Some(Cq {
            base,
            size,
            head: 0,
            tail: 0,
            phase: true,
            vector,
            ien,
        });
        tracing::debug!("nvme: CQ {qid}: {size} entries, vector {vector}, ien {ien}");
        Status::SUCCESS
    }

    fn create_sq(&mut self, mem: &GuestMemoryMmap, cmd: &Command) -> Status {
        let (qid, size) = match self.queue_params(cmd) {
            Ok(p) => p,
            Err(s) => return s,
        };
        if self.sqs[usize::from(qid)].is_some() {
            return Status::INVALID_QUEUE_ID;
        }
        let flags = cmd.cdw(11);
        let cqid = (flags >> 16) as u16;
        if flags & 1 == 0 {
            return Status::INVALID_FIELD;
        }
        let cq_exists = cqid != 0 && self.cqs.get(usize::from(cqid)).is_some_and(Option::is_some);
        if !cq_exists {
            return Status::CQ_INVALID;
        }
        let base = cmd.prp1();
        if !base.is_multiple_of(PAGE_SIZE) {
            return Status::PRP_OFFSET_INVALID;
        }
        if !ring_ok(mem, base, size, SQ_ENTRY) {
            return Status::DATA_TRANSFER_ERROR;
        }
        self.sqs[usize::from(qid)] = Some(Sq {
            base,
            size,
            head: 0,
            tail: 0,
            cqid,
        });
        tracing::debug!("nvme: SQ {qid}: {size} entries on CQ {cqid}");
        Status::SUCCESS
    }

    fn delete_sq(&mut self, cmd: &Command) -> Status {
        let qid = cmd.cdw(10) as u16;
        match self.sqs.get_mut(usize::from(qid)) {
            Some(q @ Some(_)) if qid != 0 => {
                *q = None;
                Status::SUCCESS
            }
            _ => Status::INVALID_QUEUE_ID,
        }
    }

    fn delete_cq(&mut self, cmd: &Command) -> Status {
        let qid = cmd.cdw(10) as u16;
        let exists = qid != 0 && self.cqs.get(usize::from(qid)).is_some_and(Option::is_some);
        if !exists {
            return Status::INVALID_QUEUE_ID;
        }
        if self.sqs.iter().flatten().any(|s| s.cqid == qid) {
            return Status::INVALID_QUEUE_DELETION;
        }
        self.cqs[usize::from(qid)] = None;
        Status::SUCCESS
    }

    fn get_features(&mut self, cmd: &Command) -> Outcome {
        let id = cmd.cdw(10) as u8;
        let sel = (cmd.cdw(10) >> 8) & 7;
        if sel == 3 {
            // Supported capabilities: nothing saveable, all changeable (bit 2).
            return Outcome::Done(Status::SUCCESS, 1 << 2);
        }
        let dw0 = match id {
            fid::NUMBER_OF_QUEUES => {
                let n = u32::from(self.max_io_queues - 1);
                n << 16 | n
            }
            fid::VOLATILE_WRITE_CACHE => 1,
            fid::ASYNC_EVENT_CONFIG => self.async_config,
            // Temperature threshold default: 0x157 K (70 °C).
            fid::TEMPERATURE_THRESHOLD => 0x157,
            fid::INTERRUPT_VECTOR_CONFIG => cmd.cdw(11) & 0xffff,
            fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::ERROR_RECOVERY
            | fid::INTERRUPT_COALESCING
            | fid::WRITE_ATOMICITY => 0,
            _ => return done(Status::INVALID_FIELD),
        };
        Outcome::Done(Status::SUCCESS, dw0)
    }

    fn set_features(&mut self, cmd: &Command) -> Outcome {
        let id = cmd.cdw(10) as u8;
        if cmd.cdw(10) & (1 << 31) != 0 {
            return done(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = cmd.cdw(11);
        match id {
            fid::NUMBER_OF_QUEUES => {
                if v & 0xffff == 0xffff || v >> 16 == 0xffff {
                    return done(Status::INVALID_FIELD);
                }
                // Always the controller's maximum; the driver uses fewer if it asked for fewer.
                let n = u32::from(self.max_io_queues - 1);
                Outcome::Done(Status::SUCCESS, n << 16 | n)
            }
            fid::ASYNC_EVENT_CONFIG => {
                self.async_config = v;
                done(Status::SUCCESS)
            }
            // Accepted and without effect here: arbitration is round robin,
            // one power state, no coalescing, writes reach the host page
            // cache either way and Flush makes them durable.
            fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::TEMPERATURE_THRESHOLD
            | fid::ERROR_RECOVERY
            | fid::VOLATILE_WRITE_CACHE
            | fid::INTERRUPT_COALESCING
            | fid::INTERRUPT_VECTOR_CONFIG
            | fid::WRITE_ATOMICITY => done(Status::SUCCESS),
            _ => done(Status::INVALID_FIELD),
        }
    }

    fn get_log_page(&mut self, mem: &GuestMemoryMmap, cmd: &Command) -> Status {
        let lid = cmd.cdw(10) as u8;
        let numd = u64::from(cmd.cdw(10) >> 16) | u64::from(cmd.cdw(11) & 0xffff) << 16;
        let len = (numd + 1) * 4;
        // Error information (1), SMART / health (2), firmware slot (3): all
        // zero here (no errors logged, no health data, no firmware slots).
        if !(1..=3).contains(&lid) {
            return Status::INVALID_LOG_PAGE;
        }
        if len > super::MAX_TRANSFER {
            return Status::INVALID_FIELD;
        }
        let zeros = vec![0u8; len as usize];
        Prps::new(mem, cmd.prp1(), cmd.prp2(), len)
            .and_then(|p| p.write(mem, &zeros))
            .err()
            .unwrap_or(Status::SUCCESS)
    }
}
