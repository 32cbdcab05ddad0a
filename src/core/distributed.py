"""Multi-process training on torch.distributed (DistributedDataParallel).

Two ways in, one code path:

- ``torchrun --nnodes ... --nproc_per_node ... main.py ...``: torchrun sets ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE`` and the rendezvous address; every process joins the group from the environment.
- ``python main.py --n_GPUs N`` on one machine: ``main.py`` spawns N processes itself (on a
  machine without CUDA, or with ``--cpu``, N CPU processes on gloo — handy for tests).

``--batch_size`` is the total batch over all processes (the paper's 16); each process loads
``batch_size // world_size`` patches. Only rank 0 writes files.
"""

import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.errors import UserError

_TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in _TORCHRUN_VARS)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def select_device(args) -> str | None:
    """Settle ``args.device``: CUDA unless ``--cpu`` or there is none. Returns a line to show when CUDA was
    wanted but is not available (the run then goes to the CPU), else None."""
    if args.cpu or torch.cuda.is_available():
        return None
    args.cpu, args.device = True, 'cpu'
    return 'CUDA is not available: running on the CPU.'


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _check_world(args, size: int) -> None:
    if args.batch_size % size:
        raise UserError(f'--batch_size {args.batch_size}: the total batch must be divisible by the number of '
                        f'processes ({size})')
    if not args.cpu and torch.cuda.device_count() < int(os.environ.get('LOCAL_WORLD_SIZE', size)):
        raise UserError(f'--n_GPUs {size}: only {torch.cuda.device_count()} CUDA device(s) visible')


def _join(args, rank_: int, size: int, local_rank: int) -> None:
    """Join the process group; binds this process to its GPU and sets ``args.device``."""
    backend = 'gloo' if args.cpu else 'nccl'
    if not args.cpu:
        torch.cuda.set_device(local_rank)
        args.device = f'cuda:{local_rank}'
    # A bounded timeout turns a dead or hung peer into an error instead of a silent hang.
    dist.init_process_group(backend=backend, rank=rank_, world_size=size,
                            timeout=timedelta(seconds=args.dist_timeout))
    args.rank, args.world_size = rank_, size


def _spawned(local_rank: int, args, run, size: int) -> None:
    _join(args, local_rank, size, local_rank)
    try:
        run(args)
    except UserError as e:
        # Every rank meets the same bad input; one line from rank 0 is enough.
        if local_rank == 0:
            print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every process; the parent prints the one line
        sys.exit(130)
    finally:
        dist.destroy_process_group()


def launch(args, run) -> None:
    """Run ``run(args)`` in one process, in N spawned processes, or in this torchrun process."""
    args.rank, args.world_size = 0, 1
    if launched_by_torchrun():
        size = int(os.environ['WORLD_SIZE'])
        _check_world(args, size)
        _join(args, int(os.environ['RANK']), size, int(os.environ['LOCAL_RANK']))
        try:
            run(args)
        finally:
            dist.destroy_process_group()
    elif args.n_GPUs > 1:
        _check_world(args, args.n_GPUs)
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        os.environ.setdefault('MASTER_PORT', str(_free_port()))
        try:
            # join=True: if any process dies (an exception or a kill), the others are terminated
            # and the failure is raised here.
            mp.spawn(_spawned, args=(args, run, args.n_GPUs), nprocs=args.n_GPUs, join=True)
        except mp.ProcessExitedException as e:
            if e.exit_code == 2:  # a UserError, already printed by rank 0
                raise SystemExit(2) from None
            if e.exit_code == 130:
                raise KeyboardInterrupt from None
            print(f'error: {e}; the other processes were stopped', file=sys.stderr)
            raise SystemExit(1) from None
    else:
        run(args)
