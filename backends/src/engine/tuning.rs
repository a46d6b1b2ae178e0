// SPDX-License-Identifier: Apache-2.0
//! [`Tuning`]: the run-time knobs of an [`Engine`](super::Engine), and the command-line
//! arguments ([`TuningArgs`]) both backends take for them.

use std::time::Duration;

use super::poll::{PollPolicy, DEFAULT_POLL_MAX};
use super::sqpoll::{SqpollPolicy, DEFAULT_SQPOLL_IDLE};

/// Chains an engine takes from the avail ring per pass unless its device says otherwise
/// ([`Tuning::batch`]).
pub const DEFAULT_BATCH: u16 = 32;

/// How an engine trades CPU time for latency and throughput; the same for every queue of a
/// device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Busy-polling after the last work seen, before sleeping again.
    pub poll: PollPolicy,
    /// Kernel submission polling (io_uring `SQPOLL`): a kernel thread per queue picks up
    /// submissions without `io_uring_enter` and runs them beside the queue thread. Costs up
    /// to a CPU per busy queue; by default on only while a queue is busy and a CPU is free.
    pub sqpoll: SqpollPolicy,
    /// Most chains taken from the avail ring per pass (at least 1). Each pass publishes its
    /// used entries, and signals the driver if it asked, before the next one starts, so a
    /// driver that keeps the ring full gets buffers back and refills while the rest of the
    /// ring is served, instead of waiting for the whole ring.
    pub batch: u16,
    /// An adaptive window keeps polling while the host's CPUs are contended, instead of
    /// pausing until they are not ([`super::pressure`]): for queue threads on CPUs reserved
    /// for them, where the rest of the host's contention does not reach.
    pub poll_when_contended: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            poll: PollPolicy::default(),
            sqpoll: SqpollPolicy::default(),
            batch: DEFAULT_BATCH,
            poll_when_contended: false,
        }
    }
}

/// Command-line arguments for [`Tuning`] (flattened into each backend's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Busy-poll for this many microseconds after each batch before sleeping, a fixed
    /// window instead of the adaptive one (0 = no polling).
    #[arg(long)]
    pub poll_us: Option<u64>,
    /// Upper bound of the adaptive busy-poll window, in microseconds: after work a queue
    /// thread keeps polling its rings for a window that grows while polling finds work and
    /// shrinks to nothing while it does not (0 = no polling).
    #[arg(long, default_value_t = DEFAULT_POLL_MAX.as_micros() as u64)]
    pub poll_max_us: u64,
    /// Kernel submission polling (io_uring SQPOLL) always on for each queue the engine
    /// serves (block queues, network transmit queues): a kernel thread picks up requests and
    /// runs them beside the queue thread, sleeping after this many idle milliseconds; 0 =
    /// never. Without this flag a block queue switches it on by itself while it stays busy
    /// and deep and a CPU is free, and off when the load is gone.
    #[arg(long)]
    pub sqpoll_idle_ms: Option<u64>,
    /// Most requests taken from a queue per pass; their used entries are returned to the
    /// driver before the next pass starts [default: 8 for block queues, 32 for network
    /// transmit queues].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: Option<u16>,
    /// Keep the adaptive busy-polling going while the host's CPUs are contended. By
    /// default a queue thread stops polling while tasks wait for a CPU a quarter of the
    /// time or more (`/proc/pressure/cpu`), so that it does not hold a CPU others need;
    /// this flag suits queue threads on CPUs reserved for them (`--queue-affinity`).
    #[arg(long)]
    pub poll_when_contended: bool,
}

impl TuningArgs {
    /// The tuning asked for, with `default_batch` where `--batch` was not given.
    pub fn tuning(&self, default_batch: u16) -> Tuning {
        Tuning {
            poll: self.poll_policy(),
            sqpoll: match self.sqpoll_idle_ms {
                None => SqpollPolicy::Auto {
                    idle: DEFAULT_SQPOLL_IDLE,
                },
                Some(0) => SqpollPolicy::Off,
                Some(ms) => SqpollPolicy::On {
                    idle: Duration::from_millis(ms),
                },
            },
            batch: self.batch.unwrap_or(default_batch),
            poll_when_contended: self.poll_when_contended,
        }
    }

    /// `--poll-us` if given, else the adaptive window bounded by `--poll-max-us`.
    fn poll_policy(&self) -> PollPolicy {
        match (self.poll_us, self.poll_max_us) {
            (Some(0), _) | (None, 0) => PollPolicy::Off,
            (Some(us), _) => PollPolicy::Fixed(Duration::from_micros(us)),
            (None, max) => PollPolicy::Adaptive {
                max: Duration::from_micros(max),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tuning: TuningArgs,
    }

    fn parse(args: &[&str]) -> Result<Tuning, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("backend").chain(args.iter().copied()))?;
        Ok(cli.tuning.tuning(DEFAULT_BATCH))
    }

    #[test]
    fn defaults_and_every_knob_parse() {
        assert_eq!(parse(&[]).unwrap(), Tuning::default());
        let cli = Cli::try_parse_from(["backend"]).unwrap();
        assert_eq!(cli.tuning.tuning(8).batch, 8, "the device's default batch");
        assert_eq!(
            parse(&["--poll-us", "50", "--sqpoll-idle-ms", "10", "--batch", "8"]).unwrap(),
            Tuning {
                poll: PollPolicy::Fixed(Duration::from_micros(50)),
                sqpoll: SqpollPolicy::On {
                    idle: Duration::from_millis(10)
                },
                batch: 8,
                poll_when_contended: false,
            }
        );
        assert!(
            parse(&["--poll-when-contended"])
                .unwrap()
                .poll_when_contended
        );
    }

    #[test]
    fn polling_is_adaptive_unless_fixed_or_switched_off() {
        let poll = |args: &[&str]| parse(args).unwrap().poll;
        assert_eq!(
            poll(&[]),
            PollPolicy::Adaptive {
                max: DEFAULT_POLL_MAX
            }
        );
        assert_eq!(
            poll(&["--poll-max-us", "200"]),
            PollPolicy::Adaptive {
                max: Duration::from_micros(200)
            }
        );
        assert_eq!(poll(&["--poll-max-us", "0"]), PollPolicy::Off);
        assert_eq!(poll(&["--poll-us", "0"]), PollPolicy::Off);
        assert_eq!(
            poll(&["--poll-us", "30", "--poll-max-us", "0"]),
            PollPolicy::Fixed(Duration::from_micros(30)),
            "a fixed window overrides the adaptive one"
        );
    }

    #[test]
    fn kernel_submission_polling_is_automatic_unless_given() {
        let sqpoll = |args: &[&str]| parse(args).unwrap().sqpoll;
        assert_eq!(
            sqpoll(&[]),
            SqpollPolicy::Auto {
                idle: DEFAULT_SQPOLL_IDLE
            }
        );
        assert_eq!(sqpoll(&["--sqpoll-idle-ms", "0"]), SqpollPolicy::Off);
        assert_eq!(
            sqpoll(&["--sqpoll-idle-ms", "5"]),
            SqpollPolicy::On {
                idle: Duration::from_millis(5)
            }
        );
    }

    #[test]
    fn a_batch_of_zero_is_refused() {
        assert!(parse(&["--batch", "0"]).is_err());
    }
}
