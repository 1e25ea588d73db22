"""Hugging Face ``Trainer`` with gcore_torch on a tiny GPT-2 built from a config (no
download): GPT-2's attention and MLP weights are ``Conv1D`` modules stored ``(in, out)``,
so GC must centralize each output *column* (axis 1), and ``lm_head`` is tied to the token
embedding, which GC leaves alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
gcore_torch = pytest.importorskip("gcore_torch")

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.pytorch_utils import Conv1D  # noqa: E402

LR, WD, STEPS = 1e-2, 0.1, 3


def _tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    return model


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=24, length=16):
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1, 64, (n, length), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class _Record(TrainerCallback):
    """Each optimizer step's change of every Conv1D weight, and its weight before."""

    def __init__(self, model, centralize=False):
        self.model, self.centralize = model, centralize
        self.conv1d = {n: m.weight for n, m in model.named_modules() if isinstance(m, Conv1D)}
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.centralize:  # the one line for any optimizer
            gcore_torch.centralize_grads_(self.model)
        self._before = {n: w.detach().clone() for n, w in self.conv1d.items()}

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps.append(
            {n: (w.detach() - self._before[n], self._before[n]) for n, w in self.conv1d.items()}
        )


def _train(tmp_path, model, optimizer, record):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
        lr_scheduler_type="constant", report_to="none", save_strategy="no",
        logging_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Tokens(),
        optimizers=(optimizer, None),
        callbacks=[record],
    )
    trainer.train()
    assert len(record.steps) == STEPS


def _col_means(t):  # Conv1D weight (in, out): one mean per output column
    return t.double().mean(0)


def _row_means(t):
    return t.double().mean(1)


def test_trainer_adamw_param_groups_centralizes_conv1d_columns(tmp_path):
    """The one-liner: ``optimizers=(gcore_torch.AdamW(gcore_torch.param_groups(model)), None)``.

    GC applies to the raw gradient before Adam's moments, so Adam's first moment of every
    Conv1D weight (a sum of centralized gradients) has zero mean per output column, and
    not per input row (axis 0, what a layout-blind recipe would give)."""
    model = _tiny_gpt2()
    wte = model.transformer.wte.weight
    groups = gcore_torch.param_groups(model, no_decay=True, weight_decay=WD)
    optimizer = gcore_torch.AdamW(groups, lr=LR)
    record = _Record(model)
    _train(tmp_path, model, optimizer, record)
    assert len(record.conv1d) == 8  # c_attn, c_proj, c_fc, mlp.c_proj in 2 layers
    for name, w in record.conv1d.items():
        m = optimizer.state[w]["exp_avg"]
        scale = m.abs().max()
        assert scale > 0, name
        assert _col_means(m).abs().max() < 1e-5 * scale, name
        assert _row_means(m).abs().max() > 1e-3 * scale, name  # a wrong axis would show
    # The tied embedding / lm_head: no GC, no decay.
    m = optimizer.state[wte]["exp_avg"]
    assert _row_means(m).abs().max() > 1e-3 * m.abs().max()
    assert [g["weight_decay"] for g in groups if any(p is wte for p in g["params"])] == [0.0]


def test_trainer_adamw_update_variant_moves_columns_by_zero_mean(tmp_path):
    """With ``gc_where="update"`` the Adam step itself is centralized: each Conv1D step,
    less the decoupled decay ``-lr·wd·w``, has zero mean per output column."""
    model = _tiny_gpt2()
    groups = gcore_torch.param_groups(model, no_decay=True, weight_decay=WD)
    optimizer = gcore_torch.AdamW(groups, lr=LR, gc_where="update")
    record = _Record(model)
    _train(tmp_path, model, optimizer, record)
    for step in record.steps:
        for name, (delta, before) in step.items():
            adam_step = delta + LR * WD * before  # torch's AdamW decays w by (1 - lr·wd)
            scale = adam_step.abs().max()
            assert scale > 1e-4, name
            assert _col_means(adam_step).abs().max() < 1e-5 * scale, name
            assert _row_means(adam_step).abs().max() > 1e-3 * scale, name


def test_trainer_any_optimizer_with_centralize_grads_in_a_callback(tmp_path):
    """Any optimizer (here torch's SGD): ``centralize_grads_(model)`` in
    ``on_pre_optimizer_step``. SGD's step is ``-lr·g``: zero mean per output column."""
    model = _tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    record = _Record(model, centralize=True)
    _train(tmp_path, model, optimizer, record)
    for step in record.steps:
        for name, (delta, _) in step.items():
            scale = delta.abs().max()
            assert scale > 0, name
            assert _col_means(delta).abs().max() < 1e-5 * scale, name
            assert _row_means(delta).abs().max() > 1e-3 * scale, name


def test_gpt2_layouts_and_apply_gc_with_the_model():
    """The layouts of the real GPT-2: every Conv1D weight on axis 1, the tied embedding /
    head and the position embedding and norms excluded; ``apply_gc(opt, model=model)``
    on a plain torch optimizer steps each Conv1D column by a zero-mean change."""
    model = _tiny_gpt2()
    lay = gcore_torch.layouts(model)
    conv1d = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert conv1d and all(lay[f"{n}.weight"] == gcore_torch.Layout(1, 1) for n in conv1d)
    assert lay["transformer.wte.weight"] is None and lay["transformer.wpe.weight"] is None
    assert "lm_head.weight" not in lay  # the same tensor as wte: listed once
    assert all(lay[n] is None for n in lay if ".ln_" in n or n.endswith("bias"))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    gcore_torch.apply_gc(optimizer, model=model)
    weights = {n: model.get_submodule(n).weight for n in conv1d}
    before = {n: w.detach().clone() for n, w in weights.items()}
    ids = _Tokens()[0]["input_ids"][None]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    for n, w in weights.items():
        delta = w.detach() - before[n]
        assert delta.abs().max() > 0, n
        assert _col_means(delta).abs().max() < 1e-5 * delta.abs().max(), n
        assert _row_means(delta).abs().max() > 1e-3 * delta.abs().max(), n


# transformers 5 keeps every expert of a mixture-of-experts block in one 3-D tensor:
# (experts, out, in) through F.linear (Mixtral and most, JetMoe), (experts, in, out)
# through x @ W[e] (gpt-oss, Llama 4).
MOE = {  # config, model, the block's name (its tail), its tensor of expert up-projections
    "Mixtral": ("MixtralConfig", "MixtralForCausalLM", "mlp.experts", "gate_up_proj", {}),
    "GptOss": (
        "GptOssConfig", "GptOssForCausalLM", "mlp.experts", "gate_up_proj", {"head_dim": 8},
    ),
    "Llama4": (
        "Llama4TextConfig", "Llama4ForCausalLM", "feed_forward.experts", "gate_up_proj",
        {"head_dim": 8, "intermediate_size_mlp": 8},
    ),
    "JetMoe": (
        "JetMoeConfig", "JetMoeForCausalLM", "mlp.input_linear", "weight", {"kv_channels": 8},
    ),
}  # fmt: skip


def _tiny_moe(kind):
    config_name, model_name, experts, _, extra = MOE[kind]
    if not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(
        vocab_size=32, hidden_size=16, intermediate_size=12, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_local_experts=3,
        num_experts_per_tok=2, **extra,
    )  # fmt: skip
    model = getattr(transformers, model_name)(config)
    block = next(m for n, m in model.named_modules() if n.endswith(experts))
    return model, block


@pytest.mark.parametrize("kind", list(MOE))
def test_moe_experts_are_centralized_per_expert_along_their_real_input_axis(kind):
    """Which axis of an expert tensor is the input is read from the model itself: with
    one token x, expert e's gradient of ``gate_up_proj`` is δ ⊗ x, so along the input
    axis every unit's gradient is parallel to x. The layout must keep the other axis as
    the units (one group per expert), and GC-SGD must step each unit by its gradient less
    its mean over the inputs; the 2-D expert biases (gpt-oss) get no GC."""
    model, block = _tiny_moe(kind)
    up = getattr(block, MOE[kind][3])
    lay = gcore_torch.layouts(model)
    name = next(n for n, p in model.named_parameters() if p is up)
    layout = lay[name]
    assert layout is not None and layout.groups == block.num_experts, layout
    inputs = []
    block.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    ids = torch.tensor([[5]])
    model(input_ids=ids).logits.square().sum().backward()
    grad = up.grad.detach().double()
    x = inputs[0].double().reshape(-1, grad.shape[1 if layout.axis == 2 else 2])
    hit = 0
    for e in range(block.num_experts):
        g = grad[e] if layout.axis == 1 else grad[e].t()  # (units, inputs)
        if g.abs().max() == 0:
            continue  # not routed to
        hit += 1
        xe = x[e] if x.shape[0] == block.num_experts else x[0]  # Llama 4: per expert
        along = g @ xe / xe.dot(xe)
        torch.testing.assert_close(g, torch.outer(along, xe), rtol=0, atol=1e-5 * g.abs().max())
    assert hit >= 1
    # One GC-SGD step: each unit moves by its gradient less its mean over the inputs.
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    gcore_torch.SGD(gcore_torch.param_groups(model), lr=1.0).step()
    for n, p in params.items():
        if p.ndim != 3 or n not in grads:
            continue
        g, inputs_axis = grads[n], 1 if lay[n].axis == 2 else 2
        torch.testing.assert_close(before[n] - p.detach(), g - g.mean(inputs_axis, keepdim=True))
    for n in (n for n in lay if n.endswith("_proj_bias")):
        assert lay[n] is None
        torch.testing.assert_close(before[n] - params[n].detach(), grads[n])


def test_vit_tokens_and_position_table_get_no_gc_and_no_decay():
    """ViT's ``cls_token`` (1, 1, D) and ``position_embeddings`` (1, N+1, D) are held by
    ``ViTEmbeddings`` directly: no GC (the default axis 0 centralized each over D), and
    no decay with ``no_decay=True``; its patch projection (a Conv2d) keeps axis 0."""
    if not hasattr(transformers, "ViTForImageClassification"):
        pytest.skip(f"transformers {transformers.__version__} has no ViT")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
        image_size=8, patch_size=4,
    )  # fmt: skip
    model = transformers.ViTForImageClassification(config)
    emb = model.vit.embeddings
    lay = gcore_torch.layouts(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert lay[names[id(emb.cls_token)]] is None
    assert lay[names[id(emb.position_embeddings)]] is None
    assert lay[names[id(emb.patch_embeddings.projection.weight)]] == gcore_torch.Layout(0, 1)
    groups = gcore_torch.param_groups(model, no_decay=True, weight_decay=WD)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(emb.cls_token)] == decay[id(emb.position_embeddings)] == 0.0
    assert decay[id(emb.patch_embeddings.projection.weight)] == WD
    cls_before = emb.cls_token.detach().clone()
    model(pixel_values=torch.randn(2, 3, 8, 8)).logits.square().sum().backward()
    grad = emb.cls_token.grad.clone()
    gcore_torch.SGD(groups, lr=1.0).step()
    torch.testing.assert_close(cls_before - emb.cls_token.detach(), grad)
