//! The command line's shape: every subcommand, option and its help text (clap derive). What
//! each command does is in `main.rs`; what each option means for the appliance is in the
//! library's config and stage modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use portier::eval::{calibrate, distance, export_calib, npu_check};

/// Face-recognition door access.
#[derive(Parser, Debug)]
#[command(name = "portier", version, about)]
pub(crate) struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "PORTIER_CONFIG",
        default_value = "/etc/portier/portier.toml"
    )]
    pub(crate) config: PathBuf,
    /// More log output (-v: debug, -vv: trace).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Enrol a person from photos that each show exactly that one face, or live from the
    /// camera (`--from-camera`).
    Enroll {
        /// The person's name.
        #[arg(long)]
        name: String,
        /// Add the photos to an existing person instead of refusing a taken name.
        #[arg(long)]
        append: bool,
        /// Enrol from the configured camera: the best faces of one person over a few seconds.
        #[arg(long, conflicts_with = "photos")]
        from_camera: bool,
        /// Capture length in seconds (with --from-camera).
        #[arg(long, requires = "from_camera")]
        seconds: Option<f64>,
        /// Replay this MJPEG stream, image folder or image instead of the configured camera
        /// (with --from-camera).
        #[arg(long, requires = "from_camera")]
        replay: Option<PathBuf>,
        /// Enrol even when the person already resembles someone enrolled (with --from-camera).
        #[arg(long, requires = "from_camera")]
        allow_similar: bool,
        /// Photos (JPEG, PNG, WebP).
        #[arg(required_unless_present = "from_camera")]
        photos: Vec<PathBuf>,
    },
    /// Find every face in photos and say who it is.
    Identify {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Photos.
        #[arg(required = true)]
        photos: Vec<PathBuf>,
    },
    /// Manage enrolled people.
    Gallery {
        #[command(subcommand)]
        command: GalleryCommand,
    },
    /// Measure recognition accuracy.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Measure speed.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Run the appliance: camera → faces → decision → door, until SIGTERM/SIGINT (or the end
    /// of a replay, once the door has relocked).
    Run {
        /// Replay this MJPEG stream, image folder or image instead of the configured camera.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// Frame rate of the replay (default: the config's `camera.fps`, else 30).
        #[arg(long)]
        fps: Option<f64>,
        /// Replay as fast as frames are processed instead of in real time.
        #[arg(long)]
        fast: bool,
        /// Write every screen the status display shows as a PNG file into this folder (instead
        /// of the configured display).
        #[arg(long)]
        snapshot_dir: Option<PathBuf>,
    },
    /// Choose the router's size threshold, norm cliff and per-band thresholds from a distance
    /// sweep; writes a `[routing]` TOML fragment.
    Calibrate(calibrate::CalibrateArgs),
    /// Write aligned 112x112 crops, far faces included, as a Hailo calibration set (.npy).
    ExportCalib(export_calib::ExportCalibArgs),
    /// Check the NPU model before it serves a door (exits 1 when it is refused).
    Npu {
        #[command(subcommand)]
        command: NpuCommand,
    },
    /// Check a camera: open it, capture frames, report format, size and gaps.
    Camera {
        #[command(subcommand)]
        command: CameraCommand,
    },
    /// Check every part of the appliance (config, models, camera, NPU, door lines, MQTT,
    /// gallery, disk) and print a table; exits 1 when a check fails.
    Selftest {
        /// Also release the lock for the configured pulse and relock it (the door opens).
        #[arg(long)]
        pulse_relay: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Aligned face crops for the NPU acceptance check (as `portier npu check --crops`).
        #[arg(long, default_value = npu_check::DEFAULT_CROPS)]
        npu_crops: PathBuf,
    },
    /// Drive the lock relay to its secure (locked) level: what systemd runs when portier.service
    /// has failed (`OnFailure=portier-secure-door.service`), and a technician's "lock it now".
    /// Reads only the config's `[door]` table. Exits 0 once the relay is at its secure level
    /// (with `--hold`: when stopped, still secure), 69 when the lines cannot be opened (e.g. a
    /// running portier holds them).
    SecureDoor {
        /// Keep holding the lines at their secure level until SIGTERM/SIGINT (a released line
        /// may return to a level that is not secure: a fail-safe maglock's secure level is
        /// energised).
        #[arg(long)]
        hold: bool,
    },
    /// MQTT maintenance.
    Mqtt {
        #[command(subcommand)]
        command: MqttCommand,
    },
    /// Validate a configuration file and exit (0 valid, 78 invalid).
    CheckConfig {
        /// The file (default: --config).
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum MqttCommand {
    /// Start the remote-command replay state (`command-replay.json` in `mqtt.outbox_dir`)
    /// afresh: for a door that refuses every command because its clock ran ahead
    /// (`clock_behind`) or a floor is in the future. Stop portier first. Commands signed
    /// before now stay refused; the old file is kept as `command-replay.json.reset-<ms>`. If
    /// the clock ran ahead, rotate the command key too: commands recorded then become current
    /// again later.
    ResetReplay,
}

#[derive(Subcommand, Debug)]
pub(crate) enum NpuCommand {
    /// Acceptance check on aligned face crops of known people: the configured NPU model (and
    /// its float32 twin, `[npu] twin`) embeds every crop; per-crop cosine NPU to twin, the
    /// norms' spread, different people's similarity against the NPU threshold, and the probe
    /// `portier run` uses. Refuses a degenerate model (exit 1).
    Check(npu_check::NpuCheckArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum CameraCommand {
    /// Capture frames from a V4L2 device and print what it delivers (needs feature `v4l2`).
    Check {
        /// Device node.
        #[arg(long, default_value = "/dev/video0")]
        device: PathBuf,
        /// Frames to capture.
        #[arg(long, default_value_t = 30)]
        frames: u32,
        /// Longest wait for one frame, milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum GalleryCommand {
    /// List enrolled people and their templates.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a person and all their templates.
    Remove {
        /// Name.
        name: String,
    },
    /// Rename a person.
    Rename {
        /// Current name.
        old: String,
        /// New name.
        new: String,
    },
    /// Run a full integrity check of the gallery database.
    Check,
    /// Write every person and template (all models) to FILE, encrypted under a passphrase
    /// (Argon2id + XChaCha20-Poly1305); the backup does not need the device key.
    Export {
        /// Backup file to write (replaced atomically, mode 0600).
        file: PathBuf,
        /// File whose first line is the passphrase (at least 12 characters; mode 0600).
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Create the device key file before the first enrolment, optionally bound to this board:
    /// `--bind rpi-otp` derives the template key from the file and the Raspberry Pi's OTP
    /// private key, so the SD card alone (in a reader, or in another Pi) opens nothing.
    /// Refused when the key file or a gallery already exists (export, move both away, run this,
    /// import).
    NewKey {
        /// What the key is bound to besides its file.
        #[arg(long, value_enum, default_value_t = KeyBindArg::File)]
        bind: KeyBindArg,
    },
    /// Enrol everyone in a backup made by `gallery export`, in one transaction.
    Import {
        /// Backup file.
        file: PathBuf,
        /// File whose first line is the passphrase (mode 0600).
        #[arg(long)]
        passphrase_file: PathBuf,
        /// Replace people already enrolled under the same name (default: import nothing and
        /// name them).
        #[arg(long)]
        replace: bool,
    },
}

/// `gallery new-key --bind`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyBindArg {
    /// The file alone is the key.
    File,
    /// The Raspberry Pi's OTP customer private key (programmed with `rpi-otp-private-key -w`).
    RpiOtp,
}

#[derive(Subcommand, Debug)]
pub(crate) enum EvalCommand {
    /// Recognition against face size per backend (float32, emulated NPUs, routed).
    Distance(distance::DistanceArgs),
    /// Verification and identification statistics on labelled photos.
    Verify {
        /// CSV with `path` and `identity` columns.
        #[arg(long)]
        labels: PathBuf,
        /// Folder the CSV's paths are relative to (default: `full/` beside the CSV if it
        /// exists, else the CSV's folder).
        #[arg(long)]
        root: Option<PathBuf>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The LFW verification protocol on pair files in LFW's format.
    Lfw {
        /// Pairs to measure (`pairs.txt` of View 2, or `pairsDevTest.txt`).
        #[arg(long)]
        pairs: PathBuf,
        /// Choose the threshold on these pairs instead of by k-fold.
        #[arg(long)]
        train_pairs: Option<PathBuf>,
        /// The LFW image folder (`<root>/<Name>/<Name>_0001.jpg`).
        #[arg(long)]
        root: PathBuf,
        /// Detector input side for these 250x250 photos (detect near native scale).
        #[arg(long, default_value_t = 320)]
        det_size: u32,
        /// Add the mirrored crop's embedding (twice the work).
        #[arg(long)]
        flip: bool,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Open-set 1:N identification against gallery size: the threshold that holds an FPIR at
    /// each size, FNIR there, and at the configured gallery-size rule.
    Identify {
        /// Identity folders (`<root>/<Name>/<photo>.jpg`, LFW's layout); the face nearest each
        /// photo's centre.
        #[arg(long, required_unless_present = "labels")]
        root: Option<PathBuf>,
        /// Or a CSV with `path` and `identity` columns (the largest face), paths relative to
        /// `--root` if given, else to the CSV's folder.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Gallery sizes.
        #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100, 1000, 3000])]
        people: Vec<usize>,
        /// Draws of the gallery per probe and size.
        #[arg(long, default_value_t = 10)]
        repeats: usize,
        /// Detector input side (LFW's 250x250 photos: near native scale).
        #[arg(long, default_value_t = 320)]
        det_size: u32,
        /// Template storage of the gallery searched (default: `[gallery] storage`).
        #[arg(long)]
        storage: Option<portier::gallery::Storage>,
        /// Embed with the `[npu]` model instead of `[recognizer]` (the HEF on the Pi; a
        /// `backend = "emulated"` model runs on the CPU), judged by the NPU's bands and rise.
        #[arg(long)]
        npu: bool,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Presentation-attack detection on labelled live and spoof photos: each sample's scores,
    /// APCER and BPCER at the configured threshold, a score histogram.
    Liveness {
        /// JSON object from file name to `{"label": "live" | "spoof", "attack": ...}` (the
        /// photos sit beside it).
        #[arg(long)]
        labels: PathBuf,
        #[command(flatten)]
        out: OutArgs,
    },
}

#[derive(Args, Debug)]
pub(crate) struct OutArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Cost of one 1:N query against N people per template storage, next to reading the same
    /// bytes from memory, and resident memory (random templates: no gallery needed).
    Match {
        /// Gallery sizes.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000])]
        people: Vec<usize>,
        /// Templates per person.
        #[arg(long, default_value_t = 3)]
        templates: usize,
        /// Embedding length.
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Queries per configuration.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Also write a gallery file of the largest size here (both of the Pi's models:
        /// `--dim` and 128-d) and time opening it into int8 matchers, as the appliance starts.
        #[arg(long, value_name = "DIR")]
        open_in: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cost of one status-display redraw per screen and panel size (draw into the canvas).
    Display {
        /// Redraws per screen.
        #[arg(long, default_value_t = 200)]
        repeat: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per-stage time of detect → align → embed → match on photos.
    Pipeline {
        /// Measured runs per photo.
        #[arg(long, default_value_t = 30)]
        repeat: usize,
        /// Unmeasured runs first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Synthetic people in the gallery matched against (3 templates each).
        #[arg(long, default_value_t = 100)]
        gallery_people: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Photos.
        #[arg(required = true)]
        photos: Vec<PathBuf>,
    },
    /// Time a liveness check (two crops, two models) adds to an access decision, on the
    /// largest face of each photo.
    Liveness {
        /// Measured checks per photo.
        #[arg(long, default_value_t = 50)]
        repeat: usize,
        /// Unmeasured checks first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Photos.
        #[arg(required = true)]
        photos: Vec<PathBuf>,
    },
    /// How long a restart leaves the door without portier: starts `portier run` on a replay
    /// (the config's door must be the fake one) and times each start-up phase, the loop's
    /// start and the first frame decided, from the spawn.
    Startup {
        /// The MJPEG stream or image folder standing in for the camera.
        #[arg(long)]
        replay: PathBuf,
        /// Starts measured.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Latency from a frame's arrival to its access decision, per frame, through the appliance
    /// loop on a replayed MJPEG stream (unpaced, fake door): median, p90, p99, max, frames/s.
    Loop {
        /// The MJPEG stream to replay.
        #[arg(long)]
        replay: PathBuf,
        /// Frames measured (the stream loops if shorter); all of one pass when omitted.
        #[arg(long)]
        frames: Option<usize>,
        /// Unmeasured frames first.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
