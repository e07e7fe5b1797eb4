//! `whittle`: the host command line. Library errors are typed; this binary reports them with
//! anyhow as one line naming the cause and the fix.

mod cli;

fn main() -> std::process::ExitCode {
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
