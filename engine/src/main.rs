//! `engine`: train, plan, evaluate, sample and benchmark models of the built-in kinds
//! (GPT-2, Llama); see `engine --help` and `engine::cli`.

fn main() -> std::process::ExitCode {
    engine::cli::main_with(engine::registry::Registry::builtin())
}
