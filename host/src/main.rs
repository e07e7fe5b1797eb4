//! `whittle`: the host command line. Library errors are typed; this binary reports them with
//! anyhow as one line naming the cause and the fix.

mod cli;

fn main() -> std::process::ExitCode {
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let message = format!("{error:#}");
            match whittle_host::model::cuda_cause(&message) {
                Some(cause) => eprintln!("error: {cause} ({message})"),
                None => eprintln!("error: {message}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
