"""Multi-process training on torch.distributed (DistributedDataParallel).

Two ways in, one code path:

- ``torchrun --nnodes ... --nproc_per_node ... main.py ...``: torchrun sets ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE`` and the rendezvous address; every process joins the group from the environment.
- ``python main.py --n_GPUs N`` on one machine: ``main.py`` spawns N processes itself (on a
  machine without CUDA, or with ``--cpu``, N CPU processes on gloo — handy for tests); they meet
  through a file in a temporary folder, so no port is picked.

``--batch_size`` is the total batch over all processes (the paper's 16); each process loads
``batch_size // world_size`` patches. Only rank 0 writes files.

When a process fails, the run ends with one line, whichever process failed and however the others
learn of it (:func:`launch`): each spawned process writes what stopped it to a report file before it
closes its connections, so the cause is on disk before any other process can see a broken connection;
the parent waits for all of them and prints the cause, not its consequences. What rank 0 prepares
for the others (:func:`main_process_first`) ends on every rank with a message when it fails.
"""

import contextlib
import json
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.errors import UserError
from core.io_utils import atomic_write_text, write_error_cause

# How long the parent gives the other processes to end by themselves once one has failed (or after
# Ctrl-C) before it stops them; a process it finds stopped (SIGSTOP, Ctrl-Z) is killed at once.
GRACE_S = 10
# Exit status of a spawned process: what its report says.
_EXIT = {'ok': 0, 'user': 2, 'timeout': 2, 'peer': 2, 'interrupt': 130, 'crash': 1}


class PeerFailed(UserError):
    """This process stops because another one failed; the other one's message is the one to show."""


class ProcessFailed(UserError):
    """A process of the run was lost (killed, stopped, or cut off from the others); the message says which."""


class ProcessCrashed(Exception):
    """A spawned process raised an unexpected exception; the message is its traceback."""


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


def _check_world(args, size: int) -> None:
    if args.batch_size % size:
        raise UserError(f'--batch_size {args.batch_size}: the total batch must be divisible by the number of '
                        f'processes ({size})')
    if not args.cpu and torch.cuda.device_count() < int(os.environ.get('LOCAL_WORLD_SIZE', size)):
        raise UserError(f'--n_GPUs {size}: only {torch.cuda.device_count()} CUDA device(s) visible')


def _join(args, rank_: int, size: int, local_rank: int, store: str | None = None) -> None:
    """Join the process group (through the file ``store``, or torchrun's environment); binds this process to
    its GPU and sets ``args.device``."""
    backend = 'gloo' if args.cpu else 'nccl'
    if not args.cpu:
        torch.cuda.set_device(local_rank)
        args.device = f'cuda:{local_rank}'
    # A bounded timeout turns a dead or hung peer into an error instead of a silent hang.
    dist.init_process_group(backend=backend, init_method=f'file://{store}' if store else None, rank=rank_,
                            world_size=size, timeout=timedelta(seconds=args.dist_timeout))
    args.rank, args.world_size = rank_, size


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0, then on the other ranks, which find ready what rank 0 made (caches, LR
    images). If the block fails on rank 0, the other ranks raise :class:`PeerFailed` instead of running it."""
    if world_size() == 1:
        yield
        return
    if rank() == 0:
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # the others may be gone already; the error is this one
                _rank0_says(failed=True)
            raise
        _rank0_says(failed=False)
    else:
        if _rank0_says(failed=False):
            raise PeerFailed('process 0 failed while preparing the data')
        yield


def _rank0_says(failed: bool) -> bool:
    """Rank 0's ``failed``, on every rank."""
    flag = [failed]
    dist.broadcast_object_list(flag, src=0)
    return bool(flag[0])


def collective_failure(e: BaseException, timeout_s: int) -> tuple[str, str] | None:
    """A failed torch.distributed communication as ``(kind, one line)``: ``'timeout'`` (the other processes
    silent for ``timeout_s``, the ``--dist_timeout``) or ``'peer'`` (another process gone); None for any
    other exception."""
    text = str(e)
    if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError)
                                              and re.search(r'gloo|nccl|ProcessGroup', text, re.I))):
        return None
    if re.search(r'timed? ?out|timeout', text, re.I):
        return 'timeout', f'no answer from the other processes for {timeout_s} s (--dist_timeout {timeout_s})'
    first = re.sub(r'^\[[^\]]*\]\s*', '', text.strip().splitlines()[0] if text.strip() else type(e).__name__)
    return 'peer', f'lost the connection to another process ({first.split(". ")[0].rstrip(".")})'


def _run_rank(args, run, rank_: int, size: int, store: str) -> tuple[str, str]:
    """Join the group and run; what ended it: ``(kind, message)``, kind one of ``_EXIT``'s."""
    try:
        _join(args, rank_, size, rank_, store)
        run(args)
    except KeyboardInterrupt:
        return 'interrupt', ''
    except PeerFailed as e:
        return 'peer', str(e)
    except UserError as e:
        return 'user', str(e)
    except Exception as e:
        cause = write_error_cause(e)  # a write outside the trainer's own handling, as main.py says it
        if cause is not None:
            return 'user', f'cannot write {e.filename or "the run folder"}: {cause}'
        return collective_failure(e, args.dist_timeout) or ('crash', traceback.format_exc())
    return 'ok', ''


def _spawned(local_rank: int, args, run, size: int, reports: str) -> None:
    """A process started by :func:`launch`: run, report what ended it, then close its connections."""
    try:
        kind, message = _run_rank(args, run, local_rank, size, str(Path(reports) / 'store'))
    except KeyboardInterrupt:  # a Ctrl-C while another failure was being handled
        kind, message = 'interrupt', ''
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # from here on the parent ends the run
    # The report is on disk before the connections close: a process that sees them break finds it.
    atomic_write_text(json.dumps({'kind': kind, 'message': message}), Path(reports) / f'rank{local_rank}.json')
    if is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.exit(_EXIT[kind])


def _read_report(reports: Path, rank_: int) -> tuple[str, str] | None:
    try:
        report = json.loads((reports / f'rank{rank_}.json').read_text())
    except (OSError, ValueError):
        return None
    return report['kind'], report['message']


def _is_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, Ctrl-Z); False where /proc does not say."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] in ('T', 't')
    except (OSError, IndexError):
        return False


def _wait_for_failure(procs: list) -> None:
    """Return when every process has ended with status 0, or as soon as one has ended otherwise."""
    pending = {p.sentinel: p for p in procs}
    while pending:
        for sentinel in multiprocessing.connection.wait(list(pending)):
            p = pending.pop(sentinel)
            p.join()
            if p.exitcode != 0:
                return


def _end_all(procs: list) -> dict[int, bool]:
    """Give the processes GRACE_S to end by themselves, then stop them; returns ``{rank: was stopped}``
    for those this had to end."""
    ended = {r: _is_stopped(p.pid) for r, p in enumerate(procs) if p.is_alive()}
    for r in ended:
        if ended[r]:
            procs[r].kill()  # a stopped process acts on no other signal
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    ended = {r: s for r, s in ended.items() if s or procs[r].is_alive()}
    for p in procs:
        if p.is_alive():  # e.g. waiting for a process that failed; after Ctrl-C, one sent to the parent alone
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    return ended


def spawned_outcome(reports: list[tuple[str, str] | None], exitcodes: list[int], ended: dict[int, bool],
                    interrupted: bool) -> BaseException | None:
    """What to raise after the spawned processes of a run have ended (None: all went well).

    Args:
        reports: each rank's ``(kind, message)``, None if it wrote none (killed, or ended by the parent).
        exitcodes: each process's exit status (negative: the signal that ended it).
        ended: the ranks the parent had to end, each with whether it was found stopped (SIGSTOP).
        interrupted: the parent itself got Ctrl-C.

    The cause wins over its consequences, whichever process ended first: Ctrl-C, then a UserError, then
    a crash (its traceback), then a process killed from outside, then a timeout, then a lost connection.
    """
    n = len(exitcodes)
    kinds = {kind: [(r, rep[1]) for r, rep in enumerate(reports) if rep and rep[0] == kind] for kind in _EXIT}
    if interrupted or kinds['interrupt']:
        return KeyboardInterrupt()
    if kinds['user']:
        return UserError(kinds['user'][0][1])
    if kinds['crash']:
        r, text = kinds['crash'][0]
        return ProcessCrashed(f'process {r} of {n} failed:\n{text}')
    for r, code in enumerate(exitcodes):
        if code is not None and code < 0 and r not in ended:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f'signal {-code}'
            return ProcessFailed(f'process {r} of {n} was killed ({name}); the other processes were stopped')
    stopped = [r for r, was_stopped in ended.items() if was_stopped]
    why = f'; process {stopped[0]} was stopped (SIGSTOP or Ctrl-Z)' if stopped else ''
    # The process that waited in vain saw the problem first; lost connections follow from it.
    for r, text in kinds['timeout'] + kinds['peer']:
        return ProcessFailed(f'process {r} of {n}: {text}{why}; the processes were stopped')
    for r, code in enumerate(exitcodes):
        if code and r not in ended:
            return ProcessFailed(f'process {r} of {n} ended with exit status {code}; the other processes were stopped')
    return None


def _start_resource_tracker_quietly() -> None:
    """Start multiprocessing's resource tracker without its warnings: it cleans up the semaphores (of
    tqdm's lock, ...) that a killed process leaves and warns about each at exit, a second message
    about a process that :func:`spawned_outcome` already names."""
    try:
        from multiprocessing import resource_tracker
    except ImportError:  # not on this platform
        return
    previous = os.environ.get('PYTHONWARNINGS')
    os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [previous, 'ignore:resource_tracker:UserWarning']))
    try:
        resource_tracker.ensure_running()
    finally:
        if previous is None:
            del os.environ['PYTHONWARNINGS']
        else:
            os.environ['PYTHONWARNINGS'] = previous


def _spawn(args, run, size: int) -> None:
    """Run ``run(args)`` in ``size`` processes on this machine; raise the one cause of a failure."""
    _start_resource_tracker_quietly()
    context = mp.get_context('spawn')
    # The processes meet through a file in a folder of their own (no port to pick, so none to collide
    # with another program's) and each writes its report there.
    with tempfile.TemporaryDirectory(prefix='lcoan-processes-') as reports:
        procs = [context.Process(target=_spawned, args=(r, args, run, size, reports)) for r in range(size)]
        for p in procs:
            p.start()
        interrupted = False
        try:
            _wait_for_failure(procs)
        except KeyboardInterrupt:
            interrupted = True
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: the first one is handled
        try:
            ended = _end_all(procs)
            outcome = spawned_outcome([_read_report(Path(reports), r) for r in range(size)],
                                      [p.exitcode for p in procs], ended, interrupted)
        finally:
            signal.signal(signal.SIGINT, previous)
    if outcome is not None:
        raise outcome


def launch(args, run) -> None:
    """Run ``run(args)`` in one process, in N spawned processes, or in this torchrun process."""
    args.rank, args.world_size = 0, 1
    if launched_by_torchrun():
        size = int(os.environ['WORLD_SIZE'])
        _check_world(args, size)
        _join(args, int(os.environ['RANK']), size, int(os.environ['LOCAL_RANK']))
        try:
            run(args)
        except Exception as e:
            failure = collective_failure(e, args.dist_timeout)
            if failure is None:
                raise
            raise ProcessFailed(f'process {args.rank} of {size}: {failure[1]}') from None
        finally:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    elif args.n_GPUs > 1:
        _check_world(args, args.n_GPUs)
        _spawn(args, run, args.n_GPUs)
    else:
        run(args)
