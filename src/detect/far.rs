//! Far faces: a second detector pass per frame over one window of the frame at native
//! resolution, so faces too small for the whole-frame pass (a 1280x720 frame reaches a 640x384
//! detector at half scale: 12 px between the eyes become 6) are still found. A dynamic-input
//! model runs the window at its own small input (320x192 by default: a quarter of the
//! whole-frame pass's pixels); a fixed-input model (YuNet) at its input size. Nothing runs when
//! the whole-frame pass already sees the frame at the far scale (a 640x480 camera).
//!
//! The window is, in turn, the next tile of a fixed grid covering the frame (every region seen
//! at full resolution once per rotation: a new far face is found within [`FarScan::tiles`]
//! frames) or a window centred on a far track (so a face found once is found again at least
//! every other frame while it is too small for the whole-frame pass). Detections of the window are mapped back to frame
//! coordinates, kept only when small (the whole-frame pass owns large faces) and not cut by an
//! inner edge of the window, and merged with the whole-frame pass by the detector's NMS: a track
//! keeps its identity across the two scales because both speak frame pixels.
//!
//! Must not: allocate per frame once warmed up (the window copy and the candidates live here),
//! or choose which track to follow (the caller passes the box to re-detect around).

use crate::frame::{ImageView, RgbImage};

use super::{iou, DetectError, Detection, Detector};

/// Settings of the far-face pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FarSettings {
    /// Detector input pixels per frame pixel in the window (1.0: native resolution). The window
    /// covers the detector's input size divided by this.
    pub scale: f32,
    /// Window detections with a larger eye distance (frame pixels) are dropped: the
    /// whole-frame pass finds those.
    pub max_eye_px: f32,
    /// The detector input the window is run at (width, height; multiples of 32), when the
    /// model takes any size; a fixed-input model runs every window at its own input size.
    /// Smaller windows cost less per frame and take more frames per rotation.
    pub window: [u32; 2],
}

impl Default for FarSettings {
    fn default() -> Self {
        Self { scale: 1.0, max_eye_px: 32.0, window: [320, 192] }
    }
}

/// A face box is about this many eye distances wide: the tiles overlap by one far face.
pub(crate) const FACE_WIDTH_PER_EYE: f32 = 2.5;

/// A window detection whose box comes within this many pixels of an inner window edge is cut
/// by it (the neighbouring tile or the whole-frame pass sees it whole).
pub(crate) const EDGE_MARGIN: f32 = 2.0;

/// The far-face pass: its tile grid for the current frame size and its buffers.
#[derive(Debug)]
pub struct FarScan {
    settings: FarSettings,
    /// `[x, y, w, h]` in frame pixels, for `grid_for`.
    tiles: Vec<[u32; 4]>,
    /// Frame size and window size the grid was made for.
    grid_for: ([u32; 2], [u32; 2]),
    next: usize,
    window: RgbImage,
    found: Vec<Detection>,
    /// Scratch of [`FarScan::merge`] (grown once, reused).
    order: Vec<usize>,
    keep: Vec<bool>,
    kept: Vec<usize>,
    merged: Vec<Detection>,
}

impl FarScan {
    /// A far pass with `settings`; the grid is made at the first frame.
    pub fn new(settings: FarSettings) -> Self {
        Self {
            settings,
            tiles: Vec::new(),
            grid_for: ([0; 2], [0; 2]),
            next: 0,
            window: RgbImage::new(0, 0),
            found: Vec::with_capacity(64),
            order: Vec::with_capacity(64),
            keep: Vec::with_capacity(64),
            kept: Vec::with_capacity(64),
            merged: Vec::with_capacity(64),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &FarSettings {
        &self.settings
    }

    /// Tiles in the rotation for the last frame size (0 before the first pass, or when the
    /// whole-frame pass sees the frame at the far scale already).
    pub fn tiles(&self) -> usize {
        self.tiles.len()
    }

    /// The detector input a window runs at.
    fn window_input(&self, detector: &Detector) -> [u32; 2] {
        let [w, h] = detector.settings().input_size;
        match detector.dynamic_input() {
            true => [self.settings.window[0].min(w), self.settings.window[1].min(h)],
            false => [w, h],
        }
    }

    /// Window size in frame pixels: its detector input at the far scale, inside the frame.
    fn window_size(&self, input: [u32; 2], frame: [u32; 2]) -> [u32; 2] {
        let s = self.settings.scale.max(f32::MIN_POSITIVE);
        [0, 1].map(|i| ((input[i] as f32 / s).round() as u32).clamp(1, frame[i].max(1)))
    }

    /// Whether the whole-frame pass already sees `frame` at the far scale or finer (a 640x480
    /// camera in a 640x640 input): then there is nothing for a window to add.
    fn needed(&self, detector: &Detector, frame: [u32; 2]) -> bool {
        detector.scale_for(frame) < f64::from(self.settings.scale) * 0.999
    }

    /// The window size in frame pixels for a `frame`-sized frame, with the tile grid made for
    /// it; `None` when the pass has nothing to add at that size.
    fn prepare(&mut self, detector: &Detector, frame: [u32; 2]) -> Option<[u32; 2]> {
        if !self.needed(detector, frame) {
            return None;
        }
        let window = self.window_size(self.window_input(detector), frame);
        self.ensure_grid(frame, window);
        Some(window)
    }

    fn ensure_grid(&mut self, frame: [u32; 2], window: [u32; 2]) {
        if self.grid_for != (frame, window) {
            // Boxes up to `overlap - 2 * EDGE_MARGIN` wide (2.4 eye distances, wider than
            // the detectors draw a face) lie whole and uncut in some tile.
            let overlap = (self.settings.max_eye_px * FACE_WIDTH_PER_EYE).ceil() as u32;
            self.tiles = grid(frame, window, overlap);
            self.grid_for = (frame, window);
            self.next = 0;
        }
    }

    /// One far pass on `frame`, whose whole-frame detections (from `detector`, just run) are in
    /// `dets`: the window centred on `around` (a far track's box) or else the next tile. The
    /// window's small faces are merged into `dets` (NMS, best first).
    pub fn pass(
        &mut self,
        detector: &mut Detector,
        frame: ImageView<'_>,
        around: Option<[f32; 4]>,
        dets: &mut Vec<Detection>,
    ) -> Result<(), DetectError> {
        let size = [frame.width(), frame.height()];
        let Some(window) = self.prepare(detector, size) else { return Ok(()) };
        let rect = match around {
            Some(b) => centred(b, window, size),
            None => {
                let t = self.tiles[self.next % self.tiles.len()];
                self.next = (self.next + 1) % self.tiles.len();
                t
            }
        };
        self.detect_in(detector, frame, rect, dets)
    }

    /// Every tile of the rotation on one frame, merged into `dets` (the whole-frame pass's): what
    /// a still face meets within one rotation. For evaluations.
    pub fn sweep(
        &mut self,
        detector: &mut Detector,
        frame: ImageView<'_>,
        dets: &mut Vec<Detection>,
    ) -> Result<(), DetectError> {
        if self.prepare(detector, [frame.width(), frame.height()]).is_none() {
            return Ok(());
        }
        for i in 0..self.tiles.len() {
            let rect = self.tiles[i];
            self.detect_in(detector, frame, rect, dets)?;
        }
        Ok(())
    }

    fn detect_in(
        &mut self,
        detector: &mut Detector,
        frame: ImageView<'_>,
        [x, y, w, h]: [u32; 4],
        dets: &mut Vec<Detection>,
    ) -> Result<(), DetectError> {
        copy_window(frame, [x, y, w, h], &mut self.window);
        let input = self.window_input(detector);
        detector.detect_within(self.window.view(), input, &mut self.found)?;
        let (fw, fh) = (frame.width() as f32, frame.height() as f32);
        let (x0, y0) = (x as f32, y as f32);
        let (x1, y1) = (x0 + w as f32, y0 + h as f32);
        let whole = dets.len();
        for d in &self.found {
            let mut d = *d;
            d.bbox = [d.bbox[0] + x0, d.bbox[1] + y0, d.bbox[2] + x0, d.bbox[3] + y0];
            for p in d.kps.iter_mut() {
                *p = [p[0] + x0, p[1] + y0];
            }
            let cut = (x > 0 && d.bbox[0] < x0 + EDGE_MARGIN)
                || (y > 0 && d.bbox[1] < y0 + EDGE_MARGIN)
                || (x1 < fw && d.bbox[2] > x1 - EDGE_MARGIN)
                || (y1 < fh && d.bbox[3] > y1 - EDGE_MARGIN);
            if !cut && d.eye_distance() <= self.settings.max_eye_px {
                dets.push(d);
            }
        }
        if dets.len() > whole {
            self.merge(dets, whole, detector.settings().nms_threshold);
        }
        Ok(())
    }

    /// Greedy NMS by score over the whole-frame faces (`dets[..whole]`) and the window's (the
    /// rest), as [`nms`]; the survivors are put back whole-frame faces first, in their order,
    /// then the window's, best first: the tracker gives the whole-frame faces (the near ones) its
    /// free slots first.
    fn merge(&mut self, dets: &mut Vec<Detection>, whole: usize, threshold: f32) {
        let order = &mut self.order;
        order.clear();
        order.extend(0..dets.len());
        order.sort_unstable_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score).then(a.cmp(&b)));
        let keep = &mut self.keep;
        keep.clear();
        keep.resize(dets.len(), false);
        let kept = &mut self.kept;
        kept.clear();
        for &i in order.iter() {
            if kept.iter().all(|&k| iou(&dets[k].bbox, &dets[i].bbox) <= threshold) {
                kept.push(i);
                keep[i] = true;
            }
        }
        self.merged.clear();
        self.merged.extend((0..whole).filter(|&i| keep[i]).map(|i| dets[i]));
        self.merged.extend(order.iter().filter(|&&i| i >= whole && keep[i]).map(|&i| dets[i]));
        std::mem::swap(dets, &mut self.merged);
    }
}

/// Tiles `[x, y, w, h]` of `window` covering `frame`, neighbours overlapping by at least
/// `overlap` (so a face up to that wide lies whole in one tile), spread evenly, row by row.
pub fn grid(frame: [u32; 2], window: [u32; 2], overlap: u32) -> Vec<[u32; 4]> {
    let starts = |len: u32, win: u32| -> Vec<u32> {
        let win = win.min(len);
        if win >= len {
            return vec![0];
        }
        // At most half a window of overlap (the config keeps it far below): a bounded grid.
        let step = win.saturating_sub(overlap.min(win / 2)).max(1);
        let n = (len - win).div_ceil(step) + 1;
        (0..n).map(|i| (u64::from(len - win) * u64::from(i) / u64::from(n - 1)) as u32).collect()
    };
    let (xs, ys) = (starts(frame[0], window[0]), starts(frame[1], window[1]));
    let (w, h) = (window[0].min(frame[0]), window[1].min(frame[1]));
    ys.iter().flat_map(|&y| xs.iter().map(move |&x| [x, y, w, h])).collect()
}

/// The `window`-sized rectangle centred on box `b`, inside the frame.
fn centred(b: [f32; 4], window: [u32; 2], frame: [u32; 2]) -> [u32; 4] {
    let c = [(b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5];
    let start = |i: usize| {
        let win = window[i].min(frame[i]);
        let s = (c[i] - win as f32 / 2.0).round().max(0.0) as u32;
        s.min(frame[i] - win)
    };
    [start(0), start(1), window[0].min(frame[0]), window[1].min(frame[1])]
}

/// Copies the `[x, y, w, h]` rectangle of `frame` into `out` (reshaped, reusing its buffer).
fn copy_window(frame: ImageView<'_>, [x, y, w, h]: [u32; 4], out: &mut RgbImage) {
    out.reshape(w, h);
    let src = frame.as_bytes();
    let stride = frame.width() as usize * 3;
    let row = w as usize * 3;
    for (r, dst) in out.as_bytes_mut().chunks_exact_mut(row).enumerate() {
        let at = (y as usize + r) * stride + x as usize * 3;
        dst.copy_from_slice(&src[at..at + row]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_covers_the_frame_with_overlapping_tiles() {
        // 1280x720 at native resolution in 640x384 windows, faces up to 80 px wide.
        let t = grid([1280, 720], [640, 384], 80);
        assert_eq!(t.len(), 9, "3 columns, 3 rows: two rows would overlap by only 48 px");
        assert_eq!(t[0], [0, 0, 640, 384]);
        assert_eq!(t[4], [320, 168, 640, 384]);
        assert_eq!(t[8], [640, 336, 640, 384]);
        // The default 320x192 window: 5 columns, 6 rows.
        assert_eq!(grid([1280, 720], [320, 192], 80).len(), 30);
        // Every face up to the overlap wide lies whole in some tile, wherever it is.
        for x in (0..1280 - 80).step_by(7) {
            for y in (0..720 - 80).step_by(11) {
                assert!(
                    t.iter().any(|r| x >= r[0]
                        && y >= r[1]
                        && x + 80 <= r[0] + r[2]
                        && y + 80 <= r[1] + r[3]),
                    "face at {x},{y} lies whole in no tile: {t:?}"
                );
            }
        }
        // A frame no larger than the window is one tile.
        assert_eq!(grid([640, 360], [640, 384], 80), vec![[0, 0, 640, 360]]);
    }

    #[test]
    fn a_window_around_a_box_stays_inside_the_frame() {
        assert_eq!(
            centred([600.0, 300.0, 640.0, 340.0], [640, 384], [1280, 720]),
            [300, 128, 640, 384]
        );
        assert_eq!(centred([0.0, 0.0, 10.0, 10.0], [640, 384], [1280, 720]), [0, 0, 640, 384]);
        assert_eq!(
            centred([1270.0, 710.0, 1290.0, 730.0], [640, 384], [1280, 720]),
            [640, 336, 640, 384]
        );
    }

    #[test]
    fn a_window_is_copied_row_by_row() {
        let mut img = RgbImage::new(4, 3);
        for (i, b) in img.as_bytes_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut out = RgbImage::new(0, 0);
        copy_window(img.view(), [1, 1, 2, 2], &mut out);
        assert_eq!(out.as_bytes(), &[15, 16, 17, 18, 19, 20, 27, 28, 29, 30, 31, 32]);
    }
}
