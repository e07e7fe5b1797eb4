//! From a validated definition to split examples: reads the data, renders the prompts,
//! checks ids and labels, and applies the split rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::data::{self, FieldValue, Record};
use super::definition::Definition;
use super::split::{self, SplitKey};
use super::{Example, Metric, Prompt, TaskError};

/// The examples of calibration, search and test, each in its split order.
pub(crate) fn split_examples(definition: &Definition) -> Result<[Vec<Example>; 3], TaskError> {
    let records = read_data(definition)?;
    let mut examples = Vec::with_capacity(records.len());
    let mut keys = Vec::with_capacity(records.len());
    let mut seen = BTreeSet::new();
    for record in &records {
        let (example, key) = build_example(definition, record)?;
        if !seen.insert(example.id.clone()) {
            return Err(TaskError::DuplicateId {
                path: definition.data.path.clone(),
                id: example.id,
            });
        }
        examples.push(Some(example));
        keys.push(key);
    }
    let official_test = read_official_test(definition, &seen)?;
    let assignment = split::assign(&keys, &definition.splits, official_test.as_ref());
    Ok(assignment.map(|indices| {
        indices
            .into_iter()
            .filter_map(|index| examples.get_mut(index).and_then(Option::take))
            .collect()
    }))
}

fn read_file(
    what: &'static str,
    given: &str,
    path: &Path,
    task_file: &Path,
) -> Result<String, TaskError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TaskError::FileMissing {
                what,
                path: path.to_path_buf(),
                given: given.to_string(),
                task_file: task_file.to_path_buf(),
            }
        } else {
            TaskError::DataFileRead {
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn read_data(definition: &Definition) -> Result<Vec<Record>, TaskError> {
    let spec = &definition.data;
    let text = read_file("data file", &spec.given, &spec.path, &definition.path)?;
    let records = data::parse_records(&text, &spec.path, spec.format)?;
    if records.is_empty() {
        return Err(TaskError::NoExamples {
            path: spec.path.clone(),
        });
    }
    Ok(records)
}

fn read_official_test(
    definition: &Definition,
    ids: &BTreeSet<String>,
) -> Result<Option<BTreeSet<String>>, TaskError> {
    let Some((given, path)) = &definition.splits.official_test else {
        return Ok(None);
    };
    let text = read_file("official test file", given, path, &definition.path)?;
    let test_ids: BTreeSet<String> = data::object_keys(&text, path)?.into_iter().collect();
    if let Some(unknown) = test_ids.iter().find(|id| !ids.contains(*id)) {
        return Err(TaskError::OfficialTestUnknownId {
            path: path.clone(),
            id: unknown.clone(),
            data_path: definition.data.path.clone(),
        });
    }
    Ok(Some(test_ids))
}

/// Reads one field of a record as it is.
fn field<'a>(
    definition: &Definition,
    record: &'a Record,
    name: &str,
    role: &str,
) -> Result<&'a FieldValue, TaskError> {
    record
        .fields
        .get(name)
        .ok_or_else(|| TaskError::MissingDataField {
            path: definition.data.path.clone(),
            location: record.location.clone(),
            field: name.to_string(),
            role: role.to_string(),
        })
}

/// Reads a field that must be a single string (ids, labels, group keys).
fn text_field(
    definition: &Definition,
    record: &Record,
    name: &str,
    role: &str,
) -> Result<String, TaskError> {
    match field(definition, record, name, role)? {
        FieldValue::Text(text) => Ok(text.clone()),
        other => Err(type_error(definition, record, name, other, "a string")),
    }
}

fn type_error(
    definition: &Definition,
    record: &Record,
    name: &str,
    found: &FieldValue,
    expected: &'static str,
) -> TaskError {
    TaskError::FieldType {
        path: definition.data.path.clone(),
        location: record.location.clone(),
        field: name.to_string(),
        found: found.kind(),
        expected,
    }
}

fn build_example(
    definition: &Definition,
    record: &Record,
) -> Result<(Example, SplitKey), TaskError> {
    let spec = &definition.data;
    let id = match &spec.id {
        Some(name) => text_field(definition, record, name, "data.id")?,
        None => record.natural_id.clone(),
    };
    let label = match &spec.label {
        Some(name) => {
            let value = text_field(definition, record, name, "data.label")?;
            let index = definition
                .labels
                .iter()
                .position(|label| label.value == value);
            Some(index.ok_or_else(|| TaskError::UnknownLabel {
                path: spec.path.clone(),
                location: record.location.clone(),
                label: value,
            })?)
        }
        None => None,
    };
    let answers = match &spec.answers {
        Some(name) => match field(definition, record, name, "data.answers")? {
            FieldValue::Text(answer) => vec![answer.clone()],
            FieldValue::List(answers) => answers.clone(),
            other => {
                return Err(type_error(
                    definition,
                    record,
                    name,
                    other,
                    "a list of strings",
                ));
            }
        },
        None => Vec::new(),
    };
    let mut values = BTreeMap::new();
    for (variable, source) in &spec.fields {
        let value = match field(
            definition,
            record,
            source,
            &format!("data.fields.{variable}"),
        )? {
            FieldValue::Text(text) => text.clone(),
            FieldValue::List(items) => items.join("\n"),
            other => {
                return Err(type_error(
                    definition,
                    record,
                    source,
                    other,
                    "a string or a list of strings",
                ));
            }
        };
        values.insert(variable.clone(), value);
    }
    let group = match &definition.splits.group_by {
        Some(name) => Some(text_field(definition, record, name, "splits.group_by")?),
        None => None,
    };
    let templates = &definition.prompt;
    let prompt = Prompt {
        system: templates
            .system
            .as_ref()
            .map(|system| system.render(&values)),
        user: templates.user.render(&values),
        assistant_prefix: templates.assistant_prefix.render(&values),
        chat: templates.chat,
    };
    let text = match definition.metric {
        Metric::Perplexity { .. } => prompt.user.clone(),
        Metric::Accuracy | Metric::Squad { .. } => String::new(),
    };
    let key = SplitKey {
        id: id.clone(),
        group,
    };
    let example = Example {
        id,
        prompt,
        label,
        answers,
        text,
    };
    Ok((example, key))
}
