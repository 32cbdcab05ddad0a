"""The parts of :class:`trainer.Trainer`, each on its own.

- :mod:`training.step`: one optimisation step and the rules that skip a bad batch.
- :mod:`training.evaluation`: the model over one test set, scored image by image.
- :mod:`training.tables`: the text tables of ``--test_only`` and ``--compare_bicubic``.
- :mod:`training.state`: the checkpoint files of an epoch and the training-state format a run resumes from.
- :mod:`training.interrupts`: Ctrl-C held while a loader worker hands a batch over.
"""
