//! Text in, text out: a session renders the bundle's prompt around the input, tokenizes it
//! into a fixed-capacity buffer, runs the model in the caller's arena, and classifies or
//! generates.

use heapless::Vec;

use crate::bundle::Bundle;
use crate::error::Error;
use crate::format::TaskKind;
use crate::kernels::Kernels;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The result of [`Session::classify`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Classification<'a> {
    /// Index of the predicted label.
    pub label_index: usize,
    /// The predicted label's value (as in the task's data).
    pub label: &'a str,
}

/// One conversation with a bundle; `CONTEXT` is the token capacity (prompt + output), and the
/// arena must hold [`Bundle::arena_bytes`]`(CONTEXT)` bytes.
#[derive(Debug)]
pub struct Session<'b, 'a, K: Kernels, const CONTEXT: usize> {
    bundle: &'b Bundle<'a>,
    tokenizer: Tokenizer<'a>,
    model: Model<'b, 'a, K>,
    tokens: Vec<u32, CONTEXT>,
}

impl<'b, 'a, K: Kernels, const CONTEXT: usize> Session<'b, 'a, K, CONTEXT> {
    /// Binds `bundle` to `arena` and `kernels`.
    pub fn new(bundle: &'b Bundle<'a>, kernels: K, arena: &'b mut [u8]) -> Result<Self, Error> {
        Ok(Self {
            bundle,
            tokenizer: Tokenizer::new(bundle),
            model: Model::new(bundle, kernels, CONTEXT, arena)?,
            tokens: Vec::new(),
        })
    }

    /// The bundle's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer<'a> {
        &self.tokenizer
    }

    /// The prompt tokens of the last call.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Runs the prompt of `input`: after the bundle's stored prompt prefix when it has one
    /// (only the input and the suffix are run), else whole.
    fn prompt(&mut self, input: &str) -> Result<(), Error> {
        let task = &self.bundle.header().task;
        self.tokens.clear();
        match self.bundle.prefix() {
            Some(prefix) => {
                self.tokens
                    .extend_from_slice(prefix.tokens)
                    .map_err(|_| Error::InputTooLong)?;
                self.tokenizer
                    .encode(&[prefix.rest, input, task.prompt_suffix], &mut self.tokens)?;
                let start = self.model.load_prefix()?;
                self.model.feed(self.tokens.get(start..).unwrap_or(&[]))
            }
            None => {
                self.tokenizer.encode_prompt(
                    &[task.prompt_prefix, input, task.prompt_suffix],
                    &mut self.tokens,
                )?;
                self.model.reset();
                self.model.feed(&self.tokens)
            }
        }
    }

    /// The label logits plus bias for `input` (in label order).
    pub fn label_scores(
        &mut self,
        input: &str,
    ) -> Result<Vec<f32, { crate::format::MAX_LABELS }>, Error> {
        if self.bundle.header().task.kind != TaskKind::Classification {
            return Err(Error::NotClassification);
        }
        self.prompt(input)?;
        let logits = self.model.label_logits()?;
        let mut scores = Vec::new();
        for (logit, label) in logits.iter().zip(&self.bundle.header().task.labels) {
            scores
                .push(logit + label.bias)
                .map_err(|_| Error::BadTask)?;
        }
        Ok(scores)
    }

    /// The raw label logits (no bias) of the last [`Session::label_scores`] or
    /// [`Session::classify`] call's prompt, recomputed.
    pub fn label_logits(&mut self) -> Result<&[f32], Error> {
        self.model.label_logits()
    }

    /// Classifies `input`: argmax over labels of logit + bias (first on ties).
    pub fn classify(&mut self, input: &str) -> Result<Classification<'a>, Error> {
        let scores = self.label_scores(input)?;
        self.classify_scores(&scores)
    }

    /// The label of `scores` (from [`Session::label_scores`]): the argmax, first on ties.
    pub fn classify_scores(&self, scores: &[f32]) -> Result<Classification<'a>, Error> {
        let mut best = 0;
        for (i, score) in scores.iter().enumerate() {
            if scores.get(best).is_some_and(|b| score > b) {
                best = i;
            }
        }
        let label = self
            .bundle
            .header()
            .task
            .labels
            .get(best)
            .ok_or(Error::BadTask)?;
        Ok(Classification {
            label_index: best,
            label: label.name,
        })
    }

    /// The answer a bundle's [`crate::format::SelfCheck`] records for `input`, and its margin
    /// over the runner-up: the label index by score (classification) or the first greedy
    /// token (generation).
    pub fn check_answer(&mut self, input: &str) -> Result<(u32, f32), Error> {
        let (best, margin) = if self.bundle.header().task.kind == TaskKind::Classification {
            let scores = self.label_scores(input)?;
            top_two(&scores)
        } else {
            self.prompt(input)?;
            top_two(self.model.logits()?)
        };
        Ok((u32::try_from(best).map_err(|_| Error::BadTask)?, margin))
    }

    /// Greedy generation after the prompt built from `input`, at most `max_new_tokens` tokens
    /// (stopping at a stop token); the text is written to `out` and returned (cut at the last
    /// whole character if `out` fills up).
    pub fn generate<'o>(
        &mut self,
        input: &str,
        max_new_tokens: usize,
        out: &'o mut [u8],
    ) -> Result<&'o str, Error> {
        self.prompt(input)?;
        let prompt_len = self.tokens.len();
        for _ in 0..max_new_tokens {
            let token = top_two(self.model.logits()?).0 as u32;
            if self.tokenizer.is_stop(token) {
                break;
            }
            if self.tokens.push(token).is_err() {
                break;
            }
            if self.model.position() >= self.model.context() {
                break;
            }
            self.model.feed(&[token])?;
        }
        let generated = self.tokens.get(prompt_len..).unwrap_or(&[]);
        let written = self.tokenizer.decode_into(generated, out);
        let bytes = out.get(..written).unwrap_or(&[]);
        Ok(match core::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                core::str::from_utf8(bytes.get(..error.valid_up_to()).unwrap_or(&[])).unwrap_or("")
            }
        })
    }
}

/// The index of the largest value (first on ties) and its margin over the next largest
/// (infinite for one value).
fn top_two(values: &[f32]) -> (usize, f32) {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    let mut second = f32::NEG_INFINITY;
    for (i, &value) in values.iter().enumerate() {
        if value > best_value {
            second = best_value;
            best = i;
            best_value = value;
        } else if value > second {
            second = value;
        }
    }
    (best, best_value - second)
}
