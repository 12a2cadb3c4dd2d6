//! In-memory pixel buffer in a device's own pixel format, and PNG snapshots of it.
//!
//! [`Canvas`] is an embedded-graphics `DrawTarget<Color = Rgb565>` over a byte buffer laid out
//! exactly like the device's memory (bytes per pixel, channel bit fields, row stride, mounting
//! rotation), so showing it on a framebuffer is one `memcpy` and no conversion happens at
//! present time. The buffer is allocated once, in the constructor.
//!
//! This module must not: touch devices, or allocate while drawing.

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;

use super::{DisplayError, Screen, Surface};

/// One colour channel's bits inside a pixel value (as in the kernel's `fb_bitfield`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Position of the channel's least significant bit.
    pub offset: u8,
    /// Number of bits (0 = channel absent).
    pub length: u8,
}

/// How a pixel is stored: a little-endian value of `bytes_per_pixel` bytes holding bit fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    /// 2, 3 or 4.
    pub bytes_per_pixel: u8,
    /// Red bits.
    pub red: Field,
    /// Green bits.
    pub green: Field,
    /// Blue bits.
    pub blue: Field,
    /// Alpha bits, written as fully opaque (length 0 for XRGB formats).
    pub transp: Field,
}

impl PixelFormat {
    /// 16-bit RGB565 (SPI panels, `fbtft`/`panel-mipi-dbi` framebuffers, the Pi's 16 bpp fb0).
    pub const RGB565: Self = Self {
        bytes_per_pixel: 2,
        red: Field { offset: 11, length: 5 },
        green: Field { offset: 5, length: 6 },
        blue: Field { offset: 0, length: 5 },
        transp: Field { offset: 0, length: 0 },
    };

    /// 32-bit XRGB8888 (the Pi 5's KMS framebuffer emulation at 32 bpp).
    pub const XRGB8888: Self = Self {
        bytes_per_pixel: 4,
        red: Field { offset: 16, length: 8 },
        green: Field { offset: 8, length: 8 },
        blue: Field { offset: 0, length: 8 },
        transp: Field { offset: 24, length: 0 },
    };

    /// Checks that the fields fit the pixel and that we can scale into them (1 to 8 bits each).
    pub fn validate(&self) -> Result<(), DisplayError> {
        if !matches!(self.bytes_per_pixel, 2..=4) {
            return Err(DisplayError::Format(format!(
                "{} bits per pixel (need 16, 24 or 32)",
                u32::from(self.bytes_per_pixel) * 8
            )));
        }
        let bits = u32::from(self.bytes_per_pixel) * 8;
        for (name, f) in
            [("red", self.red), ("green", self.green), ("blue", self.blue), ("alpha", self.transp)]
        {
            let colour = name != "alpha";
            if (colour && !(1..=8).contains(&f.length)) || f.length > 8 {
                return Err(DisplayError::Format(format!(
                    "{name} channel is {} bits (need 1 to 8)",
                    f.length
                )));
            }
            if u32::from(f.offset) + u32::from(f.length) > bits {
                return Err(DisplayError::Format(format!(
                    "{name} channel at bit {} does not fit a {bits}-bit pixel",
                    f.offset
                )));
            }
        }
        Ok(())
    }

    /// The stored value of `color`. Channels are widened to 8 bits by bit replication (so white
    /// stays white) and then cut to each field's length.
    pub fn pack(&self, color: Rgb565) -> u32 {
        let r = widen(color.r(), 5);
        let g = widen(color.g(), 6);
        let b = widen(color.b(), 5);
        put(r, self.red) | put(g, self.green) | put(b, self.blue) | put(0xff, self.transp)
    }

    /// The colour of a stored value (exact inverse of [`pack`](Self::pack) for RGB565 and for
    /// packed RGB565 colours in wider formats).
    pub fn unpack(&self, value: u32) -> Rgb565 {
        let r = get(value, self.red);
        let g = get(value, self.green);
        let b = get(value, self.blue);
        Rgb565::new(r >> 3, g >> 2, b >> 3)
    }
}

/// `v` of `bits` bits widened to 8 bits by repeating its high bits.
fn widen(v: u8, bits: u32) -> u8 {
    let v = u32::from(v) << (8 - bits);
    ((v | (v >> bits)) & 0xff) as u8
}

fn put(v8: u8, f: Field) -> u32 {
    if f.length == 0 {
        return 0;
    }
    (u32::from(v8) >> (8 - u32::from(f.length))) << f.offset
}

/// A field's value widened back to 8 bits.
fn get(value: u32, f: Field) -> u8 {
    if f.length == 0 {
        return 0;
    }
    let len = u32::from(f.length);
    let v = (value >> f.offset) & ((1 << len) - 1);
    let mut out = v << (8 - len);
    let mut have = len;
    while have < 8 {
        out |= out >> have;
        have *= 2;
    }
    (out & 0xff) as u8
}

/// How the panel is mounted: the drawing is turned clockwise by this much on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rotation {
    /// As the device scans.
    #[default]
    Deg0,
    /// A quarter turn clockwise (a landscape device used in portrait, or the reverse).
    Deg90,
    /// Upside down.
    Deg180,
    /// Three quarter turns clockwise.
    Deg270,
}

impl Rotation {
    /// From degrees (0, 90, 180, 270), e.g. from the configuration.
    pub fn from_degrees(deg: u32) -> Option<Self> {
        match deg {
            0 => Some(Self::Deg0),
            90 => Some(Self::Deg90),
            180 => Some(Self::Deg180),
            270 => Some(Self::Deg270),
            _ => None,
        }
    }

    fn swaps_axes(self) -> bool {
        matches!(self, Self::Deg90 | Self::Deg270)
    }
}

/// An in-memory `Rgb565` draw target stored in a device's pixel format. See the module docs.
#[derive(Debug, Clone)]
pub struct Canvas {
    format: PixelFormat,
    rotation: Rotation,
    /// Logical (drawing) size.
    size: Size,
    /// Device size in pixels.
    phys: Size,
    /// Bytes per device row (at least `phys.width * bytes_per_pixel`).
    stride: usize,
    buf: Vec<u8>,
}

impl Canvas {
    /// A tightly packed RGB565 canvas of `width` x `height`, unrotated (tests, snapshots).
    pub fn rgb565(width: u32, height: u32) -> Self {
        let stride = width as usize * 2;
        Self {
            format: PixelFormat::RGB565,
            rotation: Rotation::Deg0,
            size: Size::new(width, height),
            phys: Size::new(width, height),
            stride,
            buf: vec![0; stride * height as usize],
        }
    }

    /// A canvas laid out like a device of `width` x `height` pixels with rows of `stride` bytes,
    /// drawn `rotation` (the logical size swaps for quarter turns).
    pub fn for_device(
        width: u32,
        height: u32,
        stride: usize,
        format: PixelFormat,
        rotation: Rotation,
    ) -> Result<Self, DisplayError> {
        format.validate()?;
        let min_stride = width as usize * usize::from(format.bytes_per_pixel);
        if width == 0 || height == 0 || stride < min_stride {
            return Err(DisplayError::Format(format!(
                "{width}x{height} with {stride}-byte rows (need at least {min_stride})"
            )));
        }
        let size =
            if rotation.swaps_axes() { Size::new(height, width) } else { Size::new(width, height) };
        Ok(Self {
            format,
            rotation,
            size,
            phys: Size::new(width, height),
            stride,
            buf: vec![0; stride * height as usize],
        })
    }

    /// The pixel format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The device-ordered bytes (what a framebuffer holds).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes per device row.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Device size in pixels (before rotation).
    pub fn physical_size(&self) -> Size {
        self.phys
    }

    /// The colour at logical point `p`, if inside.
    pub fn pixel(&self, p: Point) -> Option<Rgb565> {
        let (x, y) = self.to_physical(p)?;
        Some(self.format.unpack(self.read(x, y)))
    }

    /// The colour at device pixel (`x`, `y`), ignoring rotation.
    pub fn physical_pixel(&self, x: u32, y: u32) -> Option<Rgb565> {
        if x < self.phys.width && y < self.phys.height {
            Some(self.format.unpack(self.read(x, y)))
        } else {
            None
        }
    }

    /// Writes the device-ordered image as 8-bit RGB into `out` (resized to fit; reuse it to
    /// avoid allocating).
    pub fn to_rgb8(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(self.phys.width as usize * self.phys.height as usize * 3);
        for y in 0..self.phys.height {
            for x in 0..self.phys.width {
                let c = self.format.unpack(self.read(x, y));
                out.extend_from_slice(&[widen(c.r(), 5), widen(c.g(), 6), widen(c.b(), 5)]);
            }
        }
    }

    /// Saves the device-ordered image as a PNG; `scratch` is reused between calls.
    pub fn write_png(&self, path: &Path, scratch: &mut Vec<u8>) -> Result<(), DisplayError> {
        self.to_rgb8(scratch);
        image::save_buffer_with_format(
            path,
            scratch,
            self.phys.width,
            self.phys.height,
            image::ColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|source| DisplayError::Snapshot { path: path.to_path_buf(), source })
    }

    fn to_physical(&self, p: Point) -> Option<(u32, u32)> {
        let (x, y) = (u32::try_from(p.x).ok()?, u32::try_from(p.y).ok()?);
        if x >= self.size.width || y >= self.size.height {
            return None;
        }
        let (pw, ph) = (self.phys.width, self.phys.height);
        Some(match self.rotation {
            Rotation::Deg0 => (x, y),
            Rotation::Deg90 => (pw - 1 - y, x),
            Rotation::Deg180 => (pw - 1 - x, ph - 1 - y),
            Rotation::Deg270 => (y, ph - 1 - x),
        })
    }

    fn offset(&self, x: u32, y: u32) -> usize {
        y as usize * self.stride + x as usize * usize::from(self.format.bytes_per_pixel)
    }

    fn read(&self, x: u32, y: u32) -> u32 {
        let at = self.offset(x, y);
        let n = usize::from(self.format.bytes_per_pixel);
        let mut le = [0u8; 4];
        le[..n].copy_from_slice(&self.buf[at..at + n]);
        u32::from_le_bytes(le)
    }

    fn write(&mut self, x: u32, y: u32, value: u32) {
        let at = self.offset(x, y);
        let n = usize::from(self.format.bytes_per_pixel);
        self.buf[at..at + n].copy_from_slice(&value.to_le_bytes()[..n]);
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        self.size
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb565;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, c) in pixels {
            if let Some((x, y)) = self.to_physical(p) {
                let v = self.format.pack(c);
                self.write(x, y, v);
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Self::Color) -> Result<(), Self::Error> {
        let area = area.intersection(&self.bounding_box());
        let v = self.format.pack(color);
        for p in area.points() {
            if let Some((x, y)) = self.to_physical(p) {
                self.write(x, y, v);
            }
        }
        Ok(())
    }

    fn clear(&mut self, color: Self::Color) -> Result<(), Self::Error> {
        let n = usize::from(self.format.bytes_per_pixel);
        let v = self.format.pack(color).to_le_bytes();
        let row = self.phys.width as usize * n;
        for line in self.buf.chunks_exact_mut(self.stride) {
            for px in line[..row].chunks_exact_mut(n) {
                px.copy_from_slice(&v[..n]);
            }
        }
        Ok(())
    }
}

impl Surface for Canvas {
    fn canvas(&mut self) -> &mut Canvas {
        self
    }

    fn present(&mut self, _screen: &Screen) -> Result<(), DisplayError> {
        Ok(())
    }
}

/// A surface that writes every shown screen to `dir` as `NNNNNN-kind.png`
/// (for `portier run --snapshot-dir`, tests and the README pictures).
#[derive(Debug)]
pub struct Snapshots {
    canvas: Canvas,
    dir: PathBuf,
    seq: u32,
    scratch: Vec<u8>,
}

impl Snapshots {
    /// Snapshots of a `width` x `height` RGB565 panel into `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>, width: u32, height: u32) -> Self {
        Self { canvas: Canvas::rgb565(width, height), dir: dir.into(), seq: 0, scratch: Vec::new() }
    }

    /// How many snapshots were written.
    pub fn count(&self) -> u32 {
        self.seq
    }
}

impl Surface for Snapshots {
    fn canvas(&mut self) -> &mut Canvas {
        &mut self.canvas
    }

    fn present(&mut self, screen: &Screen) -> Result<(), DisplayError> {
        let mut name = super::ShortText::<48>::new();
        let _ = std::fmt::Write::write_fmt(
            &mut name,
            format_args!("{:06}-{}.png", self.seq, screen.kind()),
        );
        let path = self.dir.join(name.as_str());
        self.canvas.write_png(&path, &mut self.scratch)?;
        self.seq += 1;
        Ok(())
    }
}
