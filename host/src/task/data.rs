//! Data file readers: each format becomes a list of [`Record`]s, named fields plus a natural id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::definition::DataFormat;
use super::{Location, TaskError};

/// One field of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldValue {
    Text(String),
    List(Vec<String>),
    /// A JSON value that is neither a scalar nor a list of scalars; the name of its kind.
    Unsupported(&'static str),
}

impl FieldValue {
    /// A short description of the kind of value, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FieldValue::Text(_) => "a string",
            FieldValue::List(_) => "a list",
            FieldValue::Unsupported(kind) => kind,
        }
    }
}

/// One example as found in the data file.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) location: Location,
    /// The id when the task file names no id field: the 1-based row number (TSV, JSONL), the
    /// key (PubMedQA), the question id (SQuAD) or the article title (text).
    pub(crate) natural_id: String,
    pub(crate) fields: BTreeMap<String, FieldValue>,
}

/// Parses the text of the data file at `path` (used in errors only).
pub(crate) fn parse_records(
    text: &str,
    path: &Path,
    format: DataFormat,
) -> Result<Vec<Record>, TaskError> {
    let reader = Reader { path };
    match format {
        DataFormat::Tsv => reader.tsv(text),
        DataFormat::Jsonl => reader.jsonl(text),
        DataFormat::Pubmedqa => reader.keyed_object(text),
        DataFormat::Squad => reader.squad(text),
        DataFormat::Text => reader.articles(text),
    }
}

/// The keys of a JSON object file, e.g. the ids of an official test split.
pub(crate) fn object_keys(text: &str, path: &Path) -> Result<Vec<String>, TaskError> {
    let reader = Reader { path };
    match reader.json::<Value>(text)? {
        Value::Object(object) => Ok(object.keys().cloned().collect()),
        _ => Err(reader.shape(Location::Line(1), "a JSON object whose keys are ids")),
    }
}

#[derive(Debug, Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}

#[derive(Debug, Deserialize)]
struct SquadArticle {
    title: String,
    paragraphs: Vec<SquadParagraph>,
}

#[derive(Debug, Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQuestion>,
}

#[derive(Debug, Deserialize)]
struct SquadQuestion {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<SquadAnswer>,
}

#[derive(Debug, Deserialize)]
struct SquadAnswer {
    text: String,
}

struct Reader<'a> {
    path: &'a Path,
}

impl Reader<'_> {
    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn shape(&self, location: Location, expected: &'static str) -> TaskError {
        TaskError::DataShape {
            path: self.path(),
            location,
            expected,
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, text: &str) -> Result<T, TaskError> {
        serde_json::from_str(text).map_err(|error| self.json_error(&error, 0))
    }

    fn json_error(&self, error: &serde_json::Error, line_offset: usize) -> TaskError {
        let position = format!(" at line {} column {}", error.line(), error.column());
        let message = error.to_string();
        TaskError::Json {
            path: self.path(),
            line: error.line() + line_offset,
            column: error.column(),
            message: message
                .strip_suffix(&position)
                .unwrap_or(&message)
                .to_string(),
        }
    }

    fn tsv(&self, text: &str) -> Result<Vec<Record>, TaskError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.is_empty());
        let Some((_, header)) = lines.next() else {
            return Ok(Vec::new());
        };
        let columns: Vec<&str> = header.split('\t').collect();
        let mut records = Vec::new();
        for (index, line) in lines {
            let cells: Vec<&str> = line.split('\t').collect();
            if cells.len() != columns.len() {
                return Err(TaskError::TsvColumns {
                    path: self.path(),
                    line: index + 1,
                    expected: columns.len(),
                    found: cells.len(),
                });
            }
            let fields = columns
                .iter()
                .zip(cells)
                .map(|(column, cell)| (column.to_string(), FieldValue::Text(cell.to_string())))
                .collect();
            records.push(Record {
                location: Location::Line(index + 1),
                natural_id: (records.len() + 1).to_string(),
                fields,
            });
        }
        Ok(records)
    }

    fn jsonl(&self, text: &str) -> Result<Vec<Record>, TaskError> {
        let mut records = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let location = Location::Line(index + 1);
            let value: Value =
                serde_json::from_str(line).map_err(|error| self.json_error(&error, index))?;
            let Value::Object(object) = value else {
                return Err(self.shape(location, "a JSON object on every line"));
            };
            records.push(Record {
                location,
                natural_id: (records.len() + 1).to_string(),
                fields: object_fields(object),
            });
        }
        Ok(records)
    }

    fn keyed_object(&self, text: &str) -> Result<Vec<Record>, TaskError> {
        let Value::Object(object) = self.json::<Value>(text)? else {
            return Err(self.shape(Location::Line(1), "a JSON object keyed by id"));
        };
        object
            .into_iter()
            .map(|(key, value)| {
                let location = Location::Record(key.clone());
                let Value::Object(fields) = value else {
                    return Err(self.shape(location, "a JSON object as the value of every id"));
                };
                Ok(Record {
                    location,
                    natural_id: key,
                    fields: object_fields(fields),
                })
            })
            .collect()
    }

    fn squad(&self, text: &str) -> Result<Vec<Record>, TaskError> {
        let file: SquadFile = self.json(text)?;
        let mut records = Vec::new();
        for article in file.data {
            for paragraph in article.paragraphs {
                for question in paragraph.qas {
                    let answers = question.answers.into_iter().map(|a| a.text).collect();
                    let fields = BTreeMap::from([
                        ("title".to_string(), FieldValue::Text(article.title.clone())),
                        (
                            "context".to_string(),
                            FieldValue::Text(paragraph.context.clone()),
                        ),
                        ("question".to_string(), FieldValue::Text(question.question)),
                        ("id".to_string(), FieldValue::Text(question.id.clone())),
                        ("answers".to_string(), FieldValue::List(answers)),
                    ]);
                    records.push(Record {
                        location: Location::Record(question.id.clone()),
                        natural_id: question.id,
                        fields,
                    });
                }
            }
        }
        Ok(records)
    }

    /// Cuts the text (CRLF normalised to LF) into articles at top-level heading lines
    /// ` = Title = `; an article runs from its heading line to the next heading line, so the
    /// articles concatenated give back the text without its leading blank lines.
    fn articles(&self, text: &str) -> Result<Vec<Record>, TaskError> {
        let text = text.replace("\r\n", "\n");
        let mut records: Vec<Record> = Vec::new();
        let mut current: Option<(String, usize, String)> = None;
        for (index, line) in text.split_inclusive('\n').enumerate() {
            if let Some(title) = top_level_title(line.strip_suffix('\n').unwrap_or(line)) {
                records.extend(current.take().map(article_record));
                current = Some((title.to_string(), index + 1, String::new()));
            }
            match current.as_mut() {
                Some((_, _, body)) => body.push_str(line),
                None if !line.trim().is_empty() => {
                    return Err(TaskError::TextBeforeHeading {
                        path: self.path(),
                        line: index + 1,
                    });
                }
                None => {}
            }
        }
        records.extend(current.map(article_record));
        Ok(records)
    }
}

fn article_record((title, line, body): (String, usize, String)) -> Record {
    Record {
        location: Location::Line(line),
        natural_id: title.clone(),
        fields: BTreeMap::from([
            ("title".to_string(), FieldValue::Text(title)),
            ("text".to_string(), FieldValue::Text(body)),
        ]),
    }
}

/// The title of a top-level WikiText heading ` = Title = `; ` = = Section = = ` is not one.
fn top_level_title(line: &str) -> Option<&str> {
    let inner = line.strip_prefix(" = ")?.strip_suffix(" = ")?;
    let title = inner.trim();
    let nested = inner.starts_with('=') || inner.ends_with('=');
    (!title.is_empty() && !nested).then_some(title)
}

fn object_fields(object: serde_json::Map<String, Value>) -> BTreeMap<String, FieldValue> {
    object
        .into_iter()
        .map(|(key, value)| (key, field_value(value)))
        .collect()
}

fn field_value(value: Value) -> FieldValue {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(scalar_text)
            .collect::<Option<Vec<String>>>()
            .map_or(
                FieldValue::Unsupported("a list of non-scalars"),
                FieldValue::List,
            ),
        Value::Object(_) => FieldValue::Unsupported("an object"),
        Value::Null => FieldValue::Unsupported("null"),
        scalar => scalar_text(scalar).map_or(FieldValue::Unsupported("null"), FieldValue::Text),
    }
}

/// Strings as they are; numbers and booleans as their JSON text (`1`, `true`).
fn scalar_text(value: Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}
