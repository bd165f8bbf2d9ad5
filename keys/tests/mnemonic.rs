//! Recovery phrase parsing: what is accepted, and errors that say what is wrong.

use kith_keys::{Mnemonic, MnemonicError};

const OZONE: &str = "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic";

#[test]
fn wrong_word_count_is_named() {
    for count in [0usize, 1, 11, 13, 23, 25, 48] {
        let phrase = vec!["abandon"; count].join(" ");
        assert_eq!(
            Mnemonic::parse(&phrase).unwrap_err(),
            MnemonicError::WordCount(count)
        );
    }
    assert_eq!(
        MnemonicError::WordCount(11).to_string(),
        "a recovery phrase has 12, 15, 18, 21 or 24 words; got 11"
    );
}

#[test]
fn unknown_word_is_named_with_its_position_from_one() {
    let phrase = OZONE.replace("fiber", "fibre");
    let err = Mnemonic::parse(&phrase).unwrap_err();
    assert_eq!(err, MnemonicError::UnknownWord { position: 4 });
    assert!(err.to_string().contains("word 4"), "{err}");
    // A mistyped word is close to a secret word: the message never repeats it.
    assert!(!err.to_string().contains("fibre"), "{err}");

    // The first unknown word is the one reported.
    let phrase = OZONE.replace("ozone", "Ozon").replace("picnic", "picnix");
    assert_eq!(
        Mnemonic::parse(&phrase).unwrap_err(),
        MnemonicError::UnknownWord { position: 1 }
    );
}

#[test]
fn valid_words_with_a_bad_checksum_are_refused() {
    // Twelve valid words, but "abandon" x12 does not carry the right checksum.
    let phrase = ["abandon"; 12].join(" ");
    assert_eq!(
        Mnemonic::parse(&phrase).unwrap_err(),
        MnemonicError::Checksum
    );
    // Two words swapped.
    let mut words: Vec<&str> = OZONE.split(' ').collect();
    words.swap(0, 1);
    assert_eq!(
        Mnemonic::parse(&words.join(" ")).unwrap_err(),
        MnemonicError::Checksum
    );
    // The last word replaced by another valid word.
    let phrase = OZONE.replace("picnic", "zoo");
    assert_eq!(
        Mnemonic::parse(&phrase).unwrap_err(),
        MnemonicError::Checksum
    );
}

#[test]
fn generate_makes_24_fresh_words_that_round_trip() {
    let a = Mnemonic::generate();
    let b = Mnemonic::generate();
    assert_eq!(a.word_count(), 24);
    assert_eq!(a.entropy().len(), 32);
    assert_eq!(a.phrase().split(' ').count(), 24);
    assert_ne!(a.entropy(), b.entropy());

    let back = Mnemonic::parse(&a.phrase()).unwrap();
    assert_eq!(back.entropy(), a.entropy());
    assert_eq!(*back.phrase(), *a.phrase());
    assert_eq!(*back.to_seed("p"), *a.to_seed("p"));
}

#[test]
fn parse_ignores_case_and_whitespace() {
    let canonical = Mnemonic::parse(OZONE).unwrap();
    let messy = format!(
        "  \n{}\t\r\n ",
        OZONE
            .split(' ')
            .enumerate()
            .map(|(i, w)| if i % 2 == 0 {
                w.to_uppercase()
            } else {
                w.to_string()
            })
            .collect::<Vec<_>>()
            .join(" \t  ")
    );
    let parsed = Mnemonic::parse(&messy).unwrap();
    assert_eq!(parsed.entropy(), canonical.entropy());
    assert_eq!(*parsed.phrase(), OZONE);
}

#[test]
fn every_valid_length_parses() {
    for len in [16usize, 20, 24, 28, 32] {
        let m = Mnemonic::from_entropy(&vec![0x5a; len]).unwrap();
        let parsed = Mnemonic::parse(&m.phrase()).unwrap();
        assert_eq!(parsed.word_count(), len * 3 / 4);
        assert_eq!(parsed.entropy(), m.entropy());
    }
}

#[test]
fn debug_shows_only_the_word_count() {
    let m = Mnemonic::parse(OZONE).unwrap();
    assert_eq!(format!("{m:?}"), "Mnemonic(<redacted, 12 words>)");
    assert_eq!(
        format!("{:?}", Mnemonic::generate()),
        "Mnemonic(<redacted, 24 words>)"
    );
}
