//! Home Assistant MQTT discovery: the retained config messages that make the appliance appear in
//! Home Assistant as one device: the door's lock, access and system events, the last person
//! granted and the last access event, the door contact and alarms (forced, held open), the
//! code lock-out (tamper), health (NPU, camera, outbox, frames, backend), the last refused
//! command, and the entities of live enrolment (name, one-time code, enrol and remove buttons),
//! all reading and writing the topics of [`super::events::Topics`].
//!
//! Publish every [`DiscoveryMessage`] retained on connect, and again whenever Home Assistant's
//! birth message (`online` on [`status_topic`]) arrives, since a restarted Home Assistant may have
//! lost them. Never publish an empty payload to a config topic by mistake: an empty retained
//! config deletes the entity.
//!
//! # The lock card and one-time codes
//!
//! Home Assistant's templates cannot compute an HMAC, so its lock card cannot send the signed
//! commands automations use (`super::command`). The lock entity has a `code_format`
//! ([`super::otp::HA_CODE_FORMAT`]: six digits or nothing), so the card asks for a code, and a
//! `command_template` ([`LOCK_COMMAND_TEMPLATE`]) that sends `{"ha":"UNLOCK","code":"123456"}`.
//! LOCK needs no code (locking is always safe); UNLOCK needs the current one-time code of the
//! user's authenticator app (`super::otp`: each code opens once, wrong codes lock out). A
//! refusal shows on the "Last refused command" sensor and as a `command_refused` system event.
//! The entity is not optimistic: its state is the relay's, published by the door. `retain` is
//! false so that neither Home Assistant nor the broker keeps a command to replay it.
//!
//! The enrol and remove buttons take their code from the one-time code text entity (password
//! mode, never retained, used once); the enrol button the name from the name text entity.
//!
//! # Entity ids
//!
//! Each entity carries `default_entity_id` (`lock.<device_id>_door` with the id lowercased and
//! `-` made `_`), not `object_id`: Home Assistant 2025.10 deprecated `object_id` in favour of
//! `default_entity_id`, and 2026.4 stopped honouring it. Older Home Assistant versions drop the
//! unknown key and derive the entity id from the device and entity names instead.
//!
//! Must not: do I/O, or describe a topic or payload that [`super::events`] does not define.

use serde_json::{json, Map, Value};

use super::events::{self, AccessKind, Backend, LockState, SystemEvent, Topics};
use super::otp;

/// Home Assistant's default discovery prefix.
pub const DEFAULT_PREFIX: &str = "homeassistant";
/// The device model shown in Home Assistant.
pub const DEFAULT_MODEL: &str = "portier on Raspberry Pi 5 + Hailo-8";
/// Manufacturer in the device block, and name in the origin block.
pub const MANUFACTURER: &str = "portier";
/// Home Assistant's birth (and will) payloads on [`status_topic`].
pub const HA_STATUS_ONLINE: &str = "online";
/// Longest accepted device id, in characters.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A device description or discovery prefix that Home Assistant or MQTT would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The device id is empty, too long, or has a character outside `[A-Za-z0-9_-]`.
    #[error(
        "device id {0:?}: must be 1 to {MAX_DEVICE_ID_LEN} characters from A-Z, a-z, 0-9, '_' \
         and '-'"
    )]
    DeviceId(String),
    /// The device name is empty.
    #[error("device name must not be empty")]
    EmptyName,
    /// The configuration URL is not an `http://`, `https://` or `homeassistant://` URL.
    #[error("configuration URL {0:?}: must start with http://, https:// or homeassistant://")]
    ConfigurationUrl(String),
    /// The discovery prefix is not a valid topic base.
    #[error("discovery prefix: {0}")]
    Prefix(String),
}

/// The device every entity belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `[a-zA-Z0-9_-]+`: the discovery topic level, the `identifiers` entry, and the prefix of
    /// every `unique_id`. Validated by [`DeviceInfo::new`] and [`DeviceInfo::validate`].
    pub device_id: String,
    /// Device name shown in Home Assistant ("Front door").
    pub name: String,
    /// The portier version.
    pub sw_version: String,
    /// Hardware description, normally [`DEFAULT_MODEL`].
    pub model: String,
    /// Link from Home Assistant's device page (the appliance's web page), if any.
    pub configuration_url: Option<String>,
    /// The area Home Assistant suggests putting the device in, if any.
    pub suggested_area: Option<String>,
}

impl DeviceInfo {
    /// A validated device description.
    pub fn new(
        device_id: &str,
        name: &str,
        sw_version: &str,
        model: &str,
        configuration_url: Option<&str>,
    ) -> Result<DeviceInfo, DiscoveryError> {
        let device = DeviceInfo {
            device_id: device_id.to_owned(),
            name: name.to_owned(),
            sw_version: sw_version.to_owned(),
            model: model.to_owned(),
            configuration_url: configuration_url.map(str::to_owned),
            suggested_area: None,
        };
        device.validate()?;
        Ok(device)
    }

    /// The same device, suggested for `area` in Home Assistant.
    pub fn with_area(mut self, area: Option<&str>) -> DeviceInfo {
        self.suggested_area = area.map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned);
        self
    }

    /// Checks the device id, the name and the configuration URL.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        if !valid_device_id(&self.device_id) {
            return Err(DiscoveryError::DeviceId(self.device_id.clone()));
        }
        if self.name.trim().is_empty() {
            return Err(DiscoveryError::EmptyName);
        }
        if let Some(url) = &self.configuration_url {
            let rest = ["http://", "https://", "homeassistant://"]
                .iter()
                .find_map(|scheme| url.strip_prefix(scheme));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(DiscoveryError::ConfigurationUrl(url.clone()));
            }
        }
        Ok(())
    }
}

/// The hardware shown in Home Assistant: the device tree's model (`/proc/device-tree/model`,
/// e.g. "Raspberry Pi 5 Model B Rev 1.0", NUL-terminated), or the machine's architecture when
/// there is none, with "+ Hailo-8" when an NPU is configured.
pub fn board_model(device_tree_model: Option<&[u8]>, npu: bool) -> String {
    let board = device_tree_model
        .map(|m| String::from_utf8_lossy(m).trim_end_matches('\0').trim().to_owned())
        .filter(|m| !m.is_empty() && m.len() <= 64 && !m.contains(char::is_control))
        .unwrap_or_else(|| format!("{} Linux machine", std::env::consts::ARCH));
    if npu {
        format!("{board} + Hailo-8")
    } else {
        board
    }
}

/// Whether `id` is 1 to [`MAX_DEVICE_ID_LEN`] characters from `[A-Za-z0-9_-]`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a discovery prefix with the same rules as a topic base
/// ([`events::validate_base`]).
pub fn check_prefix(prefix: &str) -> Result<(), DiscoveryError> {
    events::validate_base(prefix).map_err(DiscoveryError::Prefix)
}

/// One retained config message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryMessage {
    /// `<prefix>/<component>/<device_id>/<object_id>/config`.
    pub topic: String,
    /// The JSON config.
    pub payload: Vec<u8>,
}

/// Topic to subscribe for Home Assistant's birth message ([`HA_STATUS_ONLINE`]).
pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// Whether a message on [`status_topic`] is Home Assistant's birth message, after which the
/// discovery messages are published again.
pub fn is_ha_birth(payload: &[u8]) -> bool {
    payload == HA_STATUS_ONLINE.as_bytes()
}

/// The Home Assistant `event_type` template of the access event entity: our payload carries the
/// type in `kind`; Home Assistant wants a JSON object with `event_type`, and keeps the other
/// keys as event attributes (every field of the payload but the ids and the liveness model).
pub const ACCESS_VALUE_TEMPLATE: &str = "{{ {'event_type': value_json.kind, 'id': value_json.id, \
     'person': value_json.person, 'similarity': value_json.similarity, \
     'second_similarity': value_json.second_similarity, 'backend': value_json.backend, \
     'eye_distance_px': value_json.eye_distance_px, 'embedding_norm': value_json.embedding_norm, \
     'liveness': value_json.liveness} | to_json }}";

/// The same for the system event entity; a kind's own fields (person, reason, detail, people,
/// version) are attributes when it has them.
pub const SYSTEM_VALUE_TEMPLATE: &str = "{{ {'event_type': value_json.kind, 'id': value_json.id, \
     'person': value_json.person | default(none), 'reason': value_json.reason | default(none), \
     'detail': value_json.detail | default(none), 'people': value_json.people | default(none), \
     'version': value_json.version | default(none)} | to_json }}";

/// The lock's `command_template`: Home Assistant fills in `value` (`LOCK`/`UNLOCK`) and the
/// code typed into the lock card (`null` when none), which `code_format` has already checked.
pub const LOCK_COMMAND_TEMPLATE: &str = "{{ {'ha': value, 'code': code} | to_json }}";

/// What Home Assistant's buttons publish when pressed.
pub const BUTTON_PRESS: &str = "PRESS";

/// All config messages for this device, to be published retained on connect and again whenever
/// `<prefix>/status` says "online".
///
/// `prefix` should pass [`check_prefix`] (the configuration checks it) and `device` should come
/// from [`DeviceInfo::new`]. Should a hand-built `device` carry an invalid id anyway, characters
/// outside `[A-Za-z0-9_-]` are replaced by `_` (an empty id becomes `portier`) so that no topic
/// level is ever malformed.
pub fn discovery_messages(
    prefix: &str,
    topics: &Topics,
    device: &DeviceInfo,
) -> Vec<DiscoveryMessage> {
    let id = sanitize_device_id(&device.device_id);
    let entity_slug = id.to_ascii_lowercase().replace('-', "_");
    let device_block = device_block(device, &id);
    let origin = json!({ "name": MANUFACTURER, "sw_version": device.sw_version });

    let alarm_is = |alarm: &str| {
        format!(
            "{{{{ '{on}' if value == '{alarm}' else '{off}' }}}}",
            on = events::BINARY_ON,
            off = events::BINARY_OFF
        )
    };
    let entities: Vec<(&str, &str, &str, Value)> = vec![
        (
            "lock",
            "door",
            "Door",
            json!({
                "state_topic": topics.lock_state(),
                "command_topic": topics.lock_command(),
                "payload_lock": "LOCK",
                "payload_unlock": "UNLOCK",
                "state_locked": LockState::Locked.payload(),
                "state_unlocked": LockState::Unlocked.payload(),
                "state_jammed": LockState::Jammed.payload(),
                "state_locking": LockState::Locking.payload(),
                "state_unlocking": LockState::Unlocking.payload(),
                "code_format": otp::HA_CODE_FORMAT,
                "command_template": LOCK_COMMAND_TEMPLATE,
                "optimistic": false,
                "retain": false,
            }),
        ),
        (
            "event",
            "access",
            "Access",
            json!({
                "state_topic": topics.access(),
                "event_types": AccessKind::ALL.map(AccessKind::as_str),
                "value_template": ACCESS_VALUE_TEMPLATE,
            }),
        ),
        (
            "event",
            "system",
            "System",
            json!({
                "state_topic": topics.system(),
                "event_types": SystemEvent::KINDS,
                "value_template": SYSTEM_VALUE_TEMPLATE,
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "last_person",
            "Last person granted",
            json!({ "state_topic": topics.last_person(), "icon": "mdi:account-check" }),
        ),
        (
            "sensor",
            "similarity",
            "Similarity",
            json!({
                "state_topic": topics.last_similarity(),
                "state_class": "measurement",
                "suggested_display_precision": 3,
            }),
        ),
        (
            "sensor",
            "last_event",
            "Last access event",
            json!({
                "state_topic": topics.last_event(),
                "device_class": "enum",
                "options": AccessKind::ALL.map(AccessKind::as_str),
            }),
        ),
        (
            "sensor",
            "backend",
            "Recognition backend",
            json!({
                "state_topic": topics.last_backend(),
                "device_class": "enum",
                "options": [Backend::Cpu.as_str(), Backend::Npu.as_str()],
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "frames",
            "Frames",
            json!({
                "state_topic": topics.counters(),
                "value_template": "{{ value_json.frames }}",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "alarm",
            "Door alarm",
            json!({
                "state_topic": topics.alarm_state(),
                "device_class": "enum",
                "options": events::ALARM_PAYLOADS,
            }),
        ),
        (
            "binary_sensor",
            "door_forced",
            "Door forced",
            json!({
                "state_topic": topics.alarm_state(),
                "value_template": alarm_is(events::ALARM_PAYLOADS[2]),
                "device_class": "problem",
            }),
        ),
        (
            "binary_sensor",
            "held_open",
            "Door held open",
            json!({
                "state_topic": topics.alarm_state(),
                "value_template": alarm_is(events::ALARM_PAYLOADS[1]),
                "device_class": "problem",
            }),
        ),
        (
            "binary_sensor",
            "tamper",
            "Code lock-out",
            json!({ "state_topic": topics.tamper(), "device_class": "tamper" }),
        ),
        (
            "sensor",
            "last_refusal",
            "Last refused command",
            json!({ "state_topic": topics.last_refusal(), "icon": "mdi:shield-alert" }),
        ),
        (
            "sensor",
            "npu",
            "NPU",
            json!({
                "state_topic": topics.npu_state(),
                "device_class": "enum",
                "options": events::NPU_PAYLOADS,
                "entity_category": "diagnostic",
            }),
        ),
        (
            "binary_sensor",
            "camera",
            "Camera",
            json!({
                "state_topic": topics.camera_problem(),
                "device_class": "problem",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "outbox",
            "MQTT outbox",
            json!({
                "state_topic": topics.outbox_pending(),
                "state_class": "measurement",
                "unit_of_measurement": "events",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "binary_sensor",
            "door_contact",
            "Door contact",
            json!({
                "state_topic": topics.contact_state(),
                "device_class": "door",
                "payload_on": events::CONTACT_OPEN,
                "payload_off": events::CONTACT_CLOSED,
            }),
        ),
        (
            "text",
            "enrol_name",
            "Enrol name",
            json!({
                "command_topic": topics.enrol_name(),
                "state_topic": topics.enrol_name(),
                "retain": true,
                "min": 0,
                "max": events::MAX_ENROL_NAME,
                "mode": "text",
                "entity_category": "config",
            }),
        ),
        (
            "text",
            "code",
            "One-time code",
            json!({
                "command_topic": topics.enrol_code(),
                "state_topic": topics.enrol_code_state(),
                "retain": false,
                "min": 0,
                "max": otp::DIGITS,
                "pattern": otp::HA_CODE_FORMAT,
                "mode": "password",
                "entity_category": "config",
            }),
        ),
        (
            "button",
            "enrol",
            "Enrol person at the door",
            json!({
                "command_topic": topics.enrol_start(),
                "payload_press": BUTTON_PRESS,
                "retain": false,
                "icon": "mdi:account-plus",
            }),
        ),
        (
            "button",
            "remove_last",
            "Remove last enrolled person",
            json!({
                "command_topic": topics.enrol_remove_last(),
                "payload_press": BUTTON_PRESS,
                "retain": false,
                "icon": "mdi:account-remove",
            }),
        ),
    ];

    entities
        .into_iter()
        .map(|(component, object_id, name, specific)| {
            let mut config = Map::new();
            config.insert("name".into(), name.into());
            config.insert("unique_id".into(), format!("{id}_{object_id}").into());
            config.insert(
                "default_entity_id".into(),
                format!("{component}.{entity_slug}_{object_id}").into(),
            );
            config.insert("device".into(), device_block.clone());
            config.insert("origin".into(), origin.clone());
            config.insert("availability_topic".into(), topics.availability().into());
            config.insert("payload_available".into(), events::AVAILABILITY_ONLINE.into());
            config.insert("payload_not_available".into(), events::AVAILABILITY_OFFLINE.into());
            config.insert("qos".into(), 1.into());
            if let Value::Object(specific) = specific {
                config.extend(specific);
            }
            DiscoveryMessage {
                topic: format!("{prefix}/{component}/{id}/{object_id}/config"),
                payload: Value::Object(config).to_string().into_bytes(),
            }
        })
        .collect()
}

fn sanitize_device_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .take(MAX_DEVICE_ID_LEN)
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if clean.is_empty() {
        MANUFACTURER.to_owned()
    } else {
        clean
    }
}

fn device_block(device: &DeviceInfo, id: &str) -> Value {
    let mut block = Map::new();
    block.insert("identifiers".into(), json!([id]));
    block.insert("name".into(), device.name.clone().into());
    block.insert("manufacturer".into(), MANUFACTURER.into());
    block.insert("model".into(), device.model.clone().into());
    block.insert("sw_version".into(), device.sw_version.clone().into());
    if let Some(url) = &device.configuration_url {
        block.insert("configuration_url".into(), url.clone().into());
    }
    if let Some(area) = &device.suggested_area {
        block.insert("suggested_area".into(), area.clone().into());
    }
    Value::Object(block)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    fn device() -> DeviceInfo {
        DeviceInfo::new(
            "frontdoor",
            "Front door",
            "0.1.0",
            DEFAULT_MODEL,
            Some("http://portier.local/"),
        )
        .unwrap()
    }

    fn topics() -> Topics {
        Topics::new("portier/frontdoor").unwrap()
    }

    /// (component, object id) -> parsed config.
    fn configs(device: &DeviceInfo) -> BTreeMap<(String, String), Map<String, Value>> {
        discovery_messages(DEFAULT_PREFIX, &topics(), device)
            .into_iter()
            .map(|m| {
                let parts: Vec<&str> = m.topic.split('/').collect();
                assert_eq!(parts.len(), 5, "{}", m.topic);
                let Value::Object(config) = serde_json::from_slice(&m.payload).unwrap() else {
                    panic!("{} is not a JSON object", m.topic)
                };
                ((parts[1].to_owned(), parts[3].to_owned()), config)
            })
            .collect()
    }

    #[test]
    fn every_message_is_a_json_object() {
        for m in discovery_messages(DEFAULT_PREFIX, &topics(), &device()) {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            assert!(v.is_object(), "{}", m.topic);
            assert!(!m.payload.is_empty());
        }
    }

    #[test]
    fn topics_exactly_as_specified() {
        let got: Vec<String> = discovery_messages("homeassistant", &topics(), &device())
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(
            got,
            [
                "homeassistant/lock/frontdoor/door/config",
                "homeassistant/event/frontdoor/access/config",
                "homeassistant/event/frontdoor/system/config",
                "homeassistant/sensor/frontdoor/last_person/config",
                "homeassistant/sensor/frontdoor/similarity/config",
                "homeassistant/sensor/frontdoor/last_event/config",
                "homeassistant/sensor/frontdoor/backend/config",
                "homeassistant/sensor/frontdoor/frames/config",
                "homeassistant/sensor/frontdoor/alarm/config",
                "homeassistant/binary_sensor/frontdoor/door_forced/config",
                "homeassistant/binary_sensor/frontdoor/held_open/config",
                "homeassistant/binary_sensor/frontdoor/tamper/config",
                "homeassistant/sensor/frontdoor/last_refusal/config",
                "homeassistant/sensor/frontdoor/npu/config",
                "homeassistant/binary_sensor/frontdoor/camera/config",
                "homeassistant/sensor/frontdoor/outbox/config",
                "homeassistant/binary_sensor/frontdoor/door_contact/config",
                "homeassistant/text/frontdoor/enrol_name/config",
                "homeassistant/text/frontdoor/code/config",
                "homeassistant/button/frontdoor/enrol/config",
                "homeassistant/button/frontdoor/remove_last/config",
            ]
        );
        assert_eq!(status_topic("homeassistant"), "homeassistant/status");
        assert!(is_ha_birth(b"online"));
        assert!(!is_ha_birth(b"offline"));
    }

    // Keys Home Assistant accepts, from its MQTT platform schemas (homeassistant/components/
    // mqtt: config.py, schemas.py, lock.py, event.py, sensor.py, binary_sensor.py) and the
    // integration docs, 2025-2026. Discovery silently drops unknown keys, so a typo here would
    // otherwise go unnoticed.
    const COMMON: &[&str] = &[
        // MQTT_BASE_SCHEMA
        "qos",
        "encoding",
        "group",
        // availability
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        // MQTT_ENTITY_COMMON_SCHEMA (object_id was replaced by default_entity_id)
        "device",
        "entity_picture",
        "origin",
        "enabled_by_default",
        "entity_category",
        "icon",
        "json_attributes_topic",
        "json_attributes_template",
        "default_entity_id",
        "message_expiry_interval",
        "unique_id",
        "visible_by_default",
        // every platform
        "name",
    ];
    const RO: &[&str] = &["state_topic", "value_template"];
    const LOCK: &[&str] = &[
        "command_topic",
        "optimistic",
        "retain",
        "state_topic",
        "code_format",
        "command_template",
        "payload_lock",
        "payload_unlock",
        "payload_open",
        "payload_reset",
        "state_jammed",
        "state_locked",
        "state_locking",
        "state_open",
        "state_opening",
        "state_unlocked",
        "state_unlocking",
        "value_template",
    ];
    const EVENT: &[&str] = &["device_class", "event_types"];
    const SENSOR: &[&str] = &[
        "device_class",
        "expire_after",
        "force_update",
        "last_reset_value_template",
        "options",
        "suggested_display_precision",
        "state_class",
        "unit_of_measurement",
    ];
    const BINARY_SENSOR: &[&str] =
        &["device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on"];
    // text.py and button.py (MQTT_RW_SCHEMA: command_topic, retain, state_topic).
    const TEXT: &[&str] = &[
        "command_template",
        "command_topic",
        "max",
        "min",
        "mode",
        "pattern",
        "retain",
        "state_topic",
        "value_template",
    ];
    const BUTTON: &[&str] =
        &["command_template", "command_topic", "device_class", "payload_press", "retain"];
    const DEVICE: &[&str] = &[
        "identifiers",
        "connections",
        "manufacturer",
        "model",
        "model_id",
        "name",
        "hw_version",
        "serial_number",
        "sw_version",
        "via_device",
        "suggested_area",
        "configuration_url",
    ];
    const ORIGIN: &[&str] = &["name", "sw_version", "support_url"];

    fn schema(component: &str) -> (HashSet<&'static str>, &'static [&'static str]) {
        let (specific, required): (&[&[&str]], &[&str]) = match component {
            "lock" => (&[LOCK], &["command_topic"]),
            "event" => (&[RO, EVENT], &["state_topic", "event_types"]),
            "sensor" => (&[RO, SENSOR], &["state_topic"]),
            "binary_sensor" => (&[RO, BINARY_SENSOR], &["state_topic"]),
            "text" => (&[TEXT], &["command_topic"]),
            "button" => (&[BUTTON], &["command_topic"]),
            other => panic!("no schema table for {other}"),
        };
        let allowed = COMMON.iter().chain(specific.iter().flat_map(|s| s.iter())).copied();
        (allowed.collect(), required)
    }

    #[test]
    fn schema_keys_are_allowed_and_required_keys_present() {
        let all = configs(&device());
        assert_eq!(all.len(), 21);
        for ((component, object_id), config) in &all {
            let (allowed, required) = schema(component);
            for key in config.keys() {
                assert!(allowed.contains(key.as_str()), "{component}/{object_id}: {key}");
            }
            for key in required {
                assert!(config.contains_key(*key), "{component}/{object_id}: missing {key}");
            }
            for key in ["unique_id", "default_entity_id", "name", "device", "origin"] {
                assert!(config.contains_key(key), "{component}/{object_id}: missing {key}");
            }
            assert!(!config.contains_key("object_id"), "object_id is gone from HA 2026.4");
            let device = config["device"].as_object().unwrap();
            for key in device.keys() {
                assert!(DEVICE.contains(&key.as_str()), "device key {key}");
            }
            let origin = config["origin"].as_object().unwrap();
            assert!(origin.contains_key("name"));
            for key in origin.keys() {
                assert!(ORIGIN.contains(&key.as_str()), "origin key {key}");
            }
        }
    }

    #[test]
    fn common_keys_and_availability() {
        let t = topics();
        for ((component, object_id), config) in configs(&device()) {
            assert_eq!(config["unique_id"], format!("frontdoor_{object_id}"));
            assert_eq!(config["default_entity_id"], format!("{component}.frontdoor_{object_id}"));
            assert_eq!(config["availability_topic"], t.availability());
            assert_eq!(config["payload_available"], "online");
            assert_eq!(config["payload_not_available"], "offline");
            assert_eq!(config["origin"], json!({"name": "portier", "sw_version": "0.1.0"}));
            assert_eq!(config["qos"], 1);
        }
    }

    #[test]
    fn entity_configs() {
        let t = topics();
        let all = configs(&device());
        let get = |c: &str, o: &str| all[&(c.to_owned(), o.to_owned())].clone();

        let lock = get("lock", "door");
        assert_eq!(lock["name"], "Door");
        assert_eq!(lock["state_topic"], t.lock_state());
        assert_eq!(lock["command_topic"], t.lock_command());
        assert_eq!(lock["payload_lock"], "LOCK");
        assert_eq!(lock["payload_unlock"], "UNLOCK");
        let states: Vec<&str> = ["locked", "unlocked", "jammed", "locking", "unlocking"]
            .iter()
            .map(|s| lock[&format!("state_{s}")].as_str().unwrap())
            .collect();
        let ours: Vec<&str> = LockState::ALL.iter().map(|s| s.payload()).collect();
        assert_eq!(states, ours);
        assert_eq!(lock["optimistic"], false);
        assert_eq!(lock["retain"], false);
        assert_eq!(lock["qos"], 1);
        assert_eq!(lock["code_format"], r"^(\d{6})?$");
        assert_eq!(lock["command_template"], "{{ {'ha': value, 'code': code} | to_json }}");

        let access = get("event", "access");
        assert_eq!(access["name"], "Access");
        assert_eq!(access["state_topic"], t.access());
        assert_eq!(
            access["event_types"],
            json!(["granted", "denied", "unknown", "tailgating", "spoof_suspected"])
        );
        let template = access["value_template"].as_str().unwrap();
        assert!(template.contains("'event_type': value_json.kind"), "{template}");
        assert!(template.ends_with("| to_json }}"), "{template}");
        assert!(!access.contains_key("device_class"));

        let person = get("sensor", "last_person");
        assert_eq!(person["name"], "Last person granted");
        assert_eq!(person["state_topic"], t.last_person());
        assert!(!person.contains_key("state_class"));

        let similarity = get("sensor", "similarity");
        assert_eq!(similarity["name"], "Similarity");
        assert_eq!(similarity["state_topic"], t.last_similarity());
        assert_eq!(similarity["state_class"], "measurement");
        assert!(!similarity.contains_key("unit_of_measurement"));

        let backend = get("sensor", "backend");
        assert_eq!(backend["name"], "Recognition backend");
        assert_eq!(backend["state_topic"], t.last_backend());

        let frames = get("sensor", "frames");
        assert_eq!(frames["name"], "Frames");
        assert_eq!(frames["state_topic"], t.counters());
        assert_eq!(frames["value_template"], "{{ value_json.frames }}");
        assert_eq!(frames["state_class"], "total_increasing");
        assert_eq!(frames["entity_category"], "diagnostic");

        let contact = get("binary_sensor", "door_contact");
        assert_eq!(contact["name"], "Door contact");
        assert_eq!(contact["state_topic"], t.contact_state());
        assert_eq!(contact["device_class"], "door");
        assert_eq!(contact["payload_on"], "ON");
        assert_eq!(contact["payload_off"], "OFF");
    }

    #[test]
    fn device_block_identical_across_entities() {
        let all = configs(&device());
        let blocks: HashSet<String> = all.values().map(|c| c["device"].to_string()).collect();
        assert_eq!(blocks.len(), 1);
        let block = &all.values().next().unwrap()["device"];
        assert_eq!(
            *block,
            json!({
                "identifiers": ["frontdoor"],
                "name": "Front door",
                "manufacturer": "portier",
                "model": "portier on Raspberry Pi 5 + Hailo-8",
                "sw_version": "0.1.0",
                "configuration_url": "http://portier.local/",
            })
        );
        let mut bare = device();
        bare.configuration_url = None;
        for config in configs(&bare).values() {
            assert!(!config["device"].as_object().unwrap().contains_key("configuration_url"));
        }
    }

    #[test]
    fn unique_ids_unique() {
        let all = configs(&device());
        let ids: HashSet<&str> = all.values().map(|c| c["unique_id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), all.len());
        let entity_ids: HashSet<&str> =
            all.values().map(|c| c["default_entity_id"].as_str().unwrap()).collect();
        assert_eq!(entity_ids.len(), all.len());
    }

    #[test]
    fn the_model_names_the_board() {
        let pi = b"Raspberry Pi 5 Model B Rev 1.0\0";
        assert_eq!(board_model(Some(pi), true), "Raspberry Pi 5 Model B Rev 1.0 + Hailo-8");
        assert_eq!(board_model(Some(pi), false), "Raspberry Pi 5 Model B Rev 1.0");
        let laptop = board_model(None, false);
        assert!(laptop.ends_with("Linux machine") && !laptop.contains("Hailo"), "{laptop}");
        assert!(board_model(Some(b"\0"), true).ends_with("Linux machine + Hailo-8"));
    }

    #[test]
    fn device_id_validation() {
        for good in ["frontdoor", "Front-Door_2", "a", &"x".repeat(MAX_DEVICE_ID_LEN)] {
            assert!(DeviceInfo::new(good, "Door", "0.1.0", DEFAULT_MODEL, None).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_DEVICE_ID_LEN + 1);
        for bad in ["", "front door", "front/door", "front+door", "door#", "tür", "a.b", &long] {
            assert_eq!(
                DeviceInfo::new(bad, "Door", "0.1.0", DEFAULT_MODEL, None),
                Err(DiscoveryError::DeviceId(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            DeviceInfo::new("d", " ", "0.1.0", DEFAULT_MODEL, None),
            Err(DiscoveryError::EmptyName)
        );
    }

    #[test]
    fn configuration_url_validation() {
        for good in ["http://portier.local", "https://10.0.0.5:8443/x", "homeassistant://config"] {
            assert!(DeviceInfo::new("d", "D", "1", DEFAULT_MODEL, Some(good)).is_ok(), "{good}");
        }
        for bad in ["portier.local", "ftp://x", "http://", "http://a b", ""] {
            assert_eq!(
                DeviceInfo::new("d", "D", "1", DEFAULT_MODEL, Some(bad)),
                Err(DiscoveryError::ConfigurationUrl(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hand_built_invalid_device_id_never_breaks_topics() {
        let mut d = device();
        d.device_id = "front/door+#".into();
        for m in discovery_messages(DEFAULT_PREFIX, &topics(), &d) {
            assert_eq!(m.topic.split('/').count(), 5, "{}", m.topic);
            assert!(!m.topic.contains(['+', '#']), "{}", m.topic);
            assert!(m.topic.contains("/front_door__/"), "{}", m.topic);
        }
        d.device_id = String::new();
        let first = &discovery_messages(DEFAULT_PREFIX, &topics(), &d)[0];
        assert_eq!(first.topic, "homeassistant/lock/portier/door/config");
    }

    #[test]
    fn entity_id_slug_is_lowercase() {
        let d = DeviceInfo::new("Front-Door", "Front door", "1", DEFAULT_MODEL, None).unwrap();
        let all = configs(&d);
        let lock = &all[&("lock".to_owned(), "door".to_owned())];
        assert_eq!(lock["default_entity_id"], "lock.front_door_door");
        assert_eq!(lock["unique_id"], "Front-Door_door");
        assert_eq!(lock["device"]["identifiers"], json!(["Front-Door"]));
    }

    #[test]
    fn prefix_validation() {
        assert!(check_prefix("homeassistant").is_ok());
        assert!(check_prefix("ha/discovery").is_ok());
        for bad in ["", "homeassistant/", "/ha", "ha/#", "ha/+"] {
            assert!(matches!(check_prefix(bad), Err(DiscoveryError::Prefix(_))), "{bad:?}");
        }
    }
}
