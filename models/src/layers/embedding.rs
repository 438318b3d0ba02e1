use kernels::ops::embedding::{embedding_backward, embedding_forward};
use kernels::{Device, Tensor};

use super::{empty_like, saved, Layer};
use crate::param::normal;
use crate::{Param, Result};

/// Token + position embedding: wte (V_stored, C) and wpe (context, C), both N(0, std^2).
/// Rows of wte past `vocab` (padding) start at zero and, since no token and no target
/// reaches them, stay there.
pub struct Embedding {
    pub wte: Param,
    pub wpe: Param,
    tokens: Option<Tensor>,
}

impl Embedding {
    pub fn new(device: Device, vocab: usize, padded_vocab: usize, context: usize, c: usize, std: f32, rng: &mut fastrand::Rng) -> Self {
        let _ = device; // CPU tensors now; the CUDA backend will upload here
        let mut wte_data = normal(rng, vocab * c, std);
        wte_data.resize(padded_vocab * c, 0.0);
        let mut wte = Param::new("wte.weight", Tensor::from_vec(&[padded_vocab, c], wte_data).expect("shape"), false);
        wte.export_shape = vec![vocab, c];
        let wpe = Param::new("wpe.weight", Tensor::from_vec(&[context, c], normal(rng, context * c, std)).expect("shape"), false);
        Self { wte, wpe, tokens: None }
    }
}

impl Layer for Embedding {
    /// `x`: token ids (B,T) u32 -> (B,T,C).
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let &[b, t] = x.shape() else {
            return Err(crate::Error::Input(format!("Embedding: token ids must be (B,T), got {:?}", x.shape())));
        };
        let c = self.wte.value.shape()[1];
        let mut out = empty_like(&self.wte.value, &[b, t, c])?;
        embedding_forward(&mut out, x, &self.wte.value, &self.wpe.value)?;
        self.tokens = Some(x.clone());
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let tokens = saved(&self.tokens, "Embedding")?;
        embedding_backward(&mut self.wte.grad, &mut self.wpe.grad, dout, tokens)?;
        Ok(Tensor::zeros(dout.device(), &[0]))
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.wte);
        f(&self.wpe);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.wte);
        f(&mut self.wpe);
    }
}
