//! Errors from loading a task: each one line naming the cause and the fix.

use std::fmt;
use std::path::PathBuf;

use super::Split;

/// Where in a data file something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A 1-based line number (TSV, JSONL, text).
    Line(usize),
    /// A record named by its key or id (PubMedQA PMID, SQuAD question id).
    Record(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(line) => write!(f, "line {line}"),
            Location::Record(key) => write!(f, "record `{key}`"),
        }
    }
}

/// Everything that can go wrong while loading a task file, its data or its splits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The name is neither a built-in task nor a task file.
    #[error("unknown task `{name}`; use one of {known} or a path to a .toml task file")]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The built-in task names, comma-separated.
        known: String,
    },
    /// A split name other than `calibration`, `search` or `test`.
    #[error("unknown split `{name}`; use calibration, search or test")]
    UnknownSplit {
        /// The name given.
        name: String,
    },
    /// The task file could not be read.
    #[error("task file {path}: cannot read it ({source}); check the path", path = .path.display())]
    TaskFileRead {
        /// The task file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The task file is not valid TOML or does not fit the schema.
    #[error("task file {path} line {line} column {column}: {message}; fix the task file", path = .path.display())]
    TaskFileSyntax {
        /// The task file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// Two options of the task file that exclude each other.
    #[error("task file {path}: `{option}` conflicts with {with}; {fix}", path = .path.display())]
    ConflictingOption {
        /// The task file.
        path: PathBuf,
        /// The option to remove.
        option: &'static str,
        /// What it conflicts with.
        with: &'static str,
        /// What to do.
        fix: &'static str,
    },
    /// An example of the test split has the same input as one of another split.
    #[error(
        "task {task}: test example {id} has the same input as {split} example {other}; the test split must be text the method never saw, so remove the duplicate from one of the data files"
    )]
    SplitOverlap {
        /// The task.
        task: String,
        /// The test example.
        id: String,
        /// The other split.
        split: Split,
        /// The example there.
        other: String,
    },
    /// A required field is absent from the task file.
    #[error("task file {path}: missing field `{field}`; add {hint}", path = .path.display())]
    MissingField {
        /// The task file.
        path: PathBuf,
        /// The dotted name of the field.
        field: &'static str,
        /// An example of what to add.
        hint: &'static str,
    },
    /// An option that only applies to another metric.
    #[error(
        "task file {path}: `{option}` applies only to metric = \"{applies_to}\", but the metric is \"{metric}\"; remove it",
        path = .path.display()
    )]
    MetricOption {
        /// The task file.
        path: PathBuf,
        /// The option (`window`, `data.label`, `[[labels]]`, ...).
        option: &'static str,
        /// The metric the option belongs to.
        applies_to: &'static str,
        /// The task's metric.
        metric: &'static str,
    },
    /// A number outside its allowed range.
    #[error("task file {path}: {field} = {value} is invalid; it must be {requirement}", path = .path.display())]
    InvalidNumber {
        /// The task file.
        path: PathBuf,
        /// The dotted name of the field.
        field: &'static str,
        /// The value given.
        value: f64,
        /// What the value must be.
        requirement: String,
    },
    /// The split fractions add up to more than one.
    #[error(
        "task file {path}: the split fractions sum to {sum}, above 1; lower splits.calibration, splits.search or splits.test",
        path = .path.display()
    )]
    FractionsAboveOne {
        /// The task file.
        path: PathBuf,
        /// Their sum.
        sum: f64,
    },
    /// Both a test fraction and an official test split.
    #[error(
        "task file {path}: [splits] has both test and official_test; remove test (the official test split is used as is)",
        path = .path.display()
    )]
    TestFractionWithOfficialTest {
        /// The task file.
        path: PathBuf,
    },
    /// A classification task without `[[labels]]`.
    #[error(
        "task file {path}: metric \"accuracy\" needs labels; add [[labels]] entries with value = \"...\" and verbalizer = \" ...\"",
        path = .path.display()
    )]
    NoLabels {
        /// The task file.
        path: PathBuf,
    },
    /// A label whose verbalizer is the empty string.
    #[error(
        "task file {path}: label \"{value}\" has an empty verbalizer; set it to the text the model should produce, e.g. verbalizer = \" yes\"",
        path = .path.display()
    )]
    EmptyVerbalizer {
        /// The task file.
        path: PathBuf,
        /// The label's value.
        value: String,
    },
    /// The same label value in two `[[labels]]` entries.
    #[error("task file {path}: label value \"{value}\" appears twice in [[labels]]; keep one entry per value", path = .path.display())]
    DuplicateLabel {
        /// The task file.
        path: PathBuf,
        /// The repeated value.
        value: String,
    },
    /// A template with a lone brace or a malformed placeholder.
    #[error(
        "task file {path}: {template} at byte {position}: {problem}; write {{{{ or }}}} for a literal brace",
        path = .path.display()
    )]
    TemplateSyntax {
        /// The task file.
        path: PathBuf,
        /// Which template (`prompt.user`, ...).
        template: &'static str,
        /// Byte offset of the problem in the template.
        position: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A template placeholder that no `[data.fields]` entry defines.
    #[error(
        "task file {path}: {template} uses placeholder {{{placeholder}}}, which is not a field (available: {available}); add {placeholder} = \"<source field>\" to [data.fields]",
        path = .path.display()
    )]
    UnknownPlaceholder {
        /// The task file.
        path: PathBuf,
        /// Which template (`prompt.user`, ...).
        template: &'static str,
        /// The unknown name.
        placeholder: String,
        /// The defined field names, comma-separated (or "none").
        available: String,
    },
    /// A data file (or official test file) that does not exist.
    #[error(
        "{what} {path} not found (looked for `{given}` relative to the directory of task file {task_file}); fix the path or put the file there",
        path = .path.display(),
        task_file = .task_file.display()
    )]
    FileMissing {
        /// `data file` or `official test file`.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The path as written in the task file.
        given: String,
        /// The task file.
        task_file: PathBuf,
    },
    /// A data file (or official test file) that exists but cannot be read.
    #[error("{what} {path}: cannot read it ({source}); check its permissions and encoding (UTF-8)", path = .path.display())]
    DataFileRead {
        /// `data file` or `official test file`.
        what: &'static str,
        /// The data file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Invalid JSON, or JSON that does not have the shape of its format.
    #[error("data file {path} line {line} column {column}: {message}; fix the JSON or check [data] format", path = .path.display())]
    Json {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A JSON value of the wrong kind where a record was expected.
    #[error("data file {path} {location}: expected {expected}; check [data] format", path = .path.display())]
    DataShape {
        /// The data file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// What was expected.
        expected: &'static str,
    },
    /// A TSV row with the wrong number of columns.
    #[error(
        "data file {path} line {line}: expected {expected} tab-separated columns, found {found}; fix or remove the row",
        path = .path.display()
    )]
    TsvColumns {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Columns in the header.
        expected: usize,
        /// Columns in the row.
        found: usize,
    },
    /// A record without a field the task file names.
    #[error(
        "data file {path} {location}: no field `{field}` (named by {role} in the task file); add it to the data or fix the task file",
        path = .path.display()
    )]
    MissingDataField {
        /// The data file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// The source field name.
        field: String,
        /// The task-file key that names it.
        role: String,
    },
    /// A field whose value has the wrong type.
    #[error(
        "data file {path} {location}: field `{field}` is {found}, expected {expected}; fix the data or map another field",
        path = .path.display()
    )]
    FieldType {
        /// The data file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// The source field name.
        field: String,
        /// What it is.
        found: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A label value without a `[[labels]]` entry.
    #[error(
        "data file {path}: label \"{label}\" on {location} has no verbalizer; add a [[labels]] entry with value = \"{label}\"",
        path = .path.display()
    )]
    UnknownLabel {
        /// The data file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// The label found.
        label: String,
    },
    /// Two examples with the same id.
    #[error(
        "data file {path}: id `{id}` occurs twice; ids must be unique (point data.id at a unique field, or drop it to use row numbers)",
        path = .path.display()
    )]
    DuplicateId {
        /// The data file.
        path: PathBuf,
        /// The repeated id.
        id: String,
    },
    /// Text before the first article heading of a `text` data file.
    #[error(
        "data file {path} line {line}: text before the first ` = Title = ` heading; add a heading line above it or remove it",
        path = .path.display()
    )]
    TextBeforeHeading {
        /// The data file.
        path: PathBuf,
        /// 1-based line of the first such text.
        line: usize,
    },
    /// A data file without a single example.
    #[error("data file {path}: no examples found; check the file and [data] format", path = .path.display())]
    NoExamples {
        /// The data file.
        path: PathBuf,
    },
    /// An official test id that is not in the data.
    #[error(
        "official test file {path}: id `{id}` is not in data file {data_path}; fix one of the two files",
        path = .path.display(),
        data_path = .data_path.display()
    )]
    OfficialTestUnknownId {
        /// The official test file.
        path: PathBuf,
        /// The id.
        id: String,
        /// The data file.
        data_path: PathBuf,
    },
    /// A split without examples.
    #[error(
        "split `{split}` of task `{task}` is empty; raise splits.{split} (or its cap) or add data"
    )]
    EmptySplit {
        /// The task's name.
        task: String,
        /// The empty split.
        split: Split,
    },
}
