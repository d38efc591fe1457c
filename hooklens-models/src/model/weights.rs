//! TransformerLens's weight views (`model.W_Q`, `model.b_O`, ...) and state dict.
//!
//! The model keeps its weights in the layout it multiplies with (Hugging Face's Conv1D
//! layout, q | k | v fused); these build TransformerLens's shapes from it. Each call
//! computes a fresh tensor: editing it never changes the model.

use candle_core::Tensor;
use hooklens_core::Result;

use super::attention::Attention;
use super::model::HookedTransformer;

impl HookedTransformer {
    fn stack_layers(
        &self,
        f: impl Fn(&Attention, usize) -> candle_core::Result<Tensor>,
        which: usize,
    ) -> Result<Tensor> {
        let per_layer = self
            .blocks
            .iter()
            .map(|b| f(&b.attn, which))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&per_layer, 0)?)
    }

    fn stack_mlp(&self, f: impl Fn(&super::mlp::Mlp) -> &Tensor) -> Result<Tensor> {
        let per_layer: Vec<&Tensor> = self.blocks.iter().map(|b| f(&b.mlp)).collect();
        Ok(Tensor::stack(&per_layer, 0)?)
    }

    /// The token embedding as stored, `[d_vocab, d_model]`: TransformerLens's `W_E`
    /// except for Gemma, whose embedding is multiplied by `sqrt(d_model)` on the way
    /// in (TransformerLens's `W_E` is that product: [`HookedTransformer::w_e_scaled`]).
    pub fn w_e(&self) -> &Tensor {
        &self.embed.w_e
    }

    /// TransformerLens's `W_E` `[d_vocab, d_model]`: the embedding with any scale the
    /// family applies to it (a new tensor only for Gemma).
    pub fn w_e_scaled(&self) -> Result<Tensor> {
        Ok(match self.embed.scale {
            Some(s) => (&self.embed.w_e * s)?,
            None => self.embed.w_e.clone(),
        })
    }

    /// TransformerLens's `W_pos`: the position embedding `[n_ctx, d_model]`, for a
    /// model with learned positions (`None` with rotary embeddings).
    pub fn w_pos(&self) -> Option<&Tensor> {
        self.pos_embed.as_ref().map(|p| &p.w_pos)
    }

    /// TransformerLens's `W_U`: the unembedding `[d_model, d_vocab]`. With weight
    /// processing the model holds it as factors of the tied `W_E` (see
    /// [`crate::model::Unembed`]), so this computes a new matrix on each call; for a few
    /// tokens' columns, [`HookedTransformer::tokens_to_residual_directions`] computes only those.
    pub fn w_u(&self) -> Result<Tensor> {
        Ok(self.unembed.w_u()?)
    }

    /// TransformerLens's `b_U`: the unembedding bias `[d_vocab]`.
    pub fn b_u(&self) -> &Tensor {
        self.unembed.b_u()
    }

    /// TransformerLens's `W_Q`: `[n_layers, n_heads, d_model, d_head]`.
    pub fn w_q(&self) -> Result<Tensor> {
        self.stack_layers(Attention::w_head, 0)
    }

    /// TransformerLens's `W_K`: `[n_layers, n_heads, d_model, d_head]` (grouped key
    /// heads repeated for each query head that reads them, as TransformerLens's `W_K`).
    pub fn w_k(&self) -> Result<Tensor> {
        self.stack_layers(Attention::w_head, 1)
    }

    /// TransformerLens's `W_V`: `[n_layers, n_heads, d_model, d_head]`.
    pub fn w_v(&self) -> Result<Tensor> {
        self.stack_layers(Attention::w_head, 2)
    }

    /// TransformerLens's `W_O`: `[n_layers, n_heads, d_head, d_model]`.
    pub fn w_o(&self) -> Result<Tensor> {
        self.stack_layers(|a, _| a.w_o_heads(), 0)
    }

    /// TransformerLens's `b_Q`: `[n_layers, n_heads, d_head]`.
    pub fn b_q(&self) -> Result<Tensor> {
        self.stack_layers(Attention::b_head, 0)
    }

    /// TransformerLens's `b_K`: `[n_layers, n_heads, d_head]`.
    pub fn b_k(&self) -> Result<Tensor> {
        self.stack_layers(Attention::b_head, 1)
    }

    /// TransformerLens's `b_V`: `[n_layers, n_heads, d_head]` (zero after `fold_value_biases`).
    pub fn b_v(&self) -> Result<Tensor> {
        self.stack_layers(Attention::b_head, 2)
    }

    /// TransformerLens's `b_O`: `[n_layers, d_model]`.
    pub fn b_o(&self) -> Result<Tensor> {
        self.stack_layers(|a, _| Ok(a.b_o.clone()), 0)
    }

    /// TransformerLens's `W_gate`: `[n_layers, d_model, d_mlp]`, for a gated MLP.
    pub fn w_gate(&self) -> Result<Option<Tensor>> {
        let per_layer: Option<Vec<&Tensor>> = self.blocks.iter().map(|b| b.mlp.w_gate.as_ref()).collect();
        per_layer.map(|l| Ok(Tensor::stack(&l, 0)?)).transpose()
    }

    /// TransformerLens's `W_in`: `[n_layers, d_model, d_mlp]` (a mixture-of-experts
    /// model has no dense MLP: `d_mlp` 0 here; its experts are in
    /// [`HookedTransformer::state_dict`] and `blocks[l].mlp.moe`).
    pub fn w_in(&self) -> Result<Tensor> {
        self.stack_mlp(|m| &m.w_in)
    }

    /// TransformerLens's `b_in`: `[n_layers, d_mlp]`.
    pub fn b_in(&self) -> Result<Tensor> {
        self.stack_mlp(|m| &m.b_in)
    }

    /// TransformerLens's `W_out`: `[n_layers, d_mlp, d_model]`.
    pub fn w_out(&self) -> Result<Tensor> {
        self.stack_mlp(|m| &m.w_out)
    }

    /// TransformerLens's `b_out`: `[n_layers, d_model]`.
    pub fn b_out(&self) -> Result<Tensor> {
        self.stack_mlp(|m| &m.b_out)
    }

    /// The matrices a forward multiplies by, in the model's own layouts (`[in, out]`):
    /// per block `W_qkv` `[d_model, (n_heads + 2 n_kv) d_head]`, `W_O`, `W_gate` (gated
    /// MLPs), `W_in`, `W_out` (a mixture of experts: the router, then each expert's
    /// `W_gate`, `W_in`, `W_out`); then the unembedding's base `[d_model, d_vocab]`. The
    /// model's own storage, not copies. For benchmarks that time the products alone.
    #[doc(hidden)]
    pub fn product_weights(&self) -> (Vec<Vec<Tensor>>, Tensor) {
        let layers = self
            .blocks
            .iter()
            .map(|b| {
                let mut w = vec![b.attn.w_qkv.clone(), b.attn.w_o.clone()];
                match &b.mlp.moe {
                    Some(moe) => {
                        w.push(moe.w_router.clone());
                        for x in &moe.experts {
                            w.extend([x.w_gate.clone(), x.w_in.clone(), x.w_out.clone()]);
                        }
                    }
                    None => {
                        w.extend(b.mlp.w_gate.clone());
                        w.push(b.mlp.w_in.clone());
                        w.push(b.mlp.w_out.clone());
                    }
                }
                w
            })
            .collect();
        (layers, self.unembed.base().clone())
    }

    /// Every parameter under its TransformerLens `state_dict` name and shape
    /// (`embed.W_E`, `blocks.0.attn.W_Q` `[n_heads, d_model, d_head]`, `blocks.0.ln1.w`,
    /// ..., `unembed.b_U`), in TransformerLens's order. Grouped-query models give
    /// `attn._W_K` / `_W_V` / `_b_K` / `_b_V` with their key/value heads, as
    /// TransformerLens; norm parameters are absent once folded (`LNPre`, `RMSPre`),
    /// except BLOOM's `embed.ln.w` / `embed.ln.b`, which are never folded.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("embed.W_E".to_string(), self.w_e_scaled()?)];
        // BLOOM's embedding LayerNorm (never folded), as TransformerLens's `embed.ln`.
        if let Some((w, b)) = self.embed.ln.as_ref().and_then(|n| n.params()) {
            out.push(("embed.ln.w".to_string(), w.clone()));
            out.push(("embed.ln.b".to_string(), b.clone()));
        }
        if let Some(w_pos) = self.w_pos() {
            out.push(("pos_embed.W_pos".to_string(), w_pos.clone()));
        }
        let grouped = self.cfg().n_key_value_heads.is_some_and(|kv| kv != self.cfg().n_heads);
        for (l, block) in self.blocks.iter().enumerate() {
            let mut push = |name: &str, t: Tensor| out.push((format!("blocks.{l}.{name}"), t));
            for (name, norm) in [
                ("ln1", block.ln1.as_ref()),
                ("ln1_post", block.ln1_post.as_ref()),
                ("ln2", block.ln2.as_ref()),
                ("ln2_post", block.ln2_post.as_ref()),
            ] {
                let Some(norm) = norm else { continue };
                if let Some(w) = norm.weight() {
                    push(&format!("{name}.w"), w.clone());
                }
                if let Some((_, b)) = norm.params() {
                    push(&format!("{name}.b"), b.clone());
                }
            }
            let a = &block.attn;
            for (name, norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                if let Some(w) = norm.as_ref().and_then(|n| n.weight()) {
                    push(&format!("attn.{name}.w"), w.clone());
                }
                if let Some((_, b)) = norm.as_ref().and_then(|n| n.params()) {
                    push(&format!("attn.{name}.b"), b.clone());
                }
            }
            let kv = if grouped { "_" } else { "" };
            push("attn.W_Q", a.w_head(0)?);
            push(&format!("attn.{kv}W_K"), a.w_head_stored(1)?);
            push(&format!("attn.{kv}W_V"), a.w_head_stored(2)?);
            push("attn.W_O", a.w_o_heads()?);
            push("attn.b_Q", a.b_head(0)?);
            push(&format!("attn.{kv}b_K"), a.b_head_stored(1)?);
            push(&format!("attn.{kv}b_V"), a.b_head_stored(2)?);
            push("attn.b_O", a.b_o.clone());
            if let Some(sinks) = &a.sinks {
                push("attn.attn_sinks", sinks.clone());
            }
            let m = &block.mlp;
            if let Some(moe) = &m.moe {
                // TransformerLens's MoE names and `nn.Linear` layouts `[out, in]`.
                push("mlp.W_gate.weight", moe.w_router.t()?);
                if let Some(b) = &moe.b_router {
                    push("mlp.W_gate.bias", b.clone());
                }
                for (e, x) in moe.experts.iter().enumerate() {
                    push(&format!("mlp.experts.{e}.W_in.weight"), x.w_in.t()?);
                    push(&format!("mlp.experts.{e}.W_gate.weight"), x.w_gate.t()?);
                    push(&format!("mlp.experts.{e}.W_out.weight"), x.w_out.t()?);
                    if let Some((b_gate, b_in, b_out)) = &x.biases {
                        push(&format!("mlp.experts.{e}.W_in.bias"), b_in.clone());
                        push(&format!("mlp.experts.{e}.W_gate.bias"), b_gate.clone());
                        push(&format!("mlp.experts.{e}.W_out.bias"), b_out.clone());
                    }
                }
                continue;
            }
            if let Some(w_gate) = &m.w_gate {
                push("mlp.W_gate", w_gate.clone());
            }
            push("mlp.W_in", m.w_in.clone());
            push("mlp.b_in", m.b_in.clone());
            push("mlp.W_out", m.w_out.clone());
            push("mlp.b_out", m.b_out.clone());
        }
        if let Some(w) = self.ln_final.as_ref().and_then(|n| n.weight()) {
            out.push(("ln_final.w".to_string(), w.clone()));
        }
        if let Some((_, b)) = self.ln_final.as_ref().and_then(|n| n.params()) {
            out.push(("ln_final.b".to_string(), b.clone()));
        }
        out.push(("unembed.W_U".to_string(), self.unembed.w_u()?));
        out.push(("unembed.b_U".to_string(), self.unembed.b_u().clone()));
        Ok(out)
    }
}
