//! From the loop's [`AppEvent`]s to the MQTT thread's [`Message`]s: the one place that decides
//! what Home Assistant and other subscribers hear about.
//!
//! Must not: do I/O or block; it only builds values for [`super::client::MqttClient::send`].

use crate::app::{AppEvent, Counters as AppCounters};
use crate::door::{DoorEvent as Door, UnlockReason};

use super::client::Message;
use super::events::{
    AccessEvent, AccessKind, Backend, Counters, DoorEvent, DoorKind, LockState, SystemEvent,
};

fn backend(name: &str) -> Backend {
    if name == "npu" {
        Backend::Npu
    } else {
        Backend::Cpu
    }
}

fn finite(v: f32) -> Option<f32> {
    v.is_finite().then_some(v)
}

fn access(kind: AccessKind, track: u64, eye_px: f32) -> AccessEvent {
    AccessEvent {
        kind,
        track_id: track,
        person: None,
        person_id: None,
        similarity: None,
        second_similarity: None,
        backend: None,
        eye_distance_px: eye_px,
        embedding_norm: 0.0,
        liveness: None,
        liveness_model: None,
    }
}

fn door(kind: DoorKind, reason: Option<&str>) -> Message {
    Message::Door(DoorEvent { kind, reason: reason.map(str::to_owned) })
}

/// The messages for one loop event, appended to `out`.
pub fn messages(event: &AppEvent, out: &mut Vec<Message>) {
    match event {
        AppEvent::Granted {
            track,
            person,
            name,
            similarity,
            second_similarity,
            eye_px,
            norm,
            backend: b,
            liveness,
            liveness_model,
            ..
        } => {
            let mut e = access(AccessKind::Granted, *track, *eye_px);
            e.person = Some(name.clone());
            e.person_id = Some(*person);
            e.similarity = finite(*similarity);
            e.second_similarity = second_similarity.and_then(finite);
            e.backend = Some(backend(b));
            e.embedding_norm = *norm;
            e.liveness = liveness.and_then(finite);
            e.liveness_model = liveness_model.map(str::to_owned);
            out.push(Message::Access(e));
        }
        AppEvent::SpoofSuspected {
            track,
            person,
            name,
            similarity,
            liveness,
            liveness_model,
            eye_px,
            ..
        } => {
            let mut e = access(AccessKind::SpoofSuspected, *track, *eye_px);
            e.person = Some(name.clone());
            e.person_id = Some(*person);
            e.similarity = finite(*similarity);
            e.liveness = finite(*liveness);
            e.liveness_model = Some((*liveness_model).to_owned());
            out.push(Message::Access(e));
        }
        AppEvent::CoolingDown { .. } => {}
        AppEvent::Unknown { track, similarity, eye_px, norm, backend: b, .. } => {
            let mut e = access(AccessKind::Unknown, *track, *eye_px);
            e.similarity = finite(*similarity);
            e.backend = Some(backend(b));
            e.embedding_norm = *norm;
            out.push(Message::Access(e));
        }
        AppEvent::Tailgating { track, .. } => {
            out.push(Message::Access(access(AccessKind::Tailgating, *track, 0.0)));
        }
        AppEvent::Door(d) => match d {
            Door::Unlocked { reason } => {
                let why = match reason {
                    UnlockReason::Face { .. } => "face",
                    UnlockReason::ExitButton => "exit_button",
                    UnlockReason::Remote => "remote",
                };
                out.push(door(DoorKind::Unlocked, Some(why)));
                out.push(Message::Lock(LockState::Unlocked));
            }
            Door::Locked => {
                out.push(door(DoorKind::Locked, None));
                out.push(Message::Lock(LockState::Locked));
            }
            Door::Opened => {
                out.push(door(DoorKind::Opened, None));
                out.push(Message::Contact(true));
            }
            Door::Closed => {
                out.push(door(DoorKind::Closed, None));
                out.push(Message::Contact(false));
            }
            Door::HeldOpen => out.push(door(DoorKind::HeldOpen, None)),
            Door::Forced => out.push(door(DoorKind::Forced, None)),
            Door::ExitRequested => {}
        },
        AppEvent::CameraLost { reason } => {
            out.push(Message::System(SystemEvent::CameraLost { reason: reason.clone() }));
        }
        AppEvent::CameraBack => out.push(Message::System(SystemEvent::CameraBack)),
        AppEvent::NpuFallback { reason } => {
            out.push(Message::System(SystemEvent::NpuFallback { reason: reason.clone() }));
        }
        AppEvent::NpuBack => out.push(Message::System(SystemEvent::NpuBack)),
        AppEvent::Counters { counters: c, uptime } => out.push(counters(c, uptime.as_secs())),
        AppEvent::EnrolStarted { name, seconds } => {
            out.push(Message::System(SystemEvent::EnrolStarted {
                person: name.clone(),
                seconds: *seconds,
            }))
        }
        // Reported by the shell once stored (or not): `enrolled` / `enrol_failed`.
        AppEvent::EnrolCaptured { .. } => {}
    }
}

/// The periodic counters message.
pub fn counters(c: &AppCounters, uptime_s: u64) -> Message {
    Message::Counters(Counters {
        frames: c.frames,
        faces: c.faces,
        granted: c.grants,
        denied: c.spoofs,
        unknown: c.unknowns,
        errors: c.corrupt_frames + c.camera_errors + c.embed_errors + c.door_errors,
        dropped_events: 0,
        uptime_s,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_becomes_an_access_event_and_the_unlock_a_lock_state() {
        let mut out = Vec::new();
        messages(
            &AppEvent::Granted {
                track: 7,
                person: 3,
                name: "Ada".into(),
                similarity: 0.61,
                second_similarity: Some(0.21),
                votes: 3,
                eye_px: 48.0,
                norm: 21.5,
                backend: "npu",
                liveness: Some(0.97),
                liveness_model: Some("minifasnet_v2+v1se"),
                frame: 100,
            },
            &mut out,
        );
        messages(
            &AppEvent::Door(Door::Unlocked { reason: UnlockReason::Face { person: "Ada".into() } }),
            &mut out,
        );
        let Message::Access(a) = &out[0] else { panic!("{out:?}") };
        assert_eq!(
            (a.kind, a.person.as_deref(), a.backend),
            (AccessKind::Granted, Some("Ada"), Some(Backend::Npu))
        );
        assert_eq!((a.second_similarity, a.embedding_norm), (Some(0.21), 21.5));
        assert!(
            matches!(&out[1], Message::Door(d) if d.kind == DoorKind::Unlocked && d.reason.as_deref() == Some("face"))
        );
        assert!(matches!(out[2], Message::Lock(LockState::Unlocked)));
        assert_eq!(
            (a.liveness, a.liveness_model.as_deref()),
            (Some(0.97), Some("minifasnet_v2+v1se"))
        );
    }

    #[test]
    fn a_suspected_spoof_is_an_access_event_without_a_door_change() {
        let mut out = Vec::new();
        messages(
            &AppEvent::SpoofSuspected {
                track: 2,
                person: 5,
                name: "Ada".into(),
                similarity: 0.7,
                liveness: 0.02,
                passes: 0,
                votes: 3,
                liveness_model: "minifasnet_v2+v1se",
                eye_px: 60.0,
                frame: 9,
            },
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let Message::Access(a) = &out[0] else { panic!("{out:?}") };
        assert_eq!(
            (a.kind, a.person.as_deref(), a.liveness),
            (AccessKind::SpoofSuspected, Some("Ada"), Some(0.02))
        );
    }

    #[test]
    fn nan_similarity_is_null_and_exit_requests_are_not_published() {
        let mut out = Vec::new();
        messages(
            &AppEvent::Unknown {
                track: 1,
                similarity: f32::NAN,
                eye_px: 20.0,
                norm: 14.5,
                backend: "npu",
                frame: 1,
            },
            &mut out,
        );
        messages(&AppEvent::Door(Door::ExitRequested), &mut out);
        assert_eq!(out.len(), 1);
        let Message::Access(a) = &out[0] else { panic!() };
        assert_eq!(a.similarity, None);
        // The backend and norm the face really had, not a default (issue 17).
        assert_eq!((a.backend, a.embedding_norm), (Some(Backend::Npu), 14.5));
    }
}
