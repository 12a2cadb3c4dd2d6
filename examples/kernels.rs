//! Runs the detector's letterbox (a `WIDTHxHEIGHT` frame resized and converted into a model's
//! float planes at half size) and the face warp (a 112x112 crop) a given number of times on a
//! synthetic frame, and prints a checksum. For counting the kernels' instructions under
//! `qemu-aarch64` with QEMU's instruction-counting plugin (`scripts/count-kernels`): this
//! program as built (NEON) against the same program built with `--cfg portier_portable_kernels`
//! (the portable kernels). Not a timing benchmark: emulated time says nothing about a Pi.
//!
//! Usage: `kernels LETTERBOXES WARPS [WIDTHxHEIGHT]` (default 1280x720).

use portier::align::{warp_bilinear, Affine};
use portier::frame::{Filter, Planes, Resizer, RgbImage};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |i: usize| args.get(i).and_then(|v| v.parse::<usize>().ok());
    let (Some(letterboxes), Some(warps)) = (count(0), count(1)) else {
        eprintln!("usage: kernels LETTERBOXES WARPS [WIDTHxHEIGHT]");
        std::process::exit(64);
    };
    let (w, h) = args
        .get(2)
        .and_then(|s| s.split_once('x'))
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|&(w, h)| w >= 2 && h >= 2)
        .unwrap_or((1280, 720));
    // A deterministic frame (xorshift bytes): the kernels' work does not depend on the values.
    let mut frame = RgbImage::new(w, h);
    let mut state = 0x2545_f491u32;
    for v in frame.as_bytes_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *v = state as u8;
    }
    let mut sum = 0f64;

    // The letterbox: half size, as 1280x720 into 640x360 of SCRFD's 640x384 input (rows
    // converted to floats as the detector's models want them).
    let (dw, dh) = ((w / 2).max(1), (h / 2).max(1));
    let plane = (dw * dh) as usize;
    let mut tensor = vec![0f32; 3 * plane];
    let mut resizer = Resizer::default();
    for _ in 0..letterboxes {
        let (p0, rest) = tensor.split_at_mut(plane);
        let (p1, p2) = rest.split_at_mut(plane);
        let width = dw as usize;
        resizer.resize_to_planes(
            frame.view(),
            dw,
            dh,
            Filter::Antialiased,
            Planes {
                planes: [p0, p1, p2],
                stride: width,
                convert: &|rows, planes| {
                    for (c, plane) in planes.into_iter().enumerate() {
                        for (row, out) in
                            rows.chunks_exact(width * 3).zip(plane.chunks_exact_mut(width))
                        {
                            for (o, &v) in out.iter_mut().zip(&row[c * width..(c + 1) * width]) {
                                *o = (f32::from(v) - 127.5) / 128.0;
                            }
                        }
                    }
                },
            },
        );
        sum += f64::from(tensor[plane / 2]);
    }

    // The warp: a face about 120 px wide, turned by 0.2 rad, inside the frame.
    let mut crop = vec![0u8; 112 * 112 * 3];
    let (s, th) = (1.1f64, 0.2f64);
    let inverse = Affine([
        [s * th.cos(), -s * th.sin(), f64::from(w) / 2.0],
        [s * th.sin(), s * th.cos(), f64::from(h) / 3.0],
    ]);
    for _ in 0..warps {
        warp_bilinear(frame.view(), &inverse, &mut crop, 112, 112);
        sum += f64::from(crop[112 * 56 * 3]);
    }
    println!("{letterboxes} letterboxes of {w}x{h}, {warps} warps: checksum {sum}");
}
