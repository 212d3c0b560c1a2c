//! `gaussedge-device`: the firmware, serving a serial port, or the simulator
//! on a pseudo-terminal.

use crate::link::{self, Pty};
use crate::server::{Buffers, Server};
use crate::sim::{Camera, SimOptions, SimPlatform};
use anyhow::{Context, Result};
use clap::Parser;
use gaussedge_shared::frame::input_len;
use gaussedge_shared::head::{GaussianHead, HeadConfig};
use gaussedge_shared::wire::FrameFormat;
use gaussedge_shared::{Estimator, Transform};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "gaussedge-device", version, about = "gaussedge device firmware / simulator")]
struct Args {
    /// Factory model bundle (backbone.onnx, head.stats, manifest.json).
    #[arg(long)]
    bundle: PathBuf,
    /// Persistent state folder (A/B slots, flashed bundles).
    #[arg(long)]
    state: PathBuf,
    /// Serve a pseudo-terminal (the simulator); prints its path.
    #[arg(long, conflicts_with = "port")]
    pty: bool,
    /// Serve a serial port.
    #[arg(long)]
    port: Option<String>,
    #[arg(long, default_value_t = 921_600)]
    baud: u32,
    /// Classes the head holds (fixed at boot).
    #[arg(long, default_value_t = 64)]
    capacity: usize,
    /// Simulated camera: cifar10:DIR, fashion-mnist:DIR or folder:DIR.
    #[arg(long)]
    camera: Option<String>,
    /// Captured samples kept per class for retraining.
    #[arg(long, default_value_t = 32)]
    store_per_class: usize,
    /// Largest frame accepted, WIDTHxHEIGHT (3 channels).
    #[arg(long, default_value = "256x256")]
    max_frame: String,
    /// Write the served path to this file once ready (for scripts).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Threads the backbone's convolutions split over. The features are
    /// the same bits at every count, except on ARM, where one thread runs
    /// tract's NEON kernels and more run the project's (within 1e-5 of
    /// tract's). Helpers spin briefly between a frame's calls, so one (the
    /// default) is the frugal choice for a battery device.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn parse_frame(s: &str) -> Result<FrameFormat> {
    let (w, h) = s.split_once('x').context("--max-frame WIDTHxHEIGHT")?;
    Ok(FrameFormat { width: w.parse()?, height: h.parse()?, channels: 3 })
}

/// The command-line entry point.
pub fn main() -> Result<()> {
    let args = Args::parse();
    gaussedge_backbone::Backbone::set_threads(args.threads);
    let camera = args.camera.as_deref().map(Camera::open).transpose()?;
    let platform = SimPlatform::open(SimOptions {
        bundle: args.bundle.clone(),
        state: args.state.clone(),
        camera,
        store_per_class: args.store_per_class,
    })?;
    let info = platform.backbone();
    let max_frame = parse_frame(&args.max_frame)?;
    // Everything the server uses is allocated here, once.
    let config = HeadConfig {
        dim: info.dim,
        capacity: args.capacity,
        weighting: Estimator::Pooled.weighting(),
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    };
    let head = GaussianHead::with_capacity(config)?;
    let mut frame = vec![0u8; max_frame.len()];
    let mut input = vec![0f32; input_len(&info.preprocess)];
    let mut features = vec![0f32; info.dim];
    let bufs = Buffers { frame: &mut frame, input: &mut input, features: &mut features };
    let mut server = Server::boot(head, platform, bufs, info, max_frame)
        .map_err(|f| anyhow::anyhow!("{:?}: {}", f.code, f.detail))?;
    match server.loaded_from() {
        Some(l) => eprintln!("loaded slot {} (generation {})", ["A", "B"][l.slot as usize & 1], l.generation),
        None => eprintln!("no saved state; loaded the bundle's base statistics"),
    }
    eprintln!("{} classes, capacity {}, feature dim {}", server.head().class_count(), args.capacity, info.dim);

    let stop = Arc::new(AtomicBool::new(false));
    // The serving loop polls `stop` between reads, so a signal ends it
    // after the frame in hand is answered and the state is on flash.
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).with_context(|| format!("handling signal {sig}"))?;
    }
    if args.pty {
        let mut pty = Pty::open()?;
        println!("{}", pty.path);
        if let Some(f) = &args.ready_file {
            std::fs::write(f, &pty.path)?;
        }
        link::serve(&mut pty.controller, &mut server, &stop)
    } else {
        let path = args.port.context("--pty or --port PATH")?;
        let mut port = link::open_serial(&path, args.baud)?;
        eprintln!("serving {path} at {} baud", args.baud);
        if let Some(f) = &args.ready_file {
            std::fs::write(f, &path)?;
        }
        link::serve(port.as_mut(), &mut server, &stop)
    }
}
