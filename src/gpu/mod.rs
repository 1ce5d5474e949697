//! GPU context, tensors, pipeline cache and kernel launch.
//!
//! Every kernel goes through [`Gpu::launch`]: one uniform params struct at binding 0,
//! storage buffers after it, pipelines cached by (shader, entry point, overrides).
//! Dispatches are recorded into one open command encoder and submitted on
//! [`Gpu::flush`] (readbacks flush first), so a forward pass is a single submit.
#![warn(missing_docs)]

mod adapter;
mod shader;
mod tensor;
mod timer;

pub(crate) use adapter::candidates;
pub use adapter::{list_adapters, AdapterChoice, NO_ADAPTER};
pub use shader::{expand, Reflection, Shader};
pub use tensor::{DType, GpuTensor};
pub use timer::{GpuTimer, KernelTime};

use anyhow::{bail, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// `VITGPU_MAX_BINDING_MB`, when set: a whole number of MiB, at least 1.
fn binding_cap_mb() -> Result<Option<u64>> {
    let Some(v) = std::env::var_os("VITGPU_MAX_BINDING_MB") else {
        return Ok(None);
    };
    let v = v.to_string_lossy();
    match v.trim().parse::<u64>() {
        Ok(mb) if (1..1 << 20).contains(&mb) => Ok(Some(mb)),
        _ => bail!(
            "VITGPU_MAX_BINDING_MB={v:?} is not a whole number of MiB from 1 to 1048575: set it to \
             the per-buffer cap to simulate (e.g. 128), or unset it"
        ),
    }
}

type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

/// Uniform params of all launches of one batch live in one buffer at 256-byte slots.
const PARAM_SLOT: u64 = 256;
const PARAM_SLOTS: u64 = 1024;

struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    params_buf: Arc<wgpu::Buffer>,
    launches: u64,
}

impl Recorder {
    /// The open command encoder, created on first use after a submit.
    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("vitgpu"),
            })
        })
    }
}

/// A kernel family's compiled module and what naga reads from its source.
struct Family {
    module: wgpu::ShaderModule,
    reflection: Reflection,
}

/// One opened adapter: device, queue, and the recorder every kernel launch goes through.
pub struct Gpu {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// Name, backend, driver and type of the adapter.
    pub info: wgpu::AdapterInfo,
    /// The limits the device was opened with (VITGPU_MAX_BINDING_MB applied).
    pub limits: wgpu::Limits,
    /// Optional features enabled on the device (f16 shaders, timestamp queries).
    pub features: wgpu::Features,
    modules: Mutex<HashMap<&'static str, Result<Arc<Family>, String>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    rec: Mutex<Recorder>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Released activation buffers, reused by `alloc`.
    pool: Arc<tensor::Pool>,
    /// Bytes of tensor buffers held, and the peak.
    usage: Arc<tensor::Usage>,
    /// Dispatches recorded since the device opened.
    dispatches: std::sync::atomic::AtomicU64,
    /// The per-kernel profile being recorded (see [`Gpu::profile_start`]).
    profile: Mutex<Option<timer::Profile>>,
    /// Bound where a kernel's optional input is switched off by an override.
    dummy: GpuTensor,
    /// Scratch textures holding operands staged by [`Gpu::stage_texture`], one per slot.
    staging: Mutex<[Option<Staged>; STAGE_SLOTS]>,
    /// Bound where a kernel's texture input is switched off by an override.
    dummy_texture: wgpu::TextureView,
}

/// Texels per row of a staging texture: quad q of a staged tensor is texel (q % W, q / W).
pub const STAGE_WIDTH: u32 = 4096;
/// Staging texture slots (the most textures one launch stages).
pub const STAGE_SLOTS: usize = 3;

/// One staging texture and its height in rows.
struct Staged {
    view: wgpu::TextureView,
    rows: u32,
}

/// A `STAGE_WIDTH`-wide Rgba32Uint texture of `rows` rows, for staging (or binding unused).
fn staging_texture(device: &wgpu::Device, width: u32, rows: u32) -> wgpu::TextureView {
    device
        .create_texture(&wgpu::TextureDescriptor {
            label: Some("staging"),
            size: wgpu::Extent3d {
                width,
                height: rows,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Uint,
            // Sampled by most kernels, read as a storage texture by matmul_sg.wgsl.
            usage: wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::STORAGE_BINDING
                | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        })
        .create_view(&Default::default())
}

impl Gpu {
    /// Opens `adapter` with the limits a ViT-B needs, without the kernel self-check: programs
    /// open adapters with `Gpu::new` (kernels/check.rs), which runs it.
    pub(crate) fn open(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let alimits = adapter.limits();
        // Ask for everything the adapter offers: ViT-B tensors and activations exceed the
        // 128 MiB default binding size at realistic batch sizes.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: alimits.max_storage_buffer_binding_size,
            max_buffer_size: alimits.max_buffer_size,
            max_storage_buffers_per_shader_stage: alimits
                .max_storage_buffers_per_shader_stage
                .min(16),
            max_compute_workgroup_storage_size: alimits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: alimits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: alimits.max_compute_workgroup_size_x,
            max_compute_workgroup_size_y: alimits.max_compute_workgroup_size_y,
            max_compute_workgroups_per_dimension: alimits.max_compute_workgroups_per_dimension,
            ..wgpu::Limits::downlevel_defaults().using_resolution(alimits.clone())
        };
        // VITGPU_MAX_BINDING_MB caps the per-buffer size, to see how a run would fare on a
        // smaller GPU (and to test the out-of-memory advice without allocating gigabytes).
        let mut limits = limits;
        if let Some(mb) = binding_cap_mb()? {
            let cap = (mb << 20).min(limits.max_storage_buffer_binding_size);
            limits.max_storage_buffer_binding_size = cap;
        }
        let features = adapter.features()
            & (wgpu::Features::SHADER_F16
                | wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::SUBGROUP);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vitgpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| {
            anyhow::anyhow!("could not open GPU device on adapter '{}': {e}", info.name)
        })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let params_buf = Arc::new(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: PARAM_SLOT * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }));
        let dummy = GpuTensor::new(
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("dummy"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }),
            &[4],
            DType::F32,
        );
        let dummy_texture = staging_texture(&device, 1, 1);
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            rec: Mutex::new(Recorder {
                encoder: None,
                params: Vec::new(),
                params_buf,
                launches: 0,
            }),
            errors,
            pool: Arc::default(),
            usage: Arc::default(),
            dispatches: Default::default(),
            profile: Mutex::default(),
            dummy,
            staging: Mutex::default(),
            dummy_texture,
        })
    }

    /// One line naming the adapter, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {})",
            self.info.name,
            self.info.device_type,
            self.info.backend,
            self.info.driver,
            self.info.driver_info
        )
    }

    /// A CPU implementation (lavapipe, WARP, SwiftShader): kernels pick barrier-free variants.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The subgroup width when the device has subgroup operations and runs every subgroup at
    /// one width (lavapipe: 8), else None.
    pub fn fixed_subgroup_size(&self) -> Option<u32> {
        let fixed = self.info.subgroup_min_size == self.info.subgroup_max_size;
        (self.features.contains(wgpu::Features::SUBGROUP) && fixed)
            .then_some(self.info.subgroup_min_size)
    }

    pub(crate) fn dummy(&self) -> &GpuTensor {
        &self.dummy
    }

    /// Rows of staging texture `t` needs: None when `t` is not a whole number of 16-byte-aligned
    /// quads or needs more rows than the adapter's textures have.
    fn stage_rows(&self, t: &GpuTensor) -> Option<u32> {
        let (bytes, max_rows) = (t.byte_size(), self.limits.max_texture_dimension_2d);
        if !bytes.is_multiple_of(16) || !t.offset.is_multiple_of(16) || max_rows < STAGE_WIDTH {
            return None;
        }
        let rows = u32::try_from((bytes / 16).div_ceil(u64::from(STAGE_WIDTH))).ok()?;
        (rows <= max_rows).then_some(rows)
    }

    /// Whether [`Gpu::launch_textured`] can stage `t` as a texture.
    pub(crate) fn can_stage(&self, t: &GpuTensor) -> bool {
        self.stage_rows(t).is_some()
    }

    /// Records a copy of `t` into staging slot `slot` (grown if needed) and returns its view:
    /// quad q of the tensor's 32-bit words (from its first) is texel (q % STAGE_WIDTH,
    /// q / STAGE_WIDTH) of an Rgba32Uint texture. The caller holds the staging lock until the
    /// launch that reads it is recorded; the next copy into the slot is ordered after it.
    fn stage(&self, slots: &mut [Option<Staged>], slot: usize, t: &GpuTensor) -> wgpu::TextureView {
        let rows = self.stage_rows(t).expect("stage: check can_stage first");
        let width = u64::from(STAGE_WIDTH);
        if slots[slot].as_ref().is_none_or(|s| s.rows < rows) {
            // Grow by powers of two so that a run settles on one texture per slot.
            let cap = rows
                .next_power_of_two()
                .min(self.limits.max_texture_dimension_2d);
            if let Some(old) = slots[slot].take() {
                self.usage.sub(u64::from(old.rows) * width * 16);
            }
            self.usage.add(u64::from(cap) * width * 16);
            slots[slot] = Some(Staged {
                view: staging_texture(&self.device, STAGE_WIDTH, cap),
                rows: cap,
            });
        }
        let view = slots[slot].as_ref().unwrap().view.clone();
        let texture = view.texture();
        let quads = t.byte_size() / 16;
        let (full, tail) = ((quads / width) as u32, (quads % width) as u32);
        self.with_encoder(|e| {
            let mut copy = |offset: u64, y: u32, w: u32, h: u32| {
                e.copy_buffer_to_texture(
                    wgpu::TexelCopyBufferInfo {
                        buffer: &t.buffer,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset,
                            bytes_per_row: Some(STAGE_WIDTH * 16),
                            rows_per_image: None,
                        },
                    },
                    wgpu::TexelCopyTextureInfo {
                        texture,
                        mip_level: 0,
                        origin: wgpu::Origin3d { x: 0, y, z: 0 },
                        aspect: wgpu::TextureAspect::All,
                    },
                    wgpu::Extent3d {
                        width: w,
                        height: h,
                        depth_or_array_layers: 1,
                    },
                )
            };
            if full > 0 {
                copy(t.offset, 0, STAGE_WIDTH, full);
            }
            if tail > 0 {
                copy(t.offset + u64::from(full) * width * 16, full, tail, 1);
            }
        });
        view
    }

    /// The family's module and reflection, expanded, checked and compiled once per process.
    fn family(&self, shader: &Shader) -> Result<Arc<Family>, String> {
        let mut modules = self.modules.lock().unwrap();
        modules
            .entry(shader.name)
            .or_insert_with(|| {
                let wgsl = shader::expand(shader.source)?;
                let reflection = Reflection::of(&wgsl)?;
                // Every check but loop bounding: since wgpu 25 naga adds an iteration
                // counter to every loop, which made our inner loops ~50% slower on lavapipe.
                let checks = wgpu::ShaderRuntimeChecks {
                    force_loop_bounding: false,
                    ..wgpu::ShaderRuntimeChecks::checked()
                };
                // SAFETY: loop bounding only guards against infinite loops, and every loop in
                // shaders/ runs a counter up to a bound fixed for the dispatch (a uniform size,
                // an override or a constant; sizes stay far below 2^32, so no counter wraps) or
                // halves it to zero. Bounds and division checks stay on.
                let module = unsafe {
                    self.device.create_shader_module_trusted(
                        wgpu::ShaderModuleDescriptor {
                            label: Some(shader.name),
                            source: wgpu::ShaderSource::Wgsl(wgsl.into()),
                        },
                        checks,
                    )
                };
                Ok(Arc::new(Family { module, reflection }))
            })
            .clone()
    }

    /// The pipeline of one entry point with its override values, after checking the launch's
    /// params size, storage bindings and override names against the shader.
    fn pipeline(
        &self,
        shader: &Shader,
        entry: &'static str,
        overrides: &[(&'static str, f64)],
        params_size: usize,
        bindings: &[u32],
        textures: &[u32],
    ) -> Result<Arc<wgpu::ComputePipeline>, String> {
        let family = self.family(shader)?;
        family
            .reflection
            .check(entry, params_size, bindings, textures, overrides)?;
        let key: PipelineKey = (
            shader.name,
            entry,
            overrides.iter().map(|(k, v)| (*k, v.to_bits())).collect(),
        );
        let mut pipelines = self.pipelines.lock().unwrap();
        let p = pipelines.entry(key).or_insert_with(|| {
            Arc::new(
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: None,
                        module: &family.module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: overrides,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    }),
            )
        });
        Ok(p.clone())
    }

    /// Records one dispatch: `params` at binding 0, then `(binding, tensor)` storage bindings.
    ///
    /// A launch that does not match the shader (params size, bindings, override names) is not
    /// recorded; the next [`Gpu::sync`] or read returns the error, naming the kernel.
    pub fn launch<P: bytemuck::Pod>(
        &self,
        shader: &Shader,
        entry: &'static str,
        overrides: &[(&'static str, f64)],
        params: &P,
        tensors: &[(u32, &GpuTensor)],
        workgroups: [u32; 3],
    ) {
        self.launch_textured(shader, entry, overrides, params, tensors, &[], workgroups)
    }

    /// [`Gpu::launch`] with texture bindings as well: `(binding, Some(t))` stages tensor `t`
    /// (which [`Gpu::can_stage`] must accept) into a texture for this launch, `(binding, None)`
    /// binds a placeholder. llvmpipe fetches a texel for 8 lanes without the per-lane loop,
    /// masks and bounds checks of a storage-buffer load: a quad costs about a fifth as much
    /// (`vitgpu bench` prints both read rates, from `roof_read`). Staging copies the tensor, so
    /// it pays only for operands read many times (matmul).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_textured<P: bytemuck::Pod>(
        &self,
        shader: &Shader,
        entry: &'static str,
        overrides: &[(&'static str, f64)],
        params: &P,
        tensors: &[(u32, &GpuTensor)],
        textures: &[(u32, Option<&GpuTensor>)],
        workgroups: [u32; 3],
    ) {
        // Held until the launch is recorded, so that no other thread's staging lands between
        // this launch's copies and its dispatch.
        let mut slots = self.staging.lock().unwrap();
        let mut staged: Vec<(&GpuTensor, wgpu::TextureView)> = Vec::new();
        let mut views: Vec<(u32, wgpu::TextureView)> = Vec::new();
        for &(binding, t) in textures {
            let view = match t {
                None => self.dummy_texture.clone(),
                // One copy for an operand bound twice (attention's q·kᵀ reads qkv twice).
                Some(t) => match staged.iter().find(|(s, _)| s.same_view(t)) {
                    Some((_, v)) => v.clone(),
                    None => {
                        assert!(
                            staged.len() < STAGE_SLOTS,
                            "launch_textured: too many textures"
                        );
                        let v = self.stage(&mut slots[..], staged.len(), t);
                        staged.push((t, v.clone()));
                        v
                    }
                },
            };
            views.push((binding, view));
        }
        let textures: Vec<(u32, &wgpu::TextureView)> = views.iter().map(|(b, v)| (*b, v)).collect();
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(
            workgroups.iter().all(|&w| w <= max),
            "{entry}: dispatch {workgroups:?} exceeds the adapter's {max} workgroups per dimension"
        );
        let bindings: Vec<u32> = tensors.iter().map(|(b, _)| *b).collect();
        let tex_bindings: Vec<u32> = textures.iter().map(|(b, _)| *b).collect();
        let size = std::mem::size_of::<P>();
        let pipeline = match self.pipeline(shader, entry, overrides, size, &bindings, &tex_bindings)
        {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("kernel {}/{entry}: {e}", shader.name);
                let mut errs = self.errors.lock().unwrap();
                if !errs.contains(&msg) {
                    errs.push(msg);
                }
                return;
            }
        };
        if workgroups.contains(&0) {
            return;
        }
        self.dispatches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rec = self.rec.lock().unwrap();
        if rec.launches == PARAM_SLOTS {
            self.submit_locked(&mut rec);
        }
        let slot = rec.launches;
        rec.launches += 1;
        let bytes = bytemuck::bytes_of(params);
        assert!(bytes.len() as u64 <= PARAM_SLOT);
        rec.params.extend_from_slice(bytes);
        rec.params.resize(((slot + 1) * PARAM_SLOT) as usize, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &rec.params_buf,
                offset: slot * PARAM_SLOT,
                size: wgpu::BufferSize::new(bytes.len().max(16) as u64),
            }),
        }];
        entries.extend(tensors.iter().map(|(b, t)| wgpu::BindGroupEntry {
            binding: *b,
            resource: t.binding(),
        }));
        entries.extend(textures.iter().map(|(b, v)| wgpu::BindGroupEntry {
            binding: *b,
            resource: wgpu::BindingResource::TextureView(v),
        }));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = rec
            .encoder(&self.device)
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes: None,
            });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        drop(pass);
        if let Some(prof) = self.profile.lock().unwrap().as_mut() {
            prof.after_launch(rec.encoder(&self.device), shader.name, entry);
        }
    }

    fn submit_locked(&self, rec: &mut Recorder) {
        if rec.launches > 0 {
            self.queue.write_buffer(&rec.params_buf, 0, &rec.params);
        }
        if let Some(enc) = rec.encoder.take() {
            self.queue.submit(Some(enc.finish()));
        }
        rec.params.clear();
        rec.launches = 0;
        // The next batch writes its params before its own submit; queue order keeps the
        // previous batch's reads of this buffer ahead of that write.
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        let mut rec = self.rec.lock().unwrap();
        self.submit_locked(&mut rec);
    }

    /// Waits for the GPU and reports any validation / out-of-memory error since the last check.
    pub fn sync(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow::anyhow!("waiting for the GPU failed: {e}"))?;
        self.check_errors()
    }

    /// Returns (and clears) any GPU error reported since the last check, without waiting.
    pub fn check_errors(&self) -> Result<()> {
        let mut errs = self.errors.lock().unwrap();
        if errs.is_empty() {
            return Ok(());
        }
        let msg = errs.join("\n");
        errs.clear();
        if msg.to_lowercase().contains("out of memory") {
            bail!("the GPU ran out of memory: use a smaller --batch-size (with --grad-accum to keep the effective batch), or --gradient-checkpointing to keep fewer activations\n{msg}");
        }
        bail!("GPU error: {msg}")
    }

    /// Records a buffer-to-buffer copy into the open encoder.
    pub fn copy(&self, src: &GpuTensor, dst: &GpuTensor) {
        assert_eq!(
            src.byte_size(),
            dst.byte_size(),
            "copy between tensors of different sizes"
        );
        self.with_encoder(|e| {
            e.copy_buffer_to_buffer(
                &src.buffer,
                src.offset,
                &dst.buffer,
                dst.offset,
                src.byte_size(),
            )
        });
    }

    /// Runs `f` on the open command encoder (creating it if needed).
    pub(crate) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        f(self.rec.lock().unwrap().encoder(&self.device))
    }

    /// Records a fill with zeros.
    pub fn zero(&self, t: &GpuTensor) {
        self.with_encoder(|e| e.clear_buffer(&t.buffer, t.offset, Some(t.byte_size())));
    }

    /// Allocates a zero-filled tensor, reusing a released buffer of the same size if any.
    pub fn alloc(&self, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let bytes = tensor::byte_size(shape, dtype);
        self.check_size(shape, bytes, false)?;
        let reused = self
            .pool
            .lock()
            .unwrap()
            .get_mut(&bytes)
            .and_then(|v| v.pop());
        if let Some(buffer) = reused {
            // Fresh buffers are zeroed; keep that promise (the CLS-row backward relies on it).
            self.with_encoder(|e| e.clear_buffer(&buffer, 0, None));
            return Ok(self.pooled(buffer, shape, dtype));
        }
        self.usage.add(bytes);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!(
                "the GPU ran out of memory allocating a {shape:?} tensor ({:.1} MiB): use a smaller --batch-size (with --grad-accum to keep the effective batch), or --gradient-checkpointing to keep fewer activations\n{e}",
                bytes as f64 / 1048576.0
            );
        }
        Ok(self.pooled(buffer, shape, dtype))
    }

    fn pooled(&self, buffer: wgpu::Buffer, shape: &[usize], dtype: DType) -> GpuTensor {
        GpuTensor {
            buffer: Arc::new(tensor::PooledBuffer::new(
                buffer,
                Some(self.pool.clone()),
                None,
            )),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// Refuses a tensor larger than one buffer may be, with advice that fits what it holds:
    /// activations and input batches shrink with the batch size, a weight does not.
    fn check_size(&self, shape: &[usize], bytes: u64, weight: bool) -> Result<()> {
        let lim = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes <= lim {
            return Ok(());
        }
        let mib = |b: u64| b as f64 / 1048576.0;
        let what = if weight { "weight tensor" } else { "tensor" };
        let advice = if weight {
            "the batch size does not change it: this model (at this resolution) needs an adapter \
             with larger buffers (`vitgpu info` lists each adapter's max storage binding)"
        } else {
            "use a smaller --batch-size (or --grad-accum to keep the effective batch); \
             --gradient-checkpointing keeps fewer activations"
        };
        let capped = if std::env::var_os("VITGPU_MAX_BINDING_MB").is_some() {
            ", capped by VITGPU_MAX_BINDING_MB"
        } else {
            ""
        };
        bail!(
            "a {shape:?} {what} needs {:.1} MiB, more than this adapter allows in one buffer \
             ({:.1} MiB{capped}): {advice}",
            mib(bytes),
            mib(lim)
        )
    }

    /// Uploads model weights (f32 host data converted to `dtype`): like [`Gpu::upload`], but a
    /// weight too large for one buffer is not something a smaller batch fixes, and the error says so.
    pub fn upload_weights(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        self.upload_checked(data, shape, dtype, true)
    }

    /// Uploads f32 host data (an input batch, say), converting to `dtype`.
    pub fn upload(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        self.upload_checked(data, shape, dtype, false)
    }

    fn upload_checked(
        &self,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
        weight: bool,
    ) -> Result<GpuTensor> {
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "upload: data does not match shape {shape:?}"
        );
        let bytes = tensor::encode(data, dtype);
        self.check_size(shape, bytes.len() as u64, weight)?;
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        Ok(self.counted(buffer, shape, dtype))
    }

    /// A tensor owning `buffer`, counted in [`Gpu::memory`] until it is freed.
    fn counted(&self, buffer: wgpu::Buffer, shape: &[usize], dtype: DType) -> GpuTensor {
        self.usage.add(buffer.size());
        GpuTensor {
            buffer: Arc::new(tensor::PooledBuffer::new(
                buffer,
                None,
                Some(self.usage.clone()),
            )),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// (current, peak) bytes of tensor buffers held on the device: weights, activations,
    /// gradients, optimizer state and the reuse pool (which keeps released buffers).
    pub fn memory(&self) -> (u64, u64) {
        self.usage.get()
    }

    /// Starts a new peak for [`Gpu::memory`] from what is held now.
    pub fn reset_peak_memory(&self) {
        self.usage.reset_peak();
    }

    /// Kernel dispatches recorded since the device opened.
    pub fn dispatches(&self) -> u64 {
        self.dispatches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Overwrites a tensor's contents from the host (applied before the next submit's work).
    pub fn write(&self, t: &GpuTensor, data: &[f32]) {
        assert_eq!(data.len(), t.numel());
        // Keep order with recorded-but-unsubmitted work that reads the old contents.
        self.flush();
        self.queue
            .write_buffer(&t.buffer, t.offset, &tensor::encode(data, t.dtype));
    }

    /// Uploads u32 data (labels) as a U32 tensor.
    pub fn upload_u32(&self, data: &[u32]) -> GpuTensor {
        let mut v = data.to_vec();
        // Same minimum size as every other tensor (see tensor::byte_size).
        v.resize(v.len().max(4), 0);
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&v),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        self.counted(buffer, &[data.len()], DType::U32)
    }

    /// Reads a tensor back as f32 (flushes and waits).
    pub fn read(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        let raw = self.read_raw(&t.buffer, t.offset, t.byte_size())?;
        Ok(tensor::decode(&raw, t.numel(), t.dtype))
    }

    /// Reads `size` bytes of `buffer` from `offset` back to the host (flushes and waits).
    pub fn read_raw(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.rec.lock().unwrap();
            rec.encoder(&self.device)
                .copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
            self.submit_locked(&mut rec);
        }
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow::anyhow!("waiting for the GPU failed: {e}"))?;
        self.check_errors()?;
        rx.recv()?
            .map_err(|e| anyhow::anyhow!("reading back from the GPU failed: {e}"))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| anyhow::anyhow!("reading back from the GPU failed: {e}"))?
            .to_vec();
        staging.unmap();
        Ok(out)
    }
}
