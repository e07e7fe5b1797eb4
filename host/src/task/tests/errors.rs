//! Every bad input yields a one-line error naming the cause and the fix.

use super::*;

const FRACTIONS: [f64; 3] = [0.4, 0.3, 0.3];

fn check_error(task: &str, files: &[(&str, &str)], expected: &str) {
    let fixture = Fixture::new(task, files);
    let message = fixture.error();
    assert_eq!(message, expected);
    assert!(!message.contains('\n'), "multi-line error: {message}");
}

/// The synthetic TSV task with `from` replaced by `to`, over ten good rows.
fn check_edited(from: &str, to: &str, expected: &str) {
    let task = tsv_task(0, FRACTIONS, "");
    assert!(task.contains(from), "{from:?} is not in the task file");
    check_error(
        &task.replacen(from, to, 1),
        &[("data.tsv", &tsv_rows(10))],
        expected,
    );
}

fn check_data(file: &str, contents: &str, edit: (&str, &str), expected: &str) {
    let task = tsv_task(0, FRACTIONS, "").replacen(edit.0, edit.1, 1);
    check_error(&task, &[(file, contents)], expected);
}

#[test]
fn unknown_names() {
    assert_eq!(
        Task::builtin("sst5")
            .map(|t| t.name().to_string())
            .map_err(|e| e.to_string()),
        Err(
            "unknown task `sst5`; use one of sst2, sst2-dev, pubmedqa, boolq, xquad, wikitext2 or \
             a path to a .toml task file"
                .to_string()
        )
    );
    let missing = Task::resolve("/nonexistent/task.toml")
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        missing.as_ref().is_err_and(|e| e.starts_with(
            "task file /nonexistent/task.toml: cannot read it (No such file or directory"
        )),
        "{missing:?}"
    );
}

#[test]
fn missing_fields_say_what_to_add() {
    check_edited(
        "metric = \"accuracy\"",
        "",
        "task file $DIR/task.toml: missing field `metric`; add metric = \"accuracy\" | \"squad\" | \"perplexity\"",
    );
    check_edited(
        "name = \"tiny\"",
        "",
        "task file $DIR/task.toml: missing field `name`; add name = \"my-task\"",
    );
    check_edited(
        "label = \"label\"",
        "",
        "task file $DIR/task.toml: missing field `data.label`; add label = \"<source field holding the label>\" to [data]",
    );
    check_edited(
        "seed = 0",
        "",
        "task file $DIR/task.toml: missing field `splits.seed`; add seed = 0 (any integer) to [splits]",
    );
    check_edited(
        "user = \"Say: {text}\"",
        "",
        "task file $DIR/task.toml: missing field `prompt.user`; add user = \"...{field}...\" to [prompt]",
    );
}

#[test]
fn toml_errors_name_line_and_column() {
    check_edited(
        "[prompt]",
        "[prompt]\ncolour = \"blue\"",
        "task file $DIR/task.toml line 14 column 1: unknown field `colour`, expected one of `system`, `user`, `assistant_prefix`, `chat`, `plain`; fix the task file",
    );
    check_edited(
        "metric = \"accuracy\"",
        "metric = \"acc\"",
        "task file $DIR/task.toml line 3 column 10: unknown variant `acc`, expected one of `accuracy`, `squad`, `perplexity`; fix the task file",
    );
    check_edited(
        "name = \"tiny\"",
        "name = \"tiny",
        "task file $DIR/task.toml line 2 column 13: invalid basic string, expected `\"`; fix the task file",
    );
}

#[test]
fn metric_options_must_fit_the_metric() {
    check_edited(
        "metric = \"accuracy\"",
        "metric = \"accuracy\"\nwindow = 512",
        "task file $DIR/task.toml: `window` applies only to metric = \"perplexity\", but the metric is \"accuracy\"; remove it",
    );
    check_error(
        &TEXT_TASK.replace("window = 8", "window = 8\nstride = 16"),
        &[("data.txt", " = A = \n")],
        "task file $DIR/task.toml: stride = 16 is invalid; it must be at most the window (8)",
    );
    check_error(
        &TEXT_TASK.replace("window = 8", "window = 0"),
        &[("data.txt", " = A = \n")],
        "task file $DIR/task.toml: window = 0 is invalid; it must be a positive integer",
    );
}

#[test]
fn labels_must_be_usable() {
    let task = tsv_task(0, FRACTIONS, "");
    let without_labels = task
        .split("[[labels]]")
        .next()
        .map(|head| {
            format!("{head}[splits]\nseed = 0\ncalibration = 0.5\nsearch = 0.5\ntest = 0\n")
        })
        .expect("head");
    check_error(
        &without_labels,
        &[("data.tsv", &tsv_rows(4))],
        "task file $DIR/task.toml: metric \"accuracy\" needs labels; add [[labels]] entries with value = \"...\" and verbalizer = \" ...\"",
    );
    check_edited(
        "verbalizer = \" yes\"",
        "verbalizer = \"\"",
        "task file $DIR/task.toml: label \"1\" has an empty verbalizer; set it to the text the model should produce, e.g. verbalizer = \" yes\"",
    );
    check_edited(
        "value = \"1\"",
        "value = \"0\"",
        "task file $DIR/task.toml: label value \"0\" appears twice in [[labels]]; keep one entry per value",
    );
}

#[test]
fn templates_must_parse_and_name_known_fields() {
    check_edited(
        "Say: {text}",
        "Say: {txt}",
        "task file $DIR/task.toml: prompt.user uses placeholder {txt}, which is not a field (available: text); add txt = \"<source field>\" to [data.fields]",
    );
    check_edited(
        "It is",
        "It is {",
        "task file $DIR/task.toml: prompt.assistant_prefix at byte 6: unmatched `{`; write {{ or }} for a literal brace",
    );
}

#[test]
fn split_fractions_must_be_fractions_summing_to_at_most_one() {
    check_edited(
        "search = 0.3",
        "search = 0.4",
        "task file $DIR/task.toml: the split fractions sum to 1.1, above 1; lower splits.calibration, splits.search or splits.test",
    );
    check_edited(
        "test = 0.3",
        "test = -0.3",
        "task file $DIR/task.toml: splits.test = -0.3 is invalid; it must be a fraction between 0 and 1",
    );
    check_edited(
        "test = 0.3",
        "test = 0.3\nofficial_test = \"test.json\"",
        "task file $DIR/task.toml: [splits] has both test and official_test; remove test (the official test split is used as is)",
    );
}

#[test]
fn empty_split_is_an_error_when_asked_for() {
    let fixture = Fixture::new(
        &tsv_task(0, [0.5, 0.5, 0.0], ""),
        &[("data.tsv", &tsv_rows(4))],
    );
    let task = fixture.load().expect("task");
    assert_eq!(
        task.examples(Split::Test)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(
            "split `test` of task `tiny` is empty; raise splits.test (or its cap) or add data"
                .to_string()
        )
    );
}

#[test]
fn missing_data_file_says_where_it_was_looked_for() {
    check_error(
        &tsv_task(0, FRACTIONS, ""),
        &[],
        "data file $DIR/data.tsv not found (looked for `data.tsv` relative to the directory of task file $DIR/task.toml); fix the path or put the file there",
    );
}

#[test]
fn tsv_rows_must_match_the_header() {
    check_data(
        "data.tsv",
        "sentence\tlabel\ngood\t1\n\nbad\n",
        ("", ""),
        "data file $DIR/data.tsv line 4: expected 2 tab-separated columns, found 1; fix or remove the row",
    );
    check_data(
        "data.tsv",
        "sentence\tlabel\ngood\t1\nodd\t3\n",
        ("", ""),
        "data file $DIR/data.tsv: label \"3\" on line 3 has no verbalizer; add a [[labels]] entry with value = \"3\"",
    );
    check_data(
        "data.tsv",
        "text\tlabel\ngood\t1\n",
        ("", ""),
        "data file $DIR/data.tsv line 2: no field `sentence` (named by data.fields.text in the task file); add it to the data or fix the task file",
    );
    check_data(
        "data.tsv",
        "",
        ("", ""),
        "data file $DIR/data.tsv: no examples found; check the file and [data] format",
    );
}

fn jsonl_edit() -> (&'static str, &'static str) {
    (
        "path = \"data.tsv\"\nformat = \"tsv\"",
        "path = \"data.jsonl\"\nformat = \"jsonl\"",
    )
}

#[test]
fn json_errors_name_line_and_column() {
    check_data(
        "data.jsonl",
        "{\"sentence\": \"a\", \"label\": 1}\n\n{\"sentence\": \"b\" \"label\": 0}\n",
        jsonl_edit(),
        "data file $DIR/data.jsonl line 3 column 18: expected `,` or `}`; fix the JSON or check [data] format",
    );
    check_data(
        "data.jsonl",
        "[1, 2]\n",
        jsonl_edit(),
        "data file $DIR/data.jsonl line 1: expected a JSON object on every line; check [data] format",
    );
    check_data(
        "data.jsonl",
        "{\"sentence\": {\"nested\": 1}, \"label\": 1}\n",
        jsonl_edit(),
        "data file $DIR/data.jsonl line 1: field `sentence` is an object, expected a string or a list of strings; fix the data or map another field",
    );
    check_data(
        "data.json",
        "{\"7\": {\"sentence\": \"a\", \"label\": 1},\n \"8\": [}",
        (
            "path = \"data.tsv\"\nformat = \"tsv\"",
            "path = \"data.json\"\nformat = \"pubmedqa\"",
        ),
        "data file $DIR/data.json line 2 column 8: expected value; fix the JSON or check [data] format",
    );
}

#[test]
fn ids_must_be_unique() {
    check_data(
        "data.tsv",
        "sentence\tlabel\nsame\t1\nsame\t0\n",
        ("[data]", "[data]\nid = \"sentence\""),
        "data file $DIR/data.tsv: id `same` occurs twice; ids must be unique (point data.id at a unique field, or drop it to use row numbers)",
    );
}

#[test]
fn official_test_ids_must_be_in_the_data() {
    let task =
        tsv_task(0, FRACTIONS, "").replacen("test = 0.3", "official_test = \"test.json\"", 1);
    check_error(
        &task,
        &[
            ("data.tsv", &tsv_rows(4)),
            ("test.json", "{\"2\": \"x\", \"99\": \"y\"}"),
        ],
        "official test file $DIR/test.json: id `99` is not in data file $DIR/data.tsv; fix one of the two files",
    );
    check_error(
        &task,
        &[("data.tsv", &tsv_rows(4)), ("test.json", "[\"2\"]")],
        "data file $DIR/test.json line 1: expected a JSON object whose keys are ids; check [data] format",
    );
    let fixture = Fixture::new(
        &task,
        &[
            ("data.tsv", &tsv_rows(10)),
            ("test.json", "{\"2\": 0, \"5\": 1, \"9\": 0}"),
        ],
    );
    let loaded = fixture.load().expect("official test task");
    assert_eq!(loaded.split_sizes().ok(), Some([3, 2, 3]));
    let mut test = ids(&loaded, Split::Test);
    test.sort();
    assert_eq!(test, ["2", "5", "9"]);
}

#[test]
fn text_before_the_first_heading_is_an_error() {
    check_error(
        TEXT_TASK,
        &[("data.txt", "\n preface \n = A = \n body\n")],
        "data file $DIR/data.txt line 2: text before the first ` = Title = ` heading; add a heading line above it or remove it",
    );
}

#[test]
fn unreadable_and_misshapen_data_files() {
    let fixture = Fixture::new(&tsv_task(0, FRACTIONS, ""), &[]);
    std::fs::write(fixture.dir.path().join("data.tsv"), [0xff, 0xfe]).expect("write");
    assert_eq!(
        fixture.error(),
        "data file $DIR/data.tsv: cannot read it (stream did not contain valid UTF-8); check its permissions and encoding (UTF-8)"
    );
    let squad = tsv_task(0, FRACTIONS, "").replacen(
        "path = \"data.tsv\"\nformat = \"tsv\"",
        "path = \"data.json\"\nformat = \"squad\"",
        1,
    );
    check_error(
        &squad,
        &[("data.json", "{\"version\": \"1.1\"}")],
        "data file $DIR/data.json line 1 column 18: missing field `data`; fix the JSON or check [data] format",
    );
}
