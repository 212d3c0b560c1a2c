//! The fleet merger against a real MQTT broker (Debian's Mosquitto, started
//! here on a free loopback port): exact merges, duplicates and late
//! messages, a foreign backbone refused and reported, the merger and the
//! broker restarted, status and forget from the command line.

use gaussedge_fleet::message::{self, DeviceMessage, HeadMessage, Topics};
use gaussedge_fleet::Summary;
use gaussedge_host::fleet::{self as net, Broker};
use gaussedge_shared::head::{GaussianHead, HeadConfig, OwnedStorage};
use gaussedge_shared::stats::{self, Expect, StatsMeta};
use gaussedge_shared::{label, Estimator, Transform};
use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DIM: usize = 12;
const SHA: [u8; 32] = [5; 32];
type Head = GaussianHead<OwnedStorage>;

fn mosquitto() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Mosquitto on `port` of 127.0.0.1 only, with its own config and
/// persistence folder; stopped when dropped.
struct Mosquitto {
    child: Child,
    conf: PathBuf,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        // Started as root, Mosquitto drops to its own user: let it write its
        // persistence file here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
                dir.display()
            ),
        )
        .unwrap();
        Mosquitto::run(conf, port)
    }
    fn run(conf: PathBuf, port: u16) -> Mosquitto {
        let child = Command::new(mosquitto().unwrap())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        // Ready once it accepts connections.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { child, conf, port }
    }
    /// Killed (SIGKILL: whatever it had not saved is gone), then started.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        *self = Mosquitto::run(self.conf.clone(), self.port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `rand_xoshiro`'s SplitMix64 (the state the seed itself) with normal draws.
struct Rng(SplitMix64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(SplitMix64::seed_from_u64(seed))
    }
    fn normal(&mut self) -> f64 {
        let mut u = || (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let (a, b) = (u().max(1e-300), u());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
    fn class(&mut self, centre: f64, n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|_| (0..DIM).map(|j| (centre + j as f64 * 0.1 + self.normal()) as f32).collect()).collect()
    }
}

fn learn(head: &mut Head, name: &str, xs: &[Vec<f32>]) {
    match head.find(name) {
        Some(_) => head.begin_extend(label(name).unwrap()).unwrap(),
        None => head.begin(label(name).unwrap()).unwrap(),
    }
    xs.iter().for_each(|x| {
        head.learn(x).unwrap();
    });
    head.commit().unwrap();
}

fn load(bytes: &[u8]) -> Head {
    GaussianHead::from_stats(bytes, 8, &Expect::default()).unwrap().0
}

fn assert_same(a: &Head, b: &Head) {
    assert_eq!(a.class_count(), b.class_count());
    let tol = |v: &[f64]| 1e-9 * v.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (slot, c) in a.classes() {
        let other = b.find(c.label.as_str()).unwrap_or_else(|| panic!("{} missing", c.label));
        assert_eq!(c.count, b.slots()[other].count, "{}", c.label);
        let t = tol(a.mean(slot));
        assert!(a.mean(slot).iter().zip(b.mean(other)).all(|(x, y)| (x - y).abs() <= t), "{}", c.label);
    }
    let t = tol(a.pooled());
    assert!(a.pooled().iter().zip(b.pooled()).all(|(x, y)| (x - y).abs() <= t), "pooled accumulators differ");
}

/// A device's retained message: what `head` learned beyond `base`.
fn device_message(id: &str, generation: u64, head: &Head, base: &Head, sha: [u8; 32]) -> Vec<u8> {
    let summary = Summary::of_head(head).since(&Summary::of_head(base)).unwrap();
    let ctx = gaussedge_fleet::Context::of_head(head, sha);
    message::encode(&DeviceMessage {
        device: id.into(),
        generation,
        forgets_applied: 0,
        parent: None,
        summary: summary.to_bytes(&ctx),
    })
}

/// Waits for the retained fleet head to satisfy `ok`.
fn head_where(broker: &Broker, logs: &Path, ok: impl Fn(&HeadMessage) -> bool) -> HeadMessage {
    let start = Instant::now();
    loop {
        let snap = net::snapshot(broker, "shop", Duration::from_millis(200), Duration::from_secs(10)).unwrap();
        if let Some(h) = snap.head.filter(|h| ok(h)) {
            return h;
        }
        if start.elapsed() > Duration::from_secs(30) {
            for log in ["merger.log", "merger2.log"] {
                eprintln!("{log}:\n{}", std::fs::read_to_string(logs.join(log)).unwrap_or_default());
            }
            panic!("the fleet head never settled");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn merger(broker: &Broker, base: &Path, log: &Path) -> Child {
    Command::new(gaussedge_tests::host_binary())
        .args(["fleet", "merge", "--broker", &format!("mqtt://127.0.0.1:{}", broker.port), "--fleet", "shop"])
        .arg("--base")
        .arg(base)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_fleet_over_mosquitto_merges_exactly_and_survives_restarts_duplicates_and_a_foreign_device() {
    if mosquitto().is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have Mosquitto (scripts/setup.sh installs it)");
        eprintln!("skipped: no mosquitto here (apt-get install mosquitto)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker_proc = Mosquitto::start(dir.path(), port);
    let broker = Broker { host: "127.0.0.1".into(), port };
    let topics = Topics::new("shop").unwrap();

    // The base, and what three devices learn over it: x on d1, y on d1 and
    // d2 (other samples), z on d2, w on d3.
    let mut r = Rng::new(7);
    let mut base = GaussianHead::with_capacity(HeadConfig {
        dim: DIM,
        capacity: 8,
        weighting: Estimator::Pooled.weighting(),
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    })
    .unwrap();
    for (i, name) in ["a", "b"].iter().enumerate() {
        learn(&mut base, name, &r.class(4.0 * i as f64, 150));
    }
    let meta = StatsMeta { backbone_sha256: SHA, novelty_threshold: 40.0, ..Default::default() };
    let base_stats = stats::to_vec(&base, &meta).unwrap();
    let base_file = dir.path().join("base.stats");
    std::fs::write(&base_file, &base_stats).unwrap();
    let base = load(&base_stats);
    let (x, y1, y2, z, w) =
        (r.class(10.0, 40), r.class(-8.0, 30), r.class(-8.0, 25), r.class(15.0, 20), r.class(-14.0, 35));
    let mut d1 = load(&base_stats);
    learn(&mut d1, "x", &x);
    learn(&mut d1, "y", &y1);
    let mut d2 = load(&base_stats);
    learn(&mut d2, "y", &y2);
    learn(&mut d2, "z", &z);
    let mut d3 = load(&base_stats);
    learn(&mut d3, "w", &w);

    let mut merge = merger(&broker, &base_file, &dir.path().join("merger.log"));
    let publish = |id: &str, bytes: Vec<u8>| {
        net::publish(&broker, &topics.device(id).unwrap(), true, bytes, Duration::from_secs(10)).unwrap()
    };
    publish("d1", device_message("d1", 1, &d1, &base, SHA));
    publish("d2", device_message("d2", 1, &d2, &base, SHA));
    let two = head_where(&broker, dir.path(), |h| h.included.len() == 2);

    // A misconfigured device (another backbone): refused and reported on
    // the error topic, the head unchanged.
    let (client, mut conn) = net::connect(&broker, "test-errors");
    let mut errors = vec![];
    let start = Instant::now();
    let mut sent = false;
    while errors.is_empty() && start.elapsed() < Duration::from_secs(20) {
        match conn.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                client.subscribe(topics.errors(), rumqttc::QoS::AtLeastOnce).unwrap();
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) if !sent => {
                publish("rogue", device_message("rogue", 1, &d3, &base, [9; 32]));
                sent = true;
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                errors.push(String::from_utf8_lossy(&p.payload).into_owned())
            }
            _ => {}
        }
    }
    let _ = client.disconnect();
    assert!(errors.iter().any(|e| e.contains("rogue") && e.contains("backbone")), "{errors:?}");
    let snap = net::snapshot(&broker, "shop", Duration::from_millis(300), Duration::from_secs(10)).unwrap();
    assert_eq!(snap.head.as_ref().unwrap().stats, two.stats, "a refused device changed the head");

    // The merger killed and restarted: rebuilt from the retained messages,
    // the same head. A message delivered twice, and an older one, count once.
    merge.kill().unwrap();
    merge.wait().unwrap();
    let mut merge = merger(&broker, &base_file, &dir.path().join("merger2.log"));
    publish("d1", device_message("d1", 1, &d1, &base, SHA));
    let again = head_where(&broker, dir.path(), |h| h.included.len() == 2);
    assert_eq!(again.stats, two.stats);
    assert_eq!(again.generation, two.generation);

    // The broker killed and restarted: it lost the retained messages it had
    // not saved. The devices' agents republish their latest on reconnect
    // (as `fleet agent` does), the merger its head; d3, offline until now,
    // comes in after it.
    broker_proc.restart();
    publish("d1", device_message("d1", 1, &d1, &base, SHA));
    publish("d2", device_message("d2", 1, &d2, &base, SHA));
    publish("rogue", device_message("rogue", 1, &d3, &base, [9; 32]));
    publish("d3", device_message("d3", 1, &d3, &base, SHA));
    let all = head_where(&broker, dir.path(), |h| h.included.len() == 3);
    let mut one = load(&base_stats);
    learn(&mut one, "x", &x);
    learn(&mut one, "y", &[y1.clone(), y2.clone()].concat());
    learn(&mut one, "z", &z);
    learn(&mut one, "w", &w);
    assert_same(&load(&all.stats), &one);
    assert_eq!(stats::read_header(&all.stats).unwrap().novelty_threshold, 40.0);

    // Status, then a fleet-wide forget, from the command line.
    let url = format!("mqtt://127.0.0.1:{port}");
    let out = Command::new(gaussedge_tests::host_binary())
        .args(["fleet", "status", "--broker", &url, "--fleet", "shop", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let classes: Vec<(String, u64)> = serde_json::from_value(status["head_classes"].clone()).unwrap();
    assert_eq!(classes.len(), 6, "{status}");
    assert!(classes.contains(&("y".into(), 55)), "{status}");
    assert_eq!(status["devices"].as_array().unwrap().len(), 4, "rogue is listed too: {status}");
    let out = Command::new(gaussedge_tests::host_binary())
        .args(["fleet", "forget", "z", "--broker", &url, "--fleet", "shop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let forgot = head_where(&broker, dir.path(), |h| h.forgets == 1);
    let head = load(&forgot.stats);
    assert!(head.find("z").is_none() && head.find("w").is_some());
    one.forget("z").unwrap();
    assert_same(&head, &one);

    merge.kill().unwrap();
    merge.wait().unwrap();
}

/// Agents beside three simulated devices over real PTYs: each device
/// learns its own classes (one class on two of them), the agents publish,
/// the merger merges, the agents push the fleet head, and every device ends
/// with what one device that learned every sample holds. Then, with the
/// agents stopped (devices offline), one device learns more; when they come
/// back the change reaches all.
#[test]
fn agents_beside_three_devices_share_what_each_learned() {
    use gaussedge_shared::stats::read_header;
    if mosquitto().is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have Mosquitto (scripts/setup.sh installs it)");
        eprintln!("skipped: no mosquitto here (apt-get install mosquitto)");
        return;
    }
    let f = gaussedge_tests::fixture();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port);
    let url = format!("mqtt://127.0.0.1:{port}");
    let broker = Broker { host: "127.0.0.1".into(), port };
    let train = gaussedge_tests::dataset(gaussedge_data::Split::Train);
    let frames = |class: u16, range: std::ops::Range<usize>| -> Vec<usize> {
        train.indices_of(class).into_iter().skip(range.start).take(range.len()).collect()
    };
    let send = |c: &mut gaussedge_host::client::Client, name: &str, idx: &[usize]| {
        c.begin_class(gaussedge_tests::label(name), false).unwrap();
        for &i in idx {
            c.learn(train.samples[i].format, &train.samples[i].pixels).unwrap();
        }
        c.commit().unwrap();
    };
    let capture = |c: &mut gaussedge_host::client::Client, name: &str, class: u16, n: u32| {
        c.begin_class(gaussedge_tests::label(name), false).unwrap();
        c.capture(n, Some(class)).unwrap();
        c.commit().unwrap();
    };
    let sims: Vec<_> = (0..4).map(|i| gaussedge_tests::start(&dir.path().join(format!("dev{i}")), &[])).collect();
    {
        let mut c: Vec<_> = sims.iter().map(gaussedge_tests::connect).collect();
        send(&mut c[0], "cat", &frames(3, 0..20));
        send(&mut c[1], "cat", &frames(3, 20..40));
        capture(&mut c[1], "deer", 4, 15);
        capture(&mut c[2], "dog", 5, 12);
        // The reference: one device that learned every sample.
        send(&mut c[3], "cat", &frames(3, 0..40));
        capture(&mut c[3], "deer", 4, 15);
        capture(&mut c[3], "dog", 5, 12);
    }

    let mut merge = merger_of(&url, &f.bundle, &dir.path().join("merger.log"));
    let agents = |round: usize| -> Vec<Child> {
        (0..3)
            .map(|i| {
                Command::new(gaussedge_tests::host_binary())
                    .args(["fleet", "agent", "--broker", &url, "--fleet", "shop", "--device", &format!("d{i}")])
                    .arg("--bundle")
                    .arg(&f.bundle)
                    .args(["--port", &sims[i].path])
                    .arg("--state")
                    .arg(dir.path().join(format!("agent{i}")))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.path().join(format!("agent{i}-{round}.log"))).unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect()
    };
    // Settled: the head includes every device's latest message, and every
    // agent's device started from that head.
    let settled = |classes: u32| -> HeadMessage {
        let start = Instant::now();
        loop {
            let snap = net::snapshot(&broker, "shop", Duration::from_millis(200), Duration::from_secs(10)).unwrap();
            if let Some(h) = snap.head {
                let all_in = snap.devices.len() == 3
                    && snap.devices.values().all(|m| h.included.contains(&(m.device.clone(), m.generation)));
                let taken = (0..3).all(|i| {
                    std::fs::read(dir.path().join(format!("agent{i}/parent.stats"))).is_ok_and(|p| p == h.stats)
                });
                if all_in && taken && read_header(&h.stats).unwrap().classes == classes {
                    return h;
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                for log in std::fs::read_dir(dir.path()).unwrap().flatten() {
                    if log.path().extension().is_some_and(|e| e == "log") {
                        eprintln!("{}:\n{}", log.path().display(), std::fs::read_to_string(log.path()).unwrap());
                    }
                }
                panic!("the fleet did not settle");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let stop = |agents: Vec<Child>| {
        for mut a in agents {
            unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
            assert!(a.wait().unwrap().success());
        }
    };
    let check = |expect: usize| {
        let mut c: Vec<_> = sims.iter().map(gaussedge_tests::connect).collect();
        let reference = load(&c[3].pull_stats().unwrap());
        assert_eq!(reference.class_count(), expect);
        for dev in c.iter_mut().take(3) {
            assert_same(&load(&dev.pull_stats().unwrap()), &reference);
        }
    };

    let round = agents(0);
    settled(6);
    stop(round);
    check(6);

    // Offline, device 0 learns frog from its camera; the reference too.
    {
        let mut c0 = gaussedge_tests::connect(&sims[0]);
        capture(&mut c0, "frog", 6, 10);
        let mut c3 = gaussedge_tests::connect(&sims[3]);
        capture(&mut c3, "frog", 6, 10);
    }
    let round = agents(1);
    settled(7);
    stop(round);
    check(7);

    merge.kill().unwrap();
    merge.wait().unwrap();
}

fn merger_of(url: &str, bundle: &Path, log: &Path) -> Child {
    Command::new(gaussedge_tests::host_binary())
        .args(["fleet", "merge", "--broker", url, "--fleet", "shop", "--bundle"])
        .arg(bundle)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}
