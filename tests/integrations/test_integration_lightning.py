"""PyTorch Lightning with gcore_torch: ``configure_optimizers`` returning a gcore_torch
optimizer, ``apply_gc`` on a torch optimizer (Lightning steps with a closure), and
``centralize_grads_`` in ``on_before_optimizer_step``. The model has a ConvTranspose2d
(weight ``(in, out/groups, kh, kw)``, output axis 1, per group): each step must move every
output unit by a zero-mean change, on the right axis."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
try:
    import lightning.pytorch as pl
except ImportError:
    pl = pytest.importorskip("pytorch_lightning")
gcore_torch = pytest.importorskip("gcore_torch")

from torch import nn  # noqa: E402

LR, STEPS = 0.05, 4


def _units(w, axis, groups=1):
    """``w`` as (units, fan_in) for output ``axis`` (ConvTranspose: per group)."""
    if groups > 1:
        w = w.unflatten(0, (groups, -1)).movedim(axis + 1, 1)
        return w.reshape(groups * w.shape[1], -1)
    return w.movedim(axis, 0).reshape(w.shape[axis], -1)


class Net(pl.LightningModule):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)  # weight (4, 3, 2, 2)
        self.head = nn.Linear(6 * 8 * 8, 5)
        self.steps = []

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.relu(self.up(x)).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        if self.how == "gcore_optimizer":
            return gcore_torch.SGD(gcore_torch.param_groups(self), lr=LR, momentum=0.9)
        opt = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        if self.how == "apply_gc":
            gcore_torch.apply_gc(opt, model=self)
        return opt

    def on_before_optimizer_step(self, optimizer):
        if self.how == "centralize_grads_":
            gcore_torch.centralize_grads_(self)
        self._before = {n: p.detach().clone() for n, p in self.named_parameters()}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.steps.append({n: p.detach() - self._before[n] for n, p in self.named_parameters()})


@pytest.mark.parametrize("how", ["gcore_optimizer", "apply_gc", "centralize_grads_"])
def test_lightning_steps_are_centralized_per_output_unit(how, tmp_path):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(24, 3, 4, 4, generator=gen), torch.randint(0, 5, (24,), generator=gen)
    )
    model = Net(how)
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=6))
    assert len(model.steps) == STEPS
    # SGD-momentum without weight decay: each step is a sum of centralized gradients.
    units = {"conv.weight": (0, 1), "up.weight": (1, 2), "head.weight": (0, 1)}
    for step in model.steps:
        for name, (axis, groups) in units.items():
            d = step[name]
            scale = d.abs().max()
            assert scale > 0, name
            assert _units(d, axis, groups).mean(1).abs().max() < 1e-5 * scale, name
        # On the wrong axis (axis 0 of the ConvTranspose weight) the means are not zero.
        wrong = _units(step["up.weight"], 0).mean(1).abs().max()
        assert wrong > 1e-3 * step["up.weight"].abs().max()
        assert step["bn.weight"].abs().max() > 0  # trained, not centralized (1-D)
