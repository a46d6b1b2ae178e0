// SPDX-License-Identifier: Apache-2.0
//! One queue pair as the work of one thread: its receive path and transmit engine are
//! served, busy-polled and parked together ([`PairWork`]), so the adaptive window of the
//! pair's thread covers both directions: a thread polling for transmit requests also
//! sees the receive side's frames and buffers, and the other way round.

use std::sync::atomic::Ordering;

use super::{RxPath, TxHandler};
use crate::engine::{Engine, Polled, VirtQueue};
use crate::Result;

/// A queue pair's receive path and transmit engine with their queues.
///
/// Errors of one side are counted and logged on that side's counters
/// ([`QueueStats::report_failure`](crate::engine::QueueStats::report_failure)) and do not
/// stop the other: the thread keeps serving both.
pub struct PairWork<'a, Q: VirtQueue> {
    /// Receive path.
    pub rx: &'a mut RxPath,
    /// Receive queue.
    pub rx_q: &'a mut Q,
    /// Transmit engine.
    pub tx: &'a mut Engine<TxHandler, Q::Mem>,
    /// Transmit queue.
    pub tx_q: &'a mut Q,
    /// Names the pair in logs (`0` for `rx0`/`tx0`).
    pub pair: usize,
}

impl<Q: VirtQueue> PairWork<'_, Q> {
    fn tx_failed(&self, e: &crate::Error) {
        let queue = format!("tx{}", self.pair);
        self.tx.stats().report_failure(&queue, e);
    }

    fn rx_failed(&self, e: &crate::Error) {
        let queue = format!("rx{}", self.pair);
        self.rx.stats().report_failure(&queue, e);
    }
}

impl<Q: VirtQueue> Polled for PairWork<'_, Q> {
    /// Transmit until its ring is empty, then a batch of receive, until receive has no
    /// more frames waiting.
    fn serve(&mut self, polled: bool) -> Result<usize> {
        let received_before = self.rx.stats().ok.load(Ordering::Relaxed);
        let mut total = 0;
        loop {
            total += self.tx.serve(self.tx_q, polled).unwrap_or_else(|e| {
                self.tx_failed(&e);
                0
            });
            total += self.rx.serve(self.rx_q).unwrap_or_else(|e| {
                self.rx_failed(&e);
                0
            });
            if !self.rx.more() {
                break;
            }
        }
        if polled {
            // Frames received after polling found them (the transmit engine counts its own).
            let rx = self.rx.stats();
            let received = rx.ok.load(Ordering::Relaxed) - received_before;
            rx.polled.fetch_add(received, Ordering::Relaxed);
        }
        Ok(total)
    }

    fn pending(&mut self) -> bool {
        self.tx.pending(self.tx_q) || self.rx.pending(self.rx_q)
    }

    fn park(&mut self) -> Result<bool> {
        let tx = self.tx.park(self.tx_q).unwrap_or_else(|e| {
            self.tx_failed(&e);
            false
        });
        let rx = self.rx.park(self.rx_q).unwrap_or_else(|e| {
            self.rx_failed(&e);
            false
        });
        Ok(tx || rx)
    }

    fn wake_again(&mut self) -> Result<()> {
        self.rx.wake_again()
    }
}
