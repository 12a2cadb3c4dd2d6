//! Parser for LFW ("Labeled Faces in the Wild") verification pair lists.
//!
//! Role: turn a pairs file into labelled image pairs with their fold, and name the image files
//! they refer to, so that the evaluation can embed the images and score the pairs (statistics live
//! in the sibling `metrics` module). Reading the file is the only I/O here; images are
//! never opened.
//!
//! Formats (fields separated by any run of spaces or tabs; image numbers are 1-based):
//! - View 2 `pairs.txt`: a header `folds n` (e.g. `10 300`), then `folds` blocks, each of `n`
//!   same-person lines `name i j` followed by `n` different-person lines `name1 i name2 j`.
//! - View 1 `pairsDevTrain.txt` / `pairsDevTest.txt`: a header `n`, then `n` same-person lines and
//!   `n` different-person lines, read as a single fold.
//!
//! Image `i` of `name` is `<root>/<name>/<name>_<iiii>.jpg`, zero-padded to 4 digits.
//!
//! The parser is strict, because a silently misread line shifts every later pair into the wrong
//! block or fold and corrupts the reported accuracy: the header must match the number of lines
//! (trailing blank lines are ignored, blank lines elsewhere are errors), and each line must have
//! the shape its block calls for. Errors name the file and the 1-based line number.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// One image of the LFW dataset: a person's name and the 1-based image number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Person name as in the dataset directory, e.g. `Aaron_Peirsol`.
    pub name: String,
    /// 1-based image number within the person's directory.
    pub number: u32,
}

impl ImageRef {
    /// Path of the image under the dataset root: `<root>/<name>/<name>_<NNNN>.jpg`.
    pub fn path(&self, root: &Path) -> PathBuf {
        root.join(&self.name).join(format!("{}_{:04}.jpg", self.name, self.number))
    }
}

impl fmt::Display for ImageRef {
    /// Formats as the file stem, `<name>_<NNNN>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{:04}", self.name, self.number)
    }
}

/// A labelled pair of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// First image.
    pub a: ImageRef,
    /// Second image.
    pub b: ImageRef,
    /// Whether both images show the same person.
    pub same: bool,
    /// 0-based fold index (always 0 for a View 1 file).
    pub fold: usize,
}

/// All pairs of one pairs file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSet {
    /// The pairs, in file order: fold by fold, same-person block before different-person block.
    pub pairs: Vec<Pair>,
    /// Number of folds: from the header of a View 2 file, 1 for a View 1 file.
    pub folds: usize,
}

impl PairSet {
    /// Every image referenced by some pair, without duplicates, sorted by name then number.
    pub fn images(&self) -> Vec<ImageRef> {
        let set: BTreeSet<&ImageRef> = self.pairs.iter().flat_map(|p| [&p.a, &p.b]).collect();
        set.into_iter().cloned().collect()
    }
}

/// Why a pairs file could not be read. Messages name the file and, where there is one, the
/// 1-based line number; folds in messages are 1-based too, as a reader counts them.
#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read pairs file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file has no header line (it is empty or blank).
    #[error("pairs file {} is empty: expected a header `n` or `folds n`", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The first line is not `n` or `folds n` with positive integers.
    #[error(
        "pairs file {} line 1: expected header `n` or `folds n` with positive integers, got `{got}`",
        path.display()
    )]
    Header {
        /// The file.
        path: PathBuf,
        /// The offending line.
        got: String,
    },
    /// A line has neither 3 nor 4 fields, or a name field is not a plain directory name.
    #[error(
        "pairs file {} line {line}: expected `name i j` or `name1 i name2 j`, got `{got}`",
        path.display()
    )]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending line.
        got: String,
    },
    /// An image number is not a positive integer.
    #[error(
        "pairs file {} line {line}: image number `{got}` is not a positive integer",
        path.display()
    )]
    ImageNumber {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending field.
        got: String,
    },
    /// A line has the shape of the other kind of block than the one it is in.
    #[error(
        "pairs file {} line {line}: {found} line in the {expected} block of fold {fold}: `{got}`",
        path.display(),
        found = if *same_block { "different-person" } else { "same-person" },
        expected = if *same_block { "same-person" } else { "different-person" },
    )]
    WrongBlock {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based fold number.
        fold: usize,
        /// Whether the line is in a same-person block (and is a different-person line).
        same_block: bool,
        /// The offending line.
        got: String,
    },
    /// A different-person line names the same person twice.
    #[error(
        "pairs file {} line {line}: different-person line names `{name}` twice",
        path.display()
    )]
    SameNameInDifferentPair {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The repeated name.
        name: String,
    },
    /// A blank line before the end of the pair lines.
    #[error("pairs file {} line {line}: unexpected blank line", path.display())]
    BlankLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The file ends before all the pair lines the header declares.
    #[error(
        "pairs file {}: header `{header}` declares {expected} pair lines, but the file has only \
         {found}",
        path.display()
    )]
    TooFewLines {
        /// The file.
        path: PathBuf,
        /// The header line.
        header: String,
        /// Pair lines the header declares.
        expected: usize,
        /// Pair lines present.
        found: usize,
    },
    /// There are more non-blank lines than the header declares.
    #[error(
        "pairs file {} line {line}: header `{header}` declares {expected} pair lines, but the \
         file continues",
        path.display()
    )]
    TooManyLines {
        /// The file.
        path: PathBuf,
        /// 1-based number of the first surplus line.
        line: usize,
        /// The header line.
        header: String,
        /// Pair lines the header declares.
        expected: usize,
    },
}

/// Parse the text of a View 1 or View 2 pairs file; `source` is only used in error messages.
///
/// # Errors
/// Any [`PairsError`] but `Io`: a bad header, a line count that does not match it, a blank or
/// malformed line, or a line in the wrong block.
pub fn parse_pairs(text: &str, source: &Path) -> Result<PairSet, PairsError> {
    let path = || source.to_path_buf();
    // A byte-order mark from a Windows editor would otherwise make the header unparseable.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<&str> = text.lines().collect();
    // Trailing blank lines are harmless (editors add them); anywhere else a blank line means
    // the file was edited by hand and is rejected below.
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let Some((header, body)) = lines.split_first() else {
        return Err(PairsError::Empty { path: path() });
    };
    let header_err = || PairsError::Header { path: path(), got: header.to_string() };
    let numbers: Vec<usize> = header
        .split_whitespace()
        .map(|f| f.parse::<usize>().ok().filter(|&v| v > 0))
        .collect::<Option<_>>()
        .ok_or_else(header_err)?;
    let (folds, per_block) = match numbers[..] {
        [n] => (1, n),
        [folds, n] => (folds, n),
        _ => return Err(header_err()),
    };
    let expected =
        folds.checked_mul(per_block).and_then(|x| x.checked_mul(2)).ok_or_else(header_err)?;
    let header = header.trim().to_string();
    // Blank lines first: a stray one also breaks the count, and naming it is more helpful.
    if let Some(k) = body.iter().position(|l| l.trim().is_empty()) {
        return Err(PairsError::BlankLine { path: path(), line: k + 2 });
    }
    if body.len() < expected {
        return Err(PairsError::TooFewLines { path: path(), header, expected, found: body.len() });
    }
    if body.len() > expected {
        // +2: one for the header, one for 1-based numbering.
        return Err(PairsError::TooManyLines {
            path: path(),
            line: expected + 2,
            header,
            expected,
        });
    }

    let mut pairs = Vec::with_capacity(expected);
    for (k, raw) in body.iter().enumerate() {
        let line = k + 2;
        let fold = k / (2 * per_block);
        let same_block = k % (2 * per_block) < per_block;
        let fields: Vec<&str> = raw.split_whitespace().collect();
        let syntax = || PairsError::Syntax { path: path(), line, got: raw.trim().to_string() };
        if fields.len() != 3 && fields.len() != 4 {
            return Err(syntax());
        }
        if (fields.len() == 3) != same_block {
            return Err(PairsError::WrongBlock {
                path: path(),
                line,
                fold: fold + 1,
                same_block,
                got: raw.trim().to_string(),
            });
        }
        let number =
            |field: &str| -> Result<u32, PairsError> {
                field.parse::<u32>().ok().filter(|&v| v > 0).ok_or_else(|| {
                    PairsError::ImageNumber { path: path(), line, got: field.to_string() }
                })
            };
        let name = |field: &str| -> Result<String, PairsError> {
            if is_plain_name(field) {
                Ok(field.to_string())
            } else {
                Err(syntax())
            }
        };
        let (a, b) = if same_block {
            let n = name(fields[0])?;
            let a = ImageRef { name: n.clone(), number: number(fields[1])? };
            (a, ImageRef { name: n, number: number(fields[2])? })
        } else {
            let a = ImageRef { name: name(fields[0])?, number: number(fields[1])? };
            let b = ImageRef { name: name(fields[2])?, number: number(fields[3])? };
            if a.name == b.name {
                return Err(PairsError::SameNameInDifferentPair {
                    path: path(),
                    line,
                    name: a.name,
                });
            }
            (a, b)
        };
        pairs.push(Pair { a, b, same: same_block, fold });
    }
    Ok(PairSet { pairs, folds })
}

/// Whether `field` can be a person's directory name.
///
/// Rejects names that would escape the dataset root in [`ImageRef::path`] (separators, `.`,
/// `..`) and all-digit names, which mean a field is missing or misplaced (`name 1 2 3`).
fn is_plain_name(field: &str) -> bool {
    !field.is_empty()
        && field != "."
        && field != ".."
        && !field.contains(['/', '\\', '\0'])
        && !field.bytes().all(|b| b.is_ascii_digit())
}

/// Read and parse a pairs file; see [`parse_pairs`].
///
/// # Errors
/// [`PairsError::Io`] if the file cannot be read as UTF-8 text, otherwise as [`parse_pairs`].
pub fn read_pairs(path: &Path) -> Result<PairSet, PairsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| PairsError::Io { path: path.to_path_buf(), source })?;
    parse_pairs(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PairSet, PairsError> {
        parse_pairs(text, Path::new("test/pairs.txt"))
    }

    fn img(name: &str, number: u32) -> ImageRef {
        ImageRef { name: name.to_string(), number }
    }

    /// Two folds of 2 same + 2 different pairs, mixing tabs and spaces, with trailing blanks.
    const VIEW2: &str = "2 2\n\
        Alice\t1\t2\n\
        Bob 1  3\n\
        Alice\t1\tBob\t2\n\
        Carol 4 Dave 1\n\
        Carol 1 2\n\
        Dave\t2 3\n\
        Bob 3 Dave 2\n\
        Alice 2 Carol 1\n\
        \n\
        \n";

    #[test]
    fn view2_synthetic() {
        let set = parse(VIEW2).unwrap();
        assert_eq!(set.folds, 2);
        assert_eq!(set.pairs.len(), 8);
        let summary: Vec<(bool, usize)> = set.pairs.iter().map(|p| (p.same, p.fold)).collect();
        assert_eq!(
            summary,
            vec![
                (true, 0),
                (true, 0),
                (false, 0),
                (false, 0),
                (true, 1),
                (true, 1),
                (false, 1),
                (false, 1)
            ]
        );
        assert_eq!(
            set.pairs[0],
            Pair { a: img("Alice", 1), b: img("Alice", 2), same: true, fold: 0 }
        );
        assert_eq!(
            set.pairs[3],
            Pair { a: img("Carol", 4), b: img("Dave", 1), same: false, fold: 0 }
        );
        assert_eq!(set.pairs[7].b, img("Carol", 1));
    }

    #[test]
    fn images_unique_sorted() {
        let set = parse(VIEW2).unwrap();
        let names: Vec<String> = set.images().iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "Alice_0001",
                "Alice_0002",
                "Bob_0001",
                "Bob_0002",
                "Bob_0003",
                "Carol_0001",
                "Carol_0002",
                "Carol_0004",
                "Dave_0001",
                "Dave_0002",
                "Dave_0003"
            ]
        );
    }

    #[test]
    fn image_path_is_zero_padded() {
        let p = img("Aaron_Peirsol", 7).path(Path::new("/data/lfw"));
        assert_eq!(p, PathBuf::from("/data/lfw/Aaron_Peirsol/Aaron_Peirsol_0007.jpg"));
        let p = img("X", 12345).path(Path::new("r"));
        assert_eq!(p, PathBuf::from("r/X/X_12345.jpg"));
    }

    #[test]
    fn view1_single_fold_crlf() {
        let set = parse("1\r\nAlice 1 2\r\nAlice 1 Bob 1\r\n").unwrap();
        assert_eq!(set.folds, 1);
        assert_eq!(set.pairs.len(), 2);
        assert!(set.pairs.iter().all(|p| p.fold == 0));
        assert!(set.pairs[0].same && !set.pairs[1].same);
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(parse("\u{feff}1\nA 1 2\nA 1 B 1\n").unwrap().pairs.len(), 2);
    }

    #[test]
    fn header_errors() {
        for text in ["x\n", "0\n", "2 0\n", "1 2 3\n", "-1\n", "1.5\n"] {
            let err = parse(text).unwrap_err();
            assert!(matches!(err, PairsError::Header { .. }), "{text:?}: {err}");
            assert!(err.to_string().starts_with("pairs file test/pairs.txt line 1: "), "{err}");
        }
        assert!(matches!(parse("").unwrap_err(), PairsError::Empty { .. }));
        assert!(matches!(parse("\n \n").unwrap_err(), PairsError::Empty { .. }));
    }

    #[test]
    fn too_few_lines() {
        let err = parse("2 1\nA 1 2\nA 1 B 1\nC 1 2\n").unwrap_err();
        assert!(matches!(err, PairsError::TooFewLines { expected: 4, found: 3, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "pairs file test/pairs.txt: header `2 1` declares 4 pair lines, but the file has only 3"
        );
    }

    #[test]
    fn too_many_lines() {
        let err = parse("1\nA 1 2\nA 1 B 1\nC 1 2\n\n").unwrap_err();
        assert!(matches!(err, PairsError::TooManyLines { line: 4, expected: 2, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "pairs file test/pairs.txt line 4: header `1` declares 2 pair lines, but the file \
             continues"
        );
    }

    #[test]
    fn blank_line_inside_is_an_error() {
        // Named even though it also makes one line too many.
        let err = parse("1\nA 1 2\n\nA 1 B 1\n").unwrap_err();
        assert!(matches!(err, PairsError::BlankLine { line: 3, .. }), "{err}");
        assert_eq!(err.to_string(), "pairs file test/pairs.txt line 3: unexpected blank line");
        let err = parse("2\nA 1 2\n\nA 1 B 1\nC 1 D 1\n").unwrap_err();
        assert!(matches!(err, PairsError::BlankLine { line: 3, .. }), "{err}");
    }

    #[test]
    fn wrong_block_names_line() {
        // Line 3 is a different-person line where the second same-person line belongs.
        let err = parse("2\nA 1 2\nA 1 B 1\nA 1 B 2\nC 1 D 1\n").unwrap_err();
        assert!(matches!(err, PairsError::WrongBlock { line: 3, fold: 1, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "pairs file test/pairs.txt line 3: different-person line in the same-person block of \
             fold 1: `A 1 B 1`"
        );
        // And a same-person line in fold 2's different-person block.
        let text = "2 1\nA 1 2\nA 1 B 1\nC 1 2\nC 3 4\n";
        let err = parse(text).unwrap_err();
        assert!(matches!(err, PairsError::WrongBlock { line: 5, fold: 2, .. }), "{err}");
        assert!(err.to_string().contains("same-person line in the different-person block"));
    }

    #[test]
    fn syntax_errors() {
        let err = parse("1\nA 1\nA 1 B 1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pairs file test/pairs.txt line 2: expected `name i j` or `name1 i name2 j`, got `A 1`"
        );
        for line in ["A 1 B 1 C", "../etc 1 2", "a/b 1 2", "12 1 2"] {
            let err = parse(&format!("1\n{line}\nA 1 B 1\n")).unwrap_err();
            assert!(matches!(err, PairsError::Syntax { line: 2, .. }), "{line}: {err}");
        }
    }

    #[test]
    fn image_number_errors() {
        for (text, got) in [
            ("1\nA 0 2\nA 1 B 1\n", "0"),
            ("1\nA 1 2\nA 1 B x\n", "x"),
            ("1\nA 1 -2\nA 1 B 1\n", "-2"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(&err, PairsError::ImageNumber { got: g, .. } if g == got),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn different_pair_with_one_name_is_an_error() {
        let err = parse("1\nA 1 2\nA 1 A 2\n").unwrap_err();
        assert!(matches!(err, PairsError::SameNameInDifferentPair { line: 3, .. }), "{err}");
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = read_pairs(Path::new("/nonexistent/pairs.txt")).unwrap_err();
        assert!(matches!(err, PairsError::Io { .. }));
        assert!(err.to_string().starts_with("cannot read pairs file /nonexistent/pairs.txt: "));
    }

    /// The LFW development set, `$PORTIER_LFW_DEV` or the shared assets directory.
    ///
    /// Missing data fails the test under `CI=true` (a CI run must not pass by skipping) and
    /// otherwise prints a notice and returns `None`.
    fn lfw_dev_dir() -> Option<PathBuf> {
        let dir = std::env::var_os("PORTIER_LFW_DEV")
            .map_or_else(|| PathBuf::from("/work/shared/assets/lfw-dev"), PathBuf::from);
        let present = ["pairsDevTrain.txt", "pairsDevTest.txt", "images"]
            .iter()
            .all(|f| dir.join(f).exists());
        if present {
            return Some(dir);
        }
        let msg = format!("LFW dev set not found in {} (set PORTIER_LFW_DEV)", dir.display());
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        None
    }

    fn check_real_file(file: &str, per_block: usize) {
        let Some(dir) = lfw_dev_dir() else { return };
        let set = read_pairs(&dir.join(file)).unwrap();
        assert_eq!(set.folds, 1);
        assert_eq!(set.pairs.len(), 2 * per_block);
        assert_eq!(set.pairs.iter().filter(|p| p.same).count(), per_block);
        assert!(set.pairs[..per_block].iter().all(|p| p.same && p.a.name == p.b.name));
        assert!(set.pairs[per_block..].iter().all(|p| !p.same && p.a.name != p.b.name));
        assert!(set.pairs.iter().all(|p| p.fold == 0));
        let root = dir.join("images");
        let missing: Vec<PathBuf> =
            set.images().iter().map(|i| i.path(&root)).filter(|p| !p.is_file()).collect();
        assert!(missing.is_empty(), "{} images missing, e.g. {:?}", missing.len(), &missing[..1]);
    }

    #[test]
    fn real_pairs_dev_train() {
        check_real_file("pairsDevTrain.txt", 1100);
    }

    #[test]
    fn real_pairs_dev_test() {
        check_real_file("pairsDevTest.txt", 500);
    }
}
