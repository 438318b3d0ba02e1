use kernels::Tensor;

use super::{Gelu, Layer, Linear};
use crate::param::Placement;
use crate::{Param, Result};

/// c_fc (C -> 4C), GeLU, c_proj (4C -> C); c_fc and the GeLU run as one op (also under
/// selective recomputation: the fused GeLU equals `gelu_forward` of the kept input).
pub struct Mlp {
    pub c_fc: Linear,
    pub gelu: Gelu,
    pub c_proj: Linear,
    /// Selective recomputation: forward drops the GeLU output (c_proj's input, (B,T,4C));
    /// backward recomputes it from the GeLU input, which stays.
    pub(crate) recompute_gelu: bool,
}

impl Mlp {
    pub fn new(at: Placement, name: &str, c: usize, std: f32, proj_std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Ok(Self {
            c_fc: Linear::new(at, &format!("{name}.c_fc"), c, 4 * c, true, std, rng)?,
            gelu: Gelu::default(),
            c_proj: Linear::new(at, &format!("{name}.c_proj"), 4 * c, c, true, proj_std, rng)?,
            recompute_gelu: false,
        })
    }
}

impl Layer for Mlp {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        // One fused op (matmul + GeLU epilogue); its output is bit for bit gelu_forward of
        // the kept pre-GeLU value, so selective recomputation rebuilds exactly the same h.
        let (pre, h) = self.c_fc.forward_gelu(x)?; // (B,T,4C) each
        self.gelu.keep_input(pre);
        let out = self.c_proj.forward(&h)?;
        if self.recompute_gelu {
            self.c_proj.forget_input();
        }
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        // What forward kept decides, not the current setting (it may change between steps).
        if !self.c_proj.has_input() {
            self.c_proj.restore_input(self.gelu.recompute_output()?);
        }
        let dh = self.c_proj.backward(dout)?;
        let dh = self.gelu.backward(&dh)?;
        self.c_fc.backward(&dh)
    }

    fn release(&mut self) {
        self.c_fc.release();
        self.gelu.release();
        self.c_proj.release();
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.c_fc.visit_params(f);
        self.c_proj.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.c_fc.visit_params_mut(f);
        self.c_proj.visit_params_mut(f);
    }
}
