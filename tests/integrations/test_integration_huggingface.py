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
