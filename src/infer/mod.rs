//! The ONNX Runtime seam: finds and loads `libonnxruntime.so` once per process, opens a model
//! file as a session, checks its input against what the configuration promised, and runs one
//! float32 tensor through it into caller-owned output buffers.
//!
//! Must not: know what a model means (detector, recognizer): the stages above decode outputs.
//! Hardware NPUs live beside this (`infer::hailo`, issue 3) and hand the same kind of raw
//! output tensors to the same decoders.

#[cfg(feature = "hailo")]
pub mod hailo;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Tensor, TensorRef};
use ort::AsPointer;

/// The ONNX Runtime release that the pinned `ort` crate was built against; the library fetched
/// for development machines (scripts/fetch-onnxruntime) is this version.
pub const ORT_VERSION: &str = "1.31.1";

/// Errors from loading ONNX Runtime or running a model.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// `libonnxruntime.so` was not found anywhere we look.
    #[error(
        "onnx runtime library not found (looked in: {searched}); run scripts/fetch-onnxruntime \
         or set ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    LibraryNotFound {
        /// The places searched, for the message.
        searched: String,
    },
    /// The library exists but could not be loaded or initialised.
    #[error("onnx runtime library {path}: cannot load: {reason}")]
    LibraryLoad {
        /// The library file.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The model file does not exist or is not readable.
    #[error("model {path}: cannot read: {reason}")]
    ModelMissing {
        /// The model file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// ONNX Runtime refused the model file.
    #[error("model {path}: onnx runtime cannot load it: {reason}")]
    ModelLoad {
        /// The model file.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// The model's input or output does not have the shape the configuration describes.
    #[error("model {path}: {reason}")]
    Shape {
        /// The model file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// Running the model failed.
    #[error("model {path}: inference failed: {reason}")]
    Run {
        /// The model file.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
    },
}

/// The library's path, its environment and the intra-op thread count for every session.
type Loaded = (PathBuf, ort::environment::Environment, usize);

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

/// Where the library was looked for, in order.
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    let cache = std::env::var_os("PORTIER_CACHE_DIR").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|c| PathBuf::from(c).join("portier"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/portier")))
    });
    if let Some(c) = cache {
        out.push(
            c.join("onnxruntime").join(ORT_VERSION).join(std::env::consts::ARCH).join(LIB_NAME),
        );
    }
    // Where an image (Yocto, Debian) installs it.
    for dir in
        ["/usr/lib", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
    {
        out.push(Path::new(dir).join(LIB_NAME));
    }
    out
}

const LIB_NAME: &str = "libonnxruntime.so";

/// Loads ONNX Runtime once per process. `explicit` (from the config) wins, then
/// `ORT_DYLIB_PATH`, then the development cache, then the system library directories.
/// Later calls return the first call's outcome.
///
/// Every session gets its own pool of `intra_threads` threads (0: one per core), which spins
/// only while a run of that session is in progress (`session.force_spinning_stop`): between
/// runs the pools sleep, so the two models never fight over the cores and the letterbox gets
/// every core between them. (With pools that keep spinning after a run, as ONNX Runtime does
/// by default, the idle pool took a core from whatever ran next: per-session pools doubled each
/// model's time on two cores, and one shared spinning pool left the letterbox one core. Turning
/// spinning off altogether cost 5 ms of model time per 1080p frame here.)
pub fn init(explicit: Option<&Path>, intra_threads: usize) -> Result<PathBuf, InferError> {
    let outcome = LOADED.get_or_init(|| {
        let list = candidates(explicit);
        let Some(path) = list.iter().find(|p| p.is_file()) else {
            return Err(format!(
                "not found|{}",
                list.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        };
        let builder = ort::init_from(path).map_err(|e| format!("{}|{e}", path.display()))?;
        // Only now that the library is loaded may anything else call into it.
        let env =
            builder.with_name("portier").build().map_err(|e| format!("{}|{e}", path.display()))?;
        log::debug!("onnx runtime loaded from {}", path.display());
        Ok((path.clone(), env, intra_threads))
    });
    match outcome {
        Ok((p, _, _)) => Ok(p.clone()),
        Err(e) => match e.split_once('|') {
            Some(("not found", searched)) => {
                Err(InferError::LibraryNotFound { searched: searched.to_string() })
            }
            Some((path, reason)) => {
                Err(InferError::LibraryLoad { path: path.into(), reason: reason.to_string() })
            }
            None => Err(InferError::LibraryLoad { path: PathBuf::new(), reason: e.clone() }),
        },
    }
}

/// How hard ONNX Runtime may rewrite the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimization {
    /// Every rewrite (the default).
    #[default]
    All,
    /// Only semantics-preserving basic rewrites.
    Basic,
    /// None: needed to compare INT8 QDQ models with float32 on x86, where fused integer
    /// kernels can saturate (see the assets' README).
    Disabled,
}

/// Options for opening a model (the thread count is set once for all sessions: see [`init`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOptions {
    /// Graph optimisation level.
    pub optimization: Optimization,
}

/// A tensor's name and shape as declared by the model (-1 for a free dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name in the graph.
    pub name: String,
    /// Declared shape, -1 where symbolic.
    pub shape: Vec<i64>,
}

/// One output of a run, copied into a buffer that lives as long as the model and is reused.
#[derive(Debug, Clone, Default)]
pub struct OutputTensor {
    /// Name in the graph.
    pub name: String,
    /// Actual shape of this run.
    pub shape: Vec<i64>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Most outputs a model may have for the allocation-free run (YuNet has 12, SCRFD 9): the C
/// API's name and value arrays live on the stack. A model with more runs through `ort`'s own
/// (allocating) `Session::run` every time.
const MAX_OUTPUTS: usize = 16;

/// Most dimensions of an output read on the allocation-free path.
const MAX_DIMS: usize = 8;

/// The input tensor of one input shape, allocated once and refilled every run. `ort`'s
/// `Session::run` wraps every run's input and outputs in fresh reference-counted values and
/// spills its small vectors beyond four outputs (23 heap allocations per SCRFD run, 3 per
/// recognizer run, measured by `tests/alloc.rs`); calling the C API's `Run` with this tensor and
/// stack arrays makes none on the Rust side.
struct Bound {
    shape: [usize; 4],
    input: Tensor<f32>,
}

/// Releases the output values ONNX Runtime handed back, on every path out of a run.
struct ReleaseValues<'a>(&'a mut [*mut ort::sys::OrtValue]);

impl Drop for ReleaseValues<'_> {
    fn drop(&mut self) {
        for v in self.0.iter_mut().filter(|v| !v.is_null()) {
            // SAFETY: a non-null entry is an OrtValue that `Run` created for us and that
            // nothing else references; it is released once and the entry cleared.
            unsafe { (ort::api().ReleaseValue)(*v) };
            *v = std::ptr::null_mut();
        }
    }
}

/// Converts a status returned by an ONNX Runtime call (null = success).
fn status(s: ort::sys::OrtStatusPtr) -> Result<(), String> {
    // SAFETY: `s` was just returned by an ONNX Runtime API call and is consumed here.
    unsafe { ort::Error::result_from_status(s) }.map_err(|e| e.to_string())
}

/// Copies one float32 output value into `slot` (shape and data), without allocating once the
/// slot's buffers have grown to the output's size.
fn read_output(value: *mut ort::sys::OrtValue, slot: &mut OutputTensor) -> Result<(), String> {
    let api = ort::api();
    let mut info = std::ptr::null_mut();
    // SAFETY: `value` is a live OrtValue returned by `Run`; `info` receives a new object that
    // is released below on every path.
    status(unsafe { (api.GetTensorTypeAndShape)(value, &mut info) })?;
    let mut ty = ort::sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    let mut rank = 0usize;
    let mut dims = [0i64; MAX_DIMS];
    // SAFETY: `info` is the live object from above; `dims` holds MAX_DIMS values and at most
    // that many are requested; `info` is released exactly once, after its last use.
    let described = unsafe {
        let r = status((api.GetTensorElementType)(info, &mut ty))
            .and_then(|()| status((api.GetDimensionsCount)(info, &mut rank)))
            .and_then(|()| {
                if rank > MAX_DIMS {
                    return Err(format!("output `{}` has {rank} dimensions", slot.name));
                }
                status((api.GetDimensions)(info, dims.as_mut_ptr(), rank))
            });
        (api.ReleaseTensorTypeAndShapeInfo)(info);
        r
    };
    described?;
    if ty != ort::sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT {
        return Err(format!("output `{}` is not float32 ({ty:?})", slot.name));
    }
    let dims = &dims[..rank];
    let len = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
    let Some(len) = len else {
        return Err(format!("output `{}` has shape {dims:?}", slot.name));
    };
    let mut data = std::ptr::null_mut();
    // SAFETY: `value` is live; the pointer received addresses its `len` float32 values (type
    // and shape checked above), valid until the value is released after this function.
    let values = unsafe {
        status((api.GetTensorMutableData)(value, &mut data))?;
        if len == 0 || data.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(data.cast::<f32>(), len)
        }
    };
    slot.shape.clear();
    slot.shape.extend_from_slice(dims);
    slot.data.clear();
    slot.data.extend_from_slice(values);
    Ok(())
}

/// An opened ONNX model with one float32 NCHW input.
pub struct OnnxModel {
    session: Session,
    path: PathBuf,
    input: TensorInfo,
    outputs: Vec<TensorInfo>,
    results: Vec<OutputTensor>,
    /// Names as C strings for the C API, made once.
    input_name: CString,
    output_names: Vec<CString>,
    /// Input tensors for the last two input shapes, most recently used first (a detector
    /// alternating between the whole frame and the far-face pass's window keeps both).
    bound: [Option<Bound>; 2],
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("path", &self.path).field("input", &self.input).finish()
    }
}

fn info(outlet: &ort::value::Outlet) -> TensorInfo {
    let shape = outlet.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
    TensorInfo { name: outlet.name().to_string(), shape }
}

impl OnnxModel {
    /// Opens `path`. ONNX Runtime must have been [`init`]ialised.
    pub fn open(path: &Path, options: SessionOptions) -> Result<Self, InferError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(InferError::ModelMissing {
                    path: path.into(),
                    reason: "not a regular file".into(),
                })
            }
            Err(e) => {
                return Err(InferError::ModelMissing { path: path.into(), reason: e.to_string() })
            }
        }
        let load =
            |e: ort::Error| InferError::ModelLoad { path: path.into(), reason: e.to_string() };
        let level = match options.optimization {
            Optimization::All => GraphOptimizationLevel::Level3,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Disabled => GraphOptimizationLevel::Disable,
        };
        let (env, threads) = match LOADED.get() {
            Some(Ok((_, env, threads))) => (env, *threads),
            _ => {
                return Err(InferError::ModelLoad {
                    path: path.into(),
                    reason: "onnx runtime is not loaded (internal: infer::init was not called)"
                        .into(),
                })
            }
        };
        let mut builder = Session::builder(env)
            .map_err(load)?
            .with_optimization_level(level)
            .map_err(|e| load(e.into()))?
            .with_intra_threads(threads)
            .map_err(|e| load(e.into()))?
            .with_config_entry("session.force_spinning_stop", "1")
            .map_err(|e| load(e.into()))?;
        let session = builder.commit_from_file(path).map_err(load)?;
        let inputs: Vec<TensorInfo> = session.inputs().iter().map(info).collect();
        let outputs: Vec<TensorInfo> = session.outputs().iter().map(info).collect();
        let [input] = inputs.as_slice() else {
            return Err(InferError::Shape {
                path: path.into(),
                reason: format!("expected one input tensor, the model has {}", inputs.len()),
            });
        };
        if input.shape.len() != 4 {
            return Err(InferError::Shape {
                path: path.into(),
                reason: format!("expected a 4-d NCHW input, `{}` is {:?}", input.name, input.shape),
            });
        }
        let results = outputs
            .iter()
            .map(|o| OutputTensor { name: o.name.clone(), ..Default::default() })
            .collect();
        let c_name = |name: &str| {
            CString::new(name).map_err(|_| InferError::Shape {
                path: path.into(),
                reason: format!("tensor name `{name}` contains a NUL byte"),
            })
        };
        let input_name = c_name(&input.name)?;
        let output_names = outputs.iter().map(|o| c_name(&o.name)).collect::<Result<_, _>>()?;
        Ok(Self {
            session,
            path: path.into(),
            input: input.clone(),
            outputs,
            results,
            input_name,
            output_names,
            bound: [None, None],
        })
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The input as declared.
    pub fn input(&self) -> &TensorInfo {
        &self.input
    }

    /// The outputs as declared.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// Checks that an NCHW input of `channels x height x width` is accepted: declared dimensions
    /// must match, symbolic ones accept anything.
    pub fn check_input(&self, channels: u32, height: u32, width: u32) -> Result<(), InferError> {
        let want = [1, i64::from(channels), i64::from(height), i64::from(width)];
        let ok = self.input.shape.iter().zip(want).all(|(&d, w)| d < 0 || d == w);
        if ok {
            Ok(())
        } else {
            Err(InferError::Shape {
                path: self.path.clone(),
                reason: format!(
                    "input `{}` is {:?}, the configuration feeds {:?}",
                    self.input.name, self.input.shape, want
                ),
            })
        }
    }

    /// Runs one NCHW float32 tensor and returns the outputs, in the model's declared order, in
    /// buffers owned by this model (reused from run to run).
    ///
    /// `input` is copied into an input tensor kept for its shape (the last two shapes are kept;
    /// a third is made in place of the older) and the model runs through ONNX Runtime's C `Run` with names and values in stack
    /// arrays: once the output buffers have grown, a run allocates nothing on the Rust side
    /// (ONNX Runtime's own C++ allocations, from its arena, are not ours to see). Outputs are
    /// not preallocated: ONNX Runtime checks preallocated outputs against the declared output
    /// shapes, which SCRFD's dynamic-input export declares for 640x640 only.
    pub fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<&[OutputTensor], InferError> {
        if self.results.len() > MAX_OUTPUTS {
            return self.run_safe(input, shape);
        }
        let path = &self.path;
        let run_err = |reason: String| InferError::Run { path: path.clone(), reason };
        if self.bound[0].as_ref().is_none_or(|b| b.shape != shape) {
            // The other entry, or a new tensor in place of the least recently used.
            self.bound.swap(0, 1);
            if self.bound[0].as_ref().is_none_or(|b| b.shape != shape) {
                self.bound[0] = None;
                let tensor = Tensor::from_array((shape, vec![0f32; input.len()]))
                    .map_err(|e| run_err(format!("input: {e}")))?;
                self.bound[0] = Some(Bound { shape, input: tensor });
            }
        }
        let Some(bound) = self.bound[0].as_mut() else {
            return Err(run_err("internal: no input tensor".into()));
        };
        let (_, data) =
            bound.input.try_extract_tensor_mut::<f32>().map_err(|e| run_err(e.to_string()))?;
        if data.len() != input.len() {
            return Err(run_err(format!("{} input values for shape {shape:?}", input.len())));
        }
        data.copy_from_slice(input);
        let n = self.results.len();
        let input_names = [self.input_name.as_ptr()];
        let input_values = [bound.input.ptr()];
        let mut output_names = [std::ptr::null(); MAX_OUTPUTS];
        for (slot, name) in output_names.iter_mut().zip(&self.output_names) {
            *slot = name.as_ptr();
        }
        let mut values = [std::ptr::null_mut(); MAX_OUTPUTS];
        let values = ReleaseValues(&mut values[..n]);
        // SAFETY: the session pointer is valid for `self.session`'s life and `&mut self` makes
        // this the only run on it (ONNX Runtime's Run is not reentrant per session, as `ort`
        // notes). The name arrays point at NUL-terminated strings owned by `self`, the input
        // value at a tensor owned by `self.bound`, all alive across the call; `n` output names
        // are filled, in the session's order, and `values` has room for `n` values, all null:
        // ONNX Runtime allocates each output and hands it over (released by `ReleaseValues`).
        let s = unsafe {
            (ort::api().Run)(
                self.session.ptr_mut(),
                std::ptr::null(),
                input_names.as_ptr(),
                input_values.as_ptr(),
                1,
                output_names.as_ptr(),
                n,
                values.0.as_mut_ptr(),
            )
        };
        status(s).map_err(run_err)?;
        for (slot, &value) in self.results.iter_mut().zip(values.0.iter()) {
            if value.is_null() {
                return Err(run_err(format!("output `{}` missing", slot.name)));
            }
            read_output(value, slot).map_err(run_err)?;
        }
        drop(values);
        Ok(&self.results)
    }

    /// `ort`'s safe path (allocates per run), for models with more than [`MAX_OUTPUTS`] outputs.
    fn run_safe(
        &mut self,
        input: &[f32],
        shape: [usize; 4],
    ) -> Result<&[OutputTensor], InferError> {
        let run_err =
            |e: ort::Error| InferError::Run { path: self.path.clone(), reason: e.to_string() };
        let tensor = TensorRef::from_array_view((shape, input)).map_err(run_err)?;
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| InferError::Run { path: self.path.clone(), reason: e.to_string() })?;
        for (slot, (_, value)) in self.results.iter_mut().zip(outputs.iter()) {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| InferError::Run {
                path: self.path.clone(),
                reason: format!("output `{}`: {e}", slot.name),
            })?;
            slot.shape.clear();
            slot.shape.extend_from_slice(shape);
            slot.data.clear();
            slot.data.extend_from_slice(data);
        }
        Ok(&self.results)
    }
}

/// Colour order a model expects in its input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue (InsightFace SCRFD and ArcFace models).
    Rgb,
    /// Blue, green, red (OpenCV-trained models: YuNet, PaddleX).
    Bgr,
}

/// How 8-bit pixels become a model's float input: `(x - mean) / std` per channel, in `order`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Channel order of the input tensor.
    pub order: ChannelOrder,
    /// Subtracted per input channel (in the model's channel order).
    pub mean: [f32; 3],
    /// Divisor per input channel (in the model's channel order).
    pub std: [f32; 3],
}

impl Preprocess {
    /// Writes an interleaved RGB image of `width * height` pixels into planar NCHW floats.
    /// `out` must hold `3 * width * height` values.
    pub fn fill_nchw(&self, rgb: &[u8], width: usize, height: usize, out: &mut [f32]) {
        let plane = width * height;
        let lut = self.lut();
        let src_channel = self.source_channels();
        let (p0, rest) = out[..3 * plane].split_at_mut(plane);
        let (p1, p2) = rest.split_at_mut(plane);
        for (((px, a), b), c) in rgb.chunks_exact(3).take(plane).zip(p0).zip(p1).zip(p2) {
            *a = lut[0][usize::from(px[src_channel[0]])];
            *b = lut[1][usize::from(px[src_channel[1]])];
            *c = lut[2][usize::from(px[src_channel[2]])];
        }
    }

    /// The converter of planar rows into this model's input planes (see [`PlanarRows`]).
    pub fn planar_rows(&self) -> PlanarRows {
        let src = self.source_channels();
        let channels = std::array::from_fn(|c| {
            let (mean, std) = (self.mean[c], self.std[c]);
            let recip = 1.0 / std;
            let exact = (0..=255u8).all(|v| {
                let d = f32::from(v) - mean;
                (d * recip).to_bits() == (d / std).to_bits()
            });
            PlaneNorm { source: src[c], mean, std, recip, exact }
        });
        PlanarRows {
            channels,
            #[cfg(target_arch = "x86_64")]
            wide: std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw"),
        }
    }

    /// Fills all three planes with the normalised value of the grey level `value` (the padding
    /// of a letterbox).
    pub fn fill_constant(&self, value: u8, out: &mut [f32]) {
        let lut = self.lut();
        let plane = out.len() / 3;
        for (c, chunk) in out.chunks_mut(plane.max(1)).take(3).enumerate() {
            chunk.fill(lut[c][usize::from(value)]);
        }
    }

    /// For each input channel, which of R, G, B feeds it.
    fn source_channels(&self) -> [usize; 3] {
        match self.order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        }
    }

    /// A per-channel lookup table: the division becomes one load per value.
    fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 - self.mean[c]) / self.std[c];
            }
        }
        lut
    }
}

/// How one input plane is computed from one colour channel.
#[derive(Debug, Clone, Copy)]
struct PlaneNorm {
    /// Which colour (0 red, 1 green, 2 blue) feeds the plane.
    source: usize,
    mean: f32,
    std: f32,
    recip: f32,
    /// `(v - mean) * recip` equals `(v - mean) / std` for every byte value.
    exact: bool,
}

/// Converts rows that are planar (`width` red bytes, `width` green, `width` blue: what
/// [`Resizer::resize_to_planes`](crate::frame::Resizer::resize_to_planes) hands over) into a
/// model's three input planes. Prepared once per model ([`Preprocess::planar_rows`]).
/// Contiguous bytes become contiguous floats, a loop that vectorises, with the values of
/// [`Preprocess::fill_nchw`]'s table: the same division, or a multiplication by the reciprocal
/// where that gives the same float for every byte value (as for a power-of-two divisor).
#[derive(Debug, Clone, Copy)]
pub struct PlanarRows {
    channels: [PlaneNorm; 3],
    /// The CPU has AVX-512 (F, BW): the loop runs in 512-bit vectors.
    #[cfg(target_arch = "x86_64")]
    wide: bool,
}

impl PlanarRows {
    /// Converts `rows` (each `3 * width` bytes) into the same rows of `planes`, whose rows are
    /// `plane_w` floats apart (the first `width` of each row are written).
    pub fn convert(&self, rows: &[u8], width: usize, plane_w: usize, planes: [&mut [f32]; 3]) {
        /// The same loop in 512-bit vectors (same operations per value, same results).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx2")]
        fn wide(
            this: &PlanarRows,
            rows: &[u8],
            width: usize,
            plane_w: usize,
            planes: [&mut [f32]; 3],
        ) {
            this.convert_with(rows, width, plane_w, planes);
        }
        #[cfg(target_arch = "x86_64")]
        if self.wide {
            // SAFETY: `wide` is set only when the CPU has the features the function is
            // compiled for.
            unsafe { wide(self, rows, width, plane_w, planes) };
            return;
        }
        self.convert_with(rows, width, plane_w, planes);
    }

    #[inline(always)]
    fn convert_with(&self, rows: &[u8], width: usize, plane_w: usize, planes: [&mut [f32]; 3]) {
        for (n, plane) in self.channels.iter().zip(planes) {
            let offset = n.source * width;
            for (row, out_row) in rows.chunks_exact(width * 3).zip(plane.chunks_exact_mut(plane_w))
            {
                let pairs = out_row[..width].iter_mut().zip(&row[offset..offset + width]);
                if n.exact {
                    for (o, &v) in pairs {
                        *o = (f32::from(v) - n.mean) * n.recip;
                    }
                } else {
                    for (o, &v) in pairs {
                        *o = (f32::from(v) - n.mean) / n.std;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_nchw_orders_and_normalises() {
        let rgb = [10u8, 20, 30, 40, 50, 60];
        let pre = Preprocess { order: ChannelOrder::Bgr, mean: [0.0; 3], std: [1.0, 2.0, 10.0] };
        let mut out = [0f32; 6];
        pre.fill_nchw(&rgb, 2, 1, &mut out);
        assert_eq!(out, [30.0, 60.0, 10.0, 25.0, 1.0, 4.0]);
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let c = candidates(Some(Path::new("/nonexistent/libonnxruntime.so")));
        assert_eq!(c[0], Path::new("/nonexistent/libonnxruntime.so"));
        assert!(c.iter().any(|p| p.ends_with("libonnxruntime.so")));
    }
}
