use kernels::ops::embedding::{embedding_backward, embedding_forward};
use kernels::Tensor;

use super::{empty_like, take_saved, Layer};
use crate::param::{normal, vocab_rows, Placement};
use crate::{Param, Result};

/// Token embedding wte (V_stored, C), plus a learned position embedding wpe (context, C)
/// where the model has one (GPT-2; Llama has none, its positions come from RoPE), both
/// N(0, std^2). Rows of wte past `vocab` (padding) start at zero and, since no token and no
/// target reaches them, stay there.
pub struct Embedding {
    /// Token embedding (V_stored, C), exported as (V, C).
    pub wte: Param,
    /// Position embedding (context, C), if any.
    pub wpe: Option<Param>,
    /// The token ids of the last forward.
    tokens: Option<Tensor>,
}

impl Embedding {
    /// GPT-2's: `wte.weight` and `wpe.weight`.
    pub fn new(at: Placement, vocab: usize, padded_vocab: usize, context: usize, c: usize, std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        let wte = vocab_rows(at, "wte.weight", vocab, padded_vocab, c, std, rng)?;
        let wpe = Param::new("wpe.weight", Tensor::from_vec(&[context, c], normal(rng, context * c, std))?, false, at)?;
        Ok(Self { wte, wpe: Some(wpe), tokens: None })
    }

    /// Tokens only, the table named `name` (Llama: `model.embed_tokens.weight`).
    pub fn tokens_only(at: Placement, name: &str, vocab: usize, padded_vocab: usize, c: usize, std: f32, rng: &mut fastrand::Rng) -> Result<Self> {
        Ok(Self { wte: vocab_rows(at, name, vocab, padded_vocab, c, std, rng)?, wpe: None, tokens: None })
    }
}

impl Layer for Embedding {
    /// `x`: token ids (B,T) u32 -> (B,T,C).
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let &[b, t] = x.shape() else {
            return Err(crate::Error::Input(format!("Embedding: token ids must be (B,T), got {:?}", x.shape())));
        };
        let c = self.wte.value.shape()[1];
        let mut out = empty_like(self.wte.compute(), &[b, t, c])?;
        embedding_forward(&mut out, x, self.wte.compute(), self.wpe.as_ref().map(Param::compute))?;
        self.tokens = Some(x.clone());
        Ok(out)
    }

    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        let tokens = take_saved(&mut self.tokens, "Embedding")?;
        // The launcher scatters dout into gradients of its own dtype: in bf16 precision dout
        // (B,T,C) is widened to the f32 gradients' dtype first (exact), which is far smaller
        // than keeping bf16 copies of the (V,C) gradients.
        let dout = dout.to_dtype(self.wte.grad.dtype())?;
        embedding_backward(&mut self.wte.grad, self.wpe.as_mut().map(|p| &mut p.grad), &dout, &tokens)?;
        // Token ids have no gradient: an empty host tensor (no zero-sized device allocation).
        Ok(Tensor::from_vec(&[0], Vec::new())?)
    }

    crate::layer_fields! {
        children: [wte, wpe],
        saved: [tokens],
        config: [],
    }
}
