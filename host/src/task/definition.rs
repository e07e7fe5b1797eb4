//! The task file (TOML): parsed with serde into raw structs, then validated into a
//! [`Definition`] whose every field is known to be usable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::template::Template;
use super::{Label, Metric, Split, TaskError};

/// The perplexity window (and stride) in tokens when the task file gives none.
pub(crate) const DEFAULT_PERPLEXITY_WINDOW: usize = 1024;
/// The generation budget of extractive QA when the task file gives none.
pub(crate) const DEFAULT_MAX_NEW_TOKENS: usize = 32;

/// How a data file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DataFormat {
    /// Tab-separated, a header row naming the columns, no quoting.
    Tsv,
    /// One JSON object per line.
    Jsonl,
    /// One JSON object keyed by id whose values are the records (PubMedQA).
    Pubmedqa,
    /// SQuAD v1.1 JSON: one record per question.
    Squad,
    /// Plain text cut into articles at ` = Title = ` heading lines (WikiText).
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MetricKind {
    Accuracy,
    Squad,
    Perplexity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Option<String>,
    description: Option<String>,
    metric: Option<MetricKind>,
    window: Option<usize>,
    stride: Option<usize>,
    max_new_tokens: Option<usize>,
    data: Option<RawData>,
    prompt: Option<RawPrompt>,
    labels: Option<Vec<RawLabel>>,
    splits: Option<RawSplits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    path: Option<String>,
    format: Option<DataFormat>,
    id: Option<String>,
    label: Option<String>,
    answers: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    sources: Option<RawSources>,
}

/// `[data.sources]`: a data file per split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    calibration: Option<String>,
    search: Option<String>,
    test: Option<String>,
}

/// `[splits.min_words]`: the fewest words an example's input may have, per split.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMinWords {
    calibration: Option<usize>,
    search: Option<usize>,
    test: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompt {
    system: Option<String>,
    user: Option<String>,
    assistant_prefix: Option<String>,
    chat: Option<bool>,
    plain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    value: Option<String>,
    verbalizer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplits {
    seed: Option<u64>,
    calibration: Option<f64>,
    search: Option<f64>,
    test: Option<f64>,
    max_calibration: Option<usize>,
    max_search: Option<usize>,
    max_test: Option<usize>,
    official_test: Option<String>,
    group_by: Option<String>,
    min_words: Option<RawMinWords>,
}

/// A validated task file.
#[derive(Debug, Clone)]
pub(crate) struct Definition {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) metric: Metric,
    pub(crate) data: DataSpec,
    pub(crate) prompt: PromptTemplates,
    pub(crate) labels: Vec<Label>,
    pub(crate) splits: SplitSpec,
}

/// One data file.
#[derive(Debug, Clone)]
pub(crate) struct DataFile {
    /// The path as written in the task file.
    pub(crate) given: String,
    /// The path resolved against the task file's directory.
    pub(crate) path: PathBuf,
}

/// Where the examples come from.
#[derive(Debug, Clone)]
pub(crate) enum DataFiles {
    /// `data.path`: one file, cut into the three splits by `[splits]`'s fractions.
    One(DataFile),
    /// `[data.sources]`: calibration, search and test each read their own file, whole.
    PerSplit([DataFile; 3]),
}

/// Where the data is and which source fields play which role.
#[derive(Debug, Clone)]
pub(crate) struct DataSpec {
    pub(crate) files: DataFiles,
    pub(crate) format: DataFormat,
    pub(crate) id: Option<String>,
    pub(crate) label: Option<String>,
    pub(crate) answers: Option<String>,
    /// Template variable → source field.
    pub(crate) fields: BTreeMap<String, String>,
}

/// The prompt templates; every placeholder is a key of [`DataSpec::fields`].
#[derive(Debug, Clone)]
pub(crate) struct PromptTemplates {
    pub(crate) system: Option<Template>,
    pub(crate) user: Template,
    pub(crate) assistant_prefix: Template,
    pub(crate) chat: bool,
    /// The whole prompt for a model without a chat template (a pretrained base model).
    pub(crate) plain: Option<Template>,
}

/// How examples are divided into splits; see [`super::split`].
#[derive(Debug, Clone)]
pub(crate) struct SplitSpec {
    pub(crate) seed: u64,
    /// Calibration, search, test; the test fraction is 0 with an official test split.
    pub(crate) fractions: [f64; 3],
    /// Per-split caps on the number of examples.
    pub(crate) caps: [Option<usize>; 3],
    /// The official test file: (as written, resolved).
    pub(crate) official_test: Option<(String, PathBuf)>,
    pub(crate) group_by: Option<String>,
    /// Per split, the fewest words (whitespace-separated, over every input field) an example
    /// may have; shorter ones are left out before the cap (per-split sources only).
    pub(crate) min_words: [Option<usize>; 3],
}

impl Definition {
    /// Parses and validates the TOML `text` of the task file at `path`; relative data paths
    /// are resolved against `base_dir`.
    pub(crate) fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Self, TaskError> {
        let raw: RawTask = toml::from_str(text).map_err(|error| {
            let (line, column) = line_and_column(text, error.span().map_or(0, |span| span.start));
            TaskError::TaskFileSyntax {
                path: path.to_path_buf(),
                line,
                column,
                message: error.message().trim_end().to_string(),
            }
        })?;
        Validator { path }.definition(raw, base_dir)
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn definition(&self, raw: RawTask, base_dir: &Path) -> Result<Definition, TaskError> {
        let name = self.require(raw.name, "name", "name = \"my-task\"")?;
        let kind = self.require(
            raw.metric,
            "metric",
            "metric = \"accuracy\" | \"squad\" | \"perplexity\"",
        )?;
        let data = self.require(raw.data, "data", "a [data] table with path and format")?;
        let prompt = self.require(raw.prompt, "prompt", "a [prompt] table with user = \"...\"")?;
        let splits = self.require(raw.splits, "splits", "a [splits] table with seed = 0")?;
        let metric = self.metric(kind, raw.window, raw.stride, raw.max_new_tokens)?;
        let labels = self.labels(&metric, raw.labels)?;
        let data = self.data(&metric, data, base_dir)?;
        let prompt = self.prompt(prompt, &data.fields)?;
        let per_split = matches!(data.files, DataFiles::PerSplit(_));
        let splits = self.splits(splits, per_split, base_dir)?;
        Ok(Definition {
            path: self.path.to_path_buf(),
            name,
            description: raw.description.unwrap_or_default(),
            metric,
            data,
            prompt,
            labels,
            splits,
        })
    }

    fn require<T>(
        &self,
        value: Option<T>,
        field: &'static str,
        hint: &'static str,
    ) -> Result<T, TaskError> {
        value.ok_or_else(|| TaskError::MissingField {
            path: self.path.to_path_buf(),
            field,
            hint,
        })
    }

    fn only_for(
        &self,
        present: bool,
        option: &'static str,
        applies_to: &'static str,
        metric: &Metric,
    ) -> Result<(), TaskError> {
        if present && metric.name() != applies_to {
            return Err(TaskError::MetricOption {
                path: self.path.to_path_buf(),
                option,
                applies_to,
                metric: metric.name(),
            });
        }
        Ok(())
    }

    fn positive(&self, field: &'static str, value: usize) -> Result<usize, TaskError> {
        if value == 0 {
            return Err(self.invalid_number(field, 0.0, "a positive integer".to_string()));
        }
        Ok(value)
    }

    fn invalid_number(&self, field: &'static str, value: f64, requirement: String) -> TaskError {
        TaskError::InvalidNumber {
            path: self.path.to_path_buf(),
            field,
            value,
            requirement,
        }
    }

    fn metric(
        &self,
        kind: MetricKind,
        window: Option<usize>,
        stride: Option<usize>,
        max_new_tokens: Option<usize>,
    ) -> Result<Metric, TaskError> {
        let metric = match kind {
            MetricKind::Accuracy => Metric::Accuracy,
            MetricKind::Squad => Metric::Squad {
                max_new_tokens: self.positive(
                    "max_new_tokens",
                    max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS),
                )?,
            },
            MetricKind::Perplexity => {
                let window =
                    self.positive("window", window.unwrap_or(DEFAULT_PERPLEXITY_WINDOW))?;
                let stride = self.positive("stride", stride.unwrap_or(window))?;
                if stride > window {
                    return Err(self.invalid_number(
                        "stride",
                        stride as f64,
                        format!("at most the window ({window})"),
                    ));
                }
                Metric::Perplexity { window, stride }
            }
        };
        self.only_for(window.is_some(), "window", "perplexity", &metric)?;
        self.only_for(stride.is_some(), "stride", "perplexity", &metric)?;
        self.only_for(max_new_tokens.is_some(), "max_new_tokens", "squad", &metric)?;
        Ok(metric)
    }

    fn labels(&self, metric: &Metric, raw: Option<Vec<RawLabel>>) -> Result<Vec<Label>, TaskError> {
        self.only_for(raw.is_some(), "[[labels]]", "accuracy", metric)?;
        if *metric != Metric::Accuracy {
            return Ok(Vec::new());
        }
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            return Err(TaskError::NoLabels {
                path: self.path.to_path_buf(),
            });
        }
        let mut labels: Vec<Label> = Vec::with_capacity(raw.len());
        for label in raw {
            let value = self.require(
                label.value,
                "labels.value",
                "value = \"...\" to every [[labels]] entry",
            )?;
            let verbalizer = self.require(
                label.verbalizer,
                "labels.verbalizer",
                "verbalizer = \" ...\" to every [[labels]] entry",
            )?;
            if verbalizer.is_empty() {
                return Err(TaskError::EmptyVerbalizer {
                    path: self.path.to_path_buf(),
                    value,
                });
            }
            if labels.iter().any(|known| known.value == value) {
                return Err(TaskError::DuplicateLabel {
                    path: self.path.to_path_buf(),
                    value,
                });
            }
            labels.push(Label { value, verbalizer });
        }
        Ok(labels)
    }

    fn data(&self, metric: &Metric, raw: RawData, base_dir: &Path) -> Result<DataSpec, TaskError> {
        let file = |given: String| DataFile {
            path: base_dir.join(&given),
            given,
        };
        let files = match (raw.path, raw.sources) {
            (Some(_), Some(_)) => {
                return Err(TaskError::ConflictingOption {
                    path: self.path.to_path_buf(),
                    option: "data.path",
                    with: "[data.sources]",
                    fix: "remove data.path (each split reads its own file) or [data.sources]",
                });
            }
            (Some(given), None) => DataFiles::One(file(given)),
            (None, Some(sources)) => {
                let hint = "calibration, search and test paths to [data.sources]";
                DataFiles::PerSplit([
                    file(self.require(sources.calibration, "data.sources.calibration", hint)?),
                    file(self.require(sources.search, "data.sources.search", hint)?),
                    file(self.require(sources.test, "data.sources.test", hint)?),
                ])
            }
            (None, None) => {
                return Err(TaskError::MissingField {
                    path: self.path.to_path_buf(),
                    field: "data.path",
                    hint: "path = \"<data file, relative to this task file>\" (or a [data.sources] table with a file per split) to [data]",
                });
            }
        };
        let format = self.require(
            raw.format,
            "data.format",
            "format = \"tsv\" | \"jsonl\" | \"pubmedqa\" | \"squad\" | \"text\" to [data]",
        )?;
        self.only_for(raw.label.is_some(), "data.label", "accuracy", metric)?;
        self.only_for(raw.answers.is_some(), "data.answers", "squad", metric)?;
        let label = match metric {
            Metric::Accuracy => Some(self.require(
                raw.label,
                "data.label",
                "label = \"<source field holding the label>\" to [data]",
            )?),
            _ => None,
        };
        let answers = match metric {
            Metric::Squad { .. } => Some(self.require(
                raw.answers,
                "data.answers",
                "answers = \"<source field holding the answer list>\" to [data]",
            )?),
            _ => None,
        };
        Ok(DataSpec {
            files,
            format,
            id: raw.id,
            label,
            answers,
            fields: raw.fields,
        })
    }

    fn prompt(
        &self,
        raw: RawPrompt,
        fields: &BTreeMap<String, String>,
    ) -> Result<PromptTemplates, TaskError> {
        let user = self.require(
            raw.user,
            "prompt.user",
            "user = \"...{field}...\" to [prompt]",
        )?;
        let system = match raw.system {
            Some(system) => Some(self.template("prompt.system", &system, fields)?),
            None => None,
        };
        Ok(PromptTemplates {
            system,
            user: self.template("prompt.user", &user, fields)?,
            assistant_prefix: self.template(
                "prompt.assistant_prefix",
                raw.assistant_prefix.as_deref().unwrap_or(""),
                fields,
            )?,
            chat: raw.chat.unwrap_or(true),
            plain: match raw.plain {
                Some(plain) => Some(self.template("prompt.plain", &plain, fields)?),
                None => None,
            },
        })
    }

    fn template(
        &self,
        which: &'static str,
        text: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<Template, TaskError> {
        let template = Template::parse(text).map_err(|error| TaskError::TemplateSyntax {
            path: self.path.to_path_buf(),
            template: which,
            position: error.position,
            problem: error.problem,
        })?;
        if let Some(unknown) = template
            .placeholders()
            .find(|name| !fields.contains_key(*name))
        {
            let available = if fields.is_empty() {
                "none".to_string()
            } else {
                fields
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(TaskError::UnknownPlaceholder {
                path: self.path.to_path_buf(),
                template: which,
                placeholder: unknown.to_string(),
                available,
            });
        }
        Ok(template)
    }

    fn splits(
        &self,
        raw: RawSplits,
        per_split: bool,
        base_dir: &Path,
    ) -> Result<SplitSpec, TaskError> {
        let seed = self.require(
            raw.seed,
            "splits.seed",
            "seed = 0 (any integer) to [splits]",
        )?;
        let min_words = raw.min_words.unwrap_or_default();
        let min_words = [min_words.calibration, min_words.search, min_words.test];
        if per_split {
            let conflicts = [
                ("splits.calibration", raw.calibration.is_some()),
                ("splits.search", raw.search.is_some()),
                ("splits.test", raw.test.is_some()),
                ("splits.official_test", raw.official_test.is_some()),
                ("splits.group_by", raw.group_by.is_some()),
            ];
            if let Some((option, _)) = conflicts.into_iter().find(|(_, present)| *present) {
                return Err(TaskError::ConflictingOption {
                    path: self.path.to_path_buf(),
                    option,
                    with: "[data.sources]",
                    fix: "remove it: with a file per split, every example of a file belongs to its split",
                });
            }
            return Ok(SplitSpec {
                seed,
                fractions: [1.0, 1.0, 1.0],
                caps: [raw.max_calibration, raw.max_search, raw.max_test],
                official_test: None,
                group_by: None,
                min_words,
            });
        }
        if min_words.iter().any(Option::is_some) {
            return Err(TaskError::ConflictingOption {
                path: self.path.to_path_buf(),
                option: "[splits.min_words]",
                with: "data.path",
                fix: "give each split its own file under [data.sources], or remove [splits.min_words]",
            });
        }
        let calibration = self.require(
            raw.calibration,
            "splits.calibration",
            "calibration = 0.4 (a fraction of the examples) to [splits]",
        )?;
        let search = self.require(
            raw.search,
            "splits.search",
            "search = 0.3 (a fraction of the examples) to [splits]",
        )?;
        let test = match (&raw.official_test, raw.test) {
            (Some(_), Some(_)) => {
                return Err(TaskError::TestFractionWithOfficialTest {
                    path: self.path.to_path_buf(),
                });
            }
            (Some(_), None) => 0.0,
            (None, test) => self.require(
                test,
                "splits.test",
                "test = 0.3 (a fraction of the examples) or official_test = \"<file>\" to [splits]",
            )?,
        };
        let fractions = [calibration, search, test];
        for (split, fraction) in Split::ALL.into_iter().zip(fractions) {
            if !(0.0..=1.0).contains(&fraction) {
                return Err(TaskError::InvalidNumber {
                    path: self.path.to_path_buf(),
                    field: split_field(split),
                    value: fraction,
                    requirement: "a fraction between 0 and 1".to_string(),
                });
            }
        }
        let sum: f64 = fractions.iter().sum();
        if sum > 1.0 + FRACTION_TOLERANCE {
            return Err(TaskError::FractionsAboveOne {
                path: self.path.to_path_buf(),
                sum,
            });
        }
        Ok(SplitSpec {
            seed,
            fractions,
            caps: [raw.max_calibration, raw.max_search, raw.max_test],
            official_test: raw.official_test.map(|given| {
                let resolved = base_dir.join(&given);
                (given, resolved)
            }),
            group_by: raw.group_by,
            min_words,
        })
    }
}

/// Fractions whose sum is within this of 1 count as summing to exactly 1.
pub(crate) const FRACTION_TOLERANCE: f64 = 1e-9;

fn split_field(split: Split) -> &'static str {
    match split {
        Split::Calibration => "splits.calibration",
        Split::Search => "splits.search",
        Split::Test => "splits.test",
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before
        .get(line_start..)
        .map_or(0, |rest| rest.chars().count())
        + 1;
    (line, column)
}
