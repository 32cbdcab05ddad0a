"""Data loading: ``Data(args)`` builds torch DataLoaders over the layouts researchers have on disk.

- ``loader_train`` (None with ``--test_only``): batches ``(lr, hr, names)`` of random aligned patches
  (HR ``patch_size``, LR ``patch_size // scale``), float32 in ``[0, rgb_range]``; an epoch is
  ``batch_size * test_every`` samples. Under torch.distributed each process loads
  ``batch_size // world_size`` of them through a DistributedSampler (the trainer calls
  ``loader_train.sampler.set_epoch``).
- ``loader_test``: one DataLoader per ``--data_test`` set, batch 1, whole images ``(lr, hr, [name])``;
  ``loader.dataset`` has ``name`` and ``benchmark``. Demo batches have an empty ``hr``.

Data sets (``--dir_data``): training sets by name (data.trainsets: DIV2K, Flickr2K, DF2K, T91, BSD200,
General100, SR291, any folder, Sample), Set5/Set14/B100/Urban100/Manga109 (data.benchmark), Sample
(data.sample, written at first use), Demo (``--dir_demo``, data.demo). Every image is checked
when the loaders are built; bad data raises data.common.DataError (a UserError) naming the file.
``--ext sep`` caches decoded images as ``.npy`` (data.storage).

Randomness: the training order comes from an :class:`EpochSampler` (a DistributedSampler, also for
one process) seeded with ``--seed`` and reset by ``set_epoch``; each patch's position and
augmentation come from a generator seeded with (``--seed``, epoch, index). So two runs with the same
flags give the same batches, whatever the number of (persistent) workers, and a resumed run
continues with exactly the batches the interrupted one would have seen. Each rank takes its share
of every global batch, so N processes see the same samples per step as one process would.
"""

from pathlib import Path

from torch.utils.data import DataLoader, DistributedSampler

from core import distributed
from core.errors import UserError
from core.rng import derive_seed
from data import benchmark, div2k, sample, trainsets
from data.demo import demo_set
from data.srdata import TestImages, TrainPatches, say, scan_pairs
from data.storage import ImageStore

# The names --data_train and --data_test accept.
TRAIN_SETS = trainsets.TRAIN_SETS
TEST_SETS = ('DIV2K', 'Sample', 'Demo') + benchmark.BENCHMARK_SETS

# A DataLoader worker that delivers nothing for this long counts as hung and fails the run. A batch
# of patches from 2K images decodes in well under a second; this leaves room for a loaded machine.
LOADER_TIMEOUT_S = 300


class EpochSampler(DistributedSampler):
    """This rank's share of a per-epoch shuffle, as ``(epoch, index)`` keys for :class:`TrainPatches`."""

    def __iter__(self):
        return ((self.epoch, index) for index in super().__iter__())


class Data:
    """The training and test loaders for ``args`` (see the module docstring).

    Args:
        args: parsed options (option.parse_args).
    """

    def __init__(self, args) -> None:
        rank, world = distributed.rank(), distributed.world_size()
        if args.batch_size % world:
            raise UserError(f'--batch_size {args.batch_size}: must be divisible by the number of processes ({world})')
        self.args = args
        # Under torch.distributed rank 0 rebuilds the sep cache; the others then read what it wrote.
        self.store = ImageStore(ext='sep' if args.ext == 'sep_reset' and rank != 0 else args.ext)
        dir_data = Path(args.dir_data)

        # Rank 0 makes missing LR images and caches first; the other ranks then find them ready (and stop
        # with it, each with a message, if it fails).
        with distributed.main_process_first():
            train_set = None if args.test_only else self._train_set(dir_data, rank)
            test_sets = [self._test_set(dir_data, name) for name in args.data_test]

        workers = args.n_threads
        common = dict(num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=str(args.device).startswith('cuda'), timeout=LOADER_TIMEOUT_S if workers else 0)
        self.loader_train = None
        if train_set is not None:
            sampler = EpochSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                   drop_last=True)
            self.loader_train = DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler,
                                           drop_last=True, **common)
        # One worker per test set overlaps decoding with the model; more would only hold memory.
        common.update(num_workers=min(workers, 1), persistent_workers=workers > 0)
        self.loader_test = [DataLoader(ts, batch_size=1, shuffle=False, **common) for ts in test_sets]

    def _train_set(self, dir_data: Path, rank: int) -> TrainPatches:
        args = self.args
        scale = args.scale[0]
        pairs = []
        for name in trainsets.expand(args.data_train):
            root, entries = trainsets.entries_of(name, dir_data=dir_data, dir_train=Path(args.dir_train or '.'),
                                                 data_range=args.train_range, scale=scale, say=say)
            pairs += scan_pairs(name=name, root=root, entries=entries, scale=scale, store=self.store,
                                training=True, patch_size=args.patch_size)
        if len(args.data_train) > 1 or args.data_train != trainsets.expand(args.data_train):
            say(f'training on {len(pairs)} images of {"+".join(args.data_train)}')
        return TrainPatches(name='+'.join(args.data_train), pairs=pairs, store=self.store, scale=scale,
                            patch_size=args.patch_size, n_colors=args.n_colors, rgb_range=args.rgb_range,
                            augment=not args.no_augment, length=args.batch_size * args.test_every,
                            seed=derive_seed(args.seed, 1))

    def _test_set(self, dir_data: Path, name: str):
        args = self.args
        scale = args.scale[0]
        if name == 'Demo':
            return demo_set(Path(args.dir_demo), store=self.store, n_colors=args.n_colors, rgb_range=args.rgb_range)
        if name == 'DIV2K':
            root, is_benchmark = div2k.root_of(dir_data), False
            entries = div2k.div2k_entries(dir_data, args.test_range, scale)
        elif name == 'Sample':
            sample.ensure_sample(dir_data, say=say)
            root, is_benchmark = sample.test_root(dir_data), True
            entries = benchmark.folder_entries(name, root, scale)
        elif name in benchmark.BENCHMARK_SETS:
            root, is_benchmark = benchmark.root_of(dir_data, name), True
            entries = benchmark.folder_entries(name, root, scale)
        else:
            raise UserError(f'--data_test {name}: not a test set')
        pairs = scan_pairs(name=name, root=root, entries=entries, scale=scale, store=self.store, training=False)
        return TestImages(name=name, benchmark=is_benchmark, pairs=pairs, store=self.store, scale=scale,
                          n_colors=args.n_colors, rgb_range=args.rgb_range)
