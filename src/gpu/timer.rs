//! GPU timestamp timer: time between two points of the recorded command stream, measured by
//! the GPU itself (no submit or readback overhead), where the adapter has timestamp queries.

use super::Gpu;
use anyhow::{anyhow, Result};

/// A set of timestamp marks (see [`Gpu::timer`]).
pub struct GpuTimer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    count: u32,
}

impl Gpu {
    /// A timer with `count` marks, or None when the adapter has no timestamp queries.
    pub fn timer(&self, count: u32) -> Option<GpuTimer> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timer"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timer resolve"),
            size: 8 * count as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(GpuTimer {
            set,
            resolve,
            count,
        })
    }

    /// Records timestamp `index` after everything recorded so far.
    pub fn mark(&self, t: &GpuTimer, index: u32) {
        assert!(index < t.count);
        self.with_encoder(|encoder| write_mark(encoder, &t.set, index));
    }

    /// Every timestamp of `t`, in ticks (flushes and waits).
    fn timestamps(&self, t: &GpuTimer) -> Result<Vec<u64>> {
        self.with_encoder(|encoder| encoder.resolve_query_set(&t.set, 0..t.count, &t.resolve, 0));
        let raw = self.read_raw(&t.resolve, 0, 8 * t.count as u64)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    /// Milliseconds per timestamp tick.
    fn tick_ms(&self) -> f64 {
        self.queue.get_timestamp_period() as f64 / 1e6
    }

    /// Milliseconds between marks `a` and `b` (flushes and waits).
    pub fn elapsed_ms(&self, t: &GpuTimer, a: u32, b: u32) -> Result<f64> {
        let ts = self.timestamps(t)?;
        let (ta, tb) = (ts[a as usize], ts[b as usize]);
        if tb < ta {
            return Err(anyhow!("GPU timestamps went backwards ({ta} → {tb})"));
        }
        Ok((tb - ta) as f64 * self.tick_ms())
    }
}

/// An empty pass whose end writes timestamp `index` (needs only TIMESTAMP_QUERY). The end of a
/// pass, not its beginning: a beginning-of-pass write may land before earlier work has finished.
fn write_mark(encoder: &mut wgpu::CommandEncoder, set: &wgpu::QuerySet, index: u32) {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("mark"),
        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: Some(index),
        }),
    });
}

/// Per-kernel GPU time of a stretch of work: a timestamp after every launch, so that the
/// interval before each one's mark is that launch (launches run in order, one pass each).
pub(crate) struct Profile {
    timer: GpuTimer,
    /// "family/entry" of launch i, whose time ends at mark i + 1.
    names: Vec<String>,
}

impl Profile {
    /// Marks the end of the launch just recorded into `encoder` (launches past the timer's
    /// capacity go unmeasured).
    pub(crate) fn after_launch(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        family: &str,
        entry: &str,
    ) {
        let index = self.names.len() as u32 + 1;
        if index >= self.timer.count {
            return;
        }
        self.names.push(format!("{family}/{entry}"));
        write_mark(encoder, &self.timer.set, index);
    }
}

/// One kernel's share of a profiled stretch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTime {
    /// "family/entry point".
    pub kernel: String,
    /// Launches.
    pub launches: usize,
    /// Total GPU milliseconds.
    pub ms: f64,
}

impl Gpu {
    /// Starts timing every launch (up to `max_launches`) until [`Gpu::profile_finish`]; false
    /// where the adapter has no timestamp queries.
    pub fn profile_start(&self, max_launches: u32) -> bool {
        let Some(timer) = self.timer(max_launches + 1) else {
            return false;
        };
        self.mark(&timer, 0);
        *self.profile.lock().unwrap() = Some(Profile {
            timer,
            names: Vec::new(),
        });
        true
    }

    /// The profile since [`Gpu::profile_start`], by kernel, most time first (waits for the GPU).
    pub fn profile_finish(&self) -> Result<Vec<KernelTime>> {
        let Some(prof) = self.profile.lock().unwrap().take() else {
            return Ok(Vec::new());
        };
        let ts = self.timestamps(&prof.timer)?;
        let period = self.tick_ms();
        let mut by: Vec<KernelTime> = Vec::new();
        for (i, name) in prof.names.iter().enumerate() {
            let ms = ts[i + 1].saturating_sub(ts[i]) as f64 * period;
            match by.iter_mut().find(|k| &k.kernel == name) {
                Some(k) => {
                    k.launches += 1;
                    k.ms += ms;
                }
                None => by.push(KernelTime {
                    kernel: name.clone(),
                    launches: 1,
                    ms,
                }),
            }
        }
        by.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(by)
    }
}
