#!/usr/bin/env python3
"""Reference liveness scores for the shared liveness samples, computed the way minivision's
Silent-Face-Anti-Spoofing computes them (OpenCV crop and resize, ONNX Runtime, softmax, mean of
the two models), from the face boxes portier's own detector found.

Usage (numpy, opencv-python-headless and onnxruntime from PyPI in a venv):

    portier -c board/laptop.toml eval liveness --labels ../shared/assets/liveness/samples/labels.json --json > /tmp/live.json
    scripts/liveness-reference.py /tmp/live.json ../shared/assets/liveness > tests/fixtures/liveness-reference.json

Writes {file: {"bbox": [...], "v2": p, "v1se": p, "score": p}} and prints, on stderr, the
largest difference to portier's scores. The test `liveness_matches_the_reference` compares
portier against the committed file; the images are never committed.
"""
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort


def get_new_box(src_w, src_h, bbox, scale):
    """Silent-Face src/generate_patches.py CropImage._get_new_box, verbatim in effect."""
    x, y, box_w, box_h = bbox
    scale = min((src_h - 1) / box_h, min((src_w - 1) / box_w, scale))
    new_width, new_height = box_w * scale, box_h * scale
    center_x, center_y = box_w / 2 + x, box_h / 2 + y
    left_top_x, left_top_y = center_x - new_width / 2, center_y - new_height / 2
    right_bottom_x, right_bottom_y = center_x + new_width / 2, center_y + new_height / 2
    if left_top_x < 0:
        right_bottom_x -= left_top_x
        left_top_x = 0
    if left_top_y < 0:
        right_bottom_y -= left_top_y
        left_top_y = 0
    if right_bottom_x > src_w - 1:
        left_top_x -= right_bottom_x - src_w + 1
        right_bottom_x = src_w - 1
    if right_bottom_y > src_h - 1:
        left_top_y -= right_bottom_y - src_h + 1
        right_bottom_y = src_h - 1
    return int(left_top_x), int(left_top_y), int(right_bottom_x), int(right_bottom_y)


def live(session, img, bbox, scale):
    h, w = img.shape[:2]
    x1, y1, x2, y2 = get_new_box(w, h, bbox, scale)
    crop = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (80, 80))
    x = crop.transpose(2, 0, 1)[None].astype(np.float32)  # BGR, raw 0..255
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    e = np.exp(logits - logits.max())
    return float((e / e.sum())[1])


def main():
    report = json.load(open(sys.argv[1]))
    root = sys.argv[2]
    v2 = ort.InferenceSession(f"{root}/MiniFASNetV2.onnx", providers=["CPUExecutionProvider"])
    v1se = ort.InferenceSession(f"{root}/MiniFASNetV1SE.onnx", providers=["CPUExecutionProvider"])
    out, worst = {}, 0.0
    for s in report["samples"]:
        if s["bbox"] is None:
            continue
        l, t, r, b = s["bbox"]
        # Silent-Face's get_bbox: [int(left), int(top), int(right-left+1), int(bottom-top+1)].
        bbox = [int(l), int(t), int(r - l + 1), int(b - t + 1)]
        img = cv2.imread(f"{root}/samples/{s['file']}")
        p2, p1 = live(v2, img, bbox, 2.7), live(v1se, img, bbox, 4.0)
        score = (p2 + p1) / 2
        worst = max(worst, abs(score - s["score"]))
        print(f"{s['file']:28} reference {score:.4f} (v2 {p2:.4f}, v1se {p1:.4f}) portier "
              f"{s['score']:.4f}", file=sys.stderr)
        out[s["file"]] = {"bbox": s["bbox"], "v2": round(p2, 5), "v1se": round(p1, 5),
                          "score": round(score, 5)}
    print(f"largest score difference: {worst:.5f}", file=sys.stderr)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
