//! The building blocks. Every layer implements [`Layer`], whose `backward` is required, and
//! lists its fields in [`layer_fields!`](crate::layer_fields), which writes its parameter
//! visiting and its `release`, so no child can be forgotten.
//!
//! The helpers the layers here are written with are public for layers of your own:
//! [`empty_like`] and [`empty_f32`] (outputs), [`saved`] and [`take_saved`] (what forward
//! kept for backward), and the recomputation hooks of [`Layer`].

mod attention;
mod block;
mod embedding;
mod gelu;
mod layernorm;
mod linear;
mod llama_attention;
mod llama_block;
mod mlp;
mod rmsnorm;
mod swiglu_mlp;

pub use attention::CausalSelfAttention;
pub use block::{Block, BlockMlp};
pub use embedding::Embedding;
pub use gelu::Gelu;
pub use layernorm::LayerNorm;
pub use linear::Linear;
pub use llama_attention::{AttentionShape, LlamaAttention};
pub use llama_block::LlamaBlock;
pub use mlp::Mlp;
pub use rmsnorm::RmsNorm;
pub use swiglu_mlp::SwigluMlp;

use kernels::Tensor;

use crate::{Error, Param, Result};

/// A layer: a forward that keeps what its backward needs, and that backward.
///
/// Gradients follow one rule: `backward` accumulates parameter gradients (`+=`) and
/// returns the input gradient (overwritten, a new tensor). `visit_params`,
/// `visit_params_mut` and `release` are best written by [`layer_fields!`](crate::layer_fields)
/// from the list of the layer's fields.
///
/// A layer of your own, composed from the built-in ones (a residual connection around any
/// layer), checked against finite differences:
///
/// ```
/// use kernels::ops::residual::{accumulate, residual_forward};
/// use kernels::Tensor;
/// use models::gradcheck::{check_layer, GradCheckOptions};
/// use models::layers::{empty_like, Layer, Linear};
/// use models::{layer_fields, Placement, Result};
///
/// /// y = x + inner(x).
/// struct Residual<L> {
///     inner: L,
/// }
///
/// impl<L: Layer> Layer for Residual<L> {
///     fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
///         let f = self.inner.forward(x)?;
///         let mut y = empty_like(x, x.shape())?;
///         residual_forward(&mut y, x, &f)?;
///         Ok(y)
///     }
///
///     fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
///         // The residual passes dout straight through; the branch's gradient adds onto it.
///         let mut dx = self.inner.backward(dout)?;
///         accumulate(&mut dx, dout)?;
///         Ok(dx)
///     }
///
///     layer_fields! { children: [inner], saved: [], config: [] }
/// }
///
/// let mut rng = fastrand::Rng::with_seed(1);
/// let inner = Linear::new(Placement::cpu(), "fc", 4, 4, true, 0.5, &mut rng)?;
/// let mut layer = Residual { inner };
/// let mut names = Vec::new();
/// layer.visit_params(&mut |p| names.push(p.name.clone()));
/// assert_eq!(names, ["fc.weight", "fc.bias"]);
///
/// let x = Tensor::from_vec(&[2, 4], (0..8).map(|i| (i as f32).cos()).collect())?;
/// let report = check_layer(&mut layer, &x, &GradCheckOptions::default())?;
/// assert!(report.passed(), "{report}");
/// # Ok::<(), models::Error>(())
/// ```
///
/// # Selective recomputation
///
/// A block may trade compute in backward for memory held between forward and backward by
/// asking its *direct* children to drop what is cheap to rebuild; none of this is needed
/// for a layer to train (every hook has a default that drops nothing):
///
/// - [`Layer::forget_input`] drops a layer's saved copy of its input (the output of the
///   layer before it). Before the backward, the block rebuilds that tensor with the producer's
///   [`Layer::recompute_output`] and gives it back with [`Layer::restore_input`]
///   ([`Layer::restore_input_from`] does both when [`Layer::input_forgotten`]).
/// - [`Layer::forget_activations`] drops what a layer can rebuild by itself from what it
///   keeps; its backward rebuilds it.
///
/// A recomputation must run the same ops on the same inputs as the forward did, so that
/// gradients stay bit-identical. What a layer rebuilds is decided by what its last forward
/// kept, so policies may change between any two steps.
pub trait Layer {
    /// Computes the output and keeps what backward needs.
    fn forward(&mut self, x: &Tensor) -> Result<Tensor>;
    /// Given d loss / d output, accumulates parameter gradients (`+=`) and returns
    /// d loss / d input (for integer inputs such as token ids, an empty tensor).
    /// Backward releases what forward saved (a second backward without a new forward is an
    /// error).
    fn backward(&mut self, dout: &Tensor) -> Result<Tensor>;
    /// Drops what the last forward saved, without a backward (after a failed step, after
    /// evaluation, and for full recomputation, which keeps a block's input instead and
    /// re-runs its forward in backward).
    fn release(&mut self);
    /// Calls `f` on every parameter, children's included, in a fixed order (the order of
    /// checkpoints and of the optimizer's state).
    fn visit_params(&self, f: &mut dyn FnMut(&Param));
    /// The same, mutably (the optimizer's update, loading a checkpoint).
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param));

    /// Drops the copy of its input the last forward kept for backward, which the caller
    /// will give back with [`Layer::restore_input`] before the backward. Returns whether it
    /// dropped one; the default keeps everything and returns false. A layer that keeps its
    /// input inside a child forwards the call to that child.
    fn forget_input(&mut self) -> bool {
        false
    }

    /// Whether an input dropped by [`Layer::forget_input`] still awaits
    /// [`Layer::restore_input`].
    fn input_forgotten(&self) -> bool {
        false
    }

    /// Gives back the input [`Layer::forget_input`] dropped: the very values the last
    /// forward read. The default (a layer that never drops its input) is an error.
    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        drop(x);
        Err(Error::Recompute("restore_input on a layer that does not forget its input".into()))
    }

    /// The last forward's output again, bit for bit, from what the layer kept for its
    /// backward (a LayerNorm from its input and statistics, a GeLU from its input), or
    /// `None` (the default) when the layer cannot rebuild it cheaply.
    fn recompute_output(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Drops saved activations the layer can rebuild by itself, from what it keeps; its
    /// backward rebuilds them first. Returns whether it dropped any (the default: false).
    /// [`Mlp`] drops its GeLU output, [`SwigluMlp`] its SwiGLU output.
    fn forget_activations(&mut self) -> bool {
        false
    }

    /// If [`Layer::forget_input`] dropped this layer's input, rebuilds it with
    /// `producer.recompute_output()` (`producer`: the layer whose output it was) and
    /// restores it; otherwise does nothing. Errors when the producer cannot recompute.
    fn restore_input_from(&mut self, producer: &dyn Layer) -> Result<()> {
        if !self.input_forgotten() {
            return Ok(());
        }
        let x = producer
            .recompute_output()?
            .ok_or_else(|| Error::Recompute("the layer before cannot recompute its output (recompute_output gave None)".into()))?;
        self.restore_input(x)
    }
}

/// A boxed layer is a layer: `Vec<Box<dyn Layer>>` holds layers of different types.
impl<L: Layer + ?Sized> Layer for Box<L> {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
        (**self).backward(dout)
    }
    fn release(&mut self) {
        (**self).release()
    }
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        (**self).visit_params(f)
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        (**self).visit_params_mut(f)
    }
    fn forget_input(&mut self) -> bool {
        (**self).forget_input()
    }
    fn input_forgotten(&self) -> bool {
        (**self).input_forgotten()
    }
    fn restore_input(&mut self, x: Tensor) -> Result<()> {
        (**self).restore_input(x)
    }
    fn recompute_output(&self) -> Result<Option<Tensor>> {
        (**self).recompute_output()
    }
    fn forget_activations(&mut self) -> bool {
        (**self).forget_activations()
    }
    fn restore_input_from(&mut self, producer: &dyn Layer) -> Result<()> {
        (**self).restore_input_from(producer)
    }
}

/// What [`layer_fields!`](crate::layer_fields) accepts as a child: something holding
/// parameters and saved state, visited and released as a whole. Implemented for
/// [`Param`], `Option<Param>`, `Vec<Param>`, every [`Layer`] (`Box<dyn Layer>` included),
/// `Option<L>` and `Vec<L>` of layers. Its methods have their own names so that they never
/// clash with [`Layer`]'s.
pub trait Child {
    /// Calls `f` on every parameter it holds, in order.
    fn visit_child(&self, f: &mut dyn FnMut(&Param));
    /// The same, mutably.
    fn visit_child_mut(&mut self, f: &mut dyn FnMut(&mut Param));
    /// Drops what it saved for backward (a parameter saves nothing).
    fn release_child(&mut self);
}

impl Child for Param {
    fn visit_child(&self, f: &mut dyn FnMut(&Param)) {
        f(self)
    }
    fn visit_child_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(self)
    }
    fn release_child(&mut self) {}
}

impl Child for Option<Param> {
    fn visit_child(&self, f: &mut dyn FnMut(&Param)) {
        self.iter().for_each(f)
    }
    fn visit_child_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.iter_mut().for_each(f)
    }
    fn release_child(&mut self) {}
}

impl Child for Vec<Param> {
    fn visit_child(&self, f: &mut dyn FnMut(&Param)) {
        self.iter().for_each(f)
    }
    fn visit_child_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.iter_mut().for_each(f)
    }
    fn release_child(&mut self) {}
}

impl<L: Layer + ?Sized> Child for L {
    fn visit_child(&self, f: &mut dyn FnMut(&Param)) {
        self.visit_params(f)
    }
    fn visit_child_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.visit_params_mut(f)
    }
    fn release_child(&mut self) {
        self.release()
    }
}

impl<L: Layer> Child for Option<L> {
    fn visit_child(&self, f: &mut dyn FnMut(&Param)) {
        self.iter().for_each(|l| l.visit_params(f))
    }
    fn visit_child_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.iter_mut().for_each(|l| l.visit_params_mut(f))
    }
    fn release_child(&mut self) {
        self.iter_mut().for_each(Layer::release)
    }
}

impl<L: Layer> Child for Vec<L> {
    fn visit_child(&self, f: &mut dyn FnMut(&Param)) {
        self.iter().for_each(|l| l.visit_params(f))
    }
    fn visit_child_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.iter_mut().for_each(|l| l.visit_params_mut(f))
    }
    fn release_child(&mut self) {
        self.iter_mut().for_each(Layer::release)
    }
}

/// Writes `visit_params`, `visit_params_mut` and `release` (inside an `impl Layer` or an
/// `impl Model` block) from a list of **all** the struct's fields, each in one of three
/// groups:
///
/// - `children`: what holds parameters, in the order they are visited (the order of
///   checkpoints): a [`Param`](crate::Param), `Option<Param>`, `Vec<Param>`, a layer,
///   `Option<layer>`, `Vec<layer>`, `Box<dyn Layer>` (see [`Child`](crate::layers::Child)).
///   `release` releases each.
/// - `saved`: state a forward keeps for backward; `release` resets each to
///   `Default::default()` (an `Option` to `None`).
/// - `config`: everything else (shapes, settings); untouched.
///
/// Every field must be named exactly once: the generated code builds the struct from the
/// three lists (in a closure that never runs), so a field added to the struct but not to the
/// list does not compile ("missing field `x` in initializer", E0063), and neither does a
/// field listed twice (E0062). A new parameter can therefore not be silently left out of the
/// optimizer and the checkpoints, nor new saved state out of `release`. (A list of children
/// alone could not catch the forgotten field; that is why `saved` and `config` are spelled
/// out too.) What the compiler cannot check is the group: a child filed under `config` is
/// not visited, so a model's tests should count its parameters.
///
/// ```
/// use kernels::Tensor;
/// use models::layers::{take_saved, Layer, Linear};
/// use models::{layer_fields, Param, Result};
///
/// /// Two projections applied in turn, the first optional.
/// struct Stack {
///     first: Option<Linear>,
///     second: Linear,
///     /// Saved by forward: how many times it ran since the last backward.
///     pending: Option<usize>,
///     /// A setting.
///     label: &'static str,
/// }
///
/// impl Layer for Stack {
///     fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
///         let h = match &mut self.first {
///             Some(first) => first.forward(x)?,
///             None => x.clone(),
///         };
///         self.pending = Some(self.pending.unwrap_or(0) + 1);
///         self.second.forward(&h)
///     }
///
///     fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
///         take_saved(&mut self.pending, self.label)?;
///         let dh = self.second.backward(dout)?;
///         match &mut self.first {
///             Some(first) => first.backward(&dh),
///             None => Ok(dh),
///         }
///     }
///
///     layer_fields! {
///         children: [first, second],
///         saved: [pending],
///         config: [label],
///     }
/// }
///
/// let mut rng = fastrand::Rng::with_seed(1);
/// let at = models::Placement::cpu();
/// let mut stack = Stack {
///     first: Some(Linear::new(at, "a", 3, 4, true, 0.1, &mut rng)?),
///     second: Linear::new(at, "b", 4, 2, false, 0.1, &mut rng)?,
///     pending: None,
///     label: "Stack",
/// };
/// let mut names = Vec::new();
/// stack.visit_params(&mut |p: &Param| names.push(p.name.clone()));
/// assert_eq!(names, ["a.weight", "a.bias", "b.weight"]);
///
/// stack.forward(&Tensor::from_vec(&[1, 3], vec![1.0, 2.0, 3.0])?)?;
/// stack.release();
/// assert!(stack.pending.is_none());
/// assert!(stack.backward(&Tensor::from_vec(&[1, 2], vec![1.0, 1.0])?).is_err());
/// # Ok::<(), models::Error>(())
/// ```
///
/// A field left out of the list is a compile error:
///
/// ```compile_fail,E0063
/// use kernels::Tensor;
/// use models::layers::{Layer, Linear};
/// use models::{layer_fields, Result};
///
/// struct Two {
///     a: Linear,
///     b: Linear, // added, but not listed below
/// }
///
/// impl Layer for Two {
///     fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
///         let h = self.a.forward(x)?;
///         self.b.forward(&h)
///     }
///     fn backward(&mut self, dout: &Tensor) -> Result<Tensor> {
///         let dh = self.b.backward(dout)?;
///         self.a.backward(&dh)
///     }
///     layer_fields! { children: [a], saved: [], config: [] }
/// }
/// ```
#[macro_export]
macro_rules! layer_fields {
    (
        children: [$($child:ident),* $(,)?],
        saved: [$($saved:ident),* $(,)?],
        config: [$($config:ident),* $(,)?] $(,)?
    ) => {
        #[allow(unused_variables)] // a struct without children
        fn visit_params(&self, f: &mut dyn FnMut(&$crate::Param)) {
            // Never called: it only compiles when the lists name every field exactly once
            // ("missing field `x` in initializer", "field `x` specified more than once").
            #[allow(unreachable_code, clippy::diverging_sub_expression)]
            let _every_field_listed_once = || -> Self {
                Self {
                    $($child: ::core::unreachable!(),)*
                    $($saved: ::core::unreachable!(),)*
                    $($config: ::core::unreachable!(),)*
                }
            };
            $($crate::layers::Child::visit_child(&self.$child, f);)*
        }

        #[allow(unused_variables)]
        fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut $crate::Param)) {
            $($crate::layers::Child::visit_child_mut(&mut self.$child, f);)*
        }

        fn release(&mut self) {
            $($crate::layers::Child::release_child(&mut self.$child);)*
            $(self.$saved = ::core::default::Default::default();)*
        }
    };
}

/// An output tensor on `like`'s device and of its dtype (the compute dtype: f32, or bf16 in
/// mixed precision), with unspecified contents (a recycled buffer): every op overwrites its
/// outputs entirely.
pub fn empty_like(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::try_empty(like.device(), like.dtype(), shape)?)
}

/// An f32 output tensor on `like`'s device (statistics kept in f32 in every precision:
/// LayerNorm mean/rstd, losses), contents unspecified.
pub fn empty_f32(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::try_empty(like.device(), kernels::DType::F32, shape)?)
}

/// What forward saved in `slot`, borrowed (for a recomputation that leaves it in place);
/// [`Error::NoForward`] naming `layer` when there is none.
pub fn saved<'a, T>(slot: &'a Option<T>, layer: &'static str) -> Result<&'a T> {
    slot.as_ref().ok_or(Error::NoForward { layer })
}

/// Takes what forward saved in `slot`, for a backward that releases it;
/// [`Error::NoForward`] naming `layer` when there is none (a backward without a forward, or
/// a second backward).
pub fn take_saved<T>(slot: &mut Option<T>, layer: &'static str) -> Result<T> {
    slot.take().ok_or(Error::NoForward { layer })
}
