//! Shared helpers: locating the assets, building configs that point at them.

use std::path::{Path, PathBuf};

use portier::config::Config;

/// ONNX Runtime threads per model in the tests and the `portier` processes they start. The
/// harness runs as many tests at once as there are cores, each with its models: pools of one
/// thread per core each would put twice as many busy threads as cores on the machine (on two
/// cores two model-heavy tests took 45.6 s side by side with per-core pools, 33.2 s with one
/// thread each). The appliance's own default (a thread per core) is what the benches measure.
pub const TEST_INTRA_THREADS: usize = 1;

/// The shared assets folder, or `None` (with a notice) when it is missing outside CI.
/// Under `CI=true` a missing folder fails the test: CI must never pass by skipping.
///
/// Also loads ONNX Runtime for this test process with [`TEST_INTRA_THREADS`] (the first load
/// of a process decides its threads; every test that runs a model asks for its assets first).
pub fn assets() -> Option<PathBuf> {
    // Without the library (a machine that has not fetched it) the model tests fail on their
    // own, with the loader's message.
    let _ = portier::infer::init(None, TEST_INTRA_THREADS);
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
        "[detector]\n{det}\n[recognizer]\n{rec}\n[gallery]\npath = \"{}\"\n[matching]\nthreshold = 0.3\nmargin = 0.0\n[onnxruntime]\nintra_threads = {TEST_INTRA_THREADS}\n",
        gallery.display()
    );
    Config::parse(&text, Path::new("/test.toml")).expect("test config")
}

/// `board/<board>` with the shared assets' paths made absolute and its gallery at `gallery`,
/// written to `dir/portier.toml`; its path.
pub fn board_config(board: &str, dir: &Path, assets: &Path, gallery: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("board").join(board))
            .unwrap();
    let mut out = String::new();
    let threads = format!("intra_threads = {TEST_INTRA_THREADS}\n");
    let mut runtime = false;
    for line in text.lines() {
        if line.starts_with("path = ") && line.contains("gallery") {
            out.push_str(&format!("path = \"{}\"\n", gallery.display()));
        } else if line.starts_with("intra_threads") {
            // Set below, under the section's header.
        } else if line.trim() == "[onnxruntime]" {
            runtime = true;
            out.push_str("[onnxruntime]\n");
            out.push_str(&threads);
        } else {
            out.push_str(&line.replace("../../shared/assets", &assets.display().to_string()));
            out.push('\n');
        }
    }
    if !runtime {
        out.push_str("\n[onnxruntime]\n");
        out.push_str(&threads);
    }
    let path = dir.join("portier.toml");
    std::fs::write(&path, out).unwrap();
    path
}

/// Golden JSON files.
pub fn golden(assets: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(assets.join("golden").join(name)).expect("golden file");
    serde_json::from_str(&text).expect("golden json")
}

/// Writes a recognizer ONNX model whose output is the same `dim`-d vector for every input (a
/// degenerate model): input `data` `[1, 3, 112, 112]` (unused), output `emb` `[1, dim]`, the
/// constant through an `Identity` node. Encoded by hand (protobuf wire format): no ONNX tooling
/// is needed to make it.
pub fn constant_recognizer(path: &Path, dim: usize) {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn int(out: &mut Vec<u8>, field: u64, v: u64) {
        varint(out, field << 3);
        varint(out, v);
    }
    fn bytes(out: &mut Vec<u8>, field: u64, v: &[u8]) {
        varint(out, (field << 3) | 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
    let value_info = |name: &str, dims: &[u64]| {
        let mut shape = Vec::new();
        for &d in dims {
            let mut dim = Vec::new();
            int(&mut dim, 1, d);
            bytes(&mut shape, 1, &dim);
        }
        let mut tensor = Vec::new();
        int(&mut tensor, 1, 1); // FLOAT
        bytes(&mut tensor, 2, &shape);
        let mut ty = Vec::new();
        bytes(&mut ty, 1, &tensor);
        let mut vi = Vec::new();
        bytes(&mut vi, 1, name.as_bytes());
        bytes(&mut vi, 2, &ty);
        vi
    };
    let values: Vec<u8> =
        (0..dim).flat_map(|i| ((i as f32 * 0.37).sin() + 0.1).to_le_bytes()).collect();
    let mut init = Vec::new();
    int(&mut init, 1, 1);
    int(&mut init, 1, dim as u64);
    int(&mut init, 2, 1);
    bytes(&mut init, 8, b"c");
    bytes(&mut init, 9, &values);
    let mut node = Vec::new();
    bytes(&mut node, 1, b"c");
    bytes(&mut node, 2, b"emb");
    bytes(&mut node, 4, b"Identity");
    let mut graph = Vec::new();
    bytes(&mut graph, 1, &node);
    bytes(&mut graph, 2, b"constant");
    bytes(&mut graph, 5, &init);
    bytes(&mut graph, 11, &value_info("data", &[1, 3, 112, 112]));
    bytes(&mut graph, 12, &value_info("emb", &[1, dim as u64]));
    let mut opset = Vec::new();
    bytes(&mut opset, 1, b"");
    int(&mut opset, 2, 13);
    let mut model = Vec::new();
    int(&mut model, 1, 7);
    bytes(&mut model, 7, &graph);
    bytes(&mut model, 8, &opset);
    std::fs::write(path, model).expect("writing the constant model");
}
