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

/// Every run of 4 consecutive f32 of `rows`, little-endian, as 16-byte needles.
fn runs_of_four(rows: &[Vec<f32>]) -> std::collections::HashSet<[u8; 16]> {
    let mut runs = std::collections::HashSet::new();
    for row in rows {
        let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
        for start in (0..bytes.len().saturating_sub(15)).step_by(4) {
            runs.insert(<[u8; 16]>::try_from(&bytes[start..start + 16]).unwrap());
        }
    }
    runs
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn gallery_is_sealed_on_disk_and_moves_by_encrypted_backup() {
    use portier::gallery::Gallery;
    use portier::pipeline::{Pipeline, Select};
    use std::os::unix::fs::PermissionsExt;

    let Some(assets) = common::assets() else { return };
    let env = setup(&assets);
    let obama = [photo(&env, "obama.jpg"), photo(&env, "knn_examples__train__obama__obama.jpg")];
    let o = portier(&env, &["enroll", "--name", "Barack Obama", &obama[0], &obama[1]]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = portier(&env, &["enroll", "--name", "Joe Biden", &photo(&env, "biden.jpg")]);
    assert!(o.status.success(), "{}", stderr(&o));

    let state = env.dir.path().join("state");
    let key = state.join("gallery.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);

    // A stolen gallery file (and its -wal/-shm) without the key reveals no template: no run of
    // four consecutive f32 of any enrolled embedding at any byte offset. The needles are the
    // real embeddings of the enrolment photos, as computed and as the gallery decrypts them.
    let config = portier::config::Config::load(&env.config).unwrap();
    let mut pipeline = Pipeline::open(&config).unwrap();
    let mut rows = Vec::new();
    for p in obama.iter().chain([&photo(&env, "biden.jpg")]) {
        let img = portier::frame::load_image(Path::new(p)).unwrap();
        rows.push(pipeline.faces(img.view(), Select::All, None).unwrap().remove(0).embedding);
    }
    let g = Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
    let m = g.matcher(&pipeline.embedder_model_id()).unwrap();
    assert_eq!(m.len(), 3);
    for (i, e) in rows.iter().enumerate() {
        let r = m.best_two(e).unwrap();
        assert!(r.best.unwrap().similarity > 0.9999, "photo {i} is what was enrolled");
    }
    let norm = |v: &[f32]| {
        let n = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
        v.iter().map(|&x| (f64::from(x) / n) as f32).collect::<Vec<f32>>()
    };
    let mut needles: Vec<Vec<f32>> = rows.iter().map(|r| norm(r)).collect();
    needles.extend(rows.iter().cloned());
    let runs = runs_of_four(&needles);
    // At least two distinct 128-d embeddings (two of the photos may be the same picture).
    assert!(runs.len() >= 2 * 125, "{} runs", runs.len());
    drop(g);
    let mut raw = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        raw.extend(std::fs::read(state.join(format!("gallery.db{suffix}"))).unwrap_or_default());
    }
    assert!(raw.len() > 4096);
    let hits =
        raw.windows(16).filter(|w| runs.contains(<&[u8; 16]>::try_from(*w).unwrap())).count();
    assert_eq!(hits, 0, "plaintext template runs in the gallery file");

    // A key file others can read is refused: exit 78 and the fix in the message.
    chmod(&key, 0o644);
    let o = portier(&env, &["gallery", "list"]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(error_line(&o).contains(&format!("chmod 600 {}", key.display())), "{}", stderr(&o));
    chmod(&key, 0o600);

    // Export under a passphrase file, import on "another device" (new gallery, new key).
    let pass = env.dir.path().join("pass");
    std::fs::write(&pass, "field technician passphrase\n").unwrap();
    let o =
        portier(&env, &["gallery", "export", "b.bak", "--passphrase-file", pass.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65), "a passphrase file others can read is refused");
    assert!(error_line(&o).contains("chmod 600"), "{}", stderr(&o));
    chmod(&pass, 0o600);
    let backup = env.dir.path().join("gallery.bak");
    let pass_arg = pass.to_str().unwrap();
    let o = portier(
        &env,
        &["gallery", "export", backup.to_str().unwrap(), "--passphrase-file", pass_arg],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("exported 2 person(s)"), "{}", stdout(&o));

    let other = env.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&other, text.replace("state/gallery.db", "state2/gallery.db")).unwrap();
    std::fs::create_dir_all(env.dir.path().join("state2")).unwrap();
    let import = |extra: &[&str], passphrase: &str| {
        let mut args =
            vec!["gallery", "import", backup.to_str().unwrap(), "--passphrase-file", passphrase];
        args.extend_from_slice(extra);
        portier_with(&other, &args)
    };
    let o = import(&[], pass_arg);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("imported 2 person(s) (0 replaced, 3 template(s))"),
        "{}",
        stdout(&o)
    );
    assert_ne!(
        std::fs::read(&key).unwrap(),
        std::fs::read(env.dir.path().join("state2/gallery.key")).unwrap()
    );
    let o = portier_with(&other, &["identify", &photo(&env, "obama2.jpg")]);
    assert!(stdout(&o).contains("Barack Obama"), "{}", stdout(&o));

    // Again: the names clash and nothing is imported; --replace replaces them.
    let o = import(&[], pass_arg);
    assert_eq!(o.status.code(), Some(65));
    assert!(error_line(&o).contains("\"Barack Obama\", \"Joe Biden\""), "{}", stderr(&o));
    let o = import(&["--replace"], pass_arg);
    assert!(stdout(&o).contains("(2 replaced, 3 template(s))"), "{}", stdout(&o));

    // Wrong passphrase: refused, exit 65.
    let wrong = env.dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase at all\n").unwrap();
    chmod(&wrong, 0o600);
    let o = import(&["--replace"], wrong.to_str().unwrap());
    assert_eq!(o.status.code(), Some(65));
    assert!(error_line(&o).contains("wrong passphrase"), "{}", stderr(&o));

    // A lost key file: the gallery's templates cannot be read, and no new key is made.
    std::fs::remove_file(&key).unwrap();
    let o = portier(&env, &["gallery", "list"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(
        error_line(&o).contains("key file") && error_line(&o).contains("is missing"),
        "{}",
        stderr(&o)
    );
    assert!(!key.exists());
}

/// Review of the MQTT command code, finding 5: a door whose replay state refuses every command
/// (its clock ran ahead while it accepted one) gets a documented way out, `portier mqtt
/// reset-replay`: the old state kept, a floor at now, nothing else; an unusable folder is an
/// error that leaves the state as it was.
#[test]
fn mqtt_reset_replay_keeps_the_old_state_and_leaves_a_floor_a_window_after_now() {
    use portier::mqtt::command::ReplayState;
    use portier::mqtt::replay;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let config = dir.path().join("portier.toml");
    let toml = |outbox: &Path| {
        format!(
            "[detector]\nmodel = \"d.onnx\"\nkind = \"yunet\"\n\n[recognizer]\nmodel = \"r.onnx\"\n\n\
             [gallery]\npath = \"g.db\"\n\n[matching]\nthreshold = 0.47\nmargin = 0.05\n\n[mqtt]\noutbox_dir = \"{}\"\n",
            outbox.display()
        )
    };
    std::fs::write(&config, toml(&outbox)).unwrap();
    let now = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    };
    // A mark a day ahead: every command `clock_behind` for a day.
    let stuck = ReplayState { clock_mark: Some(now() + 86_400), ..ReplayState::default() };
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::write(outbox.join(replay::STATE_NAME), replay::encode(&stuck)).unwrap();

    let before = now();
    let out = portier_with(&config, &["mqtt", "reset-replay"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("reset") && text.contains("kept as"), "{text}");
    let state = replay::decode(&std::fs::read(outbox.join(replay::STATE_NAME)).unwrap()).unwrap();
    assert_eq!(state.clock_mark, None);
    // The default command window (30 s) after the reset.
    assert!(state.floor.is_some_and(|f| f >= before + 30 && f <= now() + 30), "{state:?}");
    assert!(state.nonces.is_empty() && state.max_ts.is_none());
    let kept: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".reset-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(replay::decode(&std::fs::read(&kept[0]).unwrap()).unwrap(), stuck);

    // A folder that cannot be used: exit 73, one line naming it.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    std::fs::write(&config, toml(&file.join("outbox"))).unwrap();
    let out = portier_with(&config, &["mqtt", "reset-replay"]);
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("cannot reset the replay state") && line.contains("a-file"), "{line}");
}
