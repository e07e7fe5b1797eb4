//! Tasks: a data file, its format, a prompt template, labels and a metric, divided into
//! deterministic calibration / search / test splits (DESIGN section 4).
//!
//! A task is defined by a TOML task file; the built-in ones live in `host/tasks/`. A minimal
//! classification task:
//!
//! ```toml
//! name = "sst2"
//! description = "SST-2 sentiment"
//! metric = "accuracy"                # or "squad" (max_new_tokens) or "perplexity" (window, stride)
//!
//! [data]
//! path = "../../data/sst2/dev.tsv"   # relative to this file's directory, or absolute;
//!                                    # or a file per split, see "Splits"
//! format = "tsv"                     # tsv | jsonl | pubmedqa | squad | text
//! label = "label"                    # source field holding the label (accuracy only)
//! # id = "idx"                       # source field holding a unique id (default: see below)
//! # answers = "answers"              # source field holding the answer list (squad only)
//!
//! [data.fields]                      # template variable = source field
//! sentence = "sentence"
//!
//! [prompt]
//! user = "Review: {sentence}\nIs the sentiment of this review positive or negative?"
//! assistant_prefix = "The sentiment of this review is"
//! # system = "..."                   # optional
//! chat = true                        # false: raw text, no chat template
//!
//! [[labels]]
//! value = "0"
//! verbalizer = " negative"
//!
//! [[labels]]
//! value = "1"
//! verbalizer = " positive"
//!
//! [splits]
//! seed = 0
//! calibration = 0.4
//! search = 0.3
//! test = 0.3                         # or official_test = "<JSON object keyed by test id>"
//! # max_calibration = 600            # optional caps on the number of examples
//! # group_by = "title"               # source field: a group never straddles two splits
//! ```
//!
//! Formats and their records: `tsv` (header row, no quoting; id = 1-based data row), `jsonl`
//! (one object a line; id = 1-based record number), `pubmedqa` (an object keyed by id), `squad`
//! (SQuAD v1.1 JSON; one record per question with fields `title`, `context`, `question`, `id`,
//! `answers`; id = question id) and `text` (cut into articles at ` = Title = ` lines after CRLF
//! → LF; fields `title`, `text`; id = title). A JSON list of strings used as a template variable
//! is joined with "\n"; JSON numbers and booleans are matched and rendered as their JSON text.
//! Templates substitute `{field}`; `{{` and `}}` are literal braces.
//!
//! # Splits
//! The units of splitting are the examples, or with `group_by` the groups (all examples sharing
//! the group field's value). Units are ordered by the first 8 bytes (big-endian) of
//! SHA-256(seed as 8 little-endian bytes ‖ key as UTF-8), key = example id or group value (ties
//! by the key; never std's `DefaultHasher`), and cut, in that order, into calibration, search
//! and test segments of exact sizes: `test = round(test·n)`, then `search = round(search·n)`,
//! then `calibration = round(calibration·n)`, each clamped to what is left, so rounding never
//! over-allocates; when the fractions sum to 1, calibration takes all that is left. With an
//! official test split its ids form the test split and the other examples are cut into
//! calibration and search the same way. A cap `max_<split>` keeps the first units of the
//! segment, in hash order, while the split holds at most that many examples (a whole group that
//! would cross the cap ends the split there), so lowering a cap never moves an example to
//! another split. Within a split, examples are in the hash order of their ids, so a prefix of a
//! split is a fair subsample.
//!
//! A file per split replaces `data.path` and the fractions: every example of a file belongs to
//! its split (ids become `<split>:<natural id>`), in hash order, up to the split's cap, after
//! leaving out examples whose input (the prompt fields' values) has fewer words than
//! `min_words` for that split. A test input that also appears in calibration or search is an
//! error.
//!
//! ```toml
//! [data.sources]
//! calibration = "../../data/sst2/train.tsv"
//! search = "../../data/sst2/train2.tsv"
//! test = "../../data/sst2/dev.tsv"
//!
//! [splits]
//! seed = 0
//! max_search = 1000
//!
//! [splits.min_words]                 # per split, optional
//! search = 10
//! ```

mod builtin;
mod data;
mod definition;
mod error;
mod load;
mod split;
mod template;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use builtin::BUILTIN_TASKS;
pub use error::{Location, TaskError};

use definition::Definition;

/// One of the three disjoint parts of a task's examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Fits the calibration statistics and the label bias.
    Calibration,
    /// The genetic algorithm's fitness.
    Search,
    /// The final report; never seen by the search.
    Test,
}

impl Split {
    /// All splits, in the order calibration, search, test.
    pub const ALL: [Split; 3] = [Split::Calibration, Split::Search, Split::Test];

    /// The lowercase name: `calibration`, `search` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Calibration => "calibration",
            Split::Search => "search",
            Split::Test => "test",
        }
    }

    fn index(self) -> usize {
        match self {
            Split::Calibration => 0,
            Split::Search => 1,
            Split::Test => 2,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = TaskError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Split::ALL
            .into_iter()
            .find(|split| split.name() == name)
            .ok_or_else(|| TaskError::UnknownSplit {
                name: name.to_string(),
            })
    }
}

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Classification: the label whose verbalizer is most probable; fraction correct.
    Accuracy,
    /// Extractive QA: greedy generation, SQuAD-normalised exact match and F1.
    Squad {
        /// The generation budget (default 32).
        max_new_tokens: usize,
    },
    /// Language modelling: perplexity over windows of `window` tokens advanced by `stride`
    /// (default 1024 and 1024: non-overlapping windows).
    Perplexity {
        /// Tokens per evaluated window.
        window: usize,
        /// Tokens the window advances by; at most `window`.
        stride: usize,
    },
}

impl Metric {
    /// The name used in task files: `accuracy`, `squad` or `perplexity`.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Squad { .. } => "squad",
            Metric::Perplexity { .. } => "perplexity",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A classification label: its value in the data and the text the model should produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The label as written in the data file (`"1"`, `"yes"`, `"True"`).
    pub value: String,
    /// The continuation scored for this label, leading space included (`" positive"`).
    pub verbalizer: String,
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prompt {
    /// The system message, if any.
    pub system: Option<String>,
    /// The user message (with `chat = false`, the raw text).
    pub user: String,
    /// Text the assistant turn starts with; the scored or generated text follows it.
    pub assistant_prefix: String,
    /// Whether to wrap the prompt in the model's chat template.
    pub chat: bool,
    /// The whole prompt for a model without a chat template (a pretrained base model such as
    /// Gemma 3 270M), used instead of the chat one for such a model. Absent, it is not
    /// serialized, so the fingerprint of a task without one is what it was before the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain: Option<String>,
}

/// One example of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// Unique within the task; the split is a function of it (or of its group).
    pub id: String,
    /// The rendered prompt.
    pub prompt: Prompt,
    /// Index into [`Task::labels`] of the gold label (accuracy tasks).
    pub label: Option<usize>,
    /// The gold answers (squad tasks).
    pub answers: Vec<String>,
    /// The text whose perplexity is measured: the rendered `prompt.user` (perplexity tasks;
    /// empty otherwise).
    pub text: String,
}

/// A loaded task: its definition, validated, and its examples, split.
#[derive(Debug, Clone)]
pub struct Task {
    name: String,
    description: String,
    path: PathBuf,
    metric: Metric,
    labels: Vec<Label>,
    templates: definition::PromptTemplates,
    splits: [Vec<Example>; 3],
}

impl Task {
    /// Loads a built-in task (see [`BUILTIN_TASKS`]).
    ///
    /// The built-in task files are compiled in, but their data is read at run time from
    /// `data/` in the source tree (`CARGO_MANIFEST_DIR/../data`): for now the repository is the
    /// install unit.
    pub fn builtin(name: &str) -> Result<Task, TaskError> {
        let source = builtin::source(name).ok_or_else(|| TaskError::UnknownTask {
            name: name.to_string(),
            known: BUILTIN_TASKS.join(", "),
        })?;
        let dir = builtin::tasks_dir();
        Task::from_text(source, &dir.join(format!("{name}.toml")), &dir)
    }

    /// Loads the task file at `path`: validates it, reads its data (paths relative to the task
    /// file's directory) and builds the splits, so every input error surfaces here.
    pub fn from_path(path: &Path) -> Result<Task, TaskError> {
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::TaskFileRead {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Task::from_text(&text, path, dir)
    }

    /// A path when `name_or_path` ends in `.toml` or names an existing file, else a built-in.
    pub fn resolve(name_or_path: &str) -> Result<Task, TaskError> {
        let path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") || path.exists() {
            Task::from_path(path)
        } else {
            Task::builtin(name_or_path)
        }
    }

    fn from_text(text: &str, path: &Path, base_dir: &Path) -> Result<Task, TaskError> {
        let definition = Definition::parse(text, path, base_dir)?;
        let splits = load::split_examples(&definition)?;
        Ok(Task {
            name: definition.name,
            description: definition.description,
            path: definition.path,
            metric: definition.metric,
            labels: definition.labels,
            templates: definition.prompt,
            splits,
        })
    }

    /// The names of the prompt templates' placeholders, sorted, without repeats.
    pub fn prompt_fields(&self) -> Vec<String> {
        let templates = &self.templates;
        let mut fields: Vec<String> = templates
            .system
            .iter()
            .chain([&templates.user, &templates.assistant_prefix])
            .chain(&templates.plain)
            .flat_map(|template| template.placeholders().map(str::to_owned))
            .collect();
        fields.sort();
        fields.dedup();
        fields
    }

    /// The prompt with every placeholder replaced by `value` (e.g. a marker that shows where
    /// the input goes).
    pub fn render_prompt_with(&self, value: &str) -> Prompt {
        let values: std::collections::BTreeMap<String, String> = self
            .prompt_fields()
            .into_iter()
            .map(|field| (field, value.to_owned()))
            .collect();
        let templates = &self.templates;
        Prompt {
            system: templates.system.as_ref().map(|t| t.render(&values)),
            user: templates.user.render(&values),
            assistant_prefix: templates.assistant_prefix.render(&values),
            chat: templates.chat,
            plain: templates.plain.as_ref().map(|t| t.render(&values)),
        }
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task's one-line description (may be empty).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The task file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the task is scored.
    pub fn metric(&self) -> &Metric {
        &self.metric
    }

    /// The labels of a classification task, in task-file order (empty otherwise).
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// The examples of `split`, in the split's deterministic (hash) order; an error when the
    /// split is empty.
    pub fn examples(&self, split: Split) -> Result<Vec<Example>, TaskError> {
        match self.splits.get(split.index()) {
            Some(examples) if !examples.is_empty() => Ok(examples.clone()),
            _ => Err(TaskError::EmptySplit {
                task: self.name.clone(),
                split,
            }),
        }
    }

    /// A digest of everything the model sees or is scored against: metric, labels and every
    /// rendered example of every split. Caches derived from a task are keyed by it.
    pub fn fingerprint(&self) -> String {
        self.fingerprint_of(&Split::ALL)
    }

    /// [`Self::fingerprint`] over the examples of `splits` alone, for what depends on those
    /// splits only (the calibration statistics are unchanged when the search split grows).
    pub fn fingerprint_of(&self, splits: &[Split]) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(format!("{:?}", self.metric).as_bytes());
        for label in &self.labels {
            hasher.update(label.value.as_bytes());
            hasher.update([0]);
            hasher.update(label.verbalizer.as_bytes());
            hasher.update([0]);
        }
        for split in Split::ALL {
            let examples = match splits.contains(&split) {
                true => serde_json::to_vec(&self.splits[split.index()]).unwrap_or_default(),
                false => Vec::new(),
            };
            hasher.update(examples);
            hasher.update([1]);
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The number of examples in calibration, search and test. (It cannot fail today, as
    /// loading is eager; the `Result` leaves room for lazy loading.)
    pub fn split_sizes(&self) -> Result<[usize; 3], TaskError> {
        Ok(self.splits.each_ref().map(Vec::len))
    }
}
