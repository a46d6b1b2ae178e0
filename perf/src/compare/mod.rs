// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf compare`: the tier × workload comparison harness.
//!
//! Tiers are I/O paths (native, vhost-user, VFIO, …; [`matrix::Tier`]); workloads are fio jobs,
//! iperf3 tests and guest boot ([`matrix::Workload`]). A tier whose binary or VMM option is
//! missing is reported as missing with the reason; the rest of the matrix still runs. Each tier
//! (or the host-side group) runs as one generated shell script, directly or inside the lab host
//! ([`script`]); raw fio/iperf3 JSON comes back base64-encoded between markers on the console
//! ([`collect`]), is saved per run and parsed with serde ([`fio`], [`iperf`]); in guest tiers
//! the VMM's and the backends' counters are scraped around each run ([`counters`]). Results are
//! written incrementally ([`results`]); [`report`] renders `report.md` with SVG charts
//! ([`chart`]) from `results.json` alone, so `vmm-perf report` reproduces it byte for byte.

pub mod chart;
pub mod collect;
pub mod counters;
pub mod fio;
mod group;
mod host;
pub mod iperf;
pub mod matrix;
mod recorder;
pub mod report;
pub mod results;
mod run;
pub mod script;

pub use host::host_info;
pub use matrix::{Availability, Kind, Plan, PlannedCell, Probe, Tier, Workload};
pub use recorder::outcome;
pub use run::{report_from_json, result_set, run, Options};

use std::sync::mpsc::Sender;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Where [`ConsoleTap`] sends lab console lines while a lab run is in progress.
static TAP: Mutex<Option<Sender<String>>> = Mutex::new(None);

pub(crate) fn set_tap(tx: Option<Sender<String>>) {
    if let Ok(mut t) = TAP.lock() {
        *t = tx;
    }
}

/// A `tracing` layer that forwards the lab runner's console lines (target `lab::console`,
/// level debug) to the running comparison, so cells are recorded and the progress bar moves
/// while the lab host is still running. Install it with a `lab::console=debug` filter.
#[derive(Debug, Default)]
pub struct ConsoleTap;

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ConsoleTap {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "lab::console" {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if let Ok(t) = TAP.lock() {
            if let Some(tx) = t.as_ref() {
                let _ = tx.send(m.0);
            }
        }
    }
}
