#!/usr/bin/env python3
"""Benchmark InsightFace's Python ``FaceAnalysis`` pipeline as a reference for portier.

The numbers are meant to be read side by side with ``portier bench pipeline`` on the same
photos, models and machine. For each photo the script measures:

* ``decode``: ``cv2.imread`` of the file (JPEG decode, file in the page cache);
* ``get``: ``FaceAnalysis.get(img)``, the whole InsightFace pipeline (letterbox, detector,
  decoding and NMS, alignment and the recognizer once per face found);
* ``det model``: the detector's bare ``session.run`` on the preprocessed 640x640 blob;
* ``rec model``: the recognizer's bare ``session.run`` on one aligned 112x112 crop;
* ``models``: ``det model + faces * rec model`` (medians), i.e. the time spent inside ONNX
  Runtime; ``get - models`` is InsightFace's own Python/OpenCV/NumPy overhead.

Each is reported as median and p90 (nearest rank) in milliseconds over ``--repeat`` timed
runs after ``--warmup`` untimed runs.

The models are local files. InsightFace never downloads anything here: a temporary model pack
``<tmp>/models/<pack>/`` is built from symlinks to the two ONNX files, ``FaceAnalysis`` is
pointed at it, and InsightFace's downloader is replaced by a function that raises.

Usage::

    python3 bench/insightface_bench.py [--repeat 20] [--warmup 3] [--threads T] \
        [--json OUT] PHOTO...
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import insightface
import numpy as np
import onnxruntime
from insightface.app import FaceAnalysis
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.utils import face_align

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
DEFAULT_ASSETS: Path = REPO_ROOT.parent / "shared" / "assets"
DEFAULT_DET_MODEL: str = "models/detectors/scrfd_500m_det_500m.onnx"
DEFAULT_REC_MODEL: str = "models/derived/w600k_mbf_dq_fp32.onnx"
# File names inside the pack follow InsightFace's buffalo_s pack; the pack name is unlikely to
# clash with a directory in the working directory (InsightFace 2.x also accepts a bare path).
PACK_NAME: str = "portier_bench_pack"
PACK_DET_FILE: str = "det_500m.onnx"
PACK_REC_FILE: str = "w600k_mbf.onnx"
DET_SIZE: tuple[int, int] = (640, 640)
DET_THRESH: float = 0.5
PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
# Preprocessing the asset README gives for the models: detector RGB (x-127.5)/128,
# recognizer RGB (x-127.5)/127.5.
DET_MEAN_STD: tuple[float, float] = (127.5, 128.0)
REC_MEAN_STD: tuple[float, float] = (127.5, 127.5)
JSON_SCHEMA: int = 1


@dataclasses.dataclass(frozen=True)
class Stats:
    """Summary of one series of timings, in milliseconds."""

    n: int
    median: float
    p90: float
    min: float
    mean: float
    samples: list[float]

    @staticmethod
    def of(samples_ms: Sequence[float]) -> Stats:
        ordered = sorted(samples_ms)
        # Nearest-rank percentile: the smallest sample with at least 90 % of samples <= it.
        p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
        return Stats(
            n=len(ordered),
            median=statistics.median(ordered),
            p90=p90,
            min=ordered[0],
            mean=statistics.fmean(ordered),
            samples=[round(s, 4) for s in samples_ms],
        )


@dataclasses.dataclass(frozen=True)
class PhotoResult:
    """All measurements for one photo."""

    path: str
    width: int
    height: int
    faces: int
    det_scores: list[float]
    decode_ms: Stats
    get_ms: Stats
    det_model_ms: Stats
    rec_model_ms: Stats
    rec_crop: str
    rec_bare_vs_get_cosine: float | None

    @property
    def models_ms(self) -> float:
        """ONNX Runtime time of one ``get``: detector plus one recognizer run per face."""
        return self.det_model_ms.median + self.faces * self.rec_model_ms.median

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["models_ms_median_estimate"] = round(self.models_ms, 4)
        data["overhead_ms_median_estimate"] = round(self.get_ms.median - self.models_ms, 4)
        return data


def assets_dir() -> Path:
    """The shared assets directory: ``$PORTIER_ASSETS`` or ``<repo>/../shared/assets``."""
    env = os.environ.get("PORTIER_ASSETS")
    return Path(env).expanduser() if env else DEFAULT_ASSETS


def resolve_input(path: str, assets: Path) -> Path:
    """Absolute paths as given; relative ones from the working directory if they exist there,
    otherwise from the assets directory."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (assets / p).resolve()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cpu_info() -> dict[str, Any]:
    """CPU model and core counts from /proc/cpuinfo (falls back to ``platform``)."""
    model = ""
    cores: set[tuple[str, str]] = set()
    physical_id = "0"
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "model": model or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cpus": affinity,
    }


def forbid_downloads() -> None:
    """Replace InsightFace's downloader so that a missing model fails instead of fetching."""

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"insightface tried to download {url}; this benchmark is offline")

    for module_name in ("insightface.utils.download", "insightface.utils.storage"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "download_file"):
            setattr(module, "download_file", refuse)  # noqa: B010 (a ModuleType)


def build_pack(root: Path, det_model: Path, rec_model: Path) -> Path:
    """Lay out ``root/models/PACK_NAME/`` with the two ONNX files (symlinks, else copies)."""
    pack = root / "models" / PACK_NAME
    pack.mkdir(parents=True)
    for src, name in ((det_model, PACK_DET_FILE), (rec_model, PACK_REC_FILE)):
        dst = pack / name
        try:
            dst.symlink_to(src)
        except OSError:
            dst.write_bytes(src.read_bytes())
    return pack


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    so = onnxruntime.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    return so


def new_session(model_file: str, threads: int | None) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(
        model_file, sess_options=session_options(threads), providers=list(PROVIDERS)
    )


@dataclasses.dataclass
class LoadedApp:
    """A prepared ``FaceAnalysis`` and how its models were obtained."""

    app: FaceAnalysis
    routing: dict[str, str]
    notes: list[str]
    log: str


def load_app(pack_root: Path, rec_model: Path, threads: int | None) -> LoadedApp:
    """Build and prepare ``FaceAnalysis`` on the local pack.

    InsightFace's model_zoo routes a file by its ONNX graph: >= 5 outputs is a detector
    (``RetinaFace``, which decodes SCRFD), a square input of side >= 112 and a multiple of 16 is
    ArcFace; ``ArcFaceONNX`` then picks mean/std 0/1 if one of the first 8 nodes is named
    ``Sub*``/``Mul*`` (an MXNet export with normalisation inside) and 127.5/127.5 otherwise.
    If the recognizer is not routed, or gets the wrong normalisation, it is built directly.
    """
    notes: list[str] = []
    # InsightFace prints its model discovery to stdout; keep it out of the results table.
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        try:
            app = FaceAnalysis(
                name=PACK_NAME,
                root=str(pack_root),
                allowed_modules=["detection", "recognition"],
                providers=list(PROVIDERS),
            )
        except AssertionError as err:
            raise SystemExit(
                "insightface did not recognise the detector as a detection model:\n"
                + log.getvalue()
            ) from err
        app.prepare(ctx_id=-1, det_size=DET_SIZE, det_thresh=DET_THRESH)

    routing = {
        "detection": f"model_zoo ({type(app.det_model).__name__})",
        "recognition": "model_zoo (ArcFaceONNX)",
    }
    rec = app.models.get("recognition")
    if rec is None:
        routing["recognition"] = "direct ArcFaceONNX (model_zoo did not route it)"
        rec = ArcFaceONNX(model_file=str(rec_model), session=new_session(str(rec_model), threads))
        rec.prepare(ctx_id=-1)
        app.models["recognition"] = rec
        notes.append(
            "model_zoo did not route the recognizer to ArcFace; built ArcFaceONNX directly"
        )
    if (rec.input_mean, rec.input_std) != REC_MEAN_STD:
        notes.append(
            f"ArcFaceONNX guessed mean/std {rec.input_mean}/{rec.input_std} from node names; "
            f"set to {REC_MEAN_STD[0]}/{REC_MEAN_STD[1]}"
        )
        rec.input_mean, rec.input_std = REC_MEAN_STD
    det = app.det_model
    if (det.input_mean, det.input_std) != DET_MEAN_STD:
        notes.append(
            f"unexpected detector mean/std {det.input_mean}/{det.input_std} "
            "(kept as InsightFace set it)"
        )
    if threads is not None:
        # InsightFace 0.7.x passes only providers to InferenceSession, never SessionOptions, so
        # the sessions are replaced by equivalent ones with intra_op_num_threads set. The model
        # objects only use session.run with input/output names cached from the same file.
        for model in app.models.values():
            model.session = new_session(model.model_file, threads)
        notes.append(f"sessions rebuilt with intra_op_num_threads={threads}")
    return LoadedApp(app=app, routing=routing, notes=notes, log=log.getvalue())


def time_ms(fn: Callable[[], Any], warmup: int, repeat: int) -> tuple[Stats, Any]:
    """Run ``fn`` warmup + repeat times; return stats of the timed runs and the last result."""
    result: Any = None
    for _ in range(warmup):
        result = fn()
    samples: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        result = fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return Stats.of(samples), result


def detector_blob(det: Any, img: np.ndarray) -> np.ndarray:
    """The detector input exactly as InsightFace's ``detect`` + ``forward`` build it."""
    width, height = det.input_size
    im_ratio = img.shape[0] / img.shape[1]
    if im_ratio > height / width:
        new_h, new_w = height, int(height / im_ratio)
    else:
        new_w, new_h = width, int(width * im_ratio)
    det_img = np.zeros((height, width, 3), dtype=np.uint8)
    det_img[:new_h, :new_w, :] = cv2.resize(img, (new_w, new_h))
    mean = det.input_mean
    return cv2.dnn.blobFromImage(
        det_img, 1.0 / det.input_std, (width, height), (mean, mean, mean), swapRB=True
    )


def recognizer_blob(rec: Any, crop: np.ndarray) -> np.ndarray:
    """The recognizer input exactly as ``ArcFaceONNX.get_feat`` builds it."""
    mean = rec.input_mean
    return cv2.dnn.blobFromImages(
        [crop], 1.0 / rec.input_std, rec.input_size, (mean, mean, mean), swapRB=True
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def bench_photo(app: FaceAnalysis, path: Path, warmup: int, repeat: int) -> PhotoResult:
    decode, img = time_ms(lambda: cv2.imread(str(path), cv2.IMREAD_COLOR), warmup, repeat)
    if img is None:
        raise SystemExit(f"cannot decode {path}")
    get, faces = time_ms(lambda: app.get(img), warmup, repeat)

    det = app.det_model
    det_blob = detector_blob(det, img)
    det_run, _ = time_ms(
        lambda: det.session.run(det.output_names, {det.input_name: det_blob}), warmup, repeat
    )

    rec = app.models["recognition"]
    side = rec.input_size[0]
    if faces:
        crop = face_align.norm_crop(img, landmark=faces[0].kps, image_size=side)
        crop_kind = "aligned crop of face 0"
    else:
        # No face: time the recognizer on a resized centre square (its cost does not depend
        # on the pixels).
        s = min(img.shape[:2])
        y, x = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
        crop = cv2.resize(img[y : y + s, x : x + s], (side, side))
        crop_kind = "centre square (no face found)"
    rec_blob = recognizer_blob(rec, crop)
    rec_run, rec_out = time_ms(
        lambda: rec.session.run(rec.output_names, {rec.input_name: rec_blob}), warmup, repeat
    )
    check = cosine(rec_out[0], faces[0].embedding) if faces else None

    return PhotoResult(
        path=str(path),
        width=int(img.shape[1]),
        height=int(img.shape[0]),
        faces=len(faces),
        det_scores=[round(float(f.det_score), 4) for f in faces],
        decode_ms=decode,
        get_ms=get,
        det_model_ms=det_run,
        rec_model_ms=rec_run,
        rec_crop=crop_kind,
        rec_bare_vs_get_cosine=None if check is None else round(check, 6),
    )


def model_info(model: Any, path: Path, routed_by: str) -> dict[str, Any]:
    so = model.session.get_session_options()
    return {
        "path": str(path),
        "routed_by": routed_by,
        "sha256": sha256_of(path),
        "insightface_class": type(model).__name__,
        "input_shape": [d if isinstance(d, int) else str(d) for d in model.input_shape],
        "input_mean": model.input_mean,
        "input_std": model.input_std,
        "providers": model.session.get_providers(),
        "intra_op_num_threads": so.intra_op_num_threads,
        "inter_op_num_threads": so.inter_op_num_threads,
        "graph_optimization_level": str(so.graph_optimization_level).split(".")[-1],
        "execution_mode": str(so.execution_mode).split(".")[-1],
    }


def probe_pool_size(model_file: Path, threads: int | None) -> int | None:
    """Threads one session computes with: the OS threads a new session adds, plus the caller.

    ORT's intra-op pool has ``n - 1`` workers and the calling thread does the rest, so this
    tells what ``intra_op_num_threads=0`` (ORT's default) resolved to. Linux only.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    before = len(list(tasks.iterdir()))
    session = new_session(str(model_file), threads)
    added = len(list(tasks.iterdir())) - before
    del session
    return added + 1


def thread_summary(threads: int | None, pool: int | None, cpu: dict[str, Any]) -> str:
    requested = (
        f"intra_op_num_threads={threads} (--threads)"
        if threads is not None
        else "intra_op_num_threads=0 (ORT default)"
    )
    effective = f" -> {pool} per session" if pool is not None else ""
    return (
        f"{requested}{effective}; CPU has {cpu['physical_cores']} physical cores, "
        f"{cpu['logical_cpus']} logical"
    )


def fmt(s: Stats) -> str:
    return f"{s.median:8.2f} {s.p90:8.2f}"


def print_report(env: dict[str, Any], results: list[PhotoResult], out: Any = sys.stdout) -> None:
    print("InsightFace FaceAnalysis benchmark", file=out)
    for key in ("insightface", "onnxruntime", "opencv", "numpy", "python"):
        print(f"  {key:<12} {env['versions'][key]}", file=out)
    print(f"  {'cpu':<12} {env['cpu']['model']}", file=out)
    print(f"  {'threads':<12} {env['threads']}", file=out)
    print(
        f"  {'runs':<12} {env['settings']['repeat']} timed after {env['settings']['warmup']} "
        f"warm-up; det_size {DET_SIZE[0]}x{DET_SIZE[1]}, det_thresh {DET_THRESH}",
        file=out,
    )
    for note in env["notes"]:
        print(f"  {'note':<12} {note}", file=out)
    print("", file=out)
    pair = f"{'median':>8} {'p90':>8}"
    head = (
        f"{'photo':<22} {'size':>9} {'faces':>5} | {'decode':^17} | {'get (pipeline)':^17} | "
        f"{'det model':^17} | {'rec model/face':^17} | {'models':>8} {'other':>8}"
    )
    sub = f"{'':<38} | {pair} | {pair} | {pair} | {pair} | {'median':>8} {'median':>8}"
    print(head, file=out)
    print(sub, file=out)
    print("-" * len(head), file=out)
    for r in results:
        name = Path(r.path).name
        name = name if len(name) <= 22 else name[:19] + "..."
        print(
            f"{name:<22} {f'{r.width}x{r.height}':>9} {r.faces:>5} | {fmt(r.decode_ms)} | "
            f"{fmt(r.get_ms)} | {fmt(r.det_model_ms)} | {fmt(r.rec_model_ms)} | "
            f"{r.models_ms:8.2f} {r.get_ms.median - r.models_ms:8.2f}",
            file=out,
        )
    print("", file=out)
    print(
        "All times in ms. models = det model + faces x rec model (medians), the time inside "
        "ONNX Runtime; other = get - models (InsightFace's Python, OpenCV and NumPy work).",
        file=out,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time InsightFace's FaceAnalysis pipeline (detector + ArcFace) on photos.",
    )
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files to run on")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra_op_num_threads (default: leave ORT's default)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write results")
    parser.add_argument(
        "--verbose", action="store_true", help="show InsightFace's model discovery messages"
    )
    parser.add_argument(
        "--det-model",
        default=DEFAULT_DET_MODEL,
        help="SCRFD detector ONNX; relative paths fall back to $PORTIER_ASSETS "
        f"(default: {DEFAULT_DET_MODEL})",
    )
    parser.add_argument(
        "--rec-model",
        default=DEFAULT_REC_MODEL,
        help="ArcFace recognizer ONNX; relative paths fall back to $PORTIER_ASSETS "
        f"(default: {DEFAULT_REC_MODEL})",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    assets = assets_dir()
    det_model = resolve_input(args.det_model, assets)
    rec_model = resolve_input(args.rec_model, assets)
    photos = [resolve_input(p, assets) for p in args.photos]
    for p in [det_model, rec_model, *photos]:
        if not p.is_file():
            print(f"insightface_bench: no such file: {p}", file=sys.stderr)
            return 2

    # scikit-image >= 0.26 deprecates SimilarityTransform.estimate, which InsightFace's
    # face_align calls on every face; the warning is noise here.
    warnings.filterwarnings("ignore", message=r".*`estimate` is deprecated", category=FutureWarning)
    forbid_downloads()
    cpu = cpu_info()
    pool = probe_pool_size(rec_model, args.threads)

    with tempfile.TemporaryDirectory(prefix="insightface-bench-") as tmp:
        root = Path(tmp)
        build_pack(root, det_model, rec_model)
        loaded = load_app(root, rec_model, args.threads)
        if args.verbose:
            print(loaded.log, end="", file=sys.stderr)
        app = loaded.app
        results = [bench_photo(app, p, args.warmup, args.repeat) for p in photos]
        models = {
            "detection": model_info(app.det_model, det_model, loaded.routing["detection"]),
            "recognition": model_info(
                app.models["recognition"], rec_model, loaded.routing["recognition"]
            ),
        }

    env: dict[str, Any] = {
        "tool": "insightface_bench",
        "schema": JSON_SCHEMA,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            "insightface": insightface.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "platform": platform.platform(),
        "cpu": cpu,
        "threads": thread_summary(args.threads, pool, cpu),
        "settings": {
            "repeat": args.repeat,
            "warmup": args.warmup,
            "threads_requested": args.threads,
            "intra_op_threads_effective": pool,
            "det_size": list(DET_SIZE),
            "det_thresh": DET_THRESH,
            "providers": list(PROVIDERS),
            "percentile": "nearest-rank",
        },
        "models": models,
        "notes": loaded.notes,
        "insightface_log": loaded.log.splitlines(),
    }
    print_report(env, results)
    if args.json is not None:
        env["photos"] = [r.to_json() for r in results]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
