//! Writes RUN_DIR/report.html (until `engine report` exists):
//! `cargo run --release --example report -- RUN_DIR`.

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: report RUN_DIR");
        std::process::exit(2);
    };
    match engine::report::write_report(std::path::Path::new(&dir)) {
        Ok(path) => println!("{}", path.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
