//! 1:N matching of one face embedding against the templates of one model.
//!
//! The matcher is a read-only snapshot: templates are copied once into a contiguous row-major
//! matrix, rows grouped by person, so a query is a linear scan of dot products with no
//! allocation and no hashing (`kernels.rs`: vectorised, AVX2 chosen at run time on x86). The
//! rows are float32, float16 or int8 with a scale per row ([`Storage`]): int8 is a quarter of
//! the memory and of the bytes a query reads, which is what a scan of thousands of people
//! costs. A scan's cost is predictable, and up to the
//! 100,000 people of a large site it stays within a small multiple of reading the rows once
//! (`portier bench match`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::kernels::{scan, RowsRef};
use super::{GalleryError, PersonId};
use crate::embed::dot;

/// How a matcher keeps its template rows. The default is int8: on LFW's development images
/// it changed no true-accept rate at FPIR 1e-2 (w600k and PaddleX, 10 to 3,000 people; README,
/// "Many people") and reads a quarter of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// 4 bytes per value, as embedded.
    Float32,
    /// 2 bytes per value (IEEE half precision).
    Float16,
    /// 1 byte per value and a float32 scale per row.
    #[default]
    Int8,
}

impl Storage {
    /// Every storage, widest first.
    pub const ALL: [Storage; 3] = [Storage::Float32, Storage::Float16, Storage::Int8];

    /// Its name in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Storage::Float32 => "float32",
            Storage::Float16 => "float16",
            Storage::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Storage {
    type Err = String;

    fn from_str(s: &str) -> Result<Storage, String> {
        Storage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| format!("float32, float16 or int8, got `{s}`"))
    }
}

/// The template matrix in its storage.
#[derive(Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub(super) enum Rows {
    F32(Vec<f32>),
    F16(Vec<u16>),
    I8 { data: Vec<i8>, scales: Vec<f32> },
}

impl Rows {
    pub(super) fn new(storage: Storage) -> Rows {
        match storage {
            Storage::Float32 => Rows::F32(Vec::new()),
            Storage::Float16 => Rows::F16(Vec::new()),
            Storage::Int8 => Rows::I8 { data: Vec::new(), scales: Vec::new() },
        }
    }

    pub(super) fn storage(&self) -> Storage {
        match self {
            Rows::F32(_) => Storage::Float32,
            Rows::F16(_) => Storage::Float16,
            Rows::I8 { .. } => Storage::Int8,
        }
    }

    /// Empties the rows, keeping their buffers.
    pub(super) fn clear(&mut self) {
        match self {
            Rows::F32(data) => data.clear(),
            Rows::F16(data) => data.clear(),
            Rows::I8 { data, scales } => {
                data.clear();
                scales.clear();
            }
        }
    }

    /// Makes room for `rows` more rows of `dim` values without reallocating.
    pub(super) fn reserve(&mut self, rows: usize, dim: usize) {
        match self {
            Rows::F32(data) => data.reserve(rows * dim),
            Rows::F16(data) => data.reserve(rows * dim),
            Rows::I8 { data, scales } => {
                data.reserve(rows * dim);
                scales.reserve(rows);
            }
        }
    }

    /// Empties the rows, wiping the bytes they held (a loader's buffers of opened templates).
    pub(super) fn wipe(&mut self) {
        use zeroize::Zeroize;
        match self {
            Rows::F32(data) => data.zeroize(),
            Rows::F16(data) => data.zeroize(),
            Rows::I8 { data, scales } => {
                data.zeroize();
                scales.zeroize();
            }
        }
    }

    /// Appends row `index` (of `dim` values) of `from`, which must have the same storage;
    /// false (nothing appended) if it has not.
    fn push_from(&mut self, from: &Rows, index: usize, dim: usize) -> bool {
        let at = index * dim..(index + 1) * dim;
        match (self, from) {
            (Rows::F32(data), Rows::F32(src)) => data.extend_from_slice(&src[at]),
            (Rows::F16(data), Rows::F16(src)) => data.extend_from_slice(&src[at]),
            (Rows::I8 { data, scales }, Rows::I8 { data: src, scales: src_scales }) => {
                data.extend_from_slice(&src[at]);
                scales.push(src_scales[index]);
            }
            _ => return false,
        }
        true
    }

    pub(super) fn push(&mut self, row: &[f32]) {
        match self {
            Rows::F32(data) => data.extend_from_slice(row),
            // A non-finite row becomes zeros (as int8's quantisation makes it): infinity's
            // bits would read as a huge value in the scan and match every query.
            Rows::F16(data) if row.iter().all(|x| x.is_finite()) => {
                data.extend(row.iter().map(|&x| super::kernels::to_f16(x)))
            }
            Rows::F16(data) => data.resize(data.len() + row.len(), 0),
            Rows::I8 { data, scales } => {
                let start = data.len();
                data.resize(start + row.len(), 0);
                scales.push(super::kernels::quantise_i8(row, &mut data[start..]));
            }
        }
    }

    fn as_ref(&self) -> RowsRef<'_> {
        match self {
            Rows::F32(data) => RowsRef::F32(data),
            Rows::F16(data) => RowsRef::F16(data),
            Rows::I8 { data, scales } => RowsRef::I8 { data, scales },
        }
    }
}

/// In-memory templates of one model, ready for 1:N matching.
#[derive(Clone)]
pub struct Matcher {
    /// Gallery file the templates came from, for error messages.
    path: PathBuf,
    /// Model whose templates these are; embeddings of other models are meaningless here.
    model_id: String,
    /// Template length; 0 while the matcher is empty.
    dim: usize,
    /// Row-major `rows x dim` matrix of L2-normalised templates, grouped by person, in the
    /// matcher's storage.
    data: Rows,
    /// Number of rows.
    rows: usize,
    /// Exclusive end row of each person's block of rows; person `i` owns rows
    /// `person_end[i-1]..person_end[i]` (from 0 for the first). This replaces a per-row person
    /// index: grouping makes per-person maxima a nested loop without any lookup.
    person_end: Vec<usize>,
    /// Gallery id of each person, by person index.
    person_ids: Vec<PersonId>,
    /// Name of each person, by person index.
    person_names: Vec<String>,
}

/// One person and how similar the query is to them.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Gallery id of the person.
    pub person: PersonId,
    /// Name of the person.
    pub name: String,
    /// Cosine similarity: maximum over the person's templates, in `[-1, 1]` up to rounding.
    pub similarity: f32,
}

/// The two most similar people for one query.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchResult {
    /// Most similar person; `None` only for an empty matcher.
    pub best: Option<Candidate>,
    /// Most similar person other than `best` (never the same person, even if they have several
    /// templates); `None` if fewer than two people are enrolled for the model.
    pub second: Option<Candidate>,
}

/// Acceptance rule applied to a [`MatchResult`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchPolicy {
    /// Minimum cosine similarity of the best person.
    pub threshold: f32,
    /// Minimum lead of the best person over the second best; guards against look-alikes
    /// (siblings) where the best match is high but not distinctive.
    pub margin: f32,
}

/// Outcome of applying a [`MatchPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The face is this enrolled person.
    Known(Candidate),
    /// The face is not accepted as anyone; `best` is kept for logging and tuning.
    Unknown {
        /// Best candidate, if any, even though it was not accepted.
        best: Option<Candidate>,
        /// Why it was not accepted.
        reason: UnknownReason,
    },
}

/// Why a face was not recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownReason {
    /// Nobody is enrolled for this model.
    EmptyGallery,
    /// The best similarity is below the threshold.
    BelowThreshold,
    /// The best similarity passes the threshold, but the second-best person is within the margin.
    AmbiguousMargin,
}

impl Matcher {
    /// An empty matcher for `model_id`; rows are added with `push_row`.
    pub(super) fn empty(path: PathBuf, model_id: String, storage: Storage) -> Matcher {
        Matcher {
            path,
            model_id,
            dim: 0,
            data: Rows::new(storage),
            rows: 0,
            person_end: Vec::new(),
            person_ids: Vec::new(),
            person_names: Vec::new(),
        }
    }

    /// Appends one normalised template row, in the matcher's storage (a compact matcher
    /// converts it: a large gallery never exists as float32 rows). Callers must push all rows
    /// of a person consecutively and rows of equal length (the store guarantees both via its
    /// ORDER BY and its dimension check); a row of another length is ignored rather than
    /// corrupting the matrix layout.
    pub(super) fn push_row(&mut self, person: PersonId, name: &str, row: &[f32]) {
        if self.accepts(row.len()) {
            self.data.push(row);
            self.count_row(person, name);
        }
    }

    /// [`Matcher::push_row`] for a row already in the matcher's storage: row `index` of
    /// `from` (`dim` values), as a loader's worker encoded it.
    pub(super) fn push_encoded(
        &mut self,
        person: PersonId,
        name: &str,
        from: &Rows,
        index: usize,
        dim: usize,
    ) {
        if self.accepts(dim) && self.data.push_from(from, index, dim) {
            self.count_row(person, name);
        } else {
            debug_assert!(false, "encoded row in {:?}, matcher in {:?}", from.storage(), {
                self.data.storage()
            });
        }
    }

    /// This matcher without the person named `name` (every other row copied as it is, in the
    /// same storage): for a loop that must stop recognising someone before the gallery can be
    /// read again. The same matcher when nobody has that name.
    pub fn without(&self, name: &str) -> Matcher {
        let mut m = Matcher::empty(self.path.clone(), self.model_id.clone(), self.storage());
        m.data.reserve(self.rows, self.dim);
        let mut start = 0;
        for (i, &end) in self.person_end.iter().enumerate() {
            if self.person_names[i] != name {
                for row in start..end {
                    m.push_encoded(self.person_ids[i], &self.person_names[i], &self.data, row, {
                        self.dim
                    });
                }
            }
            start = end;
        }
        m
    }

    /// The same rows, in the same storage, of the same people (tests of the store's loader).
    #[cfg(test)]
    pub(super) fn same_as(&self, other: &Matcher) -> bool {
        (self.model_id == other.model_id)
            && (self.dim, self.rows) == (other.dim, other.rows)
            && self.data == other.data
            && self.person_end == other.person_end
            && self.person_ids == other.person_ids
            && self.person_names == other.person_names
    }

    /// Whether a row of `len` values fits the matrix (the first row sets the dimension).
    fn accepts(&mut self, len: usize) -> bool {
        if self.rows == 0 {
            self.dim = len;
        }
        let fits = len > 0 && len == self.dim;
        debug_assert!(fits, "template row of length {len} in a matcher of dim {}", self.dim);
        fits
    }

    /// Books a row just appended to `data` to `person`.
    fn count_row(&mut self, person: PersonId, name: &str) {
        if self.person_ids.last() != Some(&person) {
            self.person_ids.push(person);
            self.person_names.push(name.to_owned());
            self.person_end.push(self.len());
        }
        self.rows += 1;
        if let Some(end) = self.person_end.last_mut() {
            *end += 1;
        }
    }

    /// A float32 matcher of `rows` (row-major, `dim` values each), `templates` consecutive rows
    /// per person, people numbered from 1 and named `person N`: galleries for benchmarks and
    /// tools, without a store (the appliance's come from [`super::Gallery::matcher`]).
    pub fn from_rows(model_id: &str, dim: usize, templates: usize, rows: &[f32]) -> Matcher {
        let mut m =
            Matcher::empty(PathBuf::from("(in memory)"), model_id.to_owned(), Storage::Float32);
        if dim == 0 || templates == 0 {
            return m;
        }
        for (i, block) in rows.chunks_exact(dim * templates).enumerate() {
            let id = i as PersonId + 1;
            let name = format!("person {id}");
            for row in block.chunks_exact(dim) {
                m.push_row(id, &name, row);
            }
        }
        m
    }

    /// Template row `index` (normalised), or an empty slice past the end or in a compact
    /// matcher (backups read the store's own float32 matchers).
    pub(super) fn row(&self, index: usize) -> &[f32] {
        match &self.data {
            Rows::F32(data) => data.get(index * self.dim..(index + 1) * self.dim).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Template length (0 for an empty matcher).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Model these templates belong to.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Number of templates (rows).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True if no template is loaded, i.e. nobody is enrolled for this model.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// How the rows are stored.
    pub fn storage(&self) -> Storage {
        match self.data {
            Rows::F32(_) => Storage::Float32,
            Rows::F16(_) => Storage::Float16,
            Rows::I8 { .. } => Storage::Int8,
        }
    }

    /// Bytes the rows take (what one query reads).
    pub fn row_bytes(&self) -> usize {
        match &self.data {
            Rows::F32(data) => data.len() * 4,
            Rows::F16(data) => data.len() * 2,
            Rows::I8 { data, scales } => data.len() + scales.len() * 4,
        }
    }

    /// The same templates stored as `storage` (float16: each value rounded to half precision;
    /// int8: each row quantised with its own scale; the float32 rows freed). Only a float32
    /// matcher converts: a compact one keeps its storage, as its float32 values are gone.
    pub fn with_storage(mut self, storage: Storage) -> Matcher {
        if let Rows::F32(data) = &self.data {
            if storage != Storage::Float32 {
                let mut rows = Rows::new(storage);
                // An empty matcher has dim 0 and no rows.
                for row in data.chunks_exact(self.dim.max(1)) {
                    rows.push(row);
                }
                self.data = rows;
            }
        }
        self
    }

    /// Number of distinct people.
    pub fn people(&self) -> usize {
        self.person_ids.len()
    }

    /// Name of the person with index `index` (as used by [`Matcher::scores_into`]).
    ///
    /// # Panics
    /// If `index >= self.people()`, like slice indexing.
    pub fn person_name(&self, index: usize) -> &str {
        &self.person_names[index]
    }

    /// Gallery id of the person with index `index` (as used by [`Matcher::scores_into`]).
    ///
    /// # Panics
    /// If `index >= self.people()`, like slice indexing.
    pub fn person_id(&self, index: usize) -> PersonId {
        self.person_ids[index]
    }

    /// The best and second-best person for `embedding`. A person's score is the maximum cosine
    /// similarity over their templates.
    ///
    /// `embedding` should be L2-normalised; it is not required, as scores are divided by its
    /// norm, so they are true cosines either way. It must have length [`Matcher::dim`]
    /// ([`GalleryError::DimensionMismatch`] otherwise) and be finite and non-zero
    /// ([`GalleryError::InvalidEmbedding`]). An empty matcher accepts any embedding and returns
    /// no candidates. Allocates only the names of the returned candidates.
    pub fn best_two(&self, embedding: &[f32]) -> Result<MatchResult, GalleryError> {
        let (best, second) = self.best_two_indices(embedding)?;
        Ok(MatchResult {
            best: best.map(|(p, s)| self.candidate(p, s)),
            second: second.map(|(p, s)| self.candidate(p, s)),
        })
    }

    /// [`Matcher::best_two`] without allocating: (person index, similarity) of the best and
    /// second-best person, for the frame loop. Names come from [`Matcher::person_name`].
    #[allow(clippy::type_complexity)]
    pub fn best_two_indices(
        &self,
        embedding: &[f32],
    ) -> Result<(Option<(usize, f32)>, Option<(usize, f32)>), GalleryError> {
        let mut best: Option<(usize, f32)> = None;
        let mut second: Option<(usize, f32)> = None;
        self.for_each_score(embedding, |person, score| match best {
            Some((_, b)) if score <= b => {
                // Ties keep the earlier person (lower id), so results are deterministic.
                if second.is_none_or(|(_, s)| score > s) {
                    second = Some((person, score));
                }
            }
            _ => {
                second = best;
                best = Some((person, score));
            }
        })?;
        Ok((best, second))
    }

    /// The index of the person with gallery id `person`, if enrolled for this model (a linear
    /// search, no allocation: for mapping one model's match onto another's people).
    pub fn index_of(&self, person: PersonId) -> Option<usize> {
        self.person_ids.iter().position(|&p| p == person)
    }

    /// Every person's score for `embedding`, written into `scores` (resized to
    /// [`Matcher::people`]; `scores[i]` belongs to [`Matcher::person_id`]`(i)`). Reusing the
    /// buffer across calls avoids allocation in evaluation loops. Same validation as
    /// [`Matcher::best_two`].
    pub fn scores_into(
        &self,
        embedding: &[f32],
        scores: &mut Vec<f32>,
    ) -> Result<(), GalleryError> {
        scores.clear();
        scores.resize(self.people(), f32::NEG_INFINITY);
        self.for_each_score(embedding, |person, score| scores[person] = score)
    }

    /// Builds the public candidate for person index `person`.
    fn candidate(&self, person: usize, similarity: f32) -> Candidate {
        Candidate {
            person: self.person_ids[person],
            name: self.person_names[person].clone(),
            similarity,
        }
    }

    /// Validates `embedding` and calls `f(person index, cosine)` for every person in order.
    fn for_each_score(
        &self,
        embedding: &[f32],
        mut f: impl FnMut(usize, f32),
    ) -> Result<(), GalleryError> {
        if self.is_empty() {
            return Ok(());
        }
        if embedding.len() != self.dim {
            return Err(GalleryError::DimensionMismatch {
                path: self.path.clone(),
                model_id: self.model_id.clone(),
                expected: self.dim,
                found: embedding.len(),
            });
        }
        // NaN would make every comparison false and silently turn a match into "unknown";
        // an all-zero vector has no direction. Both mean a broken upstream model.
        let norm = dot(embedding, embedding).sqrt();
        let reason = if !norm.is_finite() {
            Some("has a non-finite norm (NaN, infinite or huge values)")
        } else if norm == 0.0 {
            Some("is all zeros")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(GalleryError::InvalidEmbedding {
                path: self.path.clone(),
                model_id: self.model_id.clone(),
                reason,
            });
        }
        let inv_norm = 1.0 / norm;
        scan(self.data.as_ref(), self.dim, &self.person_end, embedding, &mut |person, best| {
            f(person, best * inv_norm)
        });
        Ok(())
    }
}

impl fmt::Debug for Matcher {
    /// Summarises instead of dumping the matrix (hundreds of thousands of floats).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher")
            .field("path", &self.path)
            .field("model_id", &self.model_id)
            .field("dim", &self.dim)
            .field("storage", &self.storage())
            .field("templates", &self.len())
            .field("people", &self.people())
            .finish()
    }
}

impl MatchResult {
    /// Applies `policy`: [`Decision::Known`] iff `best.similarity >= threshold` and
    /// (there is no second person or `best - second >= margin`).
    ///
    /// When both rules fail, the reason is [`UnknownReason::BelowThreshold`] (the more basic
    /// one). A NaN similarity never passes.
    pub fn decide(&self, policy: &MatchPolicy) -> Decision {
        let Some(best) = &self.best else {
            return Decision::Unknown { best: None, reason: UnknownReason::EmptyGallery };
        };
        // Written as positive comparisons so that NaN falls through to "not accepted".
        let above_threshold = best.similarity >= policy.threshold;
        if !above_threshold {
            return Decision::Unknown {
                best: Some(best.clone()),
                reason: UnknownReason::BelowThreshold,
            };
        }
        let distinct =
            self.second.as_ref().is_none_or(|s| best.similarity - s.similarity >= policy.margin);
        if !distinct {
            return Decision::Unknown {
                best: Some(best.clone()),
                reason: UnknownReason::AmbiguousMargin,
            };
        }
        Decision::Known(best.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EnrollMode, Gallery};
    use super::*;

    /// Unit vector at `angle` radians in the plane of the first two axes (dim 4).
    fn at(angle: f32) -> Vec<f32> {
        vec![angle.cos(), angle.sin(), 0.0, 0.0]
    }

    /// Alice: templates at 0.0 and 1.0 rad; Bob: 0.5 rad; Carol: 2.0 and 2.2 rad.
    fn three_people() -> Matcher {
        let mut g = Gallery::open_in_memory().unwrap();
        g.enroll("Alice", "m", &[at(0.0), at(1.0)], EnrollMode::New).unwrap();
        g.enroll("Bob", "m", &[at(0.5)], EnrollMode::New).unwrap();
        g.enroll("Carol", "m", &[at(2.0), at(2.2)], EnrollMode::New).unwrap();
        g.matcher("m").unwrap()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn best_two_takes_per_person_maximum_and_a_different_second() {
        let m = three_people();
        assert_eq!((m.len(), m.people(), m.dim()), (5, 3, 4));

        // Near Alice's second template: best Alice via that template, second Bob (not Alice's
        // other template, which is further away than Bob anyway).
        let r = m.best_two(&at(0.95)).unwrap();
        let (best, second) = (r.best.unwrap(), r.second.unwrap());
        assert_eq!(best.name, "Alice");
        assert!(close(best.similarity, 0.05f32.cos()), "{best:?}");
        assert_eq!(second.name, "Bob");
        assert!(close(second.similarity, 0.45f32.cos()), "{second:?}");

        // Between Alice's two templates at 0.1: Alice's first template wins; Alice's own other
        // template (0.9 away) must never be reported as second - Bob (0.4 away) is.
        let r = m.best_two(&at(0.1)).unwrap();
        assert_eq!(r.best.as_ref().unwrap().name, "Alice");
        assert_eq!(r.second.as_ref().unwrap().name, "Bob");

        // Near Carol: Carol then Alice (via her 1.0 template, 1.0 away, vs Bob 1.5 away).
        let r = m.best_two(&at(2.1)).unwrap();
        let (best, second) = (r.best.unwrap(), r.second.unwrap());
        assert_eq!((best.name.as_str(), second.name.as_str()), ("Carol", "Alice"));
        assert!(close(best.similarity, 0.1f32.cos()));
        assert!(close(second.similarity, 1.1f32.cos()));
        assert_eq!(best.person, m.person_id(2));
    }

    #[test]
    fn int8_rows_give_the_same_people_within_a_quantisation_step() {
        let m = three_people();
        let q = m.clone().with_storage(Storage::Int8);
        assert_eq!((q.storage(), q.len(), q.people(), q.dim()), (Storage::Int8, 5, 3, 4));
        assert_eq!(q.row_bytes(), 5 * 4 + 5 * 4);
        assert_eq!(m.row_bytes(), 5 * 4 * 4);
        for angle in [0.0, 0.3, 0.95, 2.1, 3.0] {
            let (a, b) = (m.best_two(&at(angle)).unwrap(), q.best_two(&at(angle)).unwrap());
            let (a, b) = (a.best.unwrap(), b.best.unwrap());
            assert_eq!(a.person, b.person, "{angle}");
            assert!((a.similarity - b.similarity).abs() < 0.01, "{a:?} {b:?}");
        }
        assert!(format!("{q:?}").contains("Int8"));
        // Loaded as int8 from the start (the store's `matcher_stored`): the same rows.
        let mut g = Gallery::open_in_memory().unwrap();
        g.enroll("Alice", "m", &[at(0.0), at(1.0)], EnrollMode::New).unwrap();
        g.enroll("Bob", "m", &[at(0.5)], EnrollMode::New).unwrap();
        g.enroll("Carol", "m", &[at(2.0), at(2.2)], EnrollMode::New).unwrap();
        let direct = g.matcher_stored("m", Storage::Int8).unwrap();
        assert_eq!((direct.storage(), direct.len(), direct.people()), (Storage::Int8, 5, 3));
        for angle in [0.0, 0.3, 0.95, 2.1, 3.0] {
            assert_eq!(direct.best_two(&at(angle)).unwrap(), q.best_two(&at(angle)).unwrap());
        }
        // float16: the same people, within half precision's step; an int8 matcher stays int8.
        let h = m.clone().with_storage(Storage::Float16);
        assert_eq!((h.storage(), h.row_bytes()), (Storage::Float16, 5 * 4 * 2));
        for angle in [0.0, 0.3, 0.95, 2.1, 3.0] {
            let (a, b) = (m.best_two(&at(angle)).unwrap(), h.best_two(&at(angle)).unwrap());
            let (a, b) = (a.best.unwrap(), b.best.unwrap());
            assert_eq!(a.person, b.person, "{angle}");
            assert!((a.similarity - b.similarity).abs() < 2e-3, "{a:?} {b:?}");
        }
        assert_eq!(q.clone().with_storage(Storage::Float16).storage(), Storage::Int8);
        // A non-finite row never matches in a compact storage (the store refuses such rows;
        // rows from elsewhere could carry one).
        let bad = Matcher::from_rows("m", 2, 1, &[f32::INFINITY, 0.0, 0.6, 0.8]);
        for storage in [Storage::Float16, Storage::Int8] {
            let r = bad.clone().with_storage(storage).best_two(&[1.0, 0.0]).unwrap();
            assert_eq!(r.best.unwrap().name, "person 2", "{storage:?}");
        }
        let direct = g.matcher_stored("m", Storage::Float16).unwrap();
        assert_eq!(direct.best_two(&at(0.3)).unwrap(), h.best_two(&at(0.3)).unwrap());
        assert_eq!("float16".parse::<Storage>(), Ok(Storage::Float16));
        assert!("half".parse::<Storage>().unwrap_err().contains("`half`"));
        // Compacting twice, or an empty matcher, is harmless.
        let again = q.clone().with_storage(Storage::Int8);
        assert_eq!(again.best_two(&at(0.3)).unwrap(), q.best_two(&at(0.3)).unwrap());
        let g = Gallery::open_in_memory().unwrap();
        assert!(g.matcher("m").unwrap().with_storage(Storage::Int8).is_empty());
    }

    #[test]
    fn query_need_not_be_normalised() {
        let m = three_people();
        let scaled: Vec<f32> = at(0.95).iter().map(|x| x * 7.5).collect();
        let (a, b) = (m.best_two(&scaled).unwrap(), m.best_two(&at(0.95)).unwrap());
        let (a, b) = (a.best.unwrap(), b.best.unwrap());
        assert_eq!(a.person, b.person);
        assert!(close(a.similarity, b.similarity), "{a:?} vs {b:?}");
    }

    #[test]
    fn single_person_has_no_second() {
        let mut g = Gallery::open_in_memory().unwrap();
        g.enroll("Alice", "m", &[at(0.0), at(1.0)], EnrollMode::New).unwrap();
        let r = g.matcher("m").unwrap().best_two(&at(0.3)).unwrap();
        assert_eq!(r.best.unwrap().name, "Alice");
        assert_eq!(r.second, None);
    }

    #[test]
    fn scores_into_agrees_with_best_two() {
        let m = three_people();
        let mut scores = vec![123.0; 17];
        m.scores_into(&at(0.95), &mut scores).unwrap();
        assert_eq!(scores.len(), 3);
        let r = m.best_two(&at(0.95)).unwrap();
        let best = r.best.unwrap();
        let (i, &s) = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        assert_eq!(
            (m.person_name(i), m.person_id(i), s),
            (best.name.as_str(), best.person, best.similarity)
        );
        assert!(close(scores[2], 1.05f32.cos()), "carol {}", scores[2]);
        assert!(m.person_id(0) < m.person_id(1) && m.person_id(1) < m.person_id(2));
    }

    #[test]
    fn bad_queries_are_errors_not_panics() {
        let m = three_people();
        let err = m.best_two(&[1.0, 0.0, 0.0]).unwrap_err();
        assert!(matches!(err, GalleryError::DimensionMismatch { expected: 4, found: 3, .. }));
        assert_eq!(
            err.to_string(),
            "gallery :memory:: embedding has 3 values but templates of model \"m\" have 4"
        );
        let mut scores = Vec::new();
        assert!(m.scores_into(&[], &mut scores).is_err());
        for bad in [[0.0; 4], [f32::NAN, 0.0, 0.0, 1.0], [f32::INFINITY, 0.0, 0.0, 0.0]] {
            let err = m.best_two(&bad).unwrap_err();
            assert!(matches!(err, GalleryError::InvalidEmbedding { .. }), "{err:?}");
        }
    }

    #[test]
    fn empty_matcher_has_no_candidates() {
        let g = Gallery::open_in_memory().unwrap();
        let m = g.matcher("m").unwrap();
        assert!(m.is_empty());
        let r = m.best_two(&at(0.0)).unwrap();
        assert_eq!(r, MatchResult { best: None, second: None });
        let mut scores = vec![1.0];
        m.scores_into(&at(0.0), &mut scores).unwrap();
        assert!(scores.is_empty());
        assert!(format!("{m:?}").contains("people: 0"));
    }

    fn cand(name: &str, similarity: f32) -> Candidate {
        Candidate { person: name.len() as PersonId, name: name.to_owned(), similarity }
    }

    #[test]
    fn without_drops_one_person_and_keeps_every_other_row() {
        let (dim, templates) = (8, 2);
        let rows: Vec<f32> =
            (0..3 * templates * dim).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        for storage in [Storage::Float32, Storage::Float16, Storage::Int8] {
            let m = Matcher::from_rows("m", dim, templates, &rows).with_storage(storage);
            let w = m.without("person 2");
            assert_eq!((w.people(), w.len(), w.storage()), (2, 4, storage));
            assert_eq!((w.person_name(0), w.person_name(1)), ("person 1", "person 3"));
            let q = &rows[4 * dim..5 * dim];
            let (mut all, mut left) = (Vec::new(), Vec::new());
            m.scores_into(q, &mut all).unwrap();
            w.scores_into(q, &mut left).unwrap();
            assert_eq!(left, [all[0], all[2]], "{storage:?}");
            assert!(m.without("nobody").same_as(&m));
            let none = w.without("person 1").without("person 3");
            assert_eq!((none.people(), none.len()), (0, 0));
        }
    }

    #[test]
    fn decide_covers_every_outcome() {
        let policy = MatchPolicy { threshold: 0.5, margin: 0.1 };
        let empty = MatchResult { best: None, second: None };
        assert_eq!(
            empty.decide(&policy),
            Decision::Unknown { best: None, reason: UnknownReason::EmptyGallery }
        );

        let low = MatchResult { best: Some(cand("Al", 0.49)), second: Some(cand("Bobby", 0.1)) };
        assert_eq!(
            low.decide(&policy),
            Decision::Unknown {
                best: Some(cand("Al", 0.49)),
                reason: UnknownReason::BelowThreshold
            }
        );
        // Below threshold wins over ambiguity when both apply.
        let both = MatchResult { best: Some(cand("Al", 0.4)), second: Some(cand("Bobby", 0.39)) };
        assert!(matches!(
            both.decide(&policy),
            Decision::Unknown { reason: UnknownReason::BelowThreshold, .. }
        ));

        let close = MatchResult { best: Some(cand("Al", 0.8)), second: Some(cand("Bobby", 0.75)) };
        assert_eq!(
            close.decide(&policy),
            Decision::Unknown {
                best: Some(cand("Al", 0.8)),
                reason: UnknownReason::AmbiguousMargin
            }
        );

        let clear = MatchResult { best: Some(cand("Al", 0.8)), second: Some(cand("Bobby", 0.6)) };
        assert_eq!(clear.decide(&policy), Decision::Known(cand("Al", 0.8)));
        let alone = MatchResult { best: Some(cand("Al", 0.5)), second: None };
        assert_eq!(alone.decide(&policy), Decision::Known(cand("Al", 0.5)), "threshold inclusive");
        let exact = MatchResult { best: Some(cand("Al", 1.0)), second: Some(cand("Bobby", 0.5)) };
        let half = MatchPolicy { threshold: 0.5, margin: 0.5 };
        assert_eq!(exact.decide(&half), Decision::Known(cand("Al", 1.0)), "margin inclusive");
        let nan = MatchResult { best: Some(cand("Al", f32::NAN)), second: None };
        assert!(matches!(nan.decide(&policy), Decision::Unknown { .. }));
    }

    #[test]
    fn decide_on_real_matches() {
        let m = three_people();
        let policy = MatchPolicy { threshold: 0.9, margin: 0.05 };
        match m.best_two(&at(2.1)).unwrap().decide(&policy) {
            Decision::Known(c) => assert_eq!(c.name, "Carol"),
            other => panic!("{other:?}"),
        }
        // Halfway between Alice (0.0) and Bob (0.5): similar to both.
        let d = m.best_two(&at(0.25)).unwrap().decide(&policy);
        assert!(matches!(d, Decision::Unknown { reason: UnknownReason::AmbiguousMargin, .. }));
        // Orthogonal to everyone.
        let d = m.best_two(&[0.0, 0.0, 1.0, 0.0]).unwrap().decide(&policy);
        assert!(matches!(d, Decision::Unknown { reason: UnknownReason::BelowThreshold, .. }));
    }
}
