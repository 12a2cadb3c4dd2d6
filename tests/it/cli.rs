//! The `portier` binary from the shell: enrol, identify, gallery management, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common;

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    photos: PathBuf,
}

fn setup(assets: &Path) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let m = assets.join("models");
    let config = dir.path().join("portier.toml");
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = \"{}\"\nkind = \"yunet\"\n\n[recognizer]\nmodel = \"{}\"\nchannel_order = \"bgr\"\n\n[gallery]\npath = \"state/gallery.db\"\n\n[matching]\nthreshold = 0.47\nmargin = 0.05\n",
            m.join("detectors/face_detection_yunet_2023mar.onnx").display(),
            m.join("recognizers/paddlex_mobilefacenet_128d.onnx").display()
        ),
    )
    .unwrap();
    Env { photos: assets.join("faces/full/face_recognition"), config, dir }
}

fn portier(env: &Env, args: &[&str]) -> Output {
    portier_with(&env.config, args)
}

fn portier_with(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portier"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("PORTIER_LOG", "warn")
        .output()
        .unwrap()
}

fn photo(env: &Env, name: &str) -> String {
    env.photos.join(name).display().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error line: exactly one line on stderr starting with `portier: `.
fn error_line(o: &Output) -> String {
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("portier: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected, got: {e}");
    lines[0].to_string()
}

#[test]
fn enroll_then_identify_from_the_shell() {
    let Some(assets) = common::assets() else { return };
    let env = setup(&assets);
    let o = portier(
        &env,
        &[
            "enroll",
            "--name",
            "Barack Obama",
            &photo(&env, "obama.jpg"),
            &photo(&env, "knn_examples__train__obama__obama.jpg"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("enrolled Barack Obama with 2 template(s)"), "{}", stdout(&o));
    let o = portier(&env, &["enroll", "--name", "Joe Biden", &photo(&env, "biden.jpg")]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = portier(
        &env,
        &[
            "identify",
            "--json",
            &photo(&env, "obama2.jpg"),
            &photo(&env, "two_people.jpg"),
            &photo(&env, "knn_examples__test__alex_lacamoire1.jpg"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names = |i: usize| -> Vec<Option<String>> {
        v[i]["faces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["known"].as_bool().unwrap().then(|| f["name"].as_str().unwrap().to_string()))
            .collect()
    };
    assert_eq!(names(0), vec![Some("Barack Obama".to_string())]);
    let mut two = names(1);
    two.sort();
    assert_eq!(two, vec![Some("Barack Obama".to_string()), Some("Joe Biden".to_string())]);
    assert_eq!(names(2), vec![None], "a stranger is unknown");
    assert!(v[0]["faces"][0]["norm"].as_f64().unwrap() > 1.0);

    // Gallery management.
    let o = portier(&env, &["gallery", "rename", "Joe Biden", "Joseph Biden"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = portier(&env, &["gallery", "list"]);
    assert!(
        stdout(&o).contains("Joseph Biden\t1 for paddlex_mobilefacenet_128d"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("Barack Obama\t2 for"), "{}", stdout(&o));
    let o = portier(&env, &["gallery", "remove", "Joseph Biden"]);
    assert!(o.status.success());
    let o = portier(&env, &["identify", &photo(&env, "biden.jpg")]);
    assert!(stdout(&o).contains("unknown"), "{}", stdout(&o));
    let o = portier(&env, &["gallery", "remove", "Nobody"]);
    assert_eq!(o.status.code(), Some(65));
    assert!(error_line(&o).contains("Nobody"));
    let o = portier(&env, &["gallery", "check"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn enrolment_refuses_group_photos_and_faceless_photos_and_writes_nothing() {
    let Some(assets) = common::assets() else { return };
    let env = setup(&assets);
    let o = portier(
        &env,
        &["enroll", "--name", "Two", &photo(&env, "obama.jpg"), &photo(&env, "two_people.jpg")],
    );
    assert_eq!(o.status.code(), Some(65));
    let e = error_line(&o);
    assert!(e.contains("two_people.jpg") && e.contains("2 faces"), "{e}");
    // A photo with no face: a plain grey picture.
    let blank = env.dir.path().join("blank.png");
    image::RgbImage::from_pixel(320, 240, image::Rgb([128, 128, 128])).save(&blank).unwrap();
    let o = portier(&env, &["enroll", "--name", "Nobody", blank.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    assert!(error_line(&o).contains("blank.png: no face"), "{}", stderr(&o));
    let o = portier(&env, &["gallery", "list"]);
    assert!(stdout(&o).contains("no one enrolled"), "{}", stdout(&o));
}

#[test]
fn bad_input_gives_one_line_errors_and_loses_nothing() {
    let Some(assets) = common::assets() else { return };
    let env = setup(&assets);
    let o = portier(&env, &["enroll", "--name", "Barack Obama", &photo(&env, "obama.jpg")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let gallery = env.dir.path().join("state/gallery.db");

    // Truncated JPEG.
    let bytes = std::fs::read(env.photos.join("obama.jpg")).unwrap();
    let truncated = env.dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let o = portier(&env, &["identify", truncated.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    assert!(error_line(&o).contains("truncated.jpg"), "{}", stderr(&o));
    // Unreadable file.
    let o = portier(&env, &["enroll", "--name", "X", "/nonexistent/photo.jpg"]);
    assert_eq!(o.status.code(), Some(65));
    assert!(error_line(&o).contains("/nonexistent/photo.jpg: cannot read"), "{}", stderr(&o));

    // Missing model file.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let missing = env.dir.path().join("missing.toml");
    std::fs::write(&missing, text.replace("paddlex_mobilefacenet_128d.onnx", "nope.onnx")).unwrap();
    let o = portier_with(&missing, &["identify", &photo(&env, "obama.jpg")]);
    assert_eq!(o.status.code(), Some(66));
    let e = error_line(&o);
    assert!(e.contains("nope.onnx") && e.contains("cannot read"), "{e}");
    // Wrong model shape: the recognizer configured as the detector.
    let wrong = env.dir.path().join("wrong.toml");
    let rec = assets.join("models/recognizers/paddlex_mobilefacenet_128d.onnx");
    let det = assets.join("models/detectors/face_detection_yunet_2023mar.onnx");
    std::fs::write(&wrong, text.replace(det.to_str().unwrap(), rec.to_str().unwrap())).unwrap();
    let o = portier_with(&wrong, &["identify", &photo(&env, "obama.jpg")]);
    assert_eq!(o.status.code(), Some(78));
    let e = error_line(&o);
    assert!(e.contains("paddlex_mobilefacenet_128d.onnx") && e.contains("input"), "{e}");
    // ONNX Runtime missing: exit 69 and where it was looked for.
    let o = Command::new(env!("CARGO_BIN_EXE_portier"))
        .arg("-c")
        .arg(&env.config)
        .args(["identify", &photo(&env, "obama.jpg")])
        .env_remove("ORT_DYLIB_PATH")
        .env("PORTIER_CACHE_DIR", env.dir.path().join("no-cache"))
        .output()
        .unwrap();
    let system_copy =
        ["/usr/lib", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
            .iter()
            .any(|d| Path::new(d).join("libonnxruntime.so").exists());
    if !system_copy {
        assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
        assert!(error_line(&o).contains("onnx runtime library not found"), "{}", stderr(&o));
    }
    // Bad config key.
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("margin = 0.05", "margin = 0.05\nmargn = 1")).unwrap();
    let o = portier_with(&bad, &["check-config"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(error_line(&o).contains("margn"), "{}", stderr(&o));

    // The gallery survived all of that.
    let before = std::fs::read(&gallery).unwrap();
    let o = portier(&env, &["gallery", "list"]);
    assert!(stdout(&o).contains("Barack Obama"), "{}", stdout(&o));

    // A corrupt gallery: refused with a one-line error, and left byte-identical.
    let corrupt = env.dir.path().join("state/gallery.db");
    let mut garbage = before.clone();
    garbage[..16].copy_from_slice(b"this is garbage!");
    std::fs::write(&corrupt, &garbage).unwrap();
    let o = portier(&env, &["gallery", "list"]);
    assert_ne!(o.status.code(), Some(0));
    let e = error_line(&o);
    assert!(e.contains("gallery.db") && e.contains("not a database"), "{e}");
    let o = portier(&env, &["enroll", "--name", "Joe Biden", &photo(&env, "biden.jpg")]);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(std::fs::read(&corrupt).unwrap(), garbage, "a corrupt gallery is never rewritten");
}
