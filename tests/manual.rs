//! The manual pages as the packages ship them (`generate-assets`, as packaging/build.sh runs
//! it): no formatting error or warning from groff and man, every page of ours they name is
//! generated and in both packages' assets.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::text;

fn generate() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_docker-tls-manager"))
        .arg("generate-assets")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".5") || n.ends_with(".8"))
        .collect();
    pages.sort();
    assert_eq!(pages, ["docker-tls-manager.8", "docker-tls-manager.toml.5"]);
    (dir, pages)
}

/// groff in its strictest mode, and man as lintian runs it: any message fails, shown as is.
#[test]
fn pages_format_without_warnings() {
    let (dir, pages) = generate();
    for page in &pages {
        let p = dir.path().join(page);
        let groff = Command::new("groff")
            .args(["-ww", "-z", "-man"])
            .arg(&p)
            .output()
            .expect("groff (scripts/install-deps.sh installs it)");
        assert!(
            groff.status.success() && groff.stderr.is_empty(),
            "groff -ww -z -man {page}:\n{}",
            text(&groff.stderr)
        );
        // 80 columns, as lintian checks (narrower, long paths cannot be adjusted).
        let man = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(&p)
            .env("LC_ALL", "C.UTF-8")
            .env("MANWIDTH", "80")
            .output()
            .expect("man (scripts/install-deps.sh installs man-db)");
        assert!(
            man.status.success() && man.stderr.is_empty(),
            "man --warnings -l {page}:\n{}",
            text(&man.stderr)
        );
    }
}

/// Every `docker-tls-manager...(N)` a page names is a page we generate, and every page we
/// generate is an asset of the .deb and of the .rpm.
#[test]
fn pages_named_are_shipped() {
    let (dir, pages) = generate();
    let generated: BTreeSet<String> = pages.iter().cloned().collect();
    for page in &pages {
        let rendered = Command::new("man")
            .args(["-l", "-Tutf8"])
            .arg(dir.path().join(page))
            .env("LC_ALL", "C.UTF-8")
            .env("MANWIDTH", "1000")
            .output()
            .unwrap();
        // Bold comes as overstrike (`d\bd`): keep the last character of each.
        let mut rendered_plain = String::new();
        for c in text(&rendered.stdout).chars() {
            if c == '\u{8}' {
                rendered_plain.pop();
            } else {
                rendered_plain.push(c);
            }
        }
        let mut named = 0;
        let mut rest = rendered_plain.as_str();
        while let Some(at) = rest.find("docker-tls-manager") {
            rest = &rest[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
                .unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            if let Some(section) = after
                .strip_prefix('(')
                .and_then(|a| a.chars().next())
                .filter(|c| c.is_ascii_digit())
            {
                let file = format!("{name}.{section}");
                assert!(
                    generated.contains(&file),
                    "{page} names {name}({section}), which is not generated: {generated:?}"
                );
                named += 1;
            }
            rest = &rest[end..];
        }
        // Each page names the other in SEE ALSO (so this check reads what man shows).
        assert!(named > 0, "{page} names no page of ours:\n{rendered_plain}");
    }
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for page in &pages {
        let section = page.rsplit('.').next().unwrap();
        let deb = format!("[\"target/assets/{page}\", \"usr/share/man/man{section}/\", \"644\"]");
        let rpm = format!(
            "source = \"target/assets/{page}.gz\", dest = \"/usr/share/man/man{section}/{page}.gz\""
        );
        assert!(manifest.contains(&deb), "Cargo.toml: no .deb asset {deb}");
        assert!(manifest.contains(&rpm), "Cargo.toml: no .rpm asset {rpm}");
    }
}
