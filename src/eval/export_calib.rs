//! `portier export-calib`: the INT8 calibration set for Hailo's Dataflow Compiler, with far
//! faces in it.
//!
//! Hailo's own face pipeline calibrates on LFW (large frontal faces) only, so the quantisation
//! ranges never see the weak activations of a far face. This writes every labelled photo's face
//! aligned to 112x112 at its original size *and* after shrinking the photo to each eye distance
//! of the sweep (the crop is then the small face warped back up to 112x112: exactly what the
//! appliance feeds the recognizer for a far face).
//!
//! Layout: `hailo optimize --calib-set-path` reads a NumPy `.npy` array of shape
//! `(N, H, W, C)` (NHWC), the model's input before the normalisation layer that the model script
//! adds on the chip; so the crops are raw 0..255 `uint8` in the NPU model's channel order
//! (`[npu] channel_order`, by default the CPU recognizer's). Beside it, `normalization.alls` is
//! the model-script line with the NPU model's normalisation (`[npu] mean` and `std`, in that
//! channel order) for the HEF's `.alls`, `manifest.csv` says where each crop came from, and
//! `--png` also writes each crop as a PNG to look at.
//!
//! Must not: run recognizers or change crops beyond the appliance's own align step.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::distance::{default_root, find_expected, shrink_into_canvas, DEFAULT_SIZES};
use super::verify::read_labels;
use super::EvalError;
use crate::align::{align_face, AlignedFace, CROP};
use crate::config::Config;
use crate::detect::Detector;
use crate::frame::{load_image, Resizer};
use crate::infer::{self, ChannelOrder};

/// The file name of the array.
pub const NPY_NAME: &str = "calib_set.npy";

/// The file name of the normalisation line for the model script.
pub const ALLS_NAME: &str = "normalization.alls";

/// Arguments of `portier export-calib`.
#[derive(Args, Debug, Clone)]
pub struct ExportCalibArgs {
    /// CSV with `path` and `identity` columns.
    #[arg(long)]
    pub labels: PathBuf,
    /// Folder the CSV's paths are relative to (default: `full/` beside the CSV if it exists).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Eye distances in pixels to add far-face crops at (the original is always written).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SIZES)]
    pub sizes: Vec<u32>,
    /// Output folder (created).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Also write every crop as PNG under `png/`.
    #[arg(long)]
    pub png: bool,
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The array file.
    pub npy: PathBuf,
    /// Crops written (N).
    pub crops: usize,
    /// Of which the detector's landmarks were used.
    pub detected: usize,
    /// Of which the full-size landmarks scaled down were used (the detector missed the face).
    pub reference: usize,
    /// Photos with no face at full size.
    pub no_face: usize,
    /// The NPU model's preprocessing: the crops' channel order, and the normalisation written to
    /// [`ALLS_NAME`].
    pub preprocess: crate::infer::Preprocess,
}

/// The model-script line that compiles `p`'s normalisation into the HEF (Hailo DFC
/// `normalization(mean, std)`, per input channel in the calibration set's channel order), with
/// a comment saying where it comes from.
pub fn normalization_alls(p: &crate::infer::Preprocess) -> String {
    let list = |v: [f32; 3]| v.map(|x| format!("{x:?}")).join(", ");
    let order = match p.order {
        ChannelOrder::Rgb => "RGB",
        ChannelOrder::Bgr => "BGR",
    };
    format!(
        "# Written by `portier export-calib` from [npu] channel_order, mean and std: the\n\
         # calibration set is {order} uint8; the chip computes (x - mean) / std per channel.\n\
         normalization1 = normalization([{}], [{}])\n",
        list(p.mean),
        list(p.std)
    )
}

/// The `.npy` (format version 1.0) header for a C-order `uint8` array of `shape`.
pub fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + dict + '\n' is padded to a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// `portier export-calib`.
pub fn command(config: &Config, args: &ExportCalibArgs) -> Result<ExportSummary, EvalError> {
    let root = args.root.clone().unwrap_or_else(|| default_root(&args.labels));
    let photos = read_labels(&args.labels, &root)?;
    infer::init(config.onnxruntime.library.as_deref(), config.onnxruntime.intra_threads)?;
    let mut detector = Detector::open(config.detector.clone())?;
    let canvas_size = detector.settings().input_size;
    let preprocess = config.npu.preprocess();
    let bgr = preprocess.order == ChannelOrder::Bgr;
    let write_err = |path: &Path, e: std::io::Error| EvalError::Write {
        path: path.into(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&args.output).map_err(|e| write_err(&args.output, e))?;
    let png_dir = args.output.join("png");
    if args.png {
        std::fs::create_dir_all(&png_dir).map_err(|e| write_err(&png_dir, e))?;
    }
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let (mut resizer, mut dets, mut crop) =
        (Resizer::default(), Vec::new(), Box::<AlignedFace>::default());
    let mut data: Vec<u8> = Vec::new();
    let mut manifest = String::from("index,photo,identity,eye_distance_px,landmarks\n");
    let mut summary = ExportSummary {
        npy: args.output.join(NPY_NAME),
        crops: 0,
        detected: 0,
        reference: 0,
        no_face: 0,
        preprocess,
    };
    let bar = indicatif::ProgressBar::new(photos.len() as u64);
    for (pi, photo) in photos.iter().enumerate() {
        bar.set_position(pi as u64);
        let img = load_image(&photo.path)
            .map_err(|e| EvalError::Input { path: photo.path.clone(), reason: e.to_string() })?;
        detector.detect(img.view(), &mut dets)?;
        let Some(face) = dets.iter().copied().max_by(|a, b| a.area().total_cmp(&b.area())) else {
            summary.no_face += 1;
            continue;
        };
        let e0 = face.eye_distance();
        let mut emit = |crop: &AlignedFace,
                        eye: String,
                        how: &str,
                        summary: &mut ExportSummary|
         -> Result<(), EvalError> {
            let mut px = crop.pixels;
            if bgr {
                px.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
            }
            data.extend_from_slice(&px);
            let rel = photo.path.strip_prefix(&root).unwrap_or(&photo.path).display().to_string();
            manifest
                .push_str(&format!("{},{},{},{eye},{how}\n", summary.crops, rel, photo.identity));
            if args.png {
                let path = png_dir.join(format!("{:05}.png", summary.crops));
                image::RgbImage::from_raw(CROP as u32, CROP as u32, crop.pixels.to_vec())
                    .ok_or_else(|| EvalError::Usage("internal: crop size".into()))?
                    .save_with_format(&path, image::ImageFormat::Png)
                    .map_err(|e| EvalError::Write { path, reason: e.to_string() })?;
            }
            summary.crops += 1;
            Ok(())
        };
        if align_face(img.view(), &face.kps, &mut crop).is_some() {
            summary.detected += 1;
            emit(&crop, format!("{e0:.1}"), "detected", &mut summary)?;
        }
        for &s in &sizes {
            let factor = f64::from(s) / f64::from(e0);
            if factor >= 1.0 {
                continue;
            }
            let shrunk =
                shrink_into_canvas(&mut resizer, img.view(), &face, factor, canvas_size, None);
            detector.detect(shrunk.canvas.view(), &mut dets)?;
            let (kps, how) = match find_expected(&dets, &shrunk.expected_box) {
                Some(d) => (d.kps, "detected"),
                None => (shrunk.reference_kps, "reference"),
            };
            if align_face(shrunk.canvas.view(), &kps, &mut crop).is_some() {
                if how == "detected" {
                    summary.detected += 1;
                } else {
                    summary.reference += 1;
                }
                emit(&crop, s.to_string(), how, &mut summary)?;
            }
        }
    }
    bar.finish_and_clear();
    let mut file = std::fs::File::create(&summary.npy).map_err(|e| write_err(&summary.npy, e))?;
    file.write_all(&npy_header(&[summary.crops, CROP, CROP, 3]))
        .and_then(|()| file.write_all(&data))
        .map_err(|e| write_err(&summary.npy, e))?;
    let mpath = args.output.join("manifest.csv");
    std::fs::write(&mpath, manifest).map_err(|e| write_err(&mpath, e))?;
    let apath = args.output.join(ALLS_NAME);
    std::fs::write(&apath, normalization_alls(&preprocess)).map_err(|e| write_err(&apath, e))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_names_the_shape() {
        let h = npy_header(&[5, 112, 112, 3]);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([h[8], h[9]]) as usize;
        assert_eq!(len + 10, h.len());
        let dict = std::str::from_utf8(&h[10..]).unwrap();
        assert!(dict
            .starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (5, 112, 112, 3), }"));
        assert!(dict.ends_with('\n'));
        assert!(std::str::from_utf8(&npy_header(&[7])[10..]).unwrap().contains("(7,)"));
    }

    #[test]
    fn the_normalisation_line_is_the_npu_models() {
        let p = crate::infer::Preprocess {
            order: ChannelOrder::Bgr,
            mean: [127.5; 3],
            std: [128.0, 127.5, 1.0],
        };
        let text = normalization_alls(&p);
        assert!(text.contains("is BGR uint8"), "{text}");
        assert!(
            text.ends_with(
                "normalization1 = normalization([127.5, 127.5, 127.5], [128.0, 127.5, 1.0])\n"
            ),
            "{text}"
        );
    }
}
