//! Parity with the reference Python pipeline's outputs in `golden/`.

use crate::common::{self, Det, Rec};
use portier::frame::load_image;
use portier::pipeline::Pipeline;

fn detection_parity(det: Det, key: &str) {
    let Some(assets) = common::assets() else { return };
    let golden = common::golden(&assets, "detections.json");
    let cfg = common::config(&assets, det, Rec::W600kFp32, std::path::Path::new("/unused.db"));
    let mut p = Pipeline::open(&cfg).unwrap();
    let images = golden["images"].as_object().unwrap();
    let mut worst = 0f32;
    let mut failures = Vec::new();
    for (rel, g) in images {
        let img = load_image(&assets.join("faces/full").join(rel)).unwrap();
        assert_eq!(u64::from(img.width()), g["width"].as_u64().unwrap(), "{rel}");
        let ours = p.detect(img.view()).unwrap().to_vec();
        let want = g[key].as_array().unwrap();
        if ours.len() != want.len() {
            failures.push(format!("{rel}: {} faces, golden {}", ours.len(), want.len()));
            continue;
        }
        for w in want {
            let b: Vec<f32> =
                w["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let k: Vec<[f32; 2]> = w["kps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32])
                .collect();
            // Pair with our detection of the nearest box.
            let o = ours
                .iter()
                .min_by(|a, c| {
                    let da: f32 = (0..4).map(|i| (a.bbox[i] - b[i]).abs()).sum();
                    let dc: f32 = (0..4).map(|i| (c.bbox[i] - b[i]).abs()).sum();
                    da.total_cmp(&dc)
                })
                .unwrap();
            let mut err = o.bbox.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            for (i, kk) in k.iter().enumerate() {
                err = err.max((o.kps[i][0] - kk[0]).abs()).max((o.kps[i][1] - kk[1]).abs());
            }
            worst = worst.max(err);
            if err > 2.0 {
                failures.push(format!(
                    "{rel}: max deviation {err:.2} px: ours {:?} {:?} {}, golden {b:?} {k:?}",
                    o.bbox, o.kps, o.score
                ));
            }
        }
    }
    eprintln!("{key}: worst deviation {worst:.3} px over {} photos", images.len());
    assert!(failures.is_empty(), "{key}: {failures:#?}");
}

#[test]
fn scrfd_500m_detections_match_golden() {
    detection_parity(Det::Scrfd500m, "scrfd_500m");
}

#[test]
fn scrfd_500m_static_export_matches_golden() {
    detection_parity(Det::Scrfd500mStatic, "scrfd_500m");
}

#[test]
fn yunet_detections_match_golden() {
    detection_parity(Det::Yunet, "yunet_2023mar");
}

/// The golden crop's file name for a photo key (`deepface/img1.jpg` → `deepface__img1.png`).
fn crop_name(rel: &str) -> String {
    let stem = rel.rsplit_once('.').map_or(rel, |(s, _)| s);
    format!("{}.png", stem.replace('/', "__"))
}

fn golden_kps(g: &serde_json::Value) -> [[f32; 2]; 5] {
    let k = g["scrfd_500m"][0]["kps"].as_array().unwrap();
    std::array::from_fn(|i| [k[i][0].as_f64().unwrap() as f32, k[i][1].as_f64().unwrap() as f32])
}

#[test]
fn aligned_crops_match_golden() {
    use portier::align::{align_face, AlignedFace};
    let Some(assets) = common::assets() else { return };
    let golden = common::golden(&assets, "detections.json");
    let mut worst = 0f64;
    let mut failures = Vec::new();
    let mut crop = AlignedFace::default();
    for (rel, g) in golden["images"].as_object().unwrap() {
        let img = load_image(&assets.join("faces/full").join(rel)).unwrap();
        align_face(img.view(), &golden_kps(g), &mut crop).unwrap();
        let want = load_image(&assets.join("golden/aligned_112").join(crop_name(rel))).unwrap();
        let mad = crop
            .pixels
            .iter()
            .zip(want.as_bytes())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / crop.pixels.len() as f64;
        worst = worst.max(mad);
        if mad > 2.0 {
            failures.push(format!("{rel}: mean abs difference {mad:.2}"));
        }
    }
    eprintln!("aligned crops: worst mean absolute difference {worst:.3} grey levels");
    assert!(failures.is_empty(), "{failures:#?}");
}

fn embedding_parity(rec: Rec, key: &str) {
    use portier::align::AlignedFace;
    use portier::embed::{dot, Embedder};
    let Some(assets) = common::assets() else { return };
    let golden = common::golden(&assets, "embeddings.json");
    let dets = common::golden(&assets, "detections.json");
    let cfg = common::config(&assets, Det::Scrfd500m, rec, std::path::Path::new("/unused.db"));
    let mut p = Pipeline::open(&cfg).unwrap();
    let table = golden["embeddings"][key].as_object().unwrap();
    let (mut worst_crop, mut worst_full) = (1f32, 1f32);
    let mut failures = Vec::new();
    let mut face = AlignedFace::default();
    let mut emb = vec![0f32; p.embedder.dim()];
    for (rel, _) in dets["images"].as_object().unwrap() {
        let name = crop_name(rel);
        let want: Vec<f32> =
            table[&name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(want.len(), p.embedder.dim());
        // 1. The model and its preprocessing on the golden crop.
        let crop = load_image(&assets.join("golden/aligned_112").join(&name)).unwrap();
        face.pixels.copy_from_slice(crop.as_bytes());
        p.embedder.embed(&face, &mut emb).unwrap();
        let c1 = dot(&emb, &want);
        // 2. The whole pipeline from the photo: our detection, alignment and embedding.
        let img = load_image(&assets.join("faces/full").join(rel)).unwrap();
        let faces = p.faces(img.view(), portier::pipeline::Select::All, None).unwrap();
        let c2 = faces.iter().map(|f| dot(&f.embedding, &want)).fold(f32::MIN, f32::max);
        worst_crop = worst_crop.min(c1);
        worst_full = worst_full.min(c2);
        if c1 < 0.99 || c2 < 0.99 {
            failures.push(format!(
                "{rel}: cosine on golden crop {c1:.4}, through our pipeline {c2:.4}"
            ));
        }
    }
    eprintln!(
        "{key}: worst cosine {worst_crop:.4} (golden crops), {worst_full:.4} (full pipeline)"
    );
    assert!(failures.is_empty(), "{key}: {failures:#?}");
}

#[test]
fn w600k_embeddings_match_golden() {
    embedding_parity(Rec::W600kFp32, "w600k_mbf_dq_fp32_512d");
}

#[test]
fn paddlex_embeddings_match_golden() {
    embedding_parity(Rec::Paddlex, "paddlex_mobilefacenet_128d");
}

#[test]
fn fitted_input_finds_the_same_faces_with_less_padding() {
    let Some(assets) = common::assets() else { return };
    let mut cfg =
        common::config(&assets, Det::Scrfd500m, Rec::W600kFp32, std::path::Path::new("/unused.db"));
    let mut padded = Pipeline::open(&cfg).unwrap();
    cfg.detector.fit_input = true;
    let mut fitted = Pipeline::open(&cfg).unwrap();
    for name in
        ["face_recognition/obama-1080p.jpg", "face_recognition/two_people.jpg", "deepface/img1.jpg"]
    {
        let img = load_image(&assets.join("faces/full").join(name)).unwrap();
        let a = padded.detect(img.view()).unwrap().to_vec();
        let b = fitted.detect(img.view()).unwrap().to_vec();
        assert_eq!(a.len(), b.len(), "{name}");
        for (x, y) in a.iter().zip(&b) {
            let d = x
                .kps
                .iter()
                .zip(&y.kps)
                .map(|(p, q)| (p[0] - q[0]).abs().max((p[1] - q[1]).abs()))
                .fold(0f32, f32::max);
            assert!(d < 1.0, "{name}: landmarks moved {d} px");
        }
    }
}
