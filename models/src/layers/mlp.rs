use kernels::Tensor;

use super::{Gelu, Layer, Linear};
use crate::param::Placement;
use crate::Result;

/// GPT-2's MLP: c_fc (C -> H, H = 4C in GPT-2), GeLU, c_proj (H -> C); c_fc and the GeLU run
/// as one op (also under selective recomputation: the fused GeLU equals `gelu_forward` of
/// the kept input). Its input is kept by `c_fc` ([`Layer::forget_input`] drops it);
/// [`Layer::forget_activations`] drops the GeLU output (c_proj's input, (B,T,H)), which
/// backward recomputes from the GeLU input.
pub struct Mlp {
    /// `{name}.c_fc`, C -> H.
    pub c_fc: Linear,
    /// The activation (no parameters; keeps the pre-GeLU values).
    pub gelu: Gelu,
    /// `{name}.c_proj`, H -> C.
    pub c_proj: Linear,
}

impl Mlp {
    /// c_fc N(0, std^2), c_proj N(0, proj_std^2), zero biases when `bias`, `hidden` = H.
    #[allow(clippy::too_many_arguments)]
    pub fn new(at: Placement, name: &str, c: usize, hidden: usize, bias: bool, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Ok(Self {
            c_fc: Linear::new(at, &format!("{name}.c_fc"), c, hidden, bias, std, rng)?,
            gelu: Gelu::default(),
            c_proj: Linear::new(at, &format!("{name}.c_proj"), hidden, c, bias, proj_std, rng)?,
        })
    }
}

impl Layer for Mlp {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        // One fused op (matmul + GeLU epilogue); its output is bit for bit gelu_forward of
        // the kept pre-GeLU value, so selective recomputation rebuilds exactly the same h.
        let (pre, h) = self.c_fc.forward_gelu(x)?; // (B,T,H) each
        self.gelu.keep_input(pre);
        self.c_proj.forward(&h)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        // What forward kept decides, not the current setting (it may change between steps).
        self.c_proj.restore_input_from(&self.gelu)?;
        let dh = self.c_proj.backward(dout)?;
        let dh = self.gelu.backward(&dh)?;
        self.c_fc.backward(&dh)
    }

    crate::layer_fields! {
        children: [c_fc, gelu, c_proj],
        saved: [],
        config: [],
    }

    fn forget_input(&mut self) -> bool {
        self.c_fc.forget_input()
    }

    fn input_forgotten(&self) -> bool {
        self.c_fc.input_forgotten()
    }

    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        self.c_fc.restore_input(x)
    }

    /// Drops the GeLU output kept by c_proj; backward recomputes it from the GeLU input.
    fn forget_activations(&mut self) -> bool {
        self.c_proj.forget_input()
    }
}
