//! Real model (downloads SmolLM2-135M-Instruct, 98 MB, once): tokenizer parity with
//! llama.cpp and a greedy chat answer.

use std::sync::OnceLock;

use candle_core::Device;
use serde::Deserialize;
use whittle_host::generate::greedy;
use whittle_host::model::{self, LoadedModel};
use whittle_tests::real_model_path;

fn loaded() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| match model::load(&real_model_path(), &Device::Cpu) {
        Ok(model) => model,
        Err(error) => panic!("{error}"),
    })
}

#[derive(Deserialize)]
struct Recorded {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn real_model_token_ids_equal_llama_cpp() -> anyhow::Result<()> {
    let recorded: Recorded = serde_json::from_str(include_str!("../data/llamacpp_token_ids.json"))?;
    assert!(recorded.cases.len() >= 10);
    let tokenizer = &loaded().tokenizer;
    for case in &recorded.cases {
        assert_eq!(tokenizer.encode(&case.text)?, case.ids, "{:?}", case.text);
        if !case.text.contains("<|") {
            assert_eq!(tokenizer.decode(&case.ids)?, case.text);
        }
    }
    Ok(())
}

#[test]
fn real_model_answers_paris() -> anyhow::Result<()> {
    let model = loaded();
    let prompt = model
        .tokenizer
        .chat_prompt(None, "What is the capital of France?", "")?;
    assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    let ids = model.tokenizer.encode(&prompt)?;
    let answer = greedy(&model.llama, &ids, 24, model.tokenizer.stop_ids())?;
    let answer = model.tokenizer.decode(&answer)?;
    println!("answer: {answer:?}");
    assert!(answer.contains("Paris"), "{answer:?}");
    Ok(())
}

#[test]
fn real_model_empty_verbalizer_is_refused() {
    use whittle_host::eval::LabelTokens;
    use whittle_host::task::Label;
    let label = |value: &str, verbalizer: &str| Label {
        value: value.to_owned(),
        verbalizer: verbalizer.to_owned(),
    };
    let labels = [label("0", " negative"), label("1", "")];
    let message = match LabelTokens::new(&loaded().tokenizer, &labels) {
        Ok(_) => panic!("an empty verbalizer must be refused"),
        Err(error) => error.to_string(),
    };
    assert!(message.contains("tokenizes to nothing"), "{message}");
    assert!(LabelTokens::new(&loaded().tokenizer, &labels[..1]).is_err());
    assert!(
        LabelTokens::new(
            &loaded().tokenizer,
            &[label("0", " no"), label("1", " yes")]
        )
        .is_ok()
    );
}
