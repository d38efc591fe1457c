//! `hooklens saes`: SAELens's named SAE releases, as shipped with hooklens.

use hooklens_models::sae::releases::{self, Release};

use crate::error::{CliError, CliResult};

/// List SAELens's named SAE releases (its `pretrained_saes.yaml`, shipped with hooklens):
/// each release's model, repository and format, or with --release its SAE ids with L0
/// and variance explained. Give one to --sae as RELEASE/SAE_ID.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only releases for models whose name contains this (`gpt2-small`, `gemma-2-2b`).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// List this release's SAE ids.
    #[arg(long, value_name = "RELEASE")]
    pub release: Option<String>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    print!("{}", listing(&args)?);
    Ok(())
}

/// A release's file format and whether hooklens reads it: SAELens's own, or the
/// conversion function SAELens reads it with, marked read or not.
fn format_of(r: &Release) -> String {
    match &r.conversion_func {
        None => "SAELens".to_string(),
        Some(f) if releases::format_supported(f) => format!("{f} (read)"),
        Some(f) => format!("{f} (not read yet)"),
    }
}

/// A number as the directory has it, or `-` where SAELens records none.
fn number(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v}"))
}

/// The text `hooklens saes` prints for `args`.
fn listing(args: &Args) -> CliResult<String> {
    let mut out = String::new();
    if let Some(name) = &args.release {
        let r = releases::release(name).ok_or_else(|| {
            CliError(format!(
                "--release {name}: not a release of SAELens {}'s directory; `hooklens saes` lists them \
                 (a repository id is given to --sae as REPO_ID:FOLDER)",
                releases::sae_lens_version()
            ))
        })?;
        if args.model.as_deref().is_some_and(|m| !r.model.contains(m)) {
            return Err(CliError(format!(
                "--release {name} is for model `{}`, not one matching --model",
                r.model
            )));
        }
        out += &format!(
            "release {} (model {}, repository {}, format {}): {} SAEs; give --sae {}/SAE_ID\n",
            r.name,
            r.model,
            r.repo_id,
            format_of(r),
            r.saes.len(),
            r.name
        );
        out += "SAE_ID\tL0\tVARIANCE_EXPLAINED\tFOLDER\n";
        for s in &r.saes {
            out += &format!(
                "{}\t{}\t{}\t{}\n",
                s.id,
                number(s.l0),
                number(s.variance_explained),
                s.path
            );
        }
        return Ok(out);
    }
    let shown: Vec<&Release> = releases::all()
        .iter()
        .filter(|r| args.model.as_deref().is_none_or(|m| r.model.contains(m)))
        .collect();
    if shown.is_empty() {
        return Err(CliError(format!(
            "--model {}: no release is for a model of that name",
            args.model.as_deref().unwrap_or_default()
        )));
    }
    out += &format!(
        "{} releases of SAELens {}'s directory; `hooklens saes --release R` lists one's SAE ids\n",
        shown.len(),
        releases::sae_lens_version()
    );
    out += "RELEASE\tMODEL\tSAES\tFORMAT\tREPOSITORY\n";
    for r in shown {
        out += &format!(
            "{}\t{}\t{}\t{}\t{}\n",
            r.name,
            r.model,
            r.saes.len(),
            format_of(r),
            r.repo_id
        );
    }
    Ok(out)
}
