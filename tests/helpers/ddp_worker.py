"""A few training steps of a tiny LCoAN, for tests/test_distributed.py.

Run under torchrun (each process takes its share of one fixed batch, DistributedDataParallel
averages the gradients) or as one process on the whole batch; every process writes its final
``state_dict`` to ``<out>/rank<r>.pt``. Usage: ``ddp_worker.py OUT_DIR [main.py flags]``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'src'))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import model  # noqa: E402
import option  # noqa: E402
from core import distributed  # noqa: E402

BATCH, STEPS = 4, 4


class PrintLog:
    def write_log(self, msg: str) -> None:
        print(msg)


def train_steps(args) -> None:
    torch.manual_seed(args.seed)
    net = model.Model(args, PrintLog())
    g = torch.Generator().manual_seed(123)
    lr = torch.rand(BATCH, 3, 12, 12, generator=g)
    hr = torch.rand(BATCH, 3, 12 * args.scale[0], 12 * args.scale[0], generator=g)
    share = BATCH // distributed.world_size()
    mine = slice(distributed.rank() * share, (distributed.rank() + 1) * share)
    # A small step keeps the run smooth: larger ones blow this random-data run up, and then float
    # rounding differences between one and two processes grow without bound.
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    net.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.l1_loss(net(lr[mine]), hr[mine]).backward()
        optimizer.step()
    torch.save(net.state_dict(), Path(args.out) / f'rank{distributed.rank()}.pt')


if __name__ == '__main__':
    out, flags = sys.argv[1], sys.argv[2:]
    args = option.parse_args(flags + ['--cpu'])
    args.out = out
    distributed.launch(args, train_steps)
