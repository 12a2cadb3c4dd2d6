//! The access decision per track: a person is granted when `votes` of the last `window`
//! embeddings of one track name the same enrolled person, each above the similarity threshold
//! of that face's size band and ahead of the second-best person by the margin. A track whose
//! window fills without such a majority is reported unknown (once; it may still be granted
//! later, when the person turns to the camera). A person granted within the cooldown is not
//! granted again (a track lost and found again does not pulse the door twice).
//!
//!
//! With liveness on, each vote for a person also carries the live score of that face (checked
//! by the loop only for such votes). Only the votes that confirm the decision count: the
//! `votes` most recent agreeing votes whose face was at or past the approach gate
//! (`min_face_height_pct`). A person is granted when all `votes` of those are in the window, at
//! least `passes` of them passed **and the deciding face (the newest) passed itself**; far
//! votes help to establish who it is but never carry the liveness check (before, any `passes`
//! of the whole window could pass, so live scores `[0.9, 0.1, 0.1, 0.9, 0.1]` with only the
//! last face near were granted, and a photo moved back and forth across the gate could retry
//! until two near frames scored well). While fewer than `votes` near votes agree, or the
//! deciding face failed but the rest could still carry the check, the decision waits. When `votes` near agreeing votes are in and fewer than
//! `passes` passed, the track is reported [`Verdict::SpoofSuspected`] once and never granted
//! (the person leaves the view and comes back as a new track to try again).
//!
//! Must not: read clocks, run models, or allocate per vote: per-track state lives in a fixed
//! ring of `MAX_WINDOW` votes, in a fixed-capacity table of [`MAX_TRACKS`] tracks (the
//! tracker's bound; a vote that finds the table full is dropped and logged, never a grant).

use std::time::Duration;

use crate::gallery::PersonId;
use crate::track::{TrackId, MAX_TRACKS};

/// Longest vote window.
pub const MAX_WINDOW: usize = 16;

/// How much later a track is due for an embedding per vote its leading person lacks for a
/// grant ([`Decider::embed_due`]): three frames of a 30 fps camera.
pub const EMBED_ORDER_STEP: Duration = Duration::from_millis(100);

/// The most votes any one person has in `votes`.
fn leading_votes(votes: &[Vote]) -> usize {
    votes
        .iter()
        .filter_map(|v| match *v {
            Vote::Person { person, .. } => Some(person),
            Vote::Nobody => None,
        })
        .map(|p| {
            votes
                .iter()
                .filter(|v| matches!(v, Vote::Person { person, .. } if *person == p))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Similarity threshold for faces at least `min_eye_px` apart at the eyes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeBand {
    /// Smallest eye distance (pixels) of the band.
    pub min_eye_px: f32,
    /// Cosine similarity a vote needs in this band.
    pub threshold: f32,
}

/// Raises the thresholds with the number of people enrolled, so that the false-positive
/// identification rate stays put as the gallery grows (issue 19). A stranger searched against
/// N people gets N chances: with a per-comparison false-accept rate FAR, FPIR ≈ N · FAR. The
/// bands hold `bands_far` per comparison; holding `fpir` per search at N people needs a FAR
/// of `fpir / N`, which lies `log10(N · bands_far / fpir)` decades further out in the
/// impostor tail, each decade `rise` higher (measured per model by `portier eval identify`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GalleryRule {
    /// False-positive identification rate per search to hold.
    pub fpir: f32,
    /// The per-comparison false-accept rate the bands were chosen at (`calibrate`: 1e-3).
    pub bands_far: f32,
    /// Threshold rise per tenfold more people for the CPU recognizer.
    pub cpu_rise: f32,
    /// The same for the NPU's model.
    pub npu_rise: f32,
}

impl GalleryRule {
    /// What to add to a band's threshold with `people` enrolled, for a model rising `rise`
    /// per decade: `rise · log10(people · bands_far / fpir)`, never below 0 (a small gallery
    /// keeps the bands).
    pub fn lift(&self, rise: f32, people: usize) -> f32 {
        if people == 0 {
            return 0.0;
        }
        (rise * (people as f32 * self.bands_far / self.fpir).log10()).max(0.0)
    }
}

/// How liveness scores take part in a grant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessPolicy {
    /// A check passes at this live score or above.
    pub threshold: f32,
    /// Passing checks needed among the votes that confirmed the identity (K).
    pub passes: usize,
}

/// Decision settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionConfig {
    /// Votes for one person needed to grant (N).
    pub votes: usize,
    /// Votes considered (M, the last M embeddings of the track).
    pub window: usize,
    /// Thresholds by face size for embeddings of the CPU recognizer, ascending by `min_eye_px`;
    /// the first band starts at `min_eye_px` of the faces that are embedded at all.
    pub bands: Vec<SizeBand>,
    /// Thresholds by face size for embeddings of the NPU's model (empty: `bands`). Each
    /// embedding space has its own similarity scale: a CPU embedding judged against the NPU
    /// model's thresholds (after a fallback, or below the norm cliff) would admit the CPU
    /// model's impostors wherever its scale sits higher (issue 16).
    pub npu_bands: Vec<SizeBand>,
    /// Lead over the second-best person a vote needs.
    pub margin: f32,
    /// A person granted less than this ago is not granted again.
    pub cooldown: Duration,
    /// Approach distance: a person is granted only once their face box is at least this tall,
    /// in percent of the frame height (0 = any size). A face's height, unlike its eye
    /// distance, does not shrink when the head turns, so it tells how close the person is;
    /// set it from the camera's mounting so the door opens when they are at it, not when they
    /// are still walking up (or just passing by).
    pub min_face_height_pct: f32,
    /// A granted track keeps being checked this often: when its face no longer matches the
    /// granted person (the tracker handed the track to someone else: a scene cut, a person
    /// passing in front), the track starts over and is decided again.
    pub recheck: Duration,
    /// Liveness: `None` grants on identity alone.
    pub liveness: Option<LivenessPolicy>,
    /// The gallery-size rule: `None` keeps the bands at any size.
    pub gallery: Option<GalleryRule>,
}

impl DecisionConfig {
    /// One band at `threshold` for every size, 3 of 5 votes, 10 s cooldown.
    pub fn single(threshold: f32, margin: f32) -> Self {
        Self {
            votes: 3,
            window: 5,
            bands: vec![SizeBand { min_eye_px: 0.0, threshold }],
            margin,
            cooldown: Duration::from_secs(10),
            recheck: Duration::from_millis(200),
            min_face_height_pct: 0.0,
            liveness: None,
            npu_bands: Vec::new(),
            gallery: None,
        }
    }

    /// Checks the settings; the error starts with the offending field's name.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(format!("window is {}, must be 1..={MAX_WINDOW}", self.window));
        }
        if self.votes == 0 || self.votes > self.window {
            return Err(format!("votes is {}, must be 1..=window ({})", self.votes, self.window));
        }
        if self.votes * 2 <= self.window {
            return Err(format!(
                "votes is {}, must be a majority of window ({}): two people could both win",
                self.votes, self.window
            ));
        }
        if self.bands.is_empty() {
            return Err("bands must hold at least one band".into());
        }
        for (name, bands) in [("bands", &self.bands), ("npu_bands", &self.npu_bands)] {
            for (i, band) in bands.iter().enumerate() {
                if !(band.threshold > -1.0 && band.threshold <= 1.0) {
                    return Err(format!(
                        "{name}[{i}].threshold {} is not in (-1, 1]",
                        band.threshold
                    ));
                }
                if !(band.min_eye_px >= 0.0 && band.min_eye_px.is_finite()) {
                    return Err(format!("{name}[{i}].min_eye_px {} is not >= 0", band.min_eye_px));
                }
                if i > 0 && band.min_eye_px <= bands[i - 1].min_eye_px {
                    return Err(format!(
                        "{name}[{i}].min_eye_px must be above the previous band's"
                    ));
                }
            }
        }
        if !(0.0..=100.0).contains(&self.min_face_height_pct) {
            return Err(format!(
                "min_face_height_pct {} is not in [0, 100]",
                self.min_face_height_pct
            ));
        }
        if !(0.0..=2.0).contains(&self.margin) {
            return Err(format!("margin {} is not in [0, 2]", self.margin));
        }
        if let Some(l) = self.liveness {
            if l.passes == 0 || l.passes > self.votes {
                return Err(format!("liveness passes {} must be in 1..=votes", l.passes));
            }
        }
        if let Some(g) = self.gallery {
            for (name, v, range) in [
                ("fpir", g.fpir, 1e-9..=0.5),
                ("bands_far", g.bands_far, 1e-9..=0.5),
                ("cpu_rise", g.cpu_rise, 0.0..=0.5),
                ("npu_rise", g.npu_rise, 0.0..=0.5),
            ] {
                if !range.contains(&v) {
                    return Err(format!("gallery {name} {v} is not in {range:?}"));
                }
            }
        }
        Ok(())
    }

    /// The CPU recognizer's threshold for a face `eye_px` apart at the eyes (the first band's
    /// below it).
    pub fn threshold_for(&self, eye_px: f32) -> f32 {
        self.threshold_in(Space::Cpu, eye_px)
    }

    /// The threshold for an embedding of `space` of a face `eye_px` apart at the eyes.
    pub fn threshold_in(&self, space: Space, eye_px: f32) -> f32 {
        let bands = match space {
            Space::Npu if !self.npu_bands.is_empty() => &self.npu_bands,
            _ => &self.bands,
        };
        bands
            .iter()
            .rev()
            .find(|b| eye_px >= b.min_eye_px)
            .or(bands.first())
            .map_or(1.0, |b| b.threshold)
    }
}

/// Which model's embedding space a similarity was measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The CPU recognizer (float32), also for every fallback from the NPU.
    Cpu,
    /// The NPU's model.
    Npu,
}

/// How big a face is in the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceSize {
    /// Eye distance in pixels (the recognition-quality signal: thresholds by band).
    pub eye_px: f32,
    /// Face box height in percent of the frame height (the approach-distance signal).
    pub height_pct: f32,
}

impl FaceSize {
    /// A face `eye_px` apart at the eyes, of any height (tests).
    pub fn eyes(eye_px: f32) -> Self {
        Self { eye_px, height_pct: 100.0 }
    }
}

/// What one embedding said, after the threshold and margin of its band.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Vote {
    /// A person.
    Person {
        /// Gallery person index.
        person: usize,
        /// The similarity.
        similarity: f32,
        /// The face's live score (NaN when not checked or the check failed to run).
        live: f32,
        /// The face was at or past the approach gate.
        near: bool,
    },
    /// Nobody.
    Nobody,
}

/// A decision reached for a track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Open the door for this person.
    Granted {
        /// The track.
        track: TrackId,
        /// Gallery index of the person (see [`crate::gallery::Matcher::person_name`]).
        person_index: usize,
        /// Gallery id of the person.
        person: PersonId,
        /// Mean similarity of the agreeing votes.
        similarity: f32,
        /// Agreeing votes.
        votes: usize,
        /// Mean live score of the agreeing votes (`None` without liveness).
        liveness: Option<f32>,
    },
    /// The identity is confirmed but too few of its votes passed the liveness check: a photo
    /// or screen of an enrolled person is suspected. The door stays locked.
    SpoofSuspected {
        /// The track.
        track: TrackId,
        /// Gallery index of the person shown.
        person_index: usize,
        /// Gallery id of the person shown.
        person: PersonId,
        /// Mean similarity of the agreeing votes.
        similarity: f32,
        /// Mean live score of the agreeing votes (NaN when no check ran).
        liveness: f32,
        /// Agreeing votes whose check passed.
        passes: usize,
        /// Agreeing votes.
        votes: usize,
    },
    /// The person would be granted, but was granted less than the cooldown ago.
    CoolingDown {
        /// The track.
        track: TrackId,
        /// Gallery id of the person.
        person: PersonId,
    },
    /// The window filled without a majority for anyone.
    Unknown {
        /// The track.
        track: TrackId,
        /// Best similarity seen in the window (to anyone), NaN when the gallery is empty.
        best_similarity: f32,
    },
}

#[derive(Debug, Clone, Copy)]
struct TrackVotes {
    track: TrackId,
    votes: [Vote; MAX_WINDOW],
    /// Similarity of the best candidate per vote, for the unknown report.
    best: [f32; MAX_WINDOW],
    len: usize,
    next: usize,
    /// The person the track was granted as (person index), while decided.
    decided_as: Option<usize>,
    decided: bool,
    unknown_reported: bool,
    tailgate_reported: bool,
    /// Reported as a suspected spoof: never granted, no more votes wanted.
    spoofed: bool,
    last_vote: Duration,
    /// When the loop last picked the track for an embedding (vote or not).
    last_attempt: Duration,
}

/// Votes of every live track. See the module documentation.
#[derive(Debug)]
pub struct Decider {
    config: DecisionConfig,
    /// What the gallery-size rule adds to the bands, per [`Space`] (CPU, NPU).
    lift: [f32; 2],
    /// Boxed: 64 tracks of 16 votes, about 30 KiB, allocated once.
    tracks: Box<heapless::Vec<TrackVotes, MAX_TRACKS>>,
    /// Last grant time per person (bounded by the number of people seen granted).
    granted_at: Vec<(PersonId, Duration)>,
    /// Per person in a window (scratch of `vote`): a window names at most `MAX_WINDOW`.
    people: heapless::Vec<Tally, MAX_WINDOW>,
}

/// One person's votes in a track's window.
#[derive(Debug, Clone, Copy)]
struct Tally {
    /// Gallery person index.
    person: usize,
    /// Votes for them.
    votes: usize,
    /// Sum of those votes' similarities.
    similarity_sum: f32,
}

impl Decider {
    /// A decider with no votes, for up to [`MAX_TRACKS`] live tracks.
    pub fn new(config: DecisionConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(Self {
            config,
            lift: [0.0; 2],
            tracks: Box::default(),
            granted_at: Vec::with_capacity(64),
            people: heapless::Vec::new(),
        })
    }

    /// The table index of `track`, a fresh entry if it has none; `None` when the table is full
    /// (more live tracks than the tracker keeps: cannot happen while the loop ends the tracks
    /// the tracker ends, and if it does the vote is dropped, never granted).
    fn slot(&mut self, track: TrackId) -> Option<usize> {
        if let Some(i) = self.tracks.iter().position(|t| t.track == track) {
            return Some(i);
        }
        match self.tracks.push(Self::fresh(track)) {
            Ok(()) => Some(self.tracks.len() - 1),
            Err(_) => {
                log::warn!(
                    "track {track}: {MAX_TRACKS} tracks already hold votes; this vote is dropped"
                );
                None
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &DecisionConfig {
        &self.config
    }

    /// Tells the gallery-size rule how many people are enrolled for each model (after the
    /// gallery is loaded or changed); without a rule, nothing changes.
    pub fn set_people(&mut self, cpu: usize, npu: usize) {
        if let Some(g) = self.config.gallery {
            self.lift = [g.lift(g.cpu_rise, cpu), g.lift(g.npu_rise, npu)];
        }
    }

    /// The threshold a vote of `space` needs for a face `eye_px` apart at the eyes: its band,
    /// raised by the gallery-size rule.
    pub fn threshold(&self, space: Space, eye_px: f32) -> f32 {
        let lift = match space {
            Space::Cpu => self.lift[0],
            Space::Npu => self.lift[1],
        };
        self.config.threshold_in(space, eye_px) + lift
    }

    /// Whether `track` wants an embedding at `now`: always before it is granted, every
    /// `recheck` after.
    pub fn wants(&self, track: TrackId, now: Duration) -> bool {
        self.tracks.iter().find(|t| t.track == track).is_none_or(|t| {
            !t.spoofed && (!t.decided || now.saturating_sub(t.last_vote) >= self.config.recheck)
        })
    }

    /// Whether a face of `track` with these best two matches and this size would be a vote
    /// for a person that could lead to a grant, so its liveness should be checked: liveness is
    /// on, the match clears the threshold and margin, and the track is undecided (or, granted,
    /// the vote names someone else).
    pub fn wants_liveness(
        &self,
        track: TrackId,
        best: Option<(usize, f32)>,
        second: Option<(usize, f32)>,
        eye_px: f32,
    ) -> bool {
        self.wants_liveness_in(Space::Cpu, track, best, second, eye_px)
    }

    /// [`Decider::wants_liveness`] for a match measured in `space`.
    pub fn wants_liveness_in(
        &self,
        space: Space,
        track: TrackId,
        best: Option<(usize, f32)>,
        second: Option<(usize, f32)>,
        eye_px: f32,
    ) -> bool {
        if self.config.liveness.is_none() {
            return false;
        }
        let vote = self.counts(space, best, second, eye_px);
        match self.tracks.iter().find(|t| t.track == track) {
            Some(t) if t.spoofed => false,
            // Re-checks of a granted track: a vote for someone else may reopen the track and
            // then counts towards that person's grant, so it needs its check too.
            Some(t) if t.decided => vote.is_some_and(|(p, _)| Some(p) != t.decided_as),
            _ => vote.is_some(),
        }
    }

    /// The person a match votes for, after the threshold of its space's size band and the
    /// margin.
    fn counts(
        &self,
        space: Space,
        best: Option<(usize, f32)>,
        second: Option<(usize, f32)>,
        eye_px: f32,
    ) -> Option<(usize, f32)> {
        let threshold = self.threshold(space, eye_px);
        best.filter(|&(_, s)| {
            s >= threshold && second.is_none_or(|(_, s2)| s - s2 >= self.config.margin)
        })
    }

    /// When `track` is due for an embedding, for a frame with more faces wanting one than
    /// `max_embeds_per_frame`: the loop embeds the earliest first. A track is due at its last
    /// vote or its last attempt ([`Decider::attempted`]: an embedding that gave no vote, for a
    /// crop that failed alignment or quality, counts too), or, with neither, at `first_seen`
    /// (when it came into view); plus [`EMBED_ORDER_STEP`] for each vote it still lacks for a
    /// decision: a grant (its leading person's votes short of `votes`) or, not yet reported, an
    /// unknown face (its window's empty slots), whichever is nearer, and at least one. So the
    /// face nearest to a decision goes first (one vote short of a grant, it is due two steps
    /// before a face with no vote yet), every pick moves a track back (a face whose embedding
    /// keeps failing, or whose majority waits for the approach gate, cannot hold the budget),
    /// and a face kept waiting comes up at most `votes` steps later than it would alone. A
    /// granted track's re-check is due one step after its last: a track handed to someone else
    /// is found out first.
    pub fn embed_due(&self, track: TrackId, first_seen: Duration) -> Duration {
        let votes = self.config.votes;
        let (since, missing) = match self.tracks.iter().find(|t| t.track == track) {
            Some(t) if t.decided => (t.last_vote.max(t.last_attempt), 1),
            Some(t) if t.len == 0 => (first_seen.max(t.last_attempt), votes),
            Some(t) => {
                let grant = votes.saturating_sub(leading_votes(&t.votes[..t.len]));
                let unknown =
                    if t.unknown_reported { usize::MAX } else { self.config.window - t.len };
                (t.last_vote.max(t.last_attempt), grant.min(unknown))
            }
            None => (first_seen, votes),
        };
        let missing = u32::try_from(missing.clamp(1, votes.max(1))).unwrap_or(u32::MAX);
        since.saturating_add(EMBED_ORDER_STEP.saturating_mul(missing))
    }

    /// Notes that the loop picked `track` for an embedding at `now`, whatever comes of it
    /// (see [`Decider::embed_due`]). A full track table drops the note (logged by the vote
    /// that would find it full).
    pub fn attempted(&mut self, track: TrackId, now: Duration) {
        let i = match self.tracks.iter().position(|t| t.track == track) {
            Some(i) => i,
            None => match self.tracks.push(Self::fresh(track)) {
                Ok(()) => self.tracks.len() - 1,
                Err(_) => return,
            },
        };
        self.tracks[i].last_attempt = now;
    }

    /// Forgets tracks that ended.
    pub fn end_tracks(&mut self, ended: &[TrackId]) {
        self.tracks.retain(|t| !ended.contains(&t.track));
    }

    /// Forgets every vote (the gallery changed: person indices mean something else now).
    pub fn reset(&mut self) {
        self.tracks.clear();
    }

    /// Marks `track` as reported for tailgating; true the first time.
    pub fn report_tailgate(&mut self, track: TrackId) -> bool {
        // A full table (see `slot`): reported, if again on the next frame.
        let Some(i) = self.slot(track) else { return true };
        let t = &mut self.tracks[i];
        let first = !t.tailgate_reported;
        t.tailgate_reported = true;
        first
    }

    /// Whether `track` was granted.
    pub fn granted(&self, track: TrackId) -> bool {
        self.tracks.iter().any(|t| t.track == track && t.decided)
    }

    fn fresh(track: TrackId) -> TrackVotes {
        TrackVotes {
            track,
            votes: [Vote::Nobody; MAX_WINDOW],
            best: [f32::NAN; MAX_WINDOW],
            len: 0,
            next: 0,
            decided_as: None,
            decided: false,
            unknown_reported: false,
            tailgate_reported: false,
            spoofed: false,
            last_vote: Duration::ZERO,
            last_attempt: Duration::ZERO,
        }
    }

    /// Records one embedding of `track`: `best` and `second` are (person index, similarity)
    /// from [`crate::gallery::Matcher::best_two_indices`], `person_id` maps an index to its
    /// gallery id, `face` is the face's size. Returns a verdict when one is reached. Without
    /// a liveness score: see [`Decider::vote_checked`].
    pub fn vote(
        &mut self,
        track: TrackId,
        best: Option<(usize, f32)>,
        second: Option<(usize, f32)>,
        face: FaceSize,
        person_id: impl Fn(usize) -> PersonId,
        now: Duration,
    ) -> Option<Verdict> {
        self.vote_checked(track, best, second, face, None, person_id, now)
    }

    /// [`Decider::vote`] with the face's live score (`None`: not checked, which fails the
    /// check when liveness is on).
    #[allow(clippy::too_many_arguments)]
    pub fn vote_checked(
        &mut self,
        track: TrackId,
        best: Option<(usize, f32)>,
        second: Option<(usize, f32)>,
        face: FaceSize,
        live: Option<f32>,
        person_id: impl Fn(usize) -> PersonId,
        now: Duration,
    ) -> Option<Verdict> {
        self.vote_in(Space::Cpu, track, best, second, face, live, person_id, now)
    }

    /// [`Decider::vote_checked`] for a match measured in `space`: judged against that space's
    /// thresholds.
    #[allow(clippy::too_many_arguments)]
    pub fn vote_in(
        &mut self,
        space: Space,
        track: TrackId,
        best: Option<(usize, f32)>,
        second: Option<(usize, f32)>,
        face: FaceSize,
        live: Option<f32>,
        person_id: impl Fn(usize) -> PersonId,
        now: Duration,
    ) -> Option<Verdict> {
        let eye_px = face.eye_px;
        let near = face.height_pct >= self.config.min_face_height_pct;
        let vote = match self.counts(space, best, second, eye_px) {
            Some((person, similarity)) => {
                Vote::Person { person, similarity, live: live.unwrap_or(f32::NAN), near }
            }
            None => Vote::Nobody,
        };
        let liveness = self.config.liveness;
        let slot = self.slot(track)?;
        let window = self.config.window;
        let t = &mut self.tracks[slot];
        if t.spoofed {
            return None;
        }
        t.votes[t.next] = vote;
        t.best[t.next] = best.map_or(f32::NAN, |b| b.1);
        t.next = (t.next + 1) % window;
        t.len = (t.len + 1).min(window);
        t.last_vote = now;
        if t.decided {
            // Re-checks since the grant: a full window in which the granted person no longer
            // has a majority means the track now follows someone else.
            let still = t.votes[..t.len]
                .iter()
                .filter(
                    |v| matches!(v, Vote::Person { person, .. } if Some(*person) == t.decided_as),
                )
                .count();
            if t.len < window || still >= self.config.votes {
                return None;
            }
            log::info!("track {track}: the face no longer matches the person it was granted as");
            t.decided = false;
            t.decided_as = None;
            t.unknown_reported = false;
            t.tailgate_reported = false;
        }

        // Count votes per person in the window: identity from every vote, near or far.
        self.people.clear();
        for v in &t.votes[..t.len] {
            if let Vote::Person { person, similarity, .. } = *v {
                match self.people.iter_mut().find(|e| e.person == person) {
                    Some(e) => {
                        e.votes += 1;
                        e.similarity_sum += similarity;
                    }
                    None => {
                        // Cannot fail: a window of at most MAX_WINDOW votes.
                        let _ = self.people.push(Tally {
                            person,
                            votes: 1,
                            similarity_sum: similarity,
                        });
                    }
                }
            }
        }
        let majority = self.people.iter().find(|e| e.votes >= self.config.votes).copied();
        // The deciding face is this one: it must be near and vote for the majority's person.
        let deciding = match vote {
            Vote::Person { person, .. } if near => Some(person),
            _ => None,
        };
        if let Some(Tally { person: p, votes: n, similarity_sum: sum }) =
            majority.filter(|m| deciding == Some(m.person))
        {
            let mut live_mean = f32::NAN;
            if let Some(policy) = liveness {
                let c = confirming(t, window, p, self.config.votes, policy.threshold);
                live_mean = c.mean();
                let deciding_passed = live.is_some_and(|l| l >= policy.threshold);
                if c.count == self.config.votes && c.passes < policy.passes {
                    // Every confirming vote is in and too few passed: the check cannot be met.
                    t.spoofed = true;
                    return Some(Verdict::SpoofSuspected {
                        track,
                        person_index: p,
                        person: person_id(p),
                        similarity: sum / n as f32,
                        liveness: live_mean,
                        passes: c.passes,
                        votes: c.count,
                    });
                }
                if c.count < self.config.votes || c.passes < policy.passes || !deciding_passed {
                    // Fewer than `votes` near faces agree yet (a photo moved back and forth
                    // across the approach gate never gets them all into one window), or the
                    // deciding face itself failed while the others could still carry the
                    // check: wait for the next face.
                    return None;
                }
            }
            t.decided = true;
            t.decided_as = Some(p);
            // Re-checks start from an empty window.
            t.len = 0;
            t.next = 0;
            let person = person_id(p);
            let cooling = self
                .granted_at
                .iter()
                .find(|g| g.0 == person)
                .is_some_and(|g| now.saturating_sub(g.1) < self.config.cooldown);
            if cooling {
                return Some(Verdict::CoolingDown { track, person });
            }
            match self.granted_at.iter_mut().find(|g| g.0 == person) {
                Some(g) => g.1 = now,
                None => self.granted_at.push((person, now)),
            }
            return Some(Verdict::Granted {
                track,
                person_index: p,
                person,
                similarity: sum / n as f32,
                votes: n,
                liveness: liveness.map(|_| live_mean),
            });
        }
        // Recognised but still too far away is not unknown: the grant waits for the approach.
        if t.len == window && !t.unknown_reported && majority.is_none() {
            t.unknown_reported = true;
            let best_similarity =
                t.best[..t.len].iter().copied().filter(|s| !s.is_nan()).fold(f32::NAN, f32::max);
            return Some(Verdict::Unknown { track, best_similarity });
        }
        None
    }
}

/// The liveness side of the votes that confirm a decision for one person.
#[derive(Debug, Clone, Copy, Default)]
struct Confirming {
    /// Confirming votes found (at most the `votes` asked for).
    count: usize,
    /// Of those, how many passed the live threshold.
    passes: usize,
    /// Sum of their finite live scores, and how many were finite.
    score_sum: f32,
    scored: usize,
}

impl Confirming {
    /// Mean live score of the confirming votes (NaN when no check ran).
    fn mean(&self) -> f32 {
        if self.scored > 0 {
            self.score_sum / self.scored as f32
        } else {
            f32::NAN
        }
    }
}

/// The up to `votes` most recent votes of `t` for `person` whose face was near (at or past the
/// approach gate), newest first: the votes that confirm a decision.
fn confirming(
    t: &TrackVotes,
    window: usize,
    person: usize,
    votes: usize,
    threshold: f32,
) -> Confirming {
    let mut c = Confirming::default();
    for back in 1..=t.len {
        let slot = (t.next + window - back) % window;
        if let Vote::Person { person: p, live, near: true, .. } = t.votes[slot] {
            if p != person {
                continue;
            }
            c.count += 1;
            c.passes += usize::from(live >= threshold);
            if live.is_finite() {
                c.score_sum += live;
                c.scored += 1;
            }
            if c.count == votes {
                break;
            }
        }
    }
    c
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn decider() -> Decider {
        let mut c = DecisionConfig::single(0.4, 0.05);
        c.bands = vec![
            SizeBand { min_eye_px: 0.0, threshold: 0.5 },
            SizeBand { min_eye_px: 30.0, threshold: 0.4 },
        ];
        Decider::new(c).unwrap()
    }

    fn id(i: usize) -> PersonId {
        100 + i as PersonId
    }

    /// Issue 19: more people enrolled, higher thresholds, each model by its own rise.
    #[test]
    fn the_gallery_rule_raises_thresholds_with_the_people_enrolled() {
        let mut c = DecisionConfig::single(0.3, 0.05);
        c.gallery =
            Some(GalleryRule { fpir: 0.01, bands_far: 1e-3, cpu_rise: 0.05, npu_rise: 0.04 });
        let mut d = Decider::new(c).unwrap();
        let mut last = 0.0;
        for (n, cpu, npu) in [
            (0, 0.3, 0.3),
            (1, 0.3, 0.3),
            (10, 0.3, 0.3),
            (100, 0.35, 0.34),
            (1000, 0.4, 0.38),
            (100_000, 0.5, 0.46),
        ] {
            d.set_people(n, n);
            let (t, u) = (d.threshold(Space::Cpu, 50.0), d.threshold(Space::Npu, 50.0));
            assert!((t - cpu).abs() < 1e-5 && (u - npu).abs() < 1e-5, "{n}: {t} {u}");
            assert!(t >= last);
            last = t;
        }
        // Without a rule the people do not matter.
        let mut plain = Decider::new(DecisionConfig::single(0.3, 0.05)).unwrap();
        plain.set_people(100_000, 100_000);
        assert_eq!(plain.threshold(Space::Cpu, 50.0), 0.3);
    }

    /// A vote of a track beyond the table's bound is dropped: it never grants; ending a track
    /// makes room again.
    #[test]
    fn a_full_vote_table_drops_the_vote_and_never_grants() {
        let mut c = DecisionConfig::single(0.4, 0.05);
        (c.votes, c.window) = (1, 1);
        let mut d = Decider::new(c).unwrap();
        let yes = Some((0, 0.9));
        for t in 0..MAX_TRACKS as TrackId {
            // Votes for nobody: the tracks hold slots, reported unknown.
            let v = d.vote(t, None, None, FaceSize::eyes(40.0), id, S);
            assert!(matches!(v, Some(Verdict::Unknown { .. })), "{v:?}");
        }
        let extra = MAX_TRACKS as TrackId;
        assert_eq!(d.vote(extra, yes, None, FaceSize::eyes(40.0), id, S), None);
        assert!(!d.granted(extra));
        d.end_tracks(&[0]);
        assert!(matches!(
            d.vote(extra, yes, None, FaceSize::eyes(40.0), id, S),
            Some(Verdict::Granted { .. })
        ));
    }

    #[test]
    fn three_of_five_grants_once() {
        let mut d = decider();
        let yes = Some((0, 0.6));
        assert_eq!(d.vote(1, yes, None, FaceSize::eyes(40.0), id, S), None);
        assert_eq!(d.vote(1, Some((1, 0.3)), None, FaceSize::eyes(40.0), id, S), None);
        assert_eq!(d.vote(1, yes, None, FaceSize::eyes(40.0), id, S), None);
        let v = d.vote(1, yes, None, FaceSize::eyes(40.0), id, S).unwrap();
        assert_eq!(
            v,
            Verdict::Granted {
                track: 1,
                person_index: 0,
                person: 100,
                similarity: 0.6,
                votes: 3,
                liveness: None
            }
        );
        assert!(!d.wants(1, S));
        assert!(d.wants(1, 2 * S), "re-checked after a grant");
        assert_eq!(d.vote(1, yes, None, FaceSize::eyes(40.0), id, S), None);
    }

    #[test]
    fn size_band_threshold_applies() {
        let mut d = decider();
        // 0.45 passes the 30 px band (0.4) but not the small band (0.5).
        for _ in 0..5 {
            assert!(!matches!(
                d.vote(1, Some((0, 0.45)), None, FaceSize::eyes(20.0), id, S),
                Some(Verdict::Granted { .. })
            ));
        }
        let mut granted = None;
        for _ in 0..3 {
            granted = d.vote(2, Some((0, 0.45)), None, FaceSize::eyes(35.0), id, S);
        }
        assert!(matches!(granted, Some(Verdict::Granted { .. })));
        assert_eq!(d.config().threshold_for(5.0), 0.5);
    }

    #[test]
    fn margin_blocks_look_alikes() {
        let mut d = decider();
        for _ in 0..4 {
            assert!(!matches!(
                d.vote(1, Some((0, 0.7)), Some((1, 0.68)), FaceSize::eyes(40.0), id, S),
                Some(Verdict::Granted { .. })
            ));
        }
    }

    #[test]
    fn the_face_nearest_to_a_decision_is_embedded_first_and_nobody_waits_for_ever() {
        let mut d = decider();
        let ms = Duration::from_millis;
        let face = FaceSize::eyes(40.0);
        // Track 1: two votes for person 0, the last at 1.0 s. Track 2: one vote for nobody
        // at 0.9 s. Track 3: seen since 0.95 s, never embedded.
        d.vote(1, Some((0, 0.6)), None, face, id, ms(900));
        d.vote(1, Some((0, 0.6)), None, face, id, ms(1000));
        d.vote(2, Some((0, 0.1)), None, face, id, ms(900));
        let due = |d: &Decider, t| d.embed_due(t, ms(950));
        // One vote short of a grant: due one step after its last vote, before the others.
        assert_eq!(due(&d, 1), ms(1000) + EMBED_ORDER_STEP);
        assert_eq!(due(&d, 2), ms(900) + 3 * EMBED_ORDER_STEP);
        assert_eq!(due(&d, 3), ms(950) + 3 * EMBED_ORDER_STEP);
        assert!(due(&d, 1) < due(&d, 2) && due(&d, 2) < due(&d, 3));
        // A track that has waited `votes` steps longer goes before the nearest one.
        d.vote(1, Some((0, 0.1)), None, face, id, ms(1400));
        assert!(due(&d, 2) < due(&d, 1));
        // Four votes in a window of five, no majority: one short of an unknown report.
        for t in [2000, 2100, 2200] {
            d.vote(2, Some((1, 0.1)), None, face, id, ms(t));
        }
        assert_eq!(due(&d, 2), ms(2200) + EMBED_ORDER_STEP);
        // Granted: a re-check is due one step after the last.
        for t in [3000, 3100, 3200] {
            d.vote(4, Some((0, 0.6)), None, face, id, ms(t));
        }
        assert!(d.granted(4));
        assert_eq!(due(&d, 4), ms(3200) + EMBED_ORDER_STEP);
        // A pick that gave no vote (the crop failed quality) moves the track back all the same:
        // a face whose embedding keeps failing cannot hold the budget.
        assert_eq!(due(&d, 5), ms(950) + 3 * EMBED_ORDER_STEP);
        d.attempted(5, ms(4000));
        assert_eq!(due(&d, 5), ms(4000) + 3 * EMBED_ORDER_STEP);
        d.attempted(2, ms(4000));
        assert_eq!(due(&d, 2), ms(4000) + EMBED_ORDER_STEP);
        // A majority that waits for the approach gate lacks no vote, and still waits a step.
        let far = FaceSize { eye_px: 40.0, height_pct: 5.0 };
        let mut gated = Decider::new({
            let mut c = DecisionConfig::single(0.4, 0.05);
            c.min_face_height_pct = 20.0;
            c
        })
        .unwrap();
        for t in [5000, 5100, 5200] {
            assert_eq!(gated.vote(6, Some((0, 0.6)), None, far, id, ms(t)), None);
        }
        assert_eq!(gated.embed_due(6, ms(4900)), ms(5200) + EMBED_ORDER_STEP);
    }

    #[test]
    fn unknown_reported_once_when_window_fills_then_late_grant_possible() {
        let mut d = decider();
        let mut verdicts = Vec::new();
        for _ in 0..7 {
            verdicts.extend(d.vote(1, Some((0, 0.1)), None, FaceSize::eyes(40.0), id, S));
        }
        assert_eq!(verdicts, vec![Verdict::Unknown { track: 1, best_similarity: 0.1 }]);
        let mut late = None;
        for _ in 0..3 {
            late = d.vote(1, Some((0, 0.8)), None, FaceSize::eyes(40.0), id, S);
        }
        assert!(matches!(late, Some(Verdict::Granted { .. })));
    }

    #[test]
    fn cooldown_per_person_across_tracks() {
        let mut d = decider();
        let yes = Some((0, 0.6));
        for _ in 0..3 {
            d.vote(1, yes, None, FaceSize::eyes(40.0), id, S);
        }
        d.end_tracks(&[1]);
        let mut v = None;
        for _ in 0..3 {
            v = d.vote(2, yes, None, FaceSize::eyes(40.0), id, 5 * S);
        }
        assert_eq!(v, Some(Verdict::CoolingDown { track: 2, person: 100 }));
        for _ in 0..3 {
            v = d.vote(3, yes, None, FaceSize::eyes(40.0), id, 20 * S);
        }
        assert!(matches!(v, Some(Verdict::Granted { track: 3, .. })));
    }

    #[test]
    fn empty_gallery_is_unknown_with_nan() {
        let mut d = decider();
        let mut v = None;
        for _ in 0..5 {
            v = d.vote(1, None, None, FaceSize::eyes(40.0), id, S);
        }
        assert!(
            matches!(v, Some(Verdict::Unknown { best_similarity, .. }) if best_similarity.is_nan())
        );
    }

    #[test]
    fn config_is_checked() {
        let mut c = DecisionConfig::single(0.4, 0.0);
        c.votes = 2;
        c.window = 5;
        assert!(c.validate().unwrap_err().starts_with("votes"));
        c.window = 20;
        assert!(c.validate().unwrap_err().starts_with("window"));
        let mut c = DecisionConfig::single(0.4, 0.0);
        c.bands.push(SizeBand { min_eye_px: 0.0, threshold: 0.3 });
        assert!(c.validate().unwrap_err().starts_with("bands[1]"));
    }

    #[test]
    fn a_track_handed_to_someone_else_is_decided_again() {
        let mut d = decider();
        for _ in 0..3 {
            d.vote(1, Some((0, 0.6)), None, FaceSize::eyes(40.0), id, S);
        }
        assert!(d.granted(1));
        // The same person re-checked: nothing new.
        for _ in 0..5 {
            assert_eq!(d.vote(1, Some((0, 0.6)), None, FaceSize::eyes(40.0), id, S), None);
        }
        // Now another person: after a window without a majority for person 0 the track is
        // reopened, and person 1 is granted.
        let mut verdicts = Vec::new();
        for _ in 0..8 {
            verdicts.extend(d.vote(1, Some((1, 0.7)), None, FaceSize::eyes(40.0), id, 30 * S));
        }
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert!(matches!(verdicts[0], Verdict::Granted { person_index: 1, .. }), "{verdicts:?}");
    }

    #[test]
    fn a_far_face_is_granted_only_once_close_enough() {
        let mut c = DecisionConfig::single(0.4, 0.05);
        c.min_face_height_pct = 20.0;
        let mut d = Decider::new(c).unwrap();
        let far = FaceSize { eye_px: 40.0, height_pct: 15.0 };
        let near = FaceSize { eye_px: 40.0, height_pct: 30.0 };
        for _ in 0..6 {
            assert_eq!(d.vote(1, Some((0, 0.6)), None, far, id, S), None);
        }
        assert!(matches!(
            d.vote(1, Some((0, 0.6)), None, near, id, S),
            Some(Verdict::Granted { .. })
        ));
    }

    fn live_decider(passes: usize) -> Decider {
        let mut c = DecisionConfig::single(0.4, 0.05);
        c.liveness = Some(LivenessPolicy { threshold: 0.5, passes });
        Decider::new(c).unwrap()
    }

    #[test]
    fn liveness_must_pass_on_k_of_the_confirming_votes() {
        let face = FaceSize::eyes(40.0);
        let yes = Some((0, 0.6));
        // Two of three pass: granted, with the mean live score.
        let mut d = live_decider(2);
        assert!(d.wants_liveness(1, yes, None, 40.0));
        assert!(!d.wants_liveness(1, Some((0, 0.2)), None, 40.0), "below the threshold");
        let mut v = None;
        for live in [0.9, 0.1, 0.8] {
            v = d.vote_checked(1, yes, None, face, Some(live), id, S);
        }
        let Some(Verdict::Granted { liveness: Some(l), votes: 3, .. }) = v else { panic!("{v:?}") };
        assert!((l - 0.6).abs() < 1e-6, "{l}");
        assert!(!d.wants_liveness(1, yes, None, 40.0), "decided tracks need no check");

        // One of three: a suspected spoof, once; the track is never granted and wants no
        // more votes.
        let mut d = live_decider(2);
        let mut verdicts = Vec::new();
        for live in [0.9, 0.1, 0.2, 0.9, 0.9, 0.9] {
            verdicts.extend(d.vote_checked(2, yes, None, face, Some(live), id, S));
        }
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert!(
            matches!(verdicts[0], Verdict::SpoofSuspected { passes: 1, votes: 3, person: 100, .. }),
            "{verdicts:?}"
        );
        assert!(!d.granted(2) && !d.wants(2, 10 * S));
        // A missing score (the check did not run) fails.
        let mut d = live_decider(1);
        let mut v = None;
        for _ in 0..3 {
            v = d.vote_checked(3, yes, None, face, None, id, S);
        }
        assert!(matches!(v, Some(Verdict::SpoofSuspected { passes: 0, .. })), "{v:?}");
        // Without liveness the score is ignored.
        let mut d = decider();
        for _ in 0..2 {
            d.vote_checked(4, yes, None, face, Some(0.0), id, S);
        }
        let v = d.vote_checked(4, yes, None, face, Some(0.0), id, S);
        assert!(matches!(v, Some(Verdict::Granted { liveness: None, .. })), "{v:?}");
        let mut c = DecisionConfig::single(0.4, 0.0);
        c.liveness = Some(LivenessPolicy { threshold: 0.5, passes: 4 });
        assert!(c.validate().unwrap_err().starts_with("liveness"));
    }

    /// Issue 15: far votes carried live scores and any `passes` of the window could pass, so a
    /// photo walked up with one good frame far away was granted.
    #[test]
    fn liveness_counts_only_near_votes_and_the_deciding_face() {
        let yes = Some((0, 0.6));
        let far = FaceSize { eye_px: 40.0, height_pct: 10.0 };
        let near = FaceSize { eye_px: 40.0, height_pct: 30.0 };
        let decider = || {
            let mut c = DecisionConfig::single(0.4, 0.05);
            c.window = 5;
            c.min_face_height_pct = 20.0;
            c.liveness = Some(LivenessPolicy { threshold: 0.5, passes: 2 });
            Decider::new(c).unwrap()
        };
        // [0.9, 0.1, 0.1, 0.9, 0.1], only the last face near: refused (mean 0.42).
        let mut d = decider();
        let scores = [0.9, 0.1, 0.1, 0.9, 0.1];
        for (i, live) in scores.into_iter().enumerate() {
            let face = if i == 4 { near } else { far };
            let v = d.vote_checked(1, yes, None, face, Some(live), id, S);
            assert!(!matches!(v, Some(Verdict::Granted { .. })), "vote {i}: {v:?}");
        }
        assert!(!d.granted(1));
        // Near only, [0.9, 0.9, 0.9]: granted on the third.
        let mut d = decider();
        let mut verdicts = Vec::new();
        for live in [0.9, 0.9, 0.9] {
            verdicts.push(d.vote_checked(2, yes, None, near, Some(live), id, S));
        }
        assert_eq!(verdicts[..2], [None, None]);
        assert!(matches!(verdicts[2], Some(Verdict::Granted { votes: 3, .. })), "{verdicts:?}");
        // A photo moved back and forth across the approach gate (near, far, far, ...), with a
        // good score on two near frames: never `votes` near faces in one window, never granted.
        let mut d = decider();
        let seq = [(0.1, far), (0.1, far), (0.1, near), (0.9, far), (0.9, far), (0.2, near)];
        let seq = seq.into_iter().chain([(0.9, far), (0.9, far), (0.7, near)]);
        let seq = seq.chain([(0.9, far), (0.9, far), (0.6, near)]);
        for (i, (live, face)) in seq.enumerate() {
            let v = d.vote_checked(5, yes, None, face, Some(live), id, S);
            assert!(!matches!(v, Some(Verdict::Granted { .. })), "vote {i}: {v:?}");
        }
        // Near only, [0.9, 0.1, 0.1]: a suspected spoof.
        let mut d = decider();
        let mut v = None;
        for live in [0.9, 0.1, 0.1] {
            v = d.vote_checked(3, yes, None, near, Some(live), id, S);
        }
        assert!(matches!(v, Some(Verdict::SpoofSuspected { passes: 1, votes: 3, .. })), "{v:?}");
        // Two of three near faces pass but the deciding face fails: no verdict on that face;
        // the next live near face grants.
        let mut d = decider();
        for live in [0.9, 0.9, 0.2] {
            assert_eq!(d.vote_checked(4, yes, None, near, Some(live), id, S), None, "{live}");
        }
        let v = d.vote_checked(4, yes, None, near, Some(0.8), id, S);
        assert!(matches!(v, Some(Verdict::Granted { .. })), "{v:?}");
    }

    /// Issue 16: the PaddleX impostor at 0.446 would pass the NPU model's bands (~0.25-0.29)
    /// but is judged with the CPU recognizer's own threshold when the CPU produced it.
    #[test]
    fn each_embedding_is_judged_by_its_own_models_thresholds() {
        let mut c = DecisionConfig::single(0.47, 0.05);
        c.npu_bands = vec![
            SizeBand { min_eye_px: 0.0, threshold: 0.29 },
            SizeBand { min_eye_px: 40.0, threshold: 0.25 },
        ];
        assert_eq!(c.threshold_in(Space::Npu, 50.0), 0.25);
        assert_eq!(c.threshold_in(Space::Cpu, 50.0), 0.47);
        let impostor = Some((0, 0.446));
        let face = FaceSize::eyes(50.0);
        // Three CPU embeddings (the NPU is down): refused, reported unknown.
        let mut d = Decider::new(c.clone()).unwrap();
        let mut verdicts = Vec::new();
        for _ in 0..5 {
            verdicts.extend(d.vote_in(Space::Cpu, 1, impostor, None, face, None, id, S));
        }
        assert!(verdicts.iter().all(|v| !matches!(v, Verdict::Granted { .. })), "{verdicts:?}");
        assert!(matches!(verdicts[..], [Verdict::Unknown { .. }]), "{verdicts:?}");
        // The same similarities from the NPU's model are votes (its scale is lower).
        let mut d = Decider::new(c.clone()).unwrap();
        let mut v = None;
        for _ in 0..3 {
            v = d.vote_in(Space::Npu, 2, impostor, None, face, None, id, S);
        }
        assert!(matches!(v, Some(Verdict::Granted { .. })), "{v:?}");
        // Without NPU bands both spaces use the CPU bands; bad NPU bands are named.
        c.npu_bands.clear();
        assert_eq!(c.threshold_in(Space::Npu, 50.0), 0.47);
        c.npu_bands = vec![SizeBand { min_eye_px: 0.0, threshold: 1.5 }];
        assert!(c.validate().unwrap_err().starts_with("npu_bands[0]"));
    }

    #[test]
    fn tailgate_reported_once() {
        let mut d = decider();
        assert!(d.report_tailgate(4));
        assert!(!d.report_tailgate(4));
    }
}
