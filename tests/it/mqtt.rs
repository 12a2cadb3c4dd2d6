//! The MQTT client against a real mosquitto broker (`/usr/sbin/mosquitto`, Debian's package):
//! discovery, events, retained states, last will, TLS, an outage with 500 events, and signed
//! commands.
//!
//! Each test starts its own broker on a free loopback port with a configuration written into a
//! temporary folder, so tests are hermetic, run in parallel and may stop and restart their broker.
//! A test subscriber (rumqttc, like the appliance) watches what the appliance publishes. Without
//! mosquitto a test prints why and passes, except under `CI=true`, where it fails: CI must never
//! pass by skipping (`.ci/run` installs the package).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portier::mqtt::client::{Message, MqttClient, MqttConfig, MqttTlsConfig};
use portier::mqtt::command::{Action, Verifier};
use portier::mqtt::discovery::{DeviceInfo, DEFAULT_MODEL};
use portier::mqtt::events::{
    AccessEvent, AccessKind, Backend, Counters, DoorEvent, DoorKind, LockState, SystemEvent,
};
use rumqttc::{Event, Incoming, MqttOptions, Publish, QoS};
use serde_json::Value;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
pub(crate) const DEVICE: &str = "frontdoor";
pub(crate) const BASE: &str = "portier/frontdoor";
pub(crate) const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Generous: the machine is shared, and a reconnect backs off up to 10 s.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Whether mosquitto is installed; `false` (with a notice) outside CI, a failure under CI=true.
pub(crate) fn have_mosquitto() -> bool {
    if Path::new(MOSQUITTO).is_file() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{MOSQUITTO} missing (CI=true: failing, not skipping; apt-get install mosquitto)");
    }
    eprintln!("notice: {MOSQUITTO} missing, skipping (apt-get install mosquitto)");
    false
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// One mosquitto process with its configuration, persistence and log in `dir`.
pub(crate) struct Broker {
    dir: PathBuf,
    /// The plain listener, for the test's own clients.
    pub(crate) port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker with a plain listener on a free port plus `extra` configuration lines.
    pub(crate) fn start(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence true\n\
                 persistence_location {dir}/\n\
                 max_queued_messages 100000\n\
                 log_dest file {dir}/mosquitto.log\n\
                 user root\n\
                 {extra}\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut broker = Broker { dir: dir.to_path_buf(), port, conf, child: None };
        broker.restart();
        broker
    }

    /// (Re)starts the process and waits until it accepts connections.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        let up =
            wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "mosquitto did not come up; log:\n{}", self.log());
    }

    /// Stops the process with SIGTERM, as systemd does: it saves its persistence file.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let end = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A test client: receives what it subscribed to (on its own thread) and publishes.
pub(crate) struct Sub {
    client: rumqttc::Client,
    pub(crate) rx: Receiver<Publish>,
    subacks: Receiver<()>,
    /// Everything received so far, in order.
    pub(crate) seen: Vec<Publish>,
}

impl Sub {
    /// Connects to `port`; `persistent` keeps the session (and queued messages) on the broker
    /// across disconnects.
    pub(crate) fn connect(port: u16, id: &str, persistent: bool) -> Sub {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5)).set_clean_session(!persistent);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = rumqttc::Client::new(options, 1000);
        let (tx, rx) = mpsc::channel();
        let (sub_tx, subacks) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    // Broker stopped: try again shortly (rumqttc reconnects on the next poll).
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Sub { client, rx, subacks, seen: Vec::new() }
    }

    pub(crate) fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        self.subacks.recv_timeout(WAIT).expect("SUBACK");
    }

    pub(crate) fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload.to_vec()).unwrap();
    }

    /// The first message received (now or within `timeout`) after index `from` that matches.
    pub(crate) fn wait_from(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Publish) -> bool,
    ) -> Option<Publish> {
        let end = Instant::now() + timeout;
        let mut at = from;
        loop {
            while at < self.seen.len() {
                if pred(&self.seen[at]) {
                    return Some(self.seen[at].clone());
                }
                at += 1;
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(p) => self.seen.push(p),
                Err(_) => return None,
            }
        }
    }

    /// Takes everything received so far into `seen` without waiting.
    pub(crate) fn drain(&mut self) {
        while let Ok(p) = self.rx.try_recv() {
            self.seen.push(p);
        }
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Publish) -> bool,
    ) -> Option<Publish> {
        self.wait_from(0, timeout, pred)
    }
}

pub(crate) fn json(p: &Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or(Value::Null)
}

fn is(p: &Publish, topic: &str, payload: &str) -> bool {
    p.topic == topic && p.payload == payload.as_bytes()
}

pub(crate) fn config(port: u16, dir: &Path) -> MqttConfig {
    MqttConfig {
        enabled: true,
        host: "127.0.0.1".to_owned(),
        port,
        device_id: DEVICE.to_owned(),
        keep_alive_s: 5,
        outbox_dir: dir.join("outbox"),
        ..MqttConfig::default()
    }
}

pub(crate) fn device() -> DeviceInfo {
    DeviceInfo::new(DEVICE, "Front door", "0.1.0", DEFAULT_MODEL, None).unwrap()
}

pub(crate) fn start(config: &MqttConfig) -> MqttClient {
    MqttClient::start(config, device(), "t3st").unwrap()
}

pub(crate) fn access(kind: AccessKind, track_id: u64) -> AccessEvent {
    AccessEvent {
        kind,
        track_id,
        person: Some("Ada".to_owned()),
        person_id: Some(3),
        similarity: Some(0.61),
        second_similarity: Some(0.2),
        backend: Some(Backend::Npu),
        eye_distance_px: 58.5,
        embedding_norm: 21.25,
        liveness: None,
        liveness_model: None,
    }
}

pub(crate) fn connected(client: &MqttClient) -> bool {
    wait_until(WAIT, || client.stats().connected)
}

// Home Assistant's documented configuration keys for MQTT discovery (home-assistant.io
// integrations lock.mqtt, event.mqtt, sensor.mqtt, binary_sensor.mqtt and the MQTT
// integration's discovery section, 2025-2026): a key outside these lists is silently ignored by
// Home Assistant, so a typo would otherwise go unnoticed.
const HA_COMMON: &[&str] = &[
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "default_entity_id",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "origin",
    "qos",
    "unique_id",
    "platform",
];
const HA_LOCK: &[&str] = &[
    "code_format",
    "command_template",
    "command_topic",
    "optimistic",
    "payload_lock",
    "payload_open",
    "payload_reset",
    "payload_unlock",
    "retain",
    "state_jammed",
    "state_locked",
    "state_locking",
    "state_open",
    "state_opening",
    "state_topic",
    "state_unlocked",
    "state_unlocking",
    "value_template",
];
const HA_EVENT: &[&str] = &["device_class", "event_types", "state_topic", "value_template"];
const HA_SENSOR: &[&str] = &[
    "device_class",
    "expire_after",
    "force_update",
    "last_reset_value_template",
    "options",
    "state_class",
    "state_topic",
    "suggested_display_precision",
    "unit_of_measurement",
    "value_template",
];
const HA_BINARY_SENSOR: &[&str] = &[
    "device_class",
    "expire_after",
    "force_update",
    "off_delay",
    "payload_off",
    "payload_on",
    "state_topic",
    "value_template",
];
const HA_DEVICE: &[&str] = &[
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
];
const HA_ORIGIN: &[&str] = &["name", "sw_version", "support_url"];

/// Checks one discovery config against the schema; returns what is wrong.
fn schema_errors(component: &str, config: &Value) -> Vec<String> {
    let (specific, required): (&[&str], &[&str]) = match component {
        "lock" => (HA_LOCK, &["command_topic", "state_topic"]),
        "event" => (HA_EVENT, &["state_topic", "event_types"]),
        "sensor" => (HA_SENSOR, &["state_topic"]),
        "binary_sensor" => (HA_BINARY_SENSOR, &["state_topic"]),
        other => return vec![format!("unexpected component {other}")],
    };
    let Some(map) = config.as_object() else { return vec!["not a JSON object".to_owned()] };
    let mut errors = Vec::new();
    for key in map.keys() {
        if !HA_COMMON.contains(&key.as_str()) && !specific.contains(&key.as_str()) {
            errors.push(format!("unknown key {key}"));
        }
    }
    for key in required.iter().chain(&["unique_id", "name", "device", "availability_topic"]) {
        if !map.contains_key(*key) {
            errors.push(format!("missing {key}"));
        }
    }
    for key in map.keys().filter(|k| k.ends_with("_topic")) {
        let topic = map[key].as_str().unwrap_or_default();
        if !topic.starts_with(&format!("{BASE}/")) {
            errors.push(format!("{key} {topic:?} is outside {BASE}"));
        }
    }
    match map.get("device").and_then(Value::as_object) {
        Some(device) => {
            for key in device.keys().filter(|k| !HA_DEVICE.contains(&k.as_str())) {
                errors.push(format!("unknown device key {key}"));
            }
            if device.get("identifiers") != Some(&serde_json::json!([DEVICE])) {
                errors.push("device identifiers must be [device id]".to_owned());
            }
        }
        None => errors.push("device is not an object".to_owned()),
    }
    if let Some(origin) = map.get("origin").and_then(Value::as_object) {
        for key in origin.keys().filter(|k| !HA_ORIGIN.contains(&k.as_str())) {
            errors.push(format!("unknown origin key {key}"));
        }
    }
    if component == "event" {
        let types = map.get("event_types").and_then(Value::as_array).cloned().unwrap_or_default();
        for kind in AccessKind::ALL {
            if !types.contains(&Value::from(kind.as_str())) {
                errors.push(format!("event_types lacks {}", kind.as_str()));
            }
        }
    }
    errors
}

#[test]
fn discovery_states_events_and_clean_shutdown() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    // With scores: the similarity sensor is announced and its state published.
    let client = start(&MqttConfig { publish_scores: true, ..config(broker.port, dir.path()) });
    assert!(connected(&client), "not connected; broker log:\n{}", broker.log());
    client.send(Message::Lock(LockState::Locked));
    client.send(Message::Contact(false));

    let mut sub = Sub::connect(broker.port, "watcher", false);
    sub.subscribe("homeassistant/#");
    sub.subscribe(&format!("{BASE}/#"));

    // Discovery: retained, on the documented topics, valid against the schema.
    let expected = [
        ("lock", "door"),
        ("event", "access"),
        ("sensor", "last_person"),
        ("sensor", "similarity"),
        ("sensor", "backend"),
        ("sensor", "frames"),
        ("sensor", "alarm"),
        ("sensor", "npu"),
        ("binary_sensor", "door_contact"),
    ];
    let mut unique_ids = HashSet::new();
    for (component, object) in expected {
        let topic = format!("homeassistant/{component}/{DEVICE}/{object}/config");
        let p = sub.wait(WAIT, |p| p.topic == topic).unwrap_or_else(|| panic!("no {topic}"));
        assert!(p.retain, "{topic} is not retained");
        let config = json(&p);
        let errors = schema_errors(component, &config);
        assert!(errors.is_empty(), "{topic}: {errors:?}\n{config:#}");
        assert!(unique_ids.insert(config["unique_id"].as_str().unwrap().to_owned()));
    }
    let online = sub.wait(WAIT, |p| is(p, &format!("{BASE}/availability"), "online")).unwrap();
    assert!(online.retain);
    assert!(sub.wait(WAIT, |p| is(p, &format!("{BASE}/lock/state"), "LOCKED")).is_some());
    assert!(sub.wait(WAIT, |p| is(p, &format!("{BASE}/door/contact"), "OFF")).is_some());

    // Each event, and the states that follow them.
    let mark = sub.seen.len();
    client.send(Message::Access(access(AccessKind::Granted, 42)));
    client.send(Message::Door(DoorEvent { kind: DoorKind::Opened, reason: None }));
    client.send(Message::System(SystemEvent::CameraLost { reason: "timeout".to_owned() }));
    client.send(Message::Lock(LockState::Unlocked));
    client.send(Message::Contact(true));
    client.send(Message::Counters(Counters { frames: 100, ..Counters::default() }));
    client.send(Message::Npu(portier::app::NpuUse::NotInstalled));
    let topic = |t: &str| format!("{BASE}/{t}");
    let granted = sub.wait_from(mark, WAIT, |p| p.topic == topic("event/access")).unwrap();
    let granted = json(&granted);
    assert_eq!(granted["kind"], "granted");
    assert_eq!(granted["track_id"], 42);
    assert_eq!(granted["person"], "Ada");
    assert_eq!(granted["backend"], "npu");
    assert_eq!(granted["device"], DEVICE);
    assert!(granted["id"].as_str().unwrap().starts_with("t3st-"));
    let door = json(&sub.wait_from(mark, WAIT, |p| p.topic == topic("event/door")).unwrap());
    assert_eq!(door["kind"], "opened");
    let system = json(&sub.wait_from(mark, WAIT, |p| p.topic == topic("event/system")).unwrap());
    assert_eq!(
        (system["kind"].as_str(), system["reason"].as_str()),
        (Some("camera_lost"), Some("timeout"))
    );
    for (t, payload) in [
        ("lock/state", "UNLOCKED"),
        ("door/contact", "ON"),
        ("sensor/last_person", "Ada"),
        ("sensor/similarity", "0.610"),
        ("sensor/backend", "npu"),
        ("npu/state", "not_installed"),
    ] {
        assert!(sub.wait_from(mark, WAIT, |p| is(p, &topic(t), payload)).is_some(), "{t}");
    }
    let counters = json(&sub.wait_from(mark, WAIT, |p| p.topic == topic("counters")).unwrap());
    assert_eq!(counters["frames"], 100);
    let (a, d, s) = (&granted["seq"], &door["seq"], &system["seq"]);
    assert!(a.as_u64() < d.as_u64() && d.as_u64() < s.as_u64(), "{a} {d} {s}");

    // Home Assistant restarts: its birth message brings the discovery configs again.
    let mark = sub.seen.len();
    sub.publish("homeassistant/status", b"online", false);
    let lock_config = "homeassistant/lock/frontdoor/door/config";
    assert!(sub.wait_from(mark, WAIT, |p| p.topic == lock_config).is_some(), "no re-announce");

    // Clean shutdown: offline, retained, and the outbox is empty.
    let mark = sub.seen.len();
    assert!(wait_until(WAIT, || client.stats().outbox_pending == 0));
    client.shutdown(Duration::from_secs(10)).unwrap();
    assert!(sub.wait_from(mark, WAIT, |p| is(p, &topic("availability"), "offline")).is_some());
    // A newcomer (Home Assistant starting later) finds the last of every state retained.
    let mut late = Sub::connect(broker.port, "late", false);
    late.subscribe(&format!("{BASE}/#"));
    for (t, payload) in [
        ("availability", "offline"),
        ("lock/state", "UNLOCKED"),
        ("door/contact", "ON"),
        ("sensor/last_person", "Ada"),
        ("sensor/similarity", "0.610"),
        ("sensor/backend", "npu"),
        ("npu/state", "not_installed"),
    ] {
        let p = late.wait(WAIT, |p| p.topic == topic(t)).unwrap_or_else(|| panic!("no {t}"));
        assert!(p.retain && p.payload == payload.as_bytes(), "{t}: {p:?}");
    }
    assert!(late.wait(WAIT, |p| p.topic == topic("counters")).unwrap().retain);
}

/// Not a test of its own: the body of the process that `last_will_flips_availability` kills.
/// Runs only when that test starts this binary with `PORTIER_MQTT_CRASH_PORT` set.
#[test]
fn crash_child() {
    let Ok(port) = std::env::var("PORTIER_MQTT_CRASH_PORT") else { return };
    let dir = PathBuf::from(std::env::var("PORTIER_MQTT_CRASH_DIR").unwrap());
    let client = start(&config(port.parse().unwrap(), &dir));
    assert!(connected(&client));
    println!("READY");
    std::thread::sleep(Duration::from_secs(60));
    drop(client);
}

#[test]
fn last_will_flips_availability() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let mut sub = Sub::connect(broker.port, "watcher", false);
    sub.subscribe(&format!("{BASE}/availability"));

    // The appliance in a process of its own, killed with SIGKILL: no DISCONNECT, no offline.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "mqtt::crash_child", "--nocapture", "--test-threads", "1"])
        .env("PORTIER_MQTT_CRASH_PORT", broker.port.to_string())
        .env("PORTIER_MQTT_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test mqtt::crash_child ... " without a newline first.
            if line.trim_end().ends_with("READY") {
                let _ = ready_tx.send(());
            }
        }
    });
    let started = ready.recv_timeout(WAIT);
    if started.is_err() {
        let _ = child.kill();
        panic!("the child never connected; broker log:\n{}", broker.log());
    }
    let topic = format!("{BASE}/availability");
    assert!(sub.wait(WAIT, |p| is(p, &topic, "online")).is_some());
    let mark = sub.seen.len();
    child.kill().unwrap();
    child.wait().unwrap();
    let offline = sub.wait_from(mark, WAIT, |p| is(p, &topic, "offline"));
    assert!(offline.is_some(), "no last will; broker log:\n{}", broker.log());
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all made now.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        write_secret(&path, text.as_bytes());
        path
    };
    let ca_for = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca, ca_key) = ca_for("portier test CA");
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "broker",
    );
    let (client_cert, client_key) =
        leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "portier-frontdoor");
    let (other, _) = ca_for("some other CA");
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server_cert),
        server_key: write("server.key", server_key),
        client_cert: write("client.pem", client_cert),
        client_key: write("client.key", client_key),
        other_ca: write("other-ca.pem", other.pem()),
    }
}

#[test]
fn tls_with_generated_certificates() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let tls_port = free_port();
    // A TLS listener that demands a client certificate, beside the plain one for the watcher.
    let broker = Broker::start(
        dir.path(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    );
    let mut sub = Sub::connect(broker.port, "watcher", false);
    sub.subscribe(&format!("{BASE}/#"));

    let mut cfg = config(tls_port, dir.path());
    cfg.tls = Some(MqttTlsConfig {
        ca_file: pki.ca.clone(),
        client_cert_file: Some(pki.client_cert.clone()),
        client_key_file: Some(pki.client_key.clone()),
    });
    let client = start(&cfg);
    assert!(connected(&client), "no TLS connection; broker log:\n{}", broker.log());
    client.send(Message::Access(access(AccessKind::Unknown, 7)));
    let event = sub.wait(WAIT, |p| p.topic == format!("{BASE}/event/access")).unwrap();
    assert_eq!(json(&event)["kind"], "unknown");
    client.shutdown(Duration::from_secs(10)).unwrap();

    // A broker certificate from another CA is refused: no connection, ever.
    let mut wrong = config(tls_port, &dir.path().join("wrong"));
    wrong.client_id = Some("portier-wrong-ca".to_owned());
    wrong.tls = Some(MqttTlsConfig { ca_file: pki.other_ca.clone(), ..cfg.tls.clone().unwrap() });
    let client = start(&wrong);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(client.stats().connects, 0, "connected to a broker it must not trust");
    client.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn outage_500_events_arrive_in_order() {
    if !have_mosquitto() {
        return;
    }
    const N: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "");
    let access_topic = format!("{BASE}/event/access");
    // A persistent session: the broker keeps the subscription and queues for it across the
    // restart, so the watcher misses nothing published while it reconnects.
    let mut sub = Sub::connect(broker.port, "outage-watcher", true);
    sub.subscribe(&access_topic);
    let client = start(&config(broker.port, dir.path()));
    assert!(connected(&client));

    broker.stop();
    assert!(wait_until(WAIT, || !client.stats().connected));
    for track in 0..N {
        assert!(client.send(Message::Access(access(AccessKind::Granted, track))), "channel full");
    }
    assert!(
        wait_until(WAIT, || client.stats().outbox_pending == N),
        "events not in the outbox: {:?}",
        client.stats()
    );
    broker.restart();

    // Every event, in order, duplicates only as re-sends of an earlier id.
    let mut first_seen: Vec<u64> = Vec::new();
    let mut ids = HashSet::new();
    let mut duplicates = 0;
    let end = Instant::now() + Duration::from_secs(40);
    while (first_seen.len() as u64) < N && Instant::now() < end {
        let Ok(p) = sub.rx.recv_timeout(Duration::from_millis(200)) else { continue };
        if p.topic != access_topic {
            continue;
        }
        let event = json(&p);
        let id = event["id"].as_str().unwrap().to_owned();
        if ids.insert(id) {
            first_seen.push(event["track_id"].as_u64().unwrap());
        } else {
            duplicates += 1;
        }
    }
    assert_eq!(first_seen.len() as u64, N, "missing events; stats {:?}", client.stats());
    let expected: Vec<u64> = (0..N).collect();
    assert_eq!(first_seen, expected, "events out of order");
    assert!(duplicates <= N, "{duplicates} duplicates");
    assert!(wait_until(WAIT, || client.stats().outbox_pending == 0), "{:?}", client.stats());
    assert_eq!(client.stats().outbox_dropped, 0);
    client.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn broker_down_at_start_then_restart_of_portier_sends_the_outbox() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "");
    let mut sub = Sub::connect(broker.port, "restart-watcher", true);
    let door_topic = format!("{BASE}/event/door");
    sub.subscribe(&door_topic);
    broker.stop();

    // Start-up does not wait for the broker; the events wait in the outbox through a restart.
    let cfg = config(broker.port, dir.path());
    let client = start(&cfg);
    for kind in [DoorKind::Opened, DoorKind::Closed, DoorKind::HeldOpen] {
        assert!(client.send(Message::Door(DoorEvent { kind, reason: None })));
    }
    // The three door events and the `started` system event.
    assert!(wait_until(WAIT, || client.stats().outbox_pending == 4));
    client.shutdown(Duration::from_secs(10)).unwrap();

    broker.restart();
    let client = start(&cfg);
    assert!(connected(&client));
    let mut kinds = Vec::new();
    let end = Instant::now() + WAIT;
    while kinds.len() < 3 && Instant::now() < end {
        if let Ok(p) = sub.rx.recv_timeout(Duration::from_millis(200)) {
            if p.topic == door_topic {
                kinds.push(json(&p)["kind"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(kinds, ["opened", "closed", "held_open"]);
    assert!(wait_until(WAIT, || client.stats().outbox_pending == 0));
    client.shutdown(Duration::from_secs(10)).unwrap();
}

pub(crate) fn nonce(i: u32) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("n{i:04}x{t:x}")
}

pub(crate) fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Waits until the clock has left the unix second `started`: a client refuses every command
/// signed at or before the second it started in (`below_mark`).
pub(crate) fn after_second(started: i64) {
    while now_s() <= started {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn signed_commands_accepted_others_refused() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let key_file = dir.path().join("command.key");
    write_secret(&key_file, &[KEY, b"\n"].concat());
    let mut cfg = config(broker.port, dir.path());
    cfg.command_key_file = Some(key_file);
    let started = now_s();
    let client = start(&cfg);
    assert!(connected(&client));
    let mut sub = Sub::connect(broker.port, "sender", false);
    sub.subscribe(&format!("{BASE}/event/system"));
    // The client subscribes right after CONNACK; give that SUBSCRIBE a moment to be handled.
    std::thread::sleep(Duration::from_millis(300));
    after_second(started);
    let command_topic = format!("{BASE}/command");

    let valid = Verifier::sign(KEY, DEVICE, Action::Unlock, now_s(), &nonce(1));
    sub.publish(&command_topic, &valid, false);
    let command = client.commands().recv_timeout(WAIT).expect("the signed unlock");
    assert_eq!(command.action, Action::Unlock);

    let unsigned = serde_json::json!({
        "device": DEVICE, "action": "unlock", "ts": now_s(), "nonce": nonce(2)
    })
    .to_string()
    .into_bytes();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("unsigned", "malformed", unsigned),
        // Without a one-time code secret, the lock card's UNLOCK opens nothing (issue 17).
        ("home assistant's plain UNLOCK", "code_not_configured", b"UNLOCK".to_vec()),
        ("stale", "stale", Verifier::sign(KEY, DEVICE, Action::Unlock, now_s() - 3600, &nonce(3))),
        (
            "wrong key",
            "bad_signature",
            Verifier::sign(
                b"another key of 32 bytes........",
                DEVICE,
                Action::Unlock,
                now_s(),
                &nonce(4),
            ),
        ),
        ("replayed", "replayed", valid.clone()),
        ("malformed JSON", "malformed", br#"{"device": "frontdoor", "action": "#.to_vec()),
        ("oversized", "too_large", vec![b'{'; 100_000]),
        (
            "other device",
            "wrong_device",
            Verifier::sign(KEY, "backdoor", Action::Unlock, now_s(), &nonce(5)),
        ),
    ];
    for (name, reason, payload) in cases {
        let mark = sub.seen.len();
        let topic = if name.contains("UNLOCK") {
            format!("{BASE}/lock/set")
        } else {
            command_topic.clone()
        };
        sub.publish(&topic, &payload, false);
        let refused = sub.wait_from(mark, WAIT, |p| json(p)["kind"] == "command_refused");
        let refused = json(&refused.unwrap_or_else(|| panic!("{name}: no refusal event")));
        assert_eq!(refused["reason"], reason, "{name}: {refused}");
        assert!(!refused["detail"].as_str().unwrap().is_empty());
        assert!(client.commands().try_recv().is_err(), "{name} was executed");
    }

    // Still alive after all that: the next valid command goes through.
    let lock = Verifier::sign(KEY, DEVICE, Action::Lock, now_s(), &nonce(6));
    sub.publish(&command_topic, &lock, false);
    assert_eq!(client.commands().recv_timeout(WAIT).unwrap().action, Action::Lock);
    let stats = client.stats();
    assert_eq!((stats.commands_accepted, stats.commands_refused), (2, 8), "{stats:?}");
    client.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn retained_command_is_never_executed() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let key_file = dir.path().join("command.key");
    write_secret(&key_file, KEY);
    let mut cfg = config(broker.port, dir.path());
    cfg.command_key_file = Some(key_file);
    let mut sub = Sub::connect(broker.port, "sender", false);
    sub.subscribe(&format!("{BASE}/event/system"));
    // A valid, fresh, signed unlock left retained on the broker by mistake.
    let unlock = Verifier::sign(KEY, DEVICE, Action::Unlock, now_s(), &nonce(1));
    sub.publish(&format!("{BASE}/command"), &unlock, true);
    std::thread::sleep(Duration::from_millis(300));

    // At the first connection and again at the next start, it is refused, never executed.
    let mut reasons = BTreeMap::new();
    for round in 0..2 {
        let mark = sub.seen.len();
        let client = start(&cfg);
        assert!(connected(&client));
        let refused = sub
            .wait_from(mark, WAIT, |p| json(p)["kind"] == "command_refused")
            .unwrap_or_else(|| panic!("round {round}: no refusal"));
        *reasons.entry(json(&refused)["reason"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        std::thread::sleep(Duration::from_millis(300));
        assert!(client.commands().try_recv().is_err(), "round {round}: retained unlock executed");
        client.shutdown(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(reasons, BTreeMap::from([("retained".to_owned(), 2)]));
}

/// The loop of the end-to-end tests, with a shell around `client`: the laptop config's models,
/// one photo replayed in a loop (nobody enrolled, so nobody is granted), the fake door with
/// `pulse`, made into the loop's door by `door` (given the door and its emergency handle).
/// Returns the loop, the shell and the relay's level.
pub(crate) fn photo_loop(
    assets: &Path,
    dir: &Path,
    pulse: Duration,
    pace: bool,
    client: MqttClient,
    door: impl FnOnce(
        portier::door::fake::FakeDoor,
        std::sync::Arc<dyn portier::door::EmergencySecure>,
    ) -> Box<dyn portier::door::DoorControl>,
) -> (portier::app::App, portier::shell::Shell, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use portier::app::{App, Parts};
    use portier::camera::replay::{ReplaySettings, ReplaySource};
    use portier::pipeline::Pipeline;

    let config = crate::appliance::laptop_config(&dir.join("g.db"));
    let pipeline = Pipeline::open(&config).unwrap();
    let model = pipeline.embedder_model_id();
    let matcher = portier::gallery::Gallery::open_in_memory().unwrap().matcher(&model).unwrap();
    let source = ReplaySource::open(ReplaySettings {
        path: assets.join("faces/full/face_recognition/biden.jpg"),
        fps: 10.0,
        looped: true,
        pace,
    })
    .unwrap();
    let mut door_config = config.door.door.clone();
    door_config.pulse = pulse;
    let (fake, emergency, level) = portier::door::fake::idle_door(&door_config).unwrap();
    let parts = Parts::cpu(pipeline, Box::new(source), matcher, door(fake, emergency));
    let app = App::new(config.app.clone(), parts).unwrap();
    let shell = portier::shell::Shell::new(
        Some(client),
        None,
        config.gallery_path,
        config.gallery_key_file,
        model,
    );
    (app, shell, level)
}

/// End to end: a signed unlock published to the broker reaches the running loop through the
/// MQTT thread and the shell, the door pulses (the fake relay is energised, then released),
/// and the door events and lock state come back over MQTT.
#[test]
fn a_signed_unlock_over_mqtt_pulses_the_door() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    if !have_mosquitto() {
        return;
    }
    let Some(assets) = crate::common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let key_file = dir.path().join("command.key");
    write_secret(&key_file, &[KEY, b"\n"].concat());
    let mut cfg = config(broker.port, dir.path());
    cfg.command_key_file = Some(key_file);

    let mut sub = Sub::connect(broker.port, "home-assistant", false);
    sub.subscribe(&format!("{BASE}/#"));

    let started = now_s();
    let client = start(&cfg);
    assert!(connected(&client));
    // A short pulse; the door as it is.
    let pulse = Duration::from_millis(600);
    let (mut app, mut shell, level) =
        photo_loop(&assets, dir.path(), pulse, true, client, |door, _| Box::new(door));
    // The loop runs here (it is not Send: its backends are owned by this thread); the
    // "home automation" side runs on another thread and stops the loop when done.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_outside = Arc::clone(&stop);
    let relay_level = Arc::clone(&level);
    let outside = std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The client subscribes to commands right after CONNACK.
            std::thread::sleep(Duration::from_millis(800));
            after_second(started);
            assert!(!relay_level.load(Ordering::SeqCst), "relay secure before the command");
            let mark = sub.seen.len();
            let unlock = Verifier::sign(KEY, DEVICE, Action::Unlock, now_s(), &nonce(77));
            sub.publish(&format!("{BASE}/command"), &unlock, false);
            assert!(
                wait_until(WAIT, || relay_level.load(Ordering::SeqCst)),
                "the relay was energised"
            );
            assert!(
                wait_until(WAIT, || !relay_level.load(Ordering::SeqCst)),
                "the relay was released after the pulse"
            );
            let unlocked = sub
                .wait_from(mark, WAIT, |p| {
                    p.topic.ends_with("/event/door") && json(p)["kind"] == "unlocked"
                })
                .expect("door event");
            assert_eq!(json(&unlocked)["reason"], "remote");
            sub.wait_from(mark, WAIT, |p| {
                p.topic.ends_with("/lock/state") && &p.payload[..] == b"UNLOCKED"
            })
            .expect("lock state UNLOCKED");
            sub.wait_from(mark, WAIT, |p| {
                p.topic.ends_with("/lock/state") && &p.payload[..] == b"LOCKED"
            })
            .expect("lock state LOCKED again");
        }));
        stop_outside.store(true, Ordering::SeqCst);
        result
    });
    let notifier = portier::service::Notifier::default();
    let counters = app.run(&stop, &notifier, &mut shell).unwrap();
    shell.shutdown(Duration::from_secs(3));
    if let Err(panic) = outside.join().unwrap() {
        std::panic::resume_unwind(panic);
    }
    assert!(counters.frames > 0, "{counters}");
    assert!(!level.load(Ordering::SeqCst), "relay secure after the loop stopped");
}

/// Writes a file only its owner can read: portier refuses key and password files others can.
pub(crate) fn write_secret(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}
