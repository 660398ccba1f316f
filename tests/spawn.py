"""Run a test worker in two gloo processes on this machine."""

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_process_group(rank, world_size, port, worker, start_group, args) -> None:
    # torchrun's environment, so code that reads it (train.process_group) sees the same group
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if not start_group:  # as torchrun leaves it: the code under test starts (and ends) the group
        worker(rank, world_size, *args)
        return
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_on_two_processes(worker, *args, start_group: bool = True) -> None:
    """``worker(rank, 2, *args)`` in two processes, each in a started gloo group (``start_group``;
    else only torchrun's environment is set); raises if either fails."""
    mp.spawn(_in_process_group, args=(2, free_port(), worker, start_group, args), nprocs=2, join=True)
