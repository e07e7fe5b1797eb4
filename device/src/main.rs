//! `whittle-device`: the tool that runs on the board itself.
//!
//! It reports the machine facts a board profile records (`info`), measures the machine into
//! the `host` board profile (`profile`), lists the board profiles the cost model knows
//! (`boards`), runs a bundle on a text (`run`) and benchmarks prefill and decode against the
//! cost model's prediction (`bench`), and keeps the installed bundles (`install`, `trust`,
//! `rollback`, `status`; `run` and `bench` take the current one by default).

mod bench;
mod boards;
mod info;
mod install;
mod measure;
mod profile;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The whittle tool for the board the model runs on.
#[derive(Debug, Parser)]
#[command(name = "whittle-device", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this machine's architecture, cores, SIMD features and memory.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure this machine (memory read bandwidth, f32 matrix throughput, memory, cores) into
    /// the `host` board profile; prints it as TOML unless it writes a file.
    Profile {
        /// Print the profile as one JSON object.
        #[arg(long)]
        json: bool,
        /// Write the profile (TOML) to this file, atomically.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Write the profile where the board named `host` is read from:
        /// $WHITTLE_CACHE_DIR/boards/host.toml, by default
        /// $XDG_CACHE_HOME/whittle/cache/boards/host.toml (~/.cache/whittle/cache/boards/host.toml
        /// when XDG_CACHE_HOME is unset).
        #[arg(long)]
        install: bool,
        /// Keep, figure by figure, the better of this measurement and the installed host
        /// profile's (each rate the higher, each time the lower; the fixed costs fitted from
        /// those): a profile measured several times over a benchmark's minutes, for a check
        /// against its fastest round.
        #[arg(long)]
        merge: bool,
    },
    /// List the board profiles: every built-in one and, once measured, `host`.
    Boards {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a bundle: print the label (classification) or the answer (generation) of one
    /// `--text`, or of every line of `--file` (`-`: standard input) as JSON lines
    /// (`{"line", "label", "scores", "ms"}` or `{"line", "answer", "ms"}`; `ms`: text in to
    /// answer out), loading the bundle once.
    Run {
        /// The bundle file [default: the installed current bundle].
        bundle: Option<PathBuf>,
        /// The store of installed bundles (see `install`).
        #[arg(long, env = install::ROOT_ENV, default_value = install::DEFAULT_ROOT)]
        root: PathBuf,
        /// The input text.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// A file of inputs, one per line (`-`: standard input).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Threads sharing each matrix product.
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
        /// Most tokens to generate [default: the bundle's task setting].
        #[arg(long)]
        max_new_tokens: Option<usize>,
    },
    /// Time prefill and greedy decode of a bundle (medians) beside the cost model's prediction.
    Bench(bench::BenchArgs),
    /// Install a bundle and make it current: received into staging (exactly --len bytes with
    /// --sha256 from standard input, or a file), synced, its checksums, signature and release
    /// number checked, moved into place, its self-check input run against the answer the
    /// packer recorded, then switched to atomically; the old current becomes previous.
    Install {
        /// The bundle file (or --stdin).
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        bundle: Option<PathBuf>,
        /// Read the bundle from standard input (with --len and --sha256).
        #[arg(long, requires_all = ["len", "sha256"])]
        stdin: bool,
        /// Bytes the sender announces.
        #[arg(long, requires = "stdin")]
        len: Option<u64>,
        /// sha256 (hex) the sender announces.
        #[arg(long, requires = "stdin")]
        sha256: Option<String>,
        /// The store of installed bundles.
        #[arg(long, env = install::ROOT_ENV, default_value = install::DEFAULT_ROOT)]
        root: PathBuf,
        /// Install without a signature check on a device that trusts no key (said loudly).
        #[arg(long)]
        allow_unsigned: bool,
        /// Bundles kept, the current and previous ones included.
        #[arg(long, default_value_t = install::DEFAULT_KEEP)]
        keep: usize,
        /// Threads of the self-check.
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
    },
    /// Trust an ed25519 public key (KEY.pub from `whittle keygen`): from then on this device
    /// installs and runs only bundles signed by a trusted key.
    Trust {
        /// The public key file.
        key: PathBuf,
        /// The store of installed bundles.
        #[arg(long, env = install::ROOT_ENV, default_value = install::DEFAULT_ROOT)]
        root: PathBuf,
    },
    /// Make the previous bundle current again.
    Rollback {
        /// The store of installed bundles.
        #[arg(long, env = install::ROOT_ENV, default_value = install::DEFAULT_ROOT)]
        root: PathBuf,
    },
    /// The installed bundles (task, release, signer, provenance), which is current, and the
    /// trusted keys.
    Status {
        /// The store of installed bundles.
        #[arg(long, env = install::ROOT_ENV, default_value = install::DEFAULT_ROOT)]
        root: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info { json } => info::run(json),
        Command::Profile {
            json,
            out,
            install,
            merge,
        } => profile::run(json, out, install, merge),
        Command::Boards { json } => boards::run(json),
        Command::Run {
            bundle,
            root,
            text,
            file,
            threads,
            max_new_tokens,
        } => {
            let inputs = match (text, file) {
                (Some(text), _) => bench::Inputs::Text(text),
                (None, Some(file)) => bench::Inputs::Lines(file),
                (None, None) => anyhow::bail!("give --text TEXT or --file PATH (- for stdin)"),
            };
            let loaded = install::bundle_to_run(&root, bundle.as_deref())?;
            bench::run(&loaded, &inputs, threads, max_new_tokens)
        }
        Command::Bench(args) => bench::bench(&args),
        Command::Install {
            bundle,
            stdin,
            len,
            sha256,
            root,
            allow_unsigned,
            keep,
            threads,
        } => {
            let source = match (bundle, stdin, len, sha256) {
                (Some(path), false, _, _) => install::Source::File(path),
                (None, true, Some(len), Some(sha256)) => install::Source::Stdin { len, sha256 },
                _ => anyhow::bail!("give a bundle file, or --stdin --len N --sha256 HEX"),
            };
            let outcome = install::install(&install::InstallOptions {
                root,
                source,
                allow_unsigned,
                keep,
                threads,
            })?;
            match outcome {
                install::Outcome::Installed { digest } => println!("installed {digest}"),
                install::Outcome::AlreadyCurrent { digest } => {
                    println!("already current {digest}: nothing to do");
                }
            }
            Ok(())
        }
        Command::Trust { key, root } => {
            let fingerprint = install::trust(&root, &key)?;
            println!("trusted key {fingerprint}");
            Ok(())
        }
        Command::Rollback { root } => {
            let digest = install::rollback(&root)?;
            println!("current {digest} (rolled back)");
            Ok(())
        }
        Command::Status { root, json } => {
            let status = install::status(&root)?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                install::print_status(&status);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parses(argv: &[&str], expected: &str) {
        match Cli::try_parse_from(argv) {
            Ok(cli) => assert_eq!(format!("{:?}", cli.command), expected, "for {argv:?}"),
            Err(error) => panic!("{argv:?} does not parse: {error}"),
        }
    }

    #[test]
    fn subcommands_parse() {
        check_parses(&["whittle-device", "info", "--json"], "Info { json: true }");
        check_parses(
            &["whittle-device", "profile", "--out", "/tmp/h.toml"],
            "Profile { json: false, out: Some(\"/tmp/h.toml\"), install: false, merge: false }",
        );
        check_parses(
            &["whittle-device", "profile", "--install", "--json"],
            "Profile { json: true, out: None, install: true, merge: false }",
        );
        check_parses(
            &["whittle-device", "profile", "--install", "--merge"],
            "Profile { json: false, out: None, install: true, merge: true }",
        );
        check_parses(&["whittle-device", "boards"], "Boards { json: false }");
        check_parses(
            &["whittle-device", "run", "b.wbundle", "--file", "-"],
            "Run { bundle: Some(\"b.wbundle\"), root: \"/var/lib/whittle\", text: None, file: Some(\"-\"), threads: THREADS, max_new_tokens: None }"
                .replace("THREADS", &default_threads().to_string())
                .as_str(),
        );
        assert!(Cli::try_parse_from(["whittle-device", "run", "b.wbundle"]).is_err());
        assert!(Cli::try_parse_from(["whittle-device", "install", "--stdin"]).is_err());
        assert!(
            Cli::try_parse_from(["whittle-device", "install", "b", "--stdin", "--len", "1"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["whittle-device", "install"]).is_err());
        assert!(
            Cli::try_parse_from(["whittle-device", "run", "b", "--text", "t", "--file", "f"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["whittle-device", "boards", "--measure"]).is_err());
    }
}
