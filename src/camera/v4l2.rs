//! V4L2 camera source (feature `v4l2`): a USB (UVC) camera through the kernel's video4linux2
//! API, memory-mapped streaming.
//!
//! [`V4l2Source`] negotiates a format the loop can decode (MJPEG preferred, YUYV as fallback),
//! asks for a frame interval, maps a few kernel buffers and hands each filled buffer out as a
//! [`RawFrame`] that borrows the mapping: no copy and no allocation per frame. Every wait is a
//! `poll(2)` bounded by the caller's timeout. When the device errors, vanishes or stays silent
//! longer than [`V4l2Settings::frame_timeout`], the source reports
//! [`CameraError::Disconnected`] once and then reopens the device on later calls with
//! exponential backoff ([`reconnect_delay`]), never sleeping past the timeout of one call.
//! [`probe`] opens a device, captures a few frames and reports what it saw (`portier camera
//! check`, `portier selftest`).
//!
//! The `v4l` crate provides the device handle, the kernel ABI types and ioctl numbers. Its
//! mmap `Stream` is not used: after a dequeue timeout its next call queues again a buffer the
//! kernel still owns (EINVAL on every later call), and its `Drop` panics on unexpected errors;
//! the small buffer ring below queues only what it has dequeued and never panics.
//!
//! Must not: decode frames, allocate per frame once streaming, block longer than the timeout
//! it is given (opening a device is the exception: a few ioctls, done at most once per
//! backoff step), or panic on anything a device can return.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::str::FromStr;
use std::time::{Duration, Instant};

use v4l::v4l2::vidioc;
use v4l::v4l_sys;
use v4l::video::Capture as _;

use super::{CameraError, FrameSource, PixelFormat, RawFrame};

/// First delay before reopening a lost camera (then doubled per failed attempt).
pub const RECONNECT_FIRST: Duration = Duration::from_millis(500);
/// Longest delay between two attempts to reopen a lost camera.
pub const RECONNECT_MAX: Duration = Duration::from_secs(8);

/// FourCC codes we can decode (videodev2.h: V4L2_PIX_FMT_MJPEG, _JPEG, _YUYV).
const FOURCC_MJPG: [u8; 4] = *b"MJPG";
const FOURCC_JPEG: [u8; 4] = *b"JPEG";
const FOURCC_YUYV: [u8; 4] = *b"YUYV";

/// Which pixel format to ask the camera for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatPreference {
    /// MJPEG when the device offers it (less USB bandwidth, higher rates), YUYV otherwise.
    #[default]
    Auto,
    /// MJPEG only.
    Mjpeg,
    /// YUYV only.
    Yuyv,
}

impl FormatPreference {
    /// The formats to try, best first.
    fn candidates(self) -> &'static [PixelFormat] {
        match self {
            FormatPreference::Auto => &[PixelFormat::Mjpeg, PixelFormat::Yuyv],
            FormatPreference::Mjpeg => &[PixelFormat::Mjpeg],
            FormatPreference::Yuyv => &[PixelFormat::Yuyv],
        }
    }
}

impl FromStr for FormatPreference {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(FormatPreference::Auto),
            "mjpeg" | "mjpg" | "jpeg" => Ok(FormatPreference::Mjpeg),
            "yuyv" => Ok(FormatPreference::Yuyv),
            other => Err(format!("unknown camera format {other:?} (auto, mjpeg or yuyv)")),
        }
    }
}

impl fmt::Display for FormatPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormatPreference::Auto => "auto",
            FormatPreference::Mjpeg => "mjpeg",
            FormatPreference::Yuyv => "yuyv",
        })
    }
}

/// How to open and run a V4L2 camera.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Settings {
    /// Device node, e.g. `/dev/video0` (a udev symlink such as `/dev/v4l/by-id/...` survives
    /// replugging better).
    pub device: PathBuf,
    /// Requested width in pixels; the driver may pick the nearest size it supports.
    pub width: u32,
    /// Requested height in pixels.
    pub height: u32,
    /// Requested frame rate (frames per second); the driver may pick the nearest interval.
    pub fps: u32,
    /// Which pixel format to ask for.
    pub format: FormatPreference,
    /// Kernel buffers to map (clamped to 2..=32; the driver may grant more).
    pub buffers: u32,
    /// A streaming camera that delivers no frame for this long is treated as lost and reopened.
    pub frame_timeout: Duration,
}

impl V4l2Settings {
    /// 640x480 at 30 fps, format chosen automatically, 4 buffers, lost after 2 s of silence.
    pub fn new(device: impl Into<PathBuf>) -> Self {
        V4l2Settings {
            device: device.into(),
            width: 640,
            height: 480,
            fps: 30,
            format: FormatPreference::Auto,
            buffers: 4,
            frame_timeout: Duration::from_secs(2),
        }
    }

    /// The settings a `[camera] source = "v4l2"` section asks for (`portier run`, `portier
    /// selftest`): its size, rate (rounded, 1..=240), format and buffers; a camera silent for
    /// four frame timeouts is lost and reopened.
    pub fn from_config(
        device: PathBuf,
        width: u32,
        height: u32,
        fps: f64,
        format: super::CameraFormat,
        buffers: u32,
        frame_timeout: Duration,
    ) -> Self {
        use super::CameraFormat;
        let mut s = V4l2Settings::new(device);
        s.width = width;
        s.height = height;
        s.fps = fps.round().clamp(1.0, 240.0) as u32;
        s.format = match format {
            CameraFormat::Auto => FormatPreference::Auto,
            CameraFormat::Mjpeg => FormatPreference::Mjpeg,
            CameraFormat::Yuyv => FormatPreference::Yuyv,
        };
        s.buffers = buffers;
        s.frame_timeout = frame_timeout * 4;
        s
    }
}

/// Delay before reopening attempt number `attempt` (0 for the first) of a lost camera:
/// 0.5 s, 1 s, 2 s, 4 s, then 8 s for every later attempt.
pub fn reconnect_delay(attempt: u32) -> Duration {
    // 2^4 * 0.5 s = 8 s: the cap is reached at the fifth attempt, so no overflow beyond it.
    RECONNECT_FIRST.saturating_mul(1 << attempt.min(4)).min(RECONNECT_MAX)
}

/// What one `next_frame` call does while the camera is lost: how long to sleep first (never
/// beyond `timeout`) and whether to try reopening after that sleep.
fn reconnect_step(now: Instant, next_try: Instant, timeout: Duration) -> (Duration, bool) {
    let wait = next_try.saturating_duration_since(now);
    if wait <= timeout {
        (wait, true)
    } else {
        (timeout, false)
    }
}

/// Turns the kernel's 32-bit buffer sequence into the source's 64-bit one: continuous across
/// the counter wrapping and across reconnects (each new stream restarts the kernel count at 0).
#[derive(Debug, Default, Clone, Copy)]
struct SequenceCounter {
    base: u64,
    last: Option<u32>,
    next: u64,
}

impl SequenceCounter {
    fn extend(&mut self, kernel: u32) -> u64 {
        if let Some(last) = self.last {
            if kernel < last {
                self.base += 1 << 32;
            }
        }
        self.last = Some(kernel);
        let seq = self.base + u64::from(kernel);
        self.next = seq + 1;
        seq
    }

    /// A new stream starts: its kernel sequence 0 follows the last frame delivered.
    fn restart(&mut self) {
        self.base = self.next;
        self.last = None;
    }
}

/// What went wrong while opening or configuring a device.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot open: {0}")]
    Open(io::Error),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
    #[error(
        "not a streaming video capture device (driver {driver}; a UVC camera's second node \
         is metadata only: try the other /dev/video*)"
    )]
    NotCapture { driver: String },
    #[error(
        "no format portier can decode ({wanted}) at {width}x{height}; the device offers: {offered}"
    )]
    NoFormat { wanted: String, width: u32, height: u32, offered: String },
    #[error("the driver granted no buffers")]
    NoBuffers,
}

impl SetupError {
    fn io(what: &'static str) -> impl FnOnce(io::Error) -> SetupError {
        move |source| SetupError::Io { what, source }
    }

    /// As `V4l2Source::open` reports it (while reconnecting, a failure only schedules the
    /// next attempt).
    fn into_open_error(self, device: &Path) -> CameraError {
        CameraError::Open { device: device.to_path_buf(), reason: self.to_string() }
    }
}

/// Calls one V4L2 ioctl, retrying when a signal interrupted it.
///
/// # Safety
///
/// `request` must be an ioctl whose argument is a `T` (as declared in videodev2.h) and `fd`
/// an open file descriptor.
unsafe fn xioctl<T>(fd: c_int, request: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: the caller guarantees that `arg` is the argument type of `request`; it is a
        // valid, exclusive pointer for the duration of the call.
        let result = unsafe { v4l::v4l2::ioctl(fd, request, (arg as *mut T).cast::<c_void>()) };
        match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A zero-initialised kernel ABI struct.
fn zeroed<T: ZeroValid>() -> T {
    // SAFETY: `ZeroValid` is implemented only for the plain-data videodev2.h structs below, for
    // which all-zero bytes are a valid value (integers, arrays and unions of them, and raw
    // pointers, which may be null).
    unsafe { std::mem::zeroed() }
}

/// Marker for kernel structs that are valid when zeroed (see [`zeroed`]).
trait ZeroValid {}
impl ZeroValid for v4l_sys::v4l2_capability {}
impl ZeroValid for v4l_sys::v4l2_fmtdesc {}
impl ZeroValid for v4l_sys::v4l2_format {}
impl ZeroValid for v4l_sys::v4l2_requestbuffers {}
impl ZeroValid for v4l_sys::v4l2_buffer {}

/// A NUL-padded kernel string, lossily decoded (a 32-byte field can cut a UTF-8 character).
fn kernel_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

/// A FourCC code as its four characters.
fn fourcc_str(code: u32) -> String {
    code.to_le_bytes().iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

fn fourcc_of(format: PixelFormat) -> u32 {
    u32::from_le_bytes(match format {
        PixelFormat::Mjpeg => FOURCC_MJPG,
        PixelFormat::Yuyv => FOURCC_YUYV,
        // V4L2_PIX_FMT_RGB24; never asked of a camera (see `FormatPreference::candidates`).
        PixelFormat::Rgb24 => *b"RGB3",
    })
}

/// The pixel format behind a FourCC, when we decode it.
fn pixel_format_of(code: u32) -> Option<PixelFormat> {
    match code.to_le_bytes() {
        FOURCC_MJPG | FOURCC_JPEG => Some(PixelFormat::Mjpeg),
        FOURCC_YUYV => Some(PixelFormat::Yuyv),
        _ => None,
    }
}

/// What the driver reported about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel driver, e.g. `uvcvideo` or `vivid`.
    pub driver: String,
    /// Device name (the camera's USB product string for UVC).
    pub card: String,
    /// Where it is attached, e.g. `usb-0000:01:00.0-1.2`.
    pub bus: String,
}

/// The format the driver actually granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Negotiated {
    /// How frames are laid out.
    pub format: PixelFormat,
    /// The FourCC the driver reported (`MJPG`, `JPEG` or `YUYV`).
    pub fourcc: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per line (raw formats; 0 for MJPEG).
    pub stride: u32,
    /// Largest frame the driver may deliver, in bytes.
    pub sizeimage: u32,
    /// Frames per second the driver granted, when it reports a frame interval.
    pub fps: Option<f64>,
}

/// One mapped kernel buffer, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is the start of a live read-only mapping of `len` bytes that lasts as
        // long as `self` (unmapped only in `drop`). The kernel writes into it only while the
        // buffer is queued; a buffer is read only between its dequeue and its next queue,
        // which takes `&mut` of the owning `Capture` and so ends every borrow of these bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no slice of it outlives
        // `self` (see `bytes`). A failing munmap leaves the mapping in place: nothing unsafe.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}

/// One frame dequeued from the kernel, described without borrowing the buffer.
#[derive(Debug, Clone, Copy)]
struct Dequeued {
    index: usize,
    len: usize,
    sequence: u32,
    /// Capture time on CLOCK_MONOTONIC, when the driver stamps buffers with it.
    monotonic: Option<Duration>,
}

/// One open, streaming device: the handle, its negotiated format and mapped buffers.
struct Capture {
    device: v4l::Device,
    info: DeviceInfo,
    negotiated: Negotiated,
    offered: Vec<String>,
    buffers: Vec<Mapping>,
    /// The buffer lent to the caller as the last frame; queued again at the next call.
    lent: Option<usize>,
    streaming: bool,
    /// Buffers the driver flagged as corrupt (V4L2_BUF_FLAG_ERROR), dropped here.
    error_buffers: u64,
}

impl Capture {
    fn fd(&self) -> c_int {
        self.device.handle().fd()
    }

    fn open(settings: &V4l2Settings) -> Result<Capture, SetupError> {
        let device = v4l::Device::with_path(&settings.device).map_err(SetupError::Open)?;
        let fd = device.handle().fd();

        let mut caps: v4l_sys::v4l2_capability = zeroed();
        // SAFETY: VIDIOC_QUERYCAP takes a v4l2_capability.
        unsafe { xioctl(fd, vidioc::VIDIOC_QUERYCAP, &mut caps) }
            .map_err(SetupError::io("query capabilities"))?;
        let info = DeviceInfo {
            driver: kernel_str(&caps.driver),
            card: kernel_str(&caps.card),
            bus: kernel_str(&caps.bus_info),
        };
        let dev_caps = if caps.capabilities & v4l_sys::V4L2_CAP_DEVICE_CAPS != 0 {
            caps.device_caps
        } else {
            caps.capabilities
        };
        let needed = v4l_sys::V4L2_CAP_VIDEO_CAPTURE | v4l_sys::V4L2_CAP_STREAMING;
        if dev_caps & needed != needed {
            return Err(SetupError::NotCapture { driver: info.driver });
        }

        let offered = enum_formats(fd);
        let mut negotiated = negotiate(fd, settings, &offered).map_err(|e| match e {
            NegotiationError::Io(source) => SetupError::Io { what: "set format", source },
            NegotiationError::NoFormat => SetupError::NoFormat {
                wanted: settings
                    .format
                    .candidates()
                    .iter()
                    .map(|&f| fourcc_str(fourcc_of(f)))
                    .collect::<Vec<_>>()
                    .join(" or "),
                width: settings.width,
                height: settings.height,
                offered: describe_offered(&device, &offered),
            },
        })?;
        negotiated.fps = set_frame_rate(&device, settings.fps);

        let mut capture = Capture {
            device,
            info,
            negotiated,
            offered: offered.iter().map(|(code, _)| fourcc_str(*code)).collect(),
            buffers: Vec::new(),
            lent: None,
            streaming: false,
            error_buffers: 0,
        };
        capture.map_buffers(settings.buffers.clamp(2, 32))?;
        capture.start()?;
        Ok(capture)
    }

    fn map_buffers(&mut self, count: u32) -> Result<(), SetupError> {
        let fd = self.fd();
        let mut request: v4l_sys::v4l2_requestbuffers = zeroed();
        request.count = count;
        request.type_ = v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
        request.memory = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers.
        unsafe { xioctl(fd, vidioc::VIDIOC_REQBUFS, &mut request) }
            .map_err(SetupError::io("request buffers"))?;
        if request.count == 0 {
            return Err(SetupError::NoBuffers);
        }
        self.buffers.reserve_exact(request.count as usize);
        for index in 0..request.count {
            let mut buf = self.buffer_desc();
            buf.index = index;
            // SAFETY: VIDIOC_QUERYBUF takes a v4l2_buffer.
            unsafe { xioctl(fd, vidioc::VIDIOC_QUERYBUF, &mut buf) }
                .map_err(SetupError::io("query buffer"))?;
            let len = buf.length as usize;
            // SAFETY: for MMAP buffers the driver set `m.offset` (the union's active member).
            let offset = unsafe { buf.m.offset };
            // SAFETY: a fresh read-only shared mapping of the buffer the driver described
            // (offset and length from QUERYBUF) on our open fd; no existing memory is touched.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    libc::off_t::from(offset),
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(SetupError::Io {
                    what: "map buffer",
                    source: io::Error::last_os_error(),
                });
            }
            let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(SetupError::Io {
                what: "map buffer",
                source: io::Error::other("mmap returned null"),
            })?;
            self.buffers.push(Mapping { ptr, len });
        }
        Ok(())
    }

    fn buffer_desc(&self) -> v4l_sys::v4l2_buffer {
        let mut buf: v4l_sys::v4l2_buffer = zeroed();
        buf.type_ = v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
        buf.memory = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;
        buf
    }

    fn queue(&mut self, index: usize) -> io::Result<()> {
        let mut buf = self.buffer_desc();
        buf.index = index as u32;
        // SAFETY: VIDIOC_QBUF takes a v4l2_buffer.
        unsafe { xioctl(self.fd(), vidioc::VIDIOC_QBUF, &mut buf) }
    }

    fn start(&mut self) -> Result<(), SetupError> {
        for index in 0..self.buffers.len() {
            self.queue(index).map_err(SetupError::io("queue buffer"))?;
        }
        let mut kind: c_int = v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE as c_int;
        // SAFETY: VIDIOC_STREAMON takes an int (the buffer type).
        unsafe { xioctl(self.fd(), vidioc::VIDIOC_STREAMON, &mut kind) }
            .map_err(SetupError::io("start streaming"))?;
        self.streaming = true;
        Ok(())
    }

    /// Waits until `deadline` for a filled buffer. `Ok(None)`: none came in time.
    fn dequeue(&mut self, deadline: Instant) -> io::Result<Option<Dequeued>> {
        // The previous frame's borrow ended with this `&mut self`: hand its buffer back first.
        if let Some(index) = self.lent.take() {
            self.queue(index)?;
        }
        // poll(2) said the device is in error (vanished, or streaming stopped under us).
        let mut device_error = false;
        loop {
            let mut buf = self.buffer_desc();
            // SAFETY: VIDIOC_DQBUF takes a v4l2_buffer. The fd is non-blocking (the v4l crate
            // opens with O_NONBLOCK): EAGAIN means no filled buffer yet.
            match unsafe { xioctl(self.fd(), vidioc::VIDIOC_DQBUF, &mut buf) } {
                Ok(()) => {
                    let index = buf.index as usize;
                    let Some(mapping) = self.buffers.get(index) else {
                        return Err(io::Error::other(format!("driver returned buffer {index}")));
                    };
                    if buf.flags & v4l_sys::V4L2_BUF_FLAG_ERROR != 0 || buf.bytesused == 0 {
                        // The driver says the data is damaged (or empty): drop it here.
                        self.error_buffers += 1;
                        self.queue(index)?;
                        continue;
                    }
                    let monotonic = (buf.flags & v4l_sys::V4L2_BUF_FLAG_TIMESTAMP_MASK
                        == v4l_sys::V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC)
                        .then(|| timeval_duration(buf.timestamp.tv_sec, buf.timestamp.tv_usec))
                        .flatten();
                    self.lent = Some(index);
                    return Ok(Some(Dequeued {
                        index,
                        // MJPEG frames vary in size: only `bytesused` bytes are the image.
                        len: (buf.bytesused as usize).min(mapping.len),
                        sequence: buf.sequence,
                        monotonic,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && device_error => {
                    return Err(io::Error::other("device reports an error and delivers nothing"));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Whole milliseconds, rounded down: never wait past the deadline.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ms = c_int::try_from(remaining.as_millis()).unwrap_or(c_int::MAX);
            if ms == 0 {
                return Ok(None);
            }
            let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else if ready > 0 {
                // DQBUF above then names the error (ENODEV, EIO...) or delivers a last frame.
                device_error = pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
            }
        }
    }

    fn frame_bytes(&self, dequeued: &Dequeued) -> &[u8] {
        self.buffers.get(dequeued.index).map_or(&[], |m| &m.bytes()[..dequeued.len])
    }

    fn describe(&self, path: &Path) -> String {
        let n = &self.negotiated;
        let fps = n.fps.map_or_else(|| "unknown rate".to_string(), |f| format!("{f:.3} fps"));
        format!(
            "v4l2 {} ({} \"{}\" at {}): {} {}x{} at {}, {} buffers",
            path.display(),
            self.info.driver,
            self.info.card,
            self.info.bus,
            fourcc_str(n.fourcc),
            n.width,
            n.height,
            fps,
            self.buffers.len()
        )
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.streaming {
            let mut kind: c_int = v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE as c_int;
            // SAFETY: VIDIOC_STREAMOFF takes an int. Errors (ENODEV after an unplug) do not
            // matter: closing the fd below releases everything anyway.
            let _ = unsafe { xioctl(self.fd(), vidioc::VIDIOC_STREAMOFF, &mut kind) };
        }
        // Unmap before the device (and its fd) is dropped with the remaining fields.
        self.buffers.clear();
    }
}

fn timeval_duration(sec: i64, usec: i64) -> Option<Duration> {
    let sec = u64::try_from(sec).ok()?;
    let nanos = u32::try_from(usec).ok()?.checked_mul(1000)?;
    (nanos < 1_000_000_000).then(|| Duration::new(sec, nanos))
}

/// CLOCK_MONOTONIC now (the clock the kernel stamps buffers with).
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists on Linux.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0;
    match (ok, u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (true, Ok(s), Ok(ns)) if ns < 1_000_000_000 => Duration::new(s, ns),
        _ => Duration::ZERO,
    }
}

/// Every format the device lists: (FourCC, description).
fn enum_formats(fd: c_int) -> Vec<(u32, String)> {
    let mut formats = Vec::new();
    // A bound against drivers that never end the list.
    for index in 0..256 {
        let mut desc: v4l_sys::v4l2_fmtdesc = zeroed();
        desc.index = index;
        desc.type_ = v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
        // SAFETY: VIDIOC_ENUM_FMT takes a v4l2_fmtdesc.
        if unsafe { xioctl(fd, vidioc::VIDIOC_ENUM_FMT, &mut desc) }.is_err() {
            break;
        }
        formats.push((desc.pixelformat, kernel_str(&desc.description)));
    }
    formats
}

/// "MJPG (Motion-JPEG: 640x480 1280x720 ...), YUYV (...)" for an error message: every
/// format, the sizes of the first few (a UVC camera lists two or three formats; vivid lists 80).
fn describe_offered(device: &v4l::Device, offered: &[(u32, String)]) -> String {
    use v4l::framesize::FrameSizeEnum;
    if offered.is_empty() {
        return "nothing (format enumeration failed)".to_string();
    }
    let mut out = Vec::with_capacity(offered.len());
    for (i, (code, desc)) in offered.iter().enumerate() {
        let sizes = if i < 4 {
            device
                .enum_framesizes(v4l::FourCC::from(*code))
                .map(|sizes| {
                    sizes
                        .iter()
                        .take(10)
                        .map(|s| match &s.size {
                            FrameSizeEnum::Discrete(d) => format!(" {}x{}", d.width, d.height),
                            FrameSizeEnum::Stepwise(s) => format!(
                                " {}x{}..{}x{}",
                                s.min_width, s.min_height, s.max_width, s.max_height
                            ),
                        })
                        .collect::<String>()
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        let sizes = if sizes.is_empty() { String::new() } else { format!(":{sizes}") };
        out.push(format!("{} ({desc}{sizes})", fourcc_str(*code)));
    }
    out.join(", ")
}

enum NegotiationError {
    Io(io::Error),
    NoFormat,
}

/// Sets the first acceptable format the device offers and keeps what the driver granted.
fn negotiate(
    fd: c_int,
    settings: &V4l2Settings,
    offered: &[(u32, String)],
) -> Result<Negotiated, NegotiationError> {
    let mut last_error = None;
    for &wanted in settings.format.candidates() {
        // Ask for a FourCC the device lists (JPEG for MJPEG on some cameras); when the list is
        // empty (enumeration unsupported), ask anyway and judge by what the driver grants.
        let code = offered
            .iter()
            .map(|(code, _)| *code)
            .find(|&code| pixel_format_of(code) == Some(wanted))
            .or_else(|| offered.is_empty().then(|| fourcc_of(wanted)));
        let Some(code) = code else { continue };

        let mut format: v4l_sys::v4l2_format = zeroed();
        format.type_ = v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
        // Writing the union's `pix` member selects it (the capture type's member).
        format.fmt.pix.width = settings.width;
        format.fmt.pix.height = settings.height;
        format.fmt.pix.pixelformat = code;
        format.fmt.pix.field = v4l_sys::v4l2_field_V4L2_FIELD_ANY;
        // SAFETY: VIDIOC_S_FMT takes a v4l2_format; the driver writes back what it chose.
        if let Err(e) = unsafe { xioctl(fd, vidioc::VIDIOC_S_FMT, &mut format) } {
            last_error = Some(e);
            continue;
        }
        // SAFETY: for a capture-type format the driver filled the `pix` member.
        let pix = unsafe { format.fmt.pix };
        let Some(granted) = pixel_format_of(pix.pixelformat) else { continue };
        let stride = match granted {
            PixelFormat::Mjpeg => 0,
            // Some drivers leave bytesperline 0 for packed formats: 2 bytes per pixel then.
            PixelFormat::Yuyv => pix.bytesperline.max(pix.width.saturating_mul(2)),
            PixelFormat::Rgb24 => pix.bytesperline.max(pix.width.saturating_mul(3)),
        };
        if (pix.width, pix.height) != (settings.width, settings.height) {
            log::warn!(
                "camera {}: asked for {}x{}, the driver chose {}x{}",
                settings.device.display(),
                settings.width,
                settings.height,
                pix.width,
                pix.height
            );
        }
        return Ok(Negotiated {
            format: granted,
            fourcc: pix.pixelformat,
            width: pix.width,
            height: pix.height,
            stride,
            sizeimage: pix.sizeimage,
            fps: None,
        });
    }
    match last_error {
        Some(e) if offered.is_empty() => Err(NegotiationError::Io(e)),
        _ => Err(NegotiationError::NoFormat),
    }
}

/// Asks for 1/`fps` s per frame; returns the rate the driver reports (None when it has none).
fn set_frame_rate(device: &v4l::Device, fps: u32) -> Option<f64> {
    let params = v4l::video::capture::Parameters::with_fps(fps.max(1));
    let granted = match device.set_params(&params) {
        Ok(granted) => granted,
        Err(e) => {
            // Some drivers have no frame-interval control; they run at their own rate.
            log::debug!("camera: cannot set frame rate {fps}: {e}");
            device.params().ok()?
        }
    };
    let interval = granted.interval;
    (interval.numerator > 0 && interval.denominator > 0)
        .then(|| f64::from(interval.denominator) / f64::from(interval.numerator))
}

/// Where the source is between frames.
enum State {
    Streaming(Box<Capture>),
    /// Lost; the next reopening attempt is `attempt` (0 = first) at `next_try`.
    Lost {
        attempt: u32,
        next_try: Instant,
    },
}

/// A V4L2 camera as a [`FrameSource`]; reconnects by itself (see the module docs).
pub struct V4l2Source {
    settings: V4l2Settings,
    state: State,
    /// Last successful frame or (re)open: the start of a silence.
    last_progress: Instant,
    /// Source clock origin: `Instant` and CLOCK_MONOTONIC taken together at open.
    opened_at: Instant,
    opened_mono: Duration,
    sequence: SequenceCounter,
    description: String,
    fps: Option<f64>,
    error_buffers: u64,
    reconnects: u64,
}

impl V4l2Source {
    /// Opens the device, negotiates format and rate, maps buffers and starts streaming.
    ///
    /// Fails with [`CameraError::Open`] when the device cannot be opened or offers no format
    /// that can be decoded (the message lists what it offers).
    pub fn open(settings: V4l2Settings) -> Result<V4l2Source, CameraError> {
        let capture = Capture::open(&settings).map_err(|e| e.into_open_error(&settings.device))?;
        let description = capture.describe(&settings.device);
        log::info!("camera: {description}");
        let now = Instant::now();
        Ok(V4l2Source {
            fps: capture.negotiated.fps,
            state: State::Streaming(Box::new(capture)),
            settings,
            last_progress: now,
            opened_at: now,
            opened_mono: monotonic_now(),
            sequence: SequenceCounter::default(),
            description,
            error_buffers: 0,
            reconnects: 0,
        })
    }

    /// The format in use (None while the camera is lost).
    pub fn negotiated(&self) -> Option<Negotiated> {
        match &self.state {
            State::Streaming(capture) => Some(capture.negotiated),
            State::Lost { .. } => None,
        }
    }

    /// Driver, card and bus (None while the camera is lost).
    pub fn device_info(&self) -> Option<&DeviceInfo> {
        match &self.state {
            State::Streaming(capture) => Some(&capture.info),
            State::Lost { .. } => None,
        }
    }

    /// Frames the driver marked as corrupt and this source dropped, since it was opened.
    pub fn error_buffers(&self) -> u64 {
        self.error_buffers
            + match &self.state {
                State::Streaming(capture) => capture.error_buffers,
                State::Lost { .. } => 0,
            }
    }

    /// Successful reconnections since the source was opened.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Whether the camera is currently lost (reopening with backoff).
    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost { .. })
    }

    /// Drops the device and reports the loss (once).
    fn lose(&mut self, reason: String) -> CameraError {
        if let State::Streaming(capture) = &self.state {
            self.error_buffers += capture.error_buffers;
        }
        let device = self.settings.device.display().to_string();
        log::warn!("camera {device} lost: {reason}; reopening with backoff");
        self.state = State::Lost { attempt: 0, next_try: Instant::now() + reconnect_delay(0) };
        CameraError::Disconnected { device, reason }
    }

    /// While lost: sleeps toward the next attempt (within `timeout`) and tries to reopen.
    /// Returns whether the camera streams again.
    fn try_reconnect(&mut self, timeout: Duration) -> bool {
        let State::Lost { attempt, next_try } = self.state else { return true };
        let (wait, try_now) = reconnect_step(Instant::now(), next_try, timeout);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if !try_now {
            return false;
        }
        match Capture::open(&self.settings) {
            Ok(capture) => {
                self.description = capture.describe(&self.settings.device);
                self.fps = capture.negotiated.fps;
                self.state = State::Streaming(Box::new(capture));
                self.sequence.restart();
                self.last_progress = Instant::now();
                self.reconnects += 1;
                log::info!(
                    "camera reconnected after {} attempts: {}",
                    attempt + 1,
                    self.description
                );
                true
            }
            Err(e) => {
                let delay = reconnect_delay(attempt + 1);
                log::debug!(
                    "camera {}: reopening failed ({e}); next try in {delay:?}",
                    self.settings.device.display()
                );
                self.state = State::Lost {
                    attempt: attempt.saturating_add(1),
                    next_try: Instant::now() + delay,
                };
                false
            }
        }
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self, timeout: Duration) -> Result<RawFrame<'_>, CameraError> {
        let deadline = Instant::now() + timeout;
        if self.is_lost() && !self.try_reconnect(timeout) {
            return Err(CameraError::Timeout(timeout));
        }
        let State::Streaming(capture) = &mut self.state else {
            return Err(CameraError::Timeout(timeout));
        };
        let dequeued = match capture.dequeue(deadline) {
            Ok(Some(dequeued)) => dequeued,
            Ok(None) => {
                let silent = self.last_progress.elapsed();
                if silent >= self.settings.frame_timeout {
                    return Err(self.lose(format!("no frame for {silent:.1?}")));
                }
                return Err(CameraError::Timeout(timeout));
            }
            Err(e) => return Err(self.lose(format!("capture failed: {e}"))),
        };
        let now = Instant::now();
        self.last_progress = now;
        let sequence = self.sequence.extend(dequeued.sequence);
        let timestamp = match dequeued.monotonic {
            Some(t) => t.saturating_sub(self.opened_mono),
            None => now.duration_since(self.opened_at),
        };
        // Borrow the buffer only now, after every path that needs `&mut self`.
        let State::Streaming(capture) = &self.state else {
            return Err(CameraError::Timeout(timeout));
        };
        let n = &capture.negotiated;
        Ok(RawFrame {
            format: n.format,
            width: n.width,
            height: n.height,
            stride: n.stride,
            data: capture.frame_bytes(&dequeued),
            sequence,
            timestamp,
        })
    }

    fn describe(&self) -> String {
        match self.state {
            State::Streaming(_) => self.description.clone(),
            State::Lost { .. } => format!("{} (lost, reconnecting)", self.description),
        }
    }

    fn fps(&self) -> Option<f64> {
        self.fps
    }
}

/// What [`probe`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// The device node probed.
    pub device: PathBuf,
    /// Driver, card and bus.
    pub info: DeviceInfo,
    /// FourCCs the device offers.
    pub offered: Vec<String>,
    /// What was asked for.
    pub requested: (FormatPreference, u32, u32, u32),
    /// The format granted.
    pub negotiated: Negotiated,
    /// Mapped buffers.
    pub buffers: usize,
    /// Frames captured.
    pub frames: u32,
    /// Frames the sequence numbers say were dropped between the first and last frame.
    pub dropped: u64,
    /// First and last sequence number seen.
    pub sequence_range: (u64, u64),
    /// Smallest, largest and total frame size in bytes.
    pub bytes_min: usize,
    /// Largest frame in bytes.
    pub bytes_max: usize,
    /// All frames' bytes.
    pub bytes_total: u64,
    /// Frames that cannot be what the format says: a raw frame shorter than stride x height,
    /// or an MJPEG frame not starting with a JPEG start-of-image marker.
    pub malformed: u32,
    /// Frames the driver flagged as corrupt (dropped before delivery).
    pub error_buffers: u64,
    /// From streaming start to the first frame.
    pub first_frame_after: Duration,
    /// From the first to the last frame.
    pub capture_time: Duration,
}

impl ProbeReport {
    /// Frames per second measured between the first and the last frame.
    pub fn measured_fps(&self) -> Option<f64> {
        let secs = self.capture_time.as_secs_f64();
        (self.frames > 1 && secs > 0.0).then(|| f64::from(self.frames - 1) / secs)
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.negotiated;
        let (pref, w, h, fps) = self.requested;
        writeln!(
            f,
            "camera {}: {} \"{}\" at {}",
            self.device.display(),
            self.info.driver,
            self.info.card,
            self.info.bus
        )?;
        writeln!(f, "offers:   {}", self.offered.join(" "))?;
        let rate = n.fps.map_or_else(|| "unknown rate".to_string(), |r| format!("{r:.3} fps"));
        write!(f, "format:   {} {}x{}", fourcc_str(n.fourcc), n.width, n.height)?;
        if n.format != PixelFormat::Mjpeg {
            write!(f, " stride {}", n.stride)?;
        }
        writeln!(
            f,
            " at {rate}, {} buffers of up to {} bytes (asked {pref} {w}x{h} at {fps} fps)",
            self.buffers, n.sizeimage
        )?;
        let measured =
            self.measured_fps().map_or_else(|| "-".to_string(), |r| format!("{r:.1} fps"));
        writeln!(
            f,
            "frames:   {} in {:.2} s ({measured}), first after {} ms",
            self.frames,
            self.capture_time.as_secs_f64(),
            self.first_frame_after.as_millis()
        )?;
        writeln!(
            f,
            "sequence: {}..{}, {} dropped, {} flagged corrupt by the driver",
            self.sequence_range.0, self.sequence_range.1, self.dropped, self.error_buffers
        )?;
        let mean = if self.frames > 0 { self.bytes_total / u64::from(self.frames) } else { 0 };
        writeln!(
            f,
            "bytes:    min {} max {} mean {mean} total {}",
            self.bytes_min, self.bytes_max, self.bytes_total
        )?;
        write!(f, "malformed frames: {}", self.malformed)
    }
}

/// Opens `device` with default settings (automatic format, 640x480 at 30 fps), captures
/// `frames` frames waiting at most `timeout` for each, and reports what it saw.
pub fn probe(device: &Path, frames: u32, timeout: Duration) -> Result<ProbeReport, CameraError> {
    probe_with(V4l2Settings::new(device), frames, timeout)
}

/// [`probe`] with explicit settings. A timeout or a loss during capture is an error: a camera
/// that cannot deliver `frames` frames in a row does not pass a check.
pub fn probe_with(
    settings: V4l2Settings,
    frames: u32,
    timeout: Duration,
) -> Result<ProbeReport, CameraError> {
    let requested = (settings.format, settings.width, settings.height, settings.fps);
    let device = settings.device.clone();
    let started = Instant::now();
    let mut source = V4l2Source::open(settings)?;
    let (info, negotiated, offered, buffers) = match &source.state {
        State::Streaming(c) => (c.info.clone(), c.negotiated, c.offered.clone(), c.buffers.len()),
        State::Lost { .. } => {
            return Err(CameraError::Open { device, reason: "lost while opening".to_string() })
        }
    };
    let mut report = ProbeReport {
        device,
        info,
        offered,
        requested,
        negotiated,
        buffers,
        frames: 0,
        dropped: 0,
        sequence_range: (0, 0),
        bytes_min: usize::MAX,
        bytes_max: 0,
        bytes_total: 0,
        malformed: 0,
        error_buffers: 0,
        first_frame_after: Duration::ZERO,
        capture_time: Duration::ZERO,
    };
    let mut first_at = None;
    let mut last_seq: Option<u64> = None;
    for _ in 0..frames {
        let frame = source.next_frame(timeout)?;
        let now = Instant::now();
        let first = *first_at.get_or_insert(now);
        if report.frames == 0 {
            report.first_frame_after = now.duration_since(started);
            report.sequence_range.0 = frame.sequence;
        }
        report.capture_time = now.duration_since(first);
        if let Some(last) = last_seq {
            report.dropped += frame.sequence.saturating_sub(last + 1);
        }
        last_seq = Some(frame.sequence);
        report.sequence_range.1 = frame.sequence;
        report.frames += 1;
        let len = frame.data.len();
        report.bytes_min = report.bytes_min.min(len);
        report.bytes_max = report.bytes_max.max(len);
        report.bytes_total += len as u64;
        let malformed = match frame.format {
            PixelFormat::Mjpeg => !frame.data.starts_with(&[0xFF, 0xD8]),
            PixelFormat::Yuyv | PixelFormat::Rgb24 => {
                (len as u64) < u64::from(frame.stride) * u64::from(frame.height)
            }
        };
        report.malformed += u32::from(malformed);
    }
    if report.frames == 0 {
        report.bytes_min = 0;
    }
    report.error_buffers = source.error_buffers();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_eight() {
        let delays: Vec<_> = (0..8).map(reconnect_delay).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 8000, 8000, 8000]);
        assert_eq!(reconnect_delay(u32::MAX), RECONNECT_MAX);
    }

    #[test]
    fn reconnect_step_never_sleeps_past_the_timeout() {
        let now = Instant::now();
        let t = Duration::from_millis(100);
        // Due already: try at once.
        assert_eq!(reconnect_step(now, now, t), (Duration::ZERO, true));
        assert_eq!(reconnect_step(now + t, now, t), (Duration::ZERO, true));
        // Due within this call: sleep until then, then try.
        let soon = now + Duration::from_millis(40);
        assert_eq!(reconnect_step(now, soon, t), (Duration::from_millis(40), true));
        // Due after this call: sleep the whole timeout, do not try.
        let later = now + Duration::from_secs(8);
        assert_eq!(reconnect_step(now, later, t), (t, false));
        // A zero timeout never sleeps.
        assert_eq!(reconnect_step(now, later, Duration::ZERO), (Duration::ZERO, false));
    }

    #[test]
    fn sequence_is_continuous_across_wraps_and_reconnects() {
        let mut seq = SequenceCounter::default();
        assert_eq!(seq.extend(0), 0);
        assert_eq!(seq.extend(2), 2);
        assert_eq!(seq.extend(u32::MAX), u64::from(u32::MAX));
        assert_eq!(seq.extend(0), 1 << 32);
        seq.restart();
        assert_eq!(seq.extend(0), (1 << 32) + 1);
        assert_eq!(seq.extend(1), (1 << 32) + 2);
    }

    #[test]
    fn formats_map_to_fourccs() {
        assert_eq!(fourcc_str(fourcc_of(PixelFormat::Mjpeg)), "MJPG");
        assert_eq!(fourcc_str(fourcc_of(PixelFormat::Yuyv)), "YUYV");
        assert_eq!(pixel_format_of(u32::from_le_bytes(*b"JPEG")), Some(PixelFormat::Mjpeg));
        assert_eq!(pixel_format_of(u32::from_le_bytes(*b"NV12")), None);
        assert_eq!(fourcc_str(0x0000_3231), "12??");
    }

    #[test]
    fn preference_parses_and_orders_candidates() {
        assert_eq!("MJPEG".parse(), Ok(FormatPreference::Mjpeg));
        assert_eq!("auto".parse(), Ok(FormatPreference::Auto));
        assert!("h264".parse::<FormatPreference>().is_err());
        assert_eq!(FormatPreference::Auto.candidates(), [PixelFormat::Mjpeg, PixelFormat::Yuyv]);
    }

    #[test]
    fn kernel_strings_stop_at_nul_and_survive_cut_utf8() {
        assert_eq!(kernel_str(b"vivid\0\0\0"), "vivid");
        // "é" is C3 A9; a 32-byte field can keep only the C3.
        assert_eq!(kernel_str(b"Cam\xC3"), "Cam\u{FFFD}");
    }

    #[test]
    fn timevals_convert_or_refuse() {
        assert_eq!(timeval_duration(2, 500_000), Some(Duration::from_millis(2500)));
        assert_eq!(timeval_duration(-1, 0), None);
        assert_eq!(timeval_duration(0, 1_000_000), None);
    }

    #[test]
    fn a_missing_device_is_an_open_error_naming_it() {
        let err = V4l2Source::open(V4l2Settings::new("/nonexistent/video9"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("camera /nonexistent/video9: cannot open"), "{err}");
    }
}
