"""Run a test worker in two gloo processes on this machine."""

import socket

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_two_processes(worker, *args) -> None:
    """``worker(rank, 2, port, *args)`` in two processes; raises if either fails."""
    mp.spawn(worker, args=(2, free_port(), *args), nprocs=2, join=True)
