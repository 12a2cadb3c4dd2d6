//! Shared helpers: locating the assets, building configs that point at them.

use std::path::{Path, PathBuf};

use portier::config::Config;

/// The shared assets folder, or `None` (with a notice) when it is missing outside CI.
/// Under `CI=true` a missing folder fails the test: CI must never pass by skipping.
pub fn assets() -> Option<PathBuf> {
    let dir = std::env::var_os("PORTIER_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets"));
    if dir.join("README.md").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("test assets missing at {} (CI=true: failing, not skipping)", dir.display());
    }
    eprintln!("notice: test assets missing at {}, skipping", dir.display());
    None
}

/// Detector choices used in tests.
#[derive(Clone, Copy, Debug)]
pub enum Det {
    Scrfd500m,
    Scrfd500mStatic,
    Yunet,
}

/// Recognizer choices used in tests.
#[derive(Clone, Copy, Debug)]
pub enum Rec {
    W600kFp32,
    Paddlex,
}

pub fn config(assets: &Path, det: Det, rec: Rec, gallery: &Path) -> Config {
    let m = assets.join("models");
    let det = match det {
        Det::Scrfd500m => format!(
            "model = \"{}\"\nkind = \"scrfd\"",
            m.join("detectors/scrfd_500m_det_500m.onnx").display()
        ),
        Det::Scrfd500mStatic => format!(
            "model = \"{}\"\nkind = \"scrfd\"",
            m.join("detectors/scrfd_500m_bnkps_640x640.onnx").display()
        ),
        Det::Yunet => format!(
            "model = \"{}\"\nkind = \"yunet\"",
            m.join("detectors/face_detection_yunet_2023mar.onnx").display()
        ),
    };
    let rec = match rec {
        Rec::W600kFp32 => {
            format!("model = \"{}\"", m.join("derived/w600k_mbf_dq_fp32.onnx").display())
        }
        Rec::Paddlex => format!(
            "model = \"{}\"\nchannel_order = \"bgr\"",
            m.join("recognizers/paddlex_mobilefacenet_128d.onnx").display()
        ),
    };
    let text = format!(
        "[detector]\n{det}\n[recognizer]\n{rec}\n[gallery]\npath = \"{}\"\n[matching]\nthreshold = 0.3\nmargin = 0.0\n",
        gallery.display()
    );
    Config::parse(&text, Path::new("/test.toml")).expect("test config")
}

/// Golden JSON files.
pub fn golden(assets: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(assets.join("golden").join(name)).expect("golden file");
    serde_json::from_str(&text).expect("golden json")
}
