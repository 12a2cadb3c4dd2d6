//! The configuration file: TOML in, a validated [`Config`] out. Units live in key names
//! (`pulse_ms`), unknown keys are refused, and every error names the file and the exact key.
//!
//! Relative paths in the file are resolved against the file's own directory, so a config and
//! its models can move together. Must not: open models or devices; it only describes them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::detect::{DetectorKind, DetectorSettings};
use crate::embed::cpu::RecognizerSettings;
use crate::frame::Filter;
use crate::gallery::MatchPolicy;
use crate::infer::{ChannelOrder, Optimization, Preprocess, SessionOptions};

/// A configuration problem; main maps it to exit code 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type.
    #[error("config {path}: {location}{message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// `key `a.b`: ` and/or `line N: ` prefix.
        location: String,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config {path}: key `{key}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

/// ONNX Runtime settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so`; default: `ORT_DYLIB_PATH`, the development cache, then the
    /// system library directories.
    pub library: Option<PathBuf>,
    /// Threads of the one pool all models share; 0 = one per core.
    #[serde(default)]
    pub intra_threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetector {
    model: PathBuf,
    kind: DetectorKind,
    #[serde(default = "default_input")]
    input_width: u32,
    #[serde(default = "default_input")]
    input_height: u32,
    channel_order: Option<ChannelOrder>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    score_threshold: Option<f32>,
    nms_threshold: Option<f32>,
    #[serde(default = "default_filter")]
    resize_filter: FilterName,
    #[serde(default)]
    optimization: Optimization,
    #[serde(default)]
    fit_input: bool,
}

fn default_input() -> u32 {
    640
}

fn default_filter() -> FilterName {
    FilterName::Antialiased
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FilterName {
    Bilinear,
    Antialiased,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecognizer {
    model: PathBuf,
    id: Option<String>,
    #[serde(default = "default_rgb")]
    channel_order: ChannelOrder,
    #[serde(default = "default_arcface_mean")]
    mean: [f32; 3],
    #[serde(default = "default_arcface_mean")]
    std: [f32; 3],
    #[serde(default)]
    flip: bool,
    #[serde(default)]
    optimization: Optimization,
}

fn default_rgb() -> ChannelOrder {
    ChannelOrder::Rgb
}

fn default_arcface_mean() -> [f32; 3] {
    [127.5; 3]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGallery {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatching {
    threshold: f32,
    #[serde(default)]
    margin: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    onnxruntime: OnnxRuntimeConfig,
    detector: RawDetector,
    recognizer: RawRecognizer,
    gallery: RawGallery,
    matching: RawMatching,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from.
    pub source: PathBuf,
    /// ONNX Runtime.
    pub onnxruntime: OnnxRuntimeConfig,
    /// Face detector.
    pub detector: DetectorSettings,
    /// Face recognizer (CPU).
    pub recognizer: RecognizerSettings,
    /// Gallery database file.
    pub gallery_path: PathBuf,
    /// When a match counts.
    pub matching: MatchPolicy,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error, key: String| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let mut location = String::new();
            if !key.is_empty() && key != "." {
                location.push_str(&format!("key `{key}`: "));
            }
            if let Some(l) = line {
                location.push_str(&format!("line {l}: "));
            }
            let message = e.message().replace('\n', " ").trim().to_string();
            ConfigError::Parse { path: path.into(), location, message }
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_err(e, String::new()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_err(e.into_inner(), key)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.into(),
            key: key.into(),
            reason,
        };
        let session = |optimization| SessionOptions { optimization };

        let d = &raw.detector;
        for (key, v) in
            [("detector.input_width", d.input_width), ("detector.input_height", d.input_height)]
        {
            if v == 0 || v % 32 != 0 || v > 4096 {
                return Err(invalid(
                    key,
                    format!("must be a multiple of 32 in 32..=4096, got {v}"),
                ));
            }
        }
        // Each detector family's own normalisation (model cards: InsightFace scrfd.py; OpenCV
        // Zoo YuNet takes raw BGR).
        let (order, mean, std, score, nms) = match d.kind {
            DetectorKind::Scrfd => (ChannelOrder::Rgb, [127.5; 3], [128.0; 3], 0.5, 0.4),
            DetectorKind::Yunet => (ChannelOrder::Bgr, [0.0; 3], [1.0; 3], 0.6, 0.3),
        };
        let detector = DetectorSettings {
            path: resolve(&d.model),
            kind: d.kind,
            input_size: [d.input_width, d.input_height],
            fit_input: d.fit_input,
            preprocess: Preprocess {
                order: d.channel_order.unwrap_or(order),
                mean: d.mean.unwrap_or(mean),
                std: d.std.unwrap_or(std),
            },
            score_threshold: d.score_threshold.unwrap_or(score),
            nms_threshold: d.nms_threshold.unwrap_or(nms),
            filter: match d.resize_filter {
                FilterName::Bilinear => Filter::Bilinear,
                FilterName::Antialiased => Filter::Antialiased,
            },
            session: session(d.optimization),
        };
        check_unit(&invalid, "detector.score_threshold", detector.score_threshold)?;
        check_unit(&invalid, "detector.nms_threshold", detector.nms_threshold)?;
        check_std(&invalid, "detector.std", detector.preprocess.std)?;

        let r = &raw.recognizer;
        let model_path = resolve(&r.model);
        let model_id = match &r.id {
            Some(id) => id.trim().to_string(),
            None => {
                model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            }
        };
        if model_id.is_empty() || model_id.len() > 128 || model_id.chars().any(char::is_control) {
            return Err(invalid(
                "recognizer.id",
                format!("must be 1..=128 printable characters, got {model_id:?}"),
            ));
        }
        check_std(&invalid, "recognizer.std", r.std)?;
        let recognizer = RecognizerSettings {
            path: model_path,
            model_id,
            preprocess: Preprocess { order: r.channel_order, mean: r.mean, std: r.std },
            flip: r.flip,
            session: session(r.optimization),
        };

        let m = &raw.matching;
        if !(-1.0..=1.0).contains(&m.threshold) {
            return Err(invalid(
                "matching.threshold",
                format!("a cosine similarity in -1..=1, got {}", m.threshold),
            ));
        }
        if !(0.0..=1.0).contains(&m.margin) {
            return Err(invalid("matching.margin", format!("must be in 0..=1, got {}", m.margin)));
        }
        Ok(Config {
            source: path.into(),
            onnxruntime: OnnxRuntimeConfig {
                library: raw.onnxruntime.library.as_deref().map(resolve),
                intra_threads: raw.onnxruntime.intra_threads,
            },
            detector,
            recognizer,
            gallery_path: resolve(&raw.gallery.path),
            matching: MatchPolicy { threshold: m.threshold, margin: m.margin },
        })
    }
}

fn check_unit(
    invalid: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    v: f32,
) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(key, format!("must be in 0..=1, got {v}")))
    }
}

fn check_std(
    invalid: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    v: [f32; 3],
) -> Result<(), ConfigError> {
    if v.iter().all(|s| s.is_finite() && *s != 0.0) {
        Ok(())
    } else {
        Err(invalid(key, format!("every divisor must be finite and non-zero, got {v:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[detector]
model = "det.onnx"
kind = "scrfd"

[recognizer]
model = "/abs/rec.onnx"

[gallery]
path = "gallery.db"

[matching]
threshold = 0.3
margin = 0.05
"#;

    #[test]
    fn parses_with_defaults_and_resolves_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/portier/portier.toml")).unwrap();
        assert_eq!(c.detector.path, Path::new("/etc/portier/det.onnx"));
        assert_eq!(c.recognizer.path, Path::new("/abs/rec.onnx"));
        assert_eq!(c.recognizer.model_id, "rec");
        assert_eq!(c.detector.preprocess.std, [128.0; 3]);
        assert_eq!(c.detector.score_threshold, 0.5);
        assert_eq!(c.gallery_path, Path::new("/etc/portier/gallery.db"));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("kind = \"scrfd\"", "kind = \"scrfd\"\nscore_treshold = 0.5");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("score_treshold"), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn wrong_type_names_the_dotted_key() {
        let text = GOOD.replace("threshold = 0.3", "threshold = \"high\"");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `matching.threshold`"), "{err}");
    }

    #[test]
    fn out_of_range_names_the_key() {
        let text = GOOD.replace("kind = \"scrfd\"", "kind = \"scrfd\"\ninput_width = 100");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `detector.input_width`"), "{err}");
        let text = GOOD.replace("margin = 0.05", "margin = 2.0");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `matching.margin`"), "{err}");
        let text = GOOD.replace("kind = \"scrfd\"", "kind = \"retina\"");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("detector.kind"), "{err}");
    }

    #[test]
    fn missing_section_is_named() {
        let text = GOOD.replace("[gallery]\npath = \"gallery.db\"\n", "");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("gallery"), "{err}");
    }
}
