//! SPI panel backend (ST7789 / ILI9341 class over spidev and GPIO), feature `display-spi`.
//!
//! The panel is driven from user space with `mipidsi` over `linux-embedded-hal`'s
//! `SpidevDevice` (the kernel's `/dev/spidevB.C`) and a GPIO character-device line for D/C
//! (and optionally reset). A full frame is 240x320x2 = 150 KB: 20-40 ms on the wire at the
//! 32-62.5 MHz these controllers accept. That must never be spent on the frame loop, so
//! [`spawn`] opens the panel on the [`Worker`] thread; the loop only posts screens into the
//! worker's one-slot mailbox. Each present is a single address window and one pixel stream
//! (not pixel-by-pixel windows), sent in spidev-sized chunks from a buffer on that thread.
//!
//! Panel rotation is done by the controller (MADCTL), so the canvas is drawn upright.
//!
//! This module must not: run on the frame loop's thread.

use std::path::PathBuf;

use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use embedded_hal::digital::OutputPin;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
use linux_embedded_hal::{CdevPin, Delay, SpidevDevice};
use mipidsi::interface::SpiInterface;
use mipidsi::models::{ILI9341Rgb565, Model, ST7789};
use mipidsi::options::{ColorInversion, ColorOrder, Orientation, Rotation as PanelRotation};

use super::{Canvas, DisplayError, Rotation, Screen, Surface, Worker};

/// Bytes per SPI transfer: spidev's default `bufsiz` is 4096.
const SPI_CHUNK: usize = 4096;

/// Which controller the panel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// Sitronix ST7789 (240x240, 240x320 panels).
    St7789,
    /// Ilitek ILI9341 (240x320 panels).
    Ili9341,
}

/// How the panel is wired and mounted (from the board's TOML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelConfig {
    /// The controller.
    pub controller: Controller,
    /// spidev node, e.g. `/dev/spidev0.0`.
    pub spidev: PathBuf,
    /// SPI clock in Hz (e.g. 40_000_000).
    pub spi_hz: u32,
    /// GPIO chip of the D/C and reset lines, e.g. `/dev/gpiochip0` on the Pi 5 (RP1 header).
    pub gpiochip: PathBuf,
    /// D/C line offset.
    pub dc_line: u32,
    /// Reset line offset, if wired.
    pub reset_line: Option<u32>,
    /// Panel size in its native (portrait) orientation, e.g. 240x320.
    pub width: u16,
    /// See `width`.
    pub height: u16,
    /// Offset of the panel inside the controller's memory (e.g. 0,80 for 240x240 ST7789).
    pub offset: (u16, u16),
    /// How the panel is mounted.
    pub rotation: Rotation,
    /// Most ST7789 modules need inverted colours.
    pub invert: bool,
    /// BGR subpixel order.
    pub bgr: bool,
}

fn panel_err(what: &str, e: impl std::fmt::Debug) -> DisplayError {
    DisplayError::Panel(format!("{what}: {e:?}"))
}

/// An SPI panel surface; lives on the display thread.
struct Panel<M: Model<ColorFormat = Rgb565>, RST: OutputPin> {
    display: mipidsi::Display<SpiInterface<'static, SpidevDevice, CdevPin>, M, RST>,
    canvas: Canvas,
}

impl<M: Model<ColorFormat = Rgb565>, RST: OutputPin> Surface for Panel<M, RST> {
    fn canvas(&mut self) -> &mut Canvas {
        &mut self.canvas
    }

    fn present(&mut self, _screen: &Screen) -> Result<(), DisplayError> {
        let size = self.canvas.size();
        let (w, h) = (size.width, size.height);
        let canvas = &self.canvas;
        let pixels = (0..h).flat_map(move |y| {
            (0..w).map(move |x| canvas.physical_pixel(x, y).unwrap_or(Rgb565::BLACK))
        });
        let ex = u16::try_from(w.saturating_sub(1)).unwrap_or(u16::MAX);
        let ey = u16::try_from(h.saturating_sub(1)).unwrap_or(u16::MAX);
        self.display.set_pixels(0, 0, ex, ey, pixels).map_err(|e| panel_err("spi write", e))
    }
}

/// Opens the panel on a new display thread and returns the [`Worker`] to show screens with.
pub fn spawn(config: PanelConfig) -> Result<Worker, DisplayError> {
    Worker::spawn(move || match config.controller {
        Controller::St7789 => open(ST7789, &config),
        Controller::Ili9341 => open(ILI9341Rgb565, &config),
    })
}

/// A panel of either controller, so both share one worker type.
struct AnyPanel(Box<dyn Surface>);

impl Surface for AnyPanel {
    fn canvas(&mut self) -> &mut Canvas {
        self.0.canvas()
    }
    fn present(&mut self, screen: &Screen) -> Result<(), DisplayError> {
        self.0.present(screen)
    }
}

fn output_line(chip: &mut Chip, line: u32, what: &str) -> Result<CdevPin, DisplayError> {
    let handle = chip
        .get_line(line)
        .and_then(|l| l.request(LineRequestFlags::OUTPUT, 1, "portier-display"))
        .map_err(|e| panel_err(what, e))?;
    CdevPin::new(handle).map_err(|e| panel_err(what, e))
}

fn open<M>(model: M, config: &PanelConfig) -> Result<AnyPanel, DisplayError>
where
    M: Model<ColorFormat = Rgb565> + 'static,
{
    let mut spi = SpidevDevice::open(&config.spidev).map_err(|e| panel_err("open spidev", e))?;
    spi.0
        .configure(
            &SpidevOptions::new()
                .bits_per_word(8)
                .max_speed_hz(config.spi_hz)
                .mode(SpiModeFlags::SPI_MODE_0)
                .build(),
        )
        .map_err(|source| DisplayError::Device {
            path: config.spidev.clone(),
            what: "spidev configure",
            source,
        })?;
    let mut chip = Chip::new(&config.gpiochip).map_err(|e| panel_err("open gpiochip", e))?;
    let dc = output_line(&mut chip, config.dc_line, "d/c line")?;
    // The interface borrows its transfer buffer for the display's lifetime; the display lives
    // as long as the thread, so one leaked 4 KB buffer per panel opened is the simplest owner.
    let buffer: &'static mut [u8] = Box::leak(vec![0u8; SPI_CHUNK].into_boxed_slice());
    let di = SpiInterface::new(spi, dc, buffer);
    let rotation = match config.rotation {
        Rotation::Deg0 => PanelRotation::Deg0,
        Rotation::Deg90 => PanelRotation::Deg90,
        Rotation::Deg180 => PanelRotation::Deg180,
        Rotation::Deg270 => PanelRotation::Deg270,
    };
    let builder = mipidsi::Builder::new(model, di)
        .display_size(config.width, config.height)
        .display_offset(config.offset.0, config.offset.1)
        .orientation(Orientation::new().rotate(rotation))
        .invert_colors(if config.invert {
            ColorInversion::Inverted
        } else {
            ColorInversion::Normal
        })
        .color_order(if config.bgr { ColorOrder::Bgr } else { ColorOrder::Rgb });
    let (w, h) = (u32::from(config.width), u32::from(config.height));
    let (w, h) =
        if matches!(config.rotation, Rotation::Deg90 | Rotation::Deg270) { (h, w) } else { (w, h) };
    let canvas = Canvas::rgb565(w, h);
    let mut delay = Delay;
    Ok(AnyPanel(match config.reset_line {
        Some(line) => {
            let reset = output_line(&mut chip, line, "reset line")?;
            let display = builder
                .reset_pin(reset)
                .init(&mut delay)
                .map_err(|e| panel_err("panel init", e))?;
            Box::new(Panel { display, canvas })
        }
        None => {
            let display = builder.init(&mut delay).map_err(|e| panel_err("panel init", e))?;
            Box::new(Panel { display, canvas })
        }
    }))
}
