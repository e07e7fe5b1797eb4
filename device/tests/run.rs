//! `whittle-device run` on a small synthetic bundle: one `--text`, and many inputs from a file
//! or standard input as JSON lines with the bundle loaded once.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use whittle_runtime::format::Dtype;
use whittle_runtime::{Architecture, ModelConfig, writer};

const CONFIG: ModelConfig = ModelConfig {
    arch: Architecture::LLAMA,
    n_layers: 2,
    hidden_size: 64,
    intermediate_size: 96,
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 16,
    vocab_size: 300,
    max_position_embeddings: 2048,
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-5,
};

fn device(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_whittle-device"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("whittle-device starts");
    let mut input = child.stdin.take().expect("a stdin pipe");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("stdin written");
    drop(input);
    child.wait_with_output().expect("whittle-device ends")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string()
}

fn write_bundle(dir: &Path) -> String {
    let bytes = writer::synthetic_bundle(&CONFIG, Dtype::Q8).expect("a synthetic bundle");
    let path = dir.join("tiny.wbundle");
    std::fs::write(&path, bytes).expect("bundle written");
    path.to_string_lossy().into_owned()
}

#[test]
fn many_inputs_answer_as_json_lines_like_one_text_each() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let bundle = write_bundle(dir.path());
    let inputs = ["the film is a delight", "dull and long", "x"];
    let file = dir.path().join("inputs.txt");
    std::fs::write(&file, inputs.join("\n") + "\n").expect("inputs written");
    let file = file.to_string_lossy().into_owned();

    let from_file = device(&["run", &bundle, "--file", &file, "--threads", "1"], None);
    assert!(from_file.status.success(), "{from_file:?}");
    let from_stdin = device(
        &["run", &bundle, "--file", "-", "--threads", "1"],
        Some(&inputs.join("\n")),
    );
    assert!(from_stdin.status.success(), "{from_stdin:?}");
    // Each line times its input (`ms`); everything else is the same from a file and a pipe.
    let answers = |output: &Output| -> Vec<serde_json::Value> {
        text(output)
            .lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                let ms = value
                    .as_object_mut()
                    .and_then(|object| object.remove("ms"))
                    .and_then(|ms| ms.as_f64());
                assert!(ms.is_some_and(|ms| ms >= 0.0), "{line} has no time");
                value
            })
            .collect()
    };
    let lines = answers(&from_file);
    assert_eq!(lines, answers(&from_stdin));
    assert_eq!(lines.len(), inputs.len());
    for (index, (line, input)) in lines.iter().zip(inputs).enumerate() {
        assert_eq!(line["line"], index + 1);
        let one = device(&["run", &bundle, "--text", input, "--threads", "1"], None);
        assert!(one.status.success(), "{one:?}");
        assert_eq!(
            line["answer"].as_str(),
            Some(text(&one).as_str()),
            "{input}"
        );
    }
}

#[test]
fn a_failing_input_is_reported_on_its_line_and_the_others_answered() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let bundle = write_bundle(dir.path());
    // Longer than the run's context of 1,024 tokens (one token per byte here).
    let long = "a".repeat(3000);
    let stdin = format!("fine\n{long}\nalso fine\n");
    let output = device(
        &["run", &bundle, "--file", "-", "--threads", "1"],
        Some(&stdin),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 input(s) failed"), "{stderr}");
    let lines: Vec<serde_json::Value> = text(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["answer"].is_string());
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);
    assert!(lines[2]["answer"].is_string());
}

#[test]
fn a_missing_bundle_or_input_file_names_the_fix() {
    let output = device(&["run", "/nonexistent.wbundle", "--text", "hi"], None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("check the path"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    let bundle = write_bundle(dir.path());
    let output = device(&["run", &bundle, "--file", "/nonexistent.txt"], None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("check --file"));
}
