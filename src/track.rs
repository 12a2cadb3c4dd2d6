//! Faces across frames: every detection of every frame is associated with a track (greedy IoU
//! between the detection and the track's box moved by a constant-velocity prediction), each
//! track keeps its best-quality face so the recognizer embeds good crops, and tracks end after a
//! configurable time unseen.
//!
//! Must not: allocate (every table is a fixed-capacity `heapless` vector, bounded by
//! [`MAX_TRACKS`] tracks and [`MAX_FACES`] faces a frame; the caller owns the output vectors),
//! read clocks (the caller passes the frame time), or run models (quality comes from
//! landmarks, the detector score and the aligned crop's pixels).

use std::time::Duration;

use crate::align::{AlignedFace, CROP};
use crate::detect::{iou, Detection, Faces, Landmarks, MAX_FACES};

/// Identifier of a track: increasing from 1, never reused within one [`Tracker`].
pub type TrackId = u64;

/// The most tracks live at once: `[tracker] max_tracks` is at most this (a door's camera
/// follows a handful of people; a crowd past 64 faces is counted, not followed).
pub const MAX_TRACKS: usize = 64;

/// The tracks that ended in a frame.
pub type Ended = heapless::Vec<TrackId, MAX_TRACKS>;

/// For each of a frame's faces (same index), the track it was assigned to, `None` when it was
/// dropped because `max_tracks` tracks were live.
pub type Assignment = heapless::Vec<Option<TrackId>, MAX_FACES>;

/// Candidate (track, face) pairs of one frame.
const MAX_PAIRS: usize = MAX_TRACKS * MAX_FACES;

/// Settings of the tracker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Minimum IoU between a track's predicted box and a detection for them to be associated
    /// (e.g. 0.3).
    pub iou_min: f32,
    /// A track unseen for longer than this ends (e.g. 1 s).
    pub max_age: Duration,
    /// Most live tracks at once (e.g. 16, at most [`MAX_TRACKS`]); detections that would start
    /// more are ignored and counted in [`Tracker::dropped_detections`].
    pub max_tracks: usize,
    /// Frames a track must be seen in before it is confirmed (e.g. 2).
    pub min_hits: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self { iou_min: 0.3, max_age: Duration::from_secs(1), max_tracks: 16, min_hits: 2 }
    }
}

/// How good one face is for recognition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Overall quality, 0..1 (see [`quality`] for the weights).
    pub score: f32,
    /// Eye distance in pixels.
    pub eye_distance: f32,
    /// Detector confidence.
    pub detector: f32,
    /// Frontality 0..1 from the landmark geometry (see [`frontality`]).
    pub frontal: f32,
    /// Variance of the Laplacian of the crop's grey image, raw (see [`sharpness`]); 0 when no
    /// crop was given.
    pub sharpness: f32,
}

/// Eye distance (pixels) at which the size term of [`quality`] saturates at 1.
pub const SIZE_SATURATION: f32 = 80.0;
/// Normalisation constant of sharpness in [`quality`]: `s / (s + SHARPNESS_HALF)`, so a
/// Laplacian variance of 100 counts as 0.5.
pub const SHARPNESS_HALF: f32 = 100.0;

/// Weight of the size term in [`quality`].
const W_SIZE: f32 = 0.3;
/// Weight of the detector-score term in [`quality`].
const W_DETECTOR: f32 = 0.2;
/// Weight of the frontality term in [`quality`].
const W_FRONTAL: f32 = 0.3;
/// Weight of the sharpness term in [`quality`].
const W_SHARP: f32 = 0.2;

/// Eyes-to-mouth distance over eye distance of a frontal face (ArcFace 112x112 template:
/// eye midpoint (55.9, 51.6), mouth midpoint (56.1, 92.3), eye distance 35.2).
const FRONTAL_RATIO: f32 = 1.155;

/// Pose from landmarks: 1 for frontal, falling toward 0 as the head turns.
///
/// With eyes `L`, `R`, nose `N`, eye midpoint `E`, mouth midpoint `M` and eye distance
/// `d = |R - L|`:
///
/// - yaw: `y = dist(N, line E-M) / (d / 2)` (0 when the nose sits on the eye-mouth centre
///   line, 1 when it is as far out as an eye), `yaw = max(0, 1 - y)`;
/// - roll: `roll = max(0, (R.x - L.x) / d)`, the cosine of the eye line's tilt;
/// - pitch: `r = |M - E| / d` against the frontal ratio `r0 = 1.155`,
///   `pitch = (min(r, r0) / max(r, r0))^2`;
///
/// and `frontality = yaw * roll * pitch`. Degenerate landmarks (eyes or eyes and mouth on one
/// point) give 0. The measure is mirror-symmetric.
pub fn frontality(kps: &Landmarks) -> f32 {
    let [l, r, n, ml, mr] = *kps;
    let e = [(l[0] + r[0]) * 0.5, (l[1] + r[1]) * 0.5];
    let m = [(ml[0] + mr[0]) * 0.5, (ml[1] + mr[1]) * 0.5];
    let d = ((r[0] - l[0]).powi(2) + (r[1] - l[1]).powi(2)).sqrt();
    let em = [m[0] - e[0], m[1] - e[1]];
    let em_len = (em[0] * em[0] + em[1] * em[1]).sqrt();
    if !(d > 1e-6 && em_len > 1e-6) {
        return 0.0;
    }
    // Perpendicular distance of the nose from the line through E along E->M.
    let en = [n[0] - e[0], n[1] - e[1]];
    let off = (em[0] * en[1] - em[1] * en[0]).abs() / em_len;
    let yaw = (1.0 - off / (d * 0.5)).max(0.0);
    let roll = ((r[0] - l[0]) / d).max(0.0);
    let ratio = em_len / d;
    let pitch = (ratio.min(FRONTAL_RATIO) / ratio.max(FRONTAL_RATIO)).powi(2);
    let f = yaw * roll * pitch;
    if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Variance of the 3x3 Laplacian (`[0 1 0; 1 -4 1; 0 1 0]`) over the interior of the crop's
/// luma, with luma the BT.601 integer approximation `(77 R + 150 G + 29 B + 128) >> 8`. Works
/// on a stack buffer: no allocation. A flat crop gives 0; blur lowers it.
pub fn sharpness(face: &AlignedFace) -> f32 {
    let mut luma = [0i32; CROP * CROP];
    for (y, px) in luma.iter_mut().zip(face.pixels.chunks_exact(3)) {
        let [r, g, b] = [i32::from(px[0]), i32::from(px[1]), i32::from(px[2])];
        *y = (77 * r + 150 * g + 29 * b + 128) >> 8;
    }
    let (mut sum, mut sum_sq) = (0i64, 0i64);
    for row in 1..CROP - 1 {
        for col in 1..CROP - 1 {
            let i = row * CROP + col;
            let lap = luma[i - CROP] + luma[i + CROP] + luma[i - 1] + luma[i + 1] - 4 * luma[i];
            sum += i64::from(lap);
            sum_sq += i64::from(lap) * i64::from(lap);
        }
    }
    let n = ((CROP - 2) * (CROP - 2)) as f64;
    let mean = sum as f64 / n;
    (sum_sq as f64 / n - mean * mean).max(0.0) as f32
}

/// Overall quality of a detected face, 0..1: the weighted mean of
///
/// - size `min(1, eye_distance / 80)` ([`SIZE_SATURATION`]), weight 0.3;
/// - detector score (clamped to 0..1), weight 0.2;
/// - [`frontality`], weight 0.3;
/// - sharpness `s / (s + 100)` ([`SHARPNESS_HALF`], `s` from [`sharpness`]), weight 0.2.
///
/// Without a crop the sharpness term is left out and the other weights renormalised (divided
/// by 0.8), so compare qualities computed the same way.
pub fn quality(det: &Detection, face: Option<&AlignedFace>) -> Quality {
    let eye_distance = det.eye_distance();
    let size = (eye_distance / SIZE_SATURATION).clamp(0.0, 1.0);
    let detector = det.score;
    let det_term = if detector.is_finite() { detector.clamp(0.0, 1.0) } else { 0.0 };
    let frontal = frontality(&det.kps);
    let base = W_SIZE * size + W_DETECTOR * det_term + W_FRONTAL * frontal;
    let (sharp, score) = match face {
        Some(face) => {
            let s = sharpness(face);
            (s, base + W_SHARP * s / (s + SHARPNESS_HALF))
        }
        None => (0.0, base / (W_SIZE + W_DETECTOR + W_FRONTAL)),
    };
    let score = if score.is_finite() { score.clamp(0.0, 1.0) } else { 0.0 };
    Quality { score, eye_distance, detector, frontal, sharpness: sharp }
}

/// One face followed across frames.
#[derive(Debug, Clone)]
pub struct Track {
    /// Identifier, never reused.
    pub id: TrackId,
    /// Box of the last associated detection, `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Velocity of the box centre in pixels per second (smoothed).
    pub velocity: [f32; 2],
    /// Frame time the track started.
    pub first_seen: Duration,
    /// Frame time of the last associated detection.
    pub last_seen: Duration,
    /// Frames with an associated detection.
    pub hits: u32,
    /// Seen in at least `min_hits` frames (stays true once set).
    pub confirmed: bool,
    /// Best-quality detection offered so far (see [`Tracker::offer`]).
    pub best: Option<(Detection, Quality)>,
    /// Last associated detection.
    pub last: Detection,
}

/// Weight of a new velocity measurement in the exponential smoothing of [`Track::velocity`].
const VELOCITY_ALPHA: f32 = 0.6;

/// Multi-face tracker: fixed-capacity tables, [`MAX_TRACKS`] tracks.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: heapless::Vec<Track, MAX_TRACKS>,
    next_id: TrackId,
    dropped: u64,
    /// Predicted box per track (index-parallel to `tracks`).
    predicted: heapless::Vec<[f32; 4], MAX_TRACKS>,
    /// Whether the track at this index was matched this frame.
    track_matched: [bool; MAX_TRACKS],
    /// Candidate pairs `(iou, track index, detection index)` (boxed: 96 KiB, allocated once).
    pairs: Box<heapless::Vec<(f32, usize, usize), MAX_PAIRS>>,
}

impl Tracker {
    /// A tracker with no tracks; `config.max_tracks` is capped at [`MAX_TRACKS`], the table's
    /// size. (A config file's larger value is clamped, with a warning naming the key, when the
    /// file is read; this cap is for a `TrackerConfig` built in code.)
    pub fn new(mut config: TrackerConfig) -> Tracker {
        config.max_tracks = config.max_tracks.min(MAX_TRACKS);
        Tracker {
            config,
            tracks: heapless::Vec::new(),
            next_id: 1,
            dropped: 0,
            predicted: heapless::Vec::new(),
            track_matched: [false; MAX_TRACKS],
            pairs: Box::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Associates this frame's detections with tracks.
    ///
    /// First, tracks unseen for longer than `max_age` at `now` end (their ids go to `ended`,
    /// which is cleared first). Then every live track's box is moved by its velocity times the
    /// time since it was last seen, and (track, detection) pairs are taken greedily by
    /// descending IoU between predicted box and detection box, rejecting pairs below
    /// `iou_min`. Unmatched detections start new tracks (ids increase, never reused) while
    /// fewer than `max_tracks` are live; extra ones are ignored and counted in
    /// [`Tracker::dropped_detections`].
    ///
    /// `assignment` is cleared and filled with, for each detection index, the id of the track
    /// it was assigned to (or `None` when dropped). `now` is the frame's time on any monotonic
    /// clock.
    pub fn update(
        &mut self,
        detections: &Faces,
        now: Duration,
        assignment: &mut Assignment,
        ended: &mut Ended,
    ) {
        ended.clear();
        let max_age = self.config.max_age;
        for t in &self.tracks {
            if now.saturating_sub(t.last_seen) > max_age {
                // Cannot fail: `ended` holds as many as `tracks`.
                let _ = ended.push(t.id);
            }
        }
        self.tracks.retain(|t| now.saturating_sub(t.last_seen) <= max_age);

        self.predicted.clear();
        for t in &self.tracks {
            // Cannot fail: index-parallel to `tracks`, same capacity.
            let _ = self.predicted.push(predict(t, now));
        }
        self.track_matched = [false; MAX_TRACKS];

        self.pairs.clear();
        for (ti, p) in self.predicted.iter().enumerate() {
            for (di, d) in detections.iter().enumerate() {
                let v = iou(p, &d.bbox);
                if v >= self.config.iou_min && v > 0.0 {
                    // Cannot fail: at most MAX_TRACKS x MAX_FACES pairs.
                    let _ = self.pairs.push((v, ti, di));
                }
            }
        }
        // Unstable sort does not allocate; ties broken by indices for determinism.
        self.pairs
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

        assignment.clear();
        // Cannot fail: one entry per face, as many as `Faces` holds.
        let _ = assignment.resize(detections.len(), None);
        for &(_, ti, di) in self.pairs.iter() {
            if self.track_matched[ti] || assignment[di].is_some() {
                continue;
            }
            self.track_matched[ti] = true;
            let track = &mut self.tracks[ti];
            observe(track, &detections[di], now, self.config.min_hits);
            assignment[di] = Some(track.id);
        }

        for (di, det) in detections.iter().enumerate() {
            if assignment[di].is_some() {
                continue;
            }
            if self.tracks.len() >= self.config.max_tracks {
                self.dropped += 1;
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            // Cannot fail: fewer than max_tracks <= MAX_TRACKS are live.
            let _ = self.tracks.push(Track {
                id,
                bbox: det.bbox,
                velocity: [0.0; 2],
                first_seen: now,
                last_seen: now,
                hits: 1,
                confirmed: self.config.min_hits <= 1,
                best: None,
                last: *det,
            });
            assignment[di] = Some(id);
        }
    }

    /// Offers a quality for the detection just assigned to `id` (the caller computes it after
    /// aligning); the track keeps it if its score is higher than that of its best so far.
    /// Unknown or ended ids are ignored.
    pub fn offer(&mut self, id: TrackId, det: &Detection, q: Quality) {
        if let Some(t) = self.tracks.iter_mut().find(|t| t.id == id) {
            let better = match &t.best {
                None => true,
                Some((_, best)) => q.score > best.score,
            };
            if better {
                t.best = Some((*det, q));
            }
        }
    }

    /// Live tracks, oldest first.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// The live track with this id.
    pub fn get(&self, id: TrackId) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Detections ignored because `max_tracks` tracks were live, since the tracker was made.
    pub fn dropped_detections(&self) -> u64 {
        self.dropped
    }
}

/// The track's box moved by its velocity over the time since it was last seen.
fn predict(t: &Track, now: Duration) -> [f32; 4] {
    let dt = now.saturating_sub(t.last_seen).as_secs_f32();
    let [dx, dy] = [t.velocity[0] * dt, t.velocity[1] * dt];
    [t.bbox[0] + dx, t.bbox[1] + dy, t.bbox[2] + dx, t.bbox[3] + dy]
}

/// Updates a track with its associated detection.
fn observe(t: &mut Track, det: &Detection, now: Duration, min_hits: u32) {
    let dt = now.saturating_sub(t.last_seen).as_secs_f32();
    if dt > 0.0 {
        let old = t.last.centre();
        let new = det.centre();
        let measured = [(new[0] - old[0]) / dt, (new[1] - old[1]) / dt];
        if t.hits <= 1 {
            t.velocity = measured;
        } else {
            for (v, m) in t.velocity.iter_mut().zip(measured) {
                *v = VELOCITY_ALPHA * m + (1.0 - VELOCITY_ALPHA) * *v;
            }
        }
    }
    t.bbox = det.bbox;
    t.last = *det;
    t.last_seen = now;
    t.hits = t.hits.saturating_add(1);
    if t.hits >= min_hits {
        t.confirmed = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn fs(d: &[Detection]) -> Faces {
        Faces::from_slice(d).unwrap()
    }

    const FRAME: Duration = Duration::from_millis(100);

    fn config() -> TrackerConfig {
        TrackerConfig::default()
    }

    /// A face box of side `s` at top-left `(x, y)` with frontal landmarks.
    fn face(x: f32, y: f32, s: f32) -> Detection {
        let k = s / 112.0;
        let p = |px: f32, py: f32| [x + px * k, y + py * k];
        Detection {
            bbox: [x, y, x + s, y + s],
            score: 0.9,
            kps: [
                p(38.29, 51.70),
                p(73.53, 51.50),
                p(56.03, 71.74),
                p(41.55, 92.37),
                p(70.73, 92.20),
            ],
        }
    }

    fn at(i: u32) -> Duration {
        FRAME * i
    }

    #[test]
    fn moving_face_keeps_id_and_velocity() {
        let mut tr = Tracker::new(config());
        let (mut asg, mut ended) = (Assignment::new(), Ended::new());
        let mut id = None;
        for i in 0..20 {
            tr.update(&fs(&[face(10.0 * i as f32, 50.0, 60.0)]), at(i), &mut asg, &mut ended);
            assert!(ended.is_empty());
            assert_eq!(asg.len(), 1);
            let got = asg[0].unwrap();
            assert_eq!(*id.get_or_insert(got), got);
        }
        assert_eq!(tr.tracks().len(), 1);
        let t = tr.get(id.unwrap()).unwrap();
        let expect = 10.0 / FRAME.as_secs_f32();
        assert!((t.velocity[0] - expect).abs() < 1.0, "{:?}", t.velocity);
        assert!(t.velocity[1].abs() < 1e-3);
        assert_eq!(t.hits, 20);
        assert_eq!(t.first_seen, at(0));
        assert_eq!(t.last_seen, at(19));
    }

    #[test]
    fn crossing_faces_keep_ids() {
        // 40 px boxes, 8 px apart vertically, approaching at 10 px/frame each.
        let a = |i: u32| face(10.0 * i as f32, 100.0, 40.0);
        let b = |i: u32| face(290.0 - 10.0 * i as f32, 108.0, 40.0);
        // Premise: plain IoU against last frame's boxes would swap somewhere.
        let swaps = (1..30).any(|i| {
            iou(&a(i - 1).bbox, &b(i).bbox) > iou(&a(i - 1).bbox, &a(i).bbox)
                && iou(&a(i - 1).bbox, &a(i).bbox) >= 0.3
        });
        assert!(swaps);

        let mut tr = Tracker::new(config());
        let (mut asg, mut ended) = (Assignment::new(), Ended::new());
        tr.update(&fs(&[a(0), b(0)]), at(0), &mut asg, &mut ended);
        let (ia, ib) = (asg[0].unwrap(), asg[1].unwrap());
        assert_ne!(ia, ib);
        for i in 1..30 {
            // Alternate the order so index order cannot help.
            if i & 1 == 0 {
                tr.update(&fs(&[a(i), b(i)]), at(i), &mut asg, &mut ended);
                assert_eq!(asg, [Some(ia), Some(ib)], "frame {i}");
            } else {
                tr.update(&fs(&[b(i), a(i)]), at(i), &mut asg, &mut ended);
                assert_eq!(asg, [Some(ib), Some(ia)], "frame {i}");
            }
            assert!(ended.is_empty());
        }
        assert_eq!(tr.tracks().len(), 2);
    }

    #[test]
    fn short_gap_keeps_id_long_gap_ends() {
        let mut tr = Tracker::new(config());
        let (mut asg, mut ended) = (Assignment::new(), Ended::new());
        let f = face(100.0, 100.0, 80.0);
        for i in 0..5 {
            tr.update(&fs(&[f]), at(i), &mut asg, &mut ended);
        }
        let id = asg[0].unwrap();
        // Gone for 0.7 s (< 1 s).
        for i in 5..12 {
            tr.update(&fs(&[]), at(i), &mut asg, &mut ended);
            assert!(ended.is_empty());
            assert!(asg.is_empty());
        }
        tr.update(&fs(&[f]), at(12), &mut asg, &mut ended);
        assert_eq!(asg, [Some(id)]);
        // Gone for 1.5 s (> 1 s): the old track ends once, the face comes back as a new id.
        let mut all_ended = Vec::new();
        for i in 13..27 {
            tr.update(&fs(&[]), at(i), &mut asg, &mut ended);
            all_ended.extend_from_slice(&ended);
        }
        tr.update(&fs(&[f]), at(27), &mut asg, &mut ended);
        all_ended.extend_from_slice(&ended);
        assert_eq!(all_ended, [id]);
        let new = asg[0].unwrap();
        assert!(new > id);
        assert!(tr.get(id).is_none());
        assert_eq!(tr.tracks().len(), 1);
    }

    #[test]
    fn max_tracks_and_dropped_count_ids_never_reused() {
        let cfg = TrackerConfig { max_tracks: 3, ..config() };
        let mut tr = Tracker::new(cfg);
        let (mut asg, mut ended) = (Assignment::new(), Ended::new());
        let dets: Vec<_> = (0..5).map(|i| face(100.0 * i as f32, 0.0, 50.0)).collect();
        tr.update(&fs(&dets), at(0), &mut asg, &mut ended);
        assert_eq!(asg, [Some(1), Some(2), Some(3), None, None]);
        assert_eq!(tr.dropped_detections(), 2);
        assert_eq!(tr.tracks().len(), 3);
        tr.update(&fs(&dets), at(1), &mut asg, &mut ended);
        assert_eq!(asg, [Some(1), Some(2), Some(3), None, None]);
        assert_eq!(tr.dropped_detections(), 4);
        // Everything ends; the same faces come back with fresh ids.
        tr.update(&fs(&[]), at(20), &mut asg, &mut ended);
        assert_eq!(ended, [1, 2, 3]);
        assert!(tr.tracks().is_empty());
        tr.update(&fs(&dets[..2]), at(21), &mut asg, &mut ended);
        assert_eq!(asg, [Some(4), Some(5)]);
        assert!(ended.is_empty());
        assert_eq!(tr.dropped_detections(), 4);
    }

    #[test]
    fn confirmed_after_min_hits() {
        let cfg = TrackerConfig { min_hits: 3, ..config() };
        let mut tr = Tracker::new(cfg);
        let (mut asg, mut ended) = (Assignment::new(), Ended::new());
        let f = face(0.0, 0.0, 50.0);
        for i in 0..5 {
            tr.update(&fs(&[f]), at(i), &mut asg, &mut ended);
            let t = tr.get(asg[0].unwrap()).unwrap();
            assert_eq!(t.hits, i + 1);
            assert_eq!(t.confirmed, i + 1 >= 3, "after {} hits", i + 1);
        }
        // A missed frame does not unconfirm.
        tr.update(&fs(&[]), at(5), &mut asg, &mut ended);
        assert!(tr.tracks()[0].confirmed);
    }

    #[test]
    fn frontality_frontal_turned_and_symmetric() {
        let f = face(0.0, 0.0, 112.0).kps;
        assert!(frontality(&f) > 0.95, "{}", frontality(&f));
        // Nose shifted to an eye's x: strongly turned.
        let mut left = f;
        left[2][0] = f[0][0];
        let mut right = f;
        right[2][0] = f[1][0];
        assert!(frontality(&left) < 0.5);
        assert!(frontality(&right) < 0.5);
        // Nose shifted the same amount either way scores the same.
        let mut l = f;
        l[2][0] -= 8.0;
        let mut r = f;
        r[2][0] += 8.0;
        let (fl, fr) = (frontality(&l), frontality(&r));
        assert!((fl - fr).abs() < 0.02, "{fl} {fr}");
        assert!(fl < frontality(&f) && fl > frontality(&left));
        // Mirror image of a turned face: same value.
        let mirror = |k: &Landmarks| {
            let m = |p: [f32; 2]| [112.0 - p[0], p[1]];
            [m(k[1]), m(k[0]), m(k[2]), m(k[4]), m(k[3])]
        };
        assert!((frontality(&mirror(&l)) - fl).abs() < 1e-4);
        // Tilted eye line and squashed eyes-to-mouth distance are penalised.
        let mut tilted = f;
        tilted[1][1] += 25.0;
        assert!(frontality(&tilted) < 0.9);
        let mut pitched = f;
        pitched[3][1] -= 20.0;
        pitched[4][1] -= 20.0;
        assert!(frontality(&pitched) < 0.6);
        assert_eq!(frontality(&[[5.0, 5.0]; 5]), 0.0);
    }

    fn crop(f: impl Fn(usize, usize) -> u8) -> AlignedFace {
        let mut c = AlignedFace { pixels: [0; CROP * CROP * 3] };
        for y in 0..CROP {
            for x in 0..CROP {
                let v = f(x, y);
                c.pixels[(y * CROP + x) * 3..][..3].copy_from_slice(&[v, v, v]);
            }
        }
        c
    }

    fn checker(x: usize, y: usize) -> u8 {
        if (x / 8 + y / 8) & 1 == 0 {
            230
        } else {
            20
        }
    }

    #[test]
    fn sharpness_flat_checker_blurred() {
        assert_eq!(sharpness(&crop(|_, _| 128)), 0.0);
        let sharp = sharpness(&crop(checker));
        // 5x5 box blur of the checkerboard.
        let blurred = sharpness(&crop(|x, y| {
            let mut s = 0u32;
            let mut n = 0u32;
            for yy in y.saturating_sub(2)..(y + 3).min(CROP) {
                for xx in x.saturating_sub(2)..(x + 3).min(CROP) {
                    s += u32::from(checker(xx, yy));
                    n += 1;
                }
            }
            (s / n) as u8
        }));
        assert!(sharp > 10.0 * blurred, "{sharp} {blurred}");
        assert!(blurred > 0.0);
    }

    #[test]
    fn quality_orders_and_bounds() {
        let small = face(0.0, 0.0, 40.0);
        let big = face(0.0, 0.0, 250.0);
        let (qs, qb) = (quality(&small, None), quality(&big, None));
        assert!(qb.score > qs.score);
        assert!(qb.score <= 1.0 && qs.score >= 0.0);
        assert_eq!(qs.sharpness, 0.0);
        let sharp = quality(&big, Some(&crop(checker)));
        let flat = quality(&big, Some(&crop(|_, _| 128)));
        assert!(sharp.score > flat.score);
        assert!(sharp.sharpness > 0.0 && (0.0..=1.0).contains(&sharp.score));
        assert!((sharp.eye_distance - big.eye_distance()).abs() < 1e-6);
    }

    #[test]
    fn best_quality_kept() {
        let mut tr = Tracker::new(config());
        let (mut asg, mut ended) = (Assignment::new(), Ended::new());
        let d0 = face(0.0, 0.0, 100.0);
        tr.update(&fs(&[d0]), at(0), &mut asg, &mut ended);
        let id = asg[0].unwrap();
        assert!(tr.get(id).unwrap().best.is_none());
        let q = |score| Quality { score, ..quality(&d0, None) };
        tr.offer(id, &d0, q(0.6));
        let d1 = face(2.0, 0.0, 100.0);
        tr.update(&fs(&[d1]), at(1), &mut asg, &mut ended);
        tr.offer(id, &d1, q(0.4));
        assert_eq!(tr.get(id).unwrap().best, Some((d0, q(0.6))));
        let d2 = face(4.0, 0.0, 100.0);
        tr.update(&fs(&[d2]), at(2), &mut asg, &mut ended);
        tr.offer(id, &d2, q(0.8));
        assert_eq!(tr.get(id).unwrap().best, Some((d2, q(0.8))));
        // Unknown ids are ignored.
        tr.offer(999, &d2, q(1.0));
        assert_eq!(tr.get(id).unwrap().best.unwrap().1.score, 0.8);
    }

    #[test]
    fn a_full_frame_fills_every_table_to_its_bound() {
        // MAX_FACES faces on a grid, MAX_TRACKS tracks allowed: every face gets a track, and
        // a second frame of the same faces keeps every id (every pair fits).
        let cfg = TrackerConfig { max_tracks: MAX_TRACKS, ..config() };
        let mut tr = Tracker::new(cfg);
        let (mut asg, mut ended) = (Assignment::new(), Ended::new());
        let grid = |dx: f32| -> Faces {
            (0..MAX_FACES)
                .map(|k| face(70.0 * (k % 8) as f32 + dx, 70.0 * (k / 8) as f32, 60.0))
                .collect()
        };
        tr.update(&grid(0.0), at(0), &mut asg, &mut ended);
        let first: Vec<_> = asg.iter().map(|a| a.unwrap()).collect();
        assert_eq!(first.len(), MAX_TRACKS.min(MAX_FACES));
        tr.update(&grid(2.0), at(1), &mut asg, &mut ended);
        assert_eq!(asg.iter().map(|a| a.unwrap()).collect::<Vec<_>>(), first);
        assert_eq!(tr.dropped_detections(), 0);
        // A config asking for more than MAX_TRACKS gets MAX_TRACKS.
        let big = Tracker::new(TrackerConfig { max_tracks: 1000, ..config() });
        assert_eq!(big.config().max_tracks, MAX_TRACKS);
    }
}
