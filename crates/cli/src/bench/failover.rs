//! The failover timeline of `sealtls bench keyless`: handshakes per 100 ms
//! against a keyless server with two keyds, one of which is SIGKILLed in
//! the middle, printed as a text chart and optionally drawn as a PNG.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use sealtls_failure::{Failure, FailureClass};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{fail, Peer};

/// Width of one bucket of the timeline.
pub const BUCKET: Duration = Duration::from_millis(100);
/// A client gives a handshake this long before counting it as hung.
const CLIENT_LIMIT: Duration = Duration::from_secs(15);

/// Handshakes that succeeded and failed in each bucket, and the slowest one.
#[derive(Serialize)]
pub struct Timeline {
    /// Successes per bucket.
    pub ok: Vec<u64>,
    /// Failures per bucket.
    pub failed: Vec<u64>,
    /// The bucket in which the keyd was killed.
    pub kill_bucket: usize,
    /// The longest handshake, milliseconds.
    pub slowest_ms: u64,
}

impl Timeline {
    /// How long failures went on after the kill: from the kill to the end
    /// of the last bucket with a failure (zero when none failed).
    pub fn failure_window(&self) -> Duration {
        match self.failed.iter().rposition(|&f| f > 0) {
            Some(last) if last >= self.kill_bucket => BUCKET * (last + 1 - self.kill_bucket) as u32,
            _ => Duration::ZERO,
        }
    }
}

/// Runs `concurrency` handshaking clients against `addr` for `total`,
/// killing `victim` (with SIGKILL) after `kill_at`.
pub async fn run(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    concurrency: usize,
    total: Duration,
    kill_at: Duration,
    victim: Peer,
) -> Timeline {
    let buckets = total.as_millis().div_ceil(BUCKET.as_millis()) as usize;
    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<Vec<AtomicU64>> = Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect());
    let slowest = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(kill_at).await;
        let mut victim = victim;
        victim.kill();
    });
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (config, ok, failed, slowest) = (config.clone(), ok.clone(), failed.clone(), slowest.clone());
            tokio::spawn(async move {
                let connector = TlsConnector::from(config);
                while started.elapsed() < total {
                    let began = Instant::now();
                    let result = tokio::time::timeout(CLIENT_LIMIT, async {
                        let tcp = TcpStream::connect(addr).await?;
                        tcp.set_nodelay(true)?;
                        let name = ServerName::try_from("localhost").expect("valid name");
                        let mut tls = connector.connect(name, tcp).await?;
                        tls.shutdown().await
                    })
                    .await;
                    slowest.fetch_max(began.elapsed().as_millis() as u64, Ordering::Relaxed);
                    // Counted when it ends: a handshake that fails fails then.
                    let bucket = (started.elapsed().as_millis() / BUCKET.as_millis()) as usize;
                    let counts = if matches!(result, Ok(Ok(()))) { &ok } else { &failed };
                    if let Some(c) = counts.get(bucket) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        let _ = c.await;
    }
    let _ = killer.await;
    let load = |v: &[AtomicU64]| v.iter().map(|a| a.load(Ordering::Relaxed)).collect::<Vec<_>>();
    Timeline {
        ok: load(&ok),
        failed: load(&failed),
        kill_bucket: (kill_at.as_millis() / BUCKET.as_millis()) as usize,
        slowest_ms: slowest.load(Ordering::Relaxed),
    }
}

/// The timeline as text: one line per bucket, a bar of successes (`#`)
/// and failures (`x`), the kill marked.
pub fn text_chart(t: &Timeline) -> String {
    let peak = t.ok.iter().zip(&t.failed).map(|(o, f)| o + f).max().unwrap_or(1).max(1);
    let mut out = String::from("handshakes per 100 ms (# ok, x failed), two keyds, one SIGKILLed:\n");
    for (i, (o, f)) in t.ok.iter().zip(&t.failed).enumerate() {
        let width = |n: u64| (n * 50).div_ceil(peak) as usize;
        let mark = if i == t.kill_bucket { "  <- SIGKILL" } else { "" };
        out.push_str(&format!(
            "{:>5} ms {:>4} ok {:>3} failed |{}{}{mark}\n",
            i as u128 * BUCKET.as_millis(),
            o,
            f,
            "#".repeat(width(*o)),
            "x".repeat(width(*f))
        ));
    }
    out
}

/// Fonts looked for to label the PNG chart (Debian's fonts-dejavu-core).
const FONTS: [&str; 2] = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

/// Draws the timeline into a PNG file.
pub fn png_chart(t: &Timeline, file: &Path) -> Result<(), Failure> {
    use plotters::prelude::*;
    let font = FONTS.iter().find_map(|p| std::fs::read(p).ok()).ok_or_else(|| {
        Failure::new(
            FailureClass::Config,
            "no font to label the chart with",
            format!("install fonts-dejavu-core (looked for {})", FONTS.join(", ")),
        )
    })?;
    // plotters keeps registered fonts for the life of the process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| fail("the chart font does not load".into()))?;
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(file, (960, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let peak = t.ok.iter().chain(&t.failed).copied().max().unwrap_or(1).max(1);
        let end = t.ok.len() as u64 * BUCKET.as_millis() as u64;
        let mut chart = ChartBuilder::on(&root)
            .caption("keyless handshakes per 100 ms, two keyds, one SIGKILLed", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..end, 0u64..peak + peak / 10 + 1)?;
        chart.configure_mesh().x_desc("time (ms)").y_desc("handshakes").label_style(("sans-serif", 14)).draw()?;
        let at = |v: &[u64]| v.iter().enumerate().map(|(i, n)| (i as u64 * BUCKET.as_millis() as u64, *n)).collect::<Vec<_>>();
        chart
            .draw_series(LineSeries::new(at(&t.ok), BLUE.stroke_width(2)))?
            .label("succeeded")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(at(&t.failed), RED.stroke_width(2)))?
            .label("failed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        let kill = t.kill_bucket as u64 * BUCKET.as_millis() as u64;
        chart
            .draw_series(LineSeries::new(vec![(kill, 0), (kill, peak)], BLACK.stroke_width(1)))?
            .label("SIGKILL")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).label_font(("sans-serif", 14)).draw()?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| Failure::new(FailureClass::Config, format!("cannot write the chart {}: {e}", file.display()), "check the path"))
}
