//! Task loading and splitting, on the built-in tasks and on synthetic task files.

mod errors;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::*;

/// A task file (`task.toml`) and data files written to a fresh temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(task: &str, files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("task.toml"), task).expect("write task file");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write data file");
        }
        Fixture { dir }
    }

    fn task_path(&self) -> PathBuf {
        self.dir.path().join("task.toml")
    }

    fn load(&self) -> Result<Task, TaskError> {
        Task::from_path(&self.task_path())
    }

    /// An error message with the temporary directory written as `$DIR`.
    fn error(&self) -> String {
        let message = match self.load() {
            Ok(task) => panic!("task {} loaded, expected an error", task.name()),
            Err(error) => error.to_string(),
        };
        message.replace(&self.dir.path().display().to_string(), "$DIR")
    }
}

/// A two-label TSV task over `data.tsv`; `{seed}` and the split fractions are filled in.
fn tsv_task(seed: u64, fractions: [f64; 3], extra_splits: &str) -> String {
    let [calibration, search, test] = fractions;
    format!(
        r#"
name = "tiny"
metric = "accuracy"

[data]
path = "data.tsv"
format = "tsv"
label = "label"

[data.fields]
text = "sentence"

[prompt]
system = "You rate {{{{things}}}}."
user = "Say: {{text}}"
assistant_prefix = "It is"

[[labels]]
value = "0"
verbalizer = " no"

[[labels]]
value = "1"
verbalizer = " yes"

[splits]
seed = {seed}
calibration = {calibration}
search = {search}
test = {test}
{extra_splits}
"#
    )
}

/// `n` rows `sentence i\t(i % 2)` under a header.
fn tsv_rows(n: usize) -> String {
    let mut text = String::from("sentence\tlabel\n");
    for i in 0..n {
        text.push_str(&format!("sentence {i}\t{}\n", i % 2));
    }
    text
}

fn ids(task: &Task, split: Split) -> Vec<String> {
    task.examples(split)
        .map(|examples| examples.into_iter().map(|e| e.id).collect())
        .unwrap_or_default()
}

fn all_ids(task: &Task) -> [Vec<String>; 3] {
    Split::ALL.map(|split| ids(task, split))
}

fn check_disjoint(task: &Task) {
    let mut seen = BTreeSet::new();
    for id in all_ids(task).into_iter().flatten() {
        assert!(
            seen.insert(id.clone()),
            "{}: id {id} in two splits",
            task.name()
        );
    }
}

fn builtin(name: &str) -> Task {
    Task::builtin(name).unwrap_or_else(|error| panic!("built-in task {name}: {error}"))
}

fn check_builtin_sizes(name: &str, expected: [usize; 3]) {
    let task = builtin(name);
    assert_eq!(
        task.split_sizes().ok(),
        Some(expected),
        "split sizes of {name}"
    );
    check_disjoint(&task);
    assert_eq!(
        all_ids(&task),
        all_ids(&builtin(name)),
        "{name} splits are not deterministic"
    );
}

#[test]
fn builtin_tasks_have_the_documented_split_sizes() {
    check_builtin_sizes("sst2", [60614, 1600, 872]);
    check_builtin_sizes("sst2-dev", [348, 262, 262]);
    check_builtin_sizes("pubmedqa", [250, 250, 500]);
    check_builtin_sizes("boolq", [600, 400, 800]);
    check_builtin_sizes("xquad", [513, 308, 369]);
    check_builtin_sizes("wikitext2", [24, 19, 19]);
}

#[test]
fn builtin_metrics_and_labels() {
    let values = |name: &str| -> Vec<String> {
        builtin(name)
            .labels()
            .iter()
            .map(|l| format!("{}={}", l.value, l.verbalizer))
            .collect()
    };
    assert_eq!(values("sst2"), ["0= negative", "1= positive"]);
    assert_eq!(values("pubmedqa"), ["yes= yes", "no= no", "maybe= maybe"]);
    assert_eq!(values("boolq"), ["False= no", "True= yes"]);
    assert_eq!(
        *builtin("xquad").metric(),
        Metric::Squad { max_new_tokens: 32 }
    );
    assert_eq!(
        *builtin("wikitext2").metric(),
        Metric::Perplexity {
            window: 1024,
            stride: 1024
        }
    );
}

#[test]
fn pubmedqa_test_split_is_the_official_one() {
    let task = builtin("pubmedqa");
    let official_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/pubmedqa/test_ground_truth.json");
    let official: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(official_path).expect("official test file"))
            .expect("official test JSON");
    let test: BTreeSet<String> = ids(&task, Split::Test).into_iter().collect();
    assert_eq!(test, official.keys().cloned().collect::<BTreeSet<_>>());
    for example in task.examples(Split::Test).expect("test split") {
        let label = example.label.and_then(|index| task.labels().get(index));
        assert_eq!(
            label.map(|l| &l.value),
            official.get(&example.id),
            "label of {}",
            example.id
        );
    }
}

#[test]
fn prompts_are_rendered_from_the_source_fields() {
    let sst2 = builtin("sst2-dev");
    let first_row = Split::ALL
        .into_iter()
        .flat_map(|split| sst2.examples(split).expect("split"))
        .find(|e| e.id == "1")
        .expect("row 1 is in a split");
    assert_eq!(
        first_row.prompt,
        Prompt {
            system: None,
            user: "What is the sentiment of the following movie review, positive or negative?\n\n\
                   it 's a charming and often affecting journey . "
                .to_string(),
            assistant_prefix: "The sentiment of this review is".to_string(),
            chat: true,
            plain: None,
        }
    );
    assert_eq!(first_row.label, Some(1));

    let pubmedqa = builtin("pubmedqa").examples(Split::Test).expect("test");
    let example = pubmedqa
        .iter()
        .find(|e| e.id == "12377809")
        .expect("official test PMID");
    assert!(
        example
            .prompt
            .user
            .contains("\n\nBased on the abstract above, answer the question with yes, no or maybe.\nQuestion: "),
        "{}",
        example.prompt.user
    );
    assert!(
        example.prompt.user.ends_with('?'),
        "{}",
        example.prompt.user
    );
    assert!(
        example.prompt.user.matches('\n').count() >= 3,
        "CONTEXTS joined with newlines"
    );
    assert_eq!(example.label, Some(0));
}

#[test]
fn xquad_examples_keep_answers_and_never_share_an_article() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/xquad/xquad.en.json");
    let squad: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("xquad")).expect("xquad JSON");
    let mut title_of = BTreeMap::new();
    for article in squad["data"].as_array().expect("data") {
        for paragraph in article["paragraphs"].as_array().expect("paragraphs") {
            for qa in paragraph["qas"].as_array().expect("qas") {
                title_of.insert(
                    qa["id"].as_str().expect("id").to_string(),
                    article["title"].clone(),
                );
            }
        }
    }
    let task = builtin("xquad");
    let mut split_of_title = BTreeMap::new();
    for split in Split::ALL {
        for example in task.examples(split).expect("split") {
            assert!(!example.answers.is_empty(), "{} has no answers", example.id);
            assert!(
                example.prompt.user.contains(&example.answers[0]),
                "answer is a span"
            );
            let title = title_of[&example.id].to_string();
            let first = *split_of_title.entry(title.clone()).or_insert(split);
            assert_eq!(first, split, "article {title} in two splits");
        }
    }
    assert_eq!(split_of_title.len(), 48);
}

#[test]
fn wikitext_articles_cover_the_text() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/wikitext2/wikitext2-test-raw.txt");
    let raw = std::fs::read_to_string(path)
        .expect("wikitext")
        .replace("\r\n", "\n");
    let task = builtin("wikitext2");
    let mut articles: Vec<Example> = Split::ALL
        .into_iter()
        .flat_map(|s| task.examples(s).expect("split"))
        .collect();
    articles.sort_by_key(|article| raw.find(&article.text));
    assert_eq!(articles.len(), 62);
    let joined: String = articles.iter().map(|a| a.text.as_str()).collect();
    assert!(
        joined == raw.trim_start_matches('\n'),
        "articles do not concatenate to the text"
    );
    assert_eq!(articles[0].id, "Robert Boulter");
    for article in &articles {
        assert!(article.text.starts_with(&format!(" = {} = \n", article.id)));
        assert_eq!(article.prompt.user, article.text);
        assert!(!article.prompt.chat);
    }
}

const TEXT_TASK: &str = r#"
name = "articles"
metric = "perplexity"
window = 8

[data]
path = "data.txt"
format = "text"

[data.fields]
body = "text"

[prompt]
user = "{body}"
chat = false

[splits]
seed = 0
calibration = 0
search = 0
test = 1
"#;

#[test]
fn text_format_cuts_only_at_top_level_headings() {
    let text = "\r\n = One = \r\n\r\n x \r\n = = Part = = \r\n y\r\n = Two = \r\n z\r\n";
    let fixture = Fixture::new(TEXT_TASK, &[("data.txt", text)]);
    let task = fixture.load().expect("text task");
    let mut examples = task.examples(Split::Test).expect("test");
    examples.sort_by(|a, b| a.id.cmp(&b.id));
    let found: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.id.as_str(), e.text.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("One", " = One = \n\n x \n = = Part = = \n y\n"),
            ("Two", " = Two = \n z\n")
        ]
    );
    assert_eq!(
        *task.metric(),
        Metric::Perplexity {
            window: 8,
            stride: 8
        }
    );
}

fn check_sizes(n: usize, fractions: [f64; 3], extra: &str, expected: [usize; 3]) {
    let fixture = Fixture::new(
        &tsv_task(5, fractions, extra),
        &[("data.tsv", &tsv_rows(n))],
    );
    let task = fixture.load().expect("synthetic task");
    assert_eq!(
        task.split_sizes().ok(),
        Some(expected),
        "n {n}, {fractions:?} {extra}"
    );
    check_disjoint(&task);
}

#[test]
fn split_sizes_round_and_clamp() {
    check_sizes(872, [0.4, 0.3, 0.3], "", [348, 262, 262]);
    check_sizes(10, [0.5, 0.25, 0.25], "", [4, 3, 3]);
    check_sizes(10, [0.2, 0.2, 0.2], "", [2, 2, 2]);
    check_sizes(5, [0.0, 0.5, 0.5], "", [0, 2, 3]);
    check_sizes(1, [0.5, 0.5, 0.0], "", [0, 1, 0]);
    check_sizes(
        100,
        [0.4, 0.3, 0.3],
        "max_calibration = 7\nmax_test = 100",
        [7, 30, 30],
    );
}

#[test]
fn lowering_a_cap_keeps_a_prefix_and_moves_nothing() {
    let load = |extra: &str| {
        Fixture::new(
            &tsv_task(9, [0.4, 0.3, 0.3], extra),
            &[("data.tsv", &tsv_rows(200))],
        )
        .load()
        .expect("synthetic task")
    };
    let full = all_ids(&load(""));
    let capped = all_ids(&load("max_search = 10"));
    assert_eq!(capped[0], full[0]);
    assert_eq!(capped[2], full[2]);
    assert_eq!(capped[1].len(), 10);
    assert!(capped[1].iter().all(|id| full[1].contains(id)));
}

#[test]
fn splits_depend_on_the_seed_only() {
    let load = |seed| {
        let fixture = Fixture::new(
            &tsv_task(seed, [0.4, 0.3, 0.3], ""),
            &[("data.tsv", &tsv_rows(50))],
        );
        all_ids(&fixture.load().expect("synthetic task"))
    };
    assert_eq!(load(1), load(1));
    assert_ne!(load(1), load(2));
    let mut reversed = String::from("sentence\tlabel\n");
    for line in tsv_rows(50)
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        reversed.push_str(line);
        reversed.push('\n');
    }
    let task = tsv_task(1, [0.4, 0.3, 0.3], "").replace("[data]", "[data]\nid = \"sentence\"");
    let forward = Fixture::new(&task, &[("data.tsv", &tsv_rows(50))])
        .load()
        .expect("forward");
    let backward = Fixture::new(&task, &[("data.tsv", &reversed)])
        .load()
        .expect("backward");
    assert_eq!(
        all_ids(&forward),
        all_ids(&backward),
        "splits follow ids, not file order"
    );
}

#[test]
fn group_by_keeps_groups_together() {
    let mut jsonl = String::new();
    for i in 0..60 {
        jsonl.push_str(&format!(
            "{{\"q\": \"question {i}\", \"topic\": \"topic {}\", \"gold\": {}}}\n",
            i % 12,
            i % 2 == 0
        ));
    }
    let task = tsv_task(3, [0.5, 0.25, 0.25], "group_by = \"topic\"")
        .replace("data.tsv", "data.jsonl")
        .replace("format = \"tsv\"", "format = \"jsonl\"")
        .replace("label = \"label\"", "label = \"gold\"")
        .replace("text = \"sentence\"", "text = \"q\"")
        .replace("value = \"0\"", "value = \"false\"")
        .replace("value = \"1\"", "value = \"true\"");
    let fixture = Fixture::new(&task, &[("data.jsonl", &jsonl)]);
    let loaded = fixture.load().expect("grouped task");
    assert_eq!(loaded.split_sizes().ok(), Some([30, 15, 15]));
    for (split, ids) in Split::ALL.into_iter().zip(all_ids(&loaded)) {
        let mut topics = BTreeSet::new();
        for id in ids {
            let row: usize = id.parse().expect("row number");
            topics.insert((row - 1) % 12);
        }
        assert_eq!(
            topics.len() * 5,
            loaded.split_sizes().expect("sizes")[split.index()]
        );
    }
    let example = &loaded.examples(Split::Calibration).expect("calibration")[0];
    assert_eq!(example.prompt.system.as_deref(), Some("You rate {things}."));
    assert!(example.prompt.user.starts_with("Say: question "));
}

#[test]
fn resolve_takes_paths_and_builtin_names() {
    let fixture = Fixture::new(
        &tsv_task(0, [0.4, 0.3, 0.3], ""),
        &[("data.tsv", &tsv_rows(10))],
    );
    let path = fixture.task_path();
    let by_path = Task::resolve(path.to_str().expect("UTF-8 path")).expect("by path");
    assert_eq!(by_path.name(), "tiny");
    assert_eq!(by_path.path(), path);
    assert_eq!(Task::resolve("sst2").expect("built in").name(), "sst2");
}

#[test]
fn split_names_round_trip() {
    for split in Split::ALL {
        assert_eq!(split.to_string().parse::<Split>().ok(), Some(split));
    }
    assert_eq!(
        "train".parse::<Split>().map_err(|e| e.to_string()),
        Err("unknown split `train`; use calibration, search or test".to_string())
    );
}

/// The tiny task with a file per split (`cal.tsv`, `search.tsv`, `test.tsv`) and `splits`.
fn per_split_task(splits: &str) -> String {
    tsv_task(0, [0.4, 0.3, 0.3], "")
        .replace(
            "path = \"data.tsv\"\n",
            "",
        )
        .replace(
            "[prompt]",
            "[data.sources]\ncalibration = \"cal.tsv\"\nsearch = \"search.tsv\"\ntest = \"test.tsv\"\n\n[prompt]",
        )
        .replace("calibration = 0.4\nsearch = 0.3\ntest = 0.3\n", splits)
}

/// Rows `<prefix> <i> <i words of filler>\t(i % 2)`: row i has i + 2 words.
fn worded_rows(prefix: &str, n: usize) -> String {
    let mut text = String::from("sentence\tlabel\n");
    for i in 0..n {
        let filler = vec!["w"; i].join(" ");
        text.push_str(&format!("{prefix} {i} {filler}\t{}\n", i % 2));
    }
    text
}

#[test]
fn a_file_per_split_keeps_each_file_whole_filtered_and_capped() {
    let splits = "max_search = 3\n\n[splits.min_words]\nsearch = 6\n";
    let fixture = Fixture::new(
        &per_split_task(splits),
        &[
            ("cal.tsv", &worded_rows("cal", 5)),
            ("search.tsv", &worded_rows("search", 10)),
            ("test.tsv", &worded_rows("test", 4)),
        ],
    );
    let task = fixture.load().expect("task loads");
    assert_eq!(task.split_sizes().expect("sizes"), [5, 3, 4]);
    check_disjoint(&task);
    let search = task.examples(Split::Search).expect("search split");
    for example in &search {
        assert!(example.id.starts_with("search:"), "{}", example.id);
        let words = example
            .prompt
            .user
            .trim_start_matches("Say: ")
            .split_whitespace()
            .count();
        assert!(words >= 6, "{} has {words} words", example.id);
    }
    // The three kept are the first in hash order of the six with enough words.
    let mut eligible: Vec<(u64, String)> = (4..10)
        .map(|row| {
            let id = format!("search:{}", row + 1);
            (split::split_hash(0, &id), id)
        })
        .collect();
    eligible.sort();
    let expected: Vec<String> = eligible.into_iter().take(3).map(|(_, id)| id).collect();
    assert_eq!(ids(&task, Split::Search), expected);
    assert_eq!(
        all_ids(&task),
        all_ids(&fixture.load().expect("task loads"))
    );
}

#[test]
fn a_test_input_seen_in_search_is_refused() {
    let fixture = Fixture::new(
        &per_split_task(""),
        &[
            ("cal.tsv", &worded_rows("cal", 3)),
            ("search.tsv", &worded_rows("shared", 3)),
            ("test.tsv", &worded_rows("shared", 2)),
        ],
    );
    let message = fixture.error();
    assert!(
        message.contains("test example test:")
            && message.contains("same input as search example search:")
            && message.contains("remove the duplicate"),
        "{message}"
    );
}

#[test]
fn a_file_per_split_refuses_fractions_and_a_single_path() {
    let files = [
        ("cal.tsv", worded_rows("cal", 3)),
        ("search.tsv", worded_rows("search", 3)),
        ("test.tsv", worded_rows("test", 3)),
        ("data.tsv", tsv_rows(10)),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let with_fraction = per_split_task("search = 0.3\n");
    assert_eq!(
        Fixture::new(&with_fraction, &files).error(),
        "task file $DIR/task.toml: `splits.search` conflicts with [data.sources]; remove it: with a file per split, every example of a file belongs to its split"
    );
    let with_path = per_split_task("").replace("[data]\n", "[data]\npath = \"data.tsv\"\n");
    assert_eq!(
        Fixture::new(&with_path, &files).error(),
        "task file $DIR/task.toml: `data.path` conflicts with [data.sources]; remove data.path (each split reads its own file) or [data.sources]"
    );
    let no_test = per_split_task("").replace("test = \"test.tsv\"\n", "");
    assert_eq!(
        Fixture::new(&no_test, &files).error(),
        "task file $DIR/task.toml: missing field `data.sources.test`; add calibration, search and test paths to [data.sources]"
    );
    let missing_file = per_split_task("").replace("test.tsv", "absent.tsv");
    let message = Fixture::new(&missing_file, &files).error();
    assert!(message.contains("absent.tsv"), "{message}");
    let min_words_on_one_file = tsv_task(0, [0.4, 0.3, 0.3], "\n[splits.min_words]\nsearch = 3\n");
    assert_eq!(
        Fixture::new(&min_words_on_one_file, &files).error(),
        "task file $DIR/task.toml: `[splits.min_words]` conflicts with data.path; give each split its own file under [data.sources], or remove [splits.min_words]"
    );
}
