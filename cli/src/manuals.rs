//! `weft completion SHELL` and `weft man`: shell completion scripts
//! (`clap_complete`) and man pages (`clap_mangen`), both made from the one
//! clap definition of the command line, so they never drift from it.
//!
//! `weft man` prints `weft(1)` on stdout (`weft man | man -l -`);
//! `weft man --dir DIR` writes one page per command (`weft.1`,
//! `weft-network.1`, `weft-network-create.1`, ...) for packagers
//! (`/usr/local/share/man/man1`). Hidden internal subcommands get no page.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

/// `weft completion` options.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell: bash (`source <(weft completion bash)`), zsh (into a
    /// directory of $fpath as `_weft`) or fish (`~/.config/fish/completions/weft.fish`).
    pub shell: clap_complete::Shell,
}

/// `weft man` options.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write every page (weft.1, weft-network.1, ...) into this directory
    /// instead of printing weft(1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Print the completion script.
///
/// # Errors
///
/// Writing stdout (a closed pipe is an error, not a panic).
pub fn completion<C: CommandFactory>(args: &CompletionArgs) -> Result<()> {
    let mut command = C::command();
    let hidden: Vec<String> = command
        .get_subcommands()
        .filter(|s| s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "weft", &mut script);
    let script = drop_hidden_words(&String::from_utf8_lossy(&script), &hidden);
    std::io::Write::write_all(&mut std::io::stdout(), script.as_bytes())
        .context("writing the completion script")
}

/// clap_complete's bash script offers hidden subcommands among the words
/// of each `opts="..."` list; take them out (their own `case` branches stay,
/// unreachable and harmless).
fn drop_hidden_words(script: &str, hidden: &[String]) -> String {
    script
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            match trimmed
                .strip_prefix("opts=\"")
                .and_then(|l| l.strip_suffix('"'))
            {
                Some(words) => {
                    let indent = &line[..line.len() - trimmed.len()];
                    let kept: Vec<&str> = words
                        .split(' ')
                        .filter(|w| !hidden.iter().any(|h| h == w))
                        .collect();
                    format!("{indent}opts=\"{}\"\n", kept.join(" "))
                }
                None => format!("{line}\n"),
            }
        })
        .collect()
}

/// Print weft(1), or write every page into `--dir`.
///
/// # Errors
///
/// Writing stdout or the directory.
pub fn man<C: CommandFactory>(args: &ManArgs) -> Result<()> {
    let command = C::command();
    match &args.dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .context("rendering the man page")?;
            std::io::Write::write_all(&mut std::io::stdout(), &page).context("writing the man page")
        }
        Some(dir) => write_pages(command, dir),
    }
}

fn write_pages(command: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}
