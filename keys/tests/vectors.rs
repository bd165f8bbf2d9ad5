//! Official test vectors: SLIP-0010 (ed25519) and BIP39 (English, passphrase "TREZOR").
//!
//! Values are copied from satoshilabs/slips `slip-0010.md` ("Test vector 1 for
//! ed25519", "Test vector 2 for ed25519") and trezor/python-mnemonic
//! `vectors.json`. They are the only ground truth this crate's derivation is
//! checked against; never edit one to make a test pass.

use data_encoding::HEXLOWER;
use kith_keys::{ExtendedKey, HARDENED, Mnemonic};

fn hex(s: &str) -> Vec<u8> {
    HEXLOWER.decode(s.as_bytes()).unwrap()
}

const H: u32 = HARDENED;

/// (path, chain code, private key, public key as printed by SLIP-0010: 0x00 || key).
type Step = (&'static [u32], &'static str, &'static str, &'static str);

const SLIP10_ED25519_VECTOR_1_SEED: &str = "000102030405060708090a0b0c0d0e0f";
const SLIP10_ED25519_VECTOR_1: [Step; 6] = [
    (
        &[],
        "90046a93de5380a72b5e45010748567d5ea02bbf6522f979e05c0d8d8ca9fffb",
        "2b4be7f19ee27bbf30c667b642d5f4aa69fd169872f8fc3059c08ebae2eb19e7",
        "00a4b2856bfec510abab89753fac1ac0e1112364e7d250545963f135f2a33188ed",
    ),
    (
        &[H],
        "8b59aa11380b624e81507a27fedda59fea6d0b779a778918a2fd3590e16e9c69",
        "68e0fe46dfb67e368c75379acec591dad19df3cde26e63b93a8e704f1dade7a3",
        "008c8a13df77a28f3445213a0f432fde644acaa215fc72dcdf300d5efaa85d350c",
    ),
    (
        &[H, H | 1],
        "a320425f77d1b5c2505a6b1b27382b37368ee640e3557c315416801243552f14",
        "b1d0bad404bf35da785a64ca1ac54b2617211d2777696fbffaf208f746ae84f2",
        "001932a5270f335bed617d5b935c80aedb1a35bd9fc1e31acafd5372c30f5c1187",
    ),
    (
        &[H, H | 1, H | 2],
        "2e69929e00b5ab250f49c3fb1c12f252de4fed2c1db88387094a0f8c4c9ccd6c",
        "92a5b23c0b8a99e37d07df3fb9966917f5d06e02ddbd909c7e184371463e9fc9",
        "00ae98736566d30ed0e9d2f4486a64bc95740d89c7db33f52121f8ea8f76ff0fc1",
    ),
    (
        &[H, H | 1, H | 2, H | 2],
        "8f6d87f93d750e0efccda017d662a1b31a266e4a6f5993b15f5c1f07f74dd5cc",
        "30d1dc7e5fc04c31219ab25a27ae00b50f6fd66622f6e9c913253d6511d1e662",
        "008abae2d66361c879b900d204ad2cc4984fa2aa344dd7ddc46007329ac76c429c",
    ),
    (
        &[H, H | 1, H | 2, H | 2, H | 1_000_000_000],
        "68789923a0cac2cd5a29172a475fe9e0fb14cd6adb5ad98a3fa70333e7afa230",
        "8f94d394a8e8fd6b1bc2f3f49f5c47e385281d5c17e65324b0f62483e37e8793",
        "003c24da049451555d51a7014a37337aa4e12d41e485abccfa46b47dfb2af54b7a",
    ),
];

const SLIP10_ED25519_VECTOR_2_SEED: &str = "fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a29f9c999693908d8a8784817e7b7875726f6c696663605d5a5754514e4b484542";
const SLIP10_ED25519_VECTOR_2: [Step; 6] = [
    (
        &[],
        "ef70a74db9c3a5af931b5fe73ed8e1a53464133654fd55e7a66f8570b8e33c3b",
        "171cb88b1b3c1db25add599712e36245d75bc65a1a5c9e18d76f9f2b1eab4012",
        "008fe9693f8fa62a4305a140b9764c5ee01e455963744fe18204b4fb948249308a",
    ),
    (
        &[H],
        "0b78a3226f915c082bf118f83618a618ab6dec793752624cbeb622acb562862d",
        "1559eb2bbec5790b0c65d8693e4d0875b1747f4970ae8b650486ed7470845635",
        "0086fab68dcb57aa196c77c5f264f215a112c22a912c10d123b0d03c3c28ef1037",
    ),
    (
        &[H, H | 2_147_483_647],
        "138f0b2551bcafeca6ff2aa88ba8ed0ed8de070841f0c4ef0165df8181eaad7f",
        "ea4f5bfe8694d8bb74b7b59404632fd5968b774ed545e810de9c32a4fb4192f4",
        "005ba3b9ac6e90e83effcd25ac4e58a1365a9e35a3d3ae5eb07b9e4d90bcf7506d",
    ),
    (
        &[H, H | 2_147_483_647, H | 1],
        "73bd9fff1cfbde33a1b846c27085f711c0fe2d66fd32e139d3ebc28e5a4a6b90",
        "3757c7577170179c7868353ada796c839135b3d30554bbb74a4b1e4a5a58505c",
        "002e66aa57069c86cc18249aecf5cb5a9cebbfd6fadeab056254763874a9352b45",
    ),
    (
        &[H, H | 2_147_483_647, H | 1, H | 2_147_483_646],
        "0902fe8a29f9140480a00ef244bd183e8a13288e4412d8389d140aac1794825a",
        "5837736c89570de861ebc173b1086da4f505d4adb387c6a1b1342d5e4ac9ec72",
        "00e33c0f7d81d843c572275f287498e8d408654fdf0d1e065b84e2e6f157aab09b",
    ),
    (
        &[H, H | 2_147_483_647, H | 1, H | 2_147_483_646, H | 2],
        "5d70af781f3a37b829f0d060924d5e960bdc02e85423494afc0b1a41bbe196d4",
        "551d333177df541ad876a60ea71f00447931c0a9da16f227c11ea080d7391b8d",
        "0047150c75db263559a70d5778bf36abbab30fb061ad69f69ece61a72b0cfa4fc0",
    ),
];

fn check_slip10(seed_hex: &str, steps: &[Step]) {
    let seed = hex(seed_hex);
    let mut walked = ExtendedKey::master(&seed);
    for (i, &(path, chain_code, private, public)) in steps.iter().enumerate() {
        let key = ExtendedKey::derive_path(&seed, path).unwrap();
        assert_eq!(
            HEXLOWER.encode(key.chain_code()),
            chain_code,
            "chain code at {path:x?}"
        );
        assert_eq!(
            HEXLOWER.encode(&key.secret()[..]),
            private,
            "private key at {path:x?}"
        );
        let (prefix, public) = public.split_at(2);
        assert_eq!(
            prefix, "00",
            "SLIP-0010 prints ed25519 keys with a 0x00 prefix"
        );
        assert_eq!(
            HEXLOWER.encode(&key.public_key()),
            public,
            "public key at {path:x?}"
        );

        // Step by step from the parent gives the same key as the whole path.
        if i > 0 {
            walked = walked.derive_child(*path.last().unwrap()).unwrap();
        }
        assert_eq!(walked.secret(), key.secret());
        assert_eq!(walked.chain_code(), key.chain_code());
    }
}

#[test]
fn slip10_ed25519_test_vector_1() {
    check_slip10(SLIP10_ED25519_VECTOR_1_SEED, &SLIP10_ED25519_VECTOR_1);
}

#[test]
fn slip10_ed25519_test_vector_2() {
    check_slip10(SLIP10_ED25519_VECTOR_2_SEED, &SLIP10_ED25519_VECTOR_2);
}

/// (entropy, phrase, seed with passphrase "TREZOR"), from trezor/python-mnemonic vectors.json.
const BIP39_ENGLISH: [(&str, &str, &str); 8] = [
    (
        "00000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
    ),
    (
        "ffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong",
        "ac27495480225222079d7be181583751e86f571027b0497b5b5d11218e0a8a13332572917f0f8e5a589620c6f15b11c61dee327651a14c34e18231052e48c069",
    ),
    (
        "9e885d952ad362caeb4efe34a8e91bd2",
        "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic",
        "274ddc525802f7c828d8ef7ddbcdc5304e87ac3535913611fbbfa986d0c9e5476c91689f9c8a54fd55bd38606aa6a8595ad213d4c9c9f9aca3fb217069a41028",
    ),
    (
        "808080808080808080808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic avoid letter always",
        "107d7c02a5aa6f38c58083ff74f04c607c2d2c0ecc55501dadd72d025b751bc27fe913ffb796f841c49b1d33b610cf0e91d3aa239027f5e99fe4ce9e5088cd65",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art",
        "bda85446c68413707090a52022edd26a1c9462295029f2e60cd7c4f2bbd3097170af7a4d73245cafa9c3cca8d561a7c3de6f5d4a10be8ed2a5e608d68f92fcc8",
    ),
    (
        "8080808080808080808080808080808080808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless",
        "c0c519bd0e91a2ed54357d9d1ebef6f5af218a153624cf4f2da911a0ed8f7a09e2ef61af0aca007096df430022f7a2b6fb91661a9589097069720d015e4e982f",
    ),
    (
        "68a79eaca2324873eacc50cb9c6eca8cc68ea5d936f98787c60c7ebc74e6ce7c",
        "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy gospel tennis maple dilemma loan word shrug inflict delay length",
        "64c87cde7e12ecf6704ab95bb1408bef047c22db4cc7491c4271d170a1b213d20b385bc1588d9c7b38f1b39d415665b8a9030c9ec653d75e65f847d8fc1fc440",
    ),
    (
        "9f6a2878b2520799a44ef18bc7df394e7061a224d2c33cd015b157d746869863",
        "panda eyebrow bullet gorilla call smoke muffin taste mesh discover soft ostrich alcohol speed nation flash devote level hobby quick inner drive ghost inside",
        "72be8e052fc4919d2adf28d5306b5474b0069df35b02303de8c1729c9538dbb6fc2d731d5f832193cd9fb6aeecbc469594a70e3dd50811b5067f3b88b28c3e8d",
    ),
];

#[test]
fn bip39_english_vectors_entropy_to_phrase() {
    for (entropy, phrase, _) in BIP39_ENGLISH {
        let mnemonic = Mnemonic::from_entropy(&hex(entropy)).unwrap();
        assert_eq!(*mnemonic.phrase(), phrase);
        assert_eq!(mnemonic.word_count(), phrase.split(' ').count());
    }
}

#[test]
fn bip39_english_vectors_phrase_to_entropy_and_seed() {
    for (entropy, phrase, seed) in BIP39_ENGLISH {
        let mnemonic = Mnemonic::parse(phrase).unwrap();
        assert_eq!(HEXLOWER.encode(mnemonic.entropy()), entropy, "{phrase}");
        assert_eq!(
            HEXLOWER.encode(&mnemonic.to_seed("TREZOR")[..]),
            seed,
            "{phrase}"
        );
    }
}

#[test]
fn bip39_seed_depends_on_the_passphrase() {
    let (_, phrase, seed) = BIP39_ENGLISH[0];
    let mnemonic = Mnemonic::parse(phrase).unwrap();
    assert_ne!(HEXLOWER.encode(&mnemonic.to_seed("")[..]), seed);
    assert_ne!(HEXLOWER.encode(&mnemonic.to_seed("trezor")[..]), seed);
}
