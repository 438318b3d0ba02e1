//! Every config shipped in `configs/` loads and validates (a typo in a shipped file is a test
//! failure, not a user's first error), and the llm.c FineWeb recipe says what llm.c runs.

use std::path::Path;

use engine::config::Config;

#[test]
fn every_shipped_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            match Config::load(&path, &[]) {
                Ok(_) => {}
                // A fine-tuning config names weights the user downloads first (hf/gpt2).
                Err(e) if e.to_string().contains("key `model.init_from`") && e.to_string().contains("no such directory") => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(names.iter().any(|n| n == "gpt2-124m-fineweb.toml"), "{names:?}");
}

#[test]
fn the_fineweb_recipe_is_llm_c_s() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gpt2-124m-fineweb.toml");
    let c = Config::load(&path, &[]).unwrap();
    // 512 sequences of 1024 = 524,288 tokens per step, whatever micro-batch the planner picks.
    assert_eq!(c.global_batch().unwrap() * c.train.seq_len, 524_288);
    assert_eq!((c.train.lr, c.train.min_lr, c.train.warmup_steps, c.train.weight_decay), (6e-4, 0.0, 700, 0.1));
    assert_eq!((c.train.beta1, c.train.beta2, c.train.grad_clip), (0.9, 0.95, 1.0));
    // llm.c's one epoch of the FineWeb-10B train shards: ~9.89B tokens.
    assert_eq!(c.train.max_steps * 524_288, 9_890_693_120);
    assert_eq!(c.data.tokenizer, "gpt2");
    assert!(c.memory.budget.is_some(), "the planner needs a budget to pick the micro-batch");
    // llm.c's -v 250 -h 1: validation and HellaSwag together; -g 144 sample tokens.
    assert_eq!((c.train.eval_interval, c.train.hellaswag_interval, c.train.sample_tokens), (250, 250, 144));
    assert!(c.train.hellaswag_data.is_some() && c.logs.tensorboard);
}
