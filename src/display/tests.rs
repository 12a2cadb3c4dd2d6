//! Display tests: screen choice, redraw policy, pixels of each screen, reference snapshots,
//! pixel packing, the worker thread and (feature `display-fb`) the framebuffer backend.
//!
//! Reference images live in `docs/display/` at the crate root (the README shows them). After a
//! deliberate change of the drawing, regenerate them with
//! `PORTIER_BLESS_DISPLAY=1 cargo test display::` and review the pictures before committing.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;

use super::draw::{AMBER, BG, BLUE, DIM, FG, GREEN, RED};
use super::*;

const SIZES: [(u32, u32); 3] = [(240, 240), (240, 320), (320, 240)];

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn tech() -> TechInfo<'static> {
    TechInfo {
        ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 42))),
        version: "portier 0.1.0",
        model: "w600k_r50 int8",
        enrolled: 12,
        uptime: Duration::from_secs(3 * 86_400 + 4 * 3600 + 12 * 60),
        counters: Counters { granted: 1234, denied: 5, unknown: 87, cpu_fallbacks: 19 },
    }
}

/// One status per screen, with its name, all seen at `now` = 10 s.
fn fixtures() -> Vec<(&'static str, Status<'static>)> {
    let now = ms(10_000);
    let idle = Status { clock: Some(ClockTime { hour: 8, minute: 5 }), ..Status::default() };
    let result = |outcome| Status { last: Some(AccessView { at: now, outcome }), ..idle };
    vec![
        ("idle", idle),
        (
            "idle-degraded",
            Status {
                door: DoorView { locked: false, open: true, alarm: None },
                health: Health {
                    camera_ok: true,
                    embed: EmbedBackend::CpuFallback,
                    mqtt: LinkState::Down,
                },
                ..idle
            },
        ),
        ("step-closer", Status { step_closer: true, ..idle }),
        ("granted", result(Outcome::Granted { name: "Amélie Durand-Lefèvre" })),
        ("denied", result(Outcome::Denied)),
        ("unknown", result(Outcome::Unknown)),
        ("spoof", result(Outcome::SpoofSuspected)),
        (
            "alarm-forced",
            Status {
                door: DoorView { locked: true, open: true, alarm: Some(AlarmView::Forced) },
                ..idle
            },
        ),
        (
            "alarm-held-open",
            Status {
                door: DoorView { locked: true, open: true, alarm: Some(AlarmView::HeldOpen) },
                ..idle
            },
        ),
        (
            "error",
            Status {
                health: Health {
                    camera_ok: false,
                    embed: EmbedBackend::CpuFallback,
                    mqtt: LinkState::Down,
                },
                ..idle
            },
        ),
        (
            "enrolling",
            Status {
                enrolment: Some(EnrolmentView { name: "Bob Martin", captured: 3, needed: 5 }),
                ..idle
            },
        ),
        ("technician", Status { technician: Some(tech()), ..idle }),
    ]
}

fn draw(status: &Status<'_>, w: u32, h: u32) -> (Screen, Canvas) {
    let screen = Screen::choose(&DisplayConfig::default(), status, ms(10_000));
    let mut canvas = Canvas::rgb565(w, h);
    match render(&screen, &mut canvas) {
        Ok(()) => {}
        Err(never) => match never {},
    }
    (screen, canvas)
}

fn count(canvas: &Canvas, color: Rgb565, area: Rectangle) -> usize {
    area.points().filter(|p| canvas.pixel(*p) == Some(color)).count()
}

fn whole(canvas: &Canvas) -> Rectangle {
    canvas.bounding_box()
}

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs").join("display")
}

// --- screen choice ----------------------------------------------------------------------------

#[test]
fn every_fixture_picks_its_screen() {
    for (name, status) in fixtures() {
        let screen = Screen::choose(&DisplayConfig::default(), &status, ms(10_000));
        let expected = name.strip_suffix("-degraded").unwrap_or(name);
        assert_eq!(screen.kind(), expected, "{name}: {screen:?}");
    }
}

#[test]
fn alarm_beats_a_fresh_result_and_a_result_expires() {
    let config = DisplayConfig::default();
    let mut s = Status {
        last: Some(AccessView { at: ms(1000), outcome: Outcome::Unknown }),
        ..Status::default()
    };
    assert_eq!(Screen::choose(&config, &s, ms(1000)), Screen::Unknown);
    assert_eq!(Screen::choose(&config, &s, ms(3999)), Screen::Unknown);
    assert_eq!(Screen::choose(&config, &s, ms(4000)).kind(), "idle");
    s.door.alarm = Some(AlarmView::Forced);
    assert_eq!(Screen::choose(&config, &s, ms(1000)), Screen::Alarm(AlarmView::Forced));
}

#[test]
fn names_follow_the_privacy_setting() {
    let s = Status {
        last: Some(AccessView {
            at: ms(0),
            outcome: Outcome::Granted { name: " Jane  Q Public " },
        }),
        ..Status::default()
    };
    let name =
        |names| match Screen::choose(&DisplayConfig { names, ..Default::default() }, &s, ms(0)) {
            Screen::Granted { name } => name.as_str().to_string(),
            other => panic!("{other:?}"),
        };
    assert_eq!(name(NameDisplay::FirstName), "Jane");
    assert_eq!(name(NameDisplay::Full), "Jane  Q Public");
    assert_eq!(name(NameDisplay::Hidden), "");
}

#[test]
fn short_text_cuts_at_a_character_boundary() {
    let t = ShortText::<5>::from_str_truncated("abcdé");
    assert_eq!(t.as_str(), "abcd");
    let mut t = ShortText::<8>::new();
    assert!(t.push_truncated("é"));
    assert!(!t.push_truncated("1234567"));
    assert_eq!(t.as_str(), "é123456");
}

// --- redraw policy ------------------------------------------------------------------------------

/// Records every screen shown; fails while `fail` is set.
#[derive(Default, Clone)]
struct Recorder {
    shown: Rc<RefCell<Vec<Screen>>>,
    fail: Rc<RefCell<bool>>,
}

impl Sink for Recorder {
    fn show(&mut self, screen: &Screen) -> Result<(), DisplayError> {
        if *self.fail.borrow() {
            return Err(DisplayError::Panel("unplugged".into()));
        }
        self.shown.borrow_mut().push(*screen);
        Ok(())
    }
}

#[test]
fn draws_only_on_change() {
    let rec = Recorder::default();
    let mut d = Display::new(DisplayConfig::default(), rec.clone());
    let mut s = Status { clock: Some(ClockTime { hour: 8, minute: 5 }), ..Status::default() };
    assert!(d.update(&s, ms(0)).unwrap());
    for t in 1..100 {
        assert!(!d.update(&s, ms(t * 33)).unwrap(), "redrew an unchanged screen at frame {t}");
    }
    s.clock = Some(ClockTime { hour: 8, minute: 6 });
    assert!(d.update(&s, ms(60_000)).unwrap());
    assert_eq!(rec.shown.borrow().len(), 2);
}

#[test]
fn a_flickering_hint_is_held_back_but_a_result_is_not() {
    let rec = Recorder::default();
    let mut d = Display::new(DisplayConfig::default(), rec.clone());
    let idle = Status::default();
    let closer = Status { step_closer: true, ..idle };
    assert!(d.update(&idle, ms(0)).unwrap());
    // Within the 500 ms dwell, the hint toggling every frame draws nothing.
    for (i, t) in (33..500).step_by(33).enumerate() {
        let s = if i % 2 == 0 { &closer } else { &idle };
        assert!(!d.update(s, ms(t)).unwrap());
    }
    assert!(d.update(&closer, ms(500)).unwrap());
    // A result replaces the hint at once.
    let granted = Status {
        last: Some(AccessView { at: ms(510), outcome: Outcome::Granted { name: "Ann" } }),
        ..closer
    };
    assert!(d.update(&granted, ms(510)).unwrap());
    assert_eq!(d.shown().map(Screen::kind), Some("granted"));
    // And is replaced when it expires, without waiting for a dwell.
    assert!(d.update(&granted, ms(3510)).unwrap());
    assert_eq!(d.shown().map(Screen::kind), Some("step-closer"));
    assert_eq!(rec.shown.borrow().len(), 4);
}

#[test]
fn a_failing_sink_is_reported_once_then_retried_later() {
    let rec = Recorder::default();
    *rec.fail.borrow_mut() = true;
    let mut d = Display::new(DisplayConfig::default(), rec.clone());
    let s = Status::default();
    assert!(matches!(d.update(&s, ms(0)), Err(DisplayError::Panel(_))));
    assert!(!d.update(&s, ms(9_999)).unwrap(), "retried before retry_after");
    *rec.fail.borrow_mut() = false;
    assert!(d.update(&s, ms(10_000)).unwrap());
    assert_eq!(rec.shown.borrow().len(), 1);
}

// --- pixels ---------------------------------------------------------------------------------------

#[test]
fn drawing_is_idempotent_and_covers_the_previous_screen() {
    let all = fixtures();
    for &(w, h) in &SIZES {
        for (name, status) in &all {
            let (screen, fresh) = draw(status, w, h);
            // Draw over every other screen, then this one: the result must not depend on it.
            let mut reused = Canvas::rgb565(w, h);
            for (_, other) in &all {
                let other = Screen::choose(&DisplayConfig::default(), other, ms(10_000));
                render(&other, &mut reused).unwrap();
                render(&screen, &mut reused).unwrap();
                assert!(reused.bytes() == fresh.bytes(), "{name} {w}x{h} after {}", other.kind());
            }
        }
    }
}

#[test]
fn key_elements_of_each_screen() {
    for &(w, h) in &SIZES {
        let all = fixtures();
        let get = |name: &str| {
            let (_, s) = all.iter().find(|(n, _)| *n == name).unwrap();
            draw(s, w, h).1
        };
        let size = format!("{w}x{h}");
        let corner = Point::new(1, (h - 2) as i32);

        let c = get("idle");
        assert_eq!(c.pixel(corner), Some(BG), "idle {size}");
        // The header rule spans the width under the clock.
        let rule = Rectangle::new(Point::new(8, 30), Size::new(w - 16, 1));
        assert_eq!(count(&c, DIM, rule), (w - 16) as usize, "idle rule {size}");
        // The clock "08:05" is white text in the top-left corner.
        assert!(count(&c, FG, Rectangle::new(Point::new(8, 6), Size::new(50, 20))) > 60);
        // The closed padlock: white body below the icon centre.
        let ic = Point::new((w / 2) as i32, 0);
        let icon_y = (0..h as i32).find(|y| c.pixel(Point::new(ic.x - 20, *y)) == Some(FG));
        assert!(icon_y.is_some(), "idle {size}: no lock body");
        // No amber anywhere when healthy.
        assert_eq!(count(&c, AMBER, whole(&c)), 0, "idle {size}");

        let c = get("idle-degraded");
        assert!(count(&c, AMBER, whole(&c)) > 100, "degraded {size}: faults not shown");
        assert!(count(&c, GREEN, whole(&c)) > 300, "degraded {size}: open lock not green");

        let c = get("granted");
        assert_eq!(c.pixel(corner), Some(GREEN), "granted {size}");
        // The first name in large text: a band of white well below the icon.
        let name_band =
            Rectangle::new(Point::new(0, (h * 6 / 10) as i32), Size::new(w, h * 4 / 10));
        assert!(count(&c, FG, name_band) > 1500, "granted {size}: no large name");
        // Only the first name is drawn: nothing near the right edge of the name band.
        let right = Rectangle::new(
            Point::new((w - 8) as i32, (h * 6 / 10) as i32),
            Size::new(8, h * 4 / 10),
        );
        assert_eq!(count(&c, FG, right), 0, "granted {size}");

        for name in ["denied", "unknown", "spoof", "alarm-forced"] {
            let c = get(name);
            assert_eq!(c.pixel(corner), Some(RED), "{name} {size}");
            assert!(count(&c, FG, whole(&c)) > 4000, "{name} {size}: icon and text");
        }
        let c = get("alarm-held-open");
        assert_eq!(c.pixel(corner), Some(AMBER), "held open {size}");

        let c = get("step-closer");
        assert!(count(&c, AMBER, whole(&c)) > 2000, "step closer {size}");

        let c = get("error");
        assert_eq!(c.pixel(corner), Some(BG));
        assert!(count(&c, AMBER, whole(&c)) > 2000, "error {size}: icon and fault list");

        let c = get("enrolling");
        assert_eq!(c.pixel(corner), Some(BLUE), "enrolling {size}");

        let c = get("technician");
        assert!(count(&c, AMBER, Rectangle::new(Point::zero(), Size::new(w, 28))) > 50);
    }
}

#[test]
fn matches_reference_snapshots() {
    let dir = reference_dir();
    let bless = std::env::var_os("PORTIER_BLESS_DISPLAY").is_some();
    let mut scratch = Vec::new();
    let mut missing = Vec::new();
    for &(w, h) in &SIZES {
        for (name, status) in fixtures() {
            let (_, canvas) = draw(&status, w, h);
            let path = dir.join(format!("{w}x{h}-{name}.png"));
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                canvas.write_png(&path, &mut scratch).unwrap();
                continue;
            }
            let Ok(reference) = image::open(&path) else {
                missing.push(path);
                continue;
            };
            let reference = reference.to_rgb8();
            canvas.to_rgb8(&mut scratch);
            assert_eq!(reference.dimensions(), (w, h), "{}", path.display());
            let differing = reference
                .as_raw()
                .chunks_exact(3)
                .zip(scratch.chunks_exact(3))
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 0, "{} differs in {differing} pixels", path.display());
        }
    }
    assert!(
        missing.is_empty(),
        "missing reference images (run with PORTIER_BLESS_DISPLAY=1): {missing:?}"
    );
}

// --- pixel formats and rotation -------------------------------------------------------------------

#[test]
fn packs_rgb565_and_xrgb8888() {
    let c = Rgb565::new(0b10101, 0b110011, 0b01010);
    assert_eq!(PixelFormat::RGB565.pack(c), 0b1010_1110_0110_1010);
    // Channels widened by bit replication: 10101 -> 10101101, 110011 -> 11001111, 01010 -> 01010010.
    assert_eq!(PixelFormat::XRGB8888.pack(c), 0x00AD_CF52);
    assert_eq!(PixelFormat::XRGB8888.pack(Rgb565::WHITE), 0x00FF_FFFF);
    assert_eq!(PixelFormat::XRGB8888.pack(Rgb565::BLACK), 0);
    let argb = PixelFormat { transp: Field { offset: 24, length: 8 }, ..PixelFormat::XRGB8888 };
    assert_eq!(argb.pack(Rgb565::BLACK), 0xFF00_0000);
    let bgr565 = PixelFormat {
        red: Field { offset: 0, length: 5 },
        blue: Field { offset: 11, length: 5 },
        ..PixelFormat::RGB565
    };
    assert_eq!(bgr565.pack(Rgb565::RED), 0x001F);
    for f in [PixelFormat::RGB565, PixelFormat::XRGB8888, argb, bgr565] {
        for c in [c, Rgb565::WHITE, Rgb565::BLACK, GREEN, AMBER, BG] {
            assert_eq!(f.unpack(f.pack(c)), c, "{f:?}");
        }
    }
}

#[test]
fn rejects_formats_it_cannot_pack() {
    let odd = PixelFormat { bytes_per_pixel: 1, ..PixelFormat::RGB565 };
    assert!(odd.validate().is_err());
    let wide = PixelFormat { red: Field { offset: 20, length: 10 }, ..PixelFormat::XRGB8888 };
    assert!(wide.validate().is_err());
    let overflow = PixelFormat { red: Field { offset: 12, length: 5 }, ..PixelFormat::RGB565 };
    assert!(overflow.validate().is_err());
    assert!(Canvas::for_device(10, 10, 19, PixelFormat::RGB565, Rotation::Deg0).is_err());
}

#[test]
fn rotation_maps_logical_to_device_pixels() {
    let (pw, ph) = (4u32, 3u32);
    for (rot, logical, device) in [
        (Rotation::Deg0, Size::new(4, 3), (1, 0)),
        (Rotation::Deg90, Size::new(3, 4), (pw - 1, 1)),
        (Rotation::Deg180, Size::new(4, 3), (pw - 2, ph - 1)),
        (Rotation::Deg270, Size::new(3, 4), (0, ph - 2)),
    ] {
        let mut c = Canvas::for_device(pw, ph, 8, PixelFormat::RGB565, rot).unwrap();
        assert_eq!(c.size(), logical, "{rot:?}");
        c.clear(Rgb565::BLACK).unwrap();
        Pixel(Point::new(1, 0), Rgb565::RED).draw(&mut c).unwrap();
        assert_eq!(c.physical_pixel(device.0, device.1), Some(Rgb565::RED), "{rot:?}");
        assert_eq!(c.pixel(Point::new(1, 0)), Some(Rgb565::RED));
        let lit = (0..ph)
            .flat_map(|y| (0..pw).map(move |x| (x, y)))
            .filter(|&(x, y)| c.physical_pixel(x, y) == Some(Rgb565::RED))
            .count();
        assert_eq!(lit, 1, "{rot:?}");
    }
}

#[test]
fn snapshots_surface_writes_one_png_per_shown_screen() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Display::new(DisplayConfig::default(), Snapshots::new(dir.path(), 240, 320));
    let s = Status::default();
    assert!(d.update(&s, ms(0)).unwrap());
    assert!(!d.update(&s, ms(40)).unwrap());
    let denied = Status { last: Some(AccessView { at: ms(80), outcome: Outcome::Denied }), ..s };
    assert!(d.update(&denied, ms(80)).unwrap());
    assert_eq!(d.sink().count(), 2);
    let img = image::open(dir.path().join("000001-denied.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (240, 320));
    assert_eq!(img.get_pixel(0, 0).0, [0xC6, 0x18, 0x21]);
    assert!(dir.path().join("000000-idle.png").exists());
}

// --- worker thread ----------------------------------------------------------------------------------

/// A canvas surface that reports what it presented and can be made slow or failing.
struct SlowSurface {
    canvas: Canvas,
    log: std::sync::Arc<std::sync::Mutex<Vec<Screen>>>,
    delay: Duration,
}

impl Surface for SlowSurface {
    fn canvas(&mut self) -> &mut Canvas {
        &mut self.canvas
    }

    fn present(&mut self, screen: &Screen) -> Result<(), DisplayError> {
        std::thread::sleep(self.delay);
        self.log.lock().unwrap().push(*screen);
        if *screen == Screen::Denied {
            return Err(DisplayError::Panel("spi write: timeout".into()));
        }
        Ok(())
    }
}

#[test]
fn worker_never_blocks_and_draws_the_newest_screen() {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let theirs = log.clone();
    let mut w = Worker::spawn(move || {
        Ok(SlowSurface { canvas: Canvas::rgb565(240, 240), log: theirs, delay: ms(50) })
    })
    .unwrap();
    let started = std::time::Instant::now();
    w.show(&Screen::StepCloser).unwrap();
    w.show(&Screen::Unknown).unwrap();
    w.show(&Screen::Alarm(AlarmView::Forced)).unwrap();
    // Three posts while the first takes 50 ms to present: none of them waited for it.
    assert!(started.elapsed() < ms(40), "show blocked for {:?}", started.elapsed());
    w.flush();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.last(), Some(&Screen::Alarm(AlarmView::Forced)));
    assert!(seen.len() <= 2, "queued stale screens: {seen:?}");
    // A present error comes back on the next show.
    w.show(&Screen::Denied).unwrap();
    w.flush();
    assert!(matches!(w.show(&Screen::Unknown), Err(DisplayError::Panel(_))));
}

#[test]
fn worker_open_error_is_returned() {
    let r = Worker::spawn(|| -> Result<Canvas, DisplayError> {
        Err(DisplayError::Panel("no panel".into()))
    });
    assert!(matches!(r, Err(DisplayError::Panel(m)) if m == "no panel"));
}

// --- framebuffer ----------------------------------------------------------------------------------

#[cfg(feature = "display-fb")]
mod fb {
    use std::io::{Read, Seek, Write};

    use super::super::fbdev::{Framebuffer, Geometry};
    use super::*;

    /// A fake framebuffer file pre-filled with 0xAA, and its mapped surface.
    fn fake(geometry: Geometry, rotation: Rotation) -> (tempfile::NamedTempFile, Framebuffer) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&vec![0xAA; geometry.mem_len]).unwrap();
        let handle = file.reopen().unwrap();
        let fb = Framebuffer::from_file(handle, file.path(), geometry, rotation).unwrap();
        (file, fb)
    }

    fn read_all(file: &mut tempfile::NamedTempFile) -> Vec<u8> {
        let mut bytes = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn xrgb8888_with_padded_rows_and_panning_offset() {
        // 320x240 visible, rows padded to 1312 bytes, the picture panned down 2 rows.
        let line_length = 1312;
        let geometry = Geometry {
            width: 320,
            height: 240,
            line_length,
            offset: 2 * line_length,
            mem_len: 244 * line_length,
            format: PixelFormat::XRGB8888,
        };
        let (mut file, fb) = fake(geometry, Rotation::Deg0);
        let mut d = Display::new(DisplayConfig::default(), fb);
        let s = Status {
            last: Some(AccessView { at: ms(0), outcome: Outcome::Granted { name: "Ann" } }),
            ..Status::default()
        };
        assert!(d.update(&s, ms(0)).unwrap());
        let bytes = read_all(&mut file);
        // Before the panning offset: untouched.
        assert!(bytes[..2 * line_length].iter().all(|&b| b == 0xAA));
        // First visible pixel: green background as little-endian 0x00RRGGBB.
        let green = PixelFormat::XRGB8888.pack(GREEN).to_le_bytes();
        assert_eq!(&bytes[2 * line_length..2 * line_length + 4], &green);
        let px = |x: usize, y: usize| {
            let at = (2 + y) * line_length + x * 4;
            u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
        };
        assert_eq!(px(319, 239), PixelFormat::XRGB8888.pack(GREEN));
        // The device holds exactly the canvas.
        let canvas = d.sink_mut().canvas().clone();
        for (x, y) in [(160, 60), (100, 200), (0, 0), (319, 120)] {
            let c = canvas.pixel(Point::new(x as i32, y as i32)).unwrap();
            assert_eq!(px(x, y), PixelFormat::XRGB8888.pack(c), "{x},{y}");
        }
        // After the picture: untouched.
        let end = 2 * line_length + 239 * line_length + 320 * 4;
        assert!(bytes[end..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn rgb565_rotated_panel() {
        // A 240x320 portrait device mounted as a 320x240 landscape screen.
        let geometry = Geometry {
            width: 240,
            height: 320,
            line_length: 480,
            offset: 0,
            mem_len: 480 * 320,
            format: PixelFormat::RGB565,
        };
        let (mut file, fb) = fake(geometry, Rotation::Deg90);
        let mut d = Display::new(DisplayConfig::default(), fb);
        assert_eq!(d.sink_mut().canvas().size(), Size::new(320, 240));
        assert!(d.update(&Status::default(), ms(0)).unwrap());
        let bytes = read_all(&mut file);
        let canvas = d.sink_mut().canvas().clone();
        let px = |x: usize, y: usize| {
            u16::from_le_bytes([bytes[y * 480 + x * 2], bytes[y * 480 + x * 2 + 1]])
        };
        // Logical (x, y) sits at device (239 - y, x).
        for (x, y) in [(8u32, 30u32), (160, 100), (300, 230), (20, 10)] {
            let c = canvas.pixel(Point::new(x as i32, y as i32)).unwrap();
            let dev = px((239 - y) as usize, x as usize);
            assert_eq!(u32::from(dev), PixelFormat::RGB565.pack(c), "{x},{y}");
        }
        assert_eq!(u32::from(px(0, 0)), PixelFormat::RGB565.pack(BG));
    }

    #[test]
    fn too_small_a_file_is_refused() {
        let geometry = Geometry {
            width: 240,
            height: 240,
            line_length: 480,
            offset: 480,
            mem_len: 480 * 240,
            format: PixelFormat::RGB565,
        };
        let file = tempfile::tempfile().unwrap();
        let r =
            Framebuffer::from_file(file, std::path::Path::new("fake"), geometry, Rotation::Deg0);
        assert!(matches!(r, Err(DisplayError::Format(_))));
    }

    #[test]
    fn opening_a_missing_device_names_it() {
        let err = Framebuffer::open(std::path::Path::new("/nonexistent/fb9"), Rotation::Deg0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/fb9"), "{err}");
    }
}

#[test]
fn open_names_the_feature_of_a_backend_not_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let section = |backend| DisplaySection {
        backend,
        device: Some(dir.path().join("no-such-fb")),
        snapshot_dir: Some(dir.path().join("snaps")),
        ..DisplaySection::default()
    };
    assert!(open(&section(DisplayBackend::None)).unwrap().is_none());
    assert!(open(&section(DisplayBackend::Snapshots)).unwrap().is_some());
    assert!(dir.path().join("snaps").is_dir());
    let Err(e) = open(&section(DisplayBackend::Framebuffer)) else { panic!("opened") };
    if cfg!(feature = "display-fb") {
        assert!(matches!(e, DisplayError::Open { .. }), "{e:?}");
    } else {
        assert!(e.to_string().contains("`display-fb` feature"), "{e}");
    }
    let Err(e) = open(&section(DisplayBackend::Spi)) else { panic!("opened") };
    if cfg!(feature = "display-spi") {
        assert!(matches!(e, DisplayError::Panel(_)), "{e:?}");
    } else {
        assert!(e.to_string().contains("`display-spi` feature"), "{e}");
    }
}
