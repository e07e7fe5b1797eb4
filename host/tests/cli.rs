//! The `whittle` binary end to end. `real_model_*` tests use SmolLM2-135M-Instruct (fetched
//! into the model cache on first use, 98 MB); the others stop before loading any model.

use std::process::{Command, Output};

fn whittle(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_whittle"))
        .args(args)
        .output()
    {
        Ok(output) => output,
        Err(error) => panic!("cannot run whittle: {error}"),
    }
}

fn check_error(args: &[&str], expected: &[&str]) {
    let output = whittle(args);
    assert!(!output.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    for needle in expected {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_task_lists_the_built_in_ones() {
    check_error(
        &["eval", "--task", "imdb", "--split", "test"],
        &["imdb", "sst2", "pubmedqa", "boolq", "xquad", "wikitext2"],
    );
}

#[test]
fn missing_model_file_names_the_fix() {
    check_error(
        &[
            "eval",
            "--task",
            "sst2",
            "--model",
            "/nonexistent/model.gguf",
        ],
        &["cannot open model file", "--model PATH"],
    );
}

#[test]
fn corrupt_model_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("corrupt.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00garbage").expect("write");
    let path = path.to_string_lossy().into_owned();
    check_error(
        &["eval", "--task", "sst2", "--model", &path],
        &["not a readable GGUF file"],
    );
}

#[test]
fn malformed_task_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "name = \"broken\"\ndescription = \"no metric\"\n").expect("write");
    let path = path.to_string_lossy().into_owned();
    check_error(&["eval", "--task", &path], &["broken.toml", "metric"]);
}

#[test]
fn real_model_eval_prints_json_on_the_last_line() {
    let output = whittle(&[
        "eval", "--task", "sst2", "--split", "test", "--limit", "12", "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last).expect("JSON last line");
    assert_eq!(report["task"], "sst2");
    assert_eq!(report["split"], "test");
    assert_eq!(report["n"], 12);
    assert_eq!(report["metric"], "accuracy");
    let value = report["value"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&value), "{value}");
    assert!(report["details"]["accuracy_uncalibrated"].is_number());
}

#[test]
fn prune_rejects_bad_arguments_before_loading_a_model() {
    check_error(
        &["prune", "--board", "jetson-nano-2gb"],
        &[
            "jetson-nano-2gb",
            "jetson-orin-nano-8gb",
            "raspberry-pi-5-8gb",
            "stm32h743",
        ],
    );
    check_error(
        &["prune", "--epsilon", "1.5"],
        &["--epsilon 1.5 is outside (0, 1)"],
    );
    check_error(&["prune", "--epsilon", "0"], &["outside (0, 1)"]);
    check_error(
        &["prune", "--task", "wikitext2"],
        &["needs a classification task"],
    );
    // The dtype is the bundle format's enum, parsed by clap, which names the values it takes.
    let output = whittle(&["prune", "--dtype", "int4"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("invalid value 'int4' for '--dtype <DTYPE>'")
            && stderr.contains("[possible values: f32, q8, q4]"),
        "{stderr}"
    );
    check_error(
        &["prune", "--board", "rpi5", "--memory-budget-mb", "9000"],
        &[
            "--memory-budget-mb 9000 contradicts board raspberry-pi-5-8gb",
            "8590 MB",
        ],
    );
    check_error(
        &["prune", "--memory-budget-mb=-5"],
        &["--memory-budget-mb -5 must be a positive"],
    );
    check_error(
        &["prune", "--uniform-keep", "1.5"],
        &["--uniform-keep 1.5 is outside (0, 1]"],
    );
    check_error(
        &["prune", "--latency-budget-ms", "0"],
        &["--latency-budget-ms 0 must be a positive"],
    );
    check_error(
        &["prune", "--board", "/nonexistent/board.toml"],
        &["cannot read board profile /nonexistent/board.toml"],
    );
    check_error(
        &["prune", "--recover-tokens", "0"],
        &["--recover-tokens 0 trains on nothing"],
    );
    check_error(
        &[
            "prune",
            "--recover-objective",
            "labels",
            "--reading",
            "verbalizer",
        ],
        &["--recover-objective labels", "--reading head"],
    );
    check_error(
        &["prune", "--no-recover", "--recover-tokens", "1024"],
        &["--no-recover skips the recovery", "drop one or the other"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let out = file.join("out").to_string_lossy().into_owned();
    check_error(&["prune", "--out", &out], &["cannot be created", "--out"]);
}

#[test]
fn prune_needs_a_search_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.tsv");
    let rows: String = (0..20).map(|i| format!("text {i}\t{}\n", i % 2)).collect();
    std::fs::write(&data, format!("sentence\tlabel\n{rows}")).expect("write data");
    let task = dir.path().join("nosearch.toml");
    std::fs::write(
        &task,
        "name = \"nosearch\"\ndescription = \"\"\nmetric = \"accuracy\"\n\n[data]\npath = \"data.tsv\"\nformat = \"tsv\"\nlabel = \"label\"\n\n[data.fields]\nsentence = \"sentence\"\n\n[prompt]\nuser = \"{sentence}\"\nassistant_prefix = \"\"\nchat = true\n\n[[labels]]\nvalue = \"0\"\nverbalizer = \" no\"\n\n[[labels]]\nvalue = \"1\"\nverbalizer = \" yes\"\n\n[splits]\nseed = 0\ncalibration = 0.5\nsearch = 0.0\ntest = 0.5\n",
    )
    .expect("write task");
    let task = task.to_string_lossy().into_owned();
    check_error(
        &["prune", "--task", &task],
        &["split `search`", "is empty", "splits.search"],
    );
}

#[test]
fn real_model_prune_refuses_a_latency_budget_no_pruning_can_meet() {
    check_error(
        &["prune", "--board", "rpi5", "--latency-budget-ms", "0.01"],
        &["does not fit", "budget is 0.010 ms", "too slow"],
    );
}

#[test]
fn real_model_prune_says_by_how_much_a_microcontroller_is_too_small() {
    check_error(
        &["prune", "--board", "stm32h743", "--task", "sst2"],
        &["does not fit", "stm32h743", "too large"],
    );
}
