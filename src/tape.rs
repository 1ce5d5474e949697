//! Autograd tape: records coarse ops and runs their backward kernels in reverse.
//!
//! An op is recorded only when one of its inputs is on the tape or one of its parameters
//! is trainable (has a gradient buffer), as `requires_grad` propagates in PyTorch: a frozen
//! backbone runs without recording anything, and inference is the same code with no
//! trainable parameters. Parameter gradients accumulate (`+=`) into the buffers given in
//! [`P::grad`], which the trainer zeroes once per optimizer step (so gradient accumulation
//! over micro-batches is free).

use crate::gpu::{DType, Gpu, GpuTensor};
use crate::kernels::{self, Act};
use anyhow::Result;
use std::collections::HashMap;

/// Index of an activation on the tape.
pub type Var = usize;

/// An activation and, when it is on the tape, its id.
#[derive(Clone, Debug)]
pub struct Node {
    /// The activation.
    pub t: GpuTensor,
    /// Its id on the tape; None when nothing upstream needs a gradient.
    pub var: Option<Var>,
}

/// A parameter's tensor and, when trainable, its gradient buffer.
#[derive(Clone, Copy)]
pub struct P<'a> {
    /// The weight.
    pub w: &'a GpuTensor,
    /// Where its gradient accumulates; None when frozen.
    pub grad: Option<&'a GpuTensor>,
}

/// Recomputes a block's forward; see [`Graph::checkpoint`].
type Block<'g> = Box<dyn for<'x> Fn(&mut Graph<'x>, &Node) -> Result<Node> + 'g>;

enum Op<'g> {
    Linear {
        x: GpuTensor,
        xv: Option<Var>,
        w: GpuTensor,
        dw: Option<GpuTensor>,
        db: Option<GpuTensor>,
        out: Var,
        cls: bool,
    },
    LayerNorm {
        x: GpuTensor,
        xv: Option<Var>,
        w: GpuTensor,
        dw: Option<GpuTensor>,
        db: Option<GpuTensor>,
        mean: GpuTensor,
        rstd: GpuTensor,
        out: Var,
    },
    Gelu {
        x: GpuTensor,
        xv: Var,
        act: Act,
        out: Var,
    },
    Attention {
        qkv: GpuTensor,
        qv: Var,
        o: GpuTensor,
        lse: GpuTensor,
        heads: usize,
        out: Var,
    },
    /// `a + b`, or `a + b·scale[sample]` (drop-path) when `scale` is given.
    Residual {
        a: Option<Var>,
        b: Option<Var>,
        scale: Option<GpuTensor>,
        out: Var,
    },
    Embed {
        pv: Option<Var>,
        patches_shape: Vec<usize>,
        dcls: Option<GpuTensor>,
        dpos: Option<GpuTensor>,
        out: Var,
    },
    /// Only the block's input is kept; backward runs the block again on a tape of its own.
    Checkpoint {
        x: GpuTensor,
        xv: Option<Var>,
        f: Block<'g>,
        out: Var,
    },
}

/// Runs ops on the GPU and records the ones that need a backward.
pub struct Graph<'g> {
    pub gpu: &'g Gpu,
    /// Storage dtype of activations (a tensor with an odd last dim stays f32).
    pub dtype: DType,
    ops: Vec<Op<'g>>,
    vars: usize,
    /// False for evaluation: nothing is recorded even where parameters are trainable.
    grad_enabled: bool,
    /// The attention probabilities (B, H, T, T) f32 of each attention op so far, when kept.
    attention_probs: Option<Vec<GpuTensor>>,
}

impl<'g> Graph<'g> {
    /// A tape that records ops whose inputs or parameters need gradients; activations in `dtype`.
    pub fn new(gpu: &'g Gpu, dtype: DType) -> Self {
        Graph {
            gpu,
            dtype,
            ops: Vec::new(),
            vars: 0,
            grad_enabled: true,
            attention_probs: None,
        }
    }

    /// A graph that records nothing (like `torch.no_grad()`).
    pub fn no_grad(gpu: &'g Gpu, dtype: DType) -> Self {
        Graph {
            grad_enabled: false,
            ..Graph::new(gpu, dtype)
        }
    }

    /// From now on every [`Graph::attention`] also writes its probabilities (B, H, T, T) f32
    /// (transformers' `output_attentions`; T×T per head, so for inspection, not training).
    pub fn keep_attention_probs(&mut self) {
        self.attention_probs.get_or_insert_with(Vec::new);
    }

    /// The attention probabilities kept since [`Graph::keep_attention_probs`], in op order.
    pub fn take_attention_probs(&mut self) -> Vec<GpuTensor> {
        self.attention_probs
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn var(&mut self, record: bool) -> Option<Var> {
        (record && self.grad_enabled).then(|| {
            self.vars += 1;
            self.vars - 1
        })
    }

    fn dtype_for(&self, cols: usize) -> DType {
        if self.dtype == DType::F16 && cols.is_multiple_of(2) {
            DType::F16
        } else {
            DType::F32
        }
    }

    fn alloc(&self, shape: &[usize]) -> Result<GpuTensor> {
        self.gpu
            .alloc(shape, self.dtype_for(*shape.last().unwrap()))
    }

    /// `act(x · wᵀ + b)`; recorded as linear + GELU so the pre-activation is kept.
    pub fn linear(&mut self, x: &Node, w: P, b: Option<P>, act: Act) -> Result<Node> {
        let record = self.grad_enabled
            && (x.var.is_some() || w.grad.is_some() || b.is_some_and(|b| b.grad.is_some()));
        let mut shape = x.t.shape.clone();
        *shape.last_mut().unwrap() = w.w.shape[0];
        let out = self.alloc(&shape)?;
        if !record || act == Act::None {
            kernels::matmul::linear_forward(self.gpu, &out, &x.t, w.w, b.map(|b| b.w), act);
            let var = self.record_linear(record, x, w, b, false);
            return Ok(Node { t: out, var });
        }
        let pre = self.alloc(&shape)?;
        kernels::matmul::linear_forward_saved(self.gpu, &out, &pre, &x.t, w.w, b.map(|b| b.w), act);
        let pv = self.record_linear(record, x, w, b, false);
        let var = self.record_gelu(&pre, pv, act);
        Ok(Node { t: out, var })
    }

    /// `a + (x · wᵀ + b)·scale[sample]`: a residual whose branch ends in a linear layer. Without
    /// drop-path (`scale` None) the product's epilogue adds it onto a copy of `a`, one launch
    /// instead of two; recorded as linear + residual either way.
    pub fn linear_residual(
        &mut self,
        a: &Node,
        x: &Node,
        w: P,
        b: Option<P>,
        scale: Option<&GpuTensor>,
    ) -> Result<Node> {
        if scale.is_some() || self.dtype_for(a.t.cols()) != a.t.dtype {
            let y = self.linear(x, w, b, Act::None)?;
            return self.residual_drop_path(a, &y, scale);
        }
        let out = self.alloc(&a.t.shape)?;
        let record = self.grad_enabled
            && (x.var.is_some() || w.grad.is_some() || b.is_some_and(|b| b.grad.is_some()));
        self.gpu.copy(&a.t, &out);
        kernels::matmul::linear_forward_accum(self.gpu, &out, &x.t, w.w, b.map(|b| b.w));
        let y = self.record_linear(record, x, w, b, false);
        let var = self.var(a.var.is_some() || y.is_some());
        if let Some(v) = var {
            self.ops.push(Op::Residual {
                a: a.var,
                b: y,
                scale: None,
                out: v,
            });
        }
        Ok(Node { t: out, var })
    }

    /// Classifier on the CLS token: x (B, T, C) → logits (B, N), always f32.
    pub fn linear_cls(&mut self, x: &Node, w: P, b: Option<P>) -> Result<Node> {
        let record = x.var.is_some() || w.grad.is_some() || b.is_some_and(|b| b.grad.is_some());
        let out = self.gpu.alloc(&[x.t.shape[0], w.w.shape[0]], DType::F32)?;
        kernels::matmul::linear_forward_cls(self.gpu, &out, &x.t, w.w, b.map(|b| b.w));
        let var = self.record_linear(record, x, w, b, true);
        Ok(Node { t: out, var })
    }

    fn record_linear(
        &mut self,
        record: bool,
        x: &Node,
        w: P,
        b: Option<P>,
        cls: bool,
    ) -> Option<Var> {
        let var = self.var(record);
        if let Some(v) = var {
            self.ops.push(Op::Linear {
                x: x.t.clone(),
                xv: x.var,
                w: w.w.clone(),
                dw: w.grad.cloned(),
                db: b.and_then(|b| b.grad.cloned()),
                out: v,
                cls,
            });
        }
        var
    }

    /// The activation `act` on its own (training keeps the pre-activation for backward).
    pub fn gelu(&mut self, x: &Node, act: Act) -> Result<Node> {
        let out = self.alloc(&x.t.shape)?;
        kernels::gelu::gelu_forward(self.gpu, &out, &x.t, act);
        let var = self.record_gelu(&x.t, x.var, act);
        Ok(Node { t: out, var })
    }

    /// Records `act` of `x` (on the tape as `xv`) and returns its output's id; None, and
    /// nothing recorded, when `x` is not on the tape.
    fn record_gelu(&mut self, x: &GpuTensor, xv: Option<Var>, act: Act) -> Option<Var> {
        let var = self.var(xv.is_some());
        if let (Some(v), Some(xv)) = (var, xv) {
            self.ops.push(Op::Gelu {
                x: x.clone(),
                xv,
                act,
                out: v,
            });
        }
        var
    }

    /// Layer norm over the last dimension with weight `w`, bias `b`.
    pub fn layernorm(&mut self, x: &Node, w: P, b: P, eps: f64) -> Result<Node> {
        let record = x.var.is_some() || w.grad.is_some() || b.grad.is_some();
        let out = self.alloc(&x.t.shape)?;
        let rows = x.t.rows();
        let mean = self.gpu.alloc(&[rows], DType::F32)?;
        let rstd = self.gpu.alloc(&[rows], DType::F32)?;
        kernels::layernorm::layernorm_forward(
            self.gpu, &out, &mean, &rstd, &x.t, w.w, b.w, eps as f32,
        );
        let var = self.var(record);
        if let Some(v) = var {
            self.ops.push(Op::LayerNorm {
                x: x.t.clone(),
                xv: x.var,
                w: w.w.clone(),
                dw: w.grad.cloned(),
                db: b.grad.cloned(),
                mean,
                rstd,
                out: v,
            });
        }
        Ok(Node { t: out, var })
    }

    /// Multi-head attention over a fused qkv (B, T, 3C) → (B, T, C).
    pub fn attention(&mut self, qkv: &Node, heads: usize) -> Result<Node> {
        let [b, t, c3] = qkv.t.shape[..] else {
            unreachable!("qkv is (B, T, 3C)")
        };
        let out = self.alloc(&[b, t, c3 / 3])?;
        let lse = self.gpu.alloc(&[b, heads, t], DType::F32)?;
        kernels::attention::attention_forward(self.gpu, &out, &lse, &qkv.t, heads);
        if let Some(kept) = &mut self.attention_probs {
            let probs = self.gpu.alloc(&[b, heads, t, t], DType::F32)?;
            kernels::attention::attention_probs_forward(self.gpu, &probs, &qkv.t, &lse, heads);
            kept.push(probs);
        }
        let var = self.var(qkv.var.is_some());
        if let (Some(v), Some(qv)) = (var, qkv.var) {
            self.ops.push(Op::Attention {
                qkv: qkv.t.clone(),
                qv,
                o: out.clone(),
                lse,
                heads,
                out: v,
            });
        }
        Ok(Node { t: out, var })
    }

    /// `a + b`.
    pub fn residual(&mut self, a: &Node, b: &Node) -> Result<Node> {
        self.residual_drop_path(a, b, None)
    }

    /// `a + b·scale[sample]` with `scale` (B,) f32 for a and b (B, ...): a residual whose
    /// branch `b` goes through drop-path (stochastic depth) with a given per-sample mask
    /// already divided by keep_prob, as timm's `x + drop_path(b)`. None: `a + b`.
    pub fn residual_drop_path(
        &mut self,
        a: &Node,
        b: &Node,
        scale: Option<&GpuTensor>,
    ) -> Result<Node> {
        let out = self.alloc(&a.t.shape)?;
        match scale {
            Some(s) => kernels::residual::residual_scaled_forward(self.gpu, &out, &a.t, &b.t, s),
            None => kernels::residual::residual_forward(self.gpu, &out, &a.t, &b.t),
        }
        let var = self.var(a.var.is_some() || b.var.is_some());
        if let Some(v) = var {
            self.ops.push(Op::Residual {
                a: a.var,
                b: b.var,
                scale: scale.cloned(),
                out: v,
            });
        }
        Ok(Node { t: out, var })
    }

    /// The stride-P conv on pixels (B, C, H, W) as im2col + linear → (B·Np, hidden).
    pub fn patch_embed(&mut self, pixels: &GpuTensor, w: P, b: P, patch: usize) -> Result<Node> {
        let [bs, c, h, wd] = pixels.shape[..] else {
            unreachable!("pixels are (B, C, H, W)")
        };
        let k = c * patch * patch;
        let cols = self.alloc(&[bs * (h / patch) * (wd / patch), k])?;
        kernels::embed::patch_im2col(self.gpu, &cols, pixels, patch);
        self.linear(&Node { t: cols, var: None }, w, Some(b), Act::None)
    }

    /// `[CLS; patches] + pos` → (B, T, C).
    pub fn embed(&mut self, patches: &Node, batch: usize, cls: P, pos: P) -> Result<Node> {
        let (t, c) = (pos.w.shape[0], pos.w.shape[1]);
        let out = self.alloc(&[batch, t, c])?;
        kernels::embed::embed_forward(self.gpu, &out, &patches.t, cls.w, pos.w);
        let var = self.var(patches.var.is_some() || cls.grad.is_some() || pos.grad.is_some());
        if let Some(v) = var {
            self.ops.push(Op::Embed {
                pv: patches.var,
                patches_shape: patches.t.shape.clone(),
                dcls: cls.grad.cloned(),
                dpos: pos.grad.cloned(),
                out: v,
            });
        }
        Ok(Node { t: out, var })
    }

    /// Whether ops are recorded (false under [`Graph::no_grad`]).
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// Gradient checkpointing (PyTorch's `torch.utils.checkpoint`): runs `f` on `x` without
    /// recording, so its activations are freed as soon as it returns, and keeps only `x`;
    /// backward runs `f` again on a tape of its own and backpropagates through that. The
    /// kernels are deterministic, so the recomputed activations, and hence the gradients,
    /// are the ones the plain tape gives. `f` must be a pure function of `x` and parameters.
    pub fn checkpoint(
        &mut self,
        x: &Node,
        f: impl for<'x> Fn(&mut Graph<'x>, &Node) -> Result<Node> + 'g,
    ) -> Result<Node> {
        if !self.grad_enabled {
            return f(self, x);
        }
        // Run on a throw-away tape rather than without one: ops pick their kernels by whether
        // they record (GELU is fused into the matmul only when nothing is kept), and the
        // output must be bit for bit the one the backward's recomputation sees.
        let out = Self::run_block(self.gpu, self.dtype, x, &f)?.1;
        let var = self.var(true);
        if let Some(v) = var {
            self.ops.push(Op::Checkpoint {
                x: x.t.clone(),
                xv: x.var,
                f: Box::new(f),
                out: v,
            });
        }
        Ok(Node { t: out.t, var })
    }

    /// Backpropagates `droot` (the gradient of `root`) through every recorded op, in reverse,
    /// accumulating into the parameters' gradient buffers. Clears the tape.
    pub fn backward(&mut self, root: &Node, droot: GpuTensor) -> Result<()> {
        self.backward_to(root, droot, None).map(|_| ())
    }

    /// [`Graph::backward`], returning the gradient that reached `input` (if any).
    fn backward_to(
        &mut self,
        root: &Node,
        droot: GpuTensor,
        input: Option<Var>,
    ) -> Result<Option<GpuTensor>> {
        let gpu = self.gpu;
        let mut grads: HashMap<Var, GpuTensor> = HashMap::new();
        if let Some(v) = root.var {
            grads.insert(v, droot);
        }
        let ops = std::mem::take(&mut self.ops);
        let mut ops = ops.into_iter().rev().peekable();
        while let Some(op) = ops.next() {
            match op {
                Op::Linear {
                    x,
                    xv,
                    w,
                    dw,
                    db,
                    out,
                    cls,
                } => {
                    let Some(dy) = grads.remove(&out) else {
                        continue;
                    };
                    match (&dw, &db) {
                        (Some(dw), Some(db)) if !cls => {
                            kernels::matmul::linear_backward_weight_bias(gpu, dw, db, &dy, &x, true)
                        }
                        _ => {
                            if let Some(dw) = &dw {
                                if cls {
                                    kernels::matmul::linear_backward_weight_cls(
                                        gpu, dw, &dy, &x, true,
                                    );
                                } else {
                                    kernels::matmul::linear_backward_weight(gpu, dw, &dy, &x, true);
                                }
                            }
                            if let Some(db) = &db {
                                kernels::matmul::bias_backward(gpu, db, &dy, true);
                            }
                        }
                    }
                    // A linear layer right after an activation only it reads (fc2 after
                    // fc1's GELU: nothing later has added to that activation's gradient)
                    // takes the activation's backward into its own product.
                    let act_input = match ops.peek() {
                        Some(Op::Gelu { out: g, .. })
                            if !cls && Some(*g) == xv && !grads.contains_key(g) =>
                        {
                            ops.next()
                        }
                        _ => None,
                    };
                    if let Some(Op::Gelu {
                        x: pre, xv, act, ..
                    }) = act_input
                    {
                        let (dx, acc) = self.grad_slot(&mut grads, xv, &pre)?;
                        kernels::matmul::linear_backward_input_act(
                            gpu, &dx, &dy, &w, &pre, act, acc,
                        )?;
                    } else if let Some(xv) = xv {
                        let dx = self.grad_slot(&mut grads, xv, &x)?;
                        if cls {
                            kernels::matmul::linear_backward_input_cls(gpu, &dx.0, &dy, &w, dx.1);
                        } else {
                            kernels::matmul::linear_backward_input(gpu, &dx.0, &dy, &w, dx.1);
                        }
                    }
                }
                Op::LayerNorm {
                    x,
                    xv,
                    w,
                    dw,
                    db,
                    mean,
                    rstd,
                    out,
                } => {
                    let Some(dy) = grads.remove(&out) else {
                        continue;
                    };
                    let params = match (&dw, &db) {
                        (Some(dw), Some(db)) => Some((dw, db, true)),
                        _ => None,
                    };
                    if let Some(xv) = xv {
                        let (dx, acc) = self.grad_slot(&mut grads, xv, &x)?;
                        kernels::layernorm::layernorm_backward(
                            gpu, &dx, params, &dy, &x, &w, &mean, &rstd, acc,
                        );
                    } else if let Some((dw, db, _)) = params {
                        kernels::layernorm::layernorm_backward_params(
                            gpu, dw, db, &dy, &x, &mean, &rstd, true,
                        );
                    }
                }
                Op::Gelu { x, xv, act, out } => {
                    let Some(dy) = grads.remove(&out) else {
                        continue;
                    };
                    let (dx, acc) = self.grad_slot(&mut grads, xv, &x)?;
                    kernels::gelu::gelu_backward(gpu, &dx, &dy, &x, act, acc);
                }
                Op::Attention {
                    qkv,
                    qv,
                    o,
                    lse,
                    heads,
                    out,
                } => {
                    let Some(dy) = grads.remove(&out) else {
                        continue;
                    };
                    let [b, t, _] = qkv.shape[..] else {
                        unreachable!()
                    };
                    let delta = gpu.alloc(&[b, heads, t], DType::F32)?;
                    let d = self.alloc(&qkv.shape)?;
                    kernels::attention::attention_backward(
                        gpu, &d, &delta, &dy, &qkv, &o, &lse, heads,
                    );
                    // qkv feeds only attention in a ViT, but stay correct if it had other uses.
                    match grads.get(&qv) {
                        Some(prev) => kernels::residual::accumulate(gpu, prev, &d, true),
                        None => {
                            grads.insert(qv, d);
                        }
                    }
                }
                Op::Residual { a, b, scale, out } => {
                    let Some(dy) = grads.remove(&out) else {
                        continue;
                    };
                    // The gradient reaches both branches (b's scaled per sample under
                    // drop-path); each gets its own buffer because later ops accumulate into
                    // them independently.
                    if let Some(v) = a {
                        let (dx, acc) = self.grad_slot(&mut grads, v, &dy)?;
                        kernels::residual::accumulate(gpu, &dx, &dy, acc);
                    }
                    if let Some(v) = b {
                        let (dx, acc) = self.grad_slot(&mut grads, v, &dy)?;
                        match &scale {
                            Some(s) => {
                                kernels::residual::residual_scaled_backward(gpu, &dx, &dy, s, acc)
                            }
                            None => kernels::residual::accumulate(gpu, &dx, &dy, acc),
                        }
                    }
                }
                Op::Embed {
                    pv,
                    patches_shape,
                    dcls,
                    dpos,
                    out,
                } => {
                    let Some(dy) = grads.remove(&out) else {
                        continue;
                    };
                    let [_, t, c] = dy.shape[..] else {
                        unreachable!()
                    };
                    // The kernel writes all three; scratch stands in for the frozen ones.
                    let dp = self.alloc(&patches_shape)?;
                    let scratch_cls;
                    let scratch_pos;
                    let dcls = match &dcls {
                        Some(g) => g,
                        None => {
                            scratch_cls = gpu.alloc(&[c], DType::F32)?;
                            &scratch_cls
                        }
                    };
                    let dpos = match &dpos {
                        Some(g) => g,
                        None => {
                            scratch_pos = gpu.alloc(&[t, c], DType::F32)?;
                            &scratch_pos
                        }
                    };
                    kernels::embed::embed_backward(gpu, &dp, dcls, dpos, &dy, true);
                    if let Some(pv) = pv {
                        Self::add_grad(gpu, &mut grads, pv, dp);
                    }
                }
                Op::Checkpoint { x, xv, f, out } => {
                    let Some(dy) = grads.remove(&out) else {
                        continue;
                    };
                    let x = Node { t: x, var: xv };
                    let (mut sub, y, input) = Self::run_block(gpu, self.dtype, &x, &f)?;
                    let dx = sub.backward_to(&y, dy, input)?;
                    if let (Some(xv), Some(dx)) = (xv, dx) {
                        Self::add_grad(gpu, &mut grads, xv, dx);
                    }
                }
            }
        }
        Ok(input.and_then(|v| grads.remove(&v)))
    }

    /// Runs a checkpointed block on a tape of its own whose input is on the tape when `x` is:
    /// (the tape, the output, the input's variable there).
    fn run_block(
        gpu: &'g Gpu,
        dtype: DType,
        x: &Node,
        f: &dyn for<'x> Fn(&mut Graph<'x>, &Node) -> Result<Node>,
    ) -> Result<(Graph<'g>, Node, Option<Var>)> {
        let mut sub = Graph::new(gpu, dtype);
        let input = x.var.and_then(|_| sub.var(true));
        let y = f(
            &mut sub,
            &Node {
                t: x.t.clone(),
                var: input,
            },
        )?;
        Ok((sub, y, input))
    }

    /// Takes `d` as the gradient of `v`, or adds it to the one `v` already has.
    fn add_grad(gpu: &Gpu, grads: &mut HashMap<Var, GpuTensor>, v: Var, d: GpuTensor) {
        match grads.get(&v) {
            Some(prev) => kernels::residual::accumulate(gpu, prev, &d, true),
            None => {
                grads.insert(v, d);
            }
        }
    }

    /// The gradient buffer of `v` (shaped like `like`) and whether to accumulate into it.
    fn grad_slot(
        &self,
        grads: &mut HashMap<Var, GpuTensor>,
        v: Var,
        like: &GpuTensor,
    ) -> Result<(GpuTensor, bool)> {
        if let Some(g) = grads.get(&v) {
            return Ok((g.clone(), true));
        }
        // Fresh buffers are zero-filled, which the CLS-row backward relies on.
        let g = self.gpu.alloc(&like.shape, like.dtype)?;
        grads.insert(v, g.clone());
        Ok((g, false))
    }
}
