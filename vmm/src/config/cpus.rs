// SPDX-License-Identifier: Apache-2.0
//! `--cpus`: a vCPU count (`2`), or Cloud Hypervisor's spelling with vCPU placement,
//! `boot=2,affinity=[0@[2],1@[3]]` (vCPU 0 runs only on host CPU 2, vCPU 1 on CPU 3).

use std::str::FromStr;

use backends::placement::{split_top_level, Affinity, AffinityError};

use super::ConfigError;

/// vCPUs and where their threads may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs the guest boots with.
    pub boot: u8,
    /// Host CPUs per vCPU thread (empty: anywhere).
    pub affinity: Affinity,
}

impl Default for CpusConfig {
    fn default() -> Self {
        Self {
            boot: 1,
            affinity: Affinity::default(),
        }
    }
}

fn parse_boot(value: &str) -> Result<u8, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::BadValue {
        key: "boot".into(),
        value: value.to_string(),
        expected: "a vCPU count from 1 to 255",
    })
}

impl FromStr for CpusConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains('=') {
            return Ok(Self {
                boot: parse_boot(s)?,
                affinity: Affinity::default(),
            });
        }
        let mut cfg = Self::default();
        let opts = split_top_level(s)
            .ok_or_else(|| ConfigError::Affinity(AffinityError::Syntax(s.into())))?;
        for opt in opts.into_iter().filter(|o| !o.is_empty()) {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            match key {
                "boot" => cfg.boot = parse_boot(value)?,
                "affinity" => cfg.affinity = Affinity::parse(value, "vCPU")?,
                _ => return Err(ConfigError::UnknownOption(opt.to_string())),
            }
        }
        Ok(cfg)
    }
}

impl CpusConfig {
    /// Check the placement against the vCPU count and this host's CPUs.
    pub fn check(&self) -> Result<(), ConfigError> {
        Ok(self.affinity.check(usize::from(self.boot), "vCPU")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::placement::available_cpus;

    #[test]
    fn a_count_or_cloud_hypervisor_options() {
        let plain: CpusConfig = "4".parse().unwrap();
        assert_eq!((plain.boot, plain.affinity.is_empty()), (4, true));
        let c: CpusConfig = "boot=2,affinity=[0@[2],1@[3-4]]".parse().unwrap();
        assert_eq!(c.boot, 2);
        assert_eq!(c.affinity.cpus(0), Some(&[2][..]));
        assert_eq!(c.affinity.cpus(1), Some(&[3, 4][..]));
        let c: CpusConfig = "affinity=[0@[1]],boot=3".parse().unwrap();
        assert_eq!((c.boot, c.affinity.cpus(0)), (3, Some(&[1][..])));
    }

    #[test]
    fn malformed_options_are_refused() {
        let err = |s: &str| s.parse::<CpusConfig>().unwrap_err();
        assert!(matches!(err("two"), ConfigError::BadValue { .. }));
        assert!(err("300").to_string().contains("invalid value '300'"));
        assert!(matches!(err("boot=2,max=4"), ConfigError::UnknownOption(_)));
        assert!(matches!(
            err("boot=2,affinity=[0@[1]"),
            ConfigError::Affinity(AffinityError::Syntax(_))
        ));
        assert_eq!(
            err("boot=2,affinity=[0@[1],0@[1]]"),
            ConfigError::Affinity(AffinityError::Duplicate {
                what: "vCPU",
                index: 0
            })
        );
    }

    #[test]
    fn placement_is_checked_against_vcpus_and_host_cpus() {
        let cpu = available_cpus().unwrap()[0];
        let ok: CpusConfig = format!("boot=2,affinity=[0@[{cpu}],1@[{cpu}]]")
            .parse()
            .unwrap();
        ok.check().unwrap();
        let extra: CpusConfig = format!("boot=1,affinity=[0@[{cpu}],1@[{cpu}]]")
            .parse()
            .unwrap();
        assert!(extra
            .check()
            .unwrap_err()
            .to_string()
            .contains("vCPU 1 does not exist"));
        let far: CpusConfig = "boot=1,affinity=[0@[4000]]".parse().unwrap();
        assert!(far
            .check()
            .unwrap_err()
            .to_string()
            .contains("host CPU 4000 is not available"));
    }
}
