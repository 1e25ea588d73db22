"""gcore_torch under torch.distributed: DDP (GC after the all-reduce), FSDP2 and DTensor
gradients (shard-local when sharded on the output axis, partial sums reduced otherwise).

One 2-process gloo CPU job runs every distributed check and saves what it saw; the tests
below read those results.

FSDP2 (``torch.distributed.fsdp.fully_shard``, CPU + gloo) shards every parameter on dim 0.
For Linear and Conv weights that is the output axis: each rank holds whole output units
and GC is shard-local (no communication in ``step``). A ConvTranspose weight is
``(in, out, k...)`` with the output on axis 1: each unit is split across the ranks, and the
unit means must be reduced across them. Both must equal a single-process run over 5 steps
(1e-6), for GC-SGD and GC-Adam on every path.
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest

torch = pytest.importorskip("torch")
gcore_torch = pytest.importorskip("gcore_torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch_helpers import one_thread  # noqa: E402, F401  (one intra-op thread, restored after)

WORLD = 2
STEPS = 5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.up(torch.relu(self.conv(x)))).flatten(1))


def _data():
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 3, 4, 4, generator=gen), torch.randint(0, 5, (8,), generator=gen))
        for _ in range(STEPS)
    ]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _make(name):
    torch.manual_seed(0)
    model = Net()
    opt = getattr(gcore_torch, name)(gcore_torch.param_groups(model), lr=0.05)
    return model, opt


class RowNet(nn.Module):
    """Linear and Conv weights only: dim-0 sharding keeps every output unit on one rank."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class SplitNet(nn.Module):
    """Conv, a ConvTranspose whose output units are split over the 2 ranks (weight (6, 4, 2,
    2) sharded 3 + 3 on its input axis), a grouped one whose units stay whole (weight (4, 2,
    1, 1), 2 groups: one group a rank), and a Linear with an uneven 3 + 2 split."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.mix = nn.ConvTranspose2d(4, 4, 1, groups=2)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.up(torch.relu(self.conv(x))))
        return self.fc(torch.relu(self.mix(x)).flatten(1))


FSDP_MODELS = {"rows": RowNet, "split": SplitNet}
FSDP_OPTS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
    "Adam": {"lr": 0.01, "weight_decay": 1e-3},
}
PATHS = {"default": {}, "foreach": {"foreach": True}, "single": {"foreach": False}}
# Every path on the model with split units; the shard-local model on the default path.
FSDP_RUNS = [("split", n, p) for n in FSDP_OPTS for p in PATHS] + [
    ("rows", n, "default") for n in FSDP_OPTS
]


def _fsdp_opt(model, opt_name, path):
    cls = getattr(gcore_torch, opt_name)
    return cls(gcore_torch.param_groups(model), **FSDP_OPTS[opt_name], **PATHS[path])


def _run_fsdp(rank, mesh, model_name, opt_name, path):
    """5 steps of FSDP2 on half of each batch: final full parameters, comms in each step."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.debug import CommDebugMode

    torch.manual_seed(0)
    model = FSDP_MODELS[model_name]()
    fully_shard(model, mesh=mesh)
    opt = _fsdp_opt(model, opt_name, path)
    comms = []
    for x, y in _data():
        opt.zero_grad()
        lo = rank * 4
        nn.functional.cross_entropy(model(x[lo : lo + 4]), y[lo : lo + 4]).backward()
        with CommDebugMode() as comm:
            opt.step()
        comms.append(comm.get_total_counts())
    layout = {
        name: (str(p.placements[0]), tuple(p.to_local().shape))
        for name, p in model.named_parameters()
    }
    return [p.detach().full_tensor() for p in model.parameters()], comms, layout


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A bounded timeout: a rank whose run failed must not leave the other waiting for 30 min.
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    results = {}
    # DDP: each rank gets half of every global batch.
    for name in ("SGD", "Adam"):
        model, _ = _make(name)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = getattr(gcore_torch, name)(gcore_torch.param_groups(model), lr=0.05)
        half = [(x[rank * 4 : rank * 4 + 4], y[rank * 4 : rank * 4 + 4]) for x, y in _data()]
        results[f"ddp_{name}"] = _train(ddp, opt, half)

    mesh = init_device_mesh("cpu", (WORLD,))
    # FSDP2: each run isolated, so that one failing path reports and the others still run.
    start = time.perf_counter()
    for model_name, opt_name, path in FSDP_RUNS:
        key = f"fsdp_{model_name}_{opt_name}_{path}"
        try:
            results[key] = _run_fsdp(rank, mesh, model_name, opt_name, path)
        except Exception as err:
            results[key] = f"{type(err).__name__}: {err}"
            dist.barrier()  # the other rank may have failed elsewhere: resynchronize
    results["fsdp_seconds"] = time.perf_counter() - start

    # DTensor gradients: centralize_ on a (16, 6, 3) gradient sharded two ways.
    full = torch.randn(16, 6, 3, generator=torch.Generator().manual_seed(7))
    for label, placement in (("shard0", Shard(0)), ("shard1", Shard(1)), ("repl", Replicate())):
        dt = distribute_tensor(full.clone(), mesh, [placement])
        with CommDebugMode() as comm:
            gcore_torch.centralize_(dt)
        results[f"dt_{label}"] = dt.full_tensor()
        results[f"dt_{label}_comms"] = comm.get_total_counts()
        results[f"dt_{label}_placement"] = str(dt.placements[0])
        # The optimizer on DTensor parameters, every path, against plain tensors.
        for path in ("single", "foreach"):
            flags = {"foreach": path == "foreach"}
            p = nn.Parameter(distribute_tensor(full.clone(), mesh, [placement]))
            opt = gcore_torch.SGD([p], lr=0.1, momentum=0.9, **flags)
            for s in range(2):
                g = torch.randn(16, 6, 3, generator=torch.Generator().manual_seed(s))
                p.grad = distribute_tensor(g, mesh, [placement])
                opt.step()
            results[f"opt_{label}_{path}"] = p.detach().full_tensor()
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out / "results.pt")


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_ddp_equals_single_process(results, name):
    model, opt = _make(name)
    want = _train(model, opt, _data())
    for a, b in zip(results[f"ddp_{name}"], want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("label", ["shard0", "shard1", "repl"])
def test_dtensor_centralize(results, label):
    full = torch.randn(16, 6, 3, generator=torch.Generator().manual_seed(7))
    want = full - full.mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(results[f"dt_{label}"], want)
    assert results[f"dt_{label}_placement"] == {"shard0": "S(0)", "shard1": "S(1)"}.get(label, "R")


def test_dtensor_shard_local_on_output_axis(results):
    """Sharded along the output axis: each rank owns whole units, no communication."""
    assert results["dt_shard0_comms"] == 0
    assert results["dt_repl_comms"] == 0
    # Sharded along a reduced axis the means are partial sums: they must be reduced.
    assert results["dt_shard1_comms"] >= 1


@pytest.mark.parametrize("label", ["shard0", "shard1", "repl"])
@pytest.mark.parametrize("path", ["single", "foreach"])
def test_optimizer_on_dtensor_params(results, label, path):
    p = nn.Parameter(torch.randn(16, 6, 3, generator=torch.Generator().manual_seed(7)))
    opt = gcore_torch.SGD([p], lr=0.1, momentum=0.9, foreach=False)
    for s in range(2):
        p.grad = torch.randn(16, 6, 3, generator=torch.Generator().manual_seed(s))
        opt.step()
    torch.testing.assert_close(results[f"opt_{label}_{path}"], p.detach())


@pytest.mark.parametrize(("model_name", "opt_name", "path"), FSDP_RUNS)
def test_fsdp2_equals_single_process(results, model_name, opt_name, path):
    got = results[f"fsdp_{model_name}_{opt_name}_{path}"]
    assert not isinstance(got, str), f"FSDP2 run failed: {got}"
    params, _, _ = got
    torch.manual_seed(0)
    model = FSDP_MODELS[model_name]()
    opt = _fsdp_opt(model, opt_name, path)
    for x, y in _data():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    names = [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, params, model.parameters(), strict=True):
        torch.testing.assert_close(
            a, b.detach(), rtol=1e-6, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_fsdp2_layout_is_what_the_tests_assume(results):
    """dim-0 shards: ConvTranspose units split (4 output units, 3 of 6 inputs a rank)."""
    got = results["fsdp_split_SGD_single"]
    assert not isinstance(got, str), got
    layout = got[2]
    print(f"FSDP2 runs ({len(FSDP_RUNS)} x {STEPS} steps): {results['fsdp_seconds']:.1f} s")
    assert layout["up.weight"] == ("S(0)", (3, 4, 2, 2))
    assert layout["mix.weight"] == ("S(0)", (2, 2, 1, 1))
    assert layout["fc.weight"] == ("S(0)", (3, 256))


@pytest.mark.parametrize("opt_name", list(FSDP_OPTS))
def test_fsdp2_gc_is_shard_local_when_units_are_whole(results, opt_name):
    """Linear/Conv under FSDP2: the step communicates nothing; with split ConvTranspose
    units it must (the unit means are partial sums across the ranks)."""
    rows = results[f"fsdp_rows_{opt_name}_default"]
    split = results[f"fsdp_split_{opt_name}_single"]
    assert not isinstance(rows, str), rows
    assert not isinstance(split, str), split
    assert rows[1] == [0] * STEPS
    assert all(c >= 1 for c in split[1])
