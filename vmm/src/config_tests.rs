// SPDX-License-Identifier: Apache-2.0
//! Tests of the configuration parsers.

use super::*;

#[test]
fn net_options() {
    let n: NetConfig = "vhost_user=on,socket=/s,mac=52:54:00:ab:cd:ef,queue_size=512"
        .parse()
        .unwrap();
    assert_eq!(
        n,
        NetConfig::VhostUser(VhostUserNetConfig {
            socket: "/s".into(),
            mac: Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            queues: None,
            queue_size: 512,
            metrics: None,
            reconnect: ReconnectConfig::default(),
        })
    );
    let err = |s: &str| s.parse::<NetConfig>().unwrap_err();
    assert_eq!(err("socket=/s"), ConfigError::NetKind);
    assert_eq!(err("vhost_user=on,socket=/s,tap=t"), ConfigError::NetKind);
    assert!(matches!(
        "tap=t0".parse::<NetConfig>(),
        Ok(NetConfig::Tap(_))
    ));
    assert_eq!(err("vhost_user=on"), ConfigError::MissingOption("socket"));
    assert!(matches!(
        err("vhost_user=on,socket=/s,mac=52:54:00:ab:cd"),
        ConfigError::BadValue { .. }
    ));
    assert!(matches!(
        err("vhost_user=on,socket=/s,mac=52:54:00:ab:cd:ef:01"),
        ConfigError::BadValue { .. }
    ));
    assert!(matches!(
        err("vhost_user=on,socket=/s,mac=5:54:00:ab:cd:ef"),
        ConfigError::BadValue { .. }
    ));
    let n: NetConfig = "vhost_user=on,socket=/s,queues=8".parse().unwrap();
    assert!(matches!(n, NetConfig::VhostUser(c) if c.queues == Some(8)));
    let n: NetConfig = "vhost_user=on,socket=/s,num_queues=2".parse().unwrap();
    assert!(matches!(n, NetConfig::VhostUser(c) if c.queues == Some(2)));
    for bad in ["queues=0", "queues=9", "queues=two"] {
        let e = err(&format!("vhost_user=on,socket=/s,{bad}"));
        assert!(e.to_string().contains("a number from 1 to 8"), "{bad}: {e}");
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512M"), Ok(512 * MIB));
    assert_eq!(parse_size("2G"), Ok(2 * GIB));
    assert_eq!(parse_size("2g"), Ok(2 * GIB));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("1.5G"), Ok(3 * GIB / 2));
    assert_eq!(parse_size("64K"), Ok(64 << 10));
}

#[test]
fn malformed_sizes() {
    for s in [
        "",
        "M",
        "12X",
        "-1G",
        "abc",
        "1..5G",
        "99999999999999999999T",
        "1 G",
    ] {
        assert!(
            matches!(parse_size(s), Err(ConfigError::BadSize(_))),
            "{s:?} accepted"
        );
    }
    assert_eq!(parse_size("0"), Err(ConfigError::ZeroSize));
    assert_eq!(parse_size("0M"), Err(ConfigError::ZeroSize));
}

#[test]
fn memory_options() {
    let m: MemoryConfig = "1G,hugepages=on".parse().unwrap();
    assert_eq!(
        m,
        MemoryConfig {
            size: GIB,
            hugepages: true,
            shared: None,
        }
    );
    // Cloud Hypervisor's spelling.
    let ch: MemoryConfig = "size=1G,hugepages=on".parse().unwrap();
    assert_eq!(ch, m);
    let m: MemoryConfig = "size=512M,shared=off".parse().unwrap();
    assert_eq!((m.size, m.shared), (512 * MIB, Some(false)));
    let m: MemoryConfig = "2G,shared=on".parse().unwrap();
    assert_eq!((m.size, m.shared), (2 * GIB, Some(true)));
    let err = |s: &str| s.parse::<MemoryConfig>().unwrap_err();
    assert!(matches!(
        err("1G,hugepages=maybe"),
        ConfigError::BadValue { .. }
    ));
    assert!(matches!(err("1G,shared=yes"), ConfigError::BadValue { .. }));
    assert!(matches!(
        err("1G,prefault=on"),
        ConfigError::UnknownOption(_)
    ));
    assert!(matches!(err("1G,2G"), ConfigError::UnknownOption(_)));
    assert_eq!(err("hugepages=on"), ConfigError::MissingOption("size"));
    assert!(matches!(err("size=lots"), ConfigError::BadSize(_)));
}

#[test]
fn reconnect_options() {
    let reconnect = |s: &str| match s.parse::<DiskConfig>().map(|d| d.backend) {
        Ok(DiskBackend::VhostUser { reconnect, .. }) => Ok(reconnect),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    let d = reconnect("vhost_user=on,socket=/s").unwrap();
    assert!(d.enabled);
    assert_eq!(
        (d.interval, d.timeout),
        (Duration::from_secs(1), Duration::from_secs(60))
    );
    let d = reconnect("vhost_user=on,socket=/s,reconnect_ms=250,reconnect_timeout_s=5").unwrap();
    assert!(d.enabled);
    assert_eq!(
        (d.interval, d.timeout),
        (Duration::from_millis(250), Duration::from_secs(5))
    );
    assert!(
        !reconnect("vhost_user=on,socket=/s,reconnect=off")
            .unwrap()
            .enabled
    );
    for bad in [
        "reconnect=maybe",
        "reconnect_ms=0",
        "reconnect_ms=x",
        "reconnect_timeout_s=0",
    ] {
        let err = reconnect(&format!("vhost_user=on,socket=/s,{bad}")).unwrap_err();
        assert!(matches!(err, ConfigError::BadValue { .. }), "{bad}: {err}");
    }
    assert_eq!(
        "path=/d,reconnect=off".parse::<DiskConfig>(),
        Err(ConfigError::DiskConflict(
            "reconnect options apply to vhost_user disks"
        ))
    );
    let n: NetConfig = "vhost_user=on,socket=/s,reconnect=off,reconnect_ms=10"
        .parse()
        .unwrap();
    let NetConfig::VhostUser(n) = n else {
        panic!("not vhost-user");
    };
    assert!(!n.reconnect.enabled);
    assert_eq!(n.reconnect.interval, Duration::from_millis(10));
}

#[test]
fn disks() {
    let d: DiskConfig = "vhost_user=on,socket=/tmp/vu.sock".parse().unwrap();
    assert_eq!(
        d,
        DiskConfig {
            backend: DiskBackend::VhostUser {
                socket: "/tmp/vu.sock".into(),
                reconnect: ReconnectConfig::default(),
            },
            queues: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            metrics: None,
        }
    );
    let d: DiskConfig = "vhost_user=on,socket=/s,queues=2,queue_size=1024"
        .parse()
        .unwrap();
    assert_eq!((d.queues, d.queue_size), (Some(2), 1024));
    let d: DiskConfig = "vhost_user=on,socket=/s,metrics=127.0.0.1:9101"
        .parse()
        .unwrap();
    assert_eq!(d.metrics, Some("127.0.0.1:9101".parse().unwrap()));
    let d: DiskConfig = "vhost_user=on,socket=/s,metrics=unix:/run/m"
        .parse()
        .unwrap();
    assert_eq!(d.metrics, Some(ListenAddr::Unix("/run/m".into())));
    // Cloud Hypervisor's spelling of the queue count.
    let d: DiskConfig = "vhost_user=on,socket=/s,num_queues=4".parse().unwrap();
    assert_eq!(d.queues, Some(4));
    let err = |s: &str| s.parse::<DiskConfig>().unwrap_err();
    assert_eq!(err("socket=/s"), ConfigError::DiskNotVhostUser);
    assert_eq!(
        err("vhost_user=off,socket=/s"),
        ConfigError::DiskNotVhostUser
    );
    assert_eq!(err("vhost_user=on"), ConfigError::MissingOption("socket"));
    assert_eq!(
        err("vhost_user=on,socket="),
        ConfigError::MissingOption("socket")
    );
    assert!(matches!(
        err("vhost_user=on,socket=/s,cache=none"),
        ConfigError::UnknownOption(_)
    ));
    for bad in [
        "queues=0",
        "queues=65",
        "queues=x",
        "queue_size=100",
        "queue_size=0",
        "queue_size=65536",
        "queue_size=-1",
    ] {
        assert!(
            matches!(
                err(&format!("vhost_user=on,socket=/s,{bad}")),
                ConfigError::BadValue { .. }
            ),
            "{bad} accepted"
        );
    }
}

#[test]
fn device() {
    assert_eq!(
        "path=/sys/bus/pci/devices/0000:00:04.0".parse(),
        Ok(DeviceConfig {
            path: "/sys/bus/pci/devices/0000:00:04.0".into()
        })
    );
    for bad in [
        "",
        "path=",
        "/sys/bus/pci/devices/0000:00:04.0",
        "path=/x,iommu=off",
    ] {
        assert!(bad.parse::<DeviceConfig>().is_err(), "{bad:?}");
    }
}

#[test]
fn file_disks() {
    let d: DiskConfig = "path=/d.img,queues=2,readonly=on".parse().unwrap();
    assert_eq!(
        d.backend,
        DiskBackend::File {
            path: "/d.img".into(),
            readonly: true,
            model: DiskModel::VirtioBlk
        }
    );
    assert_eq!(d.queues, Some(2));
    let d: DiskConfig = "path=/d.img,model=nvme".parse().unwrap();
    assert!(matches!(
        d.backend,
        DiskBackend::File {
            model: DiskModel::Nvme,
            readonly: false,
            ..
        }
    ));
    let err = |s: &str| s.parse::<DiskConfig>().unwrap_err();
    assert!(matches!(
        err("path=/d,model=scsi"),
        ConfigError::BadValue { .. }
    ));
    assert!(matches!(
        err("path=/d,vhost_user=on,socket=/s"),
        ConfigError::DiskConflict(_)
    ));
    assert!(matches!(
        err("path=/d,socket=/s"),
        ConfigError::DiskConflict(_)
    ));
    assert!(matches!(
        err("vhost_user=on,socket=/s,model=nvme"),
        ConfigError::DiskConflict(_)
    ));
    assert!(matches!(
        err("path=/d,metrics=127.0.0.1:9100"),
        ConfigError::DiskConflict(_)
    ));
    for bad in ["metrics=", "metrics=9100", "metrics=unix:"] {
        assert!(matches!(
            err(&format!("vhost_user=on,socket=/s,{bad}")),
            ConfigError::BadValue { .. }
        ));
    }
    assert_eq!(err("path="), ConfigError::MissingOption("path"));
    assert_eq!(err("queues=2"), ConfigError::DiskNotVhostUser);
}

#[test]
fn nets() {
    let n: TapNetConfig = "tap=tap0".parse().unwrap();
    assert_eq!(n.tap, "tap0");
    assert_eq!(n.model, NicModel::Virtio);
    let n: TapNetConfig = "tap=tap0,model=e1000".parse().unwrap();
    assert_eq!(n.model, NicModel::E1000);
    assert!("tap=t,model=rtl8139".parse::<TapNetConfig>().is_err());
    let n: TapNetConfig = "tap=t,mac=02:00:00:00:00:01".parse().unwrap();
    assert_eq!(n.mac, [2, 0, 0, 0, 0, 1]);
    for bad in [
        "",
        "mac=02:00:00:00:00:01",
        "tap=",
        "tap=t,mac=01:00:00:00:00:00",
        "tap=t,mac=1:2:3",
        "tap=t,mac=zz:00:00:00:00:00",
        "tap=t,x=1",
        "tap=0123456789abcdef",
    ] {
        assert!(bad.parse::<TapNetConfig>().is_err(), "{bad} accepted");
    }
}

#[test]
fn serial() {
    assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
    assert_eq!("off".parse(), Ok(SerialConfig::Off));
    assert_eq!(
        "file=/tmp/x".parse(),
        Ok(SerialConfig::File {
            path: "/tmp/x".into(),
            max_size: 64 << 20
        })
    );
    assert!("file=".parse::<SerialConfig>().is_err());
    assert_eq!(
        "file=/tmp/a,b,max_size=1M".parse(),
        Ok(SerialConfig::File {
            path: "/tmp/a,b".into(),
            max_size: 1 << 20
        })
    );
    assert!("file=/x,max_size=100".parse::<SerialConfig>().is_err());
    assert!("file=/x,max_size=lots".parse::<SerialConfig>().is_err());
    assert!("file=,max_size=1M".parse::<SerialConfig>().is_err());
    assert!("tcp:1234".parse::<SerialConfig>().is_err());
}
