//! Broken model folders give a clear error naming the problem, never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use trendstory::engine::{EngineError, ModelInfo, OnnxModel, SessionOptions, TextTokenizer};

/// Copies a model folder (small files only; the tiny model is a few MB) into `dest`.
fn copy_model(src: &Path, dest: &Path) -> PathBuf {
    let out = dest.join("model");
    fs::create_dir_all(&out).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
        }
    }
    out
}

fn open(dir: &Path) -> Result<OnnxModel, EngineError> {
    let info = ModelInfo::load(dir)?;
    TextTokenizer::load(&info.tokenizer_path(), &info)?;
    OnnxModel::load(&info, &common::environment(), &SessionOptions::default())
}

#[test]
fn missing_model_folder_names_the_folder() {
    let err = ModelInfo::load(Path::new("onnx/no-such-model")).unwrap_err();
    assert!(
        matches!(err, EngineError::ModelDirMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-model"));
    assert!(err.to_string().contains("export_onnx.py"));
}

#[test]
fn missing_graph_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(&common::required_model(common::TINY), tmp.path());
    fs::remove_file(dir.join("model.onnx")).unwrap();
    let err = ModelInfo::load(&dir).unwrap_err();
    assert!(
        matches!(err, EngineError::ModelFileMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("model.onnx"));
}

#[test]
fn truncated_graph_is_a_session_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(&common::required_model(common::TINY), tmp.path());
    let graph = dir.join("model.onnx");
    let bytes = fs::read(&graph).unwrap();
    fs::write(&graph, &bytes[..bytes.len() / 3]).unwrap();
    let err = open(&dir).err().expect("a truncated graph must not load");
    assert!(matches!(err, EngineError::SessionLoad { .. }), "{err:?}");
    assert!(err.to_string().contains("model.onnx"), "{err}");
}

#[test]
fn truncated_weights_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(&common::required_model(common::TINY), tmp.path());
    let data = dir.join("model.onnx.data");
    assert!(
        data.exists(),
        "the exporter writes weights to model.onnx.data"
    );
    let bytes = fs::read(&data).unwrap();
    fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    let err = open(&dir).err().expect("truncated weights must not load");
    assert!(matches!(err, EngineError::SessionLoad { .. }), "{err:?}");
}

#[test]
fn vocabulary_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(&common::required_model(common::TINY), tmp.path());
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap();
    config["vocab_size"] = (vocab + 7).into();
    fs::write(&config_path, config.to_string()).unwrap();
    let err = open(&dir)
        .err()
        .expect("mismatched vocabulary must be refused");
    match err {
        EngineError::VocabularyMismatch { tokenizer, model } => {
            assert_eq!(tokenizer as u64, vocab);
            assert_eq!(model as u64, vocab + 7);
        }
        other => panic!("expected VocabularyMismatch, got {other:?}"),
    }
}

#[test]
fn needs_shared_foreign_tokenizer_is_refused() {
    let Some(llama_tok) = common::shared_model(
        common::TINY_LLAMA_TOKENIZER,
        "needs_shared_foreign_tokenizer_is_refused",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(&common::required_model(common::TINY), tmp.path());
    fs::copy(llama_tok.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let err = open(&dir)
        .err()
        .expect("a 32,000-token tokenizer must not load");
    assert!(
        matches!(
            err,
            EngineError::VocabularyMismatch {
                tokenizer: 32000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn garbage_tokenizer_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(&common::required_model(common::TINY), tmp.path());
    fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    let err = open(&dir).err().expect("garbage tokenizer");
    assert!(matches!(err, EngineError::Tokenizer { .. }), "{err:?}");
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let mut loaded = common::load(&common::required_model(common::TINY));
    let too_long = vec![1u32; loaded.info.max_position_embeddings];
    let err = trendstory::engine::greedy_generate(&mut loaded.model, &[too_long], 4).unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
    let err = trendstory::engine::greedy_generate(&mut loaded.model, &[vec![]], 4).unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
}
