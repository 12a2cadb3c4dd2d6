//! The exit statuses of the `portier` process, in one table.
//!
//! Role: [`Exit`] names every status the command line exits with (sysexits(3) for errors, as
//! systemd and scripts read them: 78 tells systemd not to restart, `RestartPreventExitStatus`),
//! and one `From` per error family maps an error to its status, so a runtime, model, gallery or
//! configuration error exits the same way from every command (firecracker's
//! `From<MainError> for FcExitCode`). The modules that raise the errors know nothing of exit
//! codes. (A camera that cannot be opened is judged by the command: `run` tells a V4L2 device,
//! 69, from a replay file, 66.)
//!
//! Must not: print, log or decide what a command does on failure; hold a number anywhere but
//! in [`Exit`].

use crate::config::ConfigError;
use crate::detect::DetectError;
use crate::embed::EmbedError;
use crate::enroll_live::EnrolError;
use crate::eval::EvalError;
use crate::gallery::GalleryError;
use crate::infer::InferError;
use crate::liveness::LivenessError;
use crate::pipeline::PipelineError;

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success = 0,
    /// 1: a check ran to the end and found a fault (`selftest`, `npu check`).
    Failed = 1,
    /// 64 (EX_USAGE): option values that do not fit together (clap itself exits 2 for
    /// arguments it rejects).
    Usage = 64,
    /// 65 (EX_DATAERR): the input is wrong (a photo, a label, a name, a backup).
    DataErr = 65,
    /// 66 (EX_NOINPUT): an input file or a model file is missing.
    NoInput = 66,
    /// 69 (EX_UNAVAILABLE): something the run needs is not there now (the runtime library, a
    /// camera device); a restart may find it.
    Unavailable = 69,
    /// 70 (EX_SOFTWARE): an internal error.
    Software = 70,
    /// 73 (EX_CANTCREAT): an output cannot be created.
    CantCreate = 73,
    /// 78 (EX_CONFIG): the configuration, a model that does not fit it, or a key file must be
    /// fixed by someone; systemd does not restart.
    Config = 78,
}

impl Exit {
    /// The status as the process returns it.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(exit.code())
    }
}

impl From<&ConfigError> for Exit {
    fn from(_: &ConfigError) -> Exit {
        Exit::Config
    }
}

impl From<&crate::door::OpenError> for Exit {
    fn from(e: &crate::door::OpenError) -> Exit {
        use crate::door::OpenError;
        match e {
            OpenError::Config(_) | OpenError::NotBuilt { .. } => Exit::Config,
            // The lines may come back (a chip not yet probed, a line another process holds).
            OpenError::Pins(_) | OpenError::Door(_) => Exit::Unavailable,
        }
    }
}

impl From<&InferError> for Exit {
    fn from(e: &InferError) -> Exit {
        match e {
            InferError::LibraryNotFound { .. } | InferError::LibraryLoad { .. } => {
                Exit::Unavailable
            }
            InferError::ModelMissing { .. } => Exit::NoInput,
            InferError::ModelLoad { .. } | InferError::Shape { .. } => Exit::Config,
            _ => Exit::Software,
        }
    }
}

impl From<&DetectError> for Exit {
    fn from(e: &DetectError) -> Exit {
        match e {
            DetectError::Infer(i) => i.into(),
            // The model's outputs do not fit its configured family.
            DetectError::Outputs { .. } => Exit::Config,
        }
    }
}

impl From<&EmbedError> for Exit {
    fn from(e: &EmbedError) -> Exit {
        match e {
            EmbedError::Infer(i) => i.into(),
            _ => Exit::Software,
        }
    }
}

impl From<&PipelineError> for Exit {
    fn from(e: &PipelineError) -> Exit {
        match e {
            PipelineError::Runtime(i) => i.into(),
            PipelineError::Detect(d) => d.into(),
            PipelineError::Embed(m) => m.into(),
        }
    }
}

impl From<&GalleryError> for Exit {
    fn from(e: &GalleryError) -> Exit {
        match e {
            GalleryError::NameTaken { .. }
            | GalleryError::UnknownPerson { .. }
            | GalleryError::InvalidName { .. }
            | GalleryError::Backup { .. }
            | GalleryError::ImportClash { .. } => Exit::DataErr,
            // The operator must fix the key file (permissions, owner, the right file): a
            // restart cannot.
            GalleryError::KeyFileRefused { .. }
            | GalleryError::BadKeyFile { .. }
            | GalleryError::KeyMissing { .. }
            | GalleryError::WrongKey { .. } => Exit::Config,
            GalleryError::BackupIo { .. } => Exit::NoInput,
            _ => Exit::Software,
        }
    }
}

impl From<&EvalError> for Exit {
    fn from(e: &EvalError) -> Exit {
        match e {
            EvalError::Runtime(i) => i.into(),
            EvalError::Detect(d) => d.into(),
            EvalError::Embed(m) => m.into(),
            EvalError::Liveness(l) => l.into(),
            EvalError::Input { .. } | EvalError::Calibration(_) => Exit::DataErr,
            EvalError::Usage(_) => Exit::Usage,
            EvalError::NoLivenessSection(_) | EvalError::Routing { .. } => Exit::Config,
            EvalError::Write { .. } => Exit::CantCreate,
        }
    }
}

impl From<&EnrolError> for Exit {
    fn from(e: &EnrolError) -> Exit {
        match e {
            EnrolError::Runtime(r) => r.into(),
            EnrolError::Detect(d) => d.into(),
            EnrolError::Embed(m) => m.into(),
            EnrolError::Gallery(g) => g.into(),
            EnrolError::Refused(_) | EnrolError::Resembles { .. } => Exit::DataErr,
            EnrolError::Usage(_) => Exit::Usage,
            EnrolError::NoCamera { .. } => Exit::Config,
            EnrolError::Camera(crate::camera::CameraError::Open { .. }) => Exit::NoInput,
            EnrolError::Camera(_) => Exit::Unavailable,
            EnrolError::GalleryFolder { .. } => Exit::CantCreate,
        }
    }
}

impl From<&LivenessError> for Exit {
    fn from(e: &LivenessError) -> Exit {
        match e {
            LivenessError::Infer(i) => i.into(),
            _ => Exit::Software,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_codes_are_sysexits() {
        let codes: Vec<u8> = [
            Exit::Success,
            Exit::Failed,
            Exit::Usage,
            Exit::DataErr,
            Exit::NoInput,
            Exit::Unavailable,
            Exit::Software,
            Exit::CantCreate,
            Exit::Config,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 64, 65, 66, 69, 70, 73, 78]);
    }

    #[test]
    fn an_error_exits_alike_from_every_family_that_wraps_it() {
        let missing =
            || InferError::ModelMissing { path: PathBuf::from("m.onnx"), reason: "gone".into() };
        let no_library = || InferError::LibraryNotFound { searched: "here".into() };
        assert_eq!(Exit::from(&missing()), Exit::NoInput);
        assert_eq!(Exit::from(&no_library()), Exit::Unavailable);
        // The same runtime error, wrapped by each stage and tool.
        let wrapped = [
            Exit::from(&PipelineError::Runtime(missing())),
            Exit::from(&PipelineError::Detect(DetectError::Infer(missing()))),
            Exit::from(&PipelineError::Embed(EmbedError::Infer(missing()))),
            Exit::from(&EnrolError::Detect(DetectError::Infer(missing()))),
            Exit::from(&EnrolError::Runtime(missing())),
            Exit::from(&EvalError::Embed(EmbedError::Infer(missing()))),
            Exit::from(&EvalError::Runtime(missing())),
            Exit::from(&EvalError::Liveness(LivenessError::Infer(missing()))),
            Exit::from(&EvalError::from(PipelineError::Runtime(missing()))),
        ];
        assert!(wrapped.iter().all(|&e| e == Exit::NoInput), "{wrapped:?}");
        assert_eq!(Exit::from(&EnrolError::Usage("x".into())), Exit::Usage);
        assert_eq!(Exit::from(&EvalError::NoLivenessSection(PathBuf::new())), Exit::Config);
    }
}
