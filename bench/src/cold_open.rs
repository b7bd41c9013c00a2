//! `stead-bench cold-open`: the latency of the first request to an object among N on disk.
//!
//! `populate` writes N object databases straight into a shard's data folder by copying a template
//! (the database of one object, taken from a stopped sidecar) with the object's id and name
//! written over the template's: names are `{prefix}{k:07}`, so every copy has the template's
//! layout byte for byte. `measure` then sends one request at a time to objects picked at random
//! among the N (each object once: its first request opens it), then the same requests again
//! (the objects now open), and prints both latency distributions.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use stead_core::{ClassName, ObjectId, ObjectName};
use tokio::time::Instant;

use crate::common::{Latency, Rng, Sender, Target, connect, new_hist, round1};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Args {
    /// Write N object databases into a shard's data folder (the sidecar must be stopped).
    Populate(Populate),
    /// Time first requests to random objects among the N, then the same requests again.
    Measure(Measure),
}

#[derive(clap::Args, Debug, Clone)]
pub struct Populate {
    /// The shard's data folder (it holds `slots/`), e.g. /tmp/cold/shard-0.
    #[arg(long)]
    data_dir: PathBuf,
    /// A committed object database (its WAL checkpointed: copy it from a stopped sidecar).
    #[arg(long)]
    template: PathBuf,
    /// The template object's name; it must be `{prefix}{k:07}` for some k.
    #[arg(long)]
    template_name: String,
    #[arg(long, default_value = "Counter")]
    class: String,
    #[arg(long, default_value = "cold-")]
    prefix: String,
    #[arg(long, default_value_t = 1_000_000)]
    objects: u64,
    #[arg(long, default_value_t = stead_core::id::DEFAULT_SLOTS)]
    slots: u32,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    threads: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Measure {
    /// URL of a request to an object; `{object}` is replaced by its name, e.g.
    /// http://127.0.0.1:18787/objects/Counter/name/{object}/value
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "cold-")]
    prefix: String,
    /// How many objects are on disk (names `{prefix}0000000` ..).
    #[arg(long, default_value_t = 1_000_000)]
    objects: u64,
    /// Objects to open (each once), one request at a time.
    #[arg(long, default_value_t = 2000)]
    samples: u64,
    #[arg(long, default_value = "")]
    label: String,
}

pub async fn run(args: Args) -> Result<()> {
    match args {
        Args::Populate(p) => tokio::task::spawn_blocking(move || populate(&p)).await?,
        Args::Measure(m) => measure(&m).await,
    }
}

fn name_of(prefix: &str, k: u64) -> String {
    format!("{prefix}{k:07}")
}

/// The one place `needle` occurs in `hay`.
fn only_offset(hay: &[u8], needle: &[u8], what: &str) -> Result<usize> {
    let mut found = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let first = found
        .next()
        .with_context(|| format!("the template does not contain its {what}"))?;
    if found.next().is_some() {
        bail!("the template contains its {what} more than once");
    }
    Ok(first)
}

/// The template's bytes with `(id offset, name offset)` to write each copy's over.
fn template(p: &Populate, class: &ClassName) -> Result<(Vec<u8>, usize, usize)> {
    let bytes =
        std::fs::read(&p.template).with_context(|| format!("reading {}", p.template.display()))?;
    let name = ObjectName::new(&p.template_name)?;
    if p.template_name.len() != name_of(&p.prefix, 0).len()
        || !p.template_name.starts_with(&p.prefix)
    {
        bail!(
            "--template-name must be {}NNNNNNN (same length as every copy's name)",
            p.prefix
        );
    }
    let id = ObjectId::named(class, &name).to_hex();
    let id_at = only_offset(&bytes, id.as_bytes(), "id")?;
    let name_at = only_offset(&bytes, p.template_name.as_bytes(), "name")?;
    Ok((bytes, id_at, name_at))
}

fn populate(p: &Populate) -> Result<()> {
    let class = ClassName::new(&p.class)?;
    let (tpl, id_at, name_at) = template(p, &class)?;
    let t0 = std::time::Instant::now();
    let written = AtomicU64::new(0);
    let threads = p.threads.max(1);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (tpl, class, written) = (tpl.clone(), class.clone(), &written);
                s.spawn(move || -> Result<()> {
                    let mut buf = tpl;
                    let mut made: HashSet<u32> = HashSet::new();
                    let mut k = t;
                    while k < p.objects {
                        let name = name_of(&p.prefix, k);
                        let id = ObjectId::named(&class, &ObjectName::new(&name)?);
                        let slot = id.slot(p.slots).0;
                        let dir = p
                            .data_dir
                            .join("slots")
                            .join(slot.to_string())
                            .join(class.as_str());
                        if made.insert(slot) {
                            std::fs::create_dir_all(&dir)?;
                        }
                        buf[id_at..id_at + 64].copy_from_slice(id.to_hex().as_bytes());
                        buf[name_at..name_at + name.len()].copy_from_slice(name.as_bytes());
                        std::fs::write(dir.join(format!("{}.sqlite", id.to_hex())), &buf)?;
                        let n = written.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % 100_000 == 0 {
                            eprintln!("  {n} written, {:.0}s", t0.elapsed().as_secs_f64());
                        }
                        k += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let bytes = p.objects * tpl.len() as u64;
    println!(
        "stead-bench cold-open populate: {} objects of {} B ({:.2} GiB of file data) in {}, {secs:.1}s ({:.0}/s)",
        p.objects,
        tpl.len(),
        bytes as f64 / (1u64 << 30) as f64,
        p.data_dir.display(),
        p.objects as f64 / secs
    );
    println!(
        "{}",
        serde_json::json!({"bench": "cold-open-populate", "objects": p.objects,
            "file_bytes": tpl.len(), "total_bytes": bytes, "secs": round1(secs)})
    );
    Ok(())
}

async fn get(s: &mut Sender, t: &Target, path: &str) -> Result<u16> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::HOST, &t.authority)
        .body(Empty::<Bytes>::new())?;
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

async fn pass(
    s: &mut Sender,
    t: &Target,
    paths: &[String],
) -> Result<hdrhistogram::Histogram<u64>> {
    let mut hist = new_hist();
    for path in paths {
        let start = Instant::now();
        let status = get(s, t, path).await?;
        if status != 200 {
            bail!("{path} answered {status}");
        }
        hist.saturating_record(start.elapsed().as_micros().max(1) as u64);
    }
    Ok(hist)
}

async fn measure(m: &Measure) -> Result<()> {
    if m.samples == 0 || m.samples > m.objects {
        bail!("--samples must be between 1 and --objects");
    }
    let target = Target::parse(&m.url)?;
    let mut rng = Rng::new(7);
    let mut picked = HashSet::new();
    while (picked.len() as u64) < m.samples {
        picked.insert(rng.below(m.objects));
    }
    let paths: Vec<String> = picked
        .iter()
        .map(|k| target.path.replace("{object}", &name_of(&m.prefix, *k)))
        .collect();
    let mut s = connect(&target.authority).await?;
    let t0 = Instant::now();
    let cold = pass(&mut s, &target, &paths).await?;
    let cold_secs = t0.elapsed().as_secs_f64();
    let warm = pass(&mut s, &target, &paths).await?;
    let (c, w) = (Latency::of(&cold), Latency::of(&warm));
    let label = if m.label.is_empty() {
        "stead-bench cold-open"
    } else {
        &m.label
    };
    println!(
        "{label}: {} objects opened one at a time, at random among {} on disk",
        m.samples, m.objects
    );
    println!(
        "  first request (cold open): {} ({:.0}/s)",
        c.line(),
        m.samples as f64 / cold_secs
    );
    println!("  same objects again (open):  {}", w.line());
    println!(
        "{}",
        serde_json::json!({"bench": "cold-open", "label": m.label, "objects": m.objects,
            "samples": m.samples, "cold": c.json(), "warm": w.json()})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_one_width() {
        assert_eq!(name_of("cold-", 0), "cold-0000000");
        assert_eq!(name_of("cold-", 999_999).len(), name_of("cold-", 0).len());
        assert_eq!(only_offset(b"abcXYZabc", b"XYZ", "id").unwrap(), 3);
        assert!(only_offset(b"abcabc", b"abc", "id").is_err());
        assert!(only_offset(b"abc", b"xyz", "id").is_err());
    }
}
