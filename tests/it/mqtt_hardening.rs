//! The MQTT side of issue 15 against a real mosquitto: a `homeassistant/status` flood, replay of
//! a recorded signed command after a restart and with the clock set back, a panicking client
//! thread, truthful retained door state, and a damaged outbox under the real `portier run`.
//!
//! Memory is measured in a child process (this test binary started again for one test), so
//! that the other tests running in parallel here do not count.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portier::door::{Alarm, DoorState};
use portier::mqtt::client::{Message, MqttClient, MqttHealth, DISCOVERY_MIN_INTERVAL};
use portier::mqtt::command::{Action, Verifier};
use portier::mqtt::events::AccessKind;
use rumqttc::Publish;

use crate::appliance::cli_config;
use crate::common::assets;
use crate::mqtt::{
    access, after_second, config, connected, device, have_mosquitto, json, nonce, now_s,
    photo_loop, start, wait_until, write_secret, Broker, Sub, BASE, DEVICE, KEY, WAIT,
};

const FLOOD: usize = 300_000;

/// Resident memory of this process in KiB (`VmRSS` of /proc/self/status).
fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Not a test of its own: the appliance's MQTT client in a process of its own for
/// `a_home_assistant_status_flood_keeps_memory_flat_and_discovery_coalesced`. Prints its RSS
/// before and after the flood and what it counted.
#[test]
fn flood_child() {
    let Ok(port) = std::env::var("PORTIER_FLOOD_PORT") else { return };
    let dir = PathBuf::from(std::env::var("PORTIER_FLOOD_DIR").unwrap());
    let client = start(&config(port.parse().unwrap(), &dir));
    assert!(connected(&client));
    assert!(wait_until(WAIT, || client.stats().discovery_rounds >= 1));
    std::thread::sleep(Duration::from_secs(1));
    let before = vm_rss_kb();
    println!("READY");
    // Until the births stop coming (3 s without one) or all arrived.
    let end = Instant::now() + Duration::from_secs(300);
    let (mut last, mut still) = (0, Instant::now());
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        let births = client.stats().ha_births;
        if births as usize >= FLOOD {
            break;
        }
        if births != last {
            (last, still) = (births, Instant::now());
        } else if births > 0 && still.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    // The round after the burst comes at most one interval after the previous one.
    std::thread::sleep(DISCOVERY_MIN_INTERVAL + Duration::from_secs(2));
    let after = vm_rss_kb();
    let stats = client.stats();
    println!("DONE {before} {after} {} {}", stats.ha_births, stats.discovery_rounds);
    client.shutdown(Duration::from_secs(10)).unwrap();
}

/// Issue 15: anyone on the broker may publish `online` on `homeassistant/status`; each used to
/// queue every discovery message again. 300,000 of them now cost at most a handful of rounds,
/// and the client's resident memory grows by less than 10 MB.
#[test]
fn a_home_assistant_status_flood_keeps_memory_flat_and_discovery_coalesced() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Enough queue at the broker that the flood reaches the client whole.
    let broker = Broker::start(dir.path(), "max_queued_messages 0\nmax_inflight_messages 100");
    let mut watcher = Sub::connect(broker.port, "ha-watcher", false);
    watcher.subscribe(&format!("homeassistant/+/{DEVICE}/+/config"));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "mqtt_hardening::flood_child", "--nocapture", "--test-threads", "1"])
        .env("PORTIER_FLOOD_PORT", broker.port.to_string())
        .env("PORTIER_FLOOD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test ... " without a newline first.
            if let Some(at) = line.find("READY").or_else(|| line.find("DONE")) {
                let _ = tx.send(line[at..].to_owned());
            }
        }
    });
    let ready = lines.recv_timeout(WAIT);
    if ready.is_err() {
        let _ = child.kill();
        panic!("the child never connected; broker log:\n{}", broker.log());
    }
    // The connection's own round has arrived: count what comes after it.
    std::thread::sleep(Duration::from_secs(1));
    watcher.drain();
    let per_round = watcher.seen.len();
    assert_eq!(per_round, 20, "one round: 21 entities minus the similarity sensor (scores off)");
    let mark = watcher.seen.len();

    let flooder = Sub::connect(broker.port, "flooder", false);
    let started = Instant::now();
    for _ in 0..FLOOD {
        flooder.publish("homeassistant/status", b"online", false);
    }
    let done = lines.recv_timeout(Duration::from_secs(400)).expect("the child finished");
    let flood_s = started.elapsed().as_secs_f64();
    let _ = child.wait();
    std::thread::sleep(Duration::from_secs(1));
    watcher.drain();
    let fields: Vec<u64> = done.split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    let (before, after, births, rounds) = (fields[0], fields[1], fields[2], fields[3]);
    let configs = watcher.seen.len() - mark;
    let growth_kb = after.saturating_sub(before);
    println!(
        "flood: {births} births received of {FLOOD} in {flood_s:.1} s; RSS {before} → {after} KiB \
         (+{growth_kb} KiB); {rounds} discovery rounds in all, {configs} config messages seen \
         after the first round"
    );
    assert!(births >= FLOOD as u64 * 9 / 10, "the flood reached the client: {births}");
    assert!(growth_kb < 10 * 1024, "RSS grew by {growth_kb} KiB");
    let flood_rounds = configs / per_round;
    assert!(configs.is_multiple_of(per_round), "whole rounds only: {configs}");
    assert!(flood_rounds >= 1, "a round after the burst, so Home Assistant hears the entities");
    // One per interval while the flood lasts, one after it.
    let allowed = (flood_s / DISCOVERY_MIN_INTERVAL.as_secs_f64()).ceil() as usize + 2;
    assert!(flood_rounds <= allowed.max(3), "{flood_rounds} rounds for a {flood_s:.1} s flood");
}

fn an_hour_behind() -> i64 {
    now_s() - 3600
}

fn command_config(port: u16, dir: &Path) -> portier::mqtt::client::MqttConfig {
    let key_file = dir.join("command.key");
    write_secret(&key_file, &[KEY, b"\n"].concat());
    let mut cfg = config(port, dir);
    cfg.command_key_file = Some(key_file);
    cfg
}

/// What the command tests share: a broker on loopback, a client configuration with the command
/// key, Home Assistant's view of the system events, and the command topic.
struct CommandRig {
    dir: tempfile::TempDir,
    _broker: Broker,
    cfg: portier::mqtt::client::MqttConfig,
    sub: Sub,
    topic: String,
}

/// The rig, or `None` when mosquitto is missing (outside CI; in CI that fails).
fn command_rig() -> Option<CommandRig> {
    if !have_mosquitto() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let cfg = command_config(broker.port, dir.path());
    let mut sub = Sub::connect(broker.port, "home-assistant", false);
    sub.subscribe(&format!("{BASE}/event/system"));
    Some(CommandRig { dir, _broker: broker, cfg, sub, topic: format!("{BASE}/command") })
}

/// The next `command_refused` system event from `from` on, its reason.
fn refusal(sub: &mut Sub, from: usize) -> Option<String> {
    let event = system_event(sub, from, |e| e["kind"] == "command_refused")?;
    event["reason"].as_str().map(str::to_owned)
}

/// The next system event from `from` on whose payload matches `pred`.
fn system_event(
    sub: &mut Sub,
    from: usize,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let topic = format!("{BASE}/event/system");
    sub.wait_from(from, WAIT, |p| p.topic == topic && pred(&json(p))).map(|p| json(&p))
}

/// Issue 15: a signed unlock recorded off the broker and sent again after a restart of
/// portier is refused (the used nonces are persisted), and with the door's clock set back an
/// hour every command is refused with a `clock_behind` event, even one signed for that clock.
#[test]
fn a_recorded_command_is_refused_after_a_restart_and_a_clock_set_back_with_an_event() {
    let Some(CommandRig { dir, _broker, cfg, mut sub, topic }) = command_rig() else { return };

    let client = start(&cfg);
    assert!(connected(&client));
    // The client subscribes to commands right after CONNACK.
    std::thread::sleep(Duration::from_millis(800));
    // From a sender whose clock runs 25 s ahead: after the restart below it is still inside
    // the window and above the floor of the start, so only the persisted nonce refuses it.
    let unlock = Verifier::sign(KEY, DEVICE, Action::Unlock, now_s() + 25, &nonce(1));
    sub.publish(&topic, &unlock, false);
    let accepted = client.commands().recv_timeout(WAIT).expect("accepted before the restart");
    assert_eq!(accepted.action, Action::Unlock);
    client.shutdown(Duration::from_secs(10)).unwrap();

    // The same bytes after a restart, well inside the window: refused.
    let client = start(&cfg);
    assert!(connected(&client));
    std::thread::sleep(Duration::from_millis(800));
    let mark = sub.seen.len();
    sub.publish(&topic, &unlock, false);
    assert_eq!(refusal(&mut sub, mark).as_deref(), Some("replayed"));
    assert!(client.commands().try_recv().is_err(), "the replay never reached the loop");
    client.shutdown(Duration::from_secs(10)).unwrap();

    // The clock set back an hour: even a command made for that clock is refused, with an event.
    let client = MqttClient::start_with_clock(&cfg, device(), "t3st", an_hour_behind).unwrap();
    assert!(connected(&client));
    std::thread::sleep(Duration::from_millis(800));
    let mark = sub.seen.len();
    let made_for_the_wrong_clock =
        Verifier::sign(KEY, DEVICE, Action::Unlock, an_hour_behind(), &nonce(2));
    sub.publish(&topic, &made_for_the_wrong_clock, false);
    assert_eq!(refusal(&mut sub, mark).as_deref(), Some("clock_behind"));
    let mark = sub.seen.len();
    sub.publish(&topic, &unlock, false);
    assert_eq!(refusal(&mut sub, mark).as_deref(), Some("clock_behind"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.commands().try_recv().is_err());
    client.shutdown(Duration::from_secs(10)).unwrap();

    // A damaged state file: put aside, an alarm, and the recorded command still refused.
    let state = dir.path().join("outbox").join(portier::mqtt::replay::STATE_NAME);
    std::fs::write(&state, b"garbage").unwrap();
    let mark = sub.seen.len();
    let client = start(&cfg);
    assert!(connected(&client));
    let alarm = sub
        .wait_from(mark, WAIT, |p| json(p)["kind"] == "state_damaged")
        .expect("state_damaged event");
    assert_eq!(json(&alarm)["file"], "command_replay");
    std::thread::sleep(Duration::from_millis(800));
    let mark = sub.seen.len();
    sub.publish(&topic, &unlock, false);
    assert_eq!(refusal(&mut sub, mark).as_deref(), Some("below_mark"));
    client.shutdown(Duration::from_secs(10)).unwrap();
}

/// Review of the MQTT command code, finding 2: a missing replay state file read as a first
/// start, so deleting it reopened the window for every command recorded before. The floor now
/// rises to the start time: whatever was signed before the start is refused (`below_mark`),
/// what is signed after it goes through.
#[test]
fn a_deleted_replay_state_does_not_reopen_the_window() {
    let Some(CommandRig { dir: _dir, _broker, cfg, mut sub, topic }) = command_rig() else {
        return;
    };

    let started = now_s();
    let client = start(&cfg);
    assert!(connected(&client));
    std::thread::sleep(Duration::from_millis(800));
    after_second(started);
    let unlock = Verifier::sign(KEY, DEVICE, Action::Unlock, now_s(), &nonce(1));
    sub.publish(&topic, &unlock, false);
    assert_eq!(client.commands().recv_timeout(WAIT).expect("accepted").action, Action::Unlock);
    client.shutdown(Duration::from_secs(10)).unwrap();

    let state = cfg.outbox_dir.join(portier::mqtt::replay::STATE_NAME);
    std::fs::remove_file(&state).unwrap();
    let started = now_s();
    let client = start(&cfg);
    assert!(connected(&client));
    assert!(state.exists(), "the state is written back at start");
    std::thread::sleep(Duration::from_millis(800));
    let mark = sub.seen.len();
    sub.publish(&topic, &unlock, false);
    assert_eq!(refusal(&mut sub, mark).as_deref(), Some("below_mark"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.commands().try_recv().is_err(), "the recorded unlock never reached the loop");
    after_second(started);
    let lock = Verifier::sign(KEY, DEVICE, Action::Lock, now_s(), &nonce(2));
    sub.publish(&topic, &lock, false);
    assert_eq!(client.commands().recv_timeout(WAIT).expect("a new command").action, Action::Lock);
    client.shutdown(Duration::from_secs(10)).unwrap();
}

/// Review of the MQTT command code, finding 3: a verified command waited in the loop's queue
/// for as long as the loop was busy and was carried out however late. When the loop takes it,
/// it is judged again: past the window it is dropped with a `stale` refusal event.
#[test]
fn a_command_that_waited_past_its_window_is_dropped_not_carried_out() {
    let Some(CommandRig { dir: _dir, _broker, cfg, mut sub, topic }) = command_rig() else {
        return;
    };
    let cfg = portier::mqtt::client::MqttConfig { command_window_s: 1, ..cfg };
    let started = now_s();
    let client = start(&cfg);
    assert!(connected(&client));
    std::thread::sleep(Duration::from_millis(800));
    after_second(started);

    // Accepted by the MQTT thread, then the loop is busy for 2.5 s.
    let mark = sub.seen.len();
    sub.publish(&topic, &Verifier::sign(KEY, DEVICE, Action::Unlock, now_s(), &nonce(1)), false);
    assert!(wait_until(WAIT, || client.stats().commands_accepted == 1), "accepted");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(client.next_command(), None, "the unlock is not carried out 2.5 s late");
    let event = system_event(&mut sub, mark, |e| e["kind"] == "command_refused").expect("event");
    assert_eq!(event["reason"], "stale", "{event}");
    assert!(event["detail"].as_str().unwrap().starts_with("unlock: stale command"), "{event}");
    let stats = client.stats();
    assert_eq!(
        (stats.commands_accepted, stats.commands_refused, stats.commands_stale),
        (0, 1, 1),
        "{stats:?}"
    );

    // One the loop takes in time is carried out.
    sub.publish(&topic, &Verifier::sign(KEY, DEVICE, Action::Lock, now_s(), &nonce(2)), false);
    let mut taken = None;
    assert!(wait_until(WAIT, || {
        taken = client.next_command();
        taken.is_some()
    }));
    assert_eq!(taken.map(|c| c.action), Some(Action::Lock));
    client.shutdown(Duration::from_secs(10)).unwrap();
}

fn an_hour_ahead() -> i64 {
    now_s() + 3600
}

/// Review of the MQTT command code, finding 1: when the outbox folder could not be used, the
/// outbox fell back to the temporary folder and the command replay state went with it, i.e.
/// started empty there: old signed commands passed again. The replay state now stays in the
/// configured folder whatever the outbox does; where it cannot be written every command is
/// refused (`state_unwritable`) with an alarm, never run on a fresh state.
///
/// One test for both cases: the fallback folder is per process, so two tests here must not use
/// it at once.
#[test]
fn the_replay_state_stays_in_outbox_dir_when_the_outbox_falls_back() {
    let Some(CommandRig { dir, _broker, cfg, mut sub, topic }) = command_rig() else { return };
    let fallback = std::env::temp_dir().join(format!("portier-outbox-{}", std::process::id()));

    // A run whose clock is an hour ahead accepts a command: its clock mark is an hour ahead.
    let started = now_s();
    let client = MqttClient::start_with_clock(&cfg, device(), "t3st", an_hour_ahead).unwrap();
    assert!(connected(&client));
    std::thread::sleep(Duration::from_millis(800));
    after_second(started);
    sub.publish(
        &topic,
        &Verifier::sign(KEY, DEVICE, Action::Lock, an_hour_ahead(), &nonce(1)),
        false,
    );
    assert_eq!(client.commands().recv_timeout(WAIT).expect("accepted").action, Action::Lock);
    client.shutdown(Duration::from_secs(10)).unwrap();

    // The outbox folder cannot hold an outbox now (its log is a folder): events fall back to
    // the temporary folder, but the replay state is still read from `outbox_dir`: with the
    // clock right again, every command is refused (`clock_behind`) rather than accepted by an
    // empty state.
    let log = cfg.outbox_dir.join("outbox.log");
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();
    let mark = sub.seen.len();
    let client = start(&cfg);
    assert!(connected(&client));
    let alarm =
        system_event(&mut sub, mark, |e| e["kind"] == "state_damaged").expect("the outbox alarm");
    assert_eq!(alarm["file"], "outbox", "{alarm}");
    assert!(alarm["detail"].as_str().unwrap().contains(&*fallback.to_string_lossy()), "{alarm}");
    std::thread::sleep(Duration::from_millis(800));
    let mark = sub.seen.len();
    sub.publish(&topic, &Verifier::sign(KEY, DEVICE, Action::Unlock, now_s(), &nonce(2)), false);
    assert_eq!(refusal(&mut sub, mark).as_deref(), Some("clock_behind"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.commands().try_recv().is_err(), "nothing reached the loop");
    client.shutdown(Duration::from_secs(10)).unwrap();
    assert!(!fallback.join(portier::mqtt::replay::STATE_NAME).exists(), "no state in {fallback:?}");
    let kept = std::fs::read(cfg.outbox_dir.join(portier::mqtt::replay::STATE_NAME)).unwrap();
    let kept = portier::mqtt::replay::decode(&kept).unwrap();
    assert!(kept.clock_mark.is_some_and(|m| m > now_s() + 3000), "{kept:?}");

    // A configured folder whose path runs through a file: nothing can be read or written
    // there. The state is damage (an alarm), cannot be written (an alarm), and every valid
    // command is refused as `state_unwritable`.
    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, b"not a folder").unwrap();
    let cfg = portier::mqtt::client::MqttConfig { outbox_dir: blocked.join("outbox"), ..cfg };
    let mark = sub.seen.len();
    let client = start(&cfg);
    assert!(connected(&client));
    let damaged = system_event(&mut sub, mark, |e| {
        e["kind"] == "state_damaged" && e["file"] == "command_replay"
    })
    .expect("state_damaged for the replay state");
    assert!(damaged["detail"].as_str().unwrap().contains("cannot read"), "{damaged}");
    let unwritable = system_event(&mut sub, mark, |e| e["kind"] == "state_unwritable")
        .expect("state_unwritable");
    assert_eq!(unwritable["file"], "command_replay", "{unwritable}");
    // Without a modification time the damage floor is the start plus the window: a command
    // signed a window ahead passes every other check once the clock has moved on a second.
    std::thread::sleep(Duration::from_millis(1500));
    let mark = sub.seen.len();
    let ahead = now_s() + i64::from(cfg.command_window_s);
    sub.publish(&topic, &Verifier::sign(KEY, DEVICE, Action::Unlock, ahead, &nonce(3)), false);
    assert_eq!(refusal(&mut sub, mark).as_deref(), Some("state_unwritable"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.commands().try_recv().is_err(), "nothing reached the loop");
    client.shutdown(Duration::from_secs(10)).unwrap();
    assert!(!fallback.join(portier::mqtt::replay::STATE_NAME).exists(), "no state in {fallback:?}");
    let _ = std::fs::remove_dir_all(&fallback);
}

fn is_access(p: &Publish) -> bool {
    p.topic == format!("{BASE}/event/access")
}

/// Issue 15: the MQTT thread dies (an injected panic): it is restarted with back-off, the
/// events sent meanwhile wait and all arrive, the restart is published, and the health says
/// so while it lasts.
#[test]
fn a_panicking_mqtt_thread_is_restarted_and_loses_no_event() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let mut sub = Sub::connect(broker.port, "home-assistant", false);
    sub.subscribe(&format!("{BASE}/event/#"));
    let client = start(&config(broker.port, dir.path()));
    assert!(connected(&client));
    assert_eq!(client.stats().health, MqttHealth::Up);
    for track in 0..20 {
        assert!(client.send(Message::Access(access(AccessKind::Unknown, track))));
    }
    client.inject_panic();
    assert!(wait_until(WAIT, || client.stats().restarts == 1), "{:?}", client.stats());
    for track in 20..40 {
        assert!(client.send(Message::Access(access(AccessKind::Unknown, track))));
    }
    let restarted =
        sub.wait(WAIT, |p| json(p)["kind"] == "mqtt_restarted").expect("mqtt_restarted event");
    assert_eq!(json(&restarted)["restarts"], 1);
    assert!(json(&restarted)["reason"].as_str().unwrap().contains("injected"));
    let all = wait_until(WAIT, || {
        sub.drain();
        let tracks: std::collections::HashSet<u64> = sub
            .seen
            .iter()
            .filter(|p| is_access(p))
            .filter_map(|p| json(p)["track_id"].as_u64())
            .collect();
        tracks.len() == 40
    });
    assert!(all, "every event arrived: {:?}", client.stats());
    assert!(wait_until(WAIT, || client.stats().health == MqttHealth::Up));
    let stats = client.stats();
    assert_eq!((stats.channel_full, stats.spill_dropped), (0, 0), "{stats:?}");
    // Scores stay off the broker unless `publish_scores = true`.
    let event = sub.seen.iter().find(|p| is_access(p)).unwrap();
    assert!(json(event)["similarity"].is_null(), "{}", json(event));
    client.shutdown(Duration::from_secs(10)).unwrap();
}

/// The door state handed over by the shell is published retained (lock, contact, alarm) and
/// again after a reconnect.
#[test]
fn door_state_is_retained_and_republished_after_a_reconnect() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "");
    let client = start(&config(broker.port, dir.path()));
    assert!(connected(&client));
    client.send(Message::DoorState(DoorState {
        locked: false,
        open: true,
        alarm: Some(Alarm::Forced),
    }));
    let expect = |sub: &mut Sub| {
        for (topic, payload) in
            [("lock/state", "UNLOCKED"), ("door/contact", "ON"), ("alarm/state", "forced")]
        {
            let topic = format!("{BASE}/{topic}");
            let p = sub
                .wait(WAIT, |p| p.topic == topic && p.payload == payload.as_bytes())
                .unwrap_or_else(|| panic!("{topic} {payload}"));
            assert!(p.retain || sub.seen.len() > 1);
        }
    };
    let mut late = Sub::connect(broker.port, "late", false);
    late.subscribe(&format!("{BASE}/#"));
    expect(&mut late);
    // The broker loses everything (no persistence of retained messages survives a wipe).
    broker.stop();
    let _ = std::fs::remove_file(dir.path().join("mosquitto.db"));
    broker.restart();
    assert!(wait_until(WAIT, || client.stats().connects >= 2));
    let mut after = Sub::connect(broker.port, "after", false);
    after.subscribe(&format!("{BASE}/#"));
    expect(&mut after);
    client.shutdown(Duration::from_secs(10)).unwrap();
}

/// Review of the MQTT command code, finding 7: when the relock guard secured the relay of a
/// stalled loop, the door's state machine still said unlocked, so the retained lock state
/// stayed `UNLOCKED` until the loop's own clock reached the pulse's end. Now the guard's relock
/// is the door's state at the loop's next tick (retained `LOCKED`) and its `locked` door event
/// follows at the next poll, with the loop's clock still inside the pulse.
#[test]
fn the_relock_guards_relock_is_published_at_the_next_tick() {
    use std::sync::atomic::Ordering;

    use portier::app::{App, RemoteCommand};
    use portier::door::relock::{RelockGuard, GUARD_MARGIN};
    use portier::shell::Shell;

    if !have_mosquitto() {
        return;
    }
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let mut sub = Sub::connect(broker.port, "home-assistant", false);
    sub.subscribe(&format!("{BASE}/#"));
    let lock_topic = format!("{BASE}/lock/state");
    let lock = |p: &Publish, state: &[u8]| p.topic == lock_topic && &p.payload[..] == state;

    let client = start(&config(broker.port, dir.path()));
    assert!(connected(&client));
    // A 300 ms pulse, the door behind a relock guard as `portier run` has it.
    let (mut app, mut shell, level) =
        photo_loop(&a, dir.path(), Duration::from_millis(300), false, client, |door, emergency| {
            Box::new(RelockGuard::new(Box::new(door), emergency, GUARD_MARGIN).unwrap())
        });
    let secure = level.load(Ordering::SeqCst);
    // One turn of the loop at `ms` on its own clock, as `App::run` makes it.
    let turn = |app: &mut App, shell: &mut Shell, ms: u64| {
        let now = Duration::from_millis(ms);
        app.step(now).unwrap();
        for event in app.drain_events() {
            portier::app::Hooks::event(shell, &event);
        }
        portier::app::Hooks::tick(shell, app, now);
    };

    app.apply_command(RemoteCommand::Unlock, Duration::ZERO);
    turn(&mut app, &mut shell, 0);
    assert_ne!(level.load(Ordering::SeqCst), secure, "energised");
    assert!(sub.wait(WAIT, |p| lock(p, b"UNLOCKED")).is_some(), "UNLOCKED published");
    // The loop stalls past the pulse's end plus the margin: the guard secures the relay.
    assert!(wait_until(WAIT, || level.load(Ordering::SeqCst) == secure), "the guard relocked");
    // The loop's next turn, its clock 100 ms into the 300 ms pulse: LOCKED, and the event.
    let mark = sub.seen.len();
    turn(&mut app, &mut shell, 100);
    assert!(app.door_state().locked);
    let locked = sub.wait_from(mark, Duration::from_secs(5), |p| lock(p, b"LOCKED"));
    assert!(locked.is_some(), "LOCKED published at the next tick");
    let event = sub.wait_from(mark, Duration::from_secs(5), |p| {
        p.topic == format!("{BASE}/event/door") && json(p)["kind"] == "locked"
    });
    assert!(event.is_some(), "the locked door event");
    // What a subscriber arriving now gets: LOCKED, retained.
    let mut late = Sub::connect(broker.port, "late", false);
    late.subscribe(&lock_topic);
    let retained = late.wait(WAIT, |p| p.topic == lock_topic).unwrap();
    assert!(retained.retain && &retained.payload[..] == b"LOCKED", "{retained:?}");
    shell.shutdown(Duration::from_secs(3));
}

/// A `portier run` process on the Hamilton stream with its stderr lines read on a thread.
struct Run {
    child: Child,
    spawned: Instant,
    lines: mpsc::Receiver<(Instant, String)>,
    log: Vec<(Instant, String)>,
}

impl Run {
    fn spawn(config: &Path, assets: &Path) -> Run {
        let mut child = crate::appliance::portier_run(config, assets, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Run { child, spawned: Instant::now(), lines, log: Vec::new() }
    }

    /// Reads lines until one satisfies `pred` (its arrival time) or `timeout` passes.
    fn until(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<Instant> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let (t, line) = self.lines.recv_timeout(left).ok()?;
            let hit = pred(&line);
            self.log.push((t, line));
            if hit {
                return Some(t);
            }
        }
    }

    fn text(&self) -> String {
        self.log.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }
}

/// The laptop config with MQTT to `port` and the outbox in `dir/outbox`.
fn binary_config(dir: &Path, assets: &Path, port: u16) -> PathBuf {
    let config = cli_config(dir, assets);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\ndevice_id = \"{DEVICE}\"\n\
         keep_alive_s = 5\noutbox_dir = \"{}\"\n",
        dir.join("outbox").display()
    ));
    std::fs::write(&config, text).unwrap();
    config
}

/// Issue 15: a garbage `outbox.log` used to make `portier run` exit 69 (and systemd
/// restart-loop into its start limit). Now the log is kept aside, a fresh outbox started, an
/// alarm published, and the door goes on granting.
#[test]
fn a_garbage_outbox_keeps_portier_run_granting_and_raises_an_alarm() {
    if !have_mosquitto() {
        return;
    }
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker").tap_mkdir(), "");
    let config = binary_config(dir.path(), &a, broker.port);
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::write(outbox.join("outbox.log"), b"GARBAGE HEADER, not an outbox\n\x00\x01\x02")
        .unwrap();
    let mut sub = Sub::connect(broker.port, "home-assistant", false);
    sub.subscribe(&format!("{BASE}/event/#"));

    let mut run = Run::spawn(&config, &a);
    let granted = run.until(Duration::from_secs(120), |l| l.contains("] granted "));
    let mut out = String::new();
    if granted.is_none() {
        let _ = run.child.kill();
    }
    let status = run.child.wait().unwrap();
    while let Ok(l) = run.lines.recv_timeout(Duration::from_secs(5)) {
        run.log.push(l);
    }
    run.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let log = run.text();
    assert!(granted.is_some(), "a grant with a damaged outbox\n{log}");
    assert!(status.success(), "ran to the end of the replay: {status:?}\n{log}");
    assert!(out.contains("granted: Lin-Manuel Miranda"), "{out}");
    let alarm = sub
        .wait(WAIT, |p| json(p)["kind"] == "state_damaged")
        .expect("state_damaged event published");
    assert_eq!(json(&alarm)["file"], "outbox");
    let kept = PathBuf::from(json(&alarm)["kept_as"].as_str().unwrap());
    assert!(kept.starts_with(&outbox), "{kept:?}");
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        b"GARBAGE HEADER, not an outbox\n\x00\x01\x02",
        "kept for inspection"
    );
    assert!(
        sub.wait(WAIT, |p| is_access(p) && json(p)["kind"] == "granted").is_some(),
        "the grant was published"
    );
    assert!(log.contains("not an outbox file"), "{log}");
}

/// Issue 15: a run killed mid-pulse leaves `UNLOCKED` retained at the broker; the next run
/// replaces it with `LOCKED` (the relay's real state after the restart) within 2 s of
/// reaching the broker.
#[test]
fn a_retained_unlocked_from_a_killed_run_is_replaced_by_locked_at_restart() {
    if !have_mosquitto() {
        return;
    }
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker").tap_mkdir(), "");
    let config = binary_config(dir.path(), &a, broker.port);
    let mut sub = Sub::connect(broker.port, "home-assistant", false);
    let lock_topic = format!("{BASE}/lock/state");
    sub.subscribe(&lock_topic);

    let mut first = Run::spawn(&config, &a);
    assert!(first.until(Duration::from_secs(120), |l| l.contains("relay energised")).is_some());
    assert!(sub.wait(WAIT, |p| p.topic == lock_topic && &p.payload[..] == b"UNLOCKED").is_some());
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // What Home Assistant sees now: UNLOCKED, retained.
    let mut ha = Sub::connect(broker.port, "home-assistant-2", false);
    ha.subscribe(&lock_topic);
    let retained = ha.wait(WAIT, |p| p.topic == lock_topic).unwrap();
    assert!(retained.retain && &retained.payload[..] == b"UNLOCKED", "{retained:?}");

    let mark = ha.seen.len();
    let mut second = Run::spawn(&config, &a);
    let connected_at = second
        .until(Duration::from_secs(120), |l| l.contains("mqtt: connected"))
        .unwrap_or_else(|| panic!("the restart reached the broker\n{}", second.text()));
    let locked = ha.wait_from(mark, WAIT, |p| p.topic == lock_topic && &p.payload[..] == b"LOCKED");
    let seen_at = Instant::now();
    let _ = second.child.kill();
    let _ = second.child.wait();
    assert!(locked.is_some(), "LOCKED replaced the stale UNLOCKED\n{}", second.text());
    let after = seen_at.saturating_duration_since(connected_at);
    println!(
        "restart: LOCKED at the broker {} ms after connecting, {} ms after the spawn",
        after.as_millis(),
        seen_at.duration_since(second.spawned).as_millis()
    );
    assert!(after < Duration::from_secs(2), "{after:?}");
    // A late subscriber gets LOCKED retained.
    let mut late = Sub::connect(broker.port, "late", false);
    late.subscribe(&lock_topic);
    let p = late.wait(WAIT, |p| p.topic == lock_topic).unwrap();
    assert_eq!(&p.payload[..], b"LOCKED");
}

trait MkDir {
    fn tap_mkdir(self) -> Self;
}

impl MkDir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// `portier check-config` on the config text `toml` (written to `dir/name` with `mode`).
fn check_config(dir: &Path, name: &str, toml: &str, mode: u32) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_portier")).arg("check-config").arg(&path).output().unwrap()
}

/// Issue 15: the shipped Pi config speaks TLS with a login and passes `check-config` where its
/// CA and password files do not exist (CI, qemu: files are read at start, not checked here);
/// a password without TLS is refused naming `mqtt.tls` unless explicitly allowed; a password
/// inside a config others can read is refused naming `mqtt.password`.
#[test]
fn check_config_wants_tls_for_a_password_and_the_pi_config_has_both() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pi = std::fs::read_to_string(root.join("board/pi5-hailo8.toml")).unwrap();
    let config: toml::Value = toml::from_str(&pi).unwrap();
    let mqtt = &config["mqtt"];
    assert_eq!(mqtt["port"].as_integer(), Some(8883));
    assert!(mqtt["tls"]["ca_file"].is_str() && mqtt["password_file"].is_str());
    assert!(mqtt.get("allow_plaintext_password").is_none());
    let out = Command::new(env!("CARGO_BIN_EXE_portier"))
        .arg("check-config")
        .arg(root.join("board/pi5-hailo8.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().unwrap();
    let plain = pi.replace("[mqtt.tls]", "").replace("ca_file = ", "# ca_file = ");
    let out = check_config(dir.path(), "plain.toml", &plain, 0o644);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("`mqtt.tls`"), "{err}");
    let allowed = plain.replace("[mqtt]\n", "[mqtt]\nallow_plaintext_password = true\n");
    let out = check_config(dir.path(), "allowed.toml", &allowed, 0o644);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let inline = pi.replace("password_file = ", "password = \"hunter2\"\n# password_file = ");
    let out = check_config(dir.path(), "inline.toml", &inline, 0o644);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("`mqtt.password`") && err.contains("chmod 600"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let out = check_config(dir.path(), "inline.toml", &inline, 0o600);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
