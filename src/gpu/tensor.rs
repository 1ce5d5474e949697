//! `GpuTensor`: a storage buffer with a shape and a storage dtype (f32, or f16 packed two per u32).

use half::f16;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Released buffers by byte size, for reuse: a training step allocates the same shapes every
/// time, so after the first step activations come from here instead of the driver.
pub(crate) type Pool = Mutex<HashMap<u64, Vec<wgpu::Buffer>>>;

/// Bytes of tensor buffers held on the device (live tensors plus the reuse pool, which keeps
/// what it holds until the device closes), and the most held at once.
#[derive(Default)]
pub(crate) struct Usage {
    current: AtomicU64,
    peak: AtomicU64,
}

impl Usage {
    pub(crate) fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    pub(crate) fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
    /// (current, peak) bytes.
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.current.load(Ordering::Relaxed),
            self.peak.load(Ordering::Relaxed),
        )
    }
    /// Starts a new peak from what is held now.
    pub(crate) fn reset_peak(&self) {
        self.peak
            .store(self.current.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A buffer that goes back to its pool (if it has one) when the last tensor using it drops.
/// Reuse is safe while earlier commands still read it: the queue runs in recording order.
pub struct PooledBuffer {
    buf: Option<wgpu::Buffer>,
    pool: Option<Arc<Pool>>,
    usage: Option<Arc<Usage>>,
}

impl PooledBuffer {
    /// `usage`, when given, counts the buffer from now until it is freed (not pooled).
    pub(crate) fn new(
        buf: wgpu::Buffer,
        pool: Option<Arc<Pool>>,
        usage: Option<Arc<Usage>>,
    ) -> PooledBuffer {
        PooledBuffer {
            buf: Some(buf),
            pool,
            usage,
        }
    }
}

impl std::ops::Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let Some(b) = self.buf.take() else { return };
        match &self.pool {
            Some(pool) => {
                if let Ok(mut p) = pool.lock() {
                    p.entry(b.size()).or_default().push(b);
                }
            }
            None => {
                if let Some(u) = &self.usage {
                    u.sub(b.size());
                }
            }
        }
    }
}

/// Storage type of a tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single.
    F32,
    /// IEEE half, two values packed per 32-bit word (element i in the low half when i is even).
    F16,
    /// Unsigned integers (labels).
    U32,
}

impl DType {
    /// The override value that switches a kernel binding to packed-f16 loads/stores.
    pub fn is_f16(self) -> f64 {
        if self == DType::F16 {
            1.0
        } else {
            0.0
        }
    }
}

/// A tensor in a GPU buffer; `offset` (bytes) lets parameters and their gradients be views
/// into one flat buffer, so that the optimizer is a single kernel over all of them.
#[derive(Clone)]
pub struct GpuTensor {
    /// The buffer, shared by views and returned to the pool when the last one drops.
    pub buffer: Arc<PooledBuffer>,
    /// Byte offset of element 0 in the buffer.
    pub offset: u64,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: DType,
}

impl GpuTensor {
    /// A tensor owning all of `buffer` (not pooled).
    pub fn new(buffer: wgpu::Buffer, shape: &[usize], dtype: DType) -> GpuTensor {
        GpuTensor {
            buffer: Arc::new(PooledBuffer::new(buffer, None, None)),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }
    /// A view of `shape` starting `elem_offset` elements into this tensor (the byte offset must
    /// meet the adapter's storage-offset alignment, 256 bytes at most).
    pub fn view(&self, elem_offset: usize, shape: &[usize]) -> GpuTensor {
        let bytes = match self.dtype {
            DType::F16 => elem_offset * 2,
            _ => elem_offset * 4,
        } as u64;
        assert!(
            bytes.is_multiple_of(256),
            "view offset {bytes} bytes is not 256-aligned"
        );
        GpuTensor {
            buffer: self.buffer.clone(),
            offset: self.offset + bytes,
            shape: shape.to_vec(),
            dtype: self.dtype,
        }
    }
    /// The storage binding of exactly this tensor's bytes.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.byte_size()),
        })
    }
    /// Whether `other` views the same bytes of the same buffer.
    pub fn same_view(&self, other: &GpuTensor) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
            && self.offset == other.offset
            && self.byte_size() == other.byte_size()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes it occupies (f16 rounded up to whole words; at least 16).
    pub fn byte_size(&self) -> u64 {
        byte_size(&self.shape, self.dtype)
    }
    /// Size of the last dimension (1 for scalars).
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }
    /// Same buffer, new shape with the same element count.
    pub fn reshaped(self, shape: &[usize]) -> GpuTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape {:?} -> {shape:?}",
            self.shape
        );
        GpuTensor {
            shape: shape.to_vec(),
            ..self
        }
    }
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuTensor({:?}, {:?})", self.shape, self.dtype)
    }
}

pub(crate) fn byte_size(shape: &[usize], dtype: DType) -> u64 {
    let n: usize = shape.iter().product();
    let words = match dtype {
        DType::F16 => n.div_ceil(2),
        _ => n,
    };
    // Zero-sized bindings are invalid; keep every buffer at least one 16-byte vector.
    (words.max(4) * 4) as u64
}

pub(crate) fn encode(data: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => {
            let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
        DType::U32 => data
            .iter()
            .flat_map(|&x| (x as u32).to_le_bytes())
            .collect(),
    };
    let want = byte_size(&[data.len()], dtype) as usize;
    out.resize(want, 0);
    out
}

pub(crate) fn decode(raw: &[u8], n: usize, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::cast_slice::<u8, f32>(&raw[..n * 4]).to_vec(),
        DType::F16 => raw[..n * 2]
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::U32 => bytemuck::cast_slice::<u8, u32>(&raw[..n * 4])
            .iter()
            .map(|&x| x as f32)
            .collect(),
    }
}
