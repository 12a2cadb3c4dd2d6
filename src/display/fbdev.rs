//! Linux framebuffer backend (`/dev/fbN`), feature `display-fb`.
//!
//! [`Framebuffer::open`] reads the device's geometry and pixel layout with the
//! `FBIOGET_VSCREENINFO` / `FBIOGET_FSCREENINFO` ioctls and maps its memory. Screens are drawn
//! into a [`Canvas`] that has the device's exact layout (format, stride, rotation), so
//! [`Surface::present`] is a single `memcpy` of the visible area into the mapping: bounded
//! (320x240x4 bytes is 300 KB, well under a millisecond) and never waiting on the device.
//! On the Pi 5, `/dev/fb0` is the KMS driver's framebuffer emulation (HDMI or DSI) and small
//! SPI panels driven by the kernel (`panel-mipi-dbi`, `fbtft`) appear as `/dev/fb1`.
//!
//! [`Framebuffer::from_file`] maps any file with a given geometry: the tests use it as a fake
//! framebuffer.
//!
//! This module must not: change the video mode, pan, or wait for vertical sync.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use super::{Canvas, DisplayError, Field, PixelFormat, Rotation, Screen, Surface};

/// `FBIOGET_VSCREENINFO` from `<linux/fb.h>`.
const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
/// `FBIOGET_FSCREENINFO` from `<linux/fb.h>`.
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

/// `struct fb_bitfield` from `<linux/fb.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// `struct fb_var_screeninfo` from `<linux/fb.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

/// `struct fb_fix_screeninfo` from `<linux/fb.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

/// Where the visible picture lies in a framebuffer's memory and how its pixels are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
    /// Bytes per row in memory.
    pub line_length: usize,
    /// Byte offset of the visible picture's first pixel (from the panning offsets).
    pub offset: usize,
    /// Total bytes to map.
    pub mem_len: usize,
    /// Pixel layout.
    pub format: PixelFormat,
}

impl Geometry {
    fn from_kernel(var: &FbVarScreeninfo, fix: &FbFixScreeninfo) -> Result<Self, DisplayError> {
        if var.grayscale != 0 || var.nonstd != 0 {
            return Err(DisplayError::Format(
                "grayscale or non-standard framebuffer formats are not supported".into(),
            ));
        }
        if !var.bits_per_pixel.is_multiple_of(8) {
            return Err(DisplayError::Format(format!("{} bits per pixel", var.bits_per_pixel)));
        }
        let field = |f: FbBitfield| -> Result<Field, DisplayError> {
            if f.msb_right != 0 {
                return Err(DisplayError::Format("bit-reversed channels".into()));
            }
            Ok(Field {
                offset: u8::try_from(f.offset).map_err(|_| fmt_err(f.offset))?,
                length: u8::try_from(f.length).map_err(|_| fmt_err(f.length))?,
            })
        };
        let format = PixelFormat {
            bytes_per_pixel: u8::try_from(var.bits_per_pixel / 8)
                .map_err(|_| fmt_err(var.bits_per_pixel))?,
            red: field(var.red)?,
            green: field(var.green)?,
            blue: field(var.blue)?,
            transp: field(var.transp)?,
        };
        format.validate()?;
        let bpp = usize::from(format.bytes_per_pixel);
        let line_length = fix.line_length as usize;
        let offset = var.yoffset as usize * line_length + var.xoffset as usize * bpp;
        Ok(Self {
            width: var.xres,
            height: var.yres,
            line_length,
            offset,
            mem_len: fix.smem_len as usize,
            format,
        })
    }

    /// Bytes of the visible picture from `offset` (last row counted up to its pixels only).
    fn visible_len(&self) -> usize {
        self.height.saturating_sub(1) as usize * self.line_length
            + self.width as usize * usize::from(self.format.bytes_per_pixel)
    }
}

fn fmt_err(v: u32) -> DisplayError {
    DisplayError::Format(format!("field value {v} out of range"))
}

/// A shared, writable mapping of a framebuffer's memory.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what a successful mmap returned, and the mapping is
        // unmapped only here, once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A Linux framebuffer surface. See the module documentation.
pub struct Framebuffer {
    path: PathBuf,
    geometry: Geometry,
    canvas: Canvas,
    map: Mapping,
    _file: File,
}

// SAFETY: the mapping is owned exclusively by this value (no other handle to the pointer
// exists), so moving it to another thread is no different from moving a `Vec<u8>`.
unsafe impl Send for Framebuffer {}

impl std::fmt::Debug for Framebuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framebuffer")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl Framebuffer {
    /// Opens and maps a framebuffer device, drawing `rotation` (how the panel is mounted).
    pub fn open(path: &Path, rotation: Rotation) -> Result<Self, DisplayError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| DisplayError::Open { path: path.to_path_buf(), source })?;
        let mut var = FbVarScreeninfo::default();
        let mut fix = FbFixScreeninfo::default();
        // SAFETY: FBIOGET_VSCREENINFO writes one `struct fb_var_screeninfo`, which
        // `FbVarScreeninfo` mirrors field for field with `repr(C)`; the pointer is valid and
        // exclusive for the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_VSCREENINFO as _, &mut var) };
        if rc < 0 {
            return Err(device_err(path, "FBIOGET_VSCREENINFO"));
        }
        // SAFETY: as above, for FBIOGET_FSCREENINFO and `struct fb_fix_screeninfo`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_FSCREENINFO as _, &mut fix) };
        if rc < 0 {
            return Err(device_err(path, "FBIOGET_FSCREENINFO"));
        }
        let geometry = Geometry::from_kernel(&var, &fix)?;
        log::info!(
            "framebuffer {}: {}x{} {} bpp, {} bytes per row",
            path.display(),
            geometry.width,
            geometry.height,
            var.bits_per_pixel,
            geometry.line_length
        );
        Self::map(file, path, geometry, rotation)
    }

    /// Maps `file` (e.g. a plain file standing in for a device) as a framebuffer of `geometry`.
    /// The file must be at least `geometry.mem_len` bytes long.
    pub fn from_file(
        file: File,
        path: &Path,
        geometry: Geometry,
        rotation: Rotation,
    ) -> Result<Self, DisplayError> {
        geometry.format.validate()?;
        Self::map(file, path, geometry, rotation)
    }

    fn map(
        file: File,
        path: &Path,
        geometry: Geometry,
        rotation: Rotation,
    ) -> Result<Self, DisplayError> {
        let canvas = Canvas::for_device(
            geometry.width,
            geometry.height,
            geometry.line_length,
            geometry.format,
            rotation,
        )?;
        let needed = geometry.offset + geometry.visible_len();
        if geometry.mem_len < needed {
            return Err(DisplayError::Format(format!(
                "framebuffer memory is {} bytes, the visible picture needs {needed}",
                geometry.mem_len
            )));
        }
        // SAFETY: a fresh shared mapping of an open file descriptor, with no address hint; the
        // kernel validates the length against the device or file. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                geometry.mem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(device_err(path, "mmap"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| DisplayError::Device {
            path: path.to_path_buf(),
            what: "mmap",
            source: std::io::Error::other("null mapping"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            geometry,
            canvas,
            map: Mapping { ptr, len: geometry.mem_len },
            _file: file,
        })
    }

    /// The device's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }
}

fn device_err(path: &Path, what: &'static str) -> DisplayError {
    DisplayError::Device { path: path.to_path_buf(), what, source: std::io::Error::last_os_error() }
}

impl Surface for Framebuffer {
    fn canvas(&mut self) -> &mut Canvas {
        &mut self.canvas
    }

    fn present(&mut self, _screen: &Screen) -> Result<(), DisplayError> {
        let src = self.canvas.bytes();
        let len = self.geometry.visible_len().min(src.len());
        debug_assert!(self.geometry.offset + len <= self.map.len);
        // SAFETY: `map` covers `mem_len` bytes and `map()` checked offset + visible_len <=
        // mem_len; `src` is our own heap buffer, which cannot overlap a fresh mapping. Other
        // processes may write the framebuffer concurrently; that only changes pixels, it
        // cannot make this copy unsound.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.map.ptr.as_ptr().add(self.geometry.offset),
                len,
            );
        }
        Ok(())
    }
}
