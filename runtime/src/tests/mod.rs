//! Tests on a tiny synthetic bundle: golden bytes, every refusal, a bounded fuzz run, the
//! tokenizer and the arena's high-water mark.
// The helpers that build the tiny bundles unwrap: a failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod fuzz;

use crate::Architecture;
use alloc::vec::Vec;

use ed25519_dalek::{Signer, SigningKey};

use crate::format::{
    Dtype, HeadRef, Header, LabelRef, LayerRecords, LayerRef, LinearRef, Provenance, SelfCheck,
    TaskKind, TaskRef,
};
use crate::kernels::Portable;
use crate::writer::{BlobBuilder, TokenizerTables, encode_layers, write_bundle};
use crate::{AlignedBytes, Bundle, Error, ModelConfig, Session};

pub(crate) const CONTEXT: usize = 32;

fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Architecture::LLAMA,
        n_layers: 2,
        hidden_size: 16,
        intermediate_size: 24,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
        vocab_size: 260,
        max_position_embeddings: 64,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
    }
}

/// Deterministic values in [-0.5, 0.5): the crate's one test generator (a small LCG; the suites
/// must not depend on a crate for this).
pub(crate) fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn tables() -> TokenizerTables {
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| alloc::vec![b]).collect();
    vocab.push(b"ab".to_vec());
    vocab.push(b"abc".to_vec());
    vocab.push(b"<s>".to_vec());
    vocab.push(b" a".to_vec());
    TokenizerTables {
        vocab,
        merges: alloc::vec![(97, 98, 256), (256, 99, 257), (32, 97, 259)],
        byte_tokens: (0..256).collect(),
        special_ids: alloc::vec![258],
        stop_ids: alloc::vec![258],
        trimmed: None,
        sentencepiece: None,
        pre_tokenizer: crate::format::PreTokenizer::Smollm,
    }
}

/// The tiny bundle; `dtype`, task head or not, signed with `key` or not.
pub(crate) fn tiny_bundle(dtype: Dtype, task_head: bool, key: Option<&SigningKey>) -> Vec<u8> {
    tiny_bundle_with_mlps(dtype, task_head, key, &[])
}

/// The tiny bundle whose block `i`'s gate, up and down have `mlp_shapes[i]` =
/// `(gate rows, up rows, down cols)` (the full intermediate size where not given).
fn tiny_bundle_with_mlps(
    dtype: Dtype,
    task_head: bool,
    key: Option<&SigningKey>,
    mlp_shapes: &[(usize, usize, usize)],
) -> Vec<u8> {
    let config = tiny_config();
    let full = config.intermediate_size;
    tiny_bundle_with(dtype, task_head, key, &|layer_idx, kind| {
        let (gate, up, down) = mlp_shapes
            .get(layer_idx)
            .copied()
            .unwrap_or((full, full, full));
        let (rows, cols) = match kind {
            crate::MatrixKind::Gate => (gate, config.hidden_size),
            crate::MatrixKind::Up => (up, config.hidden_size),
            crate::MatrixKind::Down => (config.hidden_size, down),
            _ => config.matrix_shape(kind),
        };
        let seed = 10 + (layer_idx * 7 + kind as usize) as u64;
        TinyMatrix {
            rows,
            cols,
            values: values(seed, rows * cols),
            rank: (layer_idx == 1 && (kind as usize).is_multiple_of(2)).then_some(3),
        }
    })
}

/// One matrix of a tiny bundle: dense values `rows × cols`, or (with `rank`) a seeded factor
/// pair of that rank and shape instead.
struct TinyMatrix {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    rank: Option<usize>,
}

/// The tiny bundle with block `layer`'s matrix `kind` from `matrix(layer, kind)`.
fn tiny_bundle_with(
    dtype: Dtype,
    task_head: bool,
    key: Option<&SigningKey>,
    matrix: &dyn Fn(usize, crate::MatrixKind) -> TinyMatrix,
) -> Vec<u8> {
    tiny_bundle_with_pairs(dtype, task_head, key, matrix, &|_| Vec::new())
}

/// [`tiny_bundle_with`], block `layer` keeping the rotary pairs `pairs(layer)` (every pair when
/// empty).
fn tiny_bundle_with_pairs(
    dtype: Dtype,
    task_head: bool,
    key: Option<&SigningKey>,
    matrix: &dyn Fn(usize, crate::MatrixKind) -> TinyMatrix,
    pairs: &dyn Fn(usize) -> Vec<u16>,
) -> Vec<u8> {
    let config = tiny_config();
    let mut blob = BlobBuilder::new();
    let tokenizer = blob.push_tokenizer(&tables()).unwrap();
    let (vocab, hidden) = (config.vocab_size, config.hidden_size);
    let embedding_values = values(1, vocab * hidden);
    let embedding = blob
        .push_matrix(vocab, hidden, &embedding_values, dtype)
        .unwrap();
    let norm: Vec<f32> = (0..hidden).map(|i| 1.0 + i as f32 * 0.01).collect();
    let final_norm = blob.push_f32(&norm).unwrap();
    let mut layers = Vec::new();
    for layer_idx in 0..config.n_layers {
        let attn_norm = blob.push_f32(&norm).unwrap();
        let ffn_norm = blob.push_f32(&norm).unwrap();
        let mut linears = Vec::new();
        for (k, kind) in crate::MatrixKind::ALL.into_iter().enumerate() {
            let TinyMatrix {
                rows,
                cols,
                values: dense,
                rank,
            } = matrix(layer_idx, kind);
            let seed = 10 + (layer_idx * 7 + k) as u64;
            linears.push(match rank {
                Some(rank) => LinearRef::LowRank {
                    a: blob
                        .push_matrix(rank, cols, &values(seed, rank * cols), dtype)
                        .unwrap(),
                    b: blob
                        .push_matrix(rows, rank, &values(seed + 100, rows * rank), dtype)
                        .unwrap(),
                },
                None => LinearRef::Dense(blob.push_matrix(rows, cols, &dense, dtype).unwrap()),
            });
        }
        let list: Vec<u8> = pairs(layer_idx)
            .iter()
            .flat_map(|pair| pair.to_le_bytes())
            .collect();
        let rotary_pairs = match list.is_empty() {
            true => crate::format::Span::default(),
            false => blob.push_bytes(&list).unwrap(),
        };
        layers.push(LayerRef {
            attn_norm,
            ffn_norm,
            linears: linears.try_into().unwrap(),
            post_norms: None,
            qk_norms: None,
            qkv_bias: None,
            rotary_pairs,
        });
    }
    let label_ids = [97u32, 98];
    let head = if task_head {
        let rows: Vec<f32> = label_ids
            .iter()
            .flat_map(|&id| {
                embedding_values[id as usize * hidden..(id as usize + 1) * hidden].to_vec()
            })
            .collect();
        // f32 in every bundle, as the packer stores label rows.
        HeadRef::Labels(blob.push_matrix(2, hidden, &rows, Dtype::F32).unwrap())
    } else {
        HeadRef::Tied
    };
    let layer_bytes = encode_layers(&layers).unwrap();
    let mut labels = heapless::Vec::new();
    labels
        .push(LabelRef {
            name: "0",
            token_id: 97,
            bias: 0.25,
        })
        .unwrap();
    labels
        .push(LabelRef {
            name: "1",
            token_id: 98,
            bias: -0.25,
        })
        .unwrap();
    let header = Header {
        config,
        dtype,
        tokenizer,
        task: TaskRef {
            name: "tiny",
            kind: TaskKind::Classification,
            prompt_prefix: "<s>review: ",
            prompt_suffix: "\nsentiment:",
            labels,
            max_new_tokens: 4,
        },
        embedding,
        final_norm,
        head,
        layers: LayerRecords(&layer_bytes),
        provenance: Provenance {
            model_digest: "00",
            model_licence: "",
            factors_digest: "",
            genome_digest: "",
            source: "",
            task: "tiny",
            board: "",
            epsilon: Some(0.05),
            seed: Some(7),
            dense_accuracy: None,
            pruned_accuracy: None,
            tool_version: "0.1.0",
            sequence: 1,
            check: Some(SelfCheck {
                input: "a charming film",
                expected: 1,
                margin: 0.5,
            }),
        },
        prefix: None,
    };
    match key {
        Some(key) => {
            let sign = |bytes: &[u8]| key.sign(bytes).to_bytes();
            write_bundle(&header, blob.bytes(), Some(&sign)).unwrap()
        }
        None => write_bundle(&header, blob.bytes(), None).unwrap(),
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn check_refused(bytes: &[u8], expected: Error) {
    let aligned = AlignedBytes::new(bytes);
    assert_eq!(Bundle::parse(aligned.as_bytes()).err(), Some(expected));
}

fn crc(bytes: &[u8]) -> u32 {
    crate::format::CRC32.checksum(bytes)
}

#[test]
fn golden_bytes_of_the_tiny_bundle() {
    let bytes = tiny_bundle(Dtype::F32, false, None);
    let preamble: Vec<u8> = bytes[..24].to_vec();
    let hex: alloc::string::String = preamble.iter().map(|b| alloc::format!("{b:02x}")).collect();
    // magic "WHITTLE\0", version 7, flags 0, header length, blob length.
    assert_eq!(&hex[..24], "57484954544c450007000000");
    assert_eq!(
        (hex.as_str(), bytes.len(), crc(&bytes)),
        GOLDEN,
        "the encoding drifted: update docs/bundle-format.md and the version"
    );
}

/// Preamble (hex), length and CRC-32 of the whole tiny f32 bundle (format v6: the config's
/// architecture and head width, two absent norm pairs per layer, an absent SentencePiece
/// table, an empty model licence: 17 header bytes more than v5, past the padding, so 64 bytes
/// longer; the blob did not change. v7: the architecture's `qkv_bias`, an absent bias triple
/// per layer and the tokenizer's pre-tokenizer, 4 header bytes within the same padding).
const GOLDEN: (&str, usize, u32) = (
    "57484954544c45000700000077010000407d000000000000",
    32516,
    3132991297,
);

/// The tiny q8 bundle (format v2, one scale per 32 values of a row): preamble, length, and the
/// two CRCs it stores (preamble + header, blob), which pin the header and the quantized blob.
#[test]
fn golden_bytes_of_the_tiny_q8_and_q4_bundles() {
    for (dtype, golden) in [(Dtype::Q8, GOLDEN_Q8), (Dtype::Q4, GOLDEN_Q4)] {
        golden_quantized(dtype, golden);
    }
}

fn golden_quantized(dtype: Dtype, golden: (&str, usize, u32, u32)) {
    let bytes = tiny_bundle(dtype, false, None);
    let hex: alloc::string::String = bytes[..24]
        .iter()
        .map(|b| alloc::format!("{b:02x}"))
        .collect();
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let header_crc =
        u32::from_le_bytes(bytes[24 + header_len..28 + header_len].try_into().unwrap());
    let blob_crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    assert_eq!(
        (hex.as_str(), bytes.len(), header_crc, blob_crc),
        golden,
        "the {} encoding drifted: update docs/bundle-format.md and the version",
        dtype.name()
    );
}

/// The same for the tiny q4 bundle (nibbles and f16 scale/minimum pairs; larger than q8 here:
/// rows of 16 and 24 values pad their one block to 32).
const GOLDEN_Q4: (&str, usize, u32, u32) = (
    "57484954544c450007000000960100008034000000000000",
    13892,
    1551979473,
    1846668381,
);

/// Preamble (hex), length, header CRC and blob CRC of the tiny q8 bundle, format v6 (the
/// architecture, head width, optional norms and SentencePiece table: 16 header bytes more
/// than v5).
const GOLDEN_Q8: (&str, usize, u32, u32) = (
    "57484954544c450007000000920100008032000000000000",
    13380,
    2565222189,
    2526822772,
);

#[test]
fn the_example_firmware_links_the_current_tiny_bundle() {
    let bytes = tiny_bundle(Dtype::Q8, true, None);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/firmware-example/tiny.wbundle");
    if std::env::var_os("WHITTLE_WRITE_TINY_BUNDLE").is_some() {
        std::fs::write(path, &bytes).unwrap();
        // The fuzz target's seeds: this bundle and its q4 form.
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/bundle");
        std::fs::write(alloc::format!("{seeds}/tiny.wbundle"), &bytes).unwrap();
        let q4 = tiny_bundle(Dtype::Q4, false, None);
        std::fs::write(alloc::format!("{seeds}/tiny-q4.wbundle"), q4).unwrap();
    }
    assert_eq!(
        std::fs::read(path).unwrap(),
        bytes,
        "re-run with WHITTLE_WRITE_TINY_BUNDLE=1"
    );
    let aligned = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).unwrap();
    assert!(
        bundle.arena_bytes(CONTEXT) <= 16 * 1024,
        "raise ARENA_BYTES in firmware-example/src/main.rs"
    );
}

/// The recorded self-check is what the runtime answers, and a packer's choice keeps the
/// candidate with the widest margin.
#[test]
fn the_self_check_records_the_runtime_answer() {
    let bytes = tiny_bundle(Dtype::Q8, true, None);
    let aligned = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).unwrap();
    let check = bundle.header().provenance.check.unwrap();
    let mut words = alloc::vec![0u32; bundle.arena_bytes(64) / 4 + 1];
    let mut session =
        Session::<_, 64>::new(&bundle, Portable, bytemuck::cast_slice_mut(&mut words)).unwrap();
    let (answer, margin) = session.check_answer(check.input).unwrap();
    assert_eq!(answer, check.expected);
    assert!(margin > 0.0);
    let candidates = ["ab", "a charming film", "12 12"];
    let chosen = crate::writer::choose_self_check(&bytes, Portable, &candidates)
        .unwrap()
        .unwrap();
    for input in candidates {
        let (_, other) = session.check_answer(input).unwrap();
        assert!(
            chosen.margin >= other,
            "{input}: {other} > {}",
            chosen.margin
        );
    }
    assert_eq!(
        session.check_answer(chosen.input).unwrap().0,
        chosen.expected
    );
    let signed = crate::writer::synthetic_release(&tiny_config(), "t", 9, None).unwrap();
    let aligned = AlignedBytes::new(&signed);
    let release = Bundle::parse(aligned.as_bytes()).unwrap();
    assert_eq!(release.header().provenance.sequence, 9);
    assert!(release.header().provenance.check.is_some());
}

/// A runtime built without the `q4` feature refuses a q4 bundle with its own error (and
/// reads q8 ones); `cargo xtask test` runs this with `--no-default-features`.
#[test]
fn a_q4_bundle_needs_the_q4_feature() {
    let q4 = tiny_bundle(Dtype::Q4, false, None);
    let aligned = AlignedBytes::new(&q4);
    let parsed = Bundle::parse(aligned.as_bytes());
    if cfg!(feature = "q4") {
        assert!(parsed.is_ok());
    } else {
        assert_eq!(parsed.err(), Some(Error::Q4NotBuilt));
        assert!(Error::Q4NotBuilt.to_string().contains("--dtype q8"));
    }
    let q8 = tiny_bundle(Dtype::Q8, false, None);
    assert!(Bundle::parse(AlignedBytes::new(&q8).as_bytes()).is_ok());
}

/// Mixed precision: a q4 bundle may hold q8 matrices (the packer keeps the embedding and the
/// head at 8 bits), every bundle f32 ones (the packer keeps a task's label rows exact); no
/// bundle holds a matrix of a narrower dtype than its own.
#[test]
fn bundles_admit_their_own_dtype_f32_and_q8_in_q4() {
    use Dtype::{F32, Q4, Q8};
    let admitted = [
        (F32, [true, false, false]),
        (Q8, [true, true, false]),
        (Q4, [true, true, true]),
    ];
    for (bundle, row) in admitted {
        for (matrix, expected) in [F32, Q8, Q4].into_iter().zip(row) {
            assert_eq!(
                bundle.admits(matrix),
                expected,
                "{bundle:?} bundle, {matrix:?} matrix"
            );
        }
    }
}

#[test]
fn classifies_generates_and_uses_exactly_the_arena_it_asks_for() {
    for (dtype, task_head) in [
        (Dtype::F32, false),
        (Dtype::Q8, false),
        (Dtype::F32, true),
        (Dtype::Q4, false),
        (Dtype::Q4, true),
    ] {
        let bytes = AlignedBytes::new(&tiny_bundle(dtype, task_head, None));
        let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
        let needed = bundle.arena_bytes(CONTEXT);
        let mut words = alloc::vec![0x5a5a_5a5a_u32; needed / 4 + 16];
        let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut session = Session::<_, CONTEXT>::new(&bundle, Portable, arena).unwrap();
        let label = session.classify("ab abc 12").unwrap();
        assert!(label.label_index < 2);
        let tokens = session.tokens().to_vec();
        assert_eq!(tokens[0], 258, "the special token is matched");
        if !task_head {
            let mut out = [0u8; 64];
            session.generate("abc", 3, &mut out).unwrap();
        } else {
            let mut out = [0u8; 64];
            assert_eq!(session.generate("abc", 3, &mut out), Err(Error::NoFullHead));
        }
        drop(session);
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let high_water = bytes
            .chunks_exact(4)
            .rposition(|w| w != [0x5a; 4])
            .map_or(0, |i| 4 * (i + 1));
        assert_eq!(high_water, needed, "{dtype:?} task head {task_head}");
        let mut small = alloc::vec![0u32; needed / 4 - 1];
        let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut small);
        assert_eq!(
            Session::<_, CONTEXT>::new(&bundle, Portable, arena).err(),
            Some(Error::ArenaTooSmall {
                needed,
                given: needed - 4
            })
        );
    }
}

#[test]
fn a_block_may_keep_fewer_mlp_neurons_and_must_agree_on_how_many() {
    // Block 0 keeps 16 of 24 neurons (block 1's gate is a factor pair of 24 rows).
    let bytes = AlignedBytes::new(&tiny_bundle_with_mlps(
        Dtype::F32,
        true,
        None,
        &[(16, 16, 16)],
    ));
    let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
    assert_eq!(bundle.block_widths(0).map(|w| w.mlp), Ok(16));
    assert_eq!(bundle.block_widths(1).map(|w| w.mlp), Ok(24));
    let full = AlignedBytes::new(&tiny_bundle(Dtype::F32, true, None));
    let full = Bundle::parse(full.as_bytes()).unwrap();
    assert_eq!(bundle.arena_bytes(CONTEXT), full.arena_bytes(CONTEXT));
    let mut words = alloc::vec![0u32; bundle.arena_bytes(CONTEXT) / 4];
    let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let mut session = Session::<_, CONTEXT>::new(&bundle, Portable, arena).unwrap();
    assert!(session.classify("ab abc 12").unwrap().label_index < 2);
    // Up or down disagreeing with gate, or wider than the model's MLP: refused.
    for shapes in [(16, 24, 16), (16, 16, 24), (32, 32, 32)] {
        check_refused(
            &tiny_bundle_with_mlps(Dtype::F32, true, None, &[shapes]),
            Error::BadShape,
        );
    }
}

/// Block 0 keeps 2 of 4 value dimensions per key/value head and skips its MLP; block 1 skips
/// its attention. The same model with every matrix full-shaped (the missing value rows and o
/// columns zero, block 0's gate zero so that its MLP adds nothing, block 1's o zero) must give
/// the same logits.
#[test]
fn kept_rotary_pairs_equal_their_block_with_the_dropped_pairs_rows_zeroed() {
    use crate::MatrixKind::{K, Q};
    let config = tiny_config();
    let (head_dim, n_rep) = (config.head_dim(), config.n_heads / config.n_kv_heads);
    // head_dim 4: two pairs per head; key/value head 0 keeps pair 1, head 1 keeps pair 0.
    let lists: [u16; 2] = [1, 0];
    let seed =
        |layer_idx: usize, kind: crate::MatrixKind| 10 + (layer_idx * 7 + kind as usize) as u64;
    let dense = |rows: usize, cols: usize, values: Vec<f32>| TinyMatrix {
        rows,
        cols,
        values,
        rank: None,
    };
    let widths = |layer_idx: usize| crate::BlockWidths {
        pairs: if layer_idx == 0 { 1 } else { head_dim / 2 },
        ..config.full_widths()
    };
    let narrow = |layer_idx: usize, kind: crate::MatrixKind| {
        let (rows, cols) = config.matrix_shape_in(kind, widths(layer_idx));
        dense(rows, cols, values(seed(layer_idx, kind), rows * cols))
    };
    let padded = |layer_idx: usize, kind: crate::MatrixKind| {
        let (rows, cols) = config.matrix_shape(kind);
        if layer_idx != 0 || !matches!(kind, Q | K) {
            return dense(rows, cols, values(seed(layer_idx, kind), rows * cols));
        }
        let small = narrow(layer_idx, kind).values;
        // Row `head · head_dim + 2 · pair + lane` is the narrow row `head · 2 + lane` when
        // `pair` is the head's kept one, else zero.
        let group = |head: usize| if kind == Q { head / n_rep } else { head };
        let values = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                let (head, lane) = (r / head_dim, r % head_dim);
                match usize::from(lists[group(head)]) == lane / 2 {
                    true => small[(head * 2 + lane % 2) * cols + c],
                    false => 0.0,
                }
            })
            .collect();
        dense(rows, cols, values)
    };
    let pairs = |layer_idx: usize| match layer_idx {
        0 => lists.to_vec(),
        _ => Vec::new(),
    };
    let narrow_bytes = AlignedBytes::new(&tiny_bundle_with_pairs(
        Dtype::F32,
        false,
        None,
        &narrow,
        &pairs,
    ));
    let padded_bytes = AlignedBytes::new(&tiny_bundle_with(Dtype::F32, false, None, &padded));
    let narrow_bundle = Bundle::parse(narrow_bytes.as_bytes()).unwrap();
    let padded_bundle = Bundle::parse(padded_bytes.as_bytes()).unwrap();
    assert_eq!(narrow_bundle.block_widths(0), Ok(widths(0)));
    assert_eq!(narrow_bundle.block_widths(1), Ok(config.full_widths()));
    assert_same_logits(&narrow_bundle, &padded_bundle);
    // Lists out of range, of uneven length, or as long as a whole head are refused.
    for bad in [
        alloc::vec![1u16, 1, 0, 1],
        alloc::vec![2, 0],
        alloc::vec![0, 1, 0],
    ] {
        let bad_pairs = |layer_idx: usize| match layer_idx {
            0 => bad.clone(),
            _ => Vec::new(),
        };
        let wide = |layer_idx: usize, kind: crate::MatrixKind| {
            let pairs = if layer_idx == 0 { bad.len() / 2 } else { 2 };
            let widths = crate::BlockWidths {
                pairs: pairs.max(1),
                ..config.full_widths()
            };
            let (rows, cols) = config.matrix_shape_in(kind, widths);
            dense(rows, cols, alloc::vec![0.1; rows * cols])
        };
        check_refused(
            &tiny_bundle_with_pairs(Dtype::F32, false, None, &wide, &bad_pairs),
            Error::BadShape,
        );
    }
}

#[test]
fn narrower_value_heads_and_skipped_sub_blocks_equal_their_zero_padded_blocks() {
    use crate::MatrixKind::{Down, Gate, O, Up, V};
    let config = tiny_config();
    let (hidden, head_dim, kv) = (config.hidden_size, config.head_dim(), config.n_kv_heads);
    let narrow_value = 2;
    let seed =
        |layer_idx: usize, kind: crate::MatrixKind| 10 + (layer_idx * 7 + kind as usize) as u64;
    let dense = |rows: usize, cols: usize, values: Vec<f32>| TinyMatrix {
        rows,
        cols,
        values,
        rank: None,
    };
    let narrow = |layer_idx: usize, kind: crate::MatrixKind| {
        let widths = match layer_idx {
            0 => crate::BlockWidths {
                mlp: 0,
                value: narrow_value,
                pairs: head_dim / 2,
            },
            _ => crate::BlockWidths {
                mlp: config.intermediate_size,
                value: 0,
                pairs: 0,
            },
        };
        let (rows, cols) = config.matrix_shape_in(kind, widths);
        dense(rows, cols, values(seed(layer_idx, kind), rows * cols))
    };
    let padded = |layer_idx: usize, kind: crate::MatrixKind| {
        let (rows, cols) = config.matrix_shape(kind);
        let full = values(seed(layer_idx, kind), rows * cols);
        let small = narrow(layer_idx, kind).values;
        let values = match (layer_idx, kind) {
            // v: head g's first `narrow_value` rows are the narrow head's, the rest zero.
            (0, V) => (0..rows)
                .flat_map(|r| {
                    let (g, d) = (r / head_dim, r % head_dim);
                    (0..cols).map(move |c| (g, d, c))
                })
                .map(|(g, d, c)| match d < narrow_value {
                    true => small[(g * narrow_value + d) * cols + c],
                    false => 0.0,
                })
                .collect(),
            // o: head h's first `narrow_value` columns are the narrow head's, the rest zero.
            (0, O) => (0..rows * cols)
                .map(|i| {
                    let (r, c) = (i / cols, i % cols);
                    let (h, d) = (c / head_dim, c % head_dim);
                    let narrow_cols = config.n_heads * narrow_value;
                    match d < narrow_value {
                        true => small[r * narrow_cols + h * narrow_value + d],
                        false => 0.0,
                    }
                })
                .collect(),
            (0, Gate) | (1, O) => alloc::vec![0.0; rows * cols],
            _ => full,
        };
        dense(rows, cols, values)
    };
    let narrow_bytes = AlignedBytes::new(&tiny_bundle_with(Dtype::F32, false, None, &narrow));
    let padded_bytes = AlignedBytes::new(&tiny_bundle_with(Dtype::F32, false, None, &padded));
    let narrow_bundle = Bundle::parse(narrow_bytes.as_bytes()).unwrap();
    let padded_bundle = Bundle::parse(padded_bytes.as_bytes()).unwrap();
    assert_eq!(
        narrow_bundle.block_widths(0),
        Ok(crate::BlockWidths {
            mlp: 0,
            value: narrow_value,
            pairs: head_dim / 2,
        })
    );
    assert_eq!(narrow_bundle.block_widths(1).map(|w| w.value), Ok(0));
    assert_same_logits(&narrow_bundle, &padded_bundle);
    // v's rows must split into whole heads no wider than head_dim, and o must agree with them.
    for (v_rows, o_cols) in [
        (3, 6),
        (kv * 2, 4 * 3),
        (kv * (head_dim + 1), 4 * (head_dim + 1)),
    ] {
        let bad = |layer_idx: usize, kind: crate::MatrixKind| match (layer_idx, kind) {
            (0, V) => dense(v_rows, hidden, alloc::vec![0.1; v_rows * hidden]),
            (0, O) => dense(hidden, o_cols, alloc::vec![0.1; hidden * o_cols]),
            _ => narrow(1, kind),
        };
        check_refused(
            &tiny_bundle_with(Dtype::F32, false, None, &bad),
            Error::BadShape,
        );
    }
    // Up or down disagreeing with a skipped MLP: refused.
    let bad = |layer_idx: usize, kind: crate::MatrixKind| match (layer_idx, kind) {
        (0, Up) => dense(4, hidden, alloc::vec![0.1; 4 * hidden]),
        (0, Down) => dense(hidden, 0, Vec::new()),
        _ => narrow(layer_idx, kind),
    };
    check_refused(
        &tiny_bundle_with(Dtype::F32, false, None, &bad),
        Error::BadShape,
    );
}

/// Logits after a prompt longer than one prefill chunk and after each of a few decoded tokens.
/// `a` and `b` give the same logits (within 1e-4) all along a prompt and its decoding.
fn assert_same_logits(a: &Bundle<'_>, b: &Bundle<'_>) {
    let got = logits_along_the_way(a, Portable);
    let expected = logits_along_the_way(b, Portable);
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "max |Δlogit| {worst}");
}

fn logits_along_the_way<K: crate::kernels::Kernels>(bundle: &Bundle<'_>, kernels: K) -> Vec<f32> {
    let needed = bundle.arena_bytes(CONTEXT);
    let mut words = alloc::vec![0u32; needed / 4];
    let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let mut model = crate::Model::new(bundle, kernels, CONTEXT, arena).unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 37 % 250) as u32).collect();
    model.feed(&prompt).unwrap();
    let mut seen = model.logits().unwrap().to_vec();
    for token in [3u32, 250, 97] {
        model.feed(&[token]).unwrap();
        seen.extend_from_slice(model.logits().unwrap());
    }
    seen
}

#[test]
fn threaded_model_matches_portable() {
    for dtype in [Dtype::F32, Dtype::Q8] {
        let bytes = AlignedBytes::new(&tiny_bundle(dtype, false, None));
        let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
        let expected = logits_along_the_way(&bundle, Portable);
        for threads in [2, 3, 5] {
            let got =
                logits_along_the_way(&bundle, crate::kernels::Threaded::new(Portable, threads));
            assert_eq!(got, expected, "{dtype:?} on {threads} threads");
        }
    }
}

/// A decode step on a pool splits its positions over the threads (at least 16 each) and merges
/// the parts: the same logits as one part, up to rounding.
#[test]
fn split_decode_attention_matches_one_part() {
    const LONG: usize = 64;
    let bytes = AlignedBytes::new(&tiny_bundle(Dtype::F32, false, None));
    let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
    fn decode<K: crate::kernels::Kernels>(bundle: &Bundle<'_>, kernels: K) -> Vec<f32> {
        let mut words = alloc::vec![0u32; bundle.arena_bytes(LONG) / 4];
        let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut model = crate::Model::new(bundle, kernels, LONG, arena).unwrap();
        let prompt: Vec<u32> = (0..60).map(|i| (i * 37 % 250) as u32).collect();
        model.feed(&prompt).unwrap();
        let mut seen = Vec::new();
        for token in [3u32, 250, 97] {
            model.feed(&[token]).unwrap();
            seen.extend_from_slice(model.logits().unwrap());
        }
        seen
    }
    let expected = decode(&bundle, Portable);
    for threads in [2, 3] {
        let got = decode(&bundle, crate::kernels::Threaded::new(Portable, threads));
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{threads} threads: max |Δlogit| {worst}");
        assert_ne!(
            got, expected,
            "{threads} threads: the positions were not split"
        );
    }
}

#[test]
fn tokenizer_merges_by_rank_and_splits_like_gpt2() {
    let bytes = AlignedBytes::new(&tiny_bundle(Dtype::F32, false, None));
    let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
    let tokenizer = crate::Tokenizer::new(&bundle);
    let check = |pieces: &[&str], expected: &[u32]| {
        let mut out = heapless::Vec::<u32, 64>::new();
        tokenizer.encode(pieces, &mut out).unwrap();
        assert_eq!(out.as_slice(), expected, "{pieces:?}");
    };
    check(&["abc"], &[257]);
    check(&["ab", "c"], &[257]);
    check(&["x abc"], &[120, 32, 257]);
    check(&["x a"], &[120, 259]);
    check(&["<s>a12"], &[258, 97, 49, 50]);
    check(&["a  b"], &[97, 32, 32, 98]);
    check(&["it's"], &[105, 116, 39, 115]);
    let mut text = [0u8; 16];
    let n = tokenizer.decode_into(&[258, 257, 32], &mut text);
    assert_eq!(&text[..n], b"abc ");
    let mut tiny = heapless::Vec::<u32, 2>::new();
    assert_eq!(
        tokenizer.encode(&["xyz"], &mut tiny),
        Err(Error::InputTooLong)
    );
}

#[test]
fn every_refusal_is_distinct() {
    let good = tiny_bundle(Dtype::F32, false, None);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    check_refused(&bad_magic, Error::BadMagic);
    let mut bad_version = good.clone();
    bad_version[8] = 9;
    check_refused(&bad_version, Error::UnsupportedVersion { found: 9 });
    let mut bad_flags = good.clone();
    bad_flags[10] = 0x80;
    check_refused(&bad_flags, Error::UnknownFlags);
    check_refused(&good[..good.len() - 1], Error::Truncated);
    check_refused(&good[..10], Error::Truncated);
    let mut trailing = good.clone();
    trailing.push(0);
    check_refused(&trailing, Error::TrailingBytes);
    let mut header_flip = good.clone();
    header_flip[30] ^= 1;
    check_refused(&header_flip, Error::HeaderChecksum);
    let mut blob_flip = good.clone();
    let at = good.len() - 10;
    blob_flip[at] ^= 1;
    check_refused(&blob_flip, Error::BlobChecksum);

    let aligned = AlignedBytes::new(&good);
    let public = key().verifying_key().to_bytes();
    assert_eq!(
        Bundle::parse_signed(aligned.as_bytes(), &public).err(),
        Some(Error::SignatureMissing)
    );
    let signed = AlignedBytes::new(&tiny_bundle(Dtype::F32, false, Some(&key())));
    assert!(Bundle::parse_signed(signed.as_bytes(), &public).is_ok());
    let other = SigningKey::from_bytes(&[8u8; 32])
        .verifying_key()
        .to_bytes();
    assert_eq!(
        Bundle::parse_signed(signed.as_bytes(), &other).err(),
        Some(Error::SignatureInvalid)
    );
    let mut forged = signed.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged = AlignedBytes::new(&forged);
    assert_eq!(
        Bundle::parse_signed(forged.as_bytes(), &public).err(),
        Some(Error::SignatureInvalid)
    );

    let mut storage = alloc::vec![0u32; good.len() / 4 + 2];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut storage);
    bytes[1..=good.len()].copy_from_slice(&good);
    assert_eq!(
        Bundle::parse(&bytes[1..=good.len()]).err(),
        Some(Error::MisalignedBundle)
    );
}

#[test]
fn q8_scales_must_cover_every_block_of_every_row() {
    let good = AlignedBytes::new(&tiny_bundle(Dtype::Q8, false, None));
    let bundle = Bundle::parse(good.as_bytes()).unwrap();
    let blob = bundle.span(crate::format::Span {
        offset: 0,
        len: bundle.blob_len() as u32,
    });
    let rewrite = |edit: &dyn Fn(&mut Header)| {
        let mut header = bundle.header().clone();
        edit(&mut header);
        write_bundle(&header, blob, None).unwrap()
    };
    assert!(Bundle::parse(AlignedBytes::new(&rewrite(&|_| {})).as_bytes()).is_ok());
    // The embedding is 260 × 16: one block per row, 260 scales; one fewer or one more is
    // refused, and so is no scale tensor at all.
    for delta in [-4i64, 4] {
        let bytes = rewrite(&|h| {
            let s = h.embedding.scales.unwrap();
            h.embedding.scales = Some(crate::format::Span {
                len: (i64::from(s.len) + delta) as u32,
                ..s
            });
        });
        check_refused(&bytes, Error::BadShape);
    }
    check_refused(&rewrite(&|h| h.embedding.scales = None), Error::BadShape);
    // A version-1 bundle (one scale per row) is refused by its version.
    let mut v1 = tiny_bundle(Dtype::Q8, false, None);
    v1[8] = 1;
    check_refused(&v1, Error::UnsupportedVersion { found: 1 });
}

/// A task-trimmed vocabulary names each token's source id: strictly ascending, one per token,
/// below the source vocabulary's size; an untrimmed one names none and the same size.
#[test]
fn a_trimmed_vocabulary_names_its_source_ids() {
    let good = AlignedBytes::new(&tiny_bundle(Dtype::F32, false, None));
    let bundle = Bundle::parse(good.as_bytes()).unwrap();
    assert_eq!(bundle.header().tokenizer.source_vocab_size, 260);
    assert_eq!(crate::Tokenizer::new(&bundle).source_id(7), 7);
    let mut blob = BlobBuilder::new();
    let old = blob
        .push_bytes(bundle.span(crate::format::Span {
            offset: 0,
            len: bundle.blob_len() as u32,
        }))
        .unwrap();
    assert_eq!(old.offset, 0);
    let doubled: Vec<u32> = (0..260).map(|i| 2 * i).collect();
    let mut unsorted = doubled.clone();
    unsorted.swap(3, 4);
    let spans =
        [&doubled, &unsorted, &doubled[..259].to_vec()].map(|ids| blob.push_u32(ids).unwrap());
    let rewrite = |source_ids: crate::format::Span, source_vocab_size: u32| {
        let mut header = bundle.header().clone();
        header.tokenizer.source_ids = source_ids;
        header.tokenizer.source_vocab_size = source_vocab_size;
        write_bundle(&header, blob.bytes(), None).unwrap()
    };
    let trimmed = AlignedBytes::new(&rewrite(spans[0], 600));
    let parsed = Bundle::parse(trimmed.as_bytes()).unwrap();
    let tokenizer = crate::Tokenizer::new(&parsed);
    assert_eq!(
        (tokenizer.source_id(5), tokenizer.source_id(259)),
        (10, 518)
    );
    assert_eq!(tokenizer.source_id(260), crate::format::NO_TOKEN);
    for (span, size) in [
        (spans[0], 518),
        (spans[1], 600),
        (spans[2], 600),
        (crate::format::Span::default(), 600),
    ] {
        check_refused(&rewrite(span, size), Error::BadTokenizer);
    }
}

#[test]
fn q8_rows_dequantize_block_by_block() {
    use crate::Weight;
    use crate::kernels::{Kernels, Q8Matrix};
    // Three rows of 70: blocks of 32, 32 and a partial 6.
    let (rows, cols) = (3, 70);
    let mut w = values(5, rows * cols);
    w[32..64].iter_mut().for_each(|v| *v = 0.0);
    w[70 + 3] = 40.0;
    let (q, scales) = crate::writer::quantize_q8(&w, cols);
    assert_eq!((q.len(), scales.len()), (rows * cols, rows * 3));
    // An all-zero block gets scale 1 and zeros; an outlier widens only its own block.
    assert_eq!(scales[1], 1.0);
    assert!(q[32..64].iter().all(|&v| v == 0));
    assert!((scales[3] - 40.0 / 127.0).abs() < 1e-6);
    assert!(scales[4] < 0.5 / 127.0 + 1e-6);
    let weight = Weight::Q8(Q8Matrix {
        rows,
        cols,
        data: &q,
        scales: &scales,
    });
    let mut out = [0.0f32; 70];
    for i in 0..rows {
        weight.copy_row(i, &mut out);
        for (j, (&o, &v)) in out.iter().zip(&w[i * cols..(i + 1) * cols]).enumerate() {
            let step = scales[i * 3 + j / 32];
            assert!(
                (o - v).abs() <= step / 2.0 + 1e-6,
                "row {i} col {j}: {o} vs {v}"
            );
        }
    }
    // The product through the kernels is the dequantized matrix times x.
    let x = values(6, cols);
    let mut y = [0.0f32; 3];
    Portable.gemm_q8(
        Q8Matrix {
            rows,
            cols,
            data: &q,
            scales: &scales,
        },
        &x,
        1,
        &mut y,
    );
    for (i, &yi) in y.iter().enumerate() {
        weight.copy_row(i, &mut out);
        let expected: f32 = out.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((yi - expected).abs() < 1e-4, "row {i}: {yi} vs {expected}");
    }
}

#[test]
fn a_synthetic_bundle_parses_and_runs_at_its_shapes() {
    let config = ModelConfig {
        arch: Architecture::LLAMA,
        n_layers: 3,
        hidden_size: 64,
        intermediate_size: 96,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 300,
        max_position_embeddings: 64,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
    };
    for dtype in [Dtype::F32, Dtype::Q8] {
        let bytes = AlignedBytes::new(&crate::writer::synthetic_bundle(&config, dtype).unwrap());
        let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
        assert_eq!(bundle.header().config, config);
        assert_eq!(bundle.header().dtype, dtype);
        assert_eq!(bundle.max_rank(), 0);
        // Distinct weights per matrix: the logits of two prompts differ, and are finite.
        let mut words = alloc::vec![0u32; bundle.arena_bytes(CONTEXT) / 4];
        let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut model = crate::Model::new(&bundle, Portable, CONTEXT, arena).unwrap();
        model.feed(&[1, 2, 3]).unwrap();
        let first = model.logits().unwrap().to_vec();
        model.reset();
        model.feed(&[299, 2, 3]).unwrap();
        let second = model.logits().unwrap().to_vec();
        assert_eq!(first.len(), 300);
        assert!(first.iter().chain(&second).all(|v| v.is_finite()));
        assert_ne!(first, second);
    }
}

/// A Gemma-3-shaped block (GeGLU, post-norms, query/key norms, scaled embeddings, a head
/// wider than hidden / heads) runs, and its sliding window holds: with every layer local and a
/// window of 3, two layers see 2 · (3 − 1) = 4 positions back, so the last position's logits
/// of an 8-token prompt do not depend on its first token; with every layer global they do.
#[test]
fn a_sliding_window_hides_what_lies_beyond_it() {
    let logits = |global_every: usize, first: u32| -> alloc::vec::Vec<f32> {
        let config = ModelConfig {
            arch: Architecture {
                global_every,
                ..Architecture::gemma3(3)
            },
            n_layers: 2,
            hidden_size: 32,
            intermediate_size: 48,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 24,
            vocab_size: 300,
            max_position_embeddings: 64,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
        };
        let bytes =
            AlignedBytes::new(&crate::writer::synthetic_bundle(&config, Dtype::F32).unwrap());
        let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
        let mut words = alloc::vec![0u32; bundle.arena_bytes(CONTEXT) / 4];
        let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut model = crate::Model::new(&bundle, Portable, CONTEXT, arena).unwrap();
        // Prefill, then one decode step: both paths mask by the window.
        model.feed(&[first, 7, 8, 9, 10, 11, 12]).unwrap();
        model.feed(&[13]).unwrap();
        let out = model.logits().unwrap().to_vec();
        assert!(out.iter().all(|v| v.is_finite()));
        out
    };
    // global_every = 0: every layer local.
    assert_eq!(logits(0, 1), logits(0, 250));
    // global_every = 1: every layer global.
    assert_ne!(logits(1, 1), logits(1, 250));
}

/// A Qwen2-shaped block (q/k/v biases) runs in prefill and decode, and its biases count: the
/// same weights under a Llama config read differently. A header whose architecture and layer
/// records disagree about the biases is refused.
#[test]
fn q_k_v_biases_are_added_and_must_match_the_architecture() {
    // One block: the biases are drawn after its matrices, so both bundles share them.
    let llama = ModelConfig {
        arch: Architecture::LLAMA,
        n_layers: 1,
        hidden_size: 32,
        intermediate_size: 48,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab_size: 300,
        max_position_embeddings: 64,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
    };
    let config = ModelConfig {
        arch: Architecture::QWEN2,
        ..llama
    };
    let logits = |config: &ModelConfig| -> alloc::vec::Vec<f32> {
        let bytes =
            AlignedBytes::new(&crate::writer::synthetic_bundle(config, Dtype::F32).unwrap());
        let bundle = Bundle::parse(bytes.as_bytes()).unwrap();
        let mut words = alloc::vec![0u32; bundle.arena_bytes(CONTEXT) / 4];
        let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut model = crate::Model::new(&bundle, Portable, CONTEXT, arena).unwrap();
        model.feed(&[3, 7, 8, 9]).unwrap();
        model.feed(&[13]).unwrap();
        let out = model.logits().unwrap().to_vec();
        assert!(out.iter().all(|v| v.is_finite()));
        out
    };
    let biased = logits(&config);
    assert_eq!(biased.len(), config.vocab_size);
    assert_ne!(biased, logits(&llama));

    let bytes = crate::writer::synthetic_bundle(&config, Dtype::F32).unwrap();
    let aligned = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).unwrap();
    let mut header = bundle.header().clone();
    header.config.arch = Architecture::LLAMA;
    let blob = blob_of(&bytes);
    let relabelled = crate::writer::write_bundle(&header, blob, None).unwrap();
    let aligned = AlignedBytes::new(&relabelled);
    assert!(matches!(
        Bundle::parse(aligned.as_bytes()),
        Err(Error::BadLayer)
    ));
}

/// A bundle's blob (between the header's padding and the blob checksum).
fn blob_of(bytes: &[u8]) -> &[u8] {
    let blob_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let end = bytes.len() - 4 - if bytes[10] & 1 == 1 { 64 } else { 0 };
    &bytes[end - blob_len..end]
}

/// The stored prompt prefix: the session runs only the rest, with the scores of the whole
/// prompt; a prefix ending in a space is cut before it (the pre-tokenizer joins it to the
/// input's first word); a prefix computed for other weights is refused.
#[test]
fn a_stored_prompt_prefix_gives_the_whole_prompts_scores() {
    let bytes = tiny_bundle(Dtype::F32, true, None);
    let inputs = ["a charming film", "dull", "12 ab", "x"];
    let cache = crate::writer::prefix_cache(&bytes, Portable, &inputs)
        .unwrap()
        .expect("a prefix");
    assert_eq!(cache.text_len, "<s>review:".len());
    let aligned = AlignedBytes::new(&bytes);
    let plain = Bundle::parse(aligned.as_bytes()).unwrap();
    let mut header = plain.header().clone();
    let mut blob = BlobBuilder::new();
    blob.push_bytes(blob_of(&bytes)).unwrap();
    crate::writer::attach_prefix(&mut header, &mut blob, &cache).unwrap();
    let with_prefix = write_bundle(&header, blob.bytes(), None).unwrap();
    let aligned_prefix = AlignedBytes::new(&with_prefix);
    let prefixed = Bundle::parse(aligned_prefix.as_bytes()).unwrap();
    assert_eq!(prefixed.prefix().unwrap().tokens, cache.tokens.as_slice());
    let mut words = alloc::vec![0u32; plain.arena_bytes(64) / 4 + 1];
    let mut more = alloc::vec![0u32; prefixed.arena_bytes(64) / 4 + 1];
    let mut whole =
        Session::<_, 64>::new(&plain, Portable, bytemuck::cast_slice_mut(&mut words)).unwrap();
    let mut after =
        Session::<_, 64>::new(&prefixed, Portable, bytemuck::cast_slice_mut(&mut more)).unwrap();
    for input in inputs {
        let expected = whole.label_scores(input).unwrap();
        let tokens = whole.tokens().to_vec();
        let got = after.label_scores(input).unwrap();
        assert_eq!(after.tokens(), tokens.as_slice(), "{input}");
        for (e, g) in expected.iter().zip(&got) {
            assert!((e - g).abs() < 1e-5, "{input}: {expected:?} vs {got:?}");
        }
    }
    let mut stale = header.clone();
    if let Some(prefix) = stale.prefix.as_mut() {
        prefix.weights_crc ^= 1;
    }
    let stale = write_bundle(&stale, blob.bytes(), None).unwrap();
    check_refused(&stale, Error::PrefixMismatch);
}

/// q4: each value within half a step (plus the f16 rounding of the minimum) of its block's
/// grid, a constant block exact, and the product equal to the dequantized matrix's f32
/// product on every kernel set this machine has, threaded too.
#[test]
fn q4_rows_dequantize_within_half_a_step_and_multiply_as_dequantized() {
    use crate::Weight;
    use crate::kernels::{F32Matrix, Kernels, Q4Matrix, Threaded, available, q4_pair};
    let (rows, cols) = (5, 70);
    let mut w = values(11, rows * cols);
    w[32..64].iter_mut().for_each(|v| *v = 0.25);
    w[70 + 3] = 40.0;
    let (data, scales) = crate::writer::quantize_q4(&w, cols);
    assert_eq!((data.len(), scales.len()), (rows * 3 * 16, rows * 3 * 2));
    let matrix = Q4Matrix {
        rows,
        cols,
        data: &data,
        scales: &scales,
    };
    let weight = Weight::Q4(matrix);
    assert!(weight.is_whole());
    let mut dense = alloc::vec![0.0f32; rows * cols];
    for (i, row) in dense.chunks_exact_mut(cols).enumerate() {
        weight.copy_row(i, row);
        for (j, (&o, &v)) in row.iter().zip(&w[i * cols..(i + 1) * cols]).enumerate() {
            let (d, m) = q4_pair(&scales[2 * (i * 3 + j / 32)..]);
            let tolerance = d / 2.0 + m.abs() * 1e-3 + 1e-6;
            assert!(
                (o - v).abs() <= tolerance,
                "row {i} col {j}: {o} vs {v} (d {d})"
            );
        }
    }
    assert!(
        dense[32..64].iter().all(|&v| v == 0.25),
        "a constant block is exact"
    );
    let tokens = 5;
    let x = values(12, tokens * cols);
    let mut expected = alloc::vec![0.0f32; tokens * rows];
    let f32_matrix = F32Matrix {
        rows,
        cols,
        data: &dense,
    };
    Portable.gemm_f32(f32_matrix, &x, tokens, &mut expected);
    for kernels in available() {
        for threads in [1, 2] {
            let kernels = Threaded::new(kernels, threads);
            for n in [1, tokens] {
                let mut out = alloc::vec![0.0f32; n * rows];
                kernels.gemm(weight, &x[..n * cols], n, &mut out);
                // A decode that rounds activations to int8 is within half a step of each,
                // times the weights' magnitudes (`Kernels::rounds_activations`).
                let rounds = kernels.rounds_activations(n);
                for (index, (o, e)) in out.iter().zip(&expected).enumerate() {
                    let mut tolerance = 1e-4 * (1.0 + e.abs());
                    if rounds {
                        let (t, i) = (index / rows, index % rows);
                        let xt = &x[t * cols..(t + 1) * cols];
                        tolerance += dense[i * cols..(i + 1) * cols]
                            .chunks(32)
                            .zip(xt.chunks(32))
                            .map(|(w, x)| {
                                let step = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                                w.iter().map(|w| w.abs()).sum::<f32>() * step / 2.0
                            })
                            .sum::<f32>();
                    }
                    assert!((o - e).abs() <= tolerance, "{}: {o} vs {e}", kernels.name());
                }
            }
        }
    }
}
