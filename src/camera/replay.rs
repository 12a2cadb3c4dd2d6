//! Replay: frames from files, for machines without a camera and for tests.
//!
//! Three kinds of input, chosen from the path: an MJPEG elementary stream (`.mjpeg`/`.mjpg`:
//! JPEG frames back to back, exactly what a UVC camera delivers one buffer at a time), a folder
//! of images (sorted by name), or one image. JPEG files are handed out as MJPEG frames
//! (undecoded, like a camera's); raw `.yuyv` files whose name carries the size (`..._640x480_...`)
//! as YUYV; other image formats (PNG, WebP) are decoded here, once, into RGB.
//!
//! Frames come out at a nominal rate: each frame's timestamp is its index divided by the rate,
//! so a test driving `step(now)` with those timestamps sees exactly what a camera at that rate
//! would give. With `pace` on, `next_frame` also waits in real time until the frame is due
//! (never longer than the timeout it is given). [`FrameSource::clock`] hands the next frame's
//! timestamp to the loop, which runs on it: a clip gives the same decisions and counters
//! paced, unpaced (`--fast`) and on a machine too slow to keep up, frame for frame.
//!
//! Must not: decode JPEG (the loop does, so corrupt frames are counted in one place), or
//! allocate per frame once every file has been read once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CameraError, FrameSource, PixelFormat, RawFrame, SourceClock};
use crate::frame::{self, RgbImage};

/// Largest MJPEG stream file read into memory.
pub const MAX_STREAM_BYTES: u64 = 1 << 30;

/// Replay settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySettings {
    /// An MJPEG stream file, a folder of images, or one image.
    pub path: PathBuf,
    /// Nominal frames per second (timestamps; pacing when `pace`).
    pub fps: f64,
    /// Start again at the first frame after the last one.
    pub looped: bool,
    /// Wait in real time until each frame is due.
    pub pace: bool,
}

enum Input {
    /// A whole MJPEG stream in memory and the byte range of each frame.
    Stream { bytes: Vec<u8>, frames: Vec<(usize, usize)> },
    /// Files, one frame each; `buffer` holds the current file's bytes.
    Files { files: Vec<PathBuf>, buffer: Vec<u8>, rgb: RgbImage },
}

/// A replayed camera. See the module documentation.
pub struct ReplaySource {
    settings: ReplaySettings,
    input: Input,
    /// Index of the next frame within the input.
    next: usize,
    /// Frames handed out so far (the sequence number of the next one).
    sequence: u64,
    /// Real time of the first frame, when pacing.
    started: Option<Instant>,
}

impl std::fmt::Debug for ReplaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn open_error(path: &Path, reason: impl Into<String>) -> CameraError {
    CameraError::Open { device: path.to_path_buf(), reason: reason.into() }
}

/// Whether `path` names an MJPEG stream file.
fn is_stream(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("mjpeg" | "mjpg")
    )
}

/// Whether `path` names an image the folder replay takes.
fn is_image(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("jpg" | "jpeg" | "png" | "webp" | "yuyv")
    )
}

impl ReplaySource {
    /// Opens the input; an MJPEG stream is read and split into frames now.
    pub fn open(settings: ReplaySettings) -> Result<Self, CameraError> {
        let path = settings.path.clone();
        if !(settings.fps.is_finite() && settings.fps > 0.0 && settings.fps <= 1000.0) {
            return Err(open_error(
                &path,
                format!("frame rate {} is not in (0, 1000]", settings.fps),
            ));
        }
        let meta = std::fs::metadata(&path).map_err(|e| open_error(&path, e.to_string()))?;
        let input = if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| open_error(&path, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(open_error(&path, "folder holds no .jpg, .png, .webp or .yuyv image"));
            }
            Input::Files { files, buffer: Vec::new(), rgb: RgbImage::new(0, 0) }
        } else if is_stream(&path) {
            if meta.len() > MAX_STREAM_BYTES {
                return Err(open_error(
                    &path,
                    format!("{} bytes, more than the {MAX_STREAM_BYTES} replay reads", meta.len()),
                ));
            }
            let bytes = std::fs::read(&path).map_err(|e| open_error(&path, e.to_string()))?;
            let frames = split_mjpeg(&bytes);
            if frames.is_empty() {
                return Err(open_error(&path, "no JPEG frame (no FF D8 start-of-image marker)"));
            }
            Input::Stream { bytes, frames }
        } else {
            Input::Files { files: vec![path.clone()], buffer: Vec::new(), rgb: RgbImage::new(0, 0) }
        };
        Ok(Self { settings, input, next: 0, sequence: 0, started: None })
    }

    /// Frames in one pass over the input.
    pub fn len(&self) -> usize {
        match &self.input {
            Input::Stream { frames, .. } => frames.len(),
            Input::Files { files, .. } => files.len(),
        }
    }

    /// Whether the input has no frame (never true for an opened source).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The nominal time of frame `sequence`.
    fn timestamp(&self, sequence: u64) -> Duration {
        Duration::from_secs_f64(sequence as f64 / self.settings.fps)
    }
}

impl FrameSource for ReplaySource {
    fn next_frame(&mut self, timeout: Duration) -> Result<RawFrame<'_>, CameraError> {
        if self.next >= self.len() {
            if !self.settings.looped {
                return Err(CameraError::EndOfStream);
            }
            self.next = 0;
        }
        let timestamp = self.timestamp(self.sequence);
        if self.settings.pace {
            let started = *self.started.get_or_insert_with(Instant::now);
            let due = started + timestamp;
            let now = Instant::now();
            if due > now {
                let wait = due - now;
                if wait > timeout {
                    std::thread::sleep(timeout);
                    return Err(CameraError::Timeout(timeout));
                }
                std::thread::sleep(wait);
            }
        }
        let index = self.next;
        self.next += 1;
        let sequence = self.sequence;
        self.sequence += 1;
        let frame = |format, width, height, stride, data| RawFrame {
            format,
            width,
            height,
            stride,
            data,
            sequence,
            timestamp,
        };
        match &mut self.input {
            Input::Stream { bytes, frames } => {
                let (start, end) = frames[index];
                Ok(frame(PixelFormat::Mjpeg, 0, 0, 0, &bytes[start..end]))
            }
            Input::Files { files, buffer, rgb } => {
                let path = &files[index];
                let device = || path.display().to_string();
                buffer.clear();
                let mut file = std::fs::File::open(path).map_err(|e| {
                    CameraError::Disconnected { device: device(), reason: e.to_string() }
                })?;
                std::io::Read::read_to_end(&mut file, buffer).map_err(|e| {
                    CameraError::Disconnected { device: device(), reason: e.to_string() }
                })?;
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if ext.eq_ignore_ascii_case("yuyv") {
                    let (w, h) = size_from_name(path).unwrap_or((0, 0));
                    return Ok(frame(PixelFormat::Yuyv, w, h, w * 2, buffer));
                }
                if buffer.starts_with(&[0xFF, 0xD8]) {
                    return Ok(frame(PixelFormat::Mjpeg, 0, 0, 0, buffer));
                }
                // Not a camera format: decode here. A file that does not decode becomes an
                // empty frame, which the loop's decoder rejects and counts like any corrupt
                // frame.
                match frame::decode_image(buffer, path) {
                    Ok(img) => {
                        *rgb = img;
                        let (w, h) = (rgb.width(), rgb.height());
                        Ok(frame(PixelFormat::Rgb24, w, h, w * 3, rgb.as_bytes()))
                    }
                    Err(e) => {
                        log::debug!("replay: {e}");
                        Ok(frame(PixelFormat::Rgb24, 0, 0, 0, &[]))
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        let kind = match &self.input {
            Input::Stream { .. } => "mjpeg stream",
            Input::Files { files, .. } if files.len() == 1 => "image",
            Input::Files { .. } => "image folder",
        };
        format!(
            "replay {kind} {} ({} frames at {} fps{}{})",
            self.settings.path.display(),
            self.len(),
            self.settings.fps,
            if self.settings.looped { ", looped" } else { "" },
            if self.settings.pace { ", real time" } else { "" },
        )
    }

    fn fps(&self) -> Option<f64> {
        Some(self.settings.fps)
    }

    fn clock(&self) -> SourceClock {
        let ended = self.next >= self.len() && !self.settings.looped;
        SourceClock::Stream {
            next: (!ended).then(|| self.timestamp(self.sequence)),
            paced: self.settings.pace,
        }
    }
}

/// `WxH` in a file name (`stream_640x480_f000.yuyv` → 640x480).
fn size_from_name(path: &Path) -> Option<(u32, u32)> {
    let stem = path.file_stem()?.to_str()?;
    stem.split(['_', '-', '.']).find_map(|part| {
        let (w, h) = part.split_once('x')?;
        Some((w.parse().ok()?, h.parse().ok()?))
    })
}

/// Splits an MJPEG elementary stream into frames: the byte range of each JPEG from its SOI
/// (FF D8) to its EOI (FF D9).
///
/// Segments are walked by their lengths up to the scan, and entropy-coded data is scanned for
/// the next marker (a 0xFF there is always followed by 0x00 stuffing or a restart marker), so
/// an EOI inside an embedded EXIF thumbnail does not end the frame. Garbage between frames is
/// skipped. A frame whose structure is broken (a length running past the data, a missing EOI)
/// ends where the next SOI begins, or at the end of the file: it is still handed out, and the
/// decoder rejects it as corrupt, as it would a damaged frame from a camera.
pub fn split_mjpeg(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some(start) = find_soi(bytes, pos) {
        let end = match jpeg_end(bytes, start) {
            Some(end) => end,
            None => find_soi(bytes, start + 2).unwrap_or(bytes.len()),
        };
        frames.push((start, end));
        pos = end;
    }
    frames
}

/// The next FF D8 FF (SOI followed by a marker) at or after `from`.
fn find_soi(bytes: &[u8], from: usize) -> Option<usize> {
    let hay = bytes.get(from..)?;
    hay.windows(3).position(|w| w == [0xFF, 0xD8, 0xFF]).map(|i| from + i)
}

/// The end (one past EOI) of the well-formed JPEG starting at `start`, if it is one.
fn jpeg_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut pos = start + 2;
    loop {
        // Markers may be preceded by fill bytes (0xFF).
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        while *bytes.get(pos + 1)? == 0xFF {
            pos += 1;
        }
        let marker = *bytes.get(pos + 1)?;
        pos += 2;
        match marker {
            0xD9 => return Some(pos),
            0xD8 => return None,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(pos)?, *bytes.get(pos + 1)?]));
        if len < 2 {
            return None;
        }
        pos += len;
        if pos > bytes.len() {
            return None;
        }
        if marker == 0xDA {
            // Entropy-coded data up to the next marker that is not stuffing or a restart.
            loop {
                let i = bytes.get(pos..)?.iter().position(|&b| b == 0xFF)?;
                pos += i;
                match *bytes.get(pos + 1)? {
                    0x00 | 0xD0..=0xD7 | 0xFF => pos += 1,
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A minimal marker skeleton: SOI, APP0 with a fake EOI inside, SOS with stuffed data, EOI.
    fn fake_jpeg(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        v.extend([0xFF, 0xE0, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00]);
        v.extend([0xFF, 0xDA, 0x00, 0x02]);
        v.extend(payload);
        v.extend([0xFF, 0xD9]);
        v
    }

    #[test]
    fn splits_back_to_back_frames_and_skips_garbage() {
        let a = fake_jpeg(&[1, 0xFF, 0x00, 2, 0xFF, 0xD3, 3]);
        let b = fake_jpeg(&[4, 5]);
        let mut stream = a.clone();
        stream.extend([0x00, 0x13, 0x37]);
        stream.extend(&b);
        let frames = split_mjpeg(&stream);
        assert_eq!(frames.len(), 2);
        assert_eq!(&stream[frames[0].0..frames[0].1], &a[..]);
        assert_eq!(&stream[frames[1].0..frames[1].1], &b[..]);
    }

    #[test]
    fn broken_frame_ends_at_next_start() {
        let mut a = fake_jpeg(&[1, 2]);
        a.truncate(a.len() - 2); // no EOI
        let b = fake_jpeg(&[3]);
        let mut stream = a.clone();
        stream.extend(&b);
        let frames = split_mjpeg(&stream);
        assert_eq!(frames, vec![(0, a.len()), (a.len(), stream.len())]);
        assert!(split_mjpeg(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn size_comes_from_the_file_name() {
        assert_eq!(size_from_name(Path::new("x/hamilton_640x480_f137.yuyv")), Some((640, 480)));
        assert_eq!(size_from_name(Path::new("frame.yuyv")), None);
    }
}
