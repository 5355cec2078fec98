"""DistributedDataParallel over pykernels layers: 2 processes on loopback with the gloo backend
train exactly like one process on the combined batch (torch.distributed does the communication;
pykernels only provides the layers). On GPUs the same script runs with backend="nccl".

A worker that has done its work leaves with os._exit(0): on this machine torch's own teardown at
interpreter exit aborts a spawned gloo worker ("terminate called without an active exception",
SIGABRT) in about half of the runs even with plain torch.nn layers and no pykernels import
(6 of 10 runs of the same script; 0 of 12 with os._exit). A worker that fails raises as before.
"""
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pykernels.models import MLP

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model, batches, rank=0, world=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        F.cross_entropy(model(xs), ys).backward()  # DDP averages the ranks' mean losses' grads
        opt.step()


def _worker(rank, port, data_path, out_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        data = torch.load(data_path)
        model = MLP(20, 16, 5, dtype=torch.float64)
        model.load_state_dict(data["init"])
        _train(torch.nn.parallel.DistributedDataParallel(model), data["batches"], rank, WORLD)
        if rank == 0:
            torch.save(model.state_dict(), out_path)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # past torch's exit-time teardown (see the module docstring)


def test_ddp_two_processes_match_single_process(tmp_path, gen):
    model = MLP(20, 16, 5, dtype=torch.float64)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(8, 20, generator=gen, dtype=torch.float64),
                torch.randint(0, 5, (8,), generator=gen)) for _ in range(4)]
    data_path, out_path = tmp_path / "data.pt", tmp_path / "ddp.pt"
    torch.save({"init": init, "batches": batches}, data_path)

    mp.spawn(_worker, args=(_free_port(), str(data_path), str(out_path)), nprocs=WORLD, join=True)

    _train(model, batches)  # one process, the whole batch
    ddp_state = torch.load(out_path)
    for name, value in model.state_dict().items():
        assert not torch.equal(value, init[name]), f"{name} did not train"
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-10, atol=1e-12, msg=name)
