//! Unit tests of the SentencePiece tokenizer on a hand-made vocabulary.

use super::*;
use alloc::vec::Vec as StdVec;

const NORMAL: u8 = 1;
const CONTROL: u8 = 3;
const USER: u8 = 4;
const BYTE: u8 = 6;

/// A tiny vocabulary: `(text, score, type)` by id, with all 256 byte tokens appended.
fn vocab() -> StdVec<(StdVec<u8>, f32, u8)> {
    let mut tokens: StdVec<(StdVec<u8>, f32, u8)> = [
        ("<pad>", -1000.0, CONTROL),
        ("<eos>", -1000.0, CONTROL),
        ("<bos>", -1000.0, CONTROL),
        ("\n", -1000.0, USER),
        ("\n\n", -1000.0, USER),
        ("  ", -1000.0, USER),
        ("<b>", -1000.0, USER),
        ("a", -1.0, NORMAL),
        ("b", -2.0, NORMAL),
        ("c", -3.0, NORMAL),
        ("▁", -4.0, NORMAL),
        ("ab", -5.0, NORMAL),
        ("bc", -5.0, NORMAL),
        ("▁a", -6.0, NORMAL),
        ("abc", -7.0, NORMAL),
        ("<", -8.0, NORMAL),
        ("b>", -9.0, NORMAL),
        ("▁▁", -10.0, NORMAL),
        ("x", -11.0, NORMAL),
        ("ok▁", -12.0, NORMAL),
        ("o", -13.0, NORMAL),
        ("k", -14.0, NORMAL),
        ("ok", -15.0, NORMAL),
    ]
    .into_iter()
    .map(|(text, score, kind)| (text.as_bytes().to_vec(), score, kind))
    .collect();
    for byte in 0..=255u8 {
        tokens.push((alloc::format!("<0x{byte:02X}>").into_bytes(), 0.0, BYTE));
    }
    tokens.push((b"yz!".to_vec(), -1000.0, USER));
    tokens.push((b"wy".to_vec(), -1000.0, USER));
    tokens
}

fn byte_id(byte: u8) -> u32 {
    23 + u32::from(byte)
}

fn owned() -> OwnedSpmTables {
    let tokens = vocab();
    let texts: StdVec<&[u8]> = tokens.iter().map(|(t, _, _)| t.as_slice()).collect();
    let scores: StdVec<f32> = tokens.iter().map(|(_, s, _)| *s).collect();
    let types: StdVec<u8> = tokens.iter().map(|(_, _, k)| *k).collect();
    OwnedSpmTables::build(&texts, &scores, &types).expect("test tables")
}

fn check_special(pieces: &[&str], parse_special: bool, expected: &[u32]) {
    let owned = owned();
    let tables = owned.tables().expect("test tables");
    let mut out: Vec<u32, 64> = Vec::new();
    tables
        .encode(pieces, parse_special, &mut out)
        .expect("encodes");
    assert_eq!(out.as_slice(), expected, "{pieces:?}");
    let mut grown = StdVec::new();
    tables
        .encode_to_vec(pieces, parse_special, &mut grown, None)
        .expect("encodes");
    assert_eq!(grown, expected, "{pieces:?}");
}

fn check(text: &str, expected: &[u32]) {
    check_special(&[text], true, expected);
}

#[test]
fn merges_by_score() {
    check("a", &[7]);
    check("ab", &[11]);
    check("abc", &[14]);
    check("cab", &[9, 11]);
}

#[test]
fn ties_go_to_the_leftmost_pair() {
    // "ab" and "bc" both score -5: "ab" is leftmost, then "ab"+"c" = "abc".
    check("abc", &[14]);
    // In "bcab": "bc" (left) before "ab".
    check("bcab", &[12, 11]);
}

#[test]
fn spaces_read_as_the_space_mark() {
    check(" a", &[13]);
    check("a b", &[7, 10, 8]);
    check("ok b", &[19, 8]);
    check(" ", &[10]);
}

#[test]
fn unknown_characters_fall_back_to_bytes() {
    check("é", &[byte_id(0xC3), byte_id(0xA9)]);
    check(
        "a😀",
        &[
            7,
            byte_id(0xF0),
            byte_id(0x9F),
            byte_id(0x98),
            byte_id(0x80),
        ],
    );
}

#[test]
fn literals_split_longest_first() {
    check("a\n\n\nb", &[7, 4, 3, 8]);
    check("a  b", &[7, 5, 8]);
    check("a   b", &[7, 5, 10, 8]);
    check("x<b>x", &[18, 6, 18]);
    check("<bos>a", &[2, 7]);
    check("\n", &[3]);
}

#[test]
fn each_literal_splits_the_whole_text_before_the_next() {
    // "yz!" (279) is tried before the shorter "wy" (280), although "wy" starts further left.
    check("wyz!", &[byte_id(b'w'), 279]);
    check("wy z!", &[280, 10, byte_id(b'z'), byte_id(b'!')]);
}

#[test]
fn appends_after_what_out_holds() {
    let owned = owned();
    let tables = owned.tables().expect("test tables");
    let mut out: Vec<u32, 8> = Vec::new();
    out.push(2).expect("room");
    tables.encode(&["ab c"], true, &mut out).expect("encodes");
    assert_eq!(out.as_slice(), &[2, 11, 10, 9]);
}

#[test]
fn control_tokens_need_parse_special() {
    check_special(&["<bos>a"], true, &[2, 7]);
    check_special(
        &["<bos>"],
        false,
        &[15, 8, 20, byte_id(b's'), byte_id(b'>')],
    );
    check_special(&["<b>"], false, &[6]);
}

#[test]
fn pieces_read_as_one_text() {
    check_special(&["a", "b", "c"], true, &[14]);
    check_special(&["x<", "b>x"], true, &[18, 6, 18]);
    check_special(&["", "ok", " "], true, &[19]);
}

#[test]
fn full_output_is_refused() {
    let owned = owned();
    let tables = owned.tables().expect("test tables");
    let mut out: Vec<u32, 2> = Vec::new();
    assert_eq!(
        tables.encode(&["abc abc"], true, &mut out),
        Err(Error::InputTooLong)
    );
    let mut out: Vec<u32, 3> = Vec::new();
    assert_eq!(tables.encode(&["abc"], true, &mut out), Ok(()));
    assert_eq!(out.as_slice(), &[14]);
}

#[test]
fn decodes_without_specials() {
    let owned = owned();
    let tables = owned.tables().expect("test tables");
    let mut out = [0u8; 32];
    let ids = [2, 13, 10, 8, 5, 6, 1, byte_id(0xC3), byte_id(0xA9), 3];
    let n = tables.decode_into(&ids, &mut out);
    assert_eq!(
        core::str::from_utf8(&out[..n]).expect("UTF-8"),
        " a b  <b>é\n"
    );
    let mut short = [0u8; 3];
    assert_eq!(tables.decode_into(&ids, &mut short), 3);
    assert_eq!(&short, b" a ");
}

#[test]
fn round_trips() {
    let owned = owned();
    let tables = owned.tables().expect("test tables");
    for text in ["abc cab", "  x\n\nok é😀 <b>", "<bos>bcab"] {
        let mut ids = StdVec::new();
        tables
            .encode_to_vec(&[text], false, &mut ids, None)
            .expect("encodes");
        let mut out = [0u8; 64];
        let n = tables.decode_into(&ids, &mut out);
        assert_eq!(core::str::from_utf8(&out[..n]).expect("UTF-8"), text);
    }
}

#[test]
fn malformed_tables_are_refused() {
    let owned = owned();
    let tables_with = |offsets: &[u8]| {
        SpmTables::new(
            offsets,
            &owned.token_bytes,
            &owned.scores,
            &owned.token_types,
            &owned.sorted_ids,
            &owned.literal_ids,
        )
        .err()
    };
    assert_eq!(tables_with(&owned.offsets[4..]), Some(Error::BadTokenizer));
    let mut offsets = owned.offsets.clone();
    offsets[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(tables_with(&offsets), Some(Error::BadTokenizer));
    assert_eq!(
        OwnedSpmTables::build(&[b"a"], &[], &[1]),
        Err(Error::BadTokenizer)
    );
}
