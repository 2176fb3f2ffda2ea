//! `vmm floppy build` and `vmm floppy ls`: reproducible FAT12 floppy images.
//!
//! `build` collects `--add SRC[=DEST]` files and folders and the answer files
//! of `--unattend SPEC.toml`, stamps every entry with `--epoch` or
//! `SOURCE_DATE_EPOCH` (1980-01-01 when neither is set) and writes the image
//! under a temporary name, renamed into place once complete. `ls` prints the
//! label and every entry of an image.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use floppy::{Format, ImageBuilder};

/// Largest answer-file spec read.
const MAX_SPEC_BYTES: u64 = 1 << 20;
/// Largest file `ls` reads (a FAT12 volume is at most about 32 MiB).
const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// Arguments of `vmm floppy`.
#[derive(Debug, Args)]
pub struct FloppyArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Build a FAT12 floppy image, byte for byte reproducible.
    Build(BuildArgs),
    /// List the label and every file and folder of an image.
    Ls {
        /// The image to read.
        image: PathBuf,
    },
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Image file to write (appears only when complete).
    #[arg(long, value_name = "IMG")]
    out: PathBuf,
    /// Floppy size in KiB.
    #[arg(long, default_value_t = 1440, value_parser = size_parser())]
    size: u32,
    /// Volume label (up to 11 characters, stored upper case).
    #[arg(long, value_name = "L")]
    label: Option<String>,
    /// Host file or folder to copy, optionally to DEST in the image
    /// (`/`-separated; a folder with an empty DEST fills the root).
    #[arg(long, value_name = "SRC[=DEST]")]
    add: Vec<String>,
    /// Answer-file spec (TOML) rendered to autounattend.xml / WINNT.SIF.
    #[arg(long, value_name = "SPEC.toml")]
    unattend: Option<PathBuf>,
    /// Unix time stamped on every entry [default: $SOURCE_DATE_EPOCH, else
    /// 1980-01-01].
    #[arg(long, value_name = "SECONDS")]
    epoch: Option<u64>,
}

/// Accepts only the supported sizes, yielding KiB.
fn size_parser() -> impl TypedValueParser<Value = u32> {
    // The possible-values check runs first, so the parse cannot fail.
    PossibleValuesParser::new(["1440", "2880"]).map(|s| s.parse::<u32>().unwrap_or(1440))
}

/// Runs `vmm floppy ...`.
pub fn run(args: FloppyArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Build(b) => build(&b, std::env::var("SOURCE_DATE_EPOCH").ok()),
        Action::Ls { image } => ls(&image),
    }
}

fn build(args: &BuildArgs, env_epoch: Option<String>) -> anyhow::Result<ExitCode> {
    let format = Format::from_kib(args.size)
        .with_context(|| format!("Unsupported size {} KiB: use 1440 or 2880", args.size))?;
    let image = build_image(
        args.size,
        args.label.as_deref(),
        &args.add,
        args.unattend.as_deref(),
        args.epoch,
        env_epoch.as_deref(),
    )?;
    floppy::write_atomically(&args.out, &image)?;
    let listing = floppy::list(&image)?;
    let files = listing.entries.iter().filter(|e| !e.is_dir).count();
    let bytes: u64 = listing.entries.iter().map(|e| u64::from(e.size)).sum();
    println!(
        "{}: {} KiB FAT12, {files} files, {} folders, {bytes} bytes",
        args.out.display(),
        format.kib(),
        listing.entries.len() - files
    );
    Ok(ExitCode::SUCCESS)
}

/// Builds a floppy of `kib` KiB with `label`, the `SRC[=DEST]` entries of
/// `add` and the answer files of the `unattend` spec, every entry stamped
/// with `epoch`, else `env_epoch` (SOURCE_DATE_EPOCH), else 1980-01-01.
pub fn build_image(
    kib: u32,
    label: Option<&str>,
    add: &[String],
    unattend: Option<&Path>,
    epoch_flag: Option<u64>,
    env_epoch: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let format = Format::from_kib(kib)
        .with_context(|| format!("Unsupported size {kib} KiB: use 1440 or 2880"))?;
    let mut builder = ImageBuilder::new(format);
    builder.timestamp(epoch(epoch_flag, env_epoch)?);
    if let Some(label) = label {
        builder.label(label)?;
    }
    for entry in add {
        let (src, dest) = split_add(entry);
        builder
            .add_path(&src, &dest)
            .with_context(|| format!("--add {entry}"))?;
    }
    if let Some(spec_path) = unattend {
        let text = read_capped(spec_path, MAX_SPEC_BYTES)?;
        let text = String::from_utf8(text)
            .with_context(|| format!("{} is not UTF-8 text", spec_path.display()))?;
        let answers = floppy::unattend::parse_spec(&text)
            .with_context(|| format!("In {}", spec_path.display()))?;
        for (name, bytes) in floppy::unattend::render(&answers) {
            builder.add_bytes(name, bytes)?;
        }
    }
    Ok(builder.build()?)
}

/// The timestamp: the flag, else `SOURCE_DATE_EPOCH`, else 1980-01-01.
fn epoch(flag: Option<u64>, env: Option<&str>) -> anyhow::Result<u64> {
    match (flag, env) {
        (Some(secs), _) => Ok(secs),
        (None, Some(v)) => v.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds; fix or unset it"
            )
        }),
        (None, None) => Ok(floppy::time::FAT_EPOCH_START),
    }
}

/// Splits `SRC[=DEST]`. A string naming an existing path is all SRC; DEST
/// defaults to SRC's file name.
fn split_add(arg: &str) -> (PathBuf, String) {
    let (src, dest) = match arg.split_once('=') {
        Some((src, dest)) if !Path::new(arg).exists() => (PathBuf::from(src), Some(dest)),
        _ => (PathBuf::from(arg), None),
    };
    let dest = match dest {
        Some(d) => d.to_owned(),
        None => src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    (src, dest)
}

fn read_capped(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("Cannot read {}", path.display()))?
        .len();
    if len > cap {
        bail!(
            "{} is {len} bytes, more than the {cap} allowed",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("Cannot read {}", path.display()))
}

fn ls(path: &Path) -> anyhow::Result<ExitCode> {
    let image = read_capped(path, MAX_IMAGE_BYTES)?;
    let listing =
        floppy::list(&image).with_context(|| format!("Cannot list {}", path.display()))?;
    let g = &listing.boot.geometry;
    let id = listing.boot.volume_id;
    println!(
        "Volume label: {} (BPB: {}), serial {:04X}-{:04X}, {} KiB FAT12",
        listing.root_label.as_deref().unwrap_or("none"),
        listing.bpb_label(),
        id >> 16,
        id & 0xFFFF,
        g.total_sectors / 2
    );
    for e in &listing.entries {
        let size = if e.is_dir {
            "<DIR>".to_owned()
        } else {
            e.size.to_string()
        };
        println!("{}  {size:>8}  {:<12}  {}", e.modified, e.short, e.path);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-floppy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn args(out: PathBuf) -> BuildArgs {
        BuildArgs {
            out,
            size: 1440,
            label: Some("WINSETUP".into()),
            add: Vec::new(),
            unattend: None,
            epoch: None,
        }
    }

    #[derive(Debug, clap::Parser)]
    struct Root {
        #[command(subcommand)]
        action: Action,
    }

    fn parse(args: &[&str]) -> Result<Action, clap::Error> {
        use clap::Parser;
        Root::try_parse_from(std::iter::once("floppy").chain(args.iter().copied()))
            .map(|r| r.action)
    }

    #[test]
    fn size_accepts_only_1440_and_2880() {
        let size = |a: Action| match a {
            Action::Build(b) => b.size,
            Action::Ls { .. } => 0,
        };
        assert_eq!(size(parse(&["build", "--out", "x"]).unwrap()), 1440);
        assert_eq!(
            size(parse(&["build", "--out", "x", "--size", "2880"]).unwrap()),
            2880
        );
        assert!(parse(&["build", "--out", "x", "--size", "720"]).is_err());
        assert!(parse(&["build"]).is_err(), "--out is required");
    }

    #[test]
    fn add_splits_at_equals_unless_the_whole_string_exists() {
        assert_eq!(split_add("a/b.txt"), ("a/b.txt".into(), "b.txt".into()));
        assert_eq!(
            split_add("a/b.txt=X/Y.TXT"),
            ("a/b.txt".into(), "X/Y.TXT".into())
        );
        assert_eq!(split_add("dir="), ("dir".into(), String::new()));
        let dir = scratch("eq");
        let odd = dir.join("x=y");
        std::fs::write(&odd, b"").unwrap();
        let (src, dest) = split_add(odd.to_str().unwrap());
        assert_eq!((src, dest.as_str()), (odd.clone(), "x=y"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn epoch_flag_beats_environment_and_default_is_1980() {
        assert_eq!(epoch(Some(5), Some("7")).unwrap(), 5);
        assert_eq!(epoch(None, Some("7")).unwrap(), 7);
        assert_eq!(epoch(None, None).unwrap(), 315_532_800);
        let e = epoch(None, Some("yesterday")).unwrap_err().to_string();
        assert!(e.starts_with("SOURCE_DATE_EPOCH=\"yesterday\""), "{e}");
    }

    #[test]
    fn build_writes_a_reproducible_image_with_answer_files() {
        let dir = scratch("build");
        std::fs::create_dir(dir.join("tree")).unwrap();
        std::fs::write(dir.join("tree/Setup Script.cmd"), b"echo hi\r\n").unwrap();
        std::fs::write(dir.join("spec.toml"), b"admin_password = 'pw'\n").unwrap();
        let mut a = args(dir.join("one.img"));
        a.add = vec![format!("{}=Scripts", dir.join("tree").display())];
        a.unattend = Some(dir.join("spec.toml"));
        build(&a, Some("1700000000".into())).unwrap();
        a.out = dir.join("two.img");
        build(&a, Some("1700000000".into())).unwrap();
        let one = std::fs::read(dir.join("one.img")).unwrap();
        assert!(one == std::fs::read(dir.join("two.img")).unwrap());
        let paths: Vec<String> = floppy::list(&one)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "autounattend.xml",
                "Scripts",
                "WINNT.SIF",
                "Scripts/Setup Script.cmd"
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn content_too_large_says_by_how_much_and_writes_nothing() {
        let dir = scratch("large");
        std::fs::write(dir.join("big"), vec![0u8; 1_457_664 + 1]).unwrap();
        let mut a = args(dir.join("out.img"));
        a.add = vec![dir.join("big").display().to_string()];
        let e = build(&a, None).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Content too large for a 1440 KiB floppy by 512 bytes (2848 clusters of 512 bytes needed, 2847 free)"
        );
        assert!(!dir.join("out.img").exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalid_name_is_refused_naming_it() {
        let dir = scratch("name");
        std::fs::write(dir.join("f"), b"x").unwrap();
        let mut a = args(dir.join("out.img"));
        a.add = vec![format!("{}=bad|name.txt", dir.join("f").display())];
        let e = format!("{:#}", build(&a, None).unwrap_err());
        assert!(
            e.contains("Invalid FAT name \"bad|name.txt\": character '|' is not allowed"),
            "{e}"
        );
        assert!(!dir.join("out.img").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ls_refuses_a_file_that_is_not_an_image() {
        let dir = scratch("ls");
        std::fs::write(dir.join("x.img"), vec![0u8; 4096]).unwrap();
        let e = format!("{:#}", ls(&dir.join("x.img")).unwrap_err());
        assert!(e.contains("No boot-sector signature"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
