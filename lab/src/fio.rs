// SPDX-License-Identifier: Apache-2.0
//! fio in a nested guest, with results that cross the serial console cheaply.
//!
//! In the lab every fio process start costs seconds (it loads ~70 MB of libraries under nested
//! TCG) and every console byte is a nested I/O exit (~1.5 KB/s): a JSON report of one job takes
//! ~6 s to print. [`guest_fio`] therefore runs all jobs in one fio process, one after another,
//! and prints one short line per job from fio's terse output; [`FioReport::from_console`] reads
//! them back.

use std::fmt::{self, Display};

/// The fields [`guest_fio`] keeps from a terse (version 3) line, 1-based as `cut` counts them:
/// job name, error, read KiB, read IOPS, write KiB, write KiB/s, write IOPS.
const TERSE_FIELDS: &str = "3,5,6,8,47,48,49";

/// Shell for a nested guest: one fio process runs `jobs` (name, job options) one after another
/// (`--stonewall`), each with the `common` options (device, engine, verification); then it
/// prints `FIO-STATUS=N`, one `FIO-JOB=` line per finished job and fio's stderr (also in a
/// script run with `set -e`: a failing fio does not end it before the report).
pub fn guest_fio(common: &str, jobs: &[(impl Display, impl Display)]) -> String {
    let jobs: String = jobs
        .iter()
        .map(|(name, options)| format!(" --name={name} --stonewall {options}"))
        .collect();
    format!(
        "fio_status=0\n\
         fio --output-format=terse --terse-version=3 {common}{jobs} >/tmp/fio.terse 2>/tmp/fio.err \
         || fio_status=$?\n\
         echo FIO-STATUS=$fio_status\n\
         grep '^3;' /tmp/fio.terse | cut -d';' -f{TERSE_FIELDS} | sed 's/^/FIO-JOB=/'\n\
         cat /tmp/fio.err\n"
    )
}

/// Shell for a nested guest: rounds of one fio job (`options`, which name the device, engine
/// and verification) until `seconds` have passed since the first round started; every round
/// writes and then verifies what it wrote, so a round started is a round checked. Prints
/// `FIO-START` first, then per round `FIO-ROUND=N status=S` and its [`guest_fio`]-style
/// `FIO-JOB=` line (fio's stderr when it failed), then `FIO-ROUNDS=` and `FIO-SECONDS=`
/// ([`FioRounds::from_console`]). For tests that disturb the device while fio runs.
pub fn guest_fio_rounds(options: &str, seconds: u32) -> String {
    format!(
        "echo FIO-START\n\
         t0=$(cut -d. -f1 /proc/uptime)\n\
         round=0\n\
         while :; do\n\
         round=$((round + 1))\n\
         st=0\n\
         fio --output-format=terse --terse-version=3 --name=round$round {options} \
         >/tmp/fio.terse 2>/tmp/fio.err || st=$?\n\
         echo FIO-ROUND=$round status=$st\n\
         grep '^3;' /tmp/fio.terse | cut -d';' -f{TERSE_FIELDS} | sed 's/^/FIO-JOB=/'\n\
         [ $st -eq 0 ] || cat /tmp/fio.err\n\
         now=$(cut -d. -f1 /proc/uptime)\n\
         [ $((now - t0)) -ge {seconds} ] && break\n\
         done\n\
         echo FIO-ROUNDS=$round\n\
         echo FIO-SECONDS=$((now - t0))\n"
    )
}

/// What a guest running [`guest_fio_rounds`] printed.
#[derive(Debug, Clone, PartialEq)]
pub struct FioRounds {
    /// fio's exit status in each round.
    pub statuses: Vec<i32>,
    /// Each round's job figures (a round whose fio printed no result has none).
    pub jobs: Vec<FioJobResult>,
    /// Seconds from the first round's start to the last one's end (guest clock).
    pub seconds: u64,
}

impl FioRounds {
    /// Reads the rounds back; a missing summary or a damaged line is an `Err` saying which.
    pub fn from_console(console: &str) -> Result<FioRounds, String> {
        let number = |key: &str| -> Result<u64, String> {
            let v = crate::console_value(console, key).ok_or(format!("no {key} on the console"))?;
            v.parse().map_err(|e| format!("{key}{v}: {e}"))
        };
        let rounds = number("FIO-ROUNDS=")?;
        let seconds = number("FIO-SECONDS=")?;
        let statuses = console
            .lines()
            .filter_map(|l| l.split_once("FIO-ROUND=").map(|(_, v)| v.trim()))
            .map(|v| {
                v.split_once("status=")
                    .and_then(|(_, s)| s.trim().parse().ok())
                    .ok_or(format!("FIO-ROUND={v}: no status"))
            })
            .collect::<Result<Vec<i32>, _>>()?;
        if statuses.len() as u64 != rounds {
            return Err(format!(
                "{} round lines for FIO-ROUNDS={rounds}",
                statuses.len()
            ));
        }
        let jobs = console
            .lines()
            .filter_map(|l| l.split_once("FIO-JOB=").map(|(_, v)| v.trim()))
            .map(parse_job)
            .collect::<Result<_, _>>()?;
        Ok(FioRounds {
            statuses,
            jobs,
            seconds,
        })
    }

    /// `Ok` if every round exited 0 and wrote and verified `bytes` without error; otherwise
    /// what went wrong first.
    pub fn all_verified(&self, bytes: u64) -> Result<(), String> {
        if let Some((i, s)) = self.statuses.iter().enumerate().find(|(_, &s)| s != 0) {
            return Err(format!("fio round {} exited with status {s}", i + 1));
        }
        if self.jobs.len() != self.statuses.len() {
            return Err(format!(
                "{} results for {} rounds",
                self.jobs.len(),
                self.statuses.len()
            ));
        }
        for job in &self.jobs {
            if job.error != 0 || job.write_bytes != bytes || job.read_bytes != bytes {
                return Err(format!(
                    "fio {}: error {}, wrote {} and verified {} bytes of {bytes}",
                    job.name, job.error, job.write_bytes, job.read_bytes
                ));
            }
        }
        Ok(())
    }
}

/// One job's figures from a [`guest_fio`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct FioJobResult {
    /// The job's name.
    pub name: String,
    /// fio's error number for the job (0: none, which includes a passing verification).
    pub error: i64,
    /// Bytes read (a verifying write job's verification reads).
    pub read_bytes: u64,
    /// Read IOPS.
    pub read_iops: f64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Write IOPS.
    pub write_iops: f64,
    /// Write bandwidth in MiB/s.
    pub write_mib_s: f64,
}

/// What a guest running [`guest_fio`] printed.
#[derive(Debug, Clone, PartialEq)]
pub struct FioReport {
    /// fio's exit status.
    pub status: i32,
    /// The jobs that reported, in order.
    pub jobs: Vec<FioJobResult>,
}

impl FioReport {
    /// Reads `FIO-STATUS=` and the `FIO-JOB=` lines; a missing status or a damaged line is an
    /// `Err` saying which.
    pub fn from_console(console: &str) -> Result<FioReport, String> {
        let status =
            crate::console_value(console, "FIO-STATUS=").ok_or("no FIO-STATUS= on the console")?;
        let status = status
            .parse()
            .map_err(|e| format!("FIO-STATUS={status}: {e}"))?;
        let jobs = console
            .lines()
            .filter_map(|l| l.split_once("FIO-JOB=").map(|(_, v)| v.trim()))
            .map(parse_job)
            .collect::<Result<_, _>>()?;
        Ok(FioReport { status, jobs })
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&FioJobResult> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The job called `name` if fio exited 0, the job reported no error and it wrote and read
    /// back (verified) at least `bytes`; otherwise an `Err` saying what is missing.
    pub fn verified(&self, name: &str, bytes: u64) -> Result<&FioJobResult, String> {
        if self.status != 0 {
            return Err(format!("fio exited with status {}", self.status));
        }
        let job = self
            .job(name)
            .ok_or_else(|| format!("no fio result for job {name}"))?;
        if job.error != 0 {
            return Err(format!("fio job {name} failed with error {}", job.error));
        }
        if job.write_bytes < bytes || job.read_bytes < bytes {
            return Err(format!(
                "fio job {name} wrote {} and verified {} bytes, expected {bytes}",
                job.write_bytes, job.read_bytes
            ));
        }
        Ok(job)
    }
}

impl Display for FioJobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write {:.0} IOPS, {:.1} MiB/s; verify read {:.0} IOPS",
            self.write_iops, self.write_mib_s, self.read_iops
        )
    }
}

fn parse_job(line: &str) -> Result<FioJobResult, String> {
    let f: Vec<&str> = line.split(';').collect();
    let [name, error, read_kib, read_iops, write_kib, write_bw, write_iops] = f[..] else {
        return Err(format!("FIO-JOB={line}: expected 7 fields"));
    };
    let num = |what: &str, v: &str| -> Result<f64, String> {
        v.parse::<f64>()
            .map_err(|e| format!("FIO-JOB={line}: {what} {v:?}: {e}"))
    };
    let kib = |what: &str, v: &str| -> Result<u64, String> {
        v.parse::<u64>()
            .map(|k| k << 10)
            .map_err(|e| format!("FIO-JOB={line}: {what} {v:?}: {e}"))
    };
    Ok(FioJobResult {
        name: name.to_string(),
        error: error
            .parse()
            .map_err(|e| format!("FIO-JOB={line}: error {error:?}: {e}"))?,
        read_bytes: kib("read KiB", read_kib)?,
        read_iops: num("read IOPS", read_iops)?,
        write_bytes: kib("write KiB", write_kib)?,
        write_iops: num("write IOPS", write_iops)?,
        write_mib_s: num("write KiB/s", write_bw)? / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fio 3.33's terse lines (two stonewalled 4 MiB verifying write jobs, 4k qd4 and 128k qd1) go
    /// through the guest's `cut` and back.
    #[test]
    fn terse_lines_from_fio_are_cut_and_read_back() {
        let terse = [
            "3;fio-3.33;a;0;0;4096;170666;42666;24;5;55;16.655415;8.501907;29;140;74.308771;\
             14.410589;1.000000%=46;5.000000%=49;10.000000%=54;20.000000%=63;30.000000%=66;\
             40.000000%=72;50.000000%=75;60.000000%=77;70.000000%=80;80.000000%=83;90.000000%=87;\
             95.000000%=100;99.000000%=116;99.500000%=127;99.900000%=138;99.950000%=140;\
             99.990000%=140;0%=0;0%=0;0%=0;51;147;90.964186;16.118737;0;0;0.000000%;0.000000;\
             0.000000;4096;75851;18962;54;12;265;43.477356;26.089617;2;453;162.143647;43.376890;\
             1.000000%=68;5.000000%=103;10.000000%=121;20.000000%=132;30.000000%=140;\
             40.000000%=144;50.000000%=156;60.000000%=168;70.000000%=181;80.000000%=189;\
             90.000000%=209;95.000000%=226;99.000000%=313;99.500000%=346;99.900000%=407;\
             99.950000%=452;99.990000%=452;0%=0;0%=0;0%=0;73;469;205.621004;44.952433;0;0;\
             0.000000%;0.000000;0.000000;3.896104%;75.324675%;618;0;41;0.1%;0.2%;99.7%;0.0%;0.0%;\
             0.0%;0.0%;0.00%;0.05%;0.00%;0.00%;2.34%;47.46%;48.73%;1.42%;0.00%;0.00%;0.00%;0.00%;\
             0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;vda;0;0;0;0;0;0;0;0.00%",
            "3;fio-3.33;b;1;0;4096;455111;3555;9;28;49;30.865719;4.013540;207;293;222.423313;\
             17.619172;1.000000%=207;5.000000%=207;10.000000%=207;20.000000%=209;30.000000%=211;\
             40.000000%=214;50.000000%=216;60.000000%=218;70.000000%=222;80.000000%=232;\
             90.000000%=238;95.000000%=257;99.000000%=292;99.500000%=292;99.900000%=292;\
             99.950000%=292;99.990000%=292;0%=0;0%=0;0%=0;236;324;253.289031;18.458415;0;0;\
             0.000000%;0.000000;0.000000;4096;409600;3200;10;79;445;136.119937;93.240247;2;288;\
             168.092406;99.398210;1.000000%=2;5.000000%=2;10.000000%=2;20.000000%=3;\
             30.000000%=201;40.000000%=203;50.000000%=205;60.000000%=211;70.000000%=211;\
             80.000000%=228;90.000000%=246;95.000000%=284;99.000000%=288;99.500000%=288;\
             99.900000%=288;99.950000%=288;99.990000%=288;0%=0;0%=0;0%=0;253;450;304.212344;\
             45.437762;0;0;0.000000%;0.000000;0.000000;11.111111%;16.666667%;56;0;13;100.0%;0.0%;\
             0.0%;0.0%;0.0%;0.0%;0.0%;0.00%;10.94%;1.56%;0.00%;0.00%;0.00%;79.69%;7.81%;0.00%;\
             0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;vda;0;\
             0;0;0;0;0;0;0.00%",
        ];
        let fields: Vec<usize> = TERSE_FIELDS
            .split(',')
            .map(|f| f.parse().expect("field"))
            .collect();
        let mut console = String::from("noise\nFIO-STATUS=0\n");
        for t in terse {
            let f: Vec<&str> = t.split(';').collect();
            let kept: Vec<&str> = fields.iter().map(|&i| f[i - 1]).collect();
            console.push_str(&format!("FIO-JOB={}\n", kept.join(";")));
        }
        let r = FioReport::from_console(&console).expect("report");
        assert_eq!(r.status, 0);
        assert_eq!(r.jobs.len(), 2);
        let a = r.job("a").expect("job a");
        assert_eq!(a.error, 0);
        assert_eq!(a.read_bytes, 4 << 20);
        assert_eq!(a.read_iops, 42666.0);
        assert_eq!(a.write_bytes, 4 << 20);
        assert_eq!(a.write_iops, 18962.0);
        assert!((a.write_mib_s - 75851.0 / 1024.0).abs() < 1e-9);
        assert_eq!(r.job("b").expect("job b").write_iops, 3200.0);
        assert!(r.verified("b", 4 << 20).is_ok());
        assert!(r.verified("b", 8 << 20).unwrap_err().contains("expected"));
        assert!(r.verified("c", 1).unwrap_err().contains("no fio result"));
        assert_eq!(r.job("b").expect("job b").read_bytes, 4 << 20);
    }

    #[test]
    fn rounds_are_read_back_and_checked() {
        let job =
            |name: &str, err: u8, kib: u32| format!("FIO-JOB={name};{err};{kib};10;{kib};100;10\n");
        let mut console = String::from("FIO-START\nFIO-ROUND=1 status=0\n");
        console += &job("round1", 0, 8192);
        console += "FIO-ROUND=2 status=0\n";
        console += &job("round2", 0, 8192);
        console += "FIO-ROUNDS=2\nFIO-SECONDS=61\n";
        let r = FioRounds::from_console(&console).expect("rounds");
        assert_eq!(
            (r.statuses.clone(), r.jobs.len(), r.seconds),
            (vec![0, 0], 2, 61)
        );
        assert!(r.all_verified(8 << 20).is_ok());
        assert!(r.all_verified(4 << 20).unwrap_err().contains("round1"));
        let failed = console.replace("FIO-ROUND=2 status=0", "FIO-ROUND=2 status=1");
        let err = FioRounds::from_console(&failed)
            .unwrap()
            .all_verified(8 << 20);
        assert!(err.unwrap_err().contains("round 2 exited with status 1"));
        let missing = console.replace("FIO-ROUNDS=2", "FIO-ROUNDS=3");
        assert!(FioRounds::from_console(&missing)
            .unwrap_err()
            .contains("round lines"));
        // A round whose verification failed reports its error.
        let bad = console.replace("round2;0;", "round2;84;");
        let err = FioRounds::from_console(&bad).unwrap().all_verified(8 << 20);
        assert!(err.unwrap_err().contains("error 84"));
    }

    #[test]
    fn missing_status_and_damaged_lines_are_errors() {
        assert!(FioReport::from_console("FIO-JOB=a;0;1;1;1;1;1").is_err());
        let short = FioReport::from_console("FIO-STATUS=0\nFIO-JOB=a;0;1\n");
        assert!(short.unwrap_err().contains("7 fields"));
        let text = FioReport::from_console("FIO-STATUS=0\nFIO-JOB=a;0;x;1;1;1;1\n");
        assert!(text.unwrap_err().contains("read KiB"));
        let failed = FioReport::from_console("FIO-STATUS=1\n").expect("report");
        assert_eq!((failed.status, failed.jobs.len()), (1, 0));
        assert!(failed.verified("a", 1).unwrap_err().contains("status 1"));
    }
}
