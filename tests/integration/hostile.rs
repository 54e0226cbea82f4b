//! The hostile-input suite for model files: every rule of the safetensors and GGUF
//! validators broken once, pickles wherever they hide, each refused by a real
//! `modelctl publish` with its exact error and the store left as it was (and the same
//! verdict from `modelctl inspect`, which needs no daemon). The valid files come from
//! the formats' own Python packages (`tests/fixtures/make_models.py`).

use std::path::Path;

use modeld_tests::{
    Daemon, modelctl,
    models::{Gguf, TensorInfo, Value, fixture, fixtures, safetensors},
    publish_args, trusted_key,
};

/// What a store holds, to prove a refusal changed nothing: the manifest list and
/// every blob file with its size.
fn snapshot(d: &Daemon) -> (serde_json::Value, Vec<(String, u64)>) {
    let mut files = Vec::new();
    let blobs = d.data_dir().join("store/blobs");
    let mut stack = vec![blobs.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files.push((e.path().display().to_string(), m.len()));
            }
        }
    }
    files.sort();
    (d.ctl_json(&["ls"]), files)
}

/// Publishes a model holding `name` = `bytes` (and a config file), expecting a
/// refusal that contains `expect` and leaves the store unchanged; `modelctl inspect`
/// must refuse the file with the same words.
fn refused(name: &str, bytes: &[u8], expect: &str) {
    refused_with(name, bytes, expect, &[]);
}

fn refused_with(name: &str, bytes: &[u8], expect: &str, publish_flags: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("node"));
    let (key, _) = trusted_key(&d, tmp.path(), "org/");
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), br#"{"hidden_size": 64}"#).unwrap();
    std::fs::write(model.join(name), bytes).unwrap();
    let before = snapshot(&d);
    let mut args = vec![
        "publish",
        model.to_str().unwrap(),
        "--name",
        "org/model",
        "--version",
        "1",
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(publish_flags);
    let err = d.ctl_err(&args);
    assert!(err.contains(expect), "expected {expect:?} in:\n{err}");
    assert!(err.contains(name), "the error names the file:\n{err}");
    assert!(err.contains("nothing was stored"), "{err}");
    assert_eq!(snapshot(&d), before, "a refused publish changed the store");

    let mut args = vec!["inspect", "--json"];
    args.extend(publish_flags.iter().filter(|f| **f == "--allow-pickle"));
    let file = model.join(name);
    args.push(file.to_str().unwrap());
    let out = modelctl(tmp.path(), &args);
    assert!(!out.status.success(), "inspect accepted {name}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(expect),
        "inspect: expected {expect:?} in {error:?}"
    );
}

// ---- valid files --------------------------------------------------------------------

#[test]
fn every_file_written_by_the_python_packages_is_accepted() {
    let valid = fixtures().join("valid");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("node"));
    let (key, _) = trusted_key(&d, tmp.path(), "org/");
    let id = d.ctl_ok(&publish_args(
        valid.to_str().unwrap(),
        "org/valid",
        "1",
        key.to_str().unwrap(),
    ));
    let shown = d.ctl_json(&["manifest", "show", id.trim()]);
    let formats: Vec<(String, String)> = shown["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["format"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (path, format) in &formats {
        let want = match Path::new(path).extension().and_then(|e| e.to_str()) {
            Some("safetensors") => "safetensors",
            Some("gguf") => "gguf",
            Some("npy" | "npz") => "numpy",
            _ => "other",
        };
        assert_eq!(format, want, "{path}");
    }
    let out = tmp.path().join("out");
    d.ctl_ok(&["export", id.trim(), out.to_str().unwrap()]);
    for (path, _) in &formats {
        assert_eq!(
            std::fs::read(out.join(path)).unwrap(),
            std::fs::read(valid.join(path)).unwrap()
        );
    }
}

#[test]
fn the_test_gguf_builder_writes_what_the_gguf_package_writes() {
    // The GGUF mutations below start from this builder, so it must be exact.
    assert_eq!(Gguf::small().to_bytes(), fixture("valid/small.gguf"));
    let out = modelctl(
        Path::new("/nonexistent"),
        &[
            "inspect",
            "--json",
            fixtures().join("valid/small.gguf").to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
}

// ---- safetensors: every rule broken once ------------------------------------------

const GOOD_TENSORS: &str = r#""a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[2,3],"data_offsets":[16,28]}"#;

#[test]
fn safetensors_header_length_over_the_limit() {
    let mut f = 100_000_001u64.to_le_bytes().to_vec();
    f.extend_from_slice(b"{}      ");
    refused(
        "model.safetensors",
        &f,
        "header length 100000001 is over the limit of 100000000 bytes",
    );
}

#[test]
fn safetensors_header_past_the_end_of_the_file() {
    let mut f = 4096u64.to_le_bytes().to_vec();
    f.extend_from_slice(b"{}      ");
    refused(
        "model.safetensors",
        &f,
        "header length 4096 runs past the end of the 16-byte file",
    );
}

#[test]
fn safetensors_header_not_utf8() {
    let mut f = 8u64.to_le_bytes().to_vec();
    f.extend_from_slice(b"{\"\xff\":1} ");
    refused("model.safetensors", &f, "header is not valid UTF-8");
}

#[test]
fn safetensors_header_not_an_object() {
    refused(
        "model.safetensors",
        &safetensors("[1, 2]", 0),
        "header does not start with '{'",
    );
}

#[test]
fn safetensors_header_not_json() {
    refused(
        "model.safetensors",
        &safetensors(r#"{"a": }"#, 0),
        "header is not valid JSON",
    );
}

#[test]
fn safetensors_unknown_dtype() {
    let h = r#"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 16),
        "tensor \"a\": unknown dtype \"F128\"",
    );
}

#[test]
fn safetensors_shape_overflows() {
    let h = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 4),
        "tensor \"a\": shape overflows",
    );
}

#[test]
fn safetensors_size_not_a_whole_number_of_bytes() {
    let h = r#"{"a":{"dtype":"F6_E2M3","shape":[3],"data_offsets":[0,2]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 2),
        "18 bits is not a whole number of bytes",
    );
}

#[test]
fn safetensors_offsets_disagree_with_the_shape() {
    let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 12),
        "data_offsets [0, 12] hold 12 bytes, its shape needs 16",
    );
}

#[test]
fn safetensors_gap_between_tensors() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 12),
        "tensor \"b\" starts at 8, expected 4: gap",
    );
}

#[test]
fn safetensors_overlapping_tensors() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 6),
        "starts at 2, expected 4: overlap",
    );
}

#[test]
fn safetensors_aliased_tensors() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 4),
        "starts at 0, expected 4: alias",
    );
}

#[test]
fn safetensors_data_not_starting_at_zero() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 8),
        "tensor \"a\" starts at 4, expected 0: gap",
    );
}

#[test]
fn safetensors_trailing_bytes_after_the_data() {
    let h = format!("{{{GOOD_TENSORS}}}");
    refused(
        "model.safetensors",
        &safetensors(&h, 29),
        "tensor data ends at 28 but the file holds 29 bytes of data",
    );
}

#[test]
fn safetensors_truncated_data() {
    let mut f = fixture("valid/small.safetensors");
    f.truncate(f.len() - 1);
    refused(
        "model.safetensors",
        &f,
        "tensor data ends at 28 but the file holds 27 bytes of data",
    );
}

#[test]
fn safetensors_duplicate_tensor_names() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#;
    refused(
        "model.safetensors",
        &safetensors(h, 8),
        "duplicate key \"a\" in header",
    );
}

#[test]
fn safetensors_metadata_not_a_string_map() {
    let h = format!(r#"{{"__metadata__":{{"epochs":3}},{GOOD_TENSORS}}}"#);
    refused(
        "model.safetensors",
        &safetensors(&h, 28),
        "__metadata__ must map strings to strings",
    );
}

#[test]
fn safetensors_metadata_posing_as_a_tensor() {
    let h = format!(
        r#"{{"__metadata__":{{"dtype":"U8","shape":[4],"data_offsets":[28,32]}},{GOOD_TENSORS}}}"#
    );
    refused(
        "model.safetensors",
        &safetensors(&h, 32),
        "__metadata__ must map strings to strings",
    );
}

// ---- GGUF: every rule broken once -------------------------------------------------

fn gguf(f: impl FnOnce(&mut Gguf)) -> Vec<u8> {
    let mut g = Gguf::small();
    f(&mut g);
    g.to_bytes()
}

#[test]
fn gguf_bad_magic() {
    refused(
        "model.gguf",
        &gguf(|g| g.magic = *b"GGML"),
        "missing GGUF magic",
    );
}

#[test]
fn gguf_unsupported_version() {
    refused(
        "model.gguf",
        &gguf(|g| g.version = 1),
        "GGUF version 1 is not supported",
    );
}

#[test]
fn gguf_byte_swapped_version() {
    refused(
        "model.gguf",
        &gguf(|g| g.version = 3u32.swap_bytes()),
        "GGUF version is byte-swapped (big-endian file, version 3)",
    );
}

#[test]
fn gguf_tensor_count_more_than_the_file_holds() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensor_count = Some(1 << 40)),
        "tensor count 1099511627776 is more than the file can hold",
    );
}

#[test]
fn gguf_key_value_count_more_than_the_file_holds() {
    refused(
        "model.gguf",
        &gguf(|g| g.kv_count = Some(u64::MAX)),
        "key-value count 18446744073709551615 is more than the file can hold",
    );
}

#[test]
fn gguf_empty_key() {
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((Vec::new(), Value::U32(1)))),
        "empty key at offset",
    );
}

#[test]
fn gguf_duplicate_key() {
    refused(
        "model.gguf",
        &gguf(|g| {
            g.kvs.push((
                b"general.architecture".to_vec(),
                Value::Str(b"gpt2".to_vec()),
            ))
        }),
        "duplicate key \"general.architecture\"",
    );
}

#[test]
fn gguf_overlong_key() {
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((vec![b'k'; 70_000], Value::U32(1)))),
        "is 70000 bytes (limit 65535)",
    );
}

#[test]
fn gguf_unknown_value_type() {
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((b"x".to_vec(), Value::Raw(13, vec![0; 8])))),
        "key \"x\": unknown value type 13",
    );
}

#[test]
fn gguf_nested_array() {
    let inner = [4u32.to_le_bytes().as_slice(), 0u64.to_le_bytes().as_slice()].concat();
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((b"x".to_vec(), Value::Array(9, 1, inner)))),
        "key \"x\": nested arrays are not allowed",
    );
}

#[test]
fn gguf_string_past_the_end() {
    let len = (1u64 << 40).to_le_bytes().to_vec();
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((b"x".to_vec(), Value::Raw(8, len)))),
        "has length 1099511627776, past the end of the file",
    );
}

#[test]
fn gguf_array_past_the_end() {
    refused(
        "model.gguf",
        &gguf(|g| {
            g.kvs
                .push((b"x".to_vec(), Value::Array(4, 1 << 40, Vec::new())))
        }),
        "array at offset",
    );
}

#[test]
fn gguf_alignment_not_a_power_of_two() {
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((b"general.alignment".to_vec(), Value::U32(48)))),
        "general.alignment 48 must be a non-zero power of two",
    );
}

#[test]
fn gguf_alignment_zero() {
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((b"general.alignment".to_vec(), Value::U32(0)))),
        "general.alignment 0 must be a non-zero power of two",
    );
}

#[test]
fn gguf_alignment_over_one_mib() {
    refused(
        "model.gguf",
        &gguf(|g| {
            g.kvs
                .push((b"general.alignment".to_vec(), Value::U32(1 << 21)))
        }),
        "general.alignment 2097152 must be",
    );
}

#[test]
fn gguf_alignment_of_the_wrong_type() {
    refused(
        "model.gguf",
        &gguf(|g| g.kvs.push((b"general.alignment".to_vec(), Value::U64(32)))),
        "general.alignment of value type 10 must be",
    );
}

#[test]
fn gguf_duplicate_tensor_name() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[1].name = b"t0".to_vec()),
        "duplicate tensor name \"t0\"",
    );
}

#[test]
fn gguf_overlong_tensor_name() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[1].name = vec![b'n'; 64]),
        "tensor 1: bad name (64 bytes, longer than 63)",
    );
}

#[test]
fn gguf_empty_tensor_name() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[0].name = Vec::new()),
        "tensor 0: bad name (empty)",
    );
}

#[test]
fn gguf_too_many_dimensions() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[1].dims = vec![2, 2, 2, 1, 1]),
        "tensor \"t1\" has 5 dimensions (at most 4)",
    );
}

#[test]
fn gguf_dimensions_overflow() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[1].dims = vec![1 << 32, 1 << 32, 1 << 32]),
        "tensor \"t1\": shape overflows",
    );
}

#[test]
fn gguf_unknown_tensor_type() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[1].ty = 4),
        "tensor \"t1\": unknown tensor type 4",
    );
}

#[test]
fn gguf_row_not_a_whole_number_of_blocks() {
    refused(
        "model.gguf",
        &gguf(|g| {
            g.tensors[1] = TensorInfo {
                name: b"q".to_vec(),
                dims: vec![33],
                ty: 8,
                offset: 512,
            }
        }),
        "tensor \"q\": row of 33 elements is not a whole number of 32-element blocks",
    );
}

#[test]
fn gguf_unaligned_offset() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[1].offset = 500),
        "tensor \"t1\": offset 500 is not a multiple of the alignment 32",
    );
}

#[test]
fn gguf_offsets_out_of_order() {
    refused(
        "model.gguf",
        &gguf(|g| g.tensors[1].offset = 256),
        "tensor \"t1\": offset 256 is before the end of the previous tensor (512)",
    );
}

#[test]
fn gguf_data_past_the_end_of_the_file() {
    refused(
        "model.gguf",
        &gguf(|g| g.data.truncate(520)),
        "tensor \"t1\": data [512, 528) is outside the 520-byte data section",
    );
}

#[test]
fn gguf_trailing_bytes_after_the_data() {
    refused(
        "model.gguf",
        &gguf(|g| g.data.extend_from_slice(&[0; 64])),
        "bytes follow the last tensor's data",
    );
}

#[test]
fn gguf_truncated_header() {
    let mut f = fixture("valid/small.gguf");
    f.truncate(60);
    refused("model.gguf", &f, "ends inside the header");
}

// ---- pickles, wherever they hide ----------------------------------------------------

#[test]
fn pickle_renamed_to_safetensors() {
    refused(
        "model.safetensors",
        &fixture("pickle/renamed.safetensors"),
        "named like a safetensors file, but the content is pickle (pickle in file imports posix.system",
    );
}

#[test]
fn pickle_renamed_to_bin() {
    refused(
        "pytorch_model.bin",
        &fixture("pickle/renamed.bin"),
        "pickle in file imports posix.system, outside the allow-list",
    );
}

#[test]
fn pytorch_zip_whose_data_pkl_imports_os_system() {
    refused_with(
        "pytorch_model.bin",
        &fixture("pickle/evil_torch.pt"),
        "pickle in archive/data.pkl imports os.system, outside the allow-list",
        &["--allow-pickle"],
    );
}

#[test]
fn pickle_whose_global_comes_through_the_memo() {
    refused_with(
        "model.pkl",
        &fixture("pickle/memo_global.pkl"),
        "imports posix.getpid, posix.system",
        &["--allow-pickle"],
    );
}

#[test]
fn protocol_0_pickle_calling_os_system() {
    refused(
        "model.pkl",
        &fixture("pickle/os_system_p0.pkl"),
        "imports posix.system",
    );
}

#[test]
fn benign_pytorch_checkpoint_needs_allow_pickle() {
    refused(
        "pytorch_model.bin",
        &fixture("pickle/pytorch_model.bin"),
        "pickle-zip file: loading it unpickles data",
    );
}

#[test]
fn legacy_torch_save_needs_allow_pickle() {
    refused(
        "model.bin",
        &fixture("pickle/legacy_model.bin"),
        "pickle file: loading it unpickles data",
    );
}

#[test]
fn numpy_object_arrays_need_allow_pickle() {
    refused(
        "weights.npy",
        &fixture("pickle/objects.npy"),
        "numpy-object file: loading it unpickles data",
    );
    refused(
        "weights.npz",
        &fixture("pickle/objects.npz"),
        "numpy-object file: loading it unpickles data",
    );
}

// ---- the pickle policy across nodes -------------------------------------------------

/// A model of benign pickle-based files, published with `--allow-pickle` on a seed.
fn pickle_seed(tmp: &Path) -> (Daemon, String, std::path::PathBuf, std::path::PathBuf) {
    let seed = Daemon::start(&tmp.join("seed"));
    let (key, public) = trusted_key(&seed, tmp, "org/");
    let model = tmp.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["pytorch_model.bin", "legacy_model.bin", "objects.npy"] {
        std::fs::copy(fixtures().join("pickle").join(f), model.join(f)).unwrap();
    }
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    let id = seed.ctl_ok(&[
        "publish",
        model.to_str().unwrap(),
        "--name",
        "org/legacy",
        "--version",
        "1",
        "--key",
        key.to_str().unwrap(),
        "--allow-pickle",
    ]);
    let manifest = tmp.join("legacy.json");
    std::fs::write(
        &manifest,
        seed.ctl_ok(&["manifest", "show", id.trim(), "--raw"]),
    )
    .unwrap();
    (seed, public, manifest, model)
}

#[test]
fn allow_pickle_is_recorded_and_consumers_decide_for_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let (seed, public, manifest, model) = pickle_seed(tmp.path());
    let shown = seed.ctl_json(&["manifest", "show", manifest.to_str().unwrap()]);
    assert_eq!(shown["manifest"]["allow_pickle"], true, "{shown}");

    // A node that does not allow pickle refuses before any data moves.
    let strict = Daemon::start(&tmp.path().join("strict"));
    strict.ctl_ok(&["trust", "add", &public, "--scope", "org/"]);
    let before = snapshot(&strict);
    let err = strict.ctl_err(&[
        "fetch",
        manifest.to_str().unwrap(),
        "--peer",
        &seed.peer_addr(),
    ]);
    assert!(
        err.contains("contains pickle-based files")
            && err.contains("pytorch_model.bin (pickle-zip)"),
        "{err}"
    );
    assert_eq!(snapshot(&strict), before);
    assert_eq!(seed.counter("bytes_served"), 0);

    // A node configured to allow pickle fetches and exports it.
    let lenient = Daemon::start_with(&tmp.path().join("lenient"), &["--allow-pickle", "true"]);
    lenient.ctl_ok(&["trust", "add", &public, "--scope", "org/"]);
    let out = tmp.path().join("out");
    lenient.ctl_ok(&[
        "fetch",
        manifest.to_str().unwrap(),
        "--peer",
        &seed.peer_addr(),
        "--out",
        out.to_str().unwrap(),
    ]);
    for f in ["pytorch_model.bin", "legacy_model.bin", "objects.npy"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(model.join(f)).unwrap()
        );
    }
    // And the seed itself, whose config does not allow pickle, will not export it.
    let err = seed.ctl_err(&[
        "export",
        "org/legacy:1",
        tmp.path().join("seed-out").to_str().unwrap(),
    ]);
    assert!(
        err.contains("refused unless pickle is explicitly allowed"),
        "{err}"
    );
    assert!(!tmp.path().join("seed-out/pytorch_model.bin").exists());
}

/// A newly trusted key (scope `org/`) signs a one-file manifest `name`, version 1,
/// naming `path` with `size` and `blake3` as plain data; it is added to `d`'s store.
/// Returns the key's public form and the envelope's path.
fn add_signed_one_file_manifest(
    d: &Daemon,
    dir: &Path,
    name: &str,
    path: &str,
    size: u64,
    blake3: modeld_core::Hash,
) -> (String, std::path::PathBuf) {
    use modeld_core::{
        Envelope, Manifest, ManifestFile, ManifestHeader, SecretKey, format::FileFormat,
    };
    let signer = SecretKey::generate();
    let public = signer.public().to_string();
    d.ctl_ok(&["trust", "add", &public, "--scope", "org/"]);
    let m = Manifest::new(
        ManifestHeader {
            name: name.parse().unwrap(),
            version: "1".parse().unwrap(),
            sequence: 1,
            created: 1_000,
            expires: None,
            publisher: signer.public(),
            allow_pickle: false,
        },
        vec![ManifestFile {
            path: path.parse().unwrap(),
            size,
            blake3,
            format: FileFormat::Other,
        }],
    )
    .unwrap();
    let file = dir.join(format!("{}.json", name.replace('/', "-")));
    std::fs::write(&file, Envelope::sign(m.to_bytes(), &signer).to_bytes()).unwrap();
    d.ctl_ok(&["manifest", "add", file.to_str().unwrap()]);
    (public, file)
}

#[test]
fn a_signed_manifest_that_hides_a_pickle_as_data_is_refused_on_export() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(&tmp.path().join("node"), &["--allow-pickle", "true"]);
    let (key, _) = trusted_key(&d, tmp.path(), "org/");
    // The pickle's bytes get into the store legitimately...
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let bytes = fixture("pickle/pytorch_model.bin");
    std::fs::write(model.join("pytorch_model.bin"), &bytes).unwrap();
    d.ctl_ok(&[
        "publish",
        model.to_str().unwrap(),
        "--name",
        "org/real",
        "--version",
        "1",
        "--key",
        key.to_str().unwrap(),
        "--allow-pickle",
    ]);
    // ...and a trusted but careless (or compromised) publisher signs a manifest that
    // calls the same bytes plain data, without declaring pickle.
    add_signed_one_file_manifest(
        &d,
        tmp.path(),
        "org/hidden",
        "weights.dat",
        bytes.len() as u64,
        modeld_core::Hash::of(&bytes),
    );
    let out = tmp.path().join("out");
    let err = d.ctl_err(&["export", "org/hidden:1", out.to_str().unwrap()]);
    assert!(
        err.contains("weights.dat: the manifest says other but the content is pickle-zip"),
        "{err}"
    );
    assert!(!out.join("weights.dat").exists());
}

// ---- the pickle detector against picklescan -----------------------------------------

/// Every fixture, judged by modeld (`inspect --allow-pickle`: refused only for unsafe
/// imports or an unscannable pickle) and by picklescan (infected or not). They must
/// agree except where modeld is deliberately stricter (docs/threat-model.md).
#[test]
fn pickle_detector_agrees_with_picklescan_except_where_documented() {
    let mut files: Vec<std::path::PathBuf> = ["pickle", "valid"]
        .iter()
        .flat_map(|d| std::fs::read_dir(fixtures().join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let script = r#"
import json, sys
from picklescan.scanner import scan_file_path
print(json.dumps({p: scan_file_path(p).infected_files > 0 for p in sys.argv[1:]}))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "picklescan failed (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let picklescan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut args = vec![
        "inspect".to_owned(),
        "--json".to_owned(),
        "--allow-pickle".to_owned(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ours: serde_json::Value =
        serde_json::from_slice(&modelctl(Path::new("/nonexistent"), &args).stdout).unwrap();
    let mut differences = Vec::new();
    for report in ours.as_array().unwrap() {
        let path = report["path"].as_str().unwrap();
        let modeld_flags = report["ok"] == false;
        let picklescan_flags = picklescan[path].as_bool().unwrap();
        if modeld_flags != picklescan_flags {
            let name = Path::new(path).file_name().unwrap().to_str().unwrap();
            differences.push((name.to_owned(), modeld_flags, picklescan_flags));
        }
    }
    differences.sort();
    assert_eq!(
        differences,
        [
            // EXT1: a global through the copyreg extension registry; picklescan
            // does not follow extension codes.
            ("extension_code.pkl".to_owned(), true, false),
            // A class on no list: picklescan calls it "suspicious" but not
            // infected; modeld allows only tensor-rebuilding callables.
            ("training_args.bin".to_owned(), true, false),
        ]
    );
}

#[test]
fn a_signed_manifest_with_a_wrong_size_is_refused_on_export_and_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("node"));
    let (key, _) = trusted_key(&d, tmp.path(), "org/");
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let bytes = vec![7u8; 100_000];
    std::fs::write(model.join("weights.bin"), &bytes).unwrap();
    d.ctl_ok(&publish_args(
        model.to_str().unwrap(),
        "org/real",
        "1",
        key.to_str().unwrap(),
    ));
    // A trusted key signs a manifest naming the same blob with one byte more.
    let (public, file) = add_signed_one_file_manifest(
        &d,
        tmp.path(),
        "org/sized",
        "weights.bin",
        bytes.len() as u64 + 1,
        modeld_core::Hash::of(&bytes),
    );
    let out = tmp.path().join("out");
    let err = d.ctl_err(&["export", "org/sized:1", out.to_str().unwrap()]);
    assert!(
        err.contains("weights.bin: manifest says 100001 bytes but the stored blob"),
        "{err}"
    );
    assert!(!out.join("weights.bin").exists());
    // A fresh node fetching it from this one keeps nothing as verified: the peer's
    // answers carry the blob's true size, which is not the manifest's.
    let fresh = Daemon::start(&tmp.path().join("fresh"));
    fresh.ctl_ok(&["trust", "add", &public, "--scope", "org/"]);
    let err = fresh.ctl_err(&["fetch", file.to_str().unwrap(), "--peer", &d.peer_addr()]);
    assert!(err.contains("weights.bin"), "{err}");
    let listed = fresh.ctl_json(&["ls"]);
    assert_eq!(listed[0]["complete_files"], 0, "{listed}");
    assert_eq!(fresh.counter("bytes_fetched"), 0);
}
