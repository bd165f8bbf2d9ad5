//! The crate stays sans-IO: its sources never read a clock, open a socket or a
//! file, or pull in an async runtime. Checked by grepping `src/`; the needles
//! are assembled at run time so this file does not match itself.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sources_do_no_io() {
    let needles: Vec<String> = vec![
        ["SystemTime", "::now"].concat(),
        ["Instant", "::now"].concat(),
        ["std::net::", "UdpSocket"].concat(),
        ["UdpSocket", "::bind"].concat(),
        ["Tcp", "Stream"].concat(),
        ["Tcp", "Listener"].concat(),
        ["std", "::fs"].concat(),
        ["std", "::process"].concat(),
        ["std", "::thread"].concat(),
        ["tok", "io"].concat(),
        ["mi", "o::"].concat(),
        ["OsR", "ng"].concat(),
        ["thread_", "rng"].concat(),
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() >= 5,
        "expected the crate's modules under {src:?}"
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for needle in &needles {
                if line.contains(needle.as_str()) {
                    found.push(format!("{}:{}: {needle}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "I/O in a sans-IO crate:\n{}",
        found.join("\n")
    );
}

#[test]
fn manifest_has_no_io_dependencies() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] table");
    for line in deps.lines() {
        let name = line.split(['.', '=', ' ']).next().unwrap_or("").trim();
        for forbidden in ["tokio", "quinn", "mio", "socket2", "async-std", "smol"] {
            assert_ne!(name, forbidden, "I/O dependency in kith-protocol");
        }
    }
}
