//! `apex FILE` runs the proxy; `apex --check FILE` validates a config. Errors are printed with
//! `Display` and turned into an exit code; nothing here panics on a bad file.

use std::process::ExitCode;

const USAGE: &str = "usage: apex CONFIG.toml        run the proxy
       apex --check CONFIG.toml validate a config and exit
       apex --version | --help
signals: HUP reloads the config, TERM drains and exits, USR2 upgrades the binary
         without dropping connections, USR1 reopens the access log; see apex(1)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--help" | "-h"] => {
            println!("apex {}: an HTTP/1.1 reverse proxy\n{USAGE}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            println!("apex {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--check", file] => match apex::config::Config::load(file.as_ref()) {
            Ok(cfg) => {
                println!("# apex: {file}: ok. The effective configuration, every default filled in:\n");
                print!("{}", cfg.effective());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("apex: {e}");
                ExitCode::FAILURE
            }
        },
        [file] if !file.starts_with('-') => apex::server::run(file.as_ref()),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
