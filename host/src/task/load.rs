//! From a validated definition to split examples: reads the data, renders the prompts,
//! checks ids and labels, and applies the split rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::data::{self, FieldValue, Record};
use super::definition::{DataFile, DataFiles, Definition};
use super::split::{self, SplitKey};
use super::{Example, Metric, Prompt, Split, TaskError};

/// The examples of calibration, search and test, each in its split order.
pub(crate) fn split_examples(definition: &Definition) -> Result<[Vec<Example>; 3], TaskError> {
    match &definition.data.files {
        DataFiles::One(file) => split_one_file(definition, file),
        DataFiles::PerSplit(files) => split_per_file(definition, files),
    }
}

/// One file cut into the three splits by the seeded hash (module docs, "Splits").
fn split_one_file(
    definition: &Definition,
    file: &DataFile,
) -> Result<[Vec<Example>; 3], TaskError> {
    let records = read_data(definition, file)?;
    let mut examples = Vec::with_capacity(records.len());
    let mut keys = Vec::with_capacity(records.len());
    let mut seen = BTreeSet::new();
    for record in &records {
        let (example, key, _) = build_example(definition, &file.path, record)?;
        if !seen.insert(example.id.clone()) {
            return Err(TaskError::DuplicateId {
                path: file.path.clone(),
                id: example.id,
            });
        }
        examples.push(Some(example));
        keys.push(key);
    }
    let official_test = read_official_test(definition, file, &seen)?;
    let assignment = split::assign(&keys, &definition.splits, official_test.as_ref());
    Ok(assignment.map(|indices| {
        indices
            .into_iter()
            .filter_map(|index| examples.get_mut(index).and_then(Option::take))
            .collect()
    }))
}

/// A file per split: every example of a file with enough words belongs to its split, in the
/// seeded hash order of its id (`<split>:<natural id>`), up to the split's cap. A test example
/// whose input equals one of calibration or search is an error.
fn split_per_file(
    definition: &Definition,
    files: &[DataFile; 3],
) -> Result<[Vec<Example>; 3], TaskError> {
    let spec = &definition.splits;
    let mut splits: [Vec<(Example, String)>; 3] = Default::default();
    for (index, split) in Split::ALL.into_iter().enumerate() {
        let file = &files[index];
        let mut seen = BTreeSet::new();
        let mut examples = Vec::new();
        for record in &read_data(definition, file)? {
            let (mut example, _, input) = build_example(definition, &file.path, record)?;
            example.id = format!("{split}:{}", example.id);
            if !seen.insert(example.id.clone()) {
                return Err(TaskError::DuplicateId {
                    path: file.path.clone(),
                    id: example.id,
                });
            }
            let words = input.split_whitespace().count();
            if spec.min_words[index].is_none_or(|min| words >= min) {
                examples.push((split::split_hash(spec.seed, &example.id), example, input));
            }
        }
        examples.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        if let Some(cap) = spec.caps[index] {
            examples.truncate(cap);
        }
        splits[index] = examples
            .into_iter()
            .map(|(_, e, input)| (e, input))
            .collect();
    }
    let [calibration, search, test] = &splits;
    let mut seen_inputs: HashMap<&str, (Split, &str)> = HashMap::new();
    for (split, examples) in [(Split::Calibration, calibration), (Split::Search, search)] {
        for (example, input) in examples {
            seen_inputs.insert(input.as_str(), (split, example.id.as_str()));
        }
    }
    for (example, input) in test {
        if let Some((split, other)) = seen_inputs.get(input.as_str()) {
            return Err(TaskError::SplitOverlap {
                task: definition.name.clone(),
                id: example.id.clone(),
                split: *split,
                other: (*other).to_owned(),
            });
        }
    }
    Ok(splits.map(|examples| examples.into_iter().map(|(example, _)| example).collect()))
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

fn read_data(definition: &Definition, file: &DataFile) -> Result<Vec<Record>, TaskError> {
    let text = read_file("data file", &file.given, &file.path, &definition.path)?;
    let records = data::parse_records(&text, &file.path, definition.data.format)?;
    if records.is_empty() {
        return Err(TaskError::NoExamples {
            path: file.path.clone(),
        });
    }
    Ok(records)
}

fn read_official_test(
    definition: &Definition,
    file: &DataFile,
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
            data_path: file.path.clone(),
        });
    }
    Ok(Some(test_ids))
}

/// Reads one field of a record as it is.
fn field<'a>(
    data_path: &Path,
    record: &'a Record,
    name: &str,
    role: &str,
) -> Result<&'a FieldValue, TaskError> {
    record
        .fields
        .get(name)
        .ok_or_else(|| TaskError::MissingDataField {
            path: data_path.to_path_buf(),
            location: record.location.clone(),
            field: name.to_string(),
            role: role.to_string(),
        })
}

/// Reads a field that must be a single string (ids, labels, group keys).
fn text_field(
    data_path: &Path,
    record: &Record,
    name: &str,
    role: &str,
) -> Result<String, TaskError> {
    match field(data_path, record, name, role)? {
        FieldValue::Text(text) => Ok(text.clone()),
        other => Err(type_error(data_path, record, name, other, "a string")),
    }
}

fn type_error(
    data_path: &Path,
    record: &Record,
    name: &str,
    found: &FieldValue,
    expected: &'static str,
) -> TaskError {
    TaskError::FieldType {
        path: data_path.to_path_buf(),
        location: record.location.clone(),
        field: name.to_string(),
        found: found.kind(),
        expected,
    }
}

/// The example a record stands for, its split key, and its input: the values of the prompt's
/// fields joined by newlines (what `min_words` counts and the overlap check compares).
fn build_example(
    definition: &Definition,
    data_path: &Path,
    record: &Record,
) -> Result<(Example, SplitKey, String), TaskError> {
    let spec = &definition.data;
    let id = match &spec.id {
        Some(name) => text_field(data_path, record, name, "data.id")?,
        None => record.natural_id.clone(),
    };
    let label = match &spec.label {
        Some(name) => {
            let value = text_field(data_path, record, name, "data.label")?;
            let index = definition
                .labels
                .iter()
                .position(|label| label.value == value);
            Some(index.ok_or_else(|| TaskError::UnknownLabel {
                path: data_path.to_path_buf(),
                location: record.location.clone(),
                label: value,
            })?)
        }
        None => None,
    };
    let answers = match &spec.answers {
        Some(name) => match field(data_path, record, name, "data.answers")? {
            FieldValue::Text(answer) => vec![answer.clone()],
            FieldValue::List(answers) => answers.clone(),
            other => {
                return Err(type_error(
                    data_path,
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
            data_path,
            record,
            source,
            &format!("data.fields.{variable}"),
        )? {
            FieldValue::Text(text) => text.clone(),
            FieldValue::List(items) => items.join("\n"),
            other => {
                return Err(type_error(
                    data_path,
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
        Some(name) => Some(text_field(data_path, record, name, "splits.group_by")?),
        None => None,
    };
    let input = values.values().cloned().collect::<Vec<_>>().join("\n");
    let templates = &definition.prompt;
    let prompt = Prompt {
        system: templates
            .system
            .as_ref()
            .map(|system| system.render(&values)),
        user: templates.user.render(&values),
        assistant_prefix: templates.assistant_prefix.render(&values),
        chat: templates.chat,
        plain: templates.plain.as_ref().map(|plain| plain.render(&values)),
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
    Ok((example, key, input))
}
